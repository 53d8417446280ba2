"""Shared test set-up.

* Keras, when installed, is the reference system; it must run on its NumPy backend, which
  is fixed before anything imports it.
* ``INERTIA_REQUIRE_BACKENDS`` (set by CI) turns a missing backend or reference system into
  a failure instead of a skip: ``requires("torch")`` fails the test when torch is required
  but missing.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import pytest  # noqa: E402

from inertia import backend as backends  # noqa: E402

# Reference systems that CI installs; required alongside the backends.
# keras' NumPy backend itself imports jax, so jax is required wherever keras is.
_REFERENCES_REQUIRED_WITH = {
    "keras": "numpy",
    "jax": "numpy",
    "ml_dtypes": "numpy",
    "sklearn": "numpy",
    "mlx.core": "numpy",  # MLX (mlx[cpu]) is the reference of the MLX face
    "mlx.optimizers": "numpy",
    "mlx.nn": "numpy",
}


def requires(module_name: str):
    """Import ``module_name`` or skip; fail instead when CI requires it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        required = backends.required()
        needed = module_name in required or _REFERENCES_REQUIRED_WITH.get(module_name) in required
        if needed:
            pytest.fail(f"{module_name} is required (INERTIA_REQUIRE_BACKENDS) but missing: {error}")
        pytest.skip(f"{module_name} is not installed")


BACKENDS = ("numpy", "torch", "jax")


def load_backend(name: str) -> None:
    """Import a backend's library (skip, or fail in CI); JAX runs with float64 enabled."""
    requires({"numpy": "numpy", "torch": "torch", "jax": "jax"}[name])
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per backend: Python values become that backend's arrays."""
    load_backend(request.param)
    monkeypatch.setenv("INERTIA_BACKEND", request.param)
    return backends.get(request.param)


def tensor(value, dtype="float32", backend_name=None):
    """``value`` as an array of the current default backend (or ``backend_name``)."""
    import numpy as np

    ops = backends.get(backend_name) if backend_name else backends.default()
    array = np.asarray(value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value)
    return ops.asarray(array.astype("float32") if array.dtype.name == "bfloat16" else array, dtype=dtype)


@pytest.fixture(scope="session")
def keras():
    module = requires("keras")
    assert module.backend.backend() == "numpy", "Keras must run on its NumPy backend in the tests"
    return module


@pytest.fixture
def sklearn():
    """scikit-learn (the demo's data): skipped locally when missing, a failure in CI."""
    return requires("sklearn")
