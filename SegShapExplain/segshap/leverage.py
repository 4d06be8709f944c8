"""Leverage SHAP's design (Musco & Witter, 2025): complementary pairs sampled per coalition size without
replacement, the projected Horvitz-Thompson kernel regression with sandwich standard errors, and its adjustment by
boosted trees. See :mod:`segshap.estimator` for the method and when it is chosen.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import numpy as np

from .adjustment import ADJUST_CELLS, tree_adjusted
from .evaluation import Evaluator, LimitReached, ShapleyResult, converged, t_scaled
from .msr import StratifiedPairs, msr_adjusted

__all__ = ["leverage_shap"]

_ENUMERATE_STRATUM = 200_000
"""A size with at most this many pairs is sampled from its full list (a random permutation), not by rejection."""


class _Stratum:
    """The complementary pairs ``(S, ~S)`` with ``|S| = size <= M / 2``, sampled without replacement.

    For ``size == M / 2`` a pair and its swap are the same pair, so the population is half the coalitions.
    """

    def __init__(self, n_players: int, size: int, rng: np.random.Generator) -> None:
        self.m, self.size, self.rng = n_players, size, rng
        self.middle = 2 * size == n_players
        self.population = math.comb(n_players, size) // (2 if self.middle else 1)
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


def leverage_shap(
    evaluator: Evaluator,
    budget: int,
    rng: np.random.Generator,
    tolerance: float | None,
    seed: int,
    interactions: Callable[[], np.ndarray],
) -> ShapleyResult:
    """Sample pairs in rounds, each size to the same number per size, until the budget, a limit or the tolerance
    stops it; then the (adjusted) regression estimate. ``interactions()`` gives the feature pairs the second-order
    surrogate of the MSR adjustment (:mod:`segshap.msr`) has a term for; it is called only when that surrogate is
    fitted."""
    m = evaluator.n_players
    evaluator.total = budget
    strata = [_Stratum(m, size, rng) for size in range(1, m // 2 + 1)]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    ends = ends[evaluator.unknown(ends)]  # a coarse level (segshap.coarse) may have evaluated them
    if len(ends):
        evaluator(ends, force=True)
    known = evaluator.done
    evaluator.use_estimate(lambda adjust: _solve(evaluator, strata, adjust, seed, interactions))
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
                np.concatenate([np.concatenate([first, ~first]) for _, first in draws]),
                force=evaluator.done == known,
            )
        except LimitReached as stop:
            for stratum, first in draws:
                stratum.undraw(len(first))
            reason = stop.reason
            break
        if evaluator.done - known >= min(budget, m):
            evaluator.milestone()  # as many coalitions as unknowns: the regression's first standard errors
        if tolerance is not None and evaluator.done >= min(budget, 4 * m):
            if converged(*_solve(evaluator, strata)[:2], tolerance):
                reason = "tolerance"
                break
    values, stderr, adjusted = evaluator.final_estimate(lambda: _solve(evaluator, strata, True, seed, interactions))
    evaluator.finish()
    return evaluator.result(
        values, stderr, exact=False, design="leverage", reason=reason, adjusted=bool(adjusted.any())
    )


def _solve(
    evaluator: Evaluator,
    strata: list[_Stratum],
    adjust: bool = False,
    seed: int = 0,
    interactions: Callable[[], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leverage SHAP's estimate and standard errors (:class:`_KernelRegression`), and with ``adjust`` the
    regression-adjusted estimates, by boosted trees (:func:`_tree_adjusted`) and by a second-order surrogate with
    the MSR residual (:func:`_msr_adjusted`), each target keeping the one with the smallest summed variance. The
    third array says, per target, whether an adjusted estimate was taken."""
    m = evaluator.n_players
    ends = evaluator.lookup(np.stack([np.zeros(m, bool), np.ones(m, bool)]))
    regression = _KernelRegression(strata, m)
    if regression.rows is None:  # a budget of 2 or 3: nothing beyond the ends, whose difference is shared out equally
        t = ends.shape[1]
        return np.repeat((ends[1] - ends[0])[None] / m, m, axis=0), np.full((m, t), np.nan), np.zeros(t, bool)
    values = evaluator.lookup(regression.rows)
    phi, stderr = regression.fit(values, ends, errors=True)
    taken = np.zeros(ends.shape[1], bool)
    if adjust and regression.adjustable:
        phi, stderr, taken, variance = _tree_adjusted(regression, values, ends, phi, stderr, seed)
        phi, stderr, taken = _msr_adjusted(regression, values, ends, (phi, stderr, taken), variance, interactions, seed)
    return phi, stderr, taken


def _msr_adjusted(regression: _KernelRegression, values, ends, current, variance, interactions, seed: int):
    """The cross-fitted regression-adjusted MSR estimate (:func:`segshap.msr.msr_adjusted`) where its summed
    variance is below ``variance``, that of ``current`` ``(values, stderr, taken)``."""
    phi, stderr, taken = current
    firsts, first_values, second_values = [], [], []
    start = 0
    for stratum in regression.strata:
        n = stratum.count
        firsts.append(np.concatenate(stratum.drawn))
        first_values.append(values[start : start + n])
        second_values.append(values[start + n : start + 2 * n])
        start += 2 * n
    pairs = StratifiedPairs(firsts, [s.size for s in regression.strata], [s.population for s in regression.strata])
    terms = np.zeros((0, 2), dtype=np.int64) if interactions is None else interactions()
    adjusted = msr_adjusted(pairs, first_values, second_values, ends, terms, seed)
    if adjusted is None:
        return current
    better = (adjusted[1] ** 2).sum(axis=0) < variance
    return np.where(better, adjusted[0], phi), np.where(better, adjusted[1], stderr), taken | better


_ADJUST_FOLDS = 5
"""Groups of sampled pairs left out in turn to estimate the regression-adjusted estimate's variance."""

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

    def __init__(self, strata: list[_Stratum], n_players: int) -> None:
        m = self.m = n_players
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
        self.adjustable = not self.dual and n_pairs >= 2 * _ADJUST_FOLDS and (len(self.rows) + 2) * m <= ADJUST_CELLS

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
        sampled = [stratum for stratum in self.strata if stratum.count < stratum.population]
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
        return t_scaled(np.sqrt(variance), sum(stratum.count for stratum in sampled) - len(sampled))


def _tree_adjusted(regression: _KernelRegression, values, ends, phi, stderr, seed: int):
    """The boosted-tree adjustment (:func:`segshap.adjustment.tree_adjusted`) of Leverage SHAP: the trees' exact
    Shapley values plus the kernel regression of the residual ``v - trees``, which keeps efficiency exactly, with
    groups of sampled pairs left out of the trees' fit and each depth of :data:`_TREE_DEPTHS` tried."""
    m = regression.m
    corners = np.stack([np.zeros(m, bool), np.ones(m, bool)])
    coalitions = np.concatenate([corners, regression.rows])
    known = np.concatenate([ends, values])

    def training(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.concatenate([[True, True], keep[regression.pair]])  # the ends are in every fit
        return coalitions[rows], known[rows]

    def estimate(surrogates) -> np.ndarray:
        # One solve for every surrogate's residual (the regression is linear in the values).
        residual_rows = np.concatenate([values - g(regression.rows) for g in surrogates], axis=1)
        residual_ends = np.concatenate([ends - g(corners) for g in surrogates], axis=1)
        corrections = regression.fit(residual_rows, residual_ends).reshape(m, len(surrogates), -1)
        return np.moveaxis(np.stack([g.shapley_values() for g in surrogates], axis=1) + corrections, 1, 0)

    n_pairs = int(regression.pair.max()) + 1
    return tree_adjusted(
        estimate, training, n_pairs, phi, stderr, groups=_ADJUST_FOLDS, depths=_TREE_DEPTHS, seed=(seed, 2)
    )


def _symmetric_solver(matrix: np.ndarray):
    """``solve(b)`` for a symmetric positive (semi)definite ``matrix``: Cholesky, or a pseudo-inverse when singular."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    try:
        factor = cho_factor(matrix, lower=True, check_finite=False)
        return lambda b: cho_solve(factor, b, check_finite=False)
    except LinAlgError:
        inverse = np.linalg.pinv(matrix, hermitian=True)
        return lambda b: inverse @ b
