"""``inertia.demo.run`` learns the digits, and the progress bar draws what it should."""

from __future__ import annotations

import io
import math
import sys

import pytest

from inertia import demo
from inertia.progress import EpochProgress

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
    assert lines[2].startswith("epoch 1/2 [") and f"loss {result['history'][0]:.4f}" in lines[2]
    assert lines[3].startswith("epoch 2/2 [") and f"loss {result['history'][1]:.4f}" in lines[3]
    assert lines[4].startswith(f"train loss {result['loss']:.4f}")
    assert lines[5].startswith(f"test accuracy {result['test_accuracy']:.2%}")
    assert len(lines) == 6


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": -1}, {"epochs": 1.5}, {"epochs": True}, {"seed": -1}])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        demo.run(quiet=True, **kwargs)


def test_missing_scikit_learn_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    with pytest.raises(demo.MissingDependencyError, match=r"pip install 'inertia\[demo\]'"):
        demo.run(epochs=1, quiet=True)


# --- progress bar ------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_writes_one_line_per_epoch() -> None:
    out = io.StringIO()
    bar = EpochProgress(epochs=2, steps=4, stream=out, width=8)
    assert not bar.interactive
    for epoch in (1, 2):
        bar.start_epoch(epoch)
        for step in range(1, 5):
            bar.update(step, loss=1.0 / step)
        bar.end_epoch(loss=0.25, extra="lr 0.1000")
    assert out.getvalue() == (
        "epoch 1/2 [========] 4/4 loss 0.2500 - lr 0.1000\n"
        "epoch 2/2 [========] 4/4 loss 0.2500 - lr 0.1000\n"
    )


def test_progress_on_a_terminal_redraws_in_place() -> None:
    out = _Terminal()
    bar = EpochProgress(epochs=1, steps=4, stream=out, width=8, min_interval=0.0)
    assert bar.interactive
    bar.start_epoch(1)
    bar.update(1, loss=12.5)
    bar.update(2, loss=0.5)
    bar.end_epoch(loss=0.5)
    text = out.getvalue()
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[0] == "epoch 1/1 [........] 0/4"
    assert frames[1] == "epoch 1/1 [==>.....] 1/4 loss 12.5000"
    # The shorter redraw is padded so no digit of the longer one is left on screen.
    assert frames[2] == "epoch 1/1 [====>...] 2/4 loss 0.5000 "
    assert frames[3].startswith("epoch 1/1 [========] 4/4 loss 0.5000")
    assert text.endswith("\n") and text.count("\n") == 1


def test_progress_throttles_redraws_but_always_draws_the_last_step() -> None:
    out = _Terminal()
    bar = EpochProgress(epochs=1, steps=1000, stream=out, min_interval=3600.0)
    bar.start_epoch(1)
    for step in range(1, 1001):
        bar.update(step, loss=1.0)
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 3  # the empty bar, the first step, the last step
    assert "1000/1000" in frames[-1]


def test_progress_close_ends_a_half_drawn_bar() -> None:
    out = _Terminal()
    bar = EpochProgress(epochs=3, steps=10, stream=out)
    bar.start_epoch(1)
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_progress_rejects_empty_loops() -> None:
    with pytest.raises(ValueError):
        EpochProgress(epochs=0, steps=1)
    with pytest.raises(ValueError):
        EpochProgress(epochs=1, steps=0)
