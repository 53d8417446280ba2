"""One rank of the torch.distributed scenarios of ``test_scale_out_torch.py`` (not a test
module: the test launches this file once per rank, over gloo on 127.0.0.1).

    python tests/torch_ranks.py RANK WORLD_SIZE PORT OUT_DIR

Each scenario trains a small model for a few steps and saves, per rank, what the test
compares with a single process: the parameters, the optimizer's state, its counters and
how many all_reduce calls each step made.
"""

from __future__ import annotations

import io
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import inertia  # noqa: E402
import inertia.torch  # noqa: E402
from gloo_ranks import CountingAllReduce  # noqa: E402  (this folder is sys.path[0] when run)

MICRO_STEPS = 6
ACCUMULATION = 2
OPTIONS = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, use_ema=True, ema_momentum=0.5,
               ema_overwrite_frequency=2)
KERAS_OPTIONS = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, use_ema=True, ema_momentum=0.5,
                     ema_overwrite_frequency=2, global_clipnorm=0.05)


def model_for(seed: int = 0, single: bool = False, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    if single:  # one parameter tensor: on two ranks, one ZeRO shard is empty
        return torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False)).to(dtype)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank's data for one micro-step (``rank=None``: the same on every rank)."""
    generator = torch.Generator().manual_seed(1000 * step + (0 if rank is None else 17 * (rank + 1)))
    return torch.randn(4, 6, generator=generator), torch.randn(4, 3, generator=generator)


def loss_of(model: torch.nn.Module, data: tuple) -> torch.Tensor:
    inputs, targets = data
    return ((model(inputs) - targets) ** 2).mean()


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    state = {name: {key: value.detach().clone() for key, value in optimizer.state[p].items() if isinstance(value, torch.Tensor)}
             for name, p in model.named_parameters() if p in optimizer.state}
    return {"params": {name: p.detach().clone() for name, p in model.named_parameters()}, "state": state}


def ddp_accumulating(rank: int, aggregate: bool, same_data: bool) -> dict:
    """DDP with ``no_sync()`` on every micro-step: the optimizer's aggregation stage
    communicates, once per update."""
    model = model_for()
    ddp = DistributedDataParallel(model)
    # No clipping here: a clip to a fixed norm would hide a sum taken for a mean.
    optimizer = inertia.torch.SGD(ddp.parameters(), **OPTIONS,
                                  gradient_accumulation_steps=ACCUMULATION,
                                  aggregate=inertia.torch.all_reduce_mean() if aggregate else None)

    def step(index: int) -> None:
        with ddp.no_sync():
            loss_of(ddp, batch(None if same_data else rank, index)).backward()
        optimizer.step()
        optimizer.zero_grad()

    calls = all_reduce_calls_per_step(step)
    return {**snapshot(model, optimizer), "all_reduce_calls": calls, "updates": optimizer.updates}


def all_reduce_calls_per_step(step) -> list:
    """Run ``step(index)`` for every micro-step, counting each one's all_reduce calls."""
    counter = CountingAllReduce()
    dist.all_reduce = counter
    calls = []
    try:
        for index in range(MICRO_STEPS):
            before = counter.calls
            step(index)
            calls.append(counter.calls - before)
    finally:
        dist.all_reduce = counter.original
    return calls


def keras_face_ddp(rank: int) -> dict:
    """The Keras face on torch tensors under DDP's ``no_sync()``, with
    ``all_reduce_mean`` assigned as its aggregation stage."""
    model = model_for()
    ddp = DistributedDataParallel(model)
    params = list(model.parameters())
    optimizer = inertia.SGD(**KERAS_OPTIONS, gradient_accumulation_steps=ACCUMULATION)
    optimizer.aggregate_gradients = inertia.torch.all_reduce_mean()

    def step(index: int) -> None:
        with ddp.no_sync():
            loss_of(ddp, batch(rank, index)).backward()
        optimizer.apply([p.grad for p in params], params)
        ddp.zero_grad()

    calls = all_reduce_calls_per_step(step)
    return {"params": {name: p.detach().clone() for name, p in model.named_parameters()},
            "momentums": [m.value.detach().clone() for m in optimizer.momentums], "all_reduce_calls": calls}


def loss_scaled_keras_face(rank: int) -> dict:
    """A LossScaleOptimizer whose inner optimizer aggregates with all_reduce_mean; rank 0's
    gradients overflow at step 1, rank 1's do not: both ranks must skip that step."""
    model = model_for()
    params = list(model.parameters())
    optimizer = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.1, momentum=0.9))
    optimizer.aggregate_gradients = inertia.torch.all_reduce_mean()
    optimizer.build(params)
    skipped = []
    for step in range(4):
        model.zero_grad()
        loss_of(model, batch(rank, step)).backward()
        if step == 1 and rank == 0:
            params[0].grad[0, 0] = float("inf")
        before = float(optimizer.dynamic_scale.numpy())
        optimizer.apply([p.grad for p in params], params)
        skipped.append(float(optimizer.dynamic_scale.numpy()) < before)
    return {"params": {name: p.detach().clone() for name, p in model.named_parameters()}, "skipped": skipped}


def zero_run(rank: int, clip_group, steps: int = MICRO_STEPS, single: bool = False, dtype: torch.dtype = torch.float32, resume_from: str | None = None,
             save_to: str | None = None) -> dict:
    """ZeRO-1 over DDP with every inertia option; identical data on every rank, so DDP's
    averaged gradients are the single process' exactly."""
    model = model_for(single=single, dtype=dtype)
    ddp = DistributedDataParallel(model)
    options = dict(**OPTIONS, global_clipnorm=0.05, gradient_accumulation_steps=ACCUMULATION)
    if clip_group is not None:
        options["clip_group"] = clip_group
    optimizer = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=inertia.torch.SGD, **options)
    start = 0
    if resume_from is not None:
        with open(resume_from, "rb") as handle:
            saved = torch.load(io.BytesIO(handle.read()), weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start = saved["step"]
    counter = CountingAllReduce()
    calls = []
    for step in range(start, steps):
        inputs, targets = batch(None, step)
        loss_of(ddp, (inputs.to(dtype), targets.to(dtype))).backward()
        dist.all_reduce = counter
        before = counter.calls
        try:
            optimizer.step()
        finally:
            dist.all_reduce = counter.original
        calls.append(counter.calls - before)
        optimizer.zero_grad()
    result = snapshot(model, optimizer.optim)
    result["all_reduce_calls"] = calls
    result["counters"] = {key: optimizer.optim.param_groups[0][key] for key in ("micro_steps", "updates")} if optimizer.optim.param_groups else {}
    result["local_state_bytes"] = sum(
        value.numel() * value.element_size() for entries in optimizer.optim.state.values() for value in entries.values()
        if isinstance(value, torch.Tensor)
    )
    result["local_params"] = sum(len(group["params"]) for group in optimizer.optim.param_groups)
    optimizer.consolidate_state_dict(to=0)
    if rank == 0 and save_to is not None:
        consolidated = optimizer.state_dict()
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": consolidated, "step": steps}, buffer)  # it must pickle
        with open(save_to, "wb") as handle:
            handle.write(buffer.getvalue())
        result["consolidated_counters"] = [{key: g[key] for key in ("micro_steps", "updates")} for g in consolidated["param_groups"]]
    dist.barrier()
    return result


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.use_deterministic_algorithms(True)
    results = {
        "ddp_aggregated": ddp_accumulating(rank, aggregate=True, same_data=False),
        "ddp_aggregated_again": ddp_accumulating(rank, aggregate=True, same_data=False),
        "ddp_unaggregated": ddp_accumulating(rank, aggregate=False, same_data=False),
        "ddp_aggregated_same_data": ddp_accumulating(rank, aggregate=True, same_data=True),
        "keras_face_ddp": keras_face_ddp(rank),
        "loss_scaled_keras_face": loss_scaled_keras_face(rank),
        "zero": zero_run(rank, "world"),
        "zero_without_clip_group": zero_run(rank, None),
        "zero_first_half": zero_run(rank, "world", steps=3, save_to=os.path.join(out, "zero.pt")),
    }
    results["zero_resumed"] = zero_run(rank, "world", resume_from=os.path.join(out, "zero.pt"))
    # One parameter tensor for two ranks: one rank's shard is empty, and it still joins.
    results["zero_empty_shard"] = zero_run(rank, "world", single=True)
    # float64: the rank with the empty shard has no dtype of its own, and must still match.
    results["zero_empty_shard_float64"] = zero_run(rank, "world", single=True, dtype=torch.float64)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
