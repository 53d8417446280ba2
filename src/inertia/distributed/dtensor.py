"""inertia on DTensor parameters (FSDP2's ``fully_shard``, ``distribute_tensor``): the two
places where an optimizer must look past DTensor's own operators.

* **Norms** (:func:`squares_reducer`): a DTensor op on a sharded gradient reduces its
  squared norm across the mesh the moment it is read (three all_reduces per parameter for
  clipnorm). Clipping instead takes each gradient's *local* squared sum (a ``Partial``
  DTensor: no communication yet) and sums them all in one all_reduce per mesh dimension
  they are partial over, a single collective for FSDP2's 1-D mesh. Only the mesh dimensions
  where a gradient is sharded are summed; on the dimensions where it is replicated every
  rank holds the same sum already, which a reduction there would count twice.
* **The host kernel** (:func:`local_shards`): it writes memory, so it runs on each DTensor's
  local shard, where the parameter, its gradient and its state are laid out alike.

Every other step the faces take on DTensors is DTensor's own elementwise arithmetic on the
local shards, so the numbers are those of one process on the whole tensors, bit for bit;
the norms differ from one process' in the order of their sums (local sums first, then the
ranks'), within a few units in the last place.

Example (two ranks; the norm of a tensor sharded by rows, in one all_reduce)::

    mesh = init_device_mesh("cpu", (2,))
    g = distribute_tensor(torch.arange(8.0).reshape(4, 2), mesh, [Shard(0)])
    (total,) = squares_reducer([g])([torch.sum(torch.square(g))])
    total.full_tensor()  # tensor(140.)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Replicate

__all__ = ["is_dtensor", "squares_reducer", "DTensorSquaresReducer", "local_shards", "layout_of"]


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a DTensor (an FSDP2 parameter or gradient among them)."""
    return isinstance(value, DTensor)


def _local(value: DTensor) -> torch.Tensor:
    # The local tensor itself, not `to_local()`: on a Parameter(DTensor) that returns a new
    # view at every call, and the kernel's plan is kept while the tensors are the same objects.
    local = getattr(value, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else value.to_local()


class DTensorSquaresReducer:
    """A :data:`inertia.pipeline.SquaresReducer` for DTensor gradients: local squared sums
    in, whole-tensor ones out, in one ``torch.distributed.all_reduce`` per (mesh, mesh
    dimension, dtype) the squares are partial over (one for FSDP2's 1-D mesh).

    A square that is a DTensor (``torch.sum`` of a sharded DTensor: ``Partial`` on the mesh
    dimensions the gradient is sharded over, ``Replicate`` on the others) comes back as a
    DTensor replicated over its mesh; a plain tensor (a whole gradient's sum) comes back
    as it is.
    """

    def __call__(self, squares: Sequence[Any]) -> list:
        squares = list(squares)
        result: list = list(squares)
        batches: dict = {}
        for position, square in enumerate(squares):
            if not isinstance(square, DTensor):
                continue
            partial = tuple(dim for dim, placement in enumerate(square.placements) if isinstance(placement, Partial))
            if any(square.placements[dim].reduce_op != "sum" for dim in partial):
                # Not a sum of local sums (no clipping stage makes one): DTensor's own reduction.
                result[position] = square.redistribute(square.device_mesh, [Replicate()] * square.device_mesh.ndim)
                continue
            key = (id(square.device_mesh), partial, square.dtype)
            batches.setdefault(key, (square.device_mesh, partial, []))[2].append(position)
        for mesh, partial, positions in batches.values():
            packed = torch.stack([_local(squares[p]).reshape(()) for p in positions])
            for dim in partial:
                # Looked up on the module at each call: tests count the collectives by wrapping it.
                dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
            replicated = [Replicate()] * mesh.ndim
            for index, p in enumerate(positions):
                whole = packed[index].reshape(_local(squares[p]).shape)
                result[p] = DTensor.from_local(whole, mesh, replicated, run_check=False,
                                               shape=squares[p].shape, stride=squares[p].stride())
        return result

    def __repr__(self) -> str:
        return "inertia.distributed.dtensor.squares_reducer()"


def squares_reducer(gradients: Sequence[Any]) -> Optional[DTensorSquaresReducer]:
    """The reducer clipping uses for ``gradients``: a :class:`DTensorSquaresReducer` when any
    of them is a DTensor, None when they are all whole tensors (nothing to reduce)."""
    return DTensorSquaresReducer() if any(isinstance(g, DTensor) for g in gradients) else None


def layout_of(value: DTensor) -> tuple:
    """What makes two DTensors' local shards line up element for element: the mesh, the
    placements, the global shape and the local shape."""
    return (value.device_mesh, tuple(value.placements), tuple(value.shape), tuple(_local(value).shape))


def local_shards(lists: Sequence[Optional[Sequence[Any]]]) -> Optional[tuple[list, tuple]]:
    """The local shards of a kernel step's tensor lists (weights first, then gradients and
    slots, None where a list is absent) and the weights' layouts; None when the shards do
    not line up (a tensor that is not a DTensor, or whose mesh, placements or shapes differ
    from its weight's): the kernel then declines, and DTensor's operators run the step."""
    weights = next((arrays for arrays in lists if arrays is not None), None)
    if weights is None:
        return None
    layouts = []
    for weight in weights:
        if not isinstance(weight, DTensor):
            return None
        layouts.append(layout_of(weight))
    shards: list = []
    for arrays in lists:
        if arrays is None:
            shards.append(None)
            continue
        if len(arrays) != len(weights):
            return None
        for array, layout in zip(arrays, layouts):
            if not isinstance(array, DTensor) or layout_of(array) != layout:
                return None
        shards.append([_local(array) for array in arrays])
    return shards, tuple(layouts)
