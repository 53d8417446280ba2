"""A tiny per-epoch progress bar (standard library only).

On a terminal the bar of the current epoch is redrawn in place with ``'\\r'`` as the steps
go by; anywhere else (a pipe, a file, a CI log) nothing is drawn mid-epoch and each epoch
ends in exactly one line, so logs stay readable and diffable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["EpochProgress"]


class EpochProgress:
    """Progress of a training loop, one bar per epoch.

    Args:
        epochs: the number of epochs the loop will run.
        steps: the number of steps (mini-batches) in one epoch.
        stream: where to write; ``sys.stdout`` (looked up at construction) when ``None``.
        width: the number of characters inside the bar's brackets.
        interactive: redraw in place; when ``None``, whether ``stream`` is a TTY.
        min_interval: the least time in seconds between two redraws on a terminal.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = EpochProgress(epochs=2, steps=10, stream=out, width=10)
        >>> bar.start_epoch(1)
        >>> bar.update(10, loss=0.5)
        >>> bar.end_epoch(loss=0.5)
        >>> out.getvalue()
        'epoch 1/2 [==========] 10/10 loss 0.5000\\n'
    """

    def __init__(
        self,
        epochs: int,
        steps: int,
        stream: TextIO | None = None,
        width: int = 30,
        interactive: bool | None = None,
        min_interval: float = 0.05,
    ) -> None:
        if epochs < 1 or steps < 1:
            raise ValueError(f"`epochs` and `steps` must be >= 1. Received: epochs={epochs}, steps={steps}")
        self.epochs = int(epochs)
        self.steps = int(steps)
        self.stream = sys.stdout if stream is None else stream
        self.width = int(width)
        self.interactive = _isatty(self.stream) if interactive is None else bool(interactive)
        self.min_interval = float(min_interval)
        self._epoch = 0
        self._last_draw = float("-inf")
        # Length of the line now on screen, so a shorter redraw can blank out the leftovers.
        self._drawn = 0

    def start_epoch(self, epoch: int) -> None:
        """Begin epoch ``epoch`` (1-based)."""
        self._epoch = int(epoch)
        self._last_draw = float("-inf")
        if self.interactive:
            self._draw(self._line(0, None))

    def update(self, step: int, loss: float | None = None) -> None:
        """``step`` steps of the current epoch are done; ``loss`` is their running mean.

        Cheap to call every step: off a terminal it does nothing, and on one it redraws at
        most once per ``min_interval`` seconds (writing to a terminal is slower than a step
        of a small model).
        """
        if not self.interactive:
            return
        now = time.monotonic()
        if now - self._last_draw < self.min_interval and step < self.steps:
            return
        self._last_draw = now
        self._draw(self._line(step, loss))

    def end_epoch(self, loss: float | None = None, extra: str = "") -> None:
        """Finish the current epoch: draw the full bar with its final ``loss``, then a newline."""
        line = self._line(self.steps, loss)
        if extra:
            line = f"{line} - {extra}"
        if self.interactive:
            self._draw(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self._drawn = 0
        self.stream.flush()

    def close(self) -> None:
        """End a bar left half drawn (training interrupted), so the next output starts clean."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0

    def _line(self, step: int, loss: float | None) -> str:
        filled = self.width * step // self.steps
        bar = "=" * filled + (">" if filled < self.width and step else "")
        bar = bar.ljust(self.width, ".")
        digits = len(str(self.epochs))
        step_digits = len(str(self.steps))
        text = f"epoch {self._epoch:>{digits}}/{self.epochs} [{bar}] {step:>{step_digits}}/{self.steps}"
        if loss is not None:
            text += f" loss {loss:.4f}"
        return text

    def _draw(self, line: str) -> None:
        padding = " " * max(0, self._drawn - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._drawn = len(line)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
