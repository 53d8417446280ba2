"""The demo's progress display, in Keras ``fit``'s habits, drawn with ``rich``.

On a terminal each epoch gets a live bar (steps done, ETA, ms per step, the running loss and
accuracy) that stays on screen with the epoch's validation figures once it ends, as Keras
leaves one line per epoch. Anywhere else (a pipe, a file, a CI log) nothing is drawn
mid-epoch and each epoch ends in exactly one plain line, so logs stay readable and diffable.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping, Optional, TextIO

__all__ = ["FitProgress", "format_metrics"]


def _per_step(seconds: float) -> str:
    """Time per step as Keras prints it: ``5ms/step``, or ``420us/step`` under a millisecond."""
    return f"{seconds * 1e3:.0f}ms/step" if seconds >= 1e-3 else f"{seconds * 1e6:.0f}us/step"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``loss: 0.1234 - accuracy: 0.9650``, Keras' way of listing an epoch's figures.

    Example:
        >>> format_metrics({"loss": 0.5, "accuracy": 0.875})
        'loss: 0.5000 - accuracy: 0.8750'
    """
    return " - ".join(f"{name}: {value:.4f}" for name, value in metrics.items())


class FitProgress:
    """Progress of a training loop, one line per epoch.

    Args:
        epochs: the number of epochs the loop will run.
        steps: the number of steps (mini-batches) in one epoch.
        stream: where to write; ``sys.stdout`` (looked up at construction) when ``None``.
        interactive: draw live bars; when ``None``, whether ``stream`` is a terminal.

    Example (off a terminal: one plain line per epoch):
        >>> import io
        >>> out = io.StringIO()
        >>> progress = FitProgress(epochs=2, steps=10, stream=out)
        >>> progress.start_epoch(1)
        >>> progress.update(10, {"loss": 0.5})
        >>> progress.end_epoch({"loss": 0.5, "val_loss": 0.25}, seconds=0.02)
        >>> out.getvalue()
        'Epoch 1/2 - 10/10 - 0.02s 2ms/step - loss: 0.5000 - val_loss: 0.2500\\n'
    """

    def __init__(self, epochs: int, steps: int, stream: Optional[TextIO] = None, interactive: Optional[bool] = None) -> None:
        if epochs < 1 or steps < 1:
            raise ValueError(f"`epochs` and `steps` must be >= 1. Received: epochs={epochs}, steps={steps}")
        from rich.console import Console

        self.epochs, self.steps = int(epochs), int(steps)
        self.stream = sys.stdout if stream is None else stream
        self.console = Console(file=self.stream, highlight=False)
        self.interactive = self.console.is_terminal if interactive is None else bool(interactive)
        self._live = None
        self._task = None
        self._epoch = 0
        self._started = 0.0

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._live is None:
            self._live = Progress(
                TextColumn("Epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[per_step]}"),
                TextColumn("{task.fields[metrics]}"), console=self.console, transient=False,
            )
            self._live.start()
        return self._live

    def start_epoch(self, epoch: int) -> None:
        """Begin epoch ``epoch`` (1-based)."""
        self._epoch, self._started = int(epoch), time.perf_counter()
        if self.interactive:
            self._task = self._progress().add_task(
                "", total=self.steps, epoch=f"{epoch}/{self.epochs}", per_step="", metrics=""
            )

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        """``step`` steps of the current epoch are done; ``metrics`` are their running means.
        Off a terminal it does nothing (rich throttles the redraws on one)."""
        if self.interactive and self._task is not None:
            per_step = (time.perf_counter() - self._started) / max(step, 1)
            self._progress().update(
                self._task, completed=step, per_step=_per_step(per_step), metrics=format_metrics(metrics)
            )

    def end_epoch(self, metrics: Mapping[str, float], seconds: Optional[float] = None) -> None:
        """Finish the current epoch with its final figures (validation ones included)."""
        seconds = time.perf_counter() - self._started if seconds is None else seconds
        per_step = _per_step(seconds / self.steps)
        if self.interactive and self._task is not None:
            self._progress().update(self._task, completed=self.steps, per_step=per_step, metrics=format_metrics(metrics))
            self._task = None
            # Each epoch's bar is a live display of its own, stopped here: it stays on screen as
            # drawn last, and whatever is printed next (a note) comes below it, not above.
            self.close()
        else:
            self.stream.write(
                f"Epoch {self._epoch}/{self.epochs} - {self.steps}/{self.steps} - {seconds:.2f}s {per_step} - "
                f"{format_metrics(metrics)}\n"
            )
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of the caller's below the epoch that just ended (the demo's comparison)."""
        if self.interactive:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Stop the live display (also when training was interrupted), so later output starts clean."""
        if self._live is not None:
            self._live.stop()
            self._live = None
