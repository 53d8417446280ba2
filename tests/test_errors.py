"""Every bad argument and bad input, and proof that after each error nothing changed.

SPEC section 7: every bad argument or input raises ``ValueError`` or ``TypeError`` naming
the argument and the value it got, before any variable or state is touched. Keras' own
texts (as Keras 3.15.1 raises them for the same arguments; the section numbers in comments
below are those of the project's research notes, shared/research/keras_semantics.md,
outside this repository) are kept where they exist; inertia only adds the received value where Keras leaves it out.

Three parts:

1. constructor checks: a table of bad arguments (type, argument name and received value
   asserted for each row), and the deliberate deviation of SPEC section 3 (ints and NumPy
   scalars accepted for ``learning_rate`` and ``momentum``);
2. apply-time checks: a table of bad inputs to a built optimizer;
3. atomicity: for every row of that table, a fully featured optimizer (momentum, Nesterov,
   weight decay, clipnorm, EMA with overwrite, gradient accumulation, static loss scale;
   three variables, one of them a native ndarray; already stepped three times) is
   snapshotted, the error is triggered, every trainable and optimizer variable (values,
   dtypes, count, paths) and the counters must be bit-identical afterwards, and the
   optimizer must go on to step exactly like a twin that never saw the error. The rows that
   make sense before build also run on an unbuilt optimizer, which must stay unbuilt.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from inertia import LossScaleOptimizer, SGD, Variable, optimizers, schedules


def _rx(*fragments: str) -> str:
    """A regex matching every fragment, literally and in order (across lines)."""
    return "(?s)" + ".*".join(re.escape(fragment) for fragment in fragments)


KERAS_LR_TEXT = (
    "Argument `learning_rate` should be float, or an instance of LearningRateSchedule, or a callable "
    "(that takes in the current iteration value and returns the corresponding learning rate value). "
    "Received instead: "
)
KERAS_MOMENTUM_TEXT = "`momentum` must be a float between [0, 1]."
KERAS_CLIP_TEXT = "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set."
KERAS_UNKNOWN_VARIABLE_TEXT = (
    "This optimizer can only be called for the variables it was originally built with. When working "
    "with a new set of variables, you should recreate a new optimizer instance."
)


# =========================================================================================
# 1. constructor checks
# =========================================================================================
def _lso(**kwargs: Any) -> LossScaleOptimizer:
    return LossScaleOptimizer(SGD(), **kwargs)


# (id, constructor call, exception type, fragments the message must contain in order)
CONSTRUCTOR_CASES: list[tuple[str, Callable[[], Any], type, tuple[str, ...]]] = [
    # --- leftover kwargs (section 1.1 step 2) ---------------------------------------------
    ("lr_alias", lambda: SGD(lr=0.1), ValueError, ("Argument(s) not recognized: {'lr': 0.1}",)),
    ("unknown_kwarg", lambda: SGD(foo="bar"), ValueError, ("Argument(s) not recognized: {'foo': 'bar'}",)),
    (
        "keras2_config_key",
        lambda: SGD(is_legacy_optimizer=False),
        ValueError,
        ("Argument(s) not recognized: {'is_legacy_optimizer': False}",),
    ),
    # --- gradient_accumulation_steps (step 4) ---------------------------------------------
    *[
        (
            f"gradient_accumulation_steps={value!r}",
            (lambda value=value: SGD(gradient_accumulation_steps=value)),
            ValueError,
            (
                "`gradient_accumulation_steps` must be an integer >= 2. "
                f"Received: gradient_accumulation_steps={value!r}",
            ),
        )
        for value in (1, 1.5, True, -2, np.int64(1))
    ],
    # --- EMA (step 5) ----------------------------------------------------------------------
    *[
        (
            f"ema_momentum={value!r}",
            (lambda value=value: SGD(use_ema=True, ema_momentum=value)),
            ValueError,
            (f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={value!r}",),
        )
        for value in (1.5, -0.1)
    ],
    (
        "ema_momentum=nan",  # inertia: every float hyperparameter finite, even with use_ema=False
        lambda: SGD(ema_momentum=float("nan")),
        ValueError,
        ("`ema_momentum`", "ema_momentum=nan"),
    ),
    ("ema_momentum='0.9'", lambda: SGD(use_ema=True, ema_momentum="0.9"), TypeError, ("`ema_momentum`", "ema_momentum='0.9'")),
    *[
        (
            f"ema_overwrite_frequency={value!r}",
            (lambda value=value: SGD(use_ema=True, ema_overwrite_frequency=value)),
            ValueError,
            (
                "`ema_overwrite_frequency` must be an integer >= 1 or None. "
                f"Received: ema_overwrite_frequency={value!r}",
            ),
        )
        for value in (2.0, -1, True)
    ],
    ("use_ema='yes'", lambda: SGD(use_ema="yes"), TypeError, ("`use_ema`", "use_ema='yes'")),
    # --- clipping (step 6) -----------------------------------------------------------------
    (
        "clipnorm+clipvalue",
        lambda: SGD(clipnorm=0.1, clipvalue=0.1),
        ValueError,
        (KERAS_CLIP_TEXT + " Received: clipnorm=0.1, clipvalue=0.1, global_clipnorm=None",),
    ),
    (
        "clipnorm=0.0+clipvalue",  # the count is "is not None": a zero still counts
        lambda: SGD(clipnorm=0.0, clipvalue=1.0),
        ValueError,
        (KERAS_CLIP_TEXT, "clipnorm=0.0, clipvalue=1.0, global_clipnorm=None"),
    ),
    (
        "clipvalue+global_clipnorm",
        lambda: SGD(clipvalue=0.5, global_clipnorm=2.0),
        ValueError,
        (KERAS_CLIP_TEXT, "clipnorm=None, clipvalue=0.5, global_clipnorm=2.0"),
    ),
    (
        "all_three_clips",
        lambda: SGD(clipnorm=1.0, clipvalue=1.0, global_clipnorm=1.0),
        ValueError,
        (KERAS_CLIP_TEXT, "clipnorm=1.0, clipvalue=1.0, global_clipnorm=1.0"),
    ),
    ("clipnorm=inf", lambda: SGD(clipnorm=float("inf")), ValueError, ("`clipnorm`", "clipnorm=inf")),
    ("clipvalue=nan", lambda: SGD(clipvalue=float("nan")), ValueError, ("`clipvalue`", "clipvalue=nan")),
    ("global_clipnorm='1'", lambda: SGD(global_clipnorm="1"), TypeError, ("`global_clipnorm`", "global_clipnorm='1'")),
    # --- momentum (SGD) ---------------------------------------------------------------------
    *[
        (
            f"momentum={value!r}",
            (lambda value=value: SGD(momentum=value)),
            ValueError,
            (KERAS_MOMENTUM_TEXT + f" Received: momentum={value!r}",),
        )
        for value in (-1.0, 2.0, "0.5", None, True, 1.0000001, -1)
    ],
    (
        "momentum=np.float32(-0.5)",
        lambda: SGD(momentum=np.float32(-0.5)),
        ValueError,
        (KERAS_MOMENTUM_TEXT + " Received: momentum=-0.5",),  # shown as the float it was checked as
    ),
    ("momentum=nan", lambda: SGD(momentum=float("nan")), ValueError, ("`momentum`", "momentum=nan")),
    ("momentum=inf", lambda: SGD(momentum=float("inf")), ValueError, ("`momentum`", "momentum=inf")),
    ("nesterov='yes'", lambda: SGD(nesterov="yes"), TypeError, ("`nesterov`", "nesterov='yes'")),
    # --- learning_rate (step 8) -------------------------------------------------------------
    *[
        (
            f"learning_rate={value!r}",
            (lambda value=value: SGD(learning_rate=value)),
            ValueError,
            (KERAS_LR_TEXT + f"learning_rate={value!r}",),
        )
        for value in ("0.1", None, True, 1j, [0.1])
    ],
    ("learning_rate=nan", lambda: SGD(learning_rate=float("nan")), ValueError, ("`learning_rate`", "learning_rate=nan")),
    ("learning_rate=inf", lambda: SGD(learning_rate=float("inf")), ValueError, ("`learning_rate`", "learning_rate=inf")),
    ("learning_rate=-0.1", lambda: SGD(learning_rate=-0.1), ValueError, ("`learning_rate`", ">= 0", "learning_rate=-0.1")),
    ("learning_rate=-1", lambda: SGD(learning_rate=-1), ValueError, ("`learning_rate`", "learning_rate=-1")),
    # --- other float hyperparameters ----------------------------------------------------------
    ("weight_decay=nan", lambda: SGD(weight_decay=float("nan")), ValueError, ("`weight_decay`", "weight_decay=nan")),
    ("weight_decay=inf", lambda: SGD(weight_decay=float("inf")), ValueError, ("`weight_decay`", "weight_decay=inf")),
    ("weight_decay='x'", lambda: SGD(weight_decay="x"), TypeError, ("`weight_decay`", "weight_decay='x'")),
    *[
        (
            f"loss_scale_factor={value!r}",
            (lambda value=value: SGD(loss_scale_factor=value)),
            ValueError,
            ("`loss_scale_factor`", f"loss_scale_factor={value!r}"),  # -1 is shown as -1.0: prefix match
        )
        for value in (0, -1, 0.0, float("nan"), float("inf"))
    ],
    ("loss_scale_factor='2'", lambda: SGD(loss_scale_factor="2"), TypeError, ("`loss_scale_factor`", "loss_scale_factor='2'")),
    # --- name --------------------------------------------------------------------------------
    ("name='a/b'", lambda: SGD(name="a/b"), ValueError, ("`name`", "name='a/b'")),
    ("name=''", lambda: SGD(name=""), ValueError, ("`name`", "name=''")),
    ("name=3", lambda: SGD(name=3), ValueError, ("`name`", "name=3")),
    # --- LossScaleOptimizer (section 8) -------------------------------------------------------
    (
        "lso_dynamic=False",
        lambda: _lso(dynamic=False),
        ValueError,
        (
            "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set "
            "`loss_scale_factor` directly on the `inner_optimizer`.",
        ),
    ),
    *[
        (
            f"lso_{argument}={value!r}",
            (lambda argument=argument, value=value: _lso(**{argument: value})),
            ValueError,
            (
                f"LossScaleOptimizer does not support `{argument}`. Instead, set `{argument}` on the "
                "`inner_optimizer`.",
                f"{argument}={value!r}",
            ),
        )
        for argument, value in [
            ("learning_rate", 0.5),
            ("weight_decay", 0.1),
            ("clipnorm", 1.0),
            ("global_clipnorm", 1.0),
            ("clipvalue", 1.0),
            ("use_ema", True),
            ("ema_momentum", 0.5),
            ("ema_overwrite_frequency", 3),
            ("loss_scale_factor", 2.0),
            ("gradient_accumulation_steps", 2),
        ]
    ],
    (
        "lso_unknown_kwargs",
        lambda: _lso(foo=1, bar=2),
        ValueError,
        ("LossScaleOptimizer does not support arguments: `foo`, `bar`.", "'foo': 1", "'bar': 2"),
    ),
    *[
        (
            f"lso_inner={inner!r}",
            (lambda inner=inner: LossScaleOptimizer(inner)),
            TypeError,
            ("`inner_optimizer`", f"inner_optimizer={inner!r}"),
        )
        for inner in ("sgd", None, 3)
    ],
    *[
        (
            f"lso_initial_scale={value!r}",
            (lambda value=value: _lso(initial_scale=value)),
            ValueError,
            ("`initial_scale`", f"initial_scale={value!r}"),  # 0 is shown as 0.0: prefix match
        )
        for value in (0, -1.0, float("nan"), float("inf"))
    ],
    ("lso_initial_scale='x'", lambda: _lso(initial_scale="x"), TypeError, ("`initial_scale`", "initial_scale='x'")),
    *[
        (
            f"lso_initial_scale={value!r}",  # finite as a Python float, not as the float32 the scale is held in
            (lambda value=value: _lso(initial_scale=value)),
            ValueError,
            ("`initial_scale` must be > 0 and finite in float32", f"initial_scale={value!r}"),
        )
        for value in (1e39, 1e-50)
    ],
    (
        "lso_dynamic_growth_steps=2**31",  # the int32 step counter never counts that far
        lambda: _lso(dynamic_growth_steps=2**31),
        ValueError,
        ("`dynamic_growth_steps` must be at most 2147483647", "dynamic_growth_steps=2147483648"),
    ),
    (
        "gradient_accumulation_steps=2**31",
        lambda: SGD(gradient_accumulation_steps=2**31),
        ValueError,
        ("`gradient_accumulation_steps` must be at most 2147483647", "gradient_accumulation_steps=2147483648"),
    ),
    (
        "ema_overwrite_frequency=2**31",
        lambda: SGD(use_ema=True, ema_overwrite_frequency=2**31),
        ValueError,
        ("`ema_overwrite_frequency` must be at most 2147483647", "ema_overwrite_frequency=2147483648"),
    ),
    *[
        (
            f"lso_dynamic_growth_steps={value!r}",
            (lambda value=value: _lso(dynamic_growth_steps=value)),
            ValueError,
            ("`dynamic_growth_steps`", f"dynamic_growth_steps={value!r}"),
        )
        for value in (0, -5, 1.5, True)
    ],
    # --- optimizers.get / deserialize (section 5.2) --------------------------------------------
    ("get('typo')", lambda: optimizers.get("typo"), ValueError, ("Could not interpret optimizer identifier: ", "typo")),
    ("get(3)", lambda: optimizers.get(3), ValueError, ("Could not interpret optimizer identifier: 3",)),
    ("get(3.5)", lambda: optimizers.get(3.5), ValueError, ("Could not interpret optimizer identifier: 3.5",)),
    (
        "get({'class_name': 'Nope'})",
        lambda: optimizers.get({"class_name": "Nope", "config": {}}),
        ValueError,
        ("Could not interpret optimizer identifier: ", "Nope"),
    ),
    (
        "deserialize_unknown_key",
        lambda: optimizers.deserialize({"class_name": "SGD", "config": {"is_legacy_optimizer": False}}),
        ValueError,
        ("Argument(s) not recognized: {'is_legacy_optimizer': False}",),
    ),
    (
        "deserialize_no_class_name",
        lambda: optimizers.deserialize({"config": {}}),
        ValueError,
        ("`config`", "config={'config': {}}"),
    ),
]


@pytest.mark.parametrize(
    "make, error, fragments",
    [case[1:] for case in CONSTRUCTOR_CASES],
    ids=[case[0] for case in CONSTRUCTOR_CASES],
)
def test_constructor_rejects(make, error, fragments):
    with pytest.raises(error, match=_rx(*fragments)) as info:
        make()
    assert type(info.value) in (ValueError, TypeError)


def test_constructor_table_ids_are_unique():
    ids = [case[0] for case in CONSTRUCTOR_CASES]
    assert len(ids) == len(set(ids))


def test_decay_kwarg_warns_and_is_ignored():
    with pytest.warns(UserWarning, match=re.escape("Argument `decay` is no longer supported and will be ignored.")):
        optimizer = SGD(learning_rate=0.1, decay=0.5)
    assert "decay" not in optimizer.get_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SGD(decay=None)  # None is silently dropped
    with pytest.warns(UserWarning, match="decay"), pytest.raises(ValueError, match=re.escape("{'lr': 0.1}")):
        SGD(decay=0.1, lr=0.1)  # the warning comes first, then the leftover kwargs fail


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 1},
        {"learning_rate": 0},
        {"learning_rate": np.float32(0.1)},
        {"learning_rate": np.float64(0.1)},
        {"learning_rate": np.int64(2)},
        {"learning_rate": np.array(0.1)},
        {"momentum": 0},
        {"momentum": 1},
        {"momentum": np.float32(0.5)},
        {"momentum": np.int32(1)},
        {"use_ema": True, "ema_overwrite_frequency": 0},  # falsy: behaves like None
        {"use_ema": False, "ema_momentum": 5.0},  # not validated without use_ema (Keras)
        {"use_ema": True, "ema_momentum": 0.0},
        {"use_ema": True, "ema_momentum": 1},
        {"gradient_accumulation_steps": 0},  # off
        {"gradient_accumulation_steps": None},
        {"gradient_accumulation_steps": np.int64(3)},
        {"clipnorm": 0.0},  # zero / negative mean "no clipping" at apply time (Keras)
        {"clipvalue": -1.0},
        {"weight_decay": 0},
        {"loss_scale_factor": 1},
        {"decay": None},
    ],
    ids=repr,
)
def test_constructor_accepts(kwargs):
    optimizer = SGD(**kwargs)
    w = Variable([1.0, 2.0], name="w")
    optimizer.apply([np.array([0.5, -0.5], "float32")], [w])
    assert np.isfinite(w.numpy()).all()


def test_ema_overwrite_frequency_zero_is_none():
    assert SGD(use_ema=True, ema_overwrite_frequency=0).get_config()["ema_overwrite_frequency"] is None


def test_lso_accepts_base_arguments_at_their_defaults():
    defaults = dict(
        learning_rate=None,
        weight_decay=None,
        clipnorm=None,
        global_clipnorm=None,
        clipvalue=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        dynamic=True,
    )
    optimizer = LossScaleOptimizer(SGD(), **defaults)
    assert optimizer.initial_scale == 2.0**15
    LossScaleOptimizer(SGD(), initial_scale=1, dynamic_growth_steps=np.int64(1))


def _trajectory(optimizer: SGD, steps: int = 4) -> list[np.ndarray]:
    w = Variable(np.array([1.0, -2.0, 0.5], "float32"), name="w")
    out = []
    for k in range(steps):
        optimizer.apply([np.array([0.3, -1.1, 0.7], "float32") * (k + 1)], [w])
        out.append(w.numpy())
    return out + [v.numpy() for v in optimizer.variables]


@pytest.mark.parametrize(
    "int_kwargs, float_kwargs",
    [
        ({"learning_rate": 1}, {"learning_rate": 1.0}),
        ({"learning_rate": 1, "momentum": 0}, {"learning_rate": 1.0, "momentum": 0.0}),
        ({"learning_rate": 2, "momentum": 1}, {"learning_rate": 2.0, "momentum": 1.0}),
        ({"learning_rate": np.float32(0.1), "momentum": np.float64(0.9)}, {"learning_rate": 0.1, "momentum": 0.9}),
        ({"learning_rate": np.int64(1), "nesterov": 1}, {"learning_rate": 1.0, "nesterov": True}),
    ],
    ids=["lr=1", "lr=1,momentum=0", "lr=2,momentum=1", "numpy_scalars", "np.int64_lr"],
)
def test_int_and_numpy_hyperparameters_step_like_floats(int_kwargs, float_kwargs):
    """SPEC section 3, deviation 1: ints and NumPy scalars are the same numbers as floats."""
    got, want = _trajectory(SGD(**int_kwargs)), _trajectory(SGD(**float_kwargs))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert isinstance(SGD(**int_kwargs).momentum, float)


# =========================================================================================
# 2 + 3. apply-time checks, and atomicity
# =========================================================================================
SHAPES = [((3,), "float32"), ((2, 2), "float32"), ((2,), "float64")]
FULL = dict(
    learning_rate=0.05,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.01,
    clipnorm=1.0,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=2,
    gradient_accumulation_steps=2,
    loss_scale_factor=4.0,
)


def _full_sgd(**overrides: Any) -> SGD:
    return SGD(**{**FULL, **overrides})


def _fresh_variables() -> list:
    """Two inertia Variables and one native (float64) ndarray, updated in place."""
    return [
        Variable(np.array([1.0, -2.0, 3.0], "float32"), name="w0"),
        Variable(np.array([[0.5, -1.0], [1.5, 2.0]], "float32"), name="w1"),
        np.array([0.25, -0.75], dtype="float64"),
    ]


def _grads(k: int, scale: float = 1.0) -> list[np.ndarray]:
    out = []
    for i, (shape, dtype) in enumerate(SHAPES):
        n = int(np.prod(shape))
        out.append((np.sin(np.arange(n) * 1.3 + 0.7 * k + i) * 3.0 * scale).reshape(shape).astype(dtype))
    return out


def _stepped(make: Callable[[], Any] = _full_sgd, steps: int = 3, scale: float = 1.0):
    optimizer, variables = make(), _fresh_variables()
    for k in range(steps):
        optimizer.apply(_grads(k, scale), variables)
    return optimizer, variables


def _snapshot(optimizer: Any, variables: list) -> dict:
    iterations = optimizer.iterations
    return {
        "built": optimizer.built,
        "trainable": [np.array(v, copy=True) for v in variables],
        "optimizer_paths": [v.path for v in optimizer.variables],
        "optimizer_values": [v.numpy() for v in optimizer.variables],
        "iterations": np.array(iterations.numpy() if isinstance(iterations, Variable) else iterations, copy=True),
        "learning_rate": np.array(optimizer.learning_rate, copy=True),
    }


def _assert_identical(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert got["built"] == want["built"]
    assert got["optimizer_paths"] == want["optimizer_paths"]
    for key in ("trainable", "optimizer_values"):
        assert len(got[key]) == len(want[key]), key
        for a, b in zip(got[key], want[key]):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            np.testing.assert_array_equal(a, b, err_msg=key)
    for key in ("iterations", "learning_rate"):
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _stranger() -> Variable:
    return Variable(np.array([9.0, 9.0, 9.0], "float32"), name="stranger")


def _with(grads: list, index: int, value: Any) -> list:
    grads = list(grads)
    grads[index] = value
    return grads


def _saved_store(optimizer: Any) -> dict:
    store: dict = {}
    optimizer.save_own_variables(store)
    return store


def _built_twin_store() -> dict:
    return _saved_store(_stepped()[0])


@dataclass(frozen=True)
class ApplyCase:
    id: str
    trigger: Callable[[Any, list], Any]  # (optimizer, its trainable variables) -> raises
    error: type
    fragments: tuple[str, ...]
    unbuilt: bool = True  # also meaningful on an optimizer that has not been built
    built: bool = True  # also meaningful on a built optimizer


G = _grads(7)  # a valid set of gradients (float32, float32, float64)
OBJECT_GRAD = np.array([object(), object()], dtype=object)

APPLY_CASES: list[ApplyCase] = [
    # --- gradients: shape ----------------------------------------------------------------
    ApplyCase(
        "grad_shape_last",
        lambda o, v: o.apply(_with(G, 2, np.ones(3)), v),
        ValueError,
        ("The gradient for ", "has shape (3,) but the variable has shape (2,)",),
    ),
    ApplyCase(
        "grad_shape_first",
        lambda o, v: o.apply(_with(G, 0, np.ones((3, 1), "float32")), v),
        ValueError,
        ("gradient for", "w0", "has shape (3, 1)", "variable has shape (3,)"),
    ),
    ApplyCase(
        "grad_transposed_shape",
        lambda o, v: o.apply(_with(G, 1, np.ones((4,), "float32")), v),
        ValueError,
        ("w1", "has shape (4,)", "variable has shape (2, 2)"),
    ),
    ApplyCase(
        "grad_scalar_for_vector",
        lambda o, v: o.apply(_with(G, 2, 1.0), v),
        ValueError,
        ("has shape ()", "variable has shape (2,)"),
    ),
    # --- gradients: dtype (rejected, not cast) --------------------------------------------
    *[
        ApplyCase(
            f"grad_dtype_{name}",
            (lambda o, v, value=value: o.apply(_with(G, 2, value), v)),
            TypeError,
            ("Gradients must be floating-point arrays", f"has dtype {dtype}", "gradient="),
        )
        for name, value, dtype in [
            ("int64", np.array([1, 2]), "int64"),
            ("int32", np.array([1, 2], "int32"), "int32"),
            ("uint8", np.array([1, 2], "uint8"), "uint8"),
            ("bool", np.array([True, False]), "bool"),
            ("complex128", np.array([1 + 1j, 2]), "complex128"),
            ("complex64", np.array([1, 2], "complex64"), "complex64"),
            ("object", OBJECT_GRAD, "object"),
            ("str", np.array(["a", "b"]), "str"),
            ("bytes", np.array([b"a", b"b"]), "bytes"),
            ("python_int_list", [1, 2], "int64"),
            ("python_str_list", ["a", "b"], "str"),
        ]
    ],
    ApplyCase(
        "grad_int_first_of_three",
        lambda o, v: o.apply(_with(G, 0, np.array([1, 2, 3])), v),
        TypeError,
        ("gradient for", "w0", "dtype int64", "gradient=array([1, 2, 3])"),
    ),
    ApplyCase(
        "grad_int_no_variables_given",
        lambda o, v: o.apply(_with(G, 1, np.ones((2, 2), "int32"))),
        TypeError,
        ("w1", "dtype int32"),
        unbuilt=False,
    ),
    ApplyCase(
        "grad_not_an_array",
        lambda o, v: o.apply(_with(G, 0, {"a": 1}), v),
        TypeError,
        ("w0", "dtype object", "{'a': 1}"),
    ),
    ApplyCase(
        "grad_bad_next_to_none",
        lambda o, v: o.apply([None, G[1], np.array([1, 2])], v),
        TypeError,
        ("dtype int64",),
    ),
    # --- variables ---------------------------------------------------------------------
    ApplyCase(
        "unknown_variable_after_build",
        lambda o, v: o.apply([G[0]], [_stranger()]),
        ValueError,
        ("Unknown variable: variable 'stranger'. " + KERAS_UNKNOWN_VARIABLE_TEXT,),
        unbuilt=False,
    ),
    ApplyCase(
        "unknown_variable_among_known",
        lambda o, v: o.apply(G + [G[0]], v + [_stranger()]),
        ValueError,
        ("Unknown variable: variable 'stranger'",),
        unbuilt=False,
    ),
    ApplyCase(
        "unknown_ndarray_after_build",
        lambda o, v: o.apply([G[0], G[2]], [v[0], np.zeros(2)]),
        ValueError,
        ("Unknown variable: numpy.ndarray of shape (2,)",),
        unbuilt=False,
    ),
    ApplyCase(
        "copy_of_known_ndarray",
        lambda o, v: o.apply([G[2]], [v[2].copy()]),
        ValueError,
        ("Unknown variable: numpy.ndarray of shape (2,)",),
        unbuilt=False,
    ),
    ApplyCase(
        "variable_listed_twice",
        lambda o, v: o.apply([G[0], G[0]], [v[0], v[0]]),
        ValueError,
        ("`trainable_variables` lists a variable twice: variable", "w0"),
    ),
    ApplyCase(
        "ndarray_listed_twice",
        lambda o, v: o.apply([G[0], G[2], G[2]], [v[0], v[2], v[2]]),
        ValueError,
        ("lists a variable twice: numpy.ndarray of shape (2,)",),
    ),
    ApplyCase(
        "int_variable",
        lambda o, v: o.apply([np.ones(3, "float32")], [Variable([1, 2, 3], name="ints")]),
        TypeError,
        ("`trainable_variables` must hold floating-point variables", "'ints'", "dtype int32"),
    ),
    ApplyCase(
        "bool_variable",
        lambda o, v: o.apply(G + [np.ones(1)], v + [Variable([True], name="flags")]),
        TypeError,
        ("floating-point variables", "'flags'", "dtype bool"),
    ),
    ApplyCase(
        "int_ndarray",
        lambda o, v: o.apply([np.ones(3)], [np.array([1, 2, 3])]),
        TypeError,
        ("floating-point variables", "numpy.ndarray of shape (3,) of dtype int64"),
    ),
    ApplyCase(
        "read_only_ndarray",
        lambda o, v: o.apply([np.ones(2)], [_read_only()]),
        TypeError,
        ("`trainable_variables` must hold inertia.Variable objects or mutable arrays", "numpy.ndarray of shape (2,)"),
    ),
    ApplyCase(
        "python_list_variable",
        lambda o, v: o.apply([np.ones(2)], [[1.0, 2.0]]),
        TypeError,
        ("mutable arrays", "builtins.list", "[1.0, 2.0]"),
    ),
    ApplyCase(
        "numpy_scalar_variable",
        lambda o, v: o.apply([np.ones(())], [np.float32(1.0)]),
        TypeError,
        ("mutable arrays", "numpy.float32"),
    ),
    # --- lengths ------------------------------------------------------------------------
    ApplyCase(
        "fewer_grads_than_variables",
        lambda o, v: o.apply(G[:2], v),
        ValueError,
        ("`grads` and `trainable_variables` must have the same length. Received: 2 gradients and 3 variables.",),
    ),
    ApplyCase(
        "more_grads_than_variables",
        lambda o, v: o.apply(G + [G[0]], v),
        ValueError,
        ("Received: 4 gradients and 3 variables.",),
    ),
    ApplyCase(
        "grads_without_variables_before_build",
        lambda o, v: o.apply(G),
        ValueError,
        ("When passing `grads` without `variables`, the optimizer must already be built",),
        built=False,
    ),
    ApplyCase(
        "grads_without_variables_wrong_count",
        lambda o, v: o.apply(G[:2]),
        ValueError,
        ("Received a list of 2 gradients, but the optimizer is tracking 3 trainable variables.",),
        unbuilt=False,
    ),
    # --- None gradients --------------------------------------------------------------------
    ApplyCase(
        "all_none",
        lambda o, v: o.apply([None, None, None], v),
        ValueError,
        ("No gradients provided for any variable.",),
    ),
    ApplyCase(
        "all_none_without_variables",
        lambda o, v: o.apply([None, None, None]),
        ValueError,
        ("No gradients provided for any variable.",),
        unbuilt=False,
    ),
    ApplyCase(
        "all_none_apply_gradients",
        lambda o, v: o.apply_gradients(zip([None] * 3, v)),
        ValueError,
        ("No gradients provided for any variable.",),
    ),
    # --- apply_gradients ----------------------------------------------------------------------
    ApplyCase(
        "apply_gradients_empty",
        lambda o, v: o.apply_gradients([]),
        ValueError,
        ("`grads_and_vars` is empty", "grads_and_vars=[]"),
    ),
    ApplyCase(
        "apply_gradients_arrays_not_pairs",
        lambda o, v: o.apply_gradients(G),
        TypeError,
        ("`grads_and_vars` must hold (gradient, variable) pairs. Received: array(",),
    ),
    ApplyCase(
        "apply_gradients_triple",
        lambda o, v: o.apply_gradients([(G[0], v[0]), (G[1], v[1], None)]),
        TypeError,
        ("(gradient, variable) pairs", "Received: (array("),
    ),
    ApplyCase(
        "apply_gradients_bad_gradient",
        lambda o, v: o.apply_gradients(list(zip(_with(G, 1, np.ones((2, 2), bool)), v))),
        TypeError,
        ("w1", "dtype bool"),
    ),
    ApplyCase(
        "apply_gradients_none",
        lambda o, v: o.apply_gradients(None),
        TypeError,
        ("`grads_and_vars` must be an iterable of (gradient, variable) pairs", "grads_and_vars=None"),
    ),
    ApplyCase(
        "apply_gradients_not_iterable",
        lambda o, v: o.apply_gradients(3),
        TypeError,
        ("`grads_and_vars`", "grads_and_vars=3"),
    ),
    ApplyCase(
        "apply_gradients_variable_first",  # (variable, gradient): an inertia.Variable as the gradient gives it away
        lambda o, v: o.apply_gradients(list(zip(v, G))),
        TypeError,
        ("`grads_and_vars`", "the gradient first", "variable 'w0'", "not (variable, gradient)", "Received: (<inertia.Variable"),
    ),
    ApplyCase(
        "apply_gradients_variable_first_in_the_last_pair",
        lambda o, v: o.apply_gradients([(G[0], v[0]), (v[1], G[1])]),
        TypeError,
        ("`grads_and_vars`", "variable 'w1'", "not (variable, gradient)"),
    ),
    ApplyCase(
        "apply_gradients_unknown_variable",
        lambda o, v: o.apply_gradients([(G[0], v[0]), (G[0], _stranger())]),
        ValueError,
        ("Unknown variable: variable 'stranger'",),
        unbuilt=False,
    ),
    # --- set_weights / load_own_variables (section 6, SPEC deviation 3) -----------------------
    ApplyCase(
        "set_weights_before_build",
        lambda o, v: o.set_weights([]),
        ValueError,
        ("You are calling `set_weights()` on an optimizer that has not yet been built.",),
        built=False,
    ),
    ApplyCase(
        "set_weights_too_few",
        lambda o, v: o.set_weights([w.numpy() for w in o.variables][:-1]),
        ValueError,
        ("`weights` must have one array per optimizer variable: expected 11, received 10.",),
        unbuilt=False,
    ),
    ApplyCase(
        "set_weights_too_many",
        lambda o, v: o.set_weights([w.numpy() for w in o.variables] + [np.zeros(2)]),
        ValueError,
        ("expected 11, received 12",),
        unbuilt=False,
    ),
    ApplyCase(
        "set_weights_wrong_shape_last",
        lambda o, v: o.set_weights([w.numpy() + 1 for w in o.variables][:-1] + [np.zeros(3)]),
        ValueError,
        ("Optimizer variable SGD/param_2_momentum has shape (2,) not compatible with provided weight shape (3,)",),
        unbuilt=False,
    ),
    ApplyCase(
        "set_weights_unconvertible_last",
        lambda o, v: o.set_weights([w.numpy() + 1 for w in o.variables][:-1] + [np.array(["a", "b"])]),
        TypeError,
        ("SGD/param_2_momentum", "`weights`"),
        unbuilt=False,
    ),
    ApplyCase(
        "set_weights_none",
        lambda o, v: o.set_weights(None),
        TypeError,
        ("`weights` must be a list of arrays", "weights=None"),
    ),
    ApplyCase(
        "set_weights_none_entry",
        lambda o, v: o.set_weights(_with([w.numpy() for w in o.variables], 4, None)),
        TypeError,
        ("SGD/param_2_average cannot take None", "`weights`", "weights[4]=None"),
        unbuilt=False,
    ),
    *[
        ApplyCase(
            f"set_weights_iteration={value!r}",
            (lambda o, v, value=value: o.set_weights(_with([w.numpy() for w in o.variables], 0, np.array(value)))),
            ValueError,
            ("SGD/iteration is a step counter of dtype int32", "[0, 2147483647)", f"weights[0]={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (2**40, 2**31 - 1, -1, 2.5, np.nan)
    ],
    *[
        ApplyCase(
            f"set_weights_learning_rate={value!r}",
            (lambda o, v, value=value: o.set_weights(_with([w.numpy() for w in o.variables], 1, np.array(value)))),
            ValueError,
            ("SGD/learning_rate takes a finite number >= 0", f"weights[1]={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (np.nan, -0.5, np.inf, 1e39)  # 1e39: finite, but inf in the variable's float32
    ],
    ApplyCase(
        "load_store_none",
        lambda o, v: o.load_own_variables(None),
        TypeError,
        ("`store` must be a mapping", "store=None"),
    ),
    ApplyCase(
        "load_store_list",
        lambda o, v: o.load_own_variables([w.numpy() for w in o.variables]),
        TypeError,
        ("`store` must be a mapping", "store=[array("),
    ),
    ApplyCase(
        "load_none_entry",
        lambda o, v: o.load_own_variables({**_saved_store(o), "w1_momentum": None}),
        TypeError,
        ("SGD/w1_momentum cannot take None", "`store`", "store['w1_momentum']=None"),
        unbuilt=False,
    ),
    ApplyCase(
        "load_none_entry_index_keys",
        lambda o, v: o.load_own_variables({str(i): None if i == 2 else w.numpy() for i, w in enumerate(o.variables)}),
        TypeError,
        ("SGD/w0_average cannot take None", "store['2']=None"),
        unbuilt=False,
    ),
    *[
        ApplyCase(
            f"load_iteration={value!r}",
            (lambda o, v, value=value: o.load_own_variables({**_saved_store(o), "iteration": np.array(value)})),
            ValueError,
            ("SGD/iteration is a step counter", "whole number in [0, 2147483647)", f"store['iteration']={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (2**40, 2**31 - 1, 2**31, -1, 2.5, -np.inf)  # 2**40 used to wrap to 0, 2.5 to become 2
    ],
    ApplyCase(
        "load_iteration_bool",
        lambda o, v: o.load_own_variables({**_saved_store(o), "iteration": np.array(True)}),
        TypeError,
        ("SGD/iteration takes a real number, not a value of dtype bool", "store['iteration']=array(True)"),
        unbuilt=False,
    ),
    ApplyCase(
        "load_iteration_index_keys",
        lambda o, v: o.load_own_variables(
            {str(i): np.array(2**40) if i == 0 else w.numpy() for i, w in enumerate(o.variables)}
        ),
        ValueError,
        ("SGD/iteration is a step counter", "store['0']=array(1099511627776)"),
        unbuilt=False,
    ),
    *[
        ApplyCase(
            f"load_learning_rate={value!r}",
            (lambda o, v, value=value: o.load_own_variables({**_saved_store(o), "learning_rate": np.array(value)})),
            ValueError,
            ("SGD/learning_rate takes a finite number >= 0 (as float32)", f"store['learning_rate']={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (np.nan, -1.0, np.inf, -np.inf, 1e39)
    ],
    ApplyCase(
        "load_missing_key",
        lambda o, v: o.load_own_variables({k: a for k, a in _built_twin_store().items() if k != "w1_momentum"}),
        ValueError,
        ("Cannot load the state of optimizer 'SGD'", "Missing: ['w1_momentum']; unexpected: []."),
        unbuilt=False,
    ),
    ApplyCase(
        "load_unexpected_key",
        lambda o, v: o.load_own_variables({**_built_twin_store(), "extra": np.zeros(1)}),
        ValueError,
        ("Missing: []; unexpected: ['extra'].",),
        unbuilt=False,
    ),
    ApplyCase(
        "load_wrong_shape",
        lambda o, v: o.load_own_variables({**_built_twin_store(), "param_2_momentum": np.zeros(5)}),
        ValueError,
        ("SGD/param_2_momentum has shape (2,) not compatible with provided weight shape (5,)", "`store`"),
        unbuilt=False,
    ),
    ApplyCase(
        "load_index_keys_wrong_count",
        lambda o, v: o.load_own_variables({str(i): a for i, a in enumerate([w.numpy() for w in o.variables][:-1])}),
        ValueError,
        ("Cannot load the state of optimizer 'SGD'", "unexpected: ['0',"),
        unbuilt=False,
    ),
    ApplyCase(
        "load_before_build",
        lambda o, v: o.load_own_variables(_built_twin_store()),
        ValueError,
        ("Cannot load the state of optimizer 'SGD'", "Missing: []", "'w0_average'", "has not been built yet"),
        built=False,
    ),
    # --- finalize_variable_values / stateless_apply ------------------------------------------
    ApplyCase(
        "finalize_wrong_length",
        lambda o, v: o.finalize_variable_values(v[:2]),
        ValueError,
        ("The length of model variables (2) to override does not match", "optimizer ("),
    ),
    ApplyCase(
        "stateless_before_build",
        lambda o, v: o.stateless_apply([], G, v),
        ValueError,
        ("To call `stateless_apply`, SGD must be built",),
        built=False,
    ),
    ApplyCase(
        "stateless_optimizer_variables_length",
        lambda o, v: o.stateless_apply([w.numpy() for w in o.variables][:-1], G, [np.array(x) for x in v]),
        ValueError,
        ("`optimizer_variables` must have one value per optimizer variable: expected 11, received 10.",),
        unbuilt=False,
    ),
    ApplyCase(
        "stateless_trainable_variables_length",
        lambda o, v: o.stateless_apply([w.numpy() for w in o.variables], G, [np.array(x) for x in v][:2]),
        ValueError,
        ("`trainable_variables` must have one value per built variable: expected 3, received 2.",),
        unbuilt=False,
    ),
    ApplyCase(
        "stateless_grads_length",
        lambda o, v: o.stateless_apply([w.numpy() for w in o.variables], G[:2], [np.array(x) for x in v]),
        ValueError,
        ("Received a list of 2 gradients, but the optimizer is tracking 3 trainable variables.",),
        unbuilt=False,
    ),
    ApplyCase(
        "stateless_int_gradient",
        lambda o, v: o.stateless_apply([w.numpy() for w in o.variables], _with(G, 2, np.array([1, 2])), [np.array(x) for x in v]),
        TypeError,
        ("dtype int64",),
        unbuilt=False,
    ),
    ApplyCase(
        "stateless_wrong_slot_shape",
        lambda o, v: o.stateless_apply(
            [w.numpy() if "w0_momentum" not in w.path else np.zeros(1, "float32") for w in o.variables],
            G,
            [np.array(x) for x in v],
        ),
        ValueError,
        ("w0_momentum", "shape"),
        unbuilt=False,
    ),
    # --- learning_rate setter (section 7.7) --------------------------------------------------
    *[
        ApplyCase(
            f"set_learning_rate={value!r}",
            (lambda o, v, value=value: setattr(o, "learning_rate", value)),
            ValueError,
            ("`learning_rate`", f"learning_rate={value!r}"),
        )
        for value in (float("nan"), -1, -0.5, float("inf"), "0.1", None, True)
    ],
]


def _read_only() -> np.ndarray:
    array = np.zeros(2)
    array.flags.writeable = False
    return array


def test_apply_table_ids_are_unique():
    ids = [case.id for case in APPLY_CASES]
    assert len(ids) == len(set(ids))


BUILT_CASES = [case for case in APPLY_CASES if case.built]


@pytest.mark.parametrize("case", BUILT_CASES, ids=[case.id for case in BUILT_CASES])
def test_apply_error_on_built_optimizer_changes_nothing(case):
    optimizer, variables = _stepped()
    twin, twin_variables = _stepped()
    assert len(optimizer.variables) == 11  # iteration, lr, 3 averages, 3 accumulators, 3 momentums
    before = _snapshot(optimizer, variables)
    # the slots are live: momentum, EMA and the accumulators hold non-zero values
    assert all(np.any(value != 0) for value in before["optimizer_values"])
    native = variables[2]

    with pytest.raises(case.error, match=_rx(*case.fragments)) as info:
        case.trigger(optimizer, variables)
    assert type(info.value) in (ValueError, TypeError)

    _assert_identical(_snapshot(optimizer, variables), before)
    _assert_identical(_snapshot(optimizer, variables), _snapshot(twin, twin_variables))
    assert optimizer._trainable_variables[2].value is native  # still aliases the user's array
    # ...and it goes on exactly like the twin that never saw the error (covers an update
    # step, an accumulation step, and an EMA overwrite)
    for k in range(3, 6):
        optimizer.apply(_grads(k), variables)
        twin.apply(_grads(k), twin_variables)
        _assert_identical(_snapshot(optimizer, variables), _snapshot(twin, twin_variables))


UNBUILT_CASES = [case for case in APPLY_CASES if case.unbuilt]


@pytest.mark.parametrize("case", UNBUILT_CASES, ids=[case.id for case in UNBUILT_CASES])
def test_apply_error_on_unbuilt_optimizer_leaves_it_unbuilt(case):
    optimizer, variables = _full_sgd(), _fresh_variables()
    twin, twin_variables = _full_sgd(), _fresh_variables()
    count = len(optimizer.variables)
    before = _snapshot(optimizer, variables)

    with pytest.raises(case.error, match=_rx(*case.fragments)):
        case.trigger(optimizer, variables)

    assert not optimizer.built
    assert len(optimizer.variables) == count == 2  # iteration, learning_rate
    _assert_identical(_snapshot(optimizer, variables), before)
    for k in range(3):
        optimizer.apply(_grads(k), variables)
        twin.apply(_grads(k), twin_variables)
    _assert_identical(_snapshot(optimizer, variables), _snapshot(twin, twin_variables))


# --- silent no-ops and accepted inputs ---------------------------------------------------------
def test_apply_empty_is_a_silent_no_op():
    optimizer, variables = _stepped()
    before = _snapshot(optimizer, variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optimizer.apply([]) is None
        optimizer.apply([], [])
        optimizer.apply(iter(()))
    _assert_identical(_snapshot(optimizer, variables), before)
    with pytest.raises(ValueError, match=_rx("`grads_and_vars` is empty")):
        optimizer.apply_gradients([])
    _assert_identical(_snapshot(optimizer, variables), before)


def test_apply_empty_on_unbuilt_builds_nothing():
    optimizer = _full_sgd()
    optimizer.apply([])
    optimizer.apply([], [])
    assert not optimizer.built and len(optimizer.variables) == 2
    assert int(optimizer._iterations.numpy()) == 0
    lso = LossScaleOptimizer(_full_sgd(loss_scale_factor=None))
    lso.apply([])
    assert not lso.built and not lso.inner_optimizer.built


def test_float64_gradient_for_float32_variable_is_cast():
    """SPEC section 2: the update runs in the variable's dtype; a wider float gradient is cast."""
    results = []
    for dtype in ("float32", "float64", "float16"):
        optimizer, variables = _full_sgd(), _fresh_variables()
        for k in range(4):
            grads = [g if i == 2 else g.astype(dtype) for i, g in enumerate(_grads(k))]
            optimizer.apply(grads, variables)
        results.append((dtype, _snapshot(optimizer, variables)))
    (_, f32), (_, f64), (_, f16) = results
    _assert_identical(f64, f32)  # float64 -> float32 before anything: the same numbers
    assert [a.dtype for a in f16["trainable"]] == [np.float32, np.float32, np.float64]
    # A Python float list and an inertia.Variable gradient are accepted as well.
    optimizer, w = SGD(learning_rate=0.5), Variable([1.0, 2.0], name="w")
    optimizer.apply([[1.0, 2.0]], [w])
    optimizer.apply([Variable([1.0, 2.0], name="g")], [w])
    np.testing.assert_array_equal(w.numpy(), np.array([0.0, 0.0], "float32"))
    assert w.dtype == "float32"


def test_partial_none_gradients_warn_not_raise():
    optimizer, variables = _stepped()
    with pytest.warns(UserWarning, match=_rx("Gradients do not exist for variables", "w1")):
        optimizer.apply([G[0], None, G[2]], variables)


# --- learning rate set on a schedule / callable optimizer --------------------------------------
@pytest.mark.parametrize("kind", ["schedule", "callable"])
def test_float_learning_rate_on_schedule_optimizer_is_a_type_error(kind):
    def make():
        lr = schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5) if kind == "schedule" else (lambda: 0.05)
        return _full_sgd(learning_rate=lr)

    optimizer, variables = _stepped(make)
    twin, twin_variables = _stepped(make)
    schedule = optimizer._learning_rate
    before = _snapshot(optimizer, variables)
    text = "a `LearningRateSchedule` object" if kind == "schedule" else "a callable"
    for value in (0.1, 1, np.float32(0.2)):
        with pytest.raises(
            TypeError,
            match=_rx(
                f"This optimizer was created with {text} as its `learning_rate` constructor argument, hence "
                "its learning rate is not settable. If you need the learning rate to be settable, you should "
                "instantiate the optimizer with a float `learning_rate` argument.",
                f"learning_rate={value!r}",
            ),
        ):
            optimizer.learning_rate = value
    with pytest.raises(ValueError, match=_rx("`learning_rate`", "learning_rate=nan")):
        optimizer.learning_rate = float("nan")  # the value check comes first
    assert optimizer._learning_rate is schedule
    assert "learning_rate" not in [v.name for v in optimizer.variables]
    _assert_identical(_snapshot(optimizer, variables), before)
    for k in range(3, 6):
        optimizer.apply(_grads(k), variables)
        twin.apply(_grads(k), twin_variables)
    _assert_identical(_snapshot(optimizer, variables), _snapshot(twin, twin_variables))


def test_learning_rate_setter_valid_values_still_work():
    optimizer = SGD(learning_rate=0.1)
    optimizer.learning_rate = 1  # ints are accepted (SPEC section 3, deviation 1)
    assert float(optimizer.learning_rate) == 1.0
    optimizer.learning_rate = np.float32(0.25)
    assert float(optimizer.learning_rate) == 0.25


# --- LossScaleOptimizer with bad inputs ----------------------------------------------------------
LSO_CASES: list[ApplyCase] = [
    ApplyCase("lso_int_gradient", lambda o, v: o.apply(_with(G, 0, np.array([1, 2, 3])), v), TypeError, ("w0", "dtype int64")),
    ApplyCase("lso_bool_gradient", lambda o, v: o.apply(_with(G, 2, np.array([True, False])), v), TypeError, ("dtype bool",)),
    ApplyCase("lso_grad_shape", lambda o, v: o.apply(_with(G, 1, np.ones(4, "float32")), v), ValueError, ("w1", "has shape (4,)")),
    ApplyCase("lso_all_none", lambda o, v: o.apply([None] * 3, v), ValueError, ("No gradients provided for any variable.",)),
    ApplyCase("lso_length", lambda o, v: o.apply(G[:2], v), ValueError, ("Received: 2 gradients and 3 variables.",)),
    ApplyCase("lso_unknown_variable", lambda o, v: o.apply([G[0]], [_stranger()]), ValueError, ("Unknown variable: variable 'stranger'",), unbuilt=False),
    ApplyCase("lso_twice", lambda o, v: o.apply([G[0], G[0]], [v[0], v[0]]), ValueError, ("lists a variable twice",)),
    ApplyCase("lso_int_variable", lambda o, v: o.apply([np.ones(3)], [np.arange(3)]), TypeError, ("floating-point variables",)),
    ApplyCase(
        "lso_set_learning_rate_nan",
        lambda o, v: setattr(o, "learning_rate", float("nan")),
        ValueError,
        ("`learning_rate`", "learning_rate=nan"),
    ),
    ApplyCase("lso_apply_gradients_none", lambda o, v: o.apply_gradients(None), TypeError, ("`grads_and_vars`", "grads_and_vars=None")),
    ApplyCase(
        "lso_apply_gradients_variable_first",
        lambda o, v: o.apply_gradients(list(zip(v, G))),
        TypeError,
        ("`grads_and_vars`", "variable 'w0'", "not (variable, gradient)"),
    ),
    ApplyCase("lso_set_weights_none", lambda o, v: o.set_weights(None), TypeError, ("`weights`", "weights=None")),
    ApplyCase("lso_load_store_none", lambda o, v: o.load_own_variables(None), TypeError, ("`store`", "store=None")),
    *[
        ApplyCase(
            f"lso_load_dynamic_scale={value!r}",
            (lambda o, v, value=value: o.load_own_variables({**_saved_store(o), "dynamic_scale": np.array(value)})),
            ValueError,
            ("lso/dynamic_scale takes a finite number > 0 (as float32)", f"store['dynamic_scale']={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (0.0, -8.0, np.nan, np.inf, 1e39, 1e-50)  # 1e-50 is 0 in float32
    ],
    *[
        ApplyCase(
            f"lso_load_step_counter={value!r}",
            (lambda o, v, value=value: o.load_own_variables({**_saved_store(o), "step_counter": np.array(value)})),
            ValueError,
            ("lso/step_counter is a step counter of dtype int32", "[0, 2)", f"store['step_counter']={np.array(value)!r}"),
            unbuilt=False,
        )
        for value in (-1, 2, 0.5, 2**40)  # at dynamic_growth_steps (2) or past it, the scale would never grow again
    ],
    ApplyCase(
        "lso_load_inner_iteration",
        lambda o, v: o.load_own_variables({**_saved_store(o), "inner_optimizer/iteration": np.array(2**40)}),
        ValueError,
        ("SGD/iteration is a step counter", "store['inner_optimizer/iteration']=array(1099511627776)"),
        unbuilt=False,
    ),
    ApplyCase(
        "lso_set_weights_dynamic_scale_nan",
        lambda o, v: o.set_weights(_with([w.numpy() for w in o.variables], 3, np.array(np.nan))),
        ValueError,
        ("lso/dynamic_scale takes a finite number > 0", "weights[3]=array(nan)"),
        unbuilt=False,
    ),
    ApplyCase(
        "lso_set_weights_inner_learning_rate",
        lambda o, v: o.set_weights(_with([w.numpy() for w in o.variables], 5, np.array(-1.0))),
        ValueError,
        ("SGD/learning_rate takes a finite number >= 0", "weights[5]=array(-1.)"),
        unbuilt=False,
    ),
    ApplyCase(
        "lso_set_weights_wrong_shape",
        lambda o, v: o.set_weights([w.numpy() for w in o.variables][:-1] + [np.zeros(7)]),
        ValueError,
        ("SGD/param_2_momentum", "provided weight shape (7,)"),
        unbuilt=False,
    ),
]


def _make_lso() -> LossScaleOptimizer:
    return LossScaleOptimizer(_full_sgd(loss_scale_factor=None), initial_scale=8.0, dynamic_growth_steps=2, name="lso")


@pytest.mark.parametrize("case", LSO_CASES, ids=[case.id for case in LSO_CASES])
def test_loss_scale_optimizer_error_changes_nothing(case):
    optimizer, variables = _stepped(_make_lso, scale=8.0)
    twin, twin_variables = _stepped(_make_lso, scale=8.0)
    before = _snapshot(optimizer, variables)
    assert len(before["optimizer_values"]) == 4 + 11  # own 4, then the inner optimizer's
    with pytest.raises(case.error, match=_rx(*case.fragments)):
        case.trigger(optimizer, variables)
    _assert_identical(_snapshot(optimizer, variables), before)
    for k in range(3, 6):
        optimizer.apply(_grads(k, scale=float(optimizer.dynamic_scale.numpy())), variables)
        twin.apply(_grads(k, scale=float(twin.dynamic_scale.numpy())), twin_variables)
        _assert_identical(_snapshot(optimizer, variables), _snapshot(twin, twin_variables))

    if case.unbuilt:  # the same error on an unbuilt LossScaleOptimizer leaves it (and the inner) unbuilt
        fresh, fresh_variables = _make_lso(), _fresh_variables()
        count = len(fresh.variables)
        with pytest.raises(case.error, match=_rx(*case.fragments)):
            case.trigger(fresh, fresh_variables)
        assert not fresh.built and not fresh.inner_optimizer.built and len(fresh.variables) == count


def test_loss_scale_optimizer_non_finite_gradient_is_a_skip_not_an_error():
    optimizer, variables = _stepped(_make_lso, scale=8.0)
    before = _snapshot(optimizer, variables)
    optimizer.apply(_with(G, 1, np.full((2, 2), np.inf, "float32")), variables)
    after = _snapshot(optimizer, variables)
    for a, b in zip(after["trainable"], before["trainable"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after["iterations"], before["iterations"])
    assert float(optimizer.dynamic_scale.numpy()) == float(before["optimizer_values"][3]) / 2


# --- from_config: the values a config brings are checked as the constructor's arguments ----------
def _config(**changes: Any) -> dict:
    return {**_full_sgd().get_config(), **changes}


def _lso_config(**changes: Any) -> dict:
    return {**_make_lso().get_config(), **changes}


FROM_CONFIG_CASES = [
    ("config=None", lambda: SGD.from_config(None), TypeError, ("`config` must be a dict", "config=None")),
    ("lso config='x'", lambda: LossScaleOptimizer.from_config("x"), TypeError, ("`config` must be a dict", "config='x'")),
    *[
        (f"learning_rate={value!r}", (lambda value=value: SGD.from_config(_config(learning_rate=value))), ValueError,
         ("`learning_rate`", f"learning_rate={value!r}"))
        for value in (float("nan"), -0.1, float("inf"))
    ],
    ("momentum=2", lambda: SGD.from_config(_config(momentum=2.0)), ValueError, ("`momentum`", "momentum=2.0")),
    ("ema_momentum=1.5", lambda: SGD.from_config(_config(ema_momentum=1.5)), ValueError, ("`ema_momentum`", "ema_momentum=1.5")),
    ("gradient_accumulation_steps=2**31", lambda: SGD.from_config(_config(gradient_accumulation_steps=2**31)), ValueError,
     ("`gradient_accumulation_steps` must be at most 2147483647", "gradient_accumulation_steps=2147483648")),
    ("ema_overwrite_frequency=2**31", lambda: SGD.from_config(_config(ema_overwrite_frequency=2**31)), ValueError,
     ("`ema_overwrite_frequency`", "ema_overwrite_frequency=2147483648")),
    ("loss_scale_factor=0", lambda: SGD.from_config(_config(loss_scale_factor=0.0)), ValueError,
     ("`loss_scale_factor` must be > 0", "loss_scale_factor=0.0")),
    ("lso initial_scale=nan", lambda: LossScaleOptimizer.from_config(_lso_config(initial_scale=float("nan"))), ValueError,
     ("`initial_scale`", "initial_scale=nan")),
    ("lso initial_scale=0", lambda: LossScaleOptimizer.from_config(_lso_config(initial_scale=0.0)), ValueError,
     ("`initial_scale`", "initial_scale=0.0")),
    ("lso dynamic_growth_steps=2**31", lambda: LossScaleOptimizer.from_config(_lso_config(dynamic_growth_steps=2**31)),
     ValueError, ("`dynamic_growth_steps` must be at most 2147483647", "dynamic_growth_steps=2147483648")),
    ("lso dynamic_growth_steps=0", lambda: LossScaleOptimizer.from_config(_lso_config(dynamic_growth_steps=0)),
     ValueError, ("`dynamic_growth_steps`", "dynamic_growth_steps=0")),
    ("deserialize", lambda: optimizers.deserialize({"class_name": "SGD", "config": _config(learning_rate=-1.0)}), ValueError,
     ("`learning_rate`", "learning_rate=-1.0")),
]


@pytest.mark.parametrize("make, error, fragments", [case[1:] for case in FROM_CONFIG_CASES], ids=[case[0] for case in FROM_CONFIG_CASES])
def test_from_config_checks_the_values_as_the_constructor_does(make, error, fragments):
    with pytest.raises(error, match=_rx(*fragments)):
        make()


def test_from_config_round_trips_in_range_values():
    assert SGD.from_config(_config(gradient_accumulation_steps=2**31 - 1)).gradient_accumulation_steps == 2**31 - 1
    assert LossScaleOptimizer.from_config(_lso_config(dynamic_growth_steps=2**31 - 1)).dynamic_growth_steps == 2**31 - 1


def test_every_row_expects_a_message():
    """Guard: no table row expects an empty fragment list (which would match anything)."""
    for case in CONSTRUCTOR_CASES:
        assert case[3] and all(case[3])
    for case in APPLY_CASES + LSO_CASES:
        assert case.fragments and all(case.fragments)
    for case in FROM_CONFIG_CASES:
        assert case[3] and all(case[3])
