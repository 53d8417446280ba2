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
  ``inertia.Optimizer``, ``inertia.LossScaleOptimizer``, ``inertia.legacy.SGD``,
  ``inertia.tf_keras.SGD``) use the
  variable names of ``save_own_variables`` (``iteration``, ``learning_rate``,
  ``dense_kernel_momentum``, ``inner_optimizer/...`` for a loss-scale optimizer's inner
  one); ``inertia.torch.SGD`` uses ``state.<param index>.<key>`` with torch's state_dict
  indices (``state.0.momentum_buffer``; tensor-valued group options as
  ``param_groups.<group>.<key>``); ``inertia.mlx.SGD`` uses its state tree's paths joined by
  dots, as ``mlx.utils.tree_flatten`` does (``step``, ``learning_rate``, ``layer.w.v``).
* Metadata: the header's ``__metadata__["inertia"]`` holds one JSON document with the keys
  ``format``, ``format_version``, ``inertia_version``, ``face`` (keras, legacy, tf_keras, mlx, torch),
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
any moment leaves the previous checkpoint whole. A symbolic link at ``path`` stays (the file
it points to is replaced), and a file replaced keeps its permission bits. Temporary files of
this host's processes that no longer run are removed at the next save. The state is copied
out of the optimizer first, array by array (a step that another thread runs meanwhile cannot
change what is written, and each counter in the metadata is its tensor's value), and the
file's bytes are made in memory (safetensors' own file writer goes through a temporary file of
its own, which a killed process would leave behind unnamed), so a save needs memory for two
copies of the state. The copy is taken holding the optimizer's lock, which every step holds:
with steps running in other threads, the file holds the state between two of them.

Loading checks everything before it changes anything, and says what does not fit: the format
and its version, the face and class, the configuration, the tensors' names, shapes and dtypes,
the counters' ranges, finite learning rates. See :func:`load` for the configuration policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Iterable, Iterator, Optional, Union

from inertia.checkpoint import keras as _keras_face
from inertia.checkpoint import mlx as _mlx_face
from inertia.checkpoint import torch as _torch_face
from inertia.checkpoint.checks import Context, allowed_changes, class_name
from inertia.checkpoint.file import FORMAT, FORMAT_VERSION, METADATA_KEY, read, writable_target, write_atomically
from inertia.optimizer import Optimizer

__all__ = ["save", "load", "read_metadata", "FORMAT", "FORMAT_VERSION"]

PathLike = Union[str, "os.PathLike[str]"]

# Each face's module: save(optimizer) -> (document, tensors); load(optimizer, context,
# var_list) -> commit, a function that changes the optimizer once every check has passed.
_FACES = {"keras": _keras_face, "legacy": _keras_face, "tf_keras": _keras_face, "torch": _torch_face, "mlx": _mlx_face}


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
    target = writable_target(name)  # checked before any work: a clear error naming `path`
    with _holding(optimizer):  # between two steps: no other thread's step is half done
        document, tensors = _FACES[face].save(optimizer)  # the state's snapshot, taken at once
    from inertia import __version__

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "inertia_version": __version__,
        "face": face,
        "class": class_name(optimizer),
        **document,
    }
    try:
        text = json.dumps(document, allow_nan=False)
    except ValueError as error:  # a NaN or infinity has no standard JSON form
        raise ValueError(
            f"Cannot save optimizer {optimizer!r}: its configuration or learning rate holds a non-finite number ({error})."
        ) from None
    write_atomically(target, tensors, {METADATA_KEY: text}, name)


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
    allowed = allowed_changes(allow_config_changes)
    if var_list is not None and face not in ("keras", "legacy", "tf_keras"):
        raise TypeError(
            f"Argument `var_list` is for the Keras faces (built with variables); a {face} optimizer "
            f"knows its parameters otherwise. Received: var_list={var_list!r:.100}"
        )
    document, arrays = read(name)
    where = f"Cannot load checkpoint {name!r}"
    if document.get("face") != face:
        raise ValueError(
            f"{where}: it holds the state of a {document.get('face')} optimizer ({document.get('class')}), "
            f"not of a {face} one ({class_name(optimizer)})."
        )
    if document.get("class") != class_name(optimizer):
        raise ValueError(
            f"{where}: it holds the state of an optimizer of class {document.get('class')}; this optimizer's class is "
            f"{class_name(optimizer)}."
        )
    with _holding(optimizer):  # checked and changed between two steps of other threads
        commit = _FACES[face].load(optimizer, Context(where, document, arrays, allowed), var_list)
        commit()


@contextlib.contextmanager
def _holding(optimizer: Any) -> Iterator[None]:
    """Hold the lock every step of ``optimizer`` holds (and its inner optimizer's, in the order
    a loss-scale optimizer's step takes them)."""
    with contextlib.ExitStack() as stack:
        for owner in (optimizer, getattr(optimizer, "inner_optimizer", None)):
            lock = getattr(owner, "_lock", None)
            if lock is not None:
                stack.enter_context(lock)
        yield


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
    document, _ = read(_path_argument(path, "path"))
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
    tf_keras_face = sys.modules.get("inertia.tf_keras")
    if tf_keras_face is not None and isinstance(optimizer, tf_keras_face.Optimizer):
        return "tf_keras"
    if isinstance(optimizer, Optimizer):
        return "keras"
    raise TypeError(
        "Argument `optimizer` must be an inertia optimizer (inertia.SGD or another inertia.Optimizer, "
        "inertia.LossScaleOptimizer, inertia.legacy.SGD, inertia.mlx.SGD, inertia.torch.SGD). "
        f"Received: optimizer={optimizer!r:.200}"
    )
