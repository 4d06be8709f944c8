"""KernelSHAP: Shapley values of a set function from a budget of evaluations.

:func:`kernel_shap` estimates the Shapley values of a value function ``v`` over ``M`` features (players). A
coalition is a bool vector over the features; the Shapley values are the solution of the Shapley-kernel weighted
least-squares problem (Lundberg & Lee, 2017) under the efficiency constraint ``sum(phi) = v(all) - v(empty)``.

* When ``2**M`` coalitions fit the budget they are all evaluated and the values are exact.
* Otherwise coalitions are sampled as in Leverage SHAP (Musco & Witter, 2025): every coalition size gets the same
  share of the budget (the leverage scores of the kernel regression are equal across sizes), sizes are enumerated
  whole once their share covers them, coalitions are drawn without replacement and in complementary pairs
  ``(S, ~S)``. Each evaluated coalition enters the regression with its kernel weight divided by its inclusion
  probability (Horvitz-Thompson), and the regression is solved in the subspace where efficiency holds exactly.
* Standard errors come from the estimator's linearisation around its solution (a sandwich variance), with the
  sampled pairs as independent units inside each size (stratum) and the finite-population correction of sampling
  without replacement, so sizes enumerated whole contribute no error. Residuals are inflated by their leverage
  (HC3), which makes this the jackknife over sampled pairs in its closed form: it covers the true error about as
  often as it claims already at budgets of a few times ``M``, where the plain sandwich is too small.

No coalition is ever evaluated twice.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ShapleyResult", "kernel_shap", "shapley_from_enumeration"]

_ENUMERATE_STRATUM = 200_000
"""A size with at most this many pairs is sampled from its full list (a random permutation), not by rejection."""


@dataclass(frozen=True)
class ShapleyResult:
    """Shapley values estimated by :func:`kernel_shap`.

    Attributes
    ----------
    values : np.ndarray
        ``(M,)``, or ``(M, T)`` when the value function returns ``T`` values per coalition.
    stderr : np.ndarray
        Standard errors, shaped like ``values``: 0 when exact, NaN where the budget was too small to estimate them
        (a sampled size with a single pair).
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
    """

    values: np.ndarray
    stderr: np.ndarray
    base_value: float | np.ndarray
    full_value: float | np.ndarray
    coalitions: np.ndarray
    coalition_values: np.ndarray
    n_evaluations: int
    exact: bool

    @property
    def efficiency_error(self) -> float:
        """Largest ``|sum(values) - (full_value - base_value)|`` over targets."""
        gap = np.sum(self.values, axis=0) - (np.asarray(self.full_value) - np.asarray(self.base_value))
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
) -> ShapleyResult:
    """Shapley values of ``value_fn`` from at most ``budget`` evaluations.

    Parameters
    ----------
    value_fn : callable
        Maps an ``(n, M)`` bool array of coalitions (True = feature present) to ``(n,)`` or ``(n, T)`` values. It
        is called with at most ``batch_size`` coalitions at a time and never with a coalition twice.
    n_features : int
        ``M``, the number of features.
    budget : int
        Most coalitions to evaluate (at least 2: the empty and the full coalition). With ``budget >= 2**M`` all
        coalitions are evaluated and the values are exact.
    seed : int
        Seed of the coalition sampler.
    tolerance : float, optional
        Stop early once every target's ``max(stderr) / (max(values) - min(values))`` is below this (0.01-0.02 is
        usual), checked after every batch from ``4 M`` evaluations on (before, the standard errors rest on too few
        residual degrees of freedom to be trusted). ``None`` spends the whole budget.
    batch_size : int
        Coalitions per call of ``value_fn`` (at least 2).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch; ``total`` is the budget (or ``2**M``) and the last
        call has ``done == total`` also when the run stops early.

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
    n_features, budget, batch_size = int(n_features), int(budget), int(batch_size)
    evaluator = _Evaluator(value_fn, n_features, batch_size, progress)
    if n_features < 63 and 2**n_features <= budget:
        return _exact(evaluator)
    return _sampled(evaluator, budget, np.random.default_rng(seed), tolerance)


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


class _Evaluator:
    """Calls the value function in batches, checks what it returns and keeps every coalition and value."""

    def __init__(self, value_fn, n_features: int, batch_size: int, progress) -> None:
        self.value_fn, self.n_features, self.batch_size, self.progress = value_fn, n_features, batch_size, progress
        self.coalitions: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.done = 0
        self.total = 0
        self.value_shape: tuple[int, ...] | None = None

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        out = []
        for first in range(0, len(coalitions), self.batch_size):
            batch = coalitions[first : first + self.batch_size]
            values = np.asarray(self.value_fn(batch.copy()), dtype=np.float64)
            shape = values.shape[1:]
            if values.ndim not in (1, 2) or len(values) != len(batch) or (self.value_shape not in (None, shape)):
                raise ValueError(
                    f"value_fn must return shape ({len(batch)},) or ({len(batch)}, T) for {len(batch)} coalitions, "
                    f"the same T every call; got {values.shape}."
                )
            if not np.all(np.isfinite(values)):
                raise ValueError("value_fn returned NaN or infinite values; check the model and the value function.")
            self.value_shape = shape
            self.coalitions.append(batch)
            self.values.append(values)
            out.append(values)
            self.done += len(batch)
            if self.progress is not None:
                self.progress(self.done, self.total)
        return np.concatenate(out)

    def finish(self) -> None:
        if self.progress is not None and self.done < self.total:
            self.progress(self.done, self.done)

    def result(self, values: np.ndarray, stderr: np.ndarray, exact: bool) -> ShapleyResult:
        coalitions = np.concatenate(self.coalitions)
        coalition_values = np.concatenate(self.values)
        empty = np.flatnonzero(~coalitions.any(axis=1))[0]
        full = np.flatnonzero(coalitions.all(axis=1))[0]
        base, whole = coalition_values[empty], coalition_values[full]
        if not self.value_shape:
            values, stderr, base, whole = values[:, 0], stderr[:, 0], float(base), float(whole)
        return ShapleyResult(values, stderr, base, whole, coalitions, coalition_values, len(coalitions), exact)


def _exact(evaluator: _Evaluator) -> ShapleyResult:
    m = evaluator.n_features
    evaluator.total = 2**m
    codes = np.arange(2**m, dtype=np.int64)
    coalitions = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    values = evaluator(coalitions)
    phi = shapley_from_enumeration(coalitions, values).reshape(m, -1)
    evaluator.finish()
    return evaluator.result(phi, np.zeros_like(phi), exact=True)


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


def _sampled(evaluator: _Evaluator, budget: int, rng: np.random.Generator, tolerance: float | None) -> ShapleyResult:
    m = evaluator.n_features
    evaluator.total = budget
    strata = [_Stratum(m, size, rng) for size in range(1, m // 2 + 1)]
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    pending = [ends]
    spent = 2
    solution = None
    while True:
        # A round fills one batch (the first also carries the empty and the full coalition).
        room = min(evaluator.batch_size, budget) - sum(len(p) for p in pending)
        extra = _allocate(strata, min(room, budget - spent) // 2)
        for stratum, k in zip(strata, extra):
            if k:
                first = stratum.draw(k)
                pending.append(np.concatenate([first, ~first]))
        batch = np.concatenate(pending)
        pending = []
        if len(batch) == 0:
            break
        evaluator(batch)
        spent = evaluator.done
        if tolerance is not None and spent >= min(budget, 4 * m):
            solution = _solve(evaluator, strata)
            if _converged(*solution, tolerance):
                break
        if budget - spent < 2 or not any(s.count < s.population for s in strata):
            break
    if solution is None:
        solution = _solve(evaluator, strata)
    evaluator.finish()
    return evaluator.result(*solution, exact=False)


def _converged(phi: np.ndarray, stderr: np.ndarray, tolerance: float) -> bool:
    spread = phi.max(axis=0) - phi.min(axis=0)
    worst = stderr.max(axis=0)
    if not np.all(np.isfinite(worst)):
        return False
    return bool(np.all(worst <= tolerance * spread))


def _solve(evaluator: _Evaluator, strata: list[_Stratum]) -> tuple[np.ndarray, np.ndarray]:
    """Projected, Horvitz-Thompson weighted least squares and its linearised standard errors.

    With ``phi = delta / M + P beta`` (``P`` the projection orthogonal to the all-ones vector), efficiency holds
    for every ``beta``, and ``beta`` minimises ``sum_S w_S (v(S) - v0 - |S| delta / M - a_S . beta)**2`` with
    ``a_S = P z_S``.
    """
    m = evaluator.n_features
    coalitions = np.concatenate(evaluator.coalitions)
    values = np.concatenate(evaluator.values).reshape(len(coalitions), -1)
    base = values[~coalitions.any(axis=1)][0]
    delta = values[coalitions.all(axis=1)][0] - base

    # Rows of the regression: every sampled pair contributes its two coalitions, in stratum order.
    rows, weights, pair_of, stratum_of = [], [], [], []
    pair = 0
    for index, stratum in enumerate(strata):
        if not stratum.count:
            continue
        first = np.concatenate(stratum.drawn)
        sampled_per_size = stratum.count * stratum.per_size
        for size in {stratum.size, m - stratum.size}:
            # Shapley kernel weight of one coalition of this size, divided by its inclusion probability.
            weight = (m - 1) / (size * (m - size) * sampled_per_size)
            members = first if size == stratum.size else ~first
            if stratum.middle:
                members = np.concatenate([first, ~first])
            rows.append(members)
            weights.append(np.full(len(members), weight))
            ids = np.arange(pair, pair + stratum.count)
            pair_of.append(np.concatenate([ids, ids]) if stratum.middle else ids)
            stratum_of.append(np.full(len(members), index))
        pair += stratum.count
    design = np.concatenate(rows)
    weight = np.concatenate(weights)
    pair_of = np.concatenate(pair_of)
    stratum_of = np.concatenate(stratum_of)

    lookup = {row.tobytes(): i for i, row in enumerate(np.packbits(coalitions, axis=1))}
    row_values = values[[lookup[row.tobytes()] for row in np.packbits(design, axis=1)]]
    z = design.astype(np.float64)
    sizes = z.sum(axis=1, keepdims=True)
    a = z - sizes / m
    y = row_values - base - sizes * delta / m

    root = np.sqrt(weight)[:, None]
    beta, *_ = np.linalg.lstsq(root * a, root * y, rcond=None)
    beta -= beta.mean(axis=0)  # P beta: the minimum-norm solution already is, up to rounding
    phi = delta / m + beta

    # Linearisation: beta_hat - beta ~ H^+ sum_S w_S a_S r_S, summed per pair, pairs independent within a stratum;
    # r_S / (1 - h_S) is the residual S would have had if left out (HC3).
    residual = y - a @ beta
    hessian = a.T @ (weight[:, None] * a)
    inverse = np.linalg.pinv(hessian, hermitian=True)  # its null space is the all-ones vector, as P's
    influence_rows = (weight[:, None] * a) @ inverse  # (rows, M): a row's share of beta per unit residual
    leverage = np.einsum("ij,ij->i", influence_rows, a)
    residual = residual / np.clip(1.0 - leverage, 1e-3, None)[:, None]
    variance = np.zeros_like(phi)
    for index, stratum in enumerate(strata):
        if not stratum.count or stratum.count == stratum.population:
            continue
        if stratum.count < 2:
            variance[:] = np.nan
            break
        in_stratum = stratum_of == index
        local_pair = pair_of[in_stratum] - pair_of[in_stratum].min()
        for t in range(phi.shape[1]):
            contribution = influence_rows[in_stratum] * residual[in_stratum, t : t + 1]
            per_pair = np.zeros((stratum.count, m))
            np.add.at(per_pair, local_pair, contribution)
            remaining = 1.0 - stratum.count / stratum.population
            variance[:, t] += remaining * stratum.count * per_pair.var(axis=0, ddof=1)
    return phi, np.sqrt(variance)
