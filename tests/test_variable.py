"""inertia.Variable: dtypes, naming, assignment, operators."""

import numpy as np
import pytest

import inertia


def test_python_float_defaults_to_float32_and_arrays_keep_their_dtype():
    assert inertia.Variable(1.0).dtype == "float32"
    assert inertia.Variable([1.0, 2.0]).dtype == "float32"
    assert inertia.Variable(3).dtype == "int32"
    assert inertia.Variable(np.ones(2)).dtype == "float64"
    assert inertia.Variable(1.0, dtype="float64").dtype == "float64"
    assert inertia.Variable(1.0, dtype=np.float16).dtype == "float16"


def test_auto_names_are_unique_and_path_equals_name():
    a, b = inertia.Variable(1.0), inertia.Variable(1.0)
    assert a.name != b.name and a.name.startswith("variable") and a.path == a.name
    assert inertia.Variable(1.0, name="kernel").path == "kernel"
    with pytest.raises(ValueError, match="name='a/b'"):
        inertia.Variable(1.0, name="a/b")


def test_assign_keeps_dtype_and_storage_and_checks_shape():
    v = inertia.Variable([1.0, 2.0])
    storage = v.value
    v.assign(np.array([3.0, 4.0], dtype=np.float64))
    assert v.value is storage and v.dtype == "float32" and v.numpy().tolist() == [3.0, 4.0]
    v.assign_add([1.0, 1.0]).assign_sub([0.5, 0.5])
    assert v.numpy().tolist() == [3.5, 4.5]
    with pytest.raises(ValueError, match=r"shape \(2,\), received value of shape \(3,\)"):
        v.assign([1.0, 2.0, 3.0])


def test_numpy_returns_a_copy():
    v = inertia.Variable([1.0])
    copy = v.numpy()
    v.assign([2.0])
    assert copy.tolist() == [1.0]


def test_operators_and_ufuncs_see_the_value():
    v = inertia.Variable([1.0, 2.0])
    assert (v * 2).tolist() == [2.0, 4.0] and (2 - v).tolist() == [1.0, 0.0]
    assert (v ** 2).tolist() == [1.0, 4.0] and (-v).tolist() == [-1.0, -2.0]
    assert np.square(v).tolist() == [1.0, 4.0]
    assert (np.ones(2) + v).tolist() == [2.0, 3.0]
    assert (v >= 1.5).tolist() == [False, True]
    assert float(inertia.Variable(2.5)) == 2.5 and len(v) == 2 and v[1] == 2.0
    assert np.asarray(v).tolist() == [1.0, 2.0]


def test_variable_from_variable_copies():
    v = inertia.Variable([1.0])
    w = inertia.Variable(v)
    w.assign([5.0])
    assert v.numpy().tolist() == [1.0]


def test_bad_initial_values():
    with pytest.raises(TypeError, match="initial_value"):
        inertia.Variable(object(), dtype="float32")
    with pytest.raises(TypeError, match="constraint"):
        inertia.Variable(1.0, constraint=3)
