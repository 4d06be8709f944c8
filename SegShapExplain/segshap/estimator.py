"""KernelSHAP: Shapley values of a set function from a budget of evaluations.

:func:`kernel_shap` estimates the Shapley values of a value function ``v`` over ``M`` features (players). A
coalition is a bool vector over the features; the Shapley values are the solution of the Shapley-kernel weighted
least-squares problem (Lundberg & Lee, 2017) under the efficiency constraint ``sum(phi) = v(all) - v(empty)``.

* When ``2**M`` coalitions fit the budget they are all evaluated and the values are exact.
* ``design="chains"`` (:mod:`segshap.chains`): antithetic permutation chains, each coalition one feature away from
  the previous one, with a cross-fitted regression-adjusted estimate. An engine that caches window outputs by the
  features they see pays one feature's windows per coalition, and the surrogate's exact Shapley values leave only
  a small residual to estimate. Standard errors come from the spread of independent chains.
* ``design="leverage"``: coalitions sampled as in Leverage SHAP (Musco & Witter, 2025): every coalition size gets
  the same share of the budget (the leverage scores of the kernel regression are equal across sizes), sizes are
  enumerated whole once their share covers them, coalitions are drawn without replacement and in complementary
  pairs ``(S, ~S)``. Each evaluated coalition enters the regression with its kernel weight divided by its inclusion
  probability (Horvitz-Thompson), and the regression is solved in the subspace where efficiency holds exactly.
  Standard errors come from the estimator's linearisation around its solution (a sandwich variance), with the
  sampled pairs as independent units inside each size (stratum) and the finite-population correction of sampling
  without replacement, so sizes enumerated whole contribute no error. Residuals are inflated by their leverage
  (HC3), which makes this the jackknife over sampled pairs in its closed form.
* Both designs try a **regression adjustment** by boosted trees (:func:`segshap.surrogate.fit_boosted_trees`) at
  the end: trees fitted to every evaluated coalition give their exact Shapley values, and the design's own
  estimator applied to the residual ``v - trees`` corrects them. Paired kernel regression is already exact on
  games of order two; the trees capture the higher orders that real models' games hold (on the exactly enumerated
  games of ``benchmarks/cases/real_games.py`` the error at 8M coalitions falls 2.5x). Fitted in-sample the adjustment
  can overfit few coalitions, so its variance is estimated by a grouped jackknife (groups of sampled pairs, or of
  chains, left out of the trees' fit) and each target keeps whichever estimate, adjusted or plain, has the
  smaller summed variance, with that estimate's standard errors (``ShapleyResult.adjusted`` says whether any
  target took it). The jackknife overstates variance on average, so the choice leans to the plain estimate. It
  is tried while (coalitions) x M stays below about 4e5, where fitting stays within seconds.
* ``design="auto"`` takes the chains when at least one fits the budget and the ``cost`` function says that a
  chain's coalitions are cheap enough to make up for their error per coalition. At equal coalitions that error,
  measured against Leverage SHAP's (both adjusted), depends on the budget in multiples of ``M`` and on ``M`` (see
  :data:`_CHAIN_ERROR_RATIOS`): far lower at ``2M``, where Leverage SHAP's regression has barely more rows than
  unknowns, and 1.6-2.5 times as high from ``8M`` on, less with more features. With errors falling as one over
  the square root of the coalitions, the chains win when a chain coalition costs less than ``1 / ratio**2`` of a
  sampled one (as with an engine that reruns only the windows a step changes). Without a cost function every
  coalition costs the same, and Leverage SHAP is taken.

No coalition is ever evaluated twice.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .chains import ChainDesign, chain_estimate, loop_coalitions

__all__ = ["ShapleyResult", "kernel_shap", "shapley_from_enumeration", "efficiency_error", "DESIGNS", "STOP_REASONS"]

DESIGNS = ("auto", "chains", "leverage")
STOP_REASONS = ("exact", "budget", "tolerance", "max_cost", "max_seconds", "exhausted")
"""Why sampling ended: every coalition evaluated; the coalition budget spent; the standard errors below the
tolerance; the cost limit or the time limit reached; every coalition the design can draw drawn."""

_ENUMERATE_STRATUM = 200_000
"""A size with at most this many pairs is sampled from its full list (a random permutation), not by rejection."""

_TOLERANCE_CHAINS = 4
"""With a tolerance, the chains' standard errors are checked from this many complete chains on (with fewer they
rest on too few units to be trusted)."""

_CHAIN_ERROR_RATIOS = {
    12: ((2.0, 0.2), (4.0, 1.3), (8.0, 2.5), (12.0, 2.5), (16.0, 2.4)),
    135: ((2.0, 0.04), (4.0, 1.2), (8.0, 1.6), (16.0, 1.75), (30.0, 1.8)),
}
"""Per number of features ``M``: ``(budget / M, error of the chains / error of Leverage SHAP)`` at equal
coalitions, both with the tree adjustment, as measured (mean relative L2 errors unless said otherwise).

* ``M = 12``: the six real-model games of ``benchmarks/cases/real_games.py`` (M = 11-14, 10 seeds). With few features
  Leverage SHAP soon enumerates the smallest sizes whole, which the chains cannot use, so the ratio is high.
* ``M = 135``: the efficiency suite's full case (2 seeds per budget; at 16M from the errors pooled over the
  suite's run, ratio 1.45 on its own, and a separate run with other seeds, 2.3 on its own), where Leverage SHAP's
  regression at 2M is unstable (errors of 0.5-3); at 30M, a whole-structure target (gray matter of the demo MRI,
  M = 74, the default budget), where no reference values exist and the ratio is that of the largest standard error
  relative to the values' range.
* The efficiency suite's quick case (M = 33) measured 0.18, 1.6 and 2.1-2.4 at 2M, 4M and 8M, in between.

Interpolated in log(budget / M) within a row, constant beyond its ends, then in log M between the rows (constant
outside them)."""

_COST_PROBE = 16
"""Coalitions of each design whose cost ``design="auto"`` asks for before it chooses."""

_WALKS = 8
"""Chains walked side by side: one batch holds consecutive steps of each."""


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
    cost : float or None
        What the evaluations cost by the ``cost`` function given (e.g. window forwards), else ``None``.
    adjusted : bool
        Whether Leverage SHAP's estimate was regression-adjusted by boosted trees for at least one target.
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
    cost: float | None = None
    adjusted: bool = False

    @property
    def efficiency_error(self) -> float:
        """Largest ``|sum(values) - (full_value - base_value)|`` over targets."""
        return efficiency_error(self.values, self.full_value, self.base_value)


def efficiency_error(values: np.ndarray, full_value, base_value) -> float:
    """How far Shapley values miss efficiency: the largest ``|sum(values) - (full_value - base_value)|`` over
    targets (``values``: ``(M,)`` or ``(M, T)``)."""
    gap = np.sum(values, axis=0) - (np.asarray(full_value) - np.asarray(base_value))
    return float(np.max(np.abs(gap)))


def kernel_shap(
    value_fn: Callable[[np.ndarray], np.ndarray],
    n_features: int,
    budget: int,
    *,
    seed: int = 0,
    tolerance: float | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    design: str = "auto",
    cost: Callable[[np.ndarray], float] | None = None,
    max_cost: float | None = None,
    max_seconds: float | None = None,
    interactions: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> ShapleyResult:
    """Shapley values of ``value_fn`` from at most ``budget`` evaluations.

    Parameters
    ----------
    value_fn : callable
        Maps an ``(n, M)`` bool array of coalitions (True = feature present) to ``(n,)`` or ``(n, T)`` values. It
        is called with at most ``batch_size`` coalitions at a time and never with a coalition twice. If it takes a
        keyword ``retain``, the chains pass a bool mask of the rows the next call continues from (an engine keeps
        what they need, as :meth:`segshap.PatchEngine.evaluate` does).
    n_features : int
        ``M``, the number of features.
    budget : int
        Most coalitions to evaluate (at least 2: the empty and the full coalition). With ``budget >= 2**M`` all
        coalitions are evaluated and the values are exact.
    seed : int
        Seed of the coalition sampler.
    tolerance : float, optional
        Stop early once every target's ``max(stderr) / (max(values) - min(values))`` is below this (0.01-0.02 is
        usual): checked after every round of chains from four chains on, or after every batch from ``4 M``
        evaluations on with Leverage SHAP (before, the standard errors rest on too few units to be trusted).
        ``None`` spends the whole budget.
    batch_size : int
        Coalitions per call of ``value_fn`` (at least 2).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch; ``total`` is the budget (or ``2**M``) and the last
        call has ``done == total`` also when the run stops early.
    design : str
        ``"auto"``, ``"chains"`` or ``"leverage"`` (see the module's description).
    cost : callable, optional
        ``cost(coalitions)``: what evaluating these coalitions next would cost (e.g. :meth:`PatchEngine.forward_cost`,
        in window forwards), given everything evaluated before. Needed by ``max_cost``; the total is reported.
    max_cost : float, optional
        Stop before a batch whose cost would take the total beyond this.
    max_seconds : float, optional
        Stop before a batch that, at the pace so far, would end after this many seconds.
    interactions : np.ndarray or callable, optional
        ``(P, 2)`` feature pairs the chains' surrogate gives an interaction term (e.g. adjacent supervoxels), or a
        function returning them, called only if the chains run. Default: those of :func:`default_interactions`.

    Returns
    -------
    ShapleyResult

    Raises
    ------
    ValueError
        For a bad argument, or when ``value_fn`` returns values of the wrong shape or that are not finite.
    """
    for name, number, least in (("n_features", n_features, 1), ("budget", budget, 2), ("batch_size", batch_size, 2)):
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {number!r}.")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be a number in (0, 1) (e.g. 0.01) or None, got {tolerance!r}.")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}.")
    for name, limit in (("max_cost", max_cost), ("max_seconds", max_seconds)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise ValueError(f"{name} must be a positive number or None, got {limit!r}.")
    if max_cost is not None and cost is None:
        raise ValueError("max_cost needs a cost function (cost=...) that says what a batch of coalitions costs.")
    n_features, budget, batch_size = int(n_features), int(budget), int(batch_size)
    limits = _Limits(cost, max_cost, max_seconds)
    evaluator = _Evaluator(value_fn, n_features, batch_size, progress, limits)
    if n_features < 63 and 2**n_features <= budget:
        return _exact(evaluator)
    rng = np.random.default_rng(seed)
    border, chains_fit = _chain_plan(n_features, budget)
    if design == "chains" and chains_fit < 1:
        raise ValueError(
            f"design='chains' needs a budget of at least {2 * n_features} coalitions for {n_features} features (one "
            f"chain), got {budget}; raise the budget or use design='leverage'."
        )
    if design == "auto":
        design = _cheaper_design(cost, n_features, budget, chains_fit, seed)
    if design == "chains":
        if interactions is None:
            pairs = default_interactions(n_features, budget)
        else:
            pairs = _as_pairs(interactions() if callable(interactions) else interactions, n_features)
        return _chains(evaluator, budget, rng, tolerance, pairs, border, seed)
    return _sampled(evaluator, budget, rng, tolerance, seed)


def _chain_error_ratio(budget: int, n_features: int) -> float:
    """The chains' error over Leverage SHAP's at equal coalitions for this budget (:data:`_CHAIN_ERROR_RATIOS`)."""
    sizes = sorted(_CHAIN_ERROR_RATIOS)
    by_size = []
    for size in sizes:
        multiples, ratios = zip(*_CHAIN_ERROR_RATIOS[size])
        by_size.append(np.interp(math.log(budget / n_features), np.log(multiples), ratios))
    return float(np.interp(math.log(n_features), np.log(sizes), by_size))


def _cheaper_design(cost, n_features: int, budget: int, chains_fit: int, seed: int) -> str:
    """The design with the lower expected error per unit of cost: the chains if one fits and a chain's coalitions,
    as ``cost`` prices them now, are cheap enough to make up for their error per coalition at this budget."""
    if cost is None or chains_fit < 1:
        return "leverage"
    rng = np.random.default_rng([seed, 1])
    steps = min(n_features - 1, _COST_PROBE)
    chain = loop_coalitions(rng.permutation(n_features))[:steps]
    sizes = rng.integers(1, n_features, size=steps)
    sampled = rng.random((steps, n_features)).argsort(axis=1) < sizes[:, None]
    chain_cost, sampled_cost = float(cost(chain)) / steps, float(cost(sampled)) / steps
    return "chains" if chain_cost * _chain_error_ratio(budget, n_features) ** 2 < sampled_cost else "leverage"


def default_interactions(n_features: int, budget: int) -> np.ndarray:
    """The surrogate's interaction pairs when none are given: all pairs while they number at most a quarter of the
    budget, else none (give the pairs that matter, such as adjacent supervoxels, through ``interactions``)."""
    if n_features * (n_features - 1) // 2 > budget // 4:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(list(itertools.combinations(range(n_features), 2)), dtype=np.int64).reshape(-1, 2)


def _as_pairs(interactions, n_features: int) -> np.ndarray:
    pairs = np.asarray(interactions)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"interactions must be an integer array of shape (P, 2), got shape {pairs.shape}.")
    if pairs.min() < 0 or pairs.max() >= n_features or np.any(pairs[:, 0] == pairs[:, 1]):
        raise ValueError(f"interactions must pair two different features among 0..{n_features - 1}.")
    return np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int64)


def _chain_plan(n_features: int, budget: int) -> tuple[bool, int]:
    """Whether the chains start by enumerating sizes 1 and ``M - 1`` (at budgets up to ``8 M``, where it pays most,
    if two chains still fit beside them), and how many chains the budget holds."""
    if n_features < 3:
        return False, 0
    per_chain = 2 * (n_features - 1)
    if n_features >= 4 and budget <= 8 * n_features:
        with_border = (budget - 2 - 2 * n_features) // (per_chain - 4)
        if with_border >= 2:
            return True, with_border
    return False, max(0, (budget - 2) // per_chain)


class _Limits:
    """The cost and time limits: whether a batch may still run, and what has been spent."""

    def __init__(self, cost, max_cost, max_seconds) -> None:
        self.cost_fn, self.max_cost, self.max_seconds = cost, max_cost, max_seconds
        self.started = time.perf_counter()
        self.spent = 0.0 if cost is not None else None
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
            if self.max_cost is not None and self.spent + batch_cost > self.max_cost and not force:
                return "max_cost"
            self.spent += batch_cost
        self.batches += 1
        return None


class _LimitReached(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def shapley_from_enumeration(coalitions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exact Shapley values from the values of all ``2**M`` coalitions (in any order).

    ``phi_i`` is the mean over sizes ``s`` of the mean value of the coalitions of size ``s + 1`` that contain ``i``
    minus the mean value of those of size ``s`` that do not.
    """
    coalitions = np.asarray(coalitions, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    n, m = coalitions.shape
    if n != 2**m or len(np.unique(np.packbits(coalitions, axis=1), axis=0)) != n:
        raise ValueError(f"Need every one of the 2**{m} coalitions exactly once, got {n} rows.")
    sizes = coalitions.sum(axis=1)
    member = coalitions.astype(np.float64)
    flat = values.reshape(n, -1)
    phi = np.zeros((m, flat.shape[1]))
    for size in range(m + 1):
        rows = sizes == size
        inside = member[rows].T @ flat[rows]
        outside = flat[rows].sum(axis=0) - inside
        if size >= 1:
            phi += inside / math.comb(m - 1, size - 1)
        if size <= m - 1:
            phi -= outside / math.comb(m - 1, size)
    phi /= m
    return phi.reshape((m,) + values.shape[1:])


def _takes_retain(value_fn) -> bool:
    try:
        return "retain" in inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return False


class _Evaluator:
    """Calls the value function in batches within the limits, checks what it returns and keeps every coalition and
    value (looked up by coalition, so that none is evaluated twice)."""

    def __init__(self, value_fn, n_features: int, batch_size: int, progress, limits: _Limits) -> None:
        self.value_fn, self.n_features, self.batch_size, self.progress = value_fn, n_features, batch_size, progress
        self.limits = limits
        self.retains = _takes_retain(value_fn)
        self.coalitions: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.index: dict[bytes, int] = {}
        self._stacked: np.ndarray | None = None
        self.done = 0
        self.total = 0
        self.value_shape: tuple[int, ...] | None = None

    def __call__(self, coalitions: np.ndarray, retain: np.ndarray | None = None, force: bool = False) -> np.ndarray:
        """Values of new coalitions, ``batch_size`` at a time; raises :class:`_LimitReached` before a batch that
        would break a limit (the batches before it are kept), unless ``force``."""
        out = []
        for first in range(0, len(coalitions), self.batch_size):
            batch = coalitions[first : first + self.batch_size]
            reason = self.limits.admit(batch, force)
            if reason is not None:
                raise _LimitReached(reason)
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
        return np.concatenate(out)

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


def _exact(evaluator: _Evaluator) -> ShapleyResult:
    m = evaluator.n_features
    evaluator.total = 2**m
    codes = np.arange(2**m, dtype=np.int64)
    coalitions = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    values = evaluator(coalitions, force=True)  # exact enumeration is all or nothing
    phi = shapley_from_enumeration(coalitions, values).reshape(m, -1)
    evaluator.finish()
    return evaluator.result(phi, np.zeros_like(phi), exact=True, design="exact", reason="exact")


def _chains(
    evaluator: _Evaluator,
    budget: int,
    rng: np.random.Generator,
    tolerance: float | None,
    pairs: np.ndarray,
    border: bool,
    seed: int,
) -> ShapleyResult:
    m = evaluator.n_features
    evaluator.total = budget
    design = ChainDesign(m, border=border)
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    first = np.concatenate([ends, design.border_coalitions()]) if design.border else ends
    evaluator(first, force=True)
    reason = "budget"
    try:
        per_chain = 2 * (m - 1) - (4 if design.border else 0)
        while True:
            walks = min(_WALKS, (budget - evaluator.done) // per_chain)
            if walks < 1:
                break
            started = [design.new_unit(rng) for _ in range(walks)]
            # Step-major: row j * walks + w is step j of walk w, so each walk's steps follow one another.
            steps = np.stack([loop_coalitions(p) for p in started], axis=1).reshape(-1, m)
            walk_of = np.tile(np.arange(walks), len(steps) // walks)
            final = np.arange(len(steps)) >= len(steps) - walks
            new = evaluator.unknown(steps)
            steps, walk_of, final = steps[new], walk_of[new], final[new]
            for start in range(0, len(steps), evaluator.batch_size):
                batch = slice(start, start + evaluator.batch_size)
                # The last row of each walk in the batch is where that walk continues from, unless it ends there.
                last = np.zeros(len(walk_of[batch]), dtype=bool)
                last[len(last) - 1 - np.unique(walk_of[batch][::-1], return_index=True)[1]] = True
                evaluator(steps[batch], retain=last & ~final[batch])
            for u in range(len(design.permutations) - walks, len(design.permutations)):
                design.complete[u] = True
            n_complete = sum(design.complete)
            if tolerance is not None and n_complete >= _TOLERANCE_CHAINS:
                if _converged(*_chain_solution(evaluator, design, pairs, seed, adjust=False)[:2], tolerance):
                    reason = "tolerance"
                    break
    except _LimitReached as stop:
        reason = stop.reason
    values, stderr, adjusted = _chain_solution(evaluator, design, pairs, seed)
    evaluator.finish()
    return evaluator.result(values, stderr, exact=False, design="chains", reason=reason, adjusted=bool(adjusted.any()))


def _chain_solution(evaluator: _Evaluator, design: ChainDesign, pairs: np.ndarray, seed: int, adjust: bool = True):
    m = evaluator.n_features
    ends = evaluator.lookup(np.stack([np.zeros(m, bool), np.ones(m, bool)]))
    incomplete = [loop_coalitions(p) for p, done in zip(design.permutations, design.complete) if not done]
    if incomplete:
        rows = np.concatenate(incomplete)
        rows = rows[[row.tobytes() in evaluator.index for row in np.packbits(rows, axis=1)]]
    else:
        rows = np.zeros((0, m), dtype=bool)
    extra = (rows, evaluator.lookup(rows) if len(rows) else np.zeros((0, ends.shape[1])))
    return chain_estimate(design, evaluator.lookup, ends, extra, pairs, seed, adjust)


class _Stratum:
    """The complementary pairs ``(S, ~S)`` with ``|S| = size <= M / 2``, sampled without replacement.

    For ``size == M / 2`` a pair and its swap are the same pair, so the population is half the coalitions.
    """

    def __init__(self, n_features: int, size: int, rng: np.random.Generator) -> None:
        self.m, self.size, self.rng = n_features, size, rng
        self.middle = 2 * size == n_features
        self.population = math.comb(n_features, size) // (2 if self.middle else 1)
        self.drawn: list[np.ndarray] = []
        self.seen: set[bytes] = set()
        self._listed: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.seen)

    @property
    def per_size(self) -> float:
        """Coalitions of each of the stratum's sizes evaluated per pair (the leverage allocation equalises it)."""
        return 2.0 if self.middle else 1.0

    def draw(self, k: int) -> np.ndarray:
        """``(k, M)`` bool: the first members of ``k`` new pairs."""
        if self.population <= _ENUMERATE_STRATUM:
            if self._listed is None:
                self._listed = self._all_pairs()[self.rng.permutation(self.population)]
            new = self._listed[self.count : self.count + k]
            self.seen.update(row.tobytes() for row in np.packbits(new, axis=1))
        else:
            rows = []
            while len(rows) < k:
                scores = self.rng.random((2 * (k - len(rows)), self.m))
                chosen = np.argsort(scores, axis=1)[:, : self.size]
                candidates = np.zeros(scores.shape, dtype=bool)
                np.put_along_axis(candidates, chosen, True, axis=1)
                for row in candidates:
                    key = self._canonical(row)
                    if key not in self.seen and len(rows) < k:
                        self.seen.add(key)
                        rows.append(row)
            new = np.array(rows, dtype=bool).reshape(-1, self.m)
        self.drawn.append(new)
        return new

    def undraw(self, k: int) -> None:
        """Take back the last draw (of ``k`` pairs), which was never evaluated."""
        last = self.drawn.pop()
        assert len(last) == k
        for row in last:
            self.seen.discard(self._canonical(row))

    def _canonical(self, row: np.ndarray) -> bytes:
        # In the middle stratum S and ~S are one pair: name it by the member that holds feature 0.
        if self.middle and not row[0]:
            row = ~row
        return np.packbits(row).tobytes()

    def _all_pairs(self) -> np.ndarray:
        combos = itertools.combinations(range(self.m), self.size)
        if self.middle:
            combos = (c for c in combos if c[0] == 0)
        rows = np.zeros((self.population, self.m), dtype=bool)
        for i, combo in enumerate(combos):
            rows[i, combo] = True
        return rows


def _allocate(strata: list[_Stratum], pairs: int) -> list[int]:
    """How many new pairs each stratum gets so that every coalition size has about the same number of samples.

    Pairs go one at a time to the unsaturated stratum with the fewest samples per size, so the allocation of a
    larger budget always contains that of a smaller one and sampling can proceed in rounds.
    """
    heap = [(s.count * s.per_size, s.size, i) for i, s in enumerate(strata) if s.count < s.population]
    heapq.heapify(heap)
    extra = [0] * len(strata)
    for _ in range(pairs):
        if not heap:
            break
        _, size, i = heapq.heappop(heap)
        extra[i] += 1
        stratum = strata[i]
        if stratum.count + extra[i] < stratum.population:
            heapq.heappush(heap, ((stratum.count + extra[i]) * stratum.per_size, size, i))
    return extra


def _sampled(
    evaluator: _Evaluator, budget: int, rng: np.random.Generator, tolerance: float | None, seed: int
) -> ShapleyResult:
    m = evaluator.n_features
    evaluator.total = budget
    strata = [_Stratum(m, size, rng) for size in range(1, m // 2 + 1)]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    evaluator(ends, force=True)
    reason = "budget"
    while True:
        room = min(evaluator.batch_size, budget - evaluator.done)
        extra = _allocate(strata, room // 2)
        if not any(extra):
            if not any(s.count < s.population for s in strata):
                reason = "exhausted"
            break
        draws = [(stratum, stratum.draw(k)) for stratum, k in zip(strata, extra) if k]
        try:
            # The first batch always runs, so that there is an estimate to return.
            evaluator(
                np.concatenate([np.concatenate([first, ~first]) for _, first in draws]), force=evaluator.done == 2
            )
        except _LimitReached as stop:
            for stratum, first in draws:
                stratum.undraw(len(first))
            reason = stop.reason
            break
        if tolerance is not None and evaluator.done >= min(budget, 4 * m):
            if _converged(*_solve(evaluator, strata)[:2], tolerance):
                reason = "tolerance"
                break
    values, stderr, adjusted = _solve(evaluator, strata, adjust=True, seed=seed)
    evaluator.finish()
    return evaluator.result(
        values, stderr, exact=False, design="leverage", reason=reason, adjusted=bool(adjusted.any())
    )


def _converged(phi: np.ndarray, stderr: np.ndarray, tolerance: float) -> bool:
    spread = phi.max(axis=0) - phi.min(axis=0)
    worst = stderr.max(axis=0)
    if not np.all(np.isfinite(worst)):
        return False
    return bool(np.all(worst <= tolerance * spread))


def _solve(
    evaluator: _Evaluator, strata: list[_Stratum], adjust: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leverage SHAP's estimate and standard errors (:class:`_KernelRegression`), and with ``adjust`` the
    regression-adjusted estimate (:func:`_tree_adjusted`) for each target where its error is expected to be smaller.
    The third array says, per target, whether the adjusted estimate was taken."""
    m = evaluator.n_features
    ends = evaluator.lookup(np.stack([np.zeros(m, bool), np.ones(m, bool)]))
    regression = _KernelRegression(strata, m)
    if regression.rows is None:  # a budget of 2 or 3: nothing beyond the ends, whose difference is shared out equally
        t = ends.shape[1]
        return np.repeat((ends[1] - ends[0])[None] / m, m, axis=0), np.full((m, t), np.nan), np.zeros(t, bool)
    values = evaluator.lookup(regression.rows)
    phi, stderr = regression.fit(values, ends, errors=True)
    taken = np.zeros(ends.shape[1], bool)
    if adjust and regression.adjustable:
        phi, stderr, taken = _tree_adjusted(regression, values, ends, phi, stderr, seed)
    return phi, stderr, taken


_ADJUST_FOLDS = 5
"""Groups of sampled pairs left out in turn to estimate the regression-adjusted estimate's variance."""

_ADJUST_CELLS = 400_000
"""The adjustment is tried only while (coalitions evaluated) x M is at most this: boosting the trees then takes at
most about a second per target and fold on one core."""

_TREE_DEPTHS = (3, 4)
"""Depths of the boosted trees tried; the jackknife's variance picks among them and the plain estimate."""


class _KernelRegression:
    """Projected, Horvitz-Thompson weighted least squares over the sampled pairs, for any values on its rows.

    With ``phi = delta / M + P beta`` (``P`` the projection orthogonal to the all-ones vector), efficiency holds
    for every ``beta``, and ``beta`` minimises ``sum_S w_S (v(S) - v0 - |S| delta / M - a_S . beta)**2`` with
    ``a_S = P z_S``. The normal equations are ``M x M``; with no more rows than features the minimum-norm
    solution comes from the ``rows x rows`` dual instead, and no residual is left to estimate errors from. The
    estimate is linear in the values, so one factorisation serves every column of values given.
    """

    def __init__(self, strata: list[_Stratum], n_features: int) -> None:
        m = self.m = n_features
        # Every sampled pair contributes its two coalitions; within a stratum the first members of its pairs come
        # first, then their complements, in the same order.
        blocks, weights, pair = [], [], []
        self.strata = [stratum for stratum in strata if stratum.count]
        for stratum in self.strata:
            first = np.concatenate(stratum.drawn)
            sampled_per_size = stratum.count * stratum.per_size
            blocks.append(np.concatenate([first, ~first]))
            # Shapley kernel weight of one coalition of this size, divided by its inclusion probability.
            for size in (stratum.size, m - stratum.size):
                weights.append(np.full(stratum.count, (m - 1) / (size * (m - size) * sampled_per_size)))
            offset = sum(len(p) // 2 for p in pair)
            pair.append(np.tile(np.arange(offset, offset + stratum.count), 2))
        if not blocks:
            self.rows = None
            self.adjustable = False
            return
        self.rows = np.concatenate(blocks)
        self.pair = np.concatenate(pair)
        self.sizes = self.rows.sum(axis=1, keepdims=True).astype(np.float64)
        self.root = np.sqrt(np.concatenate(weights))[:, None]
        scaled = self.rows.astype(np.float64)
        scaled -= self.sizes / m
        scaled *= self.root  # rows sqrt(w_S) a_S
        self.scaled = scaled
        self.dual = len(scaled) <= m
        if self.dual:
            self.solve = None
        else:
            hessian = scaled.T @ scaled
            # The all-ones vector spans the Hessian's null space (every a_S sums to 0); adding it makes the system
            # definite without moving the solution, which stays orthogonal to it.
            hessian += np.trace(hessian) / m**2
            self.solve = _symmetric_solver(hessian)
        n_pairs = int(self.pair.max()) + 1
        self.adjustable = not self.dual and n_pairs >= 2 * _ADJUST_FOLDS and (len(self.rows) + 2) * m <= _ADJUST_CELLS

    def fit(self, values: np.ndarray, ends: np.ndarray, errors: bool = False):
        """``phi`` ``(M, C)`` for values ``(rows, C)`` with end values ``(2, C)``; with ``errors`` also the standard
        errors (NaN in the dual, or where a sampled stratum holds a single pair)."""
        m = self.m
        base, delta = ends[0], ends[1] - ends[0]
        target = self.root * (values - base - self.sizes * delta / m)
        if self.dual:
            gram = self.scaled @ self.scaled.T
            beta = self.scaled.T @ np.linalg.lstsq(gram, target, rcond=None)[0]
            beta -= beta.mean(axis=0)
            phi = delta / m + beta
            return (phi, np.full(phi.shape, np.nan)) if errors else phi
        beta = self.solve(self.scaled.T @ target)
        beta -= beta.mean(axis=0)
        phi = delta / m + beta
        if not errors:
            return phi
        return phi, self._stderr(target, beta, phi)

    def _stderr(self, target: np.ndarray, beta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        # Linearisation: beta_hat - beta ~ H^-1 sum_S w_S a_S r_S, summed per pair, pairs independent within a
        # stratum; r_S / (1 - h_S) is the residual S would have had if left out (HC3).
        gain = self.solve(self.scaled.T).T  # rows sqrt(w_S) a_S H^-1
        leverage = np.einsum("ij,ij->i", gain, self.scaled)
        residual = (target - self.scaled @ beta) / np.clip(1.0 - leverage, 1e-3, None)[:, None]
        variance = np.zeros_like(phi)
        start = 0
        for stratum in self.strata:
            rows = slice(start, start + 2 * stratum.count)
            start += 2 * stratum.count
            if stratum.count == stratum.population:
                continue
            if stratum.count < 2:
                return np.full(phi.shape, np.nan)
            remaining = 1.0 - stratum.count / stratum.population
            for t in range(phi.shape[1]):
                contribution = gain[rows] * residual[rows, t : t + 1]
                per_pair = contribution[: stratum.count] + contribution[stratum.count :]
                variance[:, t] += remaining * stratum.count * per_pair.var(axis=0, ddof=1)
        return np.sqrt(variance)


def _tree_adjusted(regression: _KernelRegression, values, ends, phi, stderr, seed: int):
    """Regression adjustment by boosted trees, taken per target where it is expected to err less.

    Trees fitted to every evaluated coalition (:func:`segshap.surrogate.fit_boosted_trees`) give their exact
    Shapley values, and the kernel regression of the residual ``v - trees`` corrects them; the estimate keeps
    efficiency exactly. Its variance is estimated by the grouped jackknife: the sampled pairs are split into
    :data:`_ADJUST_FOLDS` groups, and the adjusted estimate is recomputed with each group left out of the trees'
    fit (the jackknife overstates variance on average, Efron-Stein, so the choice leans to Leverage SHAP). This is
    done for each depth of :data:`_TREE_DEPTHS`, and each target keeps the estimate (plain, or adjusted at one
    depth) with the smallest summed variance, with its standard errors.
    """
    from .surrogate import fit_boosted_trees

    m = regression.m
    corners = np.stack([np.zeros(m, bool), np.ones(m, bool)])
    coalitions = np.concatenate([corners, regression.rows])
    known = np.concatenate([ends, values])
    n_pairs = int(regression.pair.max()) + 1
    group = np.random.default_rng([seed, 2]).permutation(n_pairs) % _ADJUST_FOLDS
    row_group = np.concatenate([[-1, -1], group[regression.pair]])  # the ends are in every fit
    t = ends.shape[1]
    best_variance = np.where(np.isfinite(stderr), stderr**2, np.inf).sum(axis=0)  # inf where the plain errors are NaN
    taken = np.zeros(t, bool)
    for depth in _TREE_DEPTHS:
        surrogates = [fit_boosted_trees(coalitions, known, seed, depth)]
        surrogates += [
            fit_boosted_trees(coalitions[row_group != k], known[row_group != k], seed, depth)
            for k in range(_ADJUST_FOLDS)
        ]
        # One solve for every surrogate's residual (the regression is linear in the values).
        residual_rows = np.concatenate([values - g(regression.rows) for g in surrogates], axis=1)
        residual_ends = np.concatenate([ends - g(corners) for g in surrogates], axis=1)
        corrections = regression.fit(residual_rows, residual_ends).reshape(m, len(surrogates), t)
        estimates = np.stack([g.shapley_values() for g in surrogates], axis=1) + corrections
        adjusted, left_out = estimates[:, 0], estimates[:, 1:]
        spread = left_out - left_out.mean(axis=1, keepdims=True)
        variance = (_ADJUST_FOLDS - 1) / _ADJUST_FOLDS * (spread**2).sum(axis=1)
        better = variance.sum(axis=0) < best_variance
        phi = np.where(better, adjusted, phi)
        stderr = np.where(better, np.sqrt(variance), stderr)
        best_variance = np.where(better, variance.sum(axis=0), best_variance)
        taken |= better
    return phi, stderr, taken


def _symmetric_solver(matrix: np.ndarray):
    """``solve(b)`` for a symmetric positive (semi)definite ``matrix``: Cholesky, or a pseudo-inverse when singular."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    try:
        factor = cho_factor(matrix, lower=True, check_finite=False)
        return lambda b: cho_solve(factor, b, check_finite=False)
    except LinAlgError:
        inverse = np.linalg.pinv(matrix, hermitian=True)
        return lambda b: inverse @ b
