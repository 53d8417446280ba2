"""Shared test set-up.

* Keras, when installed, is the reference system; it must run on its NumPy backend, which
  is fixed before anything imports it.
* ``INERTIA_REQUIRE_BACKENDS`` (set by CI) turns a missing backend or reference system into
  a failure instead of a skip: ``requires("torch")`` fails the test when torch is required
  but missing. When it names every backend (as CI does), any other skip (a test's or a
  whole module's) is reported as a failure too, unless it is for hardware CI does not have
  (``SKIPS_ALLOWED_IN_CI``).
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter

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
    "optax": "numpy",  # a peer of the benchmark, whose step its tests check
    "tensorflow": "numpy",  # tf_keras runs on it
    "tf_keras": "numpy",  # the reference of the legacy face (tf.keras.optimizers.legacy.SGD)
    "expecttest": "torch",  # torch.testing._internal (torch's optimizer test data) imports it
}


def requires(module_name: str):
    """Import ``module_name`` or skip; fail instead when CI requires it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        required = backends.required()
        # A submodule (jax.numpy) is required wherever its package is.
        names = {module_name, module_name.split(".")[0]}
        needed = any(n in required or _REFERENCES_REQUIRED_WITH.get(n) in required for n in names)
        if needed:
            pytest.fail(f"{module_name} is required (INERTIA_REQUIRE_BACKENDS) but missing: {error}")
        pytest.skip(f"{module_name} is not installed", allow_module_level=True)


# Skips that CI accepts: hardware its machine does not have.
SKIPS_ALLOWED_IN_CI = ("no CUDA device",)


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


def _everything_required() -> bool:
    return set(backends.NAMES) <= set(backends.required())


def _fail_skips_where_everything_is_required(report) -> None:
    if report.skipped and _everything_required() and not getattr(report, "wasxfail", None):
        reason = _skip_reason(report)
        if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
            report.outcome = "failed"
            report.longrepr = f"skipped where INERTIA_REQUIRE_BACKENDS requires everything: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_where_everything_is_required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skips_where_everything_is_required(outcome.get_result())


BACKENDS = ("numpy", "torch", "jax", "tensorflow")


def load_backend(name: str) -> None:
    """Import a backend's library (skip, or fail in CI); JAX runs with float64 enabled."""
    requires({"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}[name])
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per backend: Python values become that backend's arrays."""
    load_backend(request.param)
    monkeypatch.setenv("INERTIA_BACKEND", request.param)
    return backends.get(request.param)


def total(value):
    """The sum of an array's elements, on its own backend (a loss for ``minimize``): TF
    tensors have no ``.sum()``."""
    if isinstance(value, inertia_variable_type()):
        value = value.value
    owner = backends.of(value)
    return value.sum() if owner is None else owner.sum(value)  # None: autograd's traced NumPy box


def inertia_variable_type():
    from inertia.variable import Variable

    return Variable


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


def draw_variables_and_momentum(r, name_stems: tuple, seed: int) -> tuple[list, list, dict]:
    """The start of a randomized parity scenario, shared by the Keras and legacy ones: 1-4
    variable shapes (0-d included) and names, and the optimizer's name, momentum and Nesterov
    flag, drawn from ``r`` (a ``random.Random``) in a fixed order so that seeds stay stable."""
    n_vars = r.randint(1, 4)
    shapes = []
    for _ in range(n_vars):
        rank = r.choice([0, 0, 1, 2, 3])
        shapes.append(tuple(r.randint(1, 4) for _ in range(rank)))
    names = [f"{r.choice(name_stems)}_{i}" for i in range(n_vars)]
    kwargs: dict = {"name": f"opt_{seed}"}
    kwargs["momentum"] = 0.0 if r.random() < 0.3 else r.choice([1.0, r.uniform(1e-3, 1.0)])
    kwargs["nesterov"] = r.random() < 0.5
    return shapes, names, kwargs


def draw_schedule_arguments(r, kind: str, lr0: float) -> dict:
    """Keyword arguments of a learning-rate schedule class ``kind`` starting at ``lr0``, sized
    for scenarios of at most 8 steps (shared by the Keras and legacy parity tests)."""
    if kind == "ExponentialDecay":
        return dict(initial_learning_rate=lr0, decay_steps=r.randint(1, 5), decay_rate=r.uniform(0.3, 0.99), staircase=r.random() < 0.5)
    if kind == "PiecewiseConstantDecay":
        n = r.randint(1, 3)
        return dict(boundaries=sorted(r.sample(range(0, 8), n)), values=[r.uniform(0.001, 0.5) for _ in range(n + 1)])
    if kind == "CosineDecay":
        kwargs = dict(initial_learning_rate=lr0, decay_steps=r.randint(1, 10), alpha=r.choice([0.0, r.uniform(0.0, 0.5)]))
        if r.random() < 0.4:
            kwargs.update(warmup_target=lr0 * r.uniform(1.0, 3.0), warmup_steps=r.randint(1, 4))
        return kwargs
    if kind == "InverseTimeDecay":
        return dict(initial_learning_rate=lr0, decay_steps=r.randint(1, 5), decay_rate=r.uniform(0.1, 2.0), staircase=r.random() < 0.5)
    if kind == "PolynomialDecay":
        return dict(
            initial_learning_rate=lr0,
            decay_steps=r.randint(1, 6),
            end_learning_rate=lr0 * r.uniform(0.0, 0.5),
            power=r.choice([1.0, 0.5, 2.0, r.uniform(0.2, 3.0)]),
            cycle=r.random() < 0.5,
        )
    if kind == "CosineDecayRestarts":
        return dict(
            initial_learning_rate=lr0,
            first_decay_steps=r.randint(1, 4),
            # Not a t_mul whose restart boundaries a last-bit difference of `log` can move:
            # floor(log(...) / log(t_mul)) would then jump a whole period on one side only.
            t_mul=r.choice([1.0, 2.0]),
            m_mul=r.choice([1.0, r.uniform(0.3, 1.0)]),
            alpha=r.choice([0.0, r.uniform(0.0, 0.5)]),
        )
    raise ValueError(f"no such schedule: {kind!r}")
