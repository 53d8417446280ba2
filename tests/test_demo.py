"""``inertia.demo.run`` learns the digits, and the progress bar draws what it should."""

from __future__ import annotations

import io
import math
import sys

import pytest

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
    assert lines[0].startswith("inertia ") and "digits" in lines[0]
    assert lines[1].startswith("optimizer: SGD(") and "nesterov=True" in lines[1]
    assert lines[2] == (  # a derived setting is printed, with how to set it
        f"ema_momentum {result['ema_momentum']:.3f} is derived from the run's {result['steps']} steps (the average "
        "spans about the last tenth of them; --ema-momentum sets it)"
    )
    for epoch, line in enumerate(lines[3:5], start=1):
        figures = result["metrics"][epoch - 1]
        assert line.startswith(f"Epoch {epoch}/2 - 43/43 - ") and "s/step - " in line
        assert line.endswith(
            f"loss: {figures['loss']:.4f} - accuracy: {figures['accuracy']:.4f} - val_loss: {figures['val_loss']:.4f} - "
            f"val_accuracy: {figures['val_accuracy']:.4f} - lr: {figures['lr']:.4f}"
        )
        assert figures["loss"] == result["history"][epoch - 1]
    assert lines[5].startswith(f"train loss {result['loss']:.4f}")
    assert lines[6].startswith(f"test accuracy {result['test_accuracy']:.2%}")
    assert len(lines) == 7
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


def test_missing_scikit_learn_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    with pytest.raises(demo.MissingDependencyError, match=r"pip install 'inertia\[demo\]'"):
        demo.run(epochs=1, quiet=True)


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


def test_progress_rejects_empty_loops() -> None:
    with pytest.raises(ValueError):
        FitProgress(epochs=0, steps=1)
    with pytest.raises(ValueError):
        FitProgress(epochs=1, steps=0)
