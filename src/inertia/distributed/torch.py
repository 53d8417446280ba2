"""inertia on torch.distributed: the ready-made aggregation stage and the collectives that
clipping needs when a rank holds only a shard of the gradients.

Example (two ranks that accumulate locally under DDP's ``no_sync()`` and communicate once
per update)::

    opt = inertia.torch.SGD(model.parameters(), lr=0.1, momentum=0.9,
                            gradient_accumulation_steps=4,
                            aggregate=inertia.torch.all_reduce_mean())
    for batch in batches:
        with ddp_model.no_sync():
            loss(ddp_model, batch).backward()
        opt.step()
        opt.zero_grad()
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from inertia.distributed import GradientAggregator

__all__ = ["all_reduce_mean", "AllReduceMean", "squares_and_count_reducer", "default_device", "resolved_group"]


def resolved_group(group: Any) -> Any:
    """``None`` and ``"world"`` name the default group; a process group is itself."""
    if group is None or group == "world":
        return dist.group.WORLD
    return group


def default_device(group: Any) -> torch.device:
    """Where a collective of ``group`` takes its tensors when a rank has none of its own:
    the current CUDA device for NCCL, the CPU otherwise."""
    backend = dist.get_backend(resolved_group(group))
    if "nccl" in str(backend).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class AllReduceMean(GradientAggregator):
    """The mean of each gradient over the ranks of ``group`` (None or ``"world"``: every
    rank), in one all_reduce per dtype and device: the gradients are packed into one flat
    buffer, summed, divided by the group's size, and returned as views of it (the
    gradients given are left alone)."""

    def __init__(self, group: Any = None) -> None:
        if not (group is None or group == "world" or isinstance(group, dist.ProcessGroup)):
            raise TypeError(f"Argument `group` must be a torch.distributed process group, None or 'world'. Received: group={group!r}")
        self.group = group

    def reduce(self, gradients: list) -> list:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "inertia.torch.all_reduce_mean needs torch.distributed initialised (torch.distributed.init_process_group) "
                "before the optimizer steps."
            )
        group = resolved_group(self.group)
        size = dist.get_world_size(group)
        result: list = [None] * len(gradients)
        buckets: dict = {}
        for position, gradient in enumerate(gradients):
            if not isinstance(gradient, torch.Tensor) or gradient.layout != torch.strided or type(gradient) is not torch.Tensor:
                raise TypeError(
                    f"all_reduce_mean averages dense torch tensors; gradient {position} is {type(gradient).__name__}"
                    f"{'' if not isinstance(gradient, torch.Tensor) else ' with layout ' + str(gradient.layout)}."
                )
            buckets.setdefault((gradient.dtype, gradient.device), []).append(position)
        for positions in buckets.values():
            flat = torch.cat([gradients[p].reshape(-1) for p in positions])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(size)
            offset = 0
            for p in positions:
                count = gradients[p].numel()
                result[p] = flat[offset:offset + count].view(gradients[p].shape)
                offset += count
        return result

    def __repr__(self) -> str:
        return f"inertia.torch.all_reduce_mean(group={self.group!r})"


def all_reduce_mean(group: Any = None) -> AllReduceMean:
    """An aggregation stage that averages each gradient over a torch.distributed group.

    For the torch face's ``aggregate=`` (a list of gradients) and the Keras faces'
    ``aggregate_gradients`` (``(gradient, variable)`` pairs): ``opt.aggregate_gradients =
    inertia.torch.all_reduce_mean()``. Every rank must step together.
    """
    return AllReduceMean(group)


def squares_and_count_reducer(group: Any, count: int, device: torch.device) -> tuple[Callable[[list], list], Callable[[], int]]:
    """A :data:`inertia.pipeline.SquaresReducer` over ``group`` that also sums how many
    gradients each rank had (``count``), in the same all_reduce: returns the reducer and a
    function giving that total once the reducer has run."""
    total: dict = {}

    def reduce(squares: list) -> list:
        # One dtype on every rank, whatever its shard holds (an empty shard has no dtype of
        # its own): the collective's sizes must match.
        dtype = torch.float64
        packed = torch.stack([s.to(device=device, dtype=dtype).reshape(()) for s in squares]
                             + [torch.tensor(float(count), dtype=dtype, device=device)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=resolved_group(group))
        total["count"] = int(round(float(packed[-1])))
        return [packed[i].to(squares[i].dtype) for i in range(len(squares))]

    def counted() -> int:
        return total["count"]

    return reduce, counted


