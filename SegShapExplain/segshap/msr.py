"""Regression-adjusted Monte Carlo over Leverage SHAP's sampled pairs (Witter, Liu & Musco, NeurIPS 2025).

The Shapley value is a sum of per-size terms (:meth:`segshap.surrogate.Surrogate.size_term`)::

    phi_i(v) = (v(N) - v(empty)) / M + sum_{s=1}^{M-1} T_s,i(v),   T_s,i(v) = E_{|S|=s}[v(S) w_i(S)],
    w_i(S) = 1[i in S] / s - 1[i not in S] / (M - s).

A complementary pair ``(S, ~S)`` with ``|S| = s`` drawn uniformly is an unbiased estimate of ``T_s + T_{M-s}``:
``c_i = (v(S) - v(~S)) w_i(S)`` (half that in the middle stratum ``s = M / 2``, which holds one size). This is the
maximum-sample-reuse (MSR) estimator, stratified by size as Leverage SHAP samples; it keeps efficiency exactly,
as every ``c`` sums to zero over the features.

Applied to the residual ``r = v - g`` of a second-order surrogate ``g`` (:func:`segshap.surrogate.fit_surrogate`,
main effects and feature pairs, ridge) whose size terms are exact, its variance is that of the residual, small
where the surrogate fits. A game with thresholds or high-order interactions, where the kernel regression's
residual stays large, is where this pays most.

Cross-fitting keeps it unbiased: the sampled pairs are split into folds, and a pair's residual comes from the
surrogate fitted without its fold (and with the ends and the sizes enumerated whole). Sampling within a size is
without replacement, so given the other folds a pair of fold ``k`` is uniform among the pairs *not* in them: its
estimate of the size's mean adds the other folds' residual terms, known exactly, to its own scaled to the
remaining population, which is unbiased for the size's whole population. Standard errors come from the spread of
the pairs' estimates within each size, with the finite-population correction.
"""

from __future__ import annotations

import numpy as np

from .evaluation import t_scaled
from .surrogate import fit_surrogate

__all__ = ["StratifiedPairs", "msr_adjusted", "MSR_FOLDS"]

MSR_FOLDS = 5
"""Folds of sampled pairs; a pair's residual comes from the surrogate fitted on the other four fifths."""


class StratifiedPairs:
    """The complementary pairs a stratified design evaluated, one stratum per size ``s <= M / 2``.

    Parameters
    ----------
    firsts : list of np.ndarray
        Per stratum, ``(n_s, M)`` bool: the members ``S`` (size ``s``) of its sampled pairs ``(S, ~S)``.
    sizes : list of int
        Per stratum, ``s``.
    populations : list of int
        Per stratum, how many distinct pairs it holds (half the coalitions of size ``M / 2`` in the middle one).
    """

    def __init__(self, firsts: list[np.ndarray], sizes: list[int], populations: list[int]) -> None:
        self.firsts, self.sizes, self.populations = firsts, list(sizes), list(populations)

    @property
    def n_players(self) -> int:
        return self.firsts[0].shape[1]

    def weights(self, stratum: int) -> np.ndarray:
        """``(n_s, M)``: ``w_i(S)`` of each pair's first member, halved in the middle stratum."""
        m, size = self.n_players, self.sizes[stratum]
        w = np.where(self.firsts[stratum], 1.0 / size, -1.0 / (m - size))
        return w / 2 if 2 * size == m else w


def msr_adjusted(
    pairs_sampled: StratifiedPairs,
    first_values: list[np.ndarray],
    second_values: list[np.ndarray],
    ends: np.ndarray,
    interactions: np.ndarray,
    seed: int,
    folds: int = MSR_FOLDS,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cross-fitted regression-adjusted MSR estimate and its standard errors.

    Parameters
    ----------
    pairs_sampled : StratifiedPairs
    first_values, second_values : list of np.ndarray
        Per stratum, ``(n_s, T)``: the values of the pairs' members ``S`` and ``~S``.
    ends : np.ndarray
        ``(2, T)``: ``v(empty)`` and ``v(N)``.
    interactions : np.ndarray
        ``(P, 2)`` feature pairs the surrogate gives an interaction term.
    seed : int
        Seeds the split into folds.
    folds : int

    Returns
    -------
    (values, stderr) or None
        ``(M, T)`` each; ``None`` when fewer than two pairs per fold were sampled (nothing to cross-fit).
    """
    m = pairs_sampled.n_players
    populations = pairs_sampled.populations
    counts = [len(first) for first in pairs_sampled.firsts]
    sampled = [k for k, (n, population) in enumerate(zip(counts, populations)) if n < population]
    n_sampled = sum(counts[k] for k in sampled)
    if n_sampled < 2 * folds or any(counts[k] < 2 for k in sampled):
        return None
    fold_of = [np.full(n, -1) for n in counts]
    order = np.random.default_rng([seed, 4]).permutation(n_sampled) % folds
    start = 0
    for k in sampled:
        fold_of[k] = order[start : start + counts[k]]
        start += counts[k]

    corners = np.stack([np.zeros(m, bool), np.ones(m, bool)])
    surrogates = []
    for fold in range(folds):
        rows = [corners] + [f[fold_of[k] != fold] for k, f in enumerate(pairs_sampled.firsts)]
        rows += [~f[fold_of[k] != fold] for k, f in enumerate(pairs_sampled.firsts)]
        values = [ends] + [v[fold_of[k] != fold] for k, v in enumerate(first_values)]
        values += [v[fold_of[k] != fold] for k, v in enumerate(second_values)]
        surrogates.append(fit_surrogate(np.concatenate(rows), np.concatenate(values), interactions))

    t = ends.shape[1]
    phi = np.repeat(((ends[1] - ends[0]) / m)[None], m, axis=0)
    variance = np.zeros((m, t))
    for k, first in enumerate(pairs_sampled.firsts):
        weights = pairs_sampled.weights(k)[:, :, None]
        population = populations[k]
        if k not in sampled:  # enumerated whole: the size's exact term, whatever the surrogate
            phi += (weights * (first_values[k] - second_values[k])[:, None, :]).sum(axis=0) / population
            continue
        size = pairs_sampled.sizes[k]
        sizes = (size,) if 2 * size == m else (size, m - size)
        estimates = np.zeros((counts[k], m, t))
        for fold, surrogate in enumerate(surrogates):
            mine = fold_of[k] == fold
            if not mine.any():
                continue
            residual = (first_values[k] - surrogate(first)) - (second_values[k] - surrogate(~first))
            terms = weights * residual[:, None, :]
            others = ~mine
            remaining = population - int(others.sum())
            exact_part = sum(surrogate.size_term(s) for s in sizes)
            estimates[mine] = exact_part + (terms[others].sum(axis=0) + remaining * terms[mine]) / population
        phi += estimates.mean(axis=0)
        variance += (1.0 - counts[k] / population) * estimates.var(axis=0, ddof=1) / counts[k]
    return phi, t_scaled(np.sqrt(variance), n_sampled - len(sampled))
