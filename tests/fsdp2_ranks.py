"""One rank of the FSDP2 scenarios of ``test_fsdp2.py`` (not a test module: the test
launches this file once per rank, over gloo on 127.0.0.1).

    python tests/fsdp2_ranks.py RANK WORLD_SIZE PORT OUT_DIR

Each scenario trains a small model under ``fully_shard`` (every rank the same data, so the
averaged gradients are one process' exactly) and saves, per rank: the weights and the
optimizer's state gathered whole (``full_tensor()``), whether each state tensor is a DTensor
placed like its parameter, the bytes of state this rank holds, how many all_reduce calls
each step made (and collectives of any kind) and what the host kernel answered. :func:`train` also runs the same
scenario in one process, unsharded: the test's reference.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import inertia  # noqa: E402
import inertia.legacy  # noqa: E402
import inertia.torch  # noqa: E402
from inertia import multi_tensor  # noqa: E402
from inertia.engine import host  # noqa: E402
from gloo_ranks import CountingAllReduce  # noqa: E402  (this folder is sys.path[0] when run)

STEPS = 4
EVERYTHING = dict(momentum=0.9, nesterov=True, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3,
                  gradient_accumulation_steps=2)

# name: (face, options, path). Paths: "kernel" (the default: the host kernel where it covers
# the step), "reference" (every fast path off) and "multi_tensor" (torch's _foreach_ path,
# the one CUDA tensors take, forced on the CPU).
SCENARIOS = {
    "torch_everything": ("torch", dict(lr=0.1, weight_decay=1e-2, clipvalue=0.02, **EVERYTHING), "kernel"),
    "torch_everything_reference": ("torch", dict(lr=0.1, weight_decay=1e-2, clipvalue=0.02, **EVERYTHING), "reference"),
    "torch_clipnorm": ("torch", dict(lr=0.1, momentum=0.9, clipnorm=0.05, use_ema=True), "kernel"),
    "torch_clipnorm_accumulating": ("torch", dict(lr=0.1, momentum=0.9, clipnorm=0.05, gradient_accumulation_steps=2), "kernel"),
    "torch_global_clipnorm": ("torch", dict(lr=0.1, momentum=0.9, nesterov=True, global_clipnorm=0.05, use_ema=True,
                                            ema_overwrite_frequency=2), "kernel"),
    "torch_multi_tensor": ("torch", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, use_ema=True, ema_overwrite_frequency=2),
                           "multi_tensor"),
    "torch_multi_tensor_clipnorm": ("torch", dict(lr=0.1, momentum=0.9, clipnorm=0.05), "multi_tensor"),
    "keras_everything": ("keras", dict(learning_rate=0.1, weight_decay=1e-2, clipvalue=0.02, **EVERYTHING), "kernel"),
    "keras_everything_reference": ("keras", dict(learning_rate=0.1, weight_decay=1e-2, clipvalue=0.02, **EVERYTHING),
                                   "reference"),
    "keras_clipnorm": ("keras", dict(learning_rate=0.1, momentum=0.9, nesterov=True, clipnorm=0.05, use_ema=True), "kernel"),
    "keras_global_clipnorm": ("keras", dict(learning_rate=0.1, momentum=0.9, global_clipnorm=0.05,
                                            gradient_accumulation_steps=2), "kernel"),
    "keras_multi_tensor": ("keras", dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2, use_ema=True,
                                         ema_overwrite_frequency=2), "multi_tensor"),
    "keras_multi_tensor_clipnorm": ("keras", dict(learning_rate=0.1, momentum=0.9, clipnorm=0.05), "multi_tensor"),
    "legacy_clipnorm": ("legacy", dict(learning_rate=0.1, momentum=0.9, nesterov=True, clipnorm=0.05, clipvalue=0.04), "kernel"),
    "legacy_global_clipnorm": ("legacy", dict(learning_rate=0.1, momentum=0.9, global_clipnorm=0.05), "kernel"),
}
# Scenarios whose every step is elementwise arithmetic (no norm): equal to one process bit for bit.
ELEMENTWISE = ("torch_everything", "torch_everything_reference", "torch_multi_tensor", "keras_everything",
               "keras_everything_reference", "keras_multi_tensor")


def model_for(seed: int = 0) -> torch.nn.Module:
    """Two Linear layers; 5 and 3 rows split over two ranks unevenly (3+2, 2+1)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data of one step, the same on every rank."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 6, generator=generator), torch.randn(4, 3, generator=generator)


class KernelAnswers:
    """What ``host.run`` / ``host.accumulate`` answered, in order (DONE 0, DECLINED 1, MOVED 2);
    ``decline``: the kernel declines every step instead (so torch's multi-tensor path, the
    one CUDA tensors take, gets it on the CPU)."""

    def __init__(self, decline: bool = False) -> None:
        self.answers: list = []
        self.decline = decline
        self.run, self.accumulate = host.run, host.accumulate

    def __enter__(self) -> "KernelAnswers":
        host.run = lambda *a, **k: self._record(host.DECLINED if self.decline else self.run(*a, **k))
        host.accumulate = lambda *a, **k: self._record(host.DECLINED if self.decline else self.accumulate(*a, **k))
        return self

    def _record(self, answer: int) -> int:
        self.answers.append(answer)
        return answer

    def __exit__(self, *exc) -> None:
        host.run, host.accumulate = self.run, self.accumulate


def optimizer_for(face: str, options: dict, params: list):
    if face == "torch":
        return inertia.torch.SGD(params, **options)
    return (inertia.SGD if face == "keras" else inertia.legacy.SGD)(**options)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).clone()


def state_of(face: str, optimizer, params: list) -> dict:
    """Every state tensor of the optimizer, by name (the tensor itself, possibly a DTensor)."""
    if face == "torch":
        return {f"{index}/{key}": value for index, p in enumerate(params) for key, value in optimizer.state[p].items()
                if isinstance(value, torch.Tensor)}
    variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    owned = {id(p) for p in params}
    return {v.path: v.value for v in variables if id(v.value) not in owned and tuple(v.value.shape) != ()}


def train_with(name: str, **changes) -> dict:
    """Scenario ``name`` in one process with some options changed (None: left out)."""
    return train(name, changes=changes)


def train(name: str, mesh=None, changes: dict | None = None) -> dict:
    """Run scenario ``name``: sharded over ``mesh`` with ``fully_shard``, or (None) in one
    process on the whole model."""
    face, options, path = SCENARIOS[name]
    options = {key: value for key, value in {**options, **(changes or {})}.items() if value is not None}
    model = model_for()
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    optimizer = optimizer_for(face, options, params)
    calls, every_collective, answers = [], [], []
    with contextlib.ExitStack() as stack:
        if path == "reference":
            stack.enter_context(host.disabled())
        if path == "multi_tensor":
            multi_tensor._ON_CPU_TOO = True
            stack.callback(setattr, multi_tensor, "_ON_CPU_TOO", False)
        for step in range(STEPS):
            inputs, targets = batch(step)
            ((model(inputs) - targets) ** 2).mean().backward()
            counter = CountingAllReduce() if dist.is_initialized() else None
            if counter is not None:
                dist.all_reduce = counter
            try:
                # CommDebugMode counts every collective, DTensor's own implicit ones too.
                with KernelAnswers(decline=path == "multi_tensor") as kernel, CommDebugMode() as collectives:
                    if face == "torch":
                        optimizer.step()
                    else:
                        optimizer.apply([p.grad for p in params], params)
            finally:
                if counter is not None:
                    dist.all_reduce = counter.original
            calls.append(None if counter is None else counter.calls)
            every_collective.append(collectives.get_total_counts())
            answers.append(kernel.answers)
            model.zero_grad()
    state = state_of(face, optimizer, params)
    placed = {}
    if mesh is not None:
        from torch.distributed.tensor import DTensor

        if face == "torch":
            by_param = {key: params[int(key.split("/")[0])] for key in state}
        else:  # a Keras slot is named after its variable, param_<i>
            by_param = {key: params[int(re.search(r"param_(\d+)", key).group(1))] for key in state}
        placed = {key: isinstance(value, DTensor) and value.placements == by_param[key].placements
                  and value.device_mesh == by_param[key].device_mesh for key, value in state.items()}
    local_bytes = sum((value.to_local() if hasattr(value, "to_local") else value).numel() * value.element_size()
                      for value in state.values())
    return {
        "params": [whole(p) for p in params],
        "state": {key: whole(value) for key, value in state.items()},
        "placed": placed,
        "local_state_bytes": local_bytes,
        "all_reduce_calls": calls,
        "collectives": every_collective,
        "kernel_answers": answers,
    }


def shards_that_do_not_line_up(world: int) -> dict:
    """What ``local_shards`` answers for gradients whose shards hold other elements than
    their weight's: the same placements on a mesh of the ranks in reverse order, or another
    placement of the same local shape. None each time: the kernel must decline them."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from inertia.distributed.dtensor import local_shards

    forward, reverse = DeviceMesh("cpu", list(range(world))), DeviceMesh("cpu", list(range(world))[::-1])
    whole = torch.arange(16.0).reshape(4, 4)
    weight = distribute_tensor(whole, forward, [Shard(0)])
    column_whole = torch.arange(16.0).reshape(4, 4)
    return {
        "reversed_mesh": local_shards([[weight], [distribute_tensor(whole, reverse, [Shard(0)])]]),
        "other_dimension": local_shards([[distribute_tensor(torch.ones(2, 2), forward, [Shard(0)])],
                                         [distribute_tensor(torch.ones(2, 2).T.contiguous(), forward, [Shard(1)])]]),
        "lined_up": local_shards([[weight], [distribute_tensor(column_whole, forward, [Shard(0)])]]) is not None,
    }


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.use_deterministic_algorithms(True)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    results = {name: train(name, mesh) for name in SCENARIOS}
    results["torch_clipnorm_again"] = train("torch_clipnorm", mesh)
    results["keras_everything_again"] = train("keras_everything", mesh)
    # HSDP: replicated over the first mesh dimension, sharded over the second (of size 1 here):
    # the norms must be summed over the sharded dimension only.
    hybrid = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
    results["torch_clipnorm_hybrid"] = train("torch_clipnorm", hybrid)
    results["keras_global_clipnorm_hybrid"] = train("keras_global_clipnorm", hybrid)
    results["shards_that_do_not_line_up"] = shards_that_do_not_line_up(world)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
