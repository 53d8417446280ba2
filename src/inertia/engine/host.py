"""The host fast path: one call of the C kernel per step, over NumPy arrays or CPU torch
tensors, for every face.

A face gathers its step's arrays (weights, gradients, the slots it keeps) and its groups'
settings (:mod:`inertia.engine.step`), and calls :func:`run`. The kernel (``_sgd_core.h``,
built by :mod:`inertia.kernels`) runs the face's whole pipeline in one read and one write of
each array, in the reference path's order of operations, so it gives the reference path's
numbers (norm sums aside: they are kept in double). Where it would not, it declines and
changes nothing, and the face runs its reference path, which also raises every error.

What a user can change between steps is checked again every step, at the cost of a few
field reads per array: the kernel reads each NumPy array's data pointer, flags (writeable,
aligned, contiguous), dtype and shape itself, and the torch backend reads a tensor's type,
device, dtype, shape, strides, negative/conjugate bits and data pointer; the written memory
must be where the plan saw it (the plan checked that no two written arrays overlap), and no
gradient may meet it. After a write, torch's autograd version counters are bumped as torch's
own in-place operations bump them.

Sharded arrays (torch's DTensor, as FSDP2 makes them) step on their local shards
(``ops.kernel_shards``), where a weight, its gradient and its slots are laid out alike; the
plan keeps their layout, and a step whose shards no longer line up declines. The kernel sums
norms over the arrays it is given, a rank's shards only, so it declines norm clipping on
them: the face clips first, with the norms summed across the ranks, or its reference path
runs.

Example:
    >>> import numpy as np
    >>> from inertia.engine import host
    >>> from inertia.engine.step import KERAS, GroupSettings
    >>> w, g = np.ones(3, np.float32), np.full(3, 2.0, np.float32)
    >>> from inertia import backend
    >>> plan = host.plan_memory(backend.get("numpy"), "float32", [[w]])
    >>> host.run(plan, KERAS, [GroupSettings(learning_rate=0.25)], weights=[w], grads=[g]) == host.DONE
    True
    >>> w
    array([0.5, 0.5, 0.5], dtype=float32)
"""

from __future__ import annotations

import contextlib
import threading
from itertools import chain
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from inertia import kernels
from inertia.engine.step import GLOBAL_NONE, GroupSettings, StepDescription

__all__ = ["DONE", "DECLINED", "MOVED", "run", "plan_memory", "plan_shapes", "MemoryPlan", "disabled", "enabled", "FLAG_DECAY", "FLAG_FRESH_BUFFER", "FLAG_FRESH_AVERAGE"]

FLAG_DECAY, FLAG_FRESH_BUFFER, FLAG_FRESH_AVERAGE = 1, 2, 4
# What a kernel call answers: done; declined (nothing changed: the reference path runs); a
# written array moved since the plan was made (nothing changed: plan again, then retry).
DONE, DECLINED, MOVED = 0, 1, 2
DTYPES = {"float32": 0, "float64": 1}

_state = threading.local()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block every fast path declines, so every face runs its reference path (the
    tests compare the two paths this way)."""
    previous = getattr(_state, "disabled", False)
    _state.disabled = True
    try:
        yield
    finally:
        _state.disabled = previous


def enabled() -> bool:
    """Whether fast paths may run now (not inside :func:`disabled`)."""
    return not getattr(_state, "disabled", False)


class MemoryPlan:
    """Where a step's written arrays live: their sizes and shapes, their addresses as the plan
    saw them, and the sorted byte intervals they cover (checked not to overlap)."""

    __slots__ = ("ops", "dtype", "is_double", "sizes", "shapes", "offsets", "shape_tuples", "expected", "written", "count",
                 "layout")


def plan_memory(ops: Any, dtype: str, lists: Sequence[Optional[Sequence[Any]]]) -> Optional[MemoryPlan]:
    """The plan for the written ``lists`` (weights first, then the slot lists, None where a
    slot is not kept); None where an array cannot be written by the kernel (not a contiguous,
    aligned, writable host array of ``dtype``) or two written arrays overlap."""
    if dtype not in DTYPES or not lists or lists[0] is None:
        return None
    shards = ops.kernel_shards(lists)
    if shards is None:
        return None
    lists, layout = shards
    weights = lists[0]
    shapes = [tuple(ops.shape(w)) for w in weights]
    addresses: list[int] = []
    for arrays in lists:
        if arrays is None:
            continue
        if len(arrays) != len(weights):
            return None
        for array, shape in zip(arrays, shapes):
            address = ops.kernel_address(array, dtype)
            if address is None or tuple(ops.shape(array)) != shape:
                return None
            addresses.append(address)
    plan = MemoryPlan()
    plan.ops, plan.dtype, plan.is_double = ops, dtype, DTYPES[dtype] == 1
    plan.count = len(weights)
    plan.shape_tuples = shapes
    plan.layout = layout
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    plan.sizes = np.array(sizes, dtype=np.int64)
    packed, offsets = [], []
    for shape in shapes:
        offsets.append(len(packed))
        packed.extend((len(shape), *shape))
    plan.shapes = np.array(packed or [0], dtype=np.int64)
    plan.offsets = np.array(offsets, dtype=np.int64)
    plan.expected = np.array(addresses, dtype=np.int64)
    itemsize = 8 if plan.is_double else 4
    starts = plan.expected
    ends = starts + np.tile(plan.sizes, len(addresses) // max(len(sizes), 1)) * itemsize
    keep = ends > starts  # empty arrays write nothing
    starts, ends = starts[keep], ends[keep]
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    if len(starts) > 1 and bool(np.any(starts[1:] < ends[:-1])):
        return None  # two written arrays share memory: the reference path writes them one by one
    plan.written = np.ascontiguousarray(np.stack([starts, ends], axis=1).reshape(-1))
    return plan


def plan_shapes(ops: Any, dtype: str, shapes: Sequence[tuple]) -> Optional[MemoryPlan]:
    """A plan for arrays of ``shapes`` written only to new outputs (the MLX face): nothing
    is written in place, so there are no addresses to keep and no overlap to check."""
    if dtype not in DTYPES:
        return None
    plan = MemoryPlan()
    plan.ops, plan.dtype, plan.is_double = ops, dtype, DTYPES[dtype] == 1
    plan.count = len(shapes)
    plan.shape_tuples = [tuple(s) for s in shapes]
    plan.sizes = np.array([int(np.prod(s, dtype=np.int64)) for s in plan.shape_tuples], dtype=np.int64)
    packed, offsets = [], []
    for shape in plan.shape_tuples:
        offsets.append(len(packed))
        packed.extend((len(shape), *shape))
    plan.shapes = np.array(packed or [0], dtype=np.int64)
    plan.offsets = np.array(offsets, dtype=np.int64)
    plan.expected = plan.written = None
    plan.layout = None
    return plan


def run(
    plan: MemoryPlan,
    description: StepDescription,
    groups: Sequence[GroupSettings],
    *,
    weights: list,
    grads: list,
    velocities: Optional[list] = None,
    averages: Optional[list] = None,
    accumulators: Optional[list] = None,
    weights_out: Optional[list] = None,
    velocities_out: Optional[list] = None,
    flags: Optional[bytes] = None,
    group_of: Optional[np.ndarray] = None,
    global_clipnorm: Optional[float] = None,
    unscale: float = 1.0,
    accumulation_steps: int = 1,
    ema_momentum: float = 0.0,
) -> int:
    """One step in the kernel: ``DONE``; or, having changed nothing, ``DECLINED`` (the kernel
    is unavailable, fast paths are disabled, or an array does not fit) or ``MOVED`` (a
    written array is not where the plan saw it: make the plan again)."""
    module = kernels.load()
    if module is None or not enabled():
        return DECLINED
    ops, dtype, shapes = plan.ops, plan.dtype, plan.shape_tuples
    given = (weights, grads, velocities, averages, accumulators, weights_out, velocities_out)
    shards = ops.kernel_shards(given)
    if shards is None:
        return DECLINED
    if shards[1] != plan.layout:
        return MOVED  # sharded otherwise since the plan was made: plan again
    if plan.layout is not None and (global_clipnorm is not None or any(group.clipnorm is not None for group in groups)):
        return DECLINED  # the kernel's norms would be this rank's shards' only
    weights, grads, velocities, averages, accumulators, weights_out, velocities_out = shards[0]
    operands = []
    for arrays, writable in ((weights, weights_out is None), (grads, False), (velocities, velocities_out is None),
                             (averages, True), (accumulators, True), (weights_out, True), (velocities_out, True)):
        if arrays is None:
            operands.append(None)
            continue
        checked = ops.kernel_operands(arrays, dtype, shapes, writable)
        if checked is None:
            return DECLINED
        operands.append(checked)
    rows = np.array([group.row(description) for group in groups], dtype=np.float64)
    done = module.step(
        tuple(operands), plan.sizes, plan.shapes, plan.offsets,
        flags if flags is not None else bytes(plan.count), rows, group_of, plan.expected, plan.written,
        int(plan.is_double), GLOBAL_NONE if global_clipnorm is None else description.global_clip_code,
        kernels.thread_count(), float(unscale), float(accumulation_steps), float(ema_momentum),
        float(global_clipnorm or 0.0),
    )
    if done == DONE:
        written = (weights_out or weights, velocities_out or velocities, averages, accumulators)
        if plan.layout is not None:  # the DTensors too: each has a version counter of its own
            written += (given[5] or given[0], given[6] or given[2], given[3], given[4])
        ops.kernel_wrote(list(chain.from_iterable(arrays for arrays in written if arrays is not None)))
    return done


def accumulate(plan: MemoryPlan, accumulators: list, grads: list) -> int:
    """A gradient-accumulation micro-step, ``A = G + A``, in the kernel; answers as
    :func:`run`. ``plan`` covers the accumulators (as its only list)."""
    module = kernels.load()
    if module is None or not enabled():
        return DECLINED
    ops, dtype, shapes = plan.ops, plan.dtype, plan.shape_tuples
    shards = ops.kernel_shards([accumulators, grads])
    if shards is None:
        return DECLINED
    if shards[1] != plan.layout:
        return MOVED
    (local_accumulators, local_grads), sharded = shards[0], shards[1] is not None
    written = ops.kernel_operands(local_accumulators, dtype, shapes, True)
    read = ops.kernel_operands(local_grads, dtype, shapes, False)
    if written is None or read is None:
        return DECLINED
    done = module.accumulate(written, read, plan.sizes, plan.shapes, plan.offsets, plan.expected, plan.written,
                             int(plan.is_double), kernels.thread_count())
    if done == DONE:
        ops.kernel_wrote(list(local_accumulators) + (list(accumulators) if sharded else []))
    return done
