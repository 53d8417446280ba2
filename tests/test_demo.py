"""``inertia.demo.run`` learns the digits, and the progress bar draws what it should."""

from __future__ import annotations

import io
import math
import sys

import pytest

from conftest import load_backend, requires

from inertia import demo
from inertia.progress import FitProgress, format_metrics

# The `demo` extra; the tests that never reach the data, below, run without it.
needs_sklearn = pytest.mark.usefixtures("sklearn")  # fails instead of skipping in CI

# Three epochs reach 95-97% test accuracy over seeds 0-9, so 0.9 leaves room for BLAS and
# platform differences while still catching an optimizer that does not learn.
SHORT_EPOCHS = 3


@pytest.fixture(scope="module")
def short_run() -> dict:
    return demo.run(epochs=SHORT_EPOCHS, seed=0, quiet=True)


@needs_sklearn
def test_short_run_learns(short_run: dict) -> None:
    history = short_run["history"]
    assert len(history) == SHORT_EPOCHS
    assert all(math.isfinite(loss) for loss in history)
    assert all(loss < history[0] for loss in history[1:]), history
    assert math.isfinite(short_run["loss"]) and short_run["loss"] < history[0]
    assert short_run["test_accuracy"] >= 0.9
    assert short_run["n_train"] + short_run["n_test"] == 1797
    assert short_run["steps"] == SHORT_EPOCHS * math.ceil(short_run["n_train"] / demo.BATCH_SIZE)


@needs_sklearn
def test_default_run_reaches_95_percent() -> None:
    """The promise `inertia demo` makes with its defaults."""
    result = demo.run(quiet=True)
    assert result["epochs"] == demo.DEFAULT_EPOCHS
    assert result["test_accuracy"] >= 0.95
    assert result["loss"] < 0.1


@needs_sklearn
def test_quiet_prints_nothing_and_a_seed_repeats_exactly(capsys: pytest.CaptureFixture) -> None:
    first = demo.run(epochs=1, seed=3, quiet=True)
    second = demo.run(epochs=1, seed=3, quiet=True)
    assert capsys.readouterr() == ("", "")
    for key in ("history", "loss", "test_loss", "test_accuracy", "train_accuracy"):
        assert first[key] == second[key], key


@needs_sklearn
def test_printed_report() -> None:
    out = io.StringIO()  # not a TTY: one line per epoch, nothing redrawn
    result = demo.run(epochs=2, seed=0, stream=out)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("inertia ") and "digits" in lines[0] and lines[0].endswith("seed 0, batch 32")
    # the defaults are said, not assumed
    assert lines[1] == "backend numpy (numpy.ndarray weights, gradients from autograd), face keras (inertia.SGD)"
    assert lines[2] == (
        "optimizer: inertia.SGD(learning_rate=CosineDecay(0.05, decay_steps=86, alpha=0.01), momentum=0.9, "
        "nesterov=True, weight_decay=0.001, use_ema=True, ema_momentum=0.900), "
        "exclude_from_weight_decay(var_names=['bias'])"
    )
    assert lines[3] == (  # a derived setting is printed, with how to set it
        f"ema_momentum {result['ema_momentum']:.3f} is derived from the run's {result['steps']} steps (the average "
        "spans about the last tenth of them; --ema-momentum sets it)"
    )
    for epoch, line in enumerate(lines[4:6], start=1):
        figures = result["metrics"][epoch - 1]
        assert line.startswith(f"Epoch {epoch}/2 - 43/43 - ") and "s/step - " in line
        assert line.endswith(
            f"loss: {figures['loss']:.4f} - accuracy: {figures['accuracy']:.4f} - val_loss: {figures['val_loss']:.4f} - "
            f"val_accuracy: {figures['val_accuracy']:.4f} - lr: {figures['lr']:.4f}"
        )
        assert figures["loss"] == result["history"][epoch - 1]
    assert lines[6].startswith(f"train loss {result['loss']:.4f}")
    assert lines[7].startswith(f"test accuracy {result['test_accuracy']:.2%}")
    assert len(lines) == 8
    assert result["comparison"] is None
    last = result["metrics"][-1]  # the epoch's figures are those of the weights it ended with
    assert 0.9 < last["val_accuracy"] <= 1 and 0.5 < last["accuracy"] <= 1 and last["lr"] < 0.05


@needs_sklearn
def test_a_given_ema_momentum_is_used_and_not_announced_as_derived() -> None:
    out = io.StringIO()
    result = demo.run(epochs=1, seed=0, stream=out, ema_momentum=0.5)
    assert result["ema_momentum"] == 0.5 and "ema_momentum=0.500" in out.getvalue()
    assert "derived" not in out.getvalue()
    assert demo.run(epochs=1, seed=0, quiet=True, ema_momentum=0.5)["test_accuracy"] == result["test_accuracy"]


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": -1}, {"epochs": 1.5}, {"epochs": True}, {"seed": -1}])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        demo.run(quiet=True, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "numpy", "face": "torch"},
     "`face`='torch': inertia.torch.SGD steps torch tensors only, so it needs the torch backend (--backend torch), not numpy"),
    ({"backend": "jax", "face": "torch"}, "`face`='torch': inertia.torch.SGD steps torch tensors only"),
    ({"face": "legacy", "ema_momentum": 0.5},
     "`ema_momentum`=0.5: the legacy face keeps no moving average of the weights "
     "(tf_keras.optimizers.legacy.SGD has none); only the keras, torch and tf_keras faces do"),
    ({"face": "mlx", "ema_momentum": 0.5}, "`ema_momentum`=0.5: the mlx face keeps no moving average"),
    ({"backend": "tensorflow", "face": "torch"},
     "`face`='torch': inertia.torch.SGD steps torch tensors only, so it needs the torch backend (--backend torch), "
     "not tensorflow"),
    ({"backend": "mlx"}, "`backend`='mlx': not a backend of the demo (choose from numpy, torch, jax, tensorflow)"),
    ({"face": "optax"}, "`face`='optax': not a face of inertia (choose from keras, torch, legacy, tf_keras, mlx)"),
])
def test_rejects_combinations_that_cannot_run(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        demo.run(quiet=True, **kwargs)
    assert message in str(error.value)


def test_missing_scikit_learn_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    with pytest.raises(demo.MissingDependencyError, match=r"pip install 'inertia\[demo\]'"):
        demo.run(epochs=1, quiet=True)


@pytest.mark.parametrize("hidden, kwargs, message", [
    ("tf_keras", {"face": "legacy", "compare": True},
     "comparing the legacy face with tf_keras.optimizers.legacy.SGD needs tf_keras (tf.keras' legacy optimizers, "
     "on TensorFlow): pip install tf-keras"),
    ("mlx.optimizers", {"face": "mlx", "compare": True}, "needs mlx (MLX; on Linux its CPU build): pip install mlx"),
    ("keras", {"face": "keras", "compare": True}, "needs keras (Keras 3): pip install keras"),
    ("torch", {"backend": "torch", "face": "torch"}, "the torch backend needs PyTorch, which is not installed: pip install 'inertia[torch]'"),
    ("jax", {"backend": "jax"}, "the jax backend needs JAX, which is not installed: pip install 'inertia[jax]'"),
    ("tensorflow", {"backend": "tensorflow"},
     "the tensorflow backend needs TensorFlow, which is not installed: pip install 'inertia[tensorflow]'"),
])
def test_a_missing_library_is_named_with_what_to_install(monkeypatch, hidden: str, kwargs: dict, message: str) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # None in sys.modules: not importable, not found
    with pytest.raises(demo.MissingDependencyError) as error:
        demo.run(epochs=1, quiet=True, **kwargs)
    assert message in str(error.value)
    assert demo.missing_libraries(kwargs.get("backend", "numpy"), kwargs["face"] if "face" in kwargs else "keras",
                                  kwargs.get("compare", False)) == [str(error.value)]


# --- every backend and face ------------------------------------------------------------------
_VALID = [(backend, face) for backend in demo.BACKENDS for face, of in demo.FACES.items() if backend in of.backends]
# What each face's header must say beyond its optimizer line: derived settings, and what it lacks
# with what the demo does instead.
_HEADER_NOTES = {
    "keras": ["ema_momentum 0.900 is derived from the run's 43 steps"],
    "torch": ["weight_decay 0.0001 is derived: torch's weight decay is L2", "eta_min 0.0005 is derived",
              "ema_momentum 0.900 is derived from the run's 43 steps"],
    "legacy": ["weight decay: tf.keras' legacy SGD has none; the demo adds 0.0001 x w to the kernels' gradients",
               "weight_decay 0.0001 is derived", "EMA: tf.keras' legacy SGD has none; the demo keeps the last weights"],
    "mlx": ["weight_decay 0.0001 is derived: MLX's weight decay is L2", "EMA: MLX's SGD has none; the demo keeps the last weights"],
    "tf_keras": ["ema_momentum 0.900 is derived from the run's 43 steps", "EMA: tf.keras 2.11+'s, which starts from the initial weights"],
}


def test_the_valid_combinations_are_the_seventeen_expected() -> None:
    assert sorted(_VALID) == sorted([(b, f) for b in ("numpy", "torch", "jax", "tensorflow")
                                     for f in ("keras", "legacy", "tf_keras", "mlx")] + [("torch", "torch")])


@pytest.fixture(scope="module")
def numpy_losses() -> dict:
    """Each face's final training loss on NumPy after one epoch, which the other backends must reach."""
    return {face: demo.run(epochs=1, seed=0, quiet=True, face=face)["loss"] for face in ("keras", "legacy", "tf_keras", "mlx")}


@needs_sklearn
@pytest.mark.parametrize("backend, face", _VALID)
def test_every_backend_and_face_trains(backend: str, face: str, numpy_losses: dict) -> None:
    if backend != "numpy":
        requires(backend)  # (not load_backend: JAX stays without x64, as the demo runs it)
    out = io.StringIO()
    result = demo.run(epochs=1, seed=0, stream=out, backend=backend, face=face)
    optimizer = demo.FACES[face].optimizer
    assert (result["backend"], result["face"], result["optimizer"]) == (backend, face, optimizer)
    assert result["test_accuracy"] >= 0.9 and result["loss"] < 0.35  # 92-93% and 0.22-0.28 on every one
    assert (result["ema_momentum"] is None) == (face in ("legacy", "mlx"))
    lines = out.getvalue().splitlines()
    assert lines[1] == f"backend {backend} ({demo.BACKENDS[backend]}), face {face} ({optimizer})"
    assert lines[2].startswith(f"optimizer: {optimizer}(")
    header = lines[3: next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/1"))]
    for note in _HEADER_NOTES[face]:
        assert any(line.startswith(note) for line in header), (note, header)
    if face != "torch":  # the same model, data and face on another library: NumPy's numbers to float32 rounding
        assert result["loss"] == pytest.approx(numpy_losses[face], abs=1e-6)


# --- --compare -------------------------------------------------------------------------------
# Where the reference keeps its weights in another library, the header says how arrays cross.
_CROSSING = {
    "keras": "; it runs on numpy, not torch: weights and gradients cross as NumPy copies, which are exact",
    "mlx": "on mlx.core arrays: weights and gradients cross as NumPy copies, which are exact",
}


@needs_sklearn
@pytest.mark.parametrize("backend, face, reference, averaged, crossing", [
    ("numpy", "keras", "keras.optimizers.SGD", True, None),  # bit for bit: tests/test_keras_parity.py
    ("torch", "torch", "torch.optim.SGD", False, None),  # bit for bit: tests/test_torch_face.py
    ("numpy", "mlx", "mlx.optimizers.SGD", False, _CROSSING["mlx"]),  # bit for bit: tests/test_mlx.py
    ("torch", "keras", "keras.optimizers.SGD", True, _CROSSING["keras"]),  # Keras on NumPy (conftest), torch tensors here
    # tf_keras steps the demo's own tf.Variables with TensorFlow's cos in its schedule, as inertia on TF does
    ("tensorflow", "legacy", "tf_keras.optimizers.legacy.SGD", False, None),
    ("tensorflow", "mlx", "mlx.optimizers.SGD", False, _CROSSING["mlx"]),
    ("tensorflow", "tf_keras", "tf_keras.optimizers.SGD", True, None),  # the tf.keras 2.11+ face on its own library
])
def test_compare_is_bit_identical_where_the_face_claims_it(backend: str, face: str, reference: str, averaged: bool,
                                                           crossing: str | None) -> None:
    requires({"keras": "keras", "torch": "torch", "mlx": "mlx.optimizers", "legacy": "tf_keras", "tf_keras": "tf_keras"}[face])
    if backend != "numpy":
        load_backend(backend)
    out = io.StringIO()
    result = demo.run(epochs=1, seed=0, stream=out, backend=backend, face=face, compare=True)
    comparison = result["comparison"]
    assert comparison["reference"] == reference and comparison["bit_identical"]
    assert comparison["weights"] == comparison["loss"] == comparison["learning_rates"] == 0.0
    assert comparison["epochs"] == [{"weights": 0.0, "loss": 0.0}]
    # the two trajectories, step by step: the same losses and rates, all 43 of them
    assert len(comparison["step_losses"]) == result["steps"] == 43
    assert comparison["step_losses"] == result["step_losses"]
    assert comparison["step_learning_rates"] == result["step_learning_rates"]
    assert comparison["final_weights"] == (0.0 if averaged else None)
    lines = out.getvalue().splitlines()
    assert lines[lines.index(comparison["description"]) - 1].startswith(("ema_momentum", "EMA: "))
    epoch = next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/1"))
    assert lines[epoch + 1] == f"  vs {reference}: max abs difference of the weights 0, of the step losses 0"
    assert lines[-1] == comparison["verdict"]
    assert lines[-1].startswith(f"verdict: bit-identical: {result['optimizer']} and {reference} gave the same weights "
                                "after each of the 43 steps, the same loss at each")
    assert lines[-1].endswith(" and their moving averages at the end") == averaged
    if crossing is None:  # one array library on both sides: nothing converted
        assert "NumPy copies" not in comparison["description"]
    else:
        assert comparison["description"].endswith(crossing)


@needs_sklearn
def test_compare_reports_a_reference_that_differs(monkeypatch) -> None:
    """A reference whose gradients are scaled by 1.001 is reported as differing, by how much."""
    requires("mlx.optimizers")
    face = demo.FACES["mlx"]
    make_reference = face.reference_trajectory

    def perturbed(recipe, model, initial):
        side = make_reference(recipe, model, initial)
        apply = side.apply
        side.apply = lambda grads: apply([g * 1.001 for g in grads])
        return side

    monkeypatch.setattr(face, "reference_trajectory", perturbed)
    out = io.StringIO()
    result = demo.run(epochs=2, seed=0, stream=out, face="mlx", compare=True)
    comparison = result["comparison"]
    assert not comparison["bit_identical"]
    assert 1e-5 < comparison["weights"] < 1e-2 and 1e-6 < comparison["loss"] < 1e-2
    assert comparison["learning_rates"] == 0.0
    # the first step's loss is the same (same start); the later ones are not
    assert comparison["step_losses"][0] == result["step_losses"][0] and comparison["step_losses"] != result["step_losses"]
    per_epoch = comparison["epochs"]
    assert len(per_epoch) == 2 and max(e["weights"] for e in per_epoch) == comparison["weights"]
    lines = out.getvalue().splitlines()
    assert f"  vs mlx.optimizers.SGD: max abs difference of the weights {per_epoch[1]['weights']:.1e}, of the step " \
           f"losses {per_epoch[1]['loss']:.1e}" in lines
    assert lines[-1] == (
        f"verdict: agree within {comparison['weights']:.1e} (weights) and {comparison['loss']:.1e} (step losses): "
        "inertia.mlx.SGD and mlx.optimizers.SGD, largest absolute differences over 86 steps"
    )


def test_the_legacy_face_adds_the_l2_term_to_the_kernels_gradients_only() -> None:
    import numpy as np

    from inertia.demo_faces import Recipe

    recipe = Recipe(learning_rate=0.05, alpha=0.01, total_steps=10, momentum=0.9, weight_decay=1e-3, ema_momentum=None)
    assert recipe.l2_weight_decay == pytest.approx(1e-4)
    weights = [np.full((2, 2), 2.0, np.float32), np.full(2, 2.0, np.float32), np.full((2, 1), 3.0, np.float32),
               np.full(1, 3.0, np.float32)]
    grads = [np.ones_like(w) for w in weights]
    adjusted = demo.FACES["legacy"].adjust_gradients(recipe, grads, weights)
    assert [a.dtype for a in adjusted] == [np.float32] * 4
    assert [float(a.flat[0]) for a in adjusted] == [np.float32(1 + 2e-4), 1.0, np.float32(1 + 3e-4), 1.0]
    for face in ("keras", "torch", "mlx"):  # the others decay inside the optimizer
        assert demo.FACES[face].adjust_gradients(recipe, grads, weights) is grads


@needs_sklearn
def test_compare_with_tf_keras_legacy_agrees_within_its_schedule_rounding() -> None:
    """tf_keras computes CosineDecay with TensorFlow's cos, which rounds differently now and
    then (tests/test_legacy_parity.py: schedules within 4e-7); the step itself is bit for bit."""
    requires("tf_keras")
    out = io.StringIO()
    result = demo.run(epochs=1, seed=0, stream=out, face="legacy", compare=True)
    comparison = result["comparison"]
    assert comparison["reference"] == "tf_keras.optimizers.legacy.SGD"
    assert "on tf.Variables: weights and gradients cross as NumPy copies" in comparison["description"]
    assert comparison["learning_rates"] <= 1e-8 and comparison["weights"] <= 1e-6 and comparison["loss"] <= 1e-6
    assert comparison["final_weights"] is None  # neither keeps an average
    assert comparison["step_losses"] == pytest.approx(result["step_losses"], abs=1e-6)
    verdict = out.getvalue().splitlines()[-1]
    if not comparison["bit_identical"]:
        assert verdict.startswith(f"verdict: agree within {comparison['weights']:.1e} (weights) and "
                                  f"{comparison['loss']:.1e} (step losses), {comparison['learning_rates']:.1e} "
                                  "(learning rates): inertia.legacy.SGD and tf_keras.optimizers.legacy.SGD")


@needs_sklearn
def test_compare_with_tf_keras_legacy_is_bit_identical_given_the_same_rates(monkeypatch) -> None:
    """The difference above is the schedule's alone: tf_keras stepping with inertia's rates
    gives inertia's weights bit for bit."""
    import numpy as np

    tf, tf_keras = requires("tensorflow"), requires("tf_keras")
    from inertia import schedules

    class InertiasCosineDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float) -> None:
            self.rates = schedules.CosineDecay(initial_learning_rate, decay_steps=decay_steps, alpha=alpha)

        def __call__(self, step):
            return tf.constant(np.float32(self.rates(int(step))))

    monkeypatch.setattr(tf_keras.optimizers.schedules, "CosineDecay", InertiasCosineDecay)
    comparison = demo.run(epochs=1, seed=0, quiet=True, face="legacy", compare=True)["comparison"]
    assert comparison["bit_identical"], comparison["verdict"]


def test_on_tensorflow_tf_keras_steps_the_demos_own_variables() -> None:
    """No NumPy copies between the model and tf_keras on TensorFlow: the model reads the very
    tf.Variables tf_keras steps, and tf_keras gets the model's gradients as they are."""
    import numpy as np

    tf = requires("tensorflow")
    requires("tf_keras")
    from inertia.demo_faces import Recipe
    from inertia.demo_model import Model

    model = Model("tensorflow", np.ones((4, 64), np.float32), np.arange(4), 10)
    recipe = Recipe(learning_rate=0.05, alpha=0.01, total_steps=10, momentum=0.9, weight_decay=1e-3, ema_momentum=None)
    rng = np.random.default_rng(0)
    initial = [rng.uniform(-0.5, 0.5, shape).astype(np.float32) for shape in ((64, 64), (64,), (64, 10), (10,))]
    side = demo.FACES["legacy"].reference_trajectory(recipe, model, initial)
    weights = side.weights()
    assert all(isinstance(w, tf.Variable) for w in weights)
    _, grads, _ = model.loss_and_grads(weights, np.arange(4))
    side.apply(grads)
    assert [id(w) for w in side.weights()] == [id(w) for w in weights]  # the same variables, stepped in place
    assert not any(np.array_equal(w.numpy(), start) for w, start in zip(weights, initial))


@needs_sklearn
def test_compare_on_tensorflow_with_keras_on_numpy_differs_by_the_schedules_cos_alone(monkeypatch) -> None:
    """inertia on tf.Variables computes CosineDecay with TensorFlow's cos (as Keras 3 on
    TensorFlow does: bit-identical, README), Keras on NumPy (the tests' Keras) with NumPy's;
    the rates differ in their last bits now and then. Given inertia's rates, Keras' steps are
    inertia's bit for bit."""
    import numpy as np

    load_backend("tensorflow")
    keras = requires("keras")
    import tensorflow as tf

    from inertia import schedules

    result = demo.run(epochs=1, seed=0, quiet=True, backend="tensorflow", face="keras", compare=True)
    comparison = result["comparison"]
    assert "(Keras " in comparison["description"] and "on its numpy backend: from KERAS_BACKEND)" in comparison["description"]
    assert comparison["description"].endswith(
        "; it runs on numpy, not tensorflow: weights and gradients cross as NumPy copies, which are exact")
    assert 0 < comparison["learning_rates"] <= 1e-8, comparison["verdict"]
    assert comparison["weights"] <= 1e-6 and comparison["loss"] <= 1e-6 and comparison["final_weights"] <= 1e-6

    class InertiasCosineDecayOnTensorflow(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float) -> None:
            self.rates = schedules.CosineDecay(initial_learning_rate, decay_steps=decay_steps, alpha=alpha)

        def __call__(self, step):
            step = tf.constant(np.float32(keras.ops.cast(step, "float32")))
            return keras.ops.convert_to_tensor(np.float32(self.rates(step).numpy()))

    monkeypatch.setattr(keras.optimizers.schedules, "CosineDecay", InertiasCosineDecayOnTensorflow)
    comparison = demo.run(epochs=1, seed=0, quiet=True, backend="tensorflow", face="keras", compare=True)["comparison"]
    assert comparison["bit_identical"], comparison["verdict"]


# --- progress display --------------------------------------------------------------------


def test_progress_off_a_terminal_writes_one_keras_line_per_epoch() -> None:
    out = io.StringIO()
    progress = FitProgress(epochs=2, steps=4, stream=out)
    assert not progress.interactive
    for epoch in (1, 2):
        progress.start_epoch(epoch)
        for step in range(1, 5):
            progress.update(step, {"loss": 1.0 / step})
        progress.end_epoch({"loss": 0.25, "accuracy": 0.5, "val_loss": 0.125, "lr": 0.1}, seconds=0.5)
    progress.close()
    assert out.getvalue() == (
        "Epoch 1/2 - 4/4 - 0.50s 125ms/step - loss: 0.2500 - accuracy: 0.5000 - val_loss: 0.1250 - lr: 0.1000\n"
        "Epoch 2/2 - 4/4 - 0.50s 125ms/step - loss: 0.2500 - accuracy: 0.5000 - val_loss: 0.1250 - lr: 0.1000\n"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_draws_live_bars_that_stay(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("TERM", raising=False)
    out = _Terminal()
    progress = FitProgress(epochs=2, steps=4, stream=out)
    assert progress.interactive
    for epoch in (1, 2):
        progress.start_epoch(epoch)
        for step in range(1, 5):
            progress.update(step, {"loss": 0.5, "accuracy": 0.75})
        progress.end_epoch({"loss": 0.5, "accuracy": 0.75, "val_accuracy": 0.875}, seconds=0.4)
    progress.close()
    text = out.getvalue()
    # both epochs' bars are left on screen, each with its final figures
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "4/4" in text and "100ms/step" in text
    assert text.count("val_accuracy: 0.8750") >= 2 and "ETA" in text


def test_progress_close_is_safe_when_interrupted_or_repeated() -> None:
    out = io.StringIO()
    progress = FitProgress(epochs=3, steps=10, stream=out, interactive=True)
    progress.start_epoch(1)
    progress.update(3, {"loss": 1.0})
    progress.close()
    progress.close()
    assert "Epoch 1/3" in out.getvalue()


def test_metrics_are_listed_as_keras_lists_them() -> None:
    assert format_metrics({"loss": 0.12345, "val_accuracy": 1.0}) == "loss: 0.1235 - val_accuracy: 1.0000"


def test_time_per_step_under_a_millisecond_is_in_microseconds() -> None:
    out = io.StringIO()
    progress = FitProgress(epochs=1, steps=100, stream=out)
    progress.start_epoch(1)
    progress.end_epoch({"loss": 1.0}, seconds=0.042)
    assert out.getvalue() == "Epoch 1/1 - 100/100 - 0.04s 420us/step - loss: 1.0000\n"


def test_a_note_follows_the_epoch_line_off_a_terminal() -> None:
    out = io.StringIO()
    progress = FitProgress(epochs=1, steps=2, stream=out)
    progress.start_epoch(1)
    progress.end_epoch({"loss": 1.0}, seconds=0.5)
    progress.note("  vs reference: 0")
    assert out.getvalue() == "Epoch 1/1 - 2/2 - 0.50s 250ms/step - loss: 1.0000\n  vs reference: 0\n"


def test_a_note_comes_below_the_epoch_bar_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("TERM", raising=False)
    out = _Terminal()
    progress = FitProgress(epochs=2, steps=4, stream=out)
    for epoch in (1, 2):
        progress.start_epoch(epoch)
        progress.update(4, {"loss": 0.5})
        progress.end_epoch({"loss": 0.5, "val_loss": 0.25}, seconds=0.4)
        progress.note(f"note after epoch {epoch}")
    progress.close()
    text = out.getvalue()
    # each epoch's bar is finished (drawn for the last time) before its note, and the next
    # epoch's bar starts after it
    first_bar, first_note = text.rindex("Epoch 1/2"), text.index("note after epoch 1")
    assert first_bar < first_note < text.index("Epoch 2/2") < text.index("note after epoch 2")
    assert text.count("val_loss: 0.2500") >= 2


def test_progress_rejects_empty_loops() -> None:
    with pytest.raises(ValueError):
        FitProgress(epochs=0, steps=1)
    with pytest.raises(ValueError):
        FitProgress(epochs=1, steps=0)
