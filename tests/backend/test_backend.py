"""Backend selection: by array type, by environment, lazily."""

import subprocess
import sys

import numpy as np
import pytest

from inertia import backend as backends


def test_required_backends_importable():
    """CI lists the backends it installed; each must actually load."""
    for name in backends.required():
        assert backends.get(name).name == name


def test_backend_of_arrays_and_variables():
    import inertia

    assert backends.of(np.zeros(2)).name == "numpy"
    assert backends.of(np.float32(1.0)).name == "numpy"
    assert backends.of(inertia.Variable(1.0)).name == "numpy"
    assert backends.of(1.0) is None and backends.of([1.0]) is None


def test_default_backend_from_environment(monkeypatch):
    monkeypatch.setenv("INERTIA_BACKEND", "numpy")
    assert backends.default().name == "numpy"
    monkeypatch.setenv("INERTIA_BACKEND", "mxnet")
    with pytest.raises(ValueError, match="INERTIA_BACKEND='mxnet'"):
        backends.default()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend='mxnet'"):
        backends.get("mxnet")


def test_array_namespace_is_numpy_for_host_values():
    assert backends.array_namespace(np.int32(3)) is np
    assert backends.array_namespace(3) is np


def test_importing_inertia_imports_neither_torch_nor_jax_nor_tensorflow():
    code = (
        "import sys, numpy as np, inertia\n"
        "w = inertia.Variable([1.0]); inertia.SGD(0.1, momentum=0.9).apply([np.ones(1, 'float32')], [w])\n"
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_numpy_backend_contract():
    ops = backends.get("numpy")
    x = np.array([1.0, -4.0], dtype=np.float32)
    assert ops.is_array(x) and ops.is_mutable_native(x) and not ops.is_array([1.0])
    read_only = x.copy()
    read_only.flags.writeable = False
    assert not ops.is_mutable_native(read_only)
    assert ops.dtype_name(x) == "float32" and ops.is_floating("float64") and not ops.is_floating("int32")
    assert ops.is_floating("bfloat16") and not ops.is_floating("complex64")
    assert ops.scalar(0.1, "float32") == np.float32(0.1) and ops.scalar(0.1, "float32").dtype == np.float32
    target = np.zeros(2, dtype=np.float32)
    assert ops.assign(target, np.array([1.5, 2.5])) is target and target.tolist() == [1.5, 2.5]
    assert ops.all_finite([x]) and not ops.all_finite([x, np.array([np.nan])])
    loss, (grad,) = ops.value_and_grad(lambda values: (values[0] ** 2).sum(), [np.array([1.0, 2.0])])
    assert loss == 5.0 and grad.tolist() == [2.0, 4.0]
