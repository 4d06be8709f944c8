"""What the command line shows while it computes: a progress bar and, during an explanation, the current top 5.

On a terminal the bar is one line redrawn in place, and live estimates (:class:`segshap.Update`) add the five
largest values with their standard errors under it, redrawn at each update; elsewhere (a log file, a pipe) a line
per 10 % and nothing of the estimates. Both may be called from any thread.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from .anytime import Update
from .reporting import Rate, progress_text, update_text

__all__ = ["ProgressBar", "BarLogHandler", "TOP_SHOWN"]

TOP_SHOWN = 5
"""Features listed under the bar."""


class ProgressBar:
    """A one-line bar with percentage and time left on a terminal, and the live estimate's top
    :data:`TOP_SHOWN` under it (:meth:`show_update`); a line per 10 % otherwise."""

    def __init__(self, stream, unit: str | None = None) -> None:
        self.stream, self.rate, self.last_tenth, self.unit = stream, Rate(), -1, unit
        self.terminal = stream.isatty()
        self.lock = threading.Lock()
        self.bar = ""
        self.below: list[str] = []
        self.drawn_below = 0

    def __call__(self, done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        text = progress_text(done, total, self.rate.eta(done, total), unit=self.unit)
        with self.lock:
            if self.terminal:
                filled = int(percent / 4)
                self.bar = f"|{'#' * filled}{' ' * (25 - filled)}| {text}"
                self._draw(end=done >= total)
            elif int(percent // 10) > self.last_tenth:
                self.last_tenth = int(percent // 10)
                self.stream.write(text + "\n")
            self.stream.flush()

    def show_update(self, update: Update) -> None:
        """List the update's top :data:`TOP_SHOWN` (feature id, value ± standard error) under the bar (on a
        terminal; elsewhere nothing)."""
        if not self.terminal:
            return
        ids = np.arange(len(update.values)) if update.feature_ids is None else update.feature_ids
        lines = [f"  {update_text(update)}"]
        for rank, index in enumerate(update.top(TOP_SHOWN), 1):
            value = np.atleast_1d(update.values[index])
            error = np.atleast_1d(update.stderr[index])
            shown = ", ".join(f"{v:+.4f}" + ("" if np.isnan(e) else f" ± {e:.4f}") for v, e in zip(value, error))
            lines.append(f"  {rank}. feature {ids[index]}: {shown}")
        with self.lock:
            self.below = lines
            self._draw(end=False)
            self.stream.flush()

    def message(self, line: str) -> None:
        """A line of its own above the bar and the lines under it."""
        with self.lock:
            if self.terminal and self.bar:
                self.stream.write("\r\x1b[K" + line + "\n")
                self._draw(end=False)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def _draw(self, end: bool) -> None:
        """The bar and the lines under it, over what was drawn before (the cursor rests at the bar's end)."""
        out = ["\r\x1b[K" + self.bar]
        for line in self.below:
            out.append("\n\x1b[K" + line)
        for _ in range(len(self.below), self.drawn_below):  # lines of a longer block before
            out.append("\n\x1b[K")
        lines_down = max(len(self.below), self.drawn_below)
        if end:  # the bar and the last top stay on screen; what follows goes under them
            out.append("\n")
            self.bar, self.below, self.drawn_below = "", [], 0
        else:
            out.append(f"\x1b[{lines_down}A" if lines_down else "")
            out.append(f"\r\x1b[{len(self.bar)}C" if self.bar else "\r")
            self.drawn_below = lines_down
        self.stream.write("".join(out))


class BarLogHandler(logging.Handler):
    """Log records as ``segshap: ...`` lines written above a :class:`ProgressBar`."""

    def __init__(self, bar: ProgressBar) -> None:
        super().__init__(logging.INFO)
        self.bar = bar
        self.setFormatter(logging.Formatter("segshap: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.bar.message(self.format(record))
