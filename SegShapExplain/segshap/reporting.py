"""What the front ends (the command line and the worker) show of a run, in the user's words: the time left at the
pace so far, durations as people read them, progress lines, the engine's stage messages sent to their handler, and
the one-line summary of an explanation (the engine's terms, coalitions and window forwards, stay in the log line of
:func:`engine_summary` and in ``explanation.json``).
"""

from __future__ import annotations

import contextlib
import logging
import time

from .explanation import Explanation

__all__ = [
    "Rate",
    "about",
    "engine_summary",
    "format_duration",
    "logging_to",
    "progress_text",
    "summary",
    "update_text",
]


class Rate:
    """Seconds left, from the pace since the first report (set-up before it does not count)."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None

    def eta(self, done: int, total: int) -> float | None:
        if total <= 0:  # nothing to measure yet (the first batches may all come from the cache)
            return None
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


def about(seconds: float | None) -> str:
    """A time left as people say it: ``"about 19 s"``, ``"about 3 min"``; ``"estimating the time left"`` before
    the pace is known."""
    if seconds is None:
        return "estimating the time left"
    if seconds < 1:
        return "about a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def progress_text(done: int, total: int, eta: float | None, *, unit: str | None = None) -> str:
    """A progress line in the user's words: ``"evaluating the model, 37 %, about 19 s left"`` (window forwards,
    what an explanation's time goes to, are not a unit users know), or with a ``unit``
    ``"3 of 10 cases, about 2 min left"``."""
    percent = 100.0 * done / max(total, 1)
    left = about(eta) if eta is None else f"{about(eta)} left"
    if unit is None:
        return f"evaluating the model, {percent:.0f} %, {left}"
    return f"{done:,} of {total:,} {unit}, {left}"


def update_text(update) -> str:
    """How settled a live estimate (:class:`segshap.Update`) is, in the user's words: ``"first look from 32
    regions of the features, 3 % of the budget"``, ``"top 10 unchanged for 3 updates, 41 % of the budget"``,
    ``"top 10: 2 new since the last update, ..."``, ``"final values"``."""
    if update.final:
        return "final values" if update.level == "features" else f"final values, of {update.regions} regions"
    if update.stable_updates:
        plural = "s" if update.stable_updates > 1 else ""
        state = f"top 10 unchanged for {update.stable_updates} update{plural}"
    elif update.number == 1:
        state = "first estimate"
    else:
        state = f"top 10: {update.top_changed} new since the last update"
    if update.level == "regions":
        state = f"first look from {update.regions} regions of the features: {state}"
    return f"{state}, {update.fraction:.0%} of the budget"


_ENDINGS = {
    "exact": "exact: every coalition evaluated",
    "tolerance": "settled: largest standard error under {tolerance:.0%} of the values' range",
    "budget": "all {budget:,} samples used",
    "exhausted": "every sample the design can draw used",
    "max_seconds": "stopped at the time limit after {n:,} of {budget:,} samples",
    "max_forwards": "stopped at the forward limit after {n:,} of {budget:,} samples",
    "user": "stopped by the user after {n:,} of {budget:,} samples",
}
"""How an estimation ended (:data:`segshap.evaluation.STOP_REASONS`), in words."""


def summary(explanation: Explanation) -> str:
    """One line on an explanation in the user's words: features, samples and time, how the sampling ended, what
    the standard errors allow, the faithfulness check. The engine's own account is :func:`engine_summary`."""
    stats, settings = explanation.stats, explanation.settings
    ending = _ENDINGS.get("exact" if explanation.exact else stats["stop_reason"], stats["stop_reason"]).format(
        tolerance=settings.get("tolerance") or 0.0, budget=stats["budget"], n=stats["evaluations"]
    )
    line = (
        f"{len(explanation.feature_ids)} features from {stats['evaluations']:,} samples in "
        f"{format_duration(stats['seconds'])} ({ending})"
    )
    for name, curves in zip(explanation.target_names, explanation.faithfulness):
        line += f"; {name + ': ' if len(explanation.faithfulness) > 1 else ''}{curves.summary()}"
    return "; ".join([line, *explanation.warnings])


def engine_summary(explanation: Explanation) -> str:
    """One line on what an explanation cost in the engine's terms (coalitions, design, window forwards), for logs."""
    stats = explanation.stats
    forwards = stats.get("faithfulness_forwards", 0)
    return (
        f"{len(explanation.feature_ids)} features, {stats['evaluations']} coalitions "
        f"({'exact' if explanation.exact else stats['design']}, stop reason {stats['stop_reason']}), "
        f"{stats['patch_forwards']} window forwards ({stats['forwards_per_coalition']:.1f} per coalition"
        f"{f', {forwards} of them for the faithfulness curves' if forwards else ''}), {stats['seconds']:.1f} s"
    )
