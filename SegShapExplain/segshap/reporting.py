"""What the front ends (the command line and the worker) show of a run: the time left at the pace so far, durations
as people read them, the engine's stage messages sent to their handler, and the one-line summary of an explanation.
"""

from __future__ import annotations

import contextlib
import logging
import time

from .explanation import Explanation

__all__ = ["Rate", "format_duration", "logging_to", "summary"]


class Rate:
    """Seconds left, from the pace since the first report (set-up before it does not count)."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None

    def eta(self, done: int, total: int) -> float | None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        started, done_then = self.first
        if done >= total:
            return 0.0
        if done <= done_then:
            return None
        return (now - started) / (done - done_then) * (total - done)


def format_duration(seconds: float | None) -> str:
    """``"42s"``, ``"3m05s"``; ``"..."`` when not known yet."""
    if seconds is None:
        return "..."
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextlib.contextmanager
def logging_to(handler: logging.Handler | None):
    """Send the engine's stage messages to ``handler`` for the duration of the block; yields the logger."""
    log = logging.getLogger("segshap")
    if handler is None:
        yield log
        return
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def summary(explanation: Explanation) -> str:
    """One line on what an explanation cost and how faithful it is."""
    stats = explanation.stats
    forwards = stats.get("faithfulness_forwards", 0)
    curves = "".join(
        f"; {name}: {curves.summary()}" if len(explanation.faithfulness) > 1 else f"; {curves.summary()}"
        for name, curves in zip(explanation.target_names, explanation.faithfulness)
    )
    return (
        f"{len(explanation.feature_ids)} features, {stats['evaluations']} coalitions "
        f"({'exact' if explanation.exact else stats['design']}, stopped by {stats['stop_reason']}), "
        f"{stats['patch_forwards']} patch forwards ({stats['forwards_per_coalition']:.1f} per coalition"
        f"{f', {forwards} of them for the faithfulness curves' if forwards else ''}), "
        f"{stats['seconds']:.1f} s{curves}"
    )
