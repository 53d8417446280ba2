"""The PyTorch backend: tensors on any device, updated in place without autograd history.

Hyperparameters become 0-d tensors of the variable's dtype (on the CPU, which torch
treats as scalars next to CUDA tensors), so float16 / bfloat16 arithmetic rounds exactly
as NumPy's does and nothing is captured as a Python constant.
"""

from __future__ import annotations

import operator
import sys
from itertools import repeat
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from inertia.backend.base import Array, ArrayBackend

_FLOATING = {"float16", "bfloat16", "float32", "float64"}


def _torch_dtype(dtype: str) -> torch.dtype:
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise TypeError(f"Unknown dtype for torch: dtype={dtype!r}")
    return value


def _device_of(like: Any) -> Any:
    return like.device if isinstance(like, torch.Tensor) else None


def _dtensor_module() -> Any:
    """``inertia.distributed.dtensor`` once torch's DTensor is in use, else None: no DTensor
    exists before ``torch.distributed.tensor`` is imported, and importing it costs a second."""
    if "torch.distributed.tensor" not in sys.modules:
        return None
    from inertia.distributed import dtensor

    return dtensor


def _placed_like(like: Any, shape: Sequence[int]) -> bool:
    """Whether a new array of ``shape`` is a slot of ``like``, a DTensor (a sharded
    parameter): it is then made a DTensor with the parameter's mesh and placements."""
    dtensor = _dtensor_module()
    return dtensor is not None and dtensor.is_dtensor(like) and tuple(shape) == tuple(like.shape)


_DTYPE_OF = operator.attrgetter("dtype")
_IS_CPU = operator.attrgetter("is_cpu")
_SHAPE_OF = operator.attrgetter("shape")
_LAYOUT_OF = operator.attrgetter("layout")
_PLAIN_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))


class TorchBackend(ArrayBackend):
    name = "torch"

    def is_array(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def is_mutable_native(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and not value.is_inference()

    def dtype_name(self, value: Array) -> str:
        return str(value.dtype).rsplit(".", 1)[-1]

    def is_floating(self, dtype: str) -> bool:
        return dtype in _FLOATING

    def shape(self, value: Array) -> tuple[int, ...]:
        return tuple(value.shape)

    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        device = _device_of(like)
        target = None if dtype is None else _torch_dtype(dtype)
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=device or value.device, dtype=target or value.dtype, copy=True)
        array = np.asarray(value)
        if array.dtype.name == "bfloat16":  # ml_dtypes: torch cannot read it directly
            return torch.from_numpy(array.astype(np.float32)).to(device=device, dtype=target or torch.bfloat16)
        if array.dtype.kind in "OSUV":
            raise TypeError(f"Cannot make a torch tensor of value={value!r} (dtype {array.dtype})")
        return torch.from_numpy(np.array(array, copy=True)).to(device=device, dtype=target)

    def cast(self, value: Array, dtype: str) -> Array:
        target = _torch_dtype(dtype)
        if not isinstance(value, torch.Tensor):
            return torch.as_tensor(value, dtype=target)
        return value if value.dtype == target else value.to(target)

    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        if _placed_like(like, shape):
            return torch.zeros_like(like, dtype=_torch_dtype(dtype), memory_format=torch.contiguous_format)
        return torch.zeros(tuple(shape), dtype=_torch_dtype(dtype), device=_device_of(like))

    def empty(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        if _placed_like(like, shape):
            return torch.empty_like(like, dtype=_torch_dtype(dtype), memory_format=torch.contiguous_format)
        return torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=_device_of(like))

    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        if isinstance(value, torch.Tensor):
            return value.to(_torch_dtype(dtype))
        return torch.tensor(value, dtype=_torch_dtype(dtype))

    def copy(self, value: Array) -> Array:
        return value.detach().clone()

    def to_numpy(self, value: Array) -> Any:
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            try:
                import ml_dtypes

                return tensor.float().numpy().astype(ml_dtypes.bfloat16)
            except ImportError:
                return tensor.float().numpy()
        return tensor.numpy().copy()

    def assign(self, target: Array, value: Array) -> Array:
        with torch.no_grad():
            target.copy_(value)
        return target

    def sqrt(self, x: Array) -> Array:
        return torch.sqrt(x)

    def square(self, x: Array) -> Array:
        return torch.square(x)

    def sum(self, x: Array, keepdims: bool = False) -> Array:
        if keepdims and x.dim() > 0:
            return torch.sum(x, dim=tuple(range(x.dim())), keepdim=True)
        return torch.sum(x)

    def maximum(self, x: Array, y: Any) -> Array:
        return torch.maximum(x, self._like(y, x))

    def minimum(self, x: Array, y: Any) -> Array:
        return torch.minimum(x, self._like(y, x))

    def clip(self, x: Array, low: Any, high: Any) -> Array:
        return torch.clamp(x, self._like(low, x), self._like(high, x))

    def where(self, condition: Array, x: Any, y: Any) -> Array:
        return torch.where(condition, x, y)

    def all_finite(self, arrays: Sequence[Array]) -> bool:
        if not arrays:
            return True
        return bool(torch.stack([torch.isfinite(a).all() for a in arrays]).all())

    def step_context(self) -> Any:
        return torch.no_grad()

    def kernel_address(self, value: Array, dtype: str) -> int | None:
        checked = self.kernel_operands([value], dtype, [tuple(value.shape)], True) if isinstance(value, torch.Tensor) else None
        return None if checked is None else checked[0]

    def kernel_operands(self, arrays: Sequence[Any], dtype: str, shapes: Sequence[tuple], writable: bool) -> list | None:
        # Every step, for every array: one check at a time over the whole list, through C
        # callables (map), a fraction of a per-tensor Python expression's cost. Subclasses
        # (DTensor, whose data_ptr() is 0, among them) and tensors with the negative bit set
        # (whose memory holds the other sign) are left to the reference path; the conjugate
        # bit exists only on complex tensors, which the dtype check already refuses.
        tensor = torch.Tensor
        if not (
            all(map(_PLAIN_TYPES.__contains__, map(type, arrays)))
            and all(map(operator.is_, map(_LAYOUT_OF, arrays), repeat(torch.strided)))
            and all(map(operator.is_, map(_DTYPE_OF, arrays), repeat(_torch_dtype(dtype))))
            and all(map(_IS_CPU, arrays))
            and list(map(tensor.size, arrays)) == list(shapes)  # size(): nn.Parameter's .shape is 20x slower
            and all(map(tensor.is_contiguous, arrays))
            and not any(map(tensor.is_neg, arrays))
            and not (writable and any(map(tensor.is_inference, arrays)))
        ):
            return None
        return list(map(tensor.data_ptr, arrays))

    def kernel_shards(self, lists: Sequence[Optional[Sequence[Any]]]) -> Optional[tuple[list, Any]]:
        # DTensors (FSDP2) step on their local shards; anything else is checked as it is.
        dtensor = _dtensor_module()
        first = next((arrays[0] for arrays in lists if arrays), None)
        if dtensor is None or not dtensor.is_dtensor(first):
            return list(lists), None
        return dtensor.local_shards(lists)

    def squares_reducer(self, arrays: Sequence[Array]) -> Optional[Callable[[list], list]]:
        dtensor = _dtensor_module()
        return None if dtensor is None else dtensor.squares_reducer(arrays)

    def kernel_wrote(self, arrays: Sequence[Any]) -> None:
        torch._C._increment_version(list(arrays))

    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        leaves = [v.detach().clone().requires_grad_(True) for v in values]
        with torch.enable_grad():
            loss = function(leaves)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, values)]

    def grad_of_natives(self, loss: Any, targets: list[Array]) -> list[Array]:
        """Gradients of a loss (a tensor, or a zero-argument callable) with respect to leaf
        tensors such as ``nn.Parameter``s; no ``.grad`` is written."""
        for target in targets:
            if not target.requires_grad:
                raise ValueError(
                    "Differentiating a loss with respect to torch tensors needs `requires_grad=True` "
                    f"(an nn.Parameter has it). Received a tensor of shape {tuple(target.shape)} without it."
                )
        with torch.enable_grad():
            value = loss() if callable(loss) else loss
            grads = torch.autograd.grad(value, targets, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, targets)]

    @staticmethod
    def _like(value: Any, x: Array) -> Array:
        if isinstance(value, torch.Tensor):
            return value if value.device == x.device else value.to(x.device)
        return torch.tensor(value, dtype=x.dtype, device=x.device)


BACKEND = TorchBackend()
