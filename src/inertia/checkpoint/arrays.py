"""The state's arrays as a checkpoint holds them: a dtype name, a shape and little-endian
bytes. :func:`snapshot` copies a NumPy, torch, JAX, TensorFlow or MLX array out of the optimizer (a copy
taken at once: a step that runs later, in another thread, cannot change what is written);
:func:`to_backend` makes an array of an array library again. Neither goes through another
library on the way, so no dtype changes (bfloat16 included).

The array libraries are imported only to handle their own arrays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# The dtypes a checkpoint may hold (by name) and the codes of safetensors' header.
DTYPE_CODES = {
    "bool": "BOOL", "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "float16": "F16", "bfloat16": "BF16",
    "float32": "F32", "float64": "F64",
}
DTYPE_OF_CODE = {code: name for name, code in DTYPE_CODES.items()}
INTEGER_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}


@dataclass
class ArrayBytes:
    """One array: ``dtype`` (a name of :data:`DTYPE_CODES`), ``shape``, and ``data``, its
    C-ordered little-endian bytes (a 1-d uint8 NumPy array, owned: never a view of live state)."""

    dtype: str
    shape: tuple
    data: np.ndarray

    def numpy(self) -> np.ndarray:
        """A writable NumPy array (bfloat16 needs the ml_dtypes package)."""
        if self.dtype == "bfloat16":
            try:
                import ml_dtypes
            except ImportError:
                raise TypeError("Loading bfloat16 state needs the `ml_dtypes` package (pip install ml-dtypes).") from None
            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(self.dtype).newbyteorder("<")
        array = np.frombuffer(self.data, dtype=dtype).reshape(self.shape)
        return array.astype(array.dtype.newbyteorder("="), copy=True)

    def integer(self) -> int:
        return int(self.numpy().reshape(-1)[0])

    def floats(self) -> np.ndarray:
        return self.numpy().astype(np.float64)


def snapshot(value: Any, name: str) -> ArrayBytes:
    """A copy of a NumPy, torch, JAX, TensorFlow or MLX array's dtype, shape and bytes, taken now.

    torch tensors are copied to the host whatever their device, strides (non-contiguous,
    channels-last), conjugate or negative bit; a JAX array sharded over devices is gathered."""
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        import torch

        tensor = value.detach()
        dtype = str(tensor.dtype).replace("torch.", "")
        shape = tuple(tensor.shape)
        _check_dtype(dtype, name)
        host = torch.empty(shape, dtype=tensor.dtype)  # row-major, on the host: one copy, from any device
        host.copy_(tensor)
        flat = host.reshape(-1)
        if flat.numel() == 0:
            return ArrayBytes(dtype, shape, np.empty(0, np.uint8))
        buffer = flat.view(torch.uint8).numpy()
        return ArrayBytes(dtype, shape, _little_endian_bytes(buffer, flat.element_size()))
    if module == "mlx":
        import mlx.core as mx

        dtype = str(value.dtype).rsplit(".", 1)[-1]
        _check_dtype(dtype, name)
        array = np.array(value.view(mx.uint16) if dtype == "bfloat16" else value)  # np.array copies
        return ArrayBytes(dtype, tuple(value.shape), _numpy_bytes(array))
    if module == "tensorflow":  # a tf.Variable's value now (bfloat16 comes out as ml_dtypes')
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)) or module == "jax" or module == "jaxlib":
        array = np.array(value, copy=True)  # NumPy state is written in place by the next step
        dtype = array.dtype.name
        _check_dtype(dtype, name)
        return ArrayBytes(dtype, tuple(array.shape), _numpy_bytes(array))
    raise TypeError(f"Cannot save the state entry {name!r}: a {type(value).__name__} is not an array ({value!r:.100}).")


def _check_dtype(dtype: str, name: str) -> None:
    if dtype not in DTYPE_CODES:
        raise TypeError(f"Cannot save the state entry {name!r}: dtype {dtype} has no safetensors equivalent.")


def _numpy_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array`` (one the caller owns), little-endian and C-ordered."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _little_endian_bytes(buffer: np.ndarray, itemsize: int) -> np.ndarray:
    if sys.byteorder == "big" and itemsize > 1:  # torch's bytes are native: swap each element's
        buffer = buffer.reshape(-1, itemsize)[:, ::-1].reshape(-1)
    return np.ascontiguousarray(buffer)


def to_backend(ops: Any, stored: ArrayBytes, dtype: Optional[str] = None, like: Any = None) -> Any:
    """The stored array in ``ops``' library (``dtype``: a counter's target dtype), placed like ``like``."""
    if ops.name == "torch":
        import torch

        target = getattr(torch, dtype or stored.dtype)
        if dtype is not None and dtype != stored.dtype:  # a counter, in range: converted by NumPy
            tensor = torch.from_numpy(stored.numpy().astype(dtype))  # (torch before 2.3 reads no uint64)
        elif stored.data.size == 0:
            tensor = torch.empty(stored.shape, dtype=target)
        else:
            tensor = torch.frombuffer(bytearray(stored.data), dtype=target).reshape(stored.shape)
            if sys.byteorder == "big" and tensor.element_size() > 1:
                tensor = torch.from_numpy(stored.numpy()).to(target)
        device = getattr(like, "device", None)
        return tensor.to(device) if device is not None else tensor
    if ops.name == "mlx" and (dtype or stored.dtype) == "bfloat16":
        import mlx.core as mx

        bits = np.frombuffer(stored.data, dtype=np.dtype("<u2")).reshape(stored.shape).astype(np.uint16)
        return mx.array(bits).view(mx.bfloat16)
    array = stored.numpy()
    if dtype is not None and dtype != stored.dtype:
        array = array.astype(dtype)
    return ops.asarray(array, dtype=dtype or stored.dtype, like=like) if ops.name != "numpy" else array
