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
_REFERENCES_REQUIRED_WITH = {"keras": "numpy", "jax": "numpy", "ml_dtypes": "numpy", "sklearn": "numpy"}


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


@pytest.fixture(scope="session")
def keras():
    module = requires("keras")
    assert module.backend.backend() == "numpy", "Keras must run on its NumPy backend in the tests"
    return module


@pytest.fixture
def sklearn():
    """scikit-learn (the demo's data): skipped locally when missing, a failure in CI."""
    return requires("sklearn")
