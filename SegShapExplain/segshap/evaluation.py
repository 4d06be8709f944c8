"""Evaluating a value function for an estimator: the budget and limits, no coalition twice, and the result.

What every coalition design of :func:`segshap.estimator.kernel_shap` shares: :class:`Evaluator` calls the value
function in batches within the forward and time limits (:class:`Limits`), checks what it returns and remembers every
coalition, and :class:`ShapleyResult` is what the designs return.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ShapleyResult",
    "efficiency_error",
    "STOP_REASONS",
    "Evaluator",
    "Limits",
    "LimitReached",
    "converged",
    "t_scaled",
]

STOP_REASONS = ("exact", "budget", "tolerance", "max_forwards", "max_seconds", "exhausted", "user")
"""Why sampling ended: every coalition evaluated; the coalition budget spent; the standard errors below the
tolerance; the forward limit or the time limit reached; every coalition the design can draw drawn; the user
stopped it and kept the estimate of the last update (:mod:`segshap.anytime`)."""


@dataclass(frozen=True)
class ShapleyResult:
    """Shapley values estimated by :func:`kernel_shap`.

    Attributes
    ----------
    values : np.ndarray
        ``(M,)``, or ``(M, T)`` when the value function returns ``T`` values per coalition.
    stderr : np.ndarray
        Standard errors, shaped like ``values``: 0 when exact, NaN where the budget was too small to estimate them
        (fewer than two chains, a sampled size with a single pair, or fewer coalitions than features).
    base_value, full_value : float or np.ndarray
        ``v(empty)`` and ``v(all)``; ``values.sum(0) == full_value - base_value``.
    coalitions : np.ndarray
        ``(n, M)`` bool: every coalition evaluated, in evaluation order.
    coalition_values : np.ndarray
        ``(n,)`` or ``(n, T)``: their values.
    n_evaluations : int
        ``n``.
    exact : bool
        True when all ``2**M`` coalitions were enumerated.
    design : str
        ``"exact"``, ``"chains"`` or ``"leverage"``.
    stop_reason : str
        One of :data:`STOP_REASONS`.
    forwards : float or None
        The model forwards the evaluations ran, by the ``forward_cost`` function given, else ``None``.
    adjusted : bool
        Whether the estimate was regression-adjusted, by boosted trees (:mod:`segshap.adjustment`) or, for Leverage
        SHAP, by the MSR estimate of a surrogate's residual (:mod:`segshap.msr`), for at least one target.
    updates : tuple of dict
        With live updates, what each one was (:meth:`segshap.anytime.Update.record`), the final one last.
    regions : int or None
        When the run ended at the coarse level (:mod:`segshap.coarse`): the number of regions whose values, shared
        equally among their features, the values are.
    """

    values: np.ndarray
    stderr: np.ndarray
    base_value: float | np.ndarray
    full_value: float | np.ndarray
    coalitions: np.ndarray
    coalition_values: np.ndarray
    n_evaluations: int
    exact: bool
    design: str = "leverage"
    stop_reason: str = "budget"
    forwards: float | None = None
    adjusted: bool = False
    updates: tuple = ()
    regions: int | None = None

    @property
    def efficiency_error(self) -> float:
        """Largest ``|sum(values) - (full_value - base_value)|`` over targets."""
        return efficiency_error(self.values, self.full_value, self.base_value)


def efficiency_error(values: np.ndarray, full_value, base_value) -> float:
    """How far Shapley values miss efficiency: the largest ``|sum(values) - (full_value - base_value)|`` over
    targets (``values``: ``(M,)`` or ``(M, T)``)."""
    gap = np.sum(values, axis=0) - (np.asarray(full_value) - np.asarray(base_value))
    return float(np.max(np.abs(gap)))


class Limits:
    """The forward and time limits: whether a batch may still run, and the forwards spent."""

    def __init__(self, forward_cost, max_forwards, max_seconds) -> None:
        self.cost_fn, self.max_forwards, self.max_seconds = forward_cost, max_forwards, max_seconds
        self.started = time.perf_counter()
        self.spent = 0.0 if forward_cost is not None else None
        self.batches = 0

    def admit(self, coalitions: np.ndarray, force: bool = False) -> str | None:
        """``None`` if the batch may run (its cost is then counted), else the name of the limit it would break.
        A forced batch always runs."""
        if self.max_seconds is not None and self.batches and not force:
            elapsed = time.perf_counter() - self.started
            if elapsed + elapsed / self.batches > self.max_seconds:
                return "max_seconds"
        if self.cost_fn is not None:
            batch_cost = float(self.cost_fn(coalitions))
            if self.max_forwards is not None and self.spent + batch_cost > self.max_forwards and not force:
                return "max_forwards"
            self.spent += batch_cost
        self.batches += 1
        return None


class LimitReached(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def takes_retain(value_fn) -> bool:
    try:
        return "retain" in inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return False


class Evaluator:
    """Calls the value function in batches within the limits, checks what it returns and keeps every coalition and
    value (looked up by coalition, so that none is evaluated twice). With ``live`` (:class:`LiveUpdates`) it
    stops before a batch once the user asked to (:class:`LimitReached` ``"user"``) and offers an update after each;
    the designs say where their estimate comes from (:meth:`use_estimate`) and when it first has standard errors
    (:meth:`milestone`)."""

    def __init__(
        self, value_fn, n_players: int, batch_size: int, progress, limits: Limits, live=None, expand=None
    ) -> None:
        self.value_fn, self.n_players, self.batch_size, self.progress = value_fn, n_players, batch_size, progress
        self.limits, self.live, self.expand = limits, live, expand
        self.retains = takes_retain(value_fn)
        self.coalitions: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.index: dict[bytes, int] = {}
        self._stacked: np.ndarray | None = None
        self.done = 0
        self.total = 0
        self.value_shape: tuple[int, ...] | None = None

    def __call__(self, coalitions: np.ndarray, retain: np.ndarray | None = None, force: bool = False) -> np.ndarray:
        """Values of new coalitions, ``batch_size`` at a time; raises :class:`LimitReached` before a batch that
        would break a limit (the batches before it are kept), unless ``force``."""
        out = []
        for first in range(0, len(coalitions), self.batch_size):
            batch = coalitions[first : first + self.batch_size]
            if self.live is not None and self.live.stopped and not force:
                raise LimitReached("user")
            reason = self.limits.admit(batch, force)
            if reason is not None:
                raise LimitReached(reason)
            if self.retains:
                kept = np.zeros(len(batch), bool) if retain is None else retain[first : first + self.batch_size]
                values = self.value_fn(batch.copy(), retain=kept)
            else:
                values = self.value_fn(batch.copy())
            values = np.asarray(values, dtype=np.float64)
            shape = values.shape[1:]
            if values.ndim not in (1, 2) or len(values) != len(batch) or (self.value_shape not in (None, shape)):
                raise ValueError(
                    f"value_fn must return shape ({len(batch)},) or ({len(batch)}, T) for {len(batch)} coalitions, "
                    f"the same T every call; got {values.shape}."
                )
            if not np.all(np.isfinite(values)):
                raise ValueError("value_fn returned NaN or infinite values; check the model and the value function.")
            self.value_shape = shape
            for row in np.packbits(batch, axis=1):
                self.index[row.tobytes()] = len(self.index)
            self.coalitions.append(batch)
            self.values.append(values)
            self._stacked = None
            out.append(values)
            self.done += len(batch)
            if self.progress is not None:
                self.progress(self.done, self.total)
            if self.live is not None:
                self.live.checkpoint()
        return np.concatenate(out)

    def use_estimate(self, estimate) -> None:
        """Updates come from ``estimate(adjust) -> (values, stderr, adjusted)`` from now on (at the coarse level,
        the regions' estimate, carried to the features by ``expand``)."""
        if self.live is not None:
            self.live.use(estimate, regions=None if self.expand is None else self.n_players, expand=self.expand)

    def final_estimate(self, compute):
        """The design's final ``(values, stderr, adjusted)``: ``compute()``, unless the user stopped the run with an
        update to keep, whose estimate it is then (the result holds what was shown; nothing left to compute)."""
        kept = None if self.live is None or self.expand is not None else self.live.kept()
        if kept is None:
            return compute()
        shape = (self.n_players, -1)
        adjusted = np.full(np.reshape(kept.values, shape).shape[1], kept.adjusted)
        return np.reshape(kept.values, shape), np.reshape(kept.stderr, shape), adjusted

    def milestone(self) -> None:
        """The design's estimate has just gained standard errors: the first update is due."""
        if self.live is not None:
            self.live.checkpoint(milestone=True)

    def unknown(self, coalitions: np.ndarray) -> np.ndarray:
        """Bool mask of the rows never evaluated, the first of any repeated row only."""
        seen = set(self.index)
        mask = np.zeros(len(coalitions), dtype=bool)
        for i, row in enumerate(np.packbits(coalitions, axis=1)):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                mask[i] = True
        return mask

    def lookup(self, coalitions: np.ndarray) -> np.ndarray:
        """``(n, T)`` values of coalitions evaluated before."""
        if self._stacked is None:
            self._stacked = np.concatenate(self.values).reshape(self.done, -1)
        rows = [self.index[row.tobytes()] for row in np.packbits(coalitions, axis=1)]
        return self._stacked[rows]

    def finish(self) -> None:
        if self.progress is not None and self.done < self.total:
            self.progress(self.done, self.done)

    def result(
        self, values: np.ndarray, stderr: np.ndarray, exact: bool, design: str, reason: str, adjusted: bool = False
    ) -> ShapleyResult:
        coalitions = np.concatenate(self.coalitions)
        coalition_values = np.concatenate(self.values)
        empty = np.flatnonzero(~coalitions.any(axis=1))[0]
        full = np.flatnonzero(coalitions.all(axis=1))[0]
        base, whole = coalition_values[empty], coalition_values[full]
        if not self.value_shape:
            values, stderr, base, whole = values[:, 0], stderr[:, 0], float(base), float(whole)
        return ShapleyResult(
            values,
            stderr,
            base,
            whole,
            coalitions,
            coalition_values,
            len(coalitions),
            exact,
            design,
            reason,
            self.limits.spent,
            adjusted,
        )


def converged(phi: np.ndarray, stderr: np.ndarray, tolerance: float) -> bool:
    spread = phi.max(axis=0) - phi.min(axis=0)
    worst = stderr.max(axis=0)
    if not np.all(np.isfinite(worst)):
        return False
    return bool(np.all(worst <= tolerance * spread))


def t_scaled(stderr: np.ndarray, degrees_of_freedom: float) -> np.ndarray:
    """Standard errors scaled so that ``estimate +- 1.645 stderr`` covers 90 %: an error estimated from few
    independent units follows Student's t with their degrees of freedom, not the normal law (with 4 degrees of
    freedom the scale is 1.30, with 40 it is 1.02)."""
    from scipy.stats import norm, t

    if degrees_of_freedom < 1:
        return np.full(np.shape(stderr), np.nan)
    return np.asarray(stderr) * float(t.ppf(0.95, degrees_of_freedom) / norm.ppf(0.95))
