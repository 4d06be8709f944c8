"""Surrogates of a coalition game whose Shapley values are known exactly.

Two kinds: a second-order polynomial fitted by ridge regression (:func:`fit_surrogate`), and gradient-boosted
regression trees over the coalition's indicator vector (:func:`fit_boosted_trees`), which capture the high-order
interactions that a second-order model and the paired kernel regression both miss.

The second-order surrogate ``g(S) = c + sum_{i in S} beta_i + sum_{(i, j) in pairs, i, j in S} beta_ij`` is fitted
to evaluated coalitions by ridge regression, with every coalition size weighted equally (as the Shapley value weights
sizes) and the ridge strength chosen by generalised cross-validation. Its Shapley values are
``beta_i + sum_j beta_ij / 2``. Regression-adjusted estimators (Witter, Liu & Musco, 2025) add to them an unbiased
estimate of the Shapley values of the residual game ``v - g``, which is small where the surrogate fits, so the
estimate's variance is too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Surrogate", "fit_surrogate", "BoostedTrees", "fit_boosted_trees", "tree_shapley_values", "adjacent_pairs"]

_DIRECT_COLUMNS = 3000
"""Up to this many terms the ridge problem is solved through an eigendecomposition (and the ridge strength chosen
by GCV); beyond, iteratively with a fixed strength."""

_RIDGE_GRID = np.logspace(-6, 2, 17)
"""Ridge strengths tried, relative to the mean eigenvalue of the weighted Gram matrix."""


@dataclass(frozen=True)
class Surrogate:
    """A fitted second-order surrogate.

    Attributes
    ----------
    intercept : np.ndarray
        ``(T,)``.
    main : np.ndarray
        ``(M, T)`` main effects.
    pairs : np.ndarray
        ``(P, 2)`` feature pairs with an interaction term.
    interaction : np.ndarray
        ``(P, T)`` their coefficients.
    """

    intercept: np.ndarray
    main: np.ndarray
    pairs: np.ndarray
    interaction: np.ndarray

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """``(n, T)`` surrogate values of ``(n, M)`` bool coalitions."""
        coalitions = np.asarray(coalitions, dtype=bool)
        out = self.intercept + coalitions.astype(np.float64) @ self.main
        for start, products in _pair_products(coalitions, self.pairs):
            out += products.astype(np.float64) @ self.interaction[start : start + products.shape[1]]
        return out

    def shapley_values(self) -> np.ndarray:
        """``(M, T)`` exact Shapley values: each pair's interaction is split equally between its two features."""
        phi = self.main.copy()
        np.add.at(phi, self.pairs[:, 0], self.interaction / 2)
        np.add.at(phi, self.pairs[:, 1], self.interaction / 2)
        return phi

    def size_term(self, size: int) -> np.ndarray:
        """``(M, T)``: the part of the exact Shapley values that coalitions of one size ``1 <= size <= M - 1`` hold.

        The Shapley value is a sum over sizes, ``phi_i = (v(N) - v(empty)) / M + sum_s T_s,i`` with
        ``T_s,i = E_{|S| = s}[g(S) (1[i in S] / s - 1[i not in S] / (M - s))]`` (``S`` uniform among the
        coalitions of size ``s``). For a second-order ``g`` it is closed-form: a main effect ``beta_j`` gives feature
        ``j`` ``1 / M`` and every other feature ``-1 / (M (M - 1))``; an interaction ``beta_jk`` gives ``j`` and ``k``
        ``(s - 1) / (M (M - 1))`` and every other feature ``-2 (s - 1) / (M (M - 1) (M - 2))``.
        """
        m = self.main.shape[0]
        main = (self.main - (self.main.sum(axis=0) - self.main) / (m - 1)) / m
        touching = np.zeros_like(self.main)
        np.add.at(touching, self.pairs[:, 0], self.interaction)
        np.add.at(touching, self.pairs[:, 1], self.interaction)
        pair = (size - 1) / (m * (m - 1)) * touching
        if m > 2:
            pair -= 2 * (size - 1) / (m * (m - 1) * (m - 2)) * (self.interaction.sum(axis=0) - touching)
        return main + pair


_PAIR_CHUNK = 2048
"""Interaction columns formed at a time, so that no temporary is as large as the design itself."""


def _pair_products(coalitions: np.ndarray, pairs: np.ndarray):
    """Yield ``(start, (n, k) bool)``: whether both features of pairs ``start .. start + k`` are present."""
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start : start + _PAIR_CHUNK]
        yield start, coalitions[:, chunk[:, 0]] & coalitions[:, chunk[:, 1]]


def _design(coalitions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``(n, M + P)`` float64: the indicators, then the pairs' products, built in one array."""
    n, m = coalitions.shape
    x = np.empty((n, m + len(pairs)))
    x[:, :m] = coalitions
    for start, products in _pair_products(coalitions, pairs):
        x[:, m + start : m + start + products.shape[1]] = products
    return x


def fit_surrogate(coalitions: np.ndarray, values: np.ndarray, pairs: np.ndarray | None = None) -> Surrogate:
    """Ridge fit of a second-order surrogate to evaluated coalitions.

    Parameters
    ----------
    coalitions : np.ndarray
        ``(n, M)`` bool.
    values : np.ndarray
        ``(n, T)`` their values.
    pairs : np.ndarray, optional
        ``(P, 2)`` int: the pairs that get an interaction term (none by default).

    Returns
    -------
    Surrogate
        Each size's coalitions together weigh as much as any other size's; the intercept is not penalised; the
        ridge strength is chosen per target by generalised cross-validation.
    """
    coalitions = np.asarray(coalitions, dtype=bool)
    values = np.asarray(values, dtype=np.float64).reshape(len(coalitions), -1)
    pairs = np.zeros((0, 2), dtype=np.int64) if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    sizes = coalitions.sum(axis=1)
    weight = 1.0 / np.bincount(sizes)[sizes]
    weight /= weight.sum()
    # The design is centred and weighted in place: with thousands of features and their adjacent pairs it is the
    # largest array of an explanation.
    x = _design(coalitions, pairs)
    x_mean = weight @ x
    y_mean = weight @ values
    root = np.sqrt(weight)[:, None]
    x -= x_mean
    x *= root
    y = root * (values - y_mean)
    coefficients = _ridge_gcv(x, y) if x.shape[1] <= _DIRECT_COLUMNS else _ridge_iterative(x, y)
    m = coalitions.shape[1]
    intercept = y_mean - x_mean @ coefficients
    return Surrogate(intercept, coefficients[:m], pairs, coefficients[m:])


def _ridge_gcv(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``argmin |y - x b|^2 + lam |b|^2`` with ``lam`` minimising the GCV score, per column of ``y``."""
    n, p = x.shape
    if n < p:  # the dual: an n x n eigenproblem
        gram = x @ x.T
        eigenvalues, vectors = np.linalg.eigh(gram)
        projected = vectors.T @ y

        def coefficients(lam, t):
            return x.T @ (vectors @ (projected[:, t] / (eigenvalues + lam)))
    else:
        gram = x.T @ x
        eigenvalues, vectors = np.linalg.eigh(gram)
        projected = vectors.T @ (x.T @ y)

        def coefficients(lam, t):
            return vectors @ (projected[:, t] / (eigenvalues + lam))

    eigenvalues = np.clip(eigenvalues, 0.0, None)
    scale = max(float(eigenvalues.mean()), 1e-300)
    total = np.einsum("nt,nt->t", y, y)
    out = np.zeros((p, y.shape[1]))
    for t in range(y.shape[1]):
        best, best_score = None, np.inf
        for lam in _RIDGE_GRID * scale:
            shrink = eigenvalues / (eigenvalues + lam)
            # Residual sum of squares and the hat matrix's trace from the eigendecomposition alone.
            if n < p:
                fitted = projected[:, t] * shrink
                rss = total[t] - np.sum(projected[:, t] ** 2) + np.sum((projected[:, t] - fitted) ** 2)
            else:
                b = projected[:, t]
                rss = total[t] - np.sum(b**2 * (2.0 / (eigenvalues + lam) - eigenvalues / (eigenvalues + lam) ** 2))
            dof = n - shrink.sum()
            score = max(rss, 0.0) / max(dof, 1e-9) ** 2
            if score < best_score:
                best, best_score = lam, score
        out[:, t] = coefficients(best, t)
    return out


def _ridge_iterative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge by LSQR for problems too wide for an eigendecomposition; strength 1e-3 of the mean column norm."""
    from scipy.sparse.linalg import lsqr

    damp = np.sqrt(1e-3 * np.mean(np.einsum("np,np->p", x, x)))
    return np.stack([lsqr(x, y[:, t], damp=damp, atol=1e-8, btol=1e-8, iter_lim=300)[0] for t in range(y.shape[1])], 1)


BOOSTING = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.3}
"""The boosted trees' settings: shallow trees (interactions up to third order each, any order in the sum). On the
real-model games of ``benchmarks/cases/real_games.py`` depth 2 gains nothing (paired kernel regression is already exact
on second-order games), depth 3 does best at 4M-8M coalitions, and 100 trees at rate 0.3 match 300 at 0.1."""


@dataclass(frozen=True)
class BoostedTrees:
    """Gradient-boosted regression trees, one ensemble per target, fitted to coalition values.

    Attributes
    ----------
    models : tuple
        One fitted :class:`sklearn.ensemble.GradientBoostingRegressor` per target.
    n_players : int
    """

    models: tuple
    n_players: int

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """``(n, T)`` predicted values of ``(n, M)`` bool coalitions."""
        z = np.asarray(coalitions, dtype=np.float64).reshape(-1, self.n_players)
        return np.stack([model.predict(z) for model in self.models], axis=1)

    def shapley_values(self) -> np.ndarray:
        """``(M, T)``: the exact Shapley values of the game ``S -> prediction(1_S)`` (see
        :func:`tree_shapley_values`); they sum to ``prediction(all) - prediction(empty)``."""
        return np.stack(
            [
                model.learning_rate
                * sum(tree_shapley_values(tree.tree_, self.n_players) for tree in model.estimators_[:, 0])
                for model in self.models
            ],
            axis=1,
        )


def fit_boosted_trees(
    coalitions: np.ndarray, values: np.ndarray, seed: int = 0, max_depth: int | None = None
) -> BoostedTrees:
    """Least-squares gradient boosting (:data:`BOOSTING`) of each target's values on the coalitions' indicators.

    Parameters
    ----------
    coalitions : np.ndarray
        ``(n, M)`` bool.
    values : np.ndarray
        ``(n, T)`` or ``(n,)`` their values.
    seed : int
        Seeds the trees' tie-breaking between equally good splits.
    max_depth : int, optional
        Depth of each tree (default that of :data:`BOOSTING`): the highest order of interaction one tree holds.
    """
    from sklearn.ensemble import GradientBoostingRegressor

    coalitions = np.asarray(coalitions, dtype=bool)
    values = np.asarray(values, dtype=np.float64).reshape(len(coalitions), -1)
    z = coalitions.astype(np.float64)
    settings = dict(BOOSTING, **({} if max_depth is None else {"max_depth": int(max_depth)}))
    models = tuple(
        GradientBoostingRegressor(random_state=seed, **settings).fit(z, values[:, t]) for t in range(values.shape[1])
    )
    return BoostedTrees(models, coalitions.shape[1])


def tree_shapley_values(tree, n_players: int) -> np.ndarray:
    """``(M,)`` exact Shapley values of ``S -> tree(1_S)`` for a regression tree over 0/1 features.

    ``tree`` is a fitted scikit-learn ``Tree`` (``estimator.tree_``) whose splits send 0 left and 1 right. A leaf
    reached when the features ``P`` are present and ``N`` absent adds ``value * [P in S and N out of S]`` to the
    game; with ``p = |P|`` and ``n = |N|`` that term gives each feature of ``P``
    ``value * (p - 1)! n! / (p + n)!`` and each feature of ``N`` ``-value * p! (n - 1)! / (p + n)!`` (the chance,
    in a random order, that the feature comes last among ``P`` and before all of ``N``, or first among ``N`` and
    after all of ``P``).
    """
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    leaf_value = tree.value.reshape(tree.node_count, -1)[:, 0]
    phi = np.zeros(n_players)
    # Node ids grow from parent to child, so one pass in id order sees every path's conditions before its leaf.
    present: list = [()] * tree.node_count
    absent: list = [()] * tree.node_count
    for node in range(tree.node_count):
        if left[node] == -1:
            p, n = len(present[node]), len(absent[node])
            if p + n:
                value = leaf_value[node]
                if p:
                    phi[list(present[node])] += (
                        value * math.factorial(p - 1) * math.factorial(n) / math.factorial(p + n)
                    )
                if n:
                    phi[list(absent[node])] -= value * math.factorial(p) * math.factorial(n - 1) / math.factorial(p + n)
            continue
        split = feature[node]
        present[left[node]], absent[left[node]] = present[node], absent[node] + (split,)
        present[right[node]], absent[right[node]] = present[node] + (split,), absent[node]
    return phi


def adjacent_pairs(feature_map: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
    """``(P, 2)`` column pairs of features whose voxels touch (6-connectivity) in ``feature_map``.

    Columns index ``feature_ids``; voxels of other ids (0 included) are ignored.
    """
    feature_map = np.asarray(feature_map)
    feature_ids = np.asarray(feature_ids)
    column = np.full(int(max(feature_map.max(initial=0), feature_ids.max(initial=0))) + 2, -1, dtype=np.int64)
    column[feature_ids] = np.arange(len(feature_ids))
    columns = column[feature_map]
    found = []
    for axis in range(feature_map.ndim):
        low = np.take(columns, np.arange(columns.shape[axis] - 1), axis=axis).ravel()
        high = np.take(columns, np.arange(1, columns.shape[axis]), axis=axis).ravel()
        touching = (low != high) & (low >= 0) & (high >= 0)
        found.append(np.stack([np.minimum(low, high)[touching], np.maximum(low, high)[touching]], 1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.unique(pairs, axis=0).astype(np.int64)
