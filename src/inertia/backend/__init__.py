"""Backend selection.

One module per array library (``numpy``, ``torch``, ``jax``, ``tensorflow``, ``mlx``), each
exposing a ``BACKEND`` object that implements :class:`inertia.backend.base.ArrayBackend`.
Modules are imported only when an array of theirs is seen, so ``import inertia`` never
imports torch, jax, tensorflow or mlx. ``INERTIA_BACKEND`` picks the default among ``NAMES``; the MLX backend serves the
MLX face and is chosen only by MLX arrays.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from inertia.backend.base import ArrayBackend

__all__ = ["ArrayBackend", "get", "default", "of", "array_namespace", "NAMES", "required", "opaque_to_autograph"]

NAMES = ("numpy", "torch", "jax", "tensorflow")
_MODULES = {name: f"inertia.backend.{name}" for name in NAMES + ("mlx",)}
_loaded: dict[str, ArrayBackend] = {}


def get(name: str) -> ArrayBackend:
    """The backend called ``name`` (``"numpy"``, ``"torch"``, ``"jax"``, ``"tensorflow"`` or
    ``"mlx"``), imported lazily."""
    if name not in _MODULES:
        raise ValueError(f"Unknown backend: backend={name!r}. Expected one of {list(_MODULES)}.")
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("inertia.backend."):
                raise NotImplementedError(f"The {name} backend is not available yet.") from None
            raise ImportError(
                f"The {name} backend needs the package {error.name!r}; install it with "
                f"`pip install 'inertia[{name}]'`."
            ) from error
        _loaded[name] = module.BACKEND
    return _loaded[name]


def default() -> ArrayBackend:
    """The backend for values that carry none (Python numbers): ``$INERTIA_BACKEND`` or numpy."""
    name = os.environ.get("INERTIA_BACKEND", "numpy").strip().lower() or "numpy"
    if name not in _MODULES:
        raise ValueError(
            f"Unknown backend in the environment: INERTIA_BACKEND={name!r}. "
            f"Expected one of {list(NAMES)}."
        )
    return get(name)


def _library_of(value: Any) -> str | None:
    module = type(value).__module__.split(".")[0]
    if module in ("numpy", "ml_dtypes"):
        return "numpy"
    if module == "torch":
        return "torch"
    if module in ("jax", "jaxlib"):
        return "jax"
    if module == "mlx":
        return "mlx"
    if module == "tensorflow":
        return "tensorflow"
    return None


def of(value: Any) -> ArrayBackend | None:
    """The backend an array (or an ``inertia.Variable``) belongs to; None for plain Python values."""
    backend = getattr(value, "backend", None)
    if isinstance(backend, ArrayBackend):
        return backend
    library = _library_of(value)
    return get(library) if library is not None else None


def array_namespace(value: Any) -> Any:
    """The namespace in which host-side formulas (schedules) run: ``numpy``, ``jax.numpy``,
    or TensorFlow's (:data:`inertia.backend.tensorflow.NUMPY_LIKE`).

    JAX and TensorFlow values need their own library's operations, so that a schedule can be
    traced under ``jax.jit`` or ``tf.function`` (and gives the same numbers eagerly); every
    other value is evaluated with NumPy on the host.
    """
    library = _library_of(value)
    if library == "jax":
        import jax.numpy as jnp

        return jnp
    if library == "tensorflow":
        from inertia.backend.tensorflow import NUMPY_LIKE

        return NUMPY_LIKE
    import numpy

    return numpy


def required() -> tuple[str, ...]:
    """Backends that must be importable: ``$INERTIA_REQUIRE_BACKENDS``, comma-separated (CI)."""
    names = os.environ.get("INERTIA_REQUIRE_BACKENDS", "")
    return tuple(n.strip() for n in names.split(",") if n.strip())


_Class = Any


def opaque_to_autograph(cls: _Class) -> _Class:
    """Mark the functions ``cls`` defines as TensorFlow AutoGraph artifacts: a step called
    inside a ``tf.function`` then runs as the Python it is (it branches on Python values, or
    through the backend's ``branch``), not rewritten by AutoGraph, which would warn that it
    cannot convert it. The marker is the attribute AutoGraph's own ``do_not_convert`` sets,
    so nothing of TensorFlow is imported here."""
    for value in vars(cls).values():
        function = getattr(value, "__func__", value)
        if inspect.isfunction(function):
            function.autograph_info__ = None
    return cls
