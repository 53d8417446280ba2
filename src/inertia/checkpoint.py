"""Optimizer checkpoints in one file: ``inertia.save(optimizer, path)`` and
``inertia.load(optimizer, path)``, for every face.

What is saved: the optimizer's state only (not the model's weights: save those yourself, with
your framework's own tools): every counter, momentum / velocity buffer, EMA average, gradient
accumulator, loss-scale state and learning-rate variable, each in its exact dtype (a float16
momentum stays float16, a bfloat16 one bfloat16), and the optimizer's configuration. Resuming
from the file reproduces the uninterrupted run bit for bit.

    >>> import os, tempfile
    >>> import numpy as np, inertia
    >>> w = inertia.Variable([1.0, 2.0], name="w")
    >>> opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    >>> opt.apply([np.array([1.0, 1.0], np.float32)], [w])
    >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
    >>> inertia.save(opt, path)
    >>> resumed = inertia.SGD(learning_rate=0.1, momentum=0.9)
    >>> inertia.load(resumed, path, var_list=[w])       # builds it for `w`, then loads
    >>> int(resumed.iterations.numpy()), resumed.momentums[0].numpy()
    (1, array([-0.1, -0.1], dtype=float32))

The file (format ``inertia.optimizer-checkpoint``, version 1.0) is a plain safetensors file:

* Tensors: every state array, under a stable name. The Keras faces (``inertia.SGD``, any
  ``inertia.Optimizer``, ``inertia.LossScaleOptimizer``, ``inertia.legacy.SGD``) use the
  variable names of ``save_own_variables`` (``iteration``, ``learning_rate``,
  ``dense_kernel_momentum``, ``inner_optimizer/...`` for a loss-scale optimizer's inner
  one); ``inertia.torch.SGD`` uses ``state.<param index>.<key>`` with torch's state_dict
  indices (``state.0.momentum_buffer``; tensor-valued group options as
  ``param_groups.<group>.<key>``); ``inertia.mlx.SGD`` uses its state tree's paths joined by
  dots, as ``mlx.utils.tree_flatten`` does (``step``, ``learning_rate``, ``layer.w.v``).
* Metadata: the header's ``__metadata__["inertia"]`` holds one JSON document with the keys
  ``format``, ``format_version``, ``inertia_version``, ``face`` (keras, legacy, mlx, torch),
  ``class``, ``backend`` (the array library the state lives in), ``config`` (the options that
  describe the optimizer), ``counters`` and ``scalars`` (every counter and learning rate or
  loss scale, readable as numbers), ``tensors`` (each tensor's name -> its role:
  ``iterations``, ``learning_rate``, ``momentum``, ``ema_average``, ``gradient_accumulator``,
  ``loss_scale``, ``loss_scale_counter``, ``step``, ``velocity``, ... and the variable or
  parameter it belongs to), and per face: ``trainable_variables`` (Keras faces),
  ``param_groups`` / ``params`` (torch), ``tree`` (MLX).
* Opening it without inertia: ``safetensors.safe_open(path, "np").metadata()["inertia"]`` is
  the JSON text; ``safetensors.numpy.load_file(path)`` gives the arrays (``import ml_dtypes``
  first when the state is bfloat16).

Version policy: a minor version adds keys a reader of the same major version may ignore; a
file of a newer major version is refused with a message saying so.

Writing is atomic: the file is written to a temporary file in the same directory, flushed and
synced to disk, then renamed over ``path`` (and the directory synced), so a crash or a kill at
any moment leaves the previous checkpoint whole. Temporary files of this host's processes
that no longer run are removed at the next save. The file's bytes are made in memory first
(safetensors' own file writer goes through a temporary file of its own, which a killed process
would leave behind unnamed), so a save needs memory for one copy of the state.

Loading checks everything before it changes anything, and says what does not fit: the format
and its version, the face and class, the configuration, the tensors' names, shapes and dtypes,
the counters' ranges, finite learning rates. See :func:`load` for the configuration policy.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from inertia import backend as backends
from inertia.loss_scale import LossScaleOptimizer
from inertia.optimizer import Optimizer
from inertia.schedules import LearningRateSchedule
from inertia.variable import Variable

__all__ = ["save", "load", "read_metadata", "FORMAT", "FORMAT_VERSION"]

FORMAT = "inertia.optimizer-checkpoint"
FORMAT_VERSION = "1.0"
METADATA_KEY = "inertia"

PathLike = Union[str, "os.PathLike[str]"]

# dtype names (safetensors' serializer takes these) and the codes its header uses.
_DTYPE_CODES = {
    "bool": "BOOL", "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "float16": "F16", "bfloat16": "BF16",
    "float32": "F32", "float64": "F64",
}
_DTYPE_OF_CODE = {code: name for name, code in _DTYPE_CODES.items()}
_INTEGER_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}

# Options that decide which state exists or what it means: they must match, always.
_STRUCTURAL = {"use_ema", "gradient_accumulation_steps", "nesterov", "learning_rate_kind", "momentum_enabled", "flat_parameters"}
_COUNTER_ROLES = {"iterations", "loss_scale_counter", "step"}
_TORCH_STATE_ROLES = {"momentum_buffer": "momentum", "average": "ema_average", "gradient_accumulator": "gradient_accumulator"}
# torch param-group options compared with the optimizer's; the others (lr, momentum's value,
# initial_lr, ...) are state in torch, moved by LR schedulers, and restored from the file.
_TORCH_COMPARED_GROUP_KEYS = ("nesterov", "dampening", "weight_decay", "maximize", "clipnorm", "clipvalue")
_TORCH_WIDE_KEYS = ("use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps", "global_clipnorm")
_TENSOR_REF = "__tensor__"
_ABSENT = object()


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------
def save(optimizer: Any, path: PathLike) -> None:
    """Write ``optimizer``'s whole state to the checkpoint file ``path``, atomically.

    The optimizer's state only: save the model's weights yourself. An optimizer of any face
    may be saved at any point (before its first step, mid-accumulation, after a skipped
    loss-scale step); ``path`` is replaced as a whole or not at all.

    Args:
        optimizer: an ``inertia.Optimizer`` (``inertia.SGD``, ``inertia.LossScaleOptimizer``,
            a subclass), ``inertia.legacy.SGD``, ``inertia.mlx.SGD`` or ``inertia.torch.SGD``.
        path: the file to write (its directory must exist). The ``.safetensors`` suffix is
            customary, not required.

    Example:
        >>> import os, tempfile, numpy as np, inertia
        >>> opt = inertia.SGD(learning_rate=0.5)
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
        >>> inertia.save(opt, path)
        >>> inertia.checkpoint.read_metadata(path)["counters"]
        {'iteration': 0}
    """
    name = _path_argument(path, "path")
    face = _face_of(optimizer)
    document, tensors = _SAVERS[face](optimizer)
    from inertia import __version__

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "inertia_version": __version__,
        "face": face,
        "class": _class_name(optimizer),
        **document,
    }
    exported = {key: _export(value, key) for key, value in tensors.items()}
    try:
        text = json.dumps(document, allow_nan=False)
    except ValueError as error:  # a NaN or infinity has no standard JSON form
        raise ValueError(
            f"Cannot save optimizer {optimizer!r}: its configuration or learning rate holds a non-finite number ({error})."
        ) from None
    _write_atomically(name, exported, {METADATA_KEY: text})


def load(
    optimizer: Any,
    path: PathLike,
    *,
    var_list: Optional[Iterable[Any]] = None,
    allow_config_changes: Union[bool, Iterable[str]] = False,
) -> None:
    """Restore ``optimizer``'s state from the checkpoint ``path`` written by :func:`save`.

    Everything is checked before anything changes: a load that raises leaves the optimizer
    exactly as it was. Checked: the format and its version (a file of a newer major version
    is refused), the face and class, the configuration (below), the tensors' names (missing
    and unexpected ones are listed), shapes and dtypes (exact; a counter may move to another
    integer dtype whose range holds it), counters (non-negative integers in range; a loss
    scale's step counter below ``dynamic_growth_steps``), learning rates (finite, >= 0) and
    loss scales (finite, > 0).

    Configuration policy. The options that decide which state exists or what it means
    (``use_ema``, ``gradient_accumulation_steps``, ``nesterov``, momentum on or off, the kind
    of learning rate: a value, a schedule or a callable, torch's FlatParameters) must match:
    a difference raises, listing each option with the file's and the optimizer's values. So
    must the other hyperparameters (momentum's value, weight decay, clipping, EMA momentum
    and frequency, a schedule's settings, ...), unless ``allow_config_changes`` accepts
    them: then the state is loaded and the optimizer keeps its own values. The learning rate
    *value* is state, restored from the file, on every face: the Keras faces' learning-rate
    variable (which ``optimizer.learning_rate = x`` and callbacks set), torch's param-group
    ``lr`` and ``momentum`` (which torch's LR schedulers move; as ``load_state_dict`` does),
    MLX's ``state["learning_rate"]``. Set it after loading to change it.

    Building. A Keras-face optimizer that holds slots must be built with its variables
    before its state can be loaded (as for Keras' ``load_own_variables``): pass
    ``var_list=`` (it is then built for them once every check has passed), or call
    ``optimizer.build(var_list)`` first. Slots are keyed by the variables' paths, so give
    variables the names they had when saved. A torch optimizer knows its parameters from
    construction. An ``inertia.mlx.SGD`` that has not seen its parameters takes the file's
    state tree, in the array library it was saved from; call ``optimizer.init(parameters)``
    first to have the file checked against your parameters and to choose the library and
    device.

    Args:
        optimizer: an optimizer of the same face and class as the one saved.
        path: the checkpoint file.
        var_list: Keras faces only: the variables to build an unbuilt optimizer for (or the
            ones a built optimizer was built for).
        allow_config_changes: ``True`` to accept every hyperparameter difference that is
            not structural, or the names of those to accept (``"weight_decay"`` matches
            the key itself and any nested one ending in it, e.g.
            ``inner_optimizer.weight_decay`` or ``param_groups.1.weight_decay``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint (empty, truncated, not safetensors, without
            inertia's metadata), is of a newer format, or does not fit the optimizer; the
            message names the path and what does not fit.
        TypeError: an argument of the wrong type.

    Example:
        >>> import os, tempfile, numpy as np, inertia
        >>> opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
        >>> w = inertia.Variable([1.0], name="w")
        >>> opt.apply([np.array([1.0], np.float32)], [w])
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
        >>> inertia.save(opt, path)
        >>> other = inertia.SGD(learning_rate=0.1, momentum=0.5)
        >>> other.build([w])
        >>> inertia.load(other, path)
        Traceback (most recent call last):
        ...
        ValueError: Cannot load checkpoint ...: the optimizer's hyperparameters differ from the checkpoint's: momentum: checkpoint 0.9, optimizer 0.5. ...
        >>> inertia.load(other, path, allow_config_changes=["momentum"])
        >>> other.momentum, other.momentums[0].numpy()
        (0.5, array([-0.1], dtype=float32))
    """
    name = _path_argument(path, "path")
    face = _face_of(optimizer)
    allowed = _allow_argument(allow_config_changes)
    if var_list is not None and face not in ("keras", "legacy"):
        raise TypeError(
            f"Argument `var_list` is for the Keras faces (built with variables); a {face} optimizer "
            f"knows its parameters otherwise. Received: var_list={var_list!r:.100}"
        )
    document, arrays = _read(name)
    where = f"Cannot load checkpoint {name!r}"
    if document.get("face") != face:
        raise ValueError(
            f"{where}: it holds the state of a {document.get('face')} optimizer ({document.get('class')}), "
            f"not of a {face} one ({_class_name(optimizer)})."
        )
    if document.get("class") != _class_name(optimizer):
        raise ValueError(
            f"{where}: it holds the state of an optimizer of class {document.get('class')}; this optimizer's class is "
            f"{_class_name(optimizer)}."
        )
    commit = _LOADERS[face](optimizer, _Context(where, document, arrays, allowed), var_list)
    commit()


def read_metadata(path: PathLike) -> dict:
    """The JSON document of a checkpoint (format, face, class, config, counters, scalars,
    tensors and their roles), after checking that ``path`` is a whole checkpoint of a format
    this inertia reads.

    Example:
        >>> import os, tempfile, inertia
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
        >>> inertia.save(inertia.SGD(learning_rate=0.5), path)
        >>> meta = inertia.checkpoint.read_metadata(path)
        >>> meta["format"], meta["format_version"], meta["face"], meta["tensors"]["iteration"]
        ('inertia.optimizer-checkpoint', '1.0', 'keras', {'role': 'iterations'})
    """
    document, _ = _read(_path_argument(path, "path"))
    return document


# ----------------------------------------------------------------------------------------
# arguments and faces
# ----------------------------------------------------------------------------------------
def _path_argument(path: Any, argument: str) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Argument `{argument}` must be a str or os.PathLike. Received: {argument}={path!r}")
    name = os.fspath(path)
    if not name:
        raise ValueError(f"Argument `{argument}` must not be empty. Received: {argument}={path!r}")
    return name


def _allow_argument(allow: Any) -> Union[bool, frozenset]:
    if isinstance(allow, bool):
        return True if allow else frozenset()
    names = [allow] if isinstance(allow, str) else None
    if names is None:
        try:
            names = list(allow)
        except TypeError:
            names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(
            "Argument `allow_config_changes` must be a bool or a collection of option names. "
            f"Received: allow_config_changes={allow!r}"
        )
    structural = sorted(n for n in names if n in _STRUCTURAL)
    if structural:
        raise ValueError(
            f"Argument `allow_config_changes` names options that must match the checkpoint (they decide which "
            f"state exists or what it means): {structural}. Received: allow_config_changes={allow!r}"
        )
    return frozenset(names)


def _face_of(optimizer: Any) -> str:
    # The faces are looked up where they are already imported: an instance of one implies its
    # module was imported, and this module never imports torch on its own.
    torch_face = sys.modules.get("inertia.torch")
    if torch_face is not None and isinstance(optimizer, torch_face.SGD):
        return "torch"
    mlx_face = sys.modules.get("inertia.mlx")
    if mlx_face is not None and isinstance(optimizer, mlx_face.SGD):
        return "mlx"
    legacy_face = sys.modules.get("inertia.legacy")
    if legacy_face is not None and isinstance(optimizer, legacy_face.SGD):
        return "legacy"
    if isinstance(optimizer, Optimizer):
        return "keras"
    raise TypeError(
        "Argument `optimizer` must be an inertia optimizer (inertia.SGD or another inertia.Optimizer, "
        "inertia.LossScaleOptimizer, inertia.legacy.SGD, inertia.mlx.SGD, inertia.torch.SGD). "
        f"Received: optimizer={optimizer!r:.200}"
    )


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON data (NumPy scalars become Python numbers), or a TypeError naming where."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"Cannot save {where}: a dict with keys other than strings: {value!r:.200}")
        return {k: _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"Cannot save {where}: a {type(value).__name__} is not JSON data ({value!r:.200}).")


# ----------------------------------------------------------------------------------------
# arrays: native -> (dtype, shape, bytes) and back
# ----------------------------------------------------------------------------------------
@dataclass
class _Exported:
    dtype: str
    shape: tuple
    buffer: np.ndarray  # C-contiguous, little-endian bytes of the array (uint8)


@dataclass
class _Stored:
    dtype: Optional[str]
    shape: tuple
    data: Any  # bytes or bytearray, little-endian

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


def _export(value: Any, name: str) -> _Exported:
    """The bytes of a NumPy, torch, JAX or MLX array, without a framework round trip that
    could change its dtype (bfloat16 included)."""
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        import torch

        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.resolve_conj().resolve_neg().contiguous()
        dtype = str(tensor.dtype).replace("torch.", "")
        shape = tuple(tensor.shape)
        _check_dtype(dtype, name)
        flat = tensor.reshape(-1)
        if flat.numel() == 0:
            return _Exported(dtype, shape, np.empty(0, np.uint8))
        buffer = flat.view(torch.uint8).numpy()
        return _Exported(dtype, shape, _little_endian_bytes(buffer, flat.element_size()))
    if module == "mlx":
        import mlx.core as mx

        dtype = str(value.dtype).rsplit(".", 1)[-1]
        _check_dtype(dtype, name)
        array = np.array(value.view(mx.uint16) if dtype == "bfloat16" else value)
        return _Exported(dtype, tuple(value.shape), _numpy_bytes(array))
    if isinstance(value, (np.ndarray, np.generic)) or module == "jax" or module == "jaxlib":
        array = np.asarray(value)
        dtype = array.dtype.name
        _check_dtype(dtype, name)
        return _Exported(dtype, tuple(array.shape), _numpy_bytes(array))
    raise TypeError(f"Cannot save the state entry {name!r}: a {type(value).__name__} is not an array ({value!r:.100}).")


def _check_dtype(dtype: str, name: str) -> None:
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"Cannot save the state entry {name!r}: dtype {dtype} has no safetensors equivalent.")


def _numpy_bytes(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _little_endian_bytes(buffer: np.ndarray, itemsize: int) -> np.ndarray:
    if sys.byteorder == "big" and itemsize > 1:  # torch's bytes are native: swap each element's
        buffer = buffer.reshape(-1, itemsize)[:, ::-1].reshape(-1)
    return np.ascontiguousarray(buffer)


def _to_backend(ops: Any, stored: _Stored, dtype: Optional[str] = None, like: Any = None) -> Any:
    """The stored array in ``ops``' library (``dtype``: a counter's target dtype), placed like ``like``."""
    if ops.name == "torch":
        import torch

        target = getattr(torch, dtype or stored.dtype)
        if dtype is not None and dtype != stored.dtype:
            tensor = torch.from_numpy(stored.numpy()).to(target)
        elif len(stored.data) == 0:
            tensor = torch.empty(stored.shape, dtype=target)
        else:
            data = stored.data if isinstance(stored.data, bytearray) else bytearray(stored.data)
            tensor = torch.frombuffer(data, dtype=target).reshape(stored.shape)
            if sys.byteorder == "big" and tensor.element_size() > 1:
                tensor = torch.from_numpy(stored.numpy()).to(target)
            tensor = tensor.clone()
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


# ----------------------------------------------------------------------------------------
# the file: atomic writing, reading
# ----------------------------------------------------------------------------------------
_TEMP_SUFFIX = ".tmp"


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_pattern(base: str) -> "re.Pattern[str]":
    return re.compile(rf"^\.{re.escape(base)}\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}$")


def _write_atomically(path: str, tensors: dict[str, _Exported], metadata: dict[str, str]) -> None:
    import safetensors

    target = os.path.abspath(path)
    directory, base = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot save to path={path!r}: its directory {directory!r} does not exist.")
    if os.path.isdir(target):
        raise IsADirectoryError(f"Cannot save to path={path!r}: it is a directory.")
    _remove_stale_temporaries(directory, base)
    # The name says whose it is (host and pid), so that a later save may remove it once that
    # process is gone, and never while it may still be writing.
    temporary = os.path.join(directory, f".{base}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    # The bytes are made in memory and written through this descriptor: safetensors'
    # serialize_file (0.8) writes through a temporary file of its own, which a killed
    # process would leave behind under a name that says nothing of whose it is.
    data = safetensors.serialize(_serializer_specs(safetensors, tensors), metadata=metadata)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _sync_directory(directory)


def _serializer_specs(safetensors: Any, tensors: dict[str, _Exported]) -> dict:
    """safetensors' input: ``TensorSpec`` pointers (0.8 and later: no copy of the bytes) or
    ``{"dtype", "shape", "data"}`` dicts (earlier versions)."""
    spec = getattr(safetensors, "TensorSpec", None)
    if spec is None:
        return {n: {"dtype": t.dtype, "shape": list(t.shape), "data": t.buffer.tobytes()} for n, t in tensors.items()}
    return {
        n: spec(dtype=t.dtype, shape=list(t.shape), data_ptr=t.buffer.ctypes.data, data_len=t.buffer.nbytes)
        for n, t in tensors.items()
    }


def _sync_directory(directory: str) -> None:
    """Make the rename durable (POSIX: the directory entry is data of the directory)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot sync a directory
            raise
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporary files of earlier saves to ``base`` whose process is gone (killed
    mid-write): only this host's, never this process' own, never a live process'."""
    if os.name != "posix":
        return
    pattern, host, own = _temp_pattern(base), _host_tag(), os.getpid()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for entry in names:
        match = pattern.match(entry)
        if match is None or match["host"] != host or int(match["pid"]) == own or _process_exists(int(match["pid"])):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _read(path: str) -> tuple[dict, dict[str, _Stored]]:
    with open(path, "rb") as handle:  # one read: a save replacing the file meanwhile cannot mix two versions
        data = handle.read()
    if not data:
        raise ValueError(f"{path!r} is not an inertia checkpoint: the file is empty.")
    import safetensors

    try:
        listed = safetensors.deserialize(data)
    except Exception as error:  # safetensors raises its own SafetensorError on any malformed input
        raise ValueError(f"{path!r} is not an inertia checkpoint: it is not a whole safetensors file ({error}).") from None
    length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ValueError(
            f"{path!r} is not an inertia checkpoint: it is a safetensors file without inertia's metadata "
            f"(no __metadata__[{METADATA_KEY!r}] entry). Optimizer checkpoints are written by inertia.save."
        )
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path!r} is not an inertia checkpoint: its metadata is not JSON ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{path!r} is not an inertia checkpoint: its metadata names the format {found!r}, not {FORMAT!r}.")
    _check_version(path, document)
    arrays: dict[str, _Stored] = {}
    for name, info in listed:
        dtype = _DTYPE_OF_CODE.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path!r}: tensor {name!r} has dtype {info['dtype']}, which no inertia optimizer holds.")
        arrays[name] = _Stored(dtype, tuple(info["shape"]), info["data"])
    table = document.get("tensors")
    if not isinstance(table, dict) or set(table) != set(arrays):
        listed_names = set(table) if isinstance(table, dict) else set()
        raise ValueError(
            f"{path!r} is not a consistent inertia checkpoint: its metadata lists the tensors "
            f"{sorted(listed_names - set(arrays))} that it does not hold, and it holds {sorted(set(arrays) - listed_names)} "
            "that its metadata does not list."
        )
    return document, arrays


def _check_version(path: str, document: dict) -> None:
    version = document.get("format_version")
    match = re.fullmatch(r"(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{path!r} is not an inertia checkpoint: its format version {version!r} is not 'major.minor'.")
    major, supported = int(match[1]), int(FORMAT_VERSION.split(".")[0])
    if major > supported:
        raise ValueError(
            f"{path!r} was written in checkpoint format {version} by inertia {document.get('inertia_version')}; this "
            f"inertia reads format {supported}.x. Upgrade inertia to load it."
        )
    if major < supported:  # pragma: no cover - there is no older format yet
        raise ValueError(f"{path!r} is in checkpoint format {version}, older than any this inertia reads.")


# ----------------------------------------------------------------------------------------
# checks shared by the faces
# ----------------------------------------------------------------------------------------
@dataclass
class _Context:
    where: str
    document: dict
    arrays: dict[str, _Stored]
    allowed: Union[bool, frozenset]

    def fail(self, detail: str) -> ValueError:
        return ValueError(f"{self.where}: {detail}")

    def entry(self, key: str, kind: type) -> Any:
        value = self.document.get(key)
        if not isinstance(value, kind):
            raise self.fail(f"its metadata has no valid {key!r} entry (found {value!r:.100}).")
        return value


def _same(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or a == b


def _check_config(context: _Context, saved: dict, current: dict) -> set[str]:
    """Compare two comparable configurations (flat dicts). Structural differences raise;
    other differences raise unless allowed. Returns the keys accepted as different."""
    keys = list(dict.fromkeys([*saved, *current]))
    allowed = context.allowed
    if allowed is not True:
        unknown = sorted(n for n in allowed if not any(_matches(k, n) for k in keys))
        if unknown:
            raise context.fail(
                f"allow_config_changes names options the optimizer's configuration does not have: {unknown}. "
                f"Its options: {sorted(keys)}."
            )
    structural, changed = [], []
    for key in keys:
        a, b = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if not _same(a, b):
            (structural if key.rsplit(".", 1)[-1] in _STRUCTURAL else changed).append((key, a, b))

    def listing(diffs: list) -> str:
        return "; ".join(f"{k}: checkpoint {_shown(a)}, optimizer {_shown(b)}" for k, a, b in diffs)

    if structural:
        raise context.fail(
            "the optimizer is configured differently from the checkpoint in options that decide which state "
            f"exists or what it means, which must match: {listing(structural)}. Create the optimizer with "
            "the checkpoint's values."
        )
    refused = [d for d in changed if not (allowed is True or any(_matches(d[0], n) for n in allowed))]
    if refused:
        names = sorted({k.rsplit(".", 1)[-1] for k, _, _ in refused})
        raise context.fail(
            f"the optimizer's hyperparameters differ from the checkpoint's: {listing(refused)}. To load the state "
            f"and keep the optimizer's own values, pass allow_config_changes={names!r} (or True)."
        )
    return {k for k, _, _ in changed}


def _matches(key: str, name: str) -> bool:
    return key == name or key.endswith("." + name)


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _check_names(context: _Context, expected: Iterable[str], found: Iterable[str], hint: str = "") -> None:
    expected, found = list(expected), set(found)
    missing = [n for n in expected if n not in found]
    unexpected = sorted(found - set(expected))
    if missing or unexpected:
        raise context.fail(
            f"its tensors do not match the optimizer's state. Missing from the checkpoint: {missing}; "
            f"in the checkpoint but not in the optimizer: {unexpected}.{hint}"
        )


def _check_array(context: _Context, name: str, stored: _Stored, shape: tuple, dtype: str, problems: list) -> None:
    if tuple(stored.shape) != tuple(shape):
        problems.append(f"{name!r} has shape {tuple(stored.shape)} in the checkpoint, {tuple(shape)} in the optimizer")
    if stored.dtype != dtype:
        problems.append(f"{name!r} has dtype {stored.dtype} in the checkpoint, {dtype} in the optimizer")


def _raise_problems(context: _Context, problems: list) -> None:
    if problems:
        raise context.fail("; ".join(problems) + ".")


def _check_counter(
    context: _Context, name: str, stored: _Stored, dtype: str, problems: list, limit: Optional[int] = None
) -> Optional[str]:
    """A counter: an integer scalar, >= 0, in the range of ``dtype`` (the optimizer's
    counter dtype) and below ``limit``; returns the dtype to convert to, or None."""
    if stored.dtype not in _INTEGER_DTYPES or stored.shape != ():
        problems.append(f"counter {name!r} must be an integer scalar; the checkpoint holds {stored.dtype} of shape {stored.shape}")
        return None
    value = stored.integer()
    high = int(np.iinfo(dtype).max) if dtype in _INTEGER_DTYPES else None
    if value < 0 or (high is not None and value > high) or (limit is not None and value >= limit):
        bound = f"< {limit}" if limit is not None else f"<= {high} (the range of {dtype})"
        problems.append(f"counter {name!r} is {value}; it must be >= 0 and {bound}")
    counters = context.document.get("counters")
    if not isinstance(counters, dict) or counters.get(name) != value:
        listed = counters.get(name) if isinstance(counters, dict) else None
        problems.append(f"counter {name!r} is {value} in its tensor but {listed!r} in the metadata (the file is inconsistent)")
    return dtype if dtype != stored.dtype else None


def _check_rate(name: str, stored: _Stored, problems: list, *, positive: bool = False) -> None:
    if stored.dtype in _INTEGER_DTYPES or stored.dtype == "bool":
        problems.append(f"{name!r} must be floating-point; the checkpoint holds {stored.dtype}")
        return
    values = stored.floats()
    if not np.all(np.isfinite(values)) or np.any(values <= 0 if positive else values < 0):
        rule = "finite and > 0" if positive else "finite and >= 0"
        problems.append(f"{name!r} must be {rule}; the checkpoint holds {values.tolist()!r:.100}")


# ----------------------------------------------------------------------------------------
# the Keras faces: inertia.Optimizer (SGD, LossScaleOptimizer, subclasses), inertia.legacy.SGD
# ----------------------------------------------------------------------------------------
def _learning_rate_kind(optimizer: Optimizer) -> str:
    lr = optimizer._learning_rate
    if isinstance(lr, Variable):
        return "variable"
    return "schedule" if isinstance(lr, LearningRateSchedule) else "callable"


def _keras_config(optimizer: Optimizer) -> dict:
    if isinstance(optimizer, LossScaleOptimizer):
        inner = optimizer.inner_optimizer
        return {
            "initial_scale": optimizer.initial_scale,
            "dynamic_growth_steps": optimizer.dynamic_growth_steps,
            "inner_optimizer": {"class": _class_name(inner), **_keras_config(inner)},
        }
    config = dict(optimizer.get_config())
    config.pop("name", None)  # names and compilation change no number
    config.pop("jit_compile", None)
    kind = _learning_rate_kind(optimizer)
    if kind == "schedule":
        from inertia import schedules

        config["learning_rate"] = schedules.serialize(optimizer._learning_rate)
    elif kind == "callable":
        function = optimizer._learning_rate
        config["learning_rate"] = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"
    config["learning_rate_kind"] = kind
    return _jsonable(config, "the optimizer's config")


def _keras_comparable(config: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in config.items():
        if key == "inner_optimizer" and isinstance(value, dict):
            out.update(_keras_comparable(value, f"{prefix}inner_optimizer."))
            continue
        if key == "learning_rate" and config.get("learning_rate_kind") == "variable":
            continue  # the value is state (the learning-rate variable), restored from the file
        out[prefix + key] = value
        if key == "momentum" and isinstance(value, (int, float)):
            out[prefix + "momentum_enabled"] = value != 0
    return out


@dataclass
class _Role:
    info: dict
    limit: Optional[int] = None  # a counter's exclusive upper bound


def _keras_roles(optimizer: Optimizer) -> dict[int, _Role]:
    roles: dict[int, _Role] = {}
    trainables = optimizer._trainable_variables

    def mark(variables: Iterable[Optional[Variable]], role: str) -> None:
        for index, variable in enumerate(variables):
            if variable is not None:
                info = {"role": role}
                if index < len(trainables):
                    info["variable"] = trainables[index].path
                roles[id(variable)] = _Role(info)

    roles[id(optimizer._iterations)] = _Role({"role": "iterations"})
    if isinstance(optimizer._learning_rate, Variable):
        roles[id(optimizer._learning_rate)] = _Role({"role": "learning_rate"})
    mark(optimizer._model_variables_moving_average, "ema_average")
    mark(optimizer._accumulated_gradients, "gradient_accumulator")
    mark(getattr(optimizer, "momentums", None) or [], "momentum")
    if isinstance(optimizer, LossScaleOptimizer):
        if optimizer.built:
            roles[id(optimizer.step_counter)] = _Role({"role": "loss_scale_counter"}, limit=optimizer.dynamic_growth_steps)
            roles[id(optimizer.dynamic_scale)] = _Role({"role": "loss_scale"})
        roles.update(_keras_roles(optimizer.inner_optimizer))
    return roles


def _keras_save(optimizer: Optimizer) -> tuple[dict, dict]:
    roles = _keras_roles(optimizer)
    tensors: dict[str, Any] = {}
    table: dict[str, dict] = {}
    counters: dict[str, int] = {}
    scalars: dict[str, float] = {}
    for name, variable in optimizer._state_variables():
        if name in tensors:
            raise ValueError(f"Cannot save optimizer {optimizer.name!r}: two of its variables are named {name!r}.")
        tensors[name] = variable.value
        info = roles.get(id(variable), _Role({"role": "variable"})).info
        table[name] = info
        if info["role"] in _COUNTER_ROLES:
            counters[name] = int(variable.numpy())
        elif info["role"] in ("learning_rate", "loss_scale"):
            scalars[name] = float(variable.numpy())
    document = {
        "backend": optimizer._backend.name,
        "built": bool(optimizer.built),
        "config": _keras_config(optimizer),
        "counters": counters,
        "scalars": scalars,
        "tensors": table,
        "trainable_variables": [
            {"path": v.path, "shape": list(v.shape), "dtype": v.dtype} for v in optimizer._trainable_variables
        ],
    }
    return document, tensors


def _keras_load(optimizer: Optimizer, context: _Context, var_list: Optional[Iterable[Any]]) -> Callable[[], None]:
    target = optimizer
    if var_list is not None:
        var_list = list(var_list)
        if optimizer.built:
            known = optimizer._trainable_variables_indices
            if len(var_list) != len(optimizer._trainable_variables) or any(id(v) not in known for v in var_list):
                raise TypeError(
                    f"Argument `var_list` is for building an unbuilt optimizer; optimizer {optimizer.name!r} is already "
                    f"built for {len(optimizer._trainable_variables)} other variables. Received: var_list={var_list!r:.200}"
                )
        else:
            # Built on a copy first: every check runs against the slots the build would make,
            # and the optimizer itself is built only once they pass.
            try:
                target = copy.deepcopy(optimizer)
            except Exception as error:  # a subclass holding something that cannot be copied
                raise TypeError(
                    f"Cannot build a copy of optimizer {optimizer.name!r} to check the checkpoint against ({error}): "
                    "call optimizer.build(var_list) first, then inertia.load without var_list."
                ) from None
            target.build(var_list)
    _check_config(context, _keras_comparable(context.entry("config", dict)), _keras_comparable(_keras_config(target)))

    entries = target._state_variables()
    hint = ""
    if not target.built:
        hint = (
            " The optimizer has not been built: pass var_list=[...] to inertia.load, or call "
            "optimizer.build(variables) first."
        )
    elif len(entries) == len(context.arrays):
        hint = " Slots are keyed by the variables' paths: give the variables the names they had when saved."
    _check_names(context, [name for name, _ in entries], context.arrays, hint)

    roles = _keras_roles(target)
    problems: list[str] = []
    conversions: dict[str, Optional[str]] = {}
    for name, variable in entries:
        stored = context.arrays[name]
        role = roles.get(id(variable), _Role({"role": "variable"}))
        kind = role.info["role"]
        if kind in _COUNTER_ROLES:
            conversions[name] = _check_counter(context, name, stored, variable.dtype, problems, role.limit)
            continue
        _check_array(context, name, stored, variable.shape, variable.dtype, problems)
        if kind == "learning_rate":
            _check_rate(name, stored, problems)
        elif kind == "loss_scale":
            _check_rate(name, stored, problems, positive=True)
    _raise_problems(context, problems)
    store = {}
    for name, _ in entries:
        array = context.arrays[name].numpy()
        store[name] = array.astype(conversions[name]) if conversions.get(name) else array

    def commit() -> None:
        if target is not optimizer:
            optimizer.build(var_list)
        optimizer.load_own_variables(store)

    return commit


# ----------------------------------------------------------------------------------------
# the torch face: inertia.torch.SGD (FlatParameters included)
# ----------------------------------------------------------------------------------------
def _torch_indexed_params(optimizer: Any, state_dict: dict) -> dict[int, Any]:
    """Param index (as torch's state_dict numbers them) -> the parameter."""
    indexed: dict[int, Any] = {}
    for group, saved in zip(optimizer.param_groups, state_dict["param_groups"]):
        for param, index in zip(group["params"], saved["params"]):
            indexed.setdefault(index, param)
    return indexed


def _torch_dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _torch_config(optimizer: Any) -> dict:
    config = {key: getattr(optimizer, key) for key in _TORCH_WIDE_KEYS}
    config["flat_parameters"] = optimizer._flat is not None
    return _jsonable(config, "the optimizer's options")


def _number_or_value(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else value.tolist()
    return value


def _torch_comparable(config: dict, groups: list[dict]) -> dict:
    out = dict(config)
    for index, group in enumerate(groups):
        for key in _TORCH_COMPARED_GROUP_KEYS:
            out[f"param_groups.{index}.{key}"] = _jsonable(_number_or_value(group.get(key)), f"param group {index}'s {key!r}")
        momentum = _number_or_value(group.get("momentum", 0))
        out[f"param_groups.{index}.momentum_enabled"] = isinstance(momentum, (int, float)) and momentum != 0
    return out


def _torch_save(optimizer: Any) -> tuple[dict, dict]:
    import torch

    if optimizer._ema_swapped:
        raise ValueError(
            "Cannot save the optimizer while the EMA weights are swapped in (its averages hold the weights "
            "now): call `swap_ema_weights()` again, or leave the `ema_weights()` block, first."
        )
    state_dict = optimizer.state_dict()
    indexed = _torch_indexed_params(optimizer, state_dict)
    tensors: dict[str, Any] = {}
    table: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Cannot save the state of param {index}: entry {key!r} is not a tensor ({value!r:.100}).")
            name = f"state.{index}.{key}"
            tensors[name] = value
            table[name] = {"role": _TORCH_STATE_ROLES.get(key, key), "param": int(index)}
    groups = []
    scalars: dict[str, Any] = {}
    for number, group in enumerate(state_dict["param_groups"]):
        saved: dict[str, Any] = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                name = f"param_groups.{number}.{key}"
                tensors[name] = value
                table[name] = {"role": "hyperparameter", "group": number, "key": key}
                saved[key] = {_TENSOR_REF: name}
            else:
                saved[key] = _jsonable(value, f"param group {number}'s {key!r}")
        groups.append(saved)
        scalars[f"param_groups.{number}.lr"] = _jsonable(_number_or_value(group["lr"]), "lr")
    counters = state_dict.get("inertia", {"micro_steps": 0, "updates": 0})
    document = {
        "backend": "torch",
        "config": _torch_config(optimizer),
        "counters": {"micro_steps": int(counters["micro_steps"]), "updates": int(counters["updates"])},
        "scalars": scalars,
        "tensors": table,
        "param_groups": groups,
        "params": [
            {"shape": list(indexed[i].shape), "dtype": _torch_dtype_name(indexed[i])} for i in sorted(indexed)
        ],
    }
    return document, tensors


def _torch_load(optimizer: Any, context: _Context, var_list: Any) -> Callable[[], None]:
    import torch

    from inertia.torch import _check_group

    if optimizer._ema_swapped:
        raise context.fail("the optimizer's EMA weights are swapped in: call `swap_ema_weights()` again before loading.")
    saved_groups = context.entry("param_groups", list)
    groups = optimizer.param_groups
    sizes = [len(g.get("params", ())) if isinstance(g, dict) else None for g in saved_groups]
    if sizes != [len(g["params"]) for g in groups]:
        raise context.fail(
            f"its param groups hold {sizes} parameters, the optimizer's {[len(g['params']) for g in groups]}."
        )
    current = optimizer.state_dict()  # only to number the parameters as torch does
    indexed = _torch_indexed_params(optimizer, current)
    saved_params = context.entry("params", list)
    saved_indices = [i for g in saved_groups for i in g["params"]]
    if sorted(set(saved_indices)) != list(range(len(saved_params))) or len(saved_params) != len(indexed):
        raise context.fail(f"its param groups number {len(saved_params)} parameters; the optimizer has {len(indexed)}.")
    problems = []
    by_position = [indexed[i] for g in current["param_groups"] for i in g["params"]]
    at_index = dict(zip(saved_indices, by_position))
    for index, info in enumerate(saved_params):
        param = at_index[index]
        if list(param.shape) != info.get("shape") or _torch_dtype_name(param) != info.get("dtype"):
            problems.append(
                f"param {index} is {info.get('dtype')} of shape {tuple(info.get('shape') or ())} in the checkpoint, "
                f"{_torch_dtype_name(param)} of shape {tuple(param.shape)} in the optimizer"
            )
    _raise_problems(context, problems)

    def decoded(value: Any, like: Any) -> Any:
        if isinstance(value, dict) and set(value) == {_TENSOR_REF}:
            name = value[_TENSOR_REF]
            if name not in context.arrays:
                raise context.fail(f"its metadata refers to a tensor {name!r} that it does not hold.")
            return _to_backend(backends.get("torch"), context.arrays[name], like=like if isinstance(like, torch.Tensor) else None)
        return value

    restored = []
    for saved, group in zip(saved_groups, groups):
        restored.append({key: decoded(value, group.get(key)) for key, value in saved.items() if key != "params"})
    accepted = _check_config(
        context, _torch_comparable(context.entry("config", dict), restored), _torch_comparable(_torch_config(optimizer), groups)
    )
    new_groups = []
    for number, (saved, values, group) in enumerate(zip(saved_groups, restored, groups)):
        values = dict(values)
        for key in _TORCH_COMPARED_GROUP_KEYS:  # accepted differences keep the optimizer's own values
            if f"param_groups.{number}.{key}" in accepted:
                values[key] = group.get(key)
        try:
            _check_group({**optimizer.defaults, **values})
        except (TypeError, ValueError) as error:
            raise context.fail(f"param group {number}: {error}") from None
        new_groups.append({**values, "params": list(saved["params"])})

    state: dict[int, dict[str, Any]] = {}
    for name, info in context.document["tensors"].items():
        if info.get("role") == "hyperparameter":
            continue
        index, key = info.get("param"), name.rsplit(".", 1)[-1]
        if not isinstance(index, int) or name != f"state.{index}.{key}" or index not in at_index:
            problems.append(f"tensor {name!r} belongs to no parameter of the optimizer")
            continue
        if key not in _TORCH_STATE_ROLES:
            problems.append(f"tensor {name!r} is state inertia.torch.SGD does not keep ({key!r})")
            continue
        param = at_index[index]
        _check_array(context, name, context.arrays[name], tuple(param.shape), _torch_dtype_name(param), problems)
        state.setdefault(index, {})[key] = name
    for key in ("average", "gradient_accumulator"):
        option = "use_ema" if key == "average" else "gradient_accumulation_steps"
        if not getattr(optimizer, option) and any(key in entries for entries in state.values()):
            problems.append(f"it holds {key!r} tensors, which an optimizer without {option} does not keep")
    counters = context.entry("counters", dict)
    for key in ("micro_steps", "updates"):
        value = counters.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= np.iinfo(np.int64).max:
            problems.append(f"counter {key!r} must be an integer in [0, 2**63 - 1]; the checkpoint holds {value!r}")
    _raise_problems(context, problems)
    torch_ops = backends.get("torch")
    tensors = {
        index: {key: _to_backend(torch_ops, context.arrays[name], like=at_index[index]) for key, name in entries.items()}
        for index, entries in state.items()
    }
    state_dict = {
        "state": tensors,
        "param_groups": new_groups,
        "inertia": {"micro_steps": counters["micro_steps"], "updates": counters["updates"]},
    }

    def commit() -> None:
        optimizer.load_state_dict(state_dict)

    return commit


# ----------------------------------------------------------------------------------------
# the MLX face: inertia.mlx.SGD (state trees of NumPy, torch, JAX or MLX arrays)
# ----------------------------------------------------------------------------------------
def _mlx_config(optimizer: Any) -> dict:
    return _jsonable(
        {
            "momentum": optimizer.momentum,
            "weight_decay": optimizer.weight_decay,
            "dampening": optimizer.dampening,
            "nesterov": optimizer.nesterov,
            "learning_rate_kind": "schedule" if "learning_rate" in optimizer._schedulers else "value",
        },
        "the optimizer's options",
    )


def _mlx_comparable(config: dict) -> dict:
    out = dict(config)
    momentum = config.get("momentum")
    out["momentum_enabled"] = isinstance(momentum, (int, float)) and momentum != 0
    return out


def _is_array(value: Any) -> bool:
    ops = backends.of(value)
    return ops is not None and ops.is_array(value)


def _mlx_skeleton(node: Any, path: tuple, tensors: dict, table: dict) -> dict:
    """The state tree as JSON, every array replaced by ``{"tensor": name}``."""
    if isinstance(node, dict):
        items = []
        for key, value in node.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"Cannot save the MLX state: key {key!r} at {_dotted(path) or 'the top'} is not a str or int.")
            items.append([key, _mlx_skeleton(value, path + (key,), tensors, table)])
        return {"dict": items}
    if isinstance(node, (list, tuple)):
        kind = "list" if isinstance(node, list) else "tuple"
        return {kind: [_mlx_skeleton(value, path + (i,), tensors, table) for i, value in enumerate(node)]}
    if _is_array(node):
        name = _dotted(path)
        if name in tensors:
            raise ValueError(f"Cannot save the MLX state: two entries flatten to the name {name!r}.")
        tensors[name] = node
        if path == ("step",):
            table[name] = {"role": "step"}
        elif path == ("learning_rate",):
            table[name] = {"role": "learning_rate"}
        elif path[-1] == "v" and len(path) > 1:
            table[name] = {"role": "velocity", "parameter": _dotted(path[:-1])}
        else:
            table[name] = {"role": "state"}
        return {"tensor": name}
    return {"value": _jsonable(node, f"the MLX state entry {_dotted(path)!r}")}


def _dotted(path: tuple) -> str:
    return ".".join(str(key) for key in path)


def _mlx_save(optimizer: Any) -> tuple[dict, dict]:
    tensors: dict[str, Any] = {}
    table: dict[str, dict] = {}
    tree = _mlx_skeleton(optimizer.state, (), tensors, table)
    ops = optimizer._ops
    document = {
        "backend": ops.name,
        "config": _mlx_config(optimizer),
        "counters": {"step": int(np.asarray(ops.to_numpy(optimizer.state["step"])))},
        "scalars": {"learning_rate": _jsonable(np.asarray(ops.to_numpy(optimizer.state["learning_rate"])).tolist(), "learning_rate")},
        "tensors": table,
        "tree": tree,
    }
    return document, tensors


def _mlx_load(optimizer: Any, context: _Context, var_list: Any) -> Callable[[], None]:
    from inertia.mlx import _step_dtype

    _check_config(context, _mlx_comparable(context.entry("config", dict)), _mlx_comparable(_mlx_config(optimizer)))
    current_tensors: dict[str, Any] = {}
    _mlx_skeleton(optimizer.state, (), current_tensors, {})
    initialized = any(key not in ("step", "learning_rate") for key in optimizer.state)
    if initialized:
        ops = optimizer._ops
    else:
        name = context.entry("backend", str)
        try:
            ops = backends.get(name)
        except Exception as error:
            raise context.fail(
                f"its state lives in {name} arrays, and {name} cannot be used here ({error}). Call "
                "optimizer.init(parameters) first to load it into your parameters' array library."
            ) from None
    tree = context.entry("tree", dict)
    expected = current_tensors if initialized else None
    problems: list[str] = []
    names_in_tree: list[str] = []

    def build(node: Any, path: tuple) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise context.fail(f"its state tree is malformed at {_dotted(path) or 'the top'!r}.")
        (kind, value), = node.items()
        if kind == "dict":
            return {key: build(child, path + (key,)) for key, child in value}
        if kind in ("list", "tuple"):
            items = [build(child, path + (i,)) for i, child in enumerate(value)]
            return items if kind == "list" else tuple(items)
        if kind == "value":
            return value
        if kind != "tensor" or value not in context.arrays:
            raise context.fail(f"its state tree refers to a tensor {value!r} that it does not hold.")
        names_in_tree.append(value)
        stored = context.arrays[value]
        like = expected.get(value) if expected is not None else None
        if path == ("step",):
            dtype = _step_dtype(ops)
            conversion = _check_counter(context, value, stored, dtype, problems)
            return lambda: _to_backend(ops, stored, dtype=conversion, like=like)
        if path == ("learning_rate",):
            # Its dtype is the schedule's (a scheduled rate is computed again at the next step),
            # or float32: the file's array is restored as it is.
            _check_rate(value, stored, problems)
        elif like is not None:
            _check_array(context, value, stored, tuple(ops.shape(like)), ops.dtype_name(like), problems)
        return lambda: _to_backend(ops, stored, like=like)

    skeleton = build(tree, ())
    if not isinstance(skeleton, dict) or "step" not in skeleton or "learning_rate" not in skeleton:
        raise context.fail("its state tree lacks the 'step' or 'learning_rate' entry.")
    if expected is not None:
        _check_names(
            context, list(expected), names_in_tree,
            " The optimizer was initialized for other parameters (or the checkpoint was saved for others).",
        )
    _raise_problems(context, problems)

    def materialize(node: Any) -> Any:
        if callable(node):
            return node()
        if isinstance(node, dict):
            return {key: materialize(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            items = [materialize(value) for value in node]
            return items if isinstance(node, list) else tuple(items)
        return node

    state = materialize(skeleton)  # every array made before the optimizer sees any

    def commit() -> None:
        optimizer.state = state

    return commit


_SAVERS: dict[str, Callable[[Any], tuple[dict, dict]]] = {
    "keras": _keras_save,
    "legacy": _keras_save,
    "torch": _torch_save,
    "mlx": _mlx_save,
}
_LOADERS: dict[str, Callable[[Any, _Context, Any], Callable[[], None]]] = {
    "keras": _keras_load,
    "legacy": _keras_load,
    "torch": _torch_load,
    "mlx": _mlx_load,
}
