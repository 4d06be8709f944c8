"""Plain permutation sampling: the independent estimator behind the references of games too large to enumerate.

Runs in the project's environment (it drives the engine's games directly). It shares no code with the estimators
under test (``segshap.kernel_shap``'s chains, Leverage SHAP, their surrogates and adjustments): each permutation
walks from the empty coalition to the full one, adding one feature at a time, and a feature's Shapley value is the
mean of its marginal contributions over the permutations (Castro, Gómez and Tejada 2009). The estimate is unbiased,
and with independent permutations its standard error is the spread of the contributions over the square root of
their number.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def permutation_shapley(
    evaluate: Callable[[np.ndarray], np.ndarray],
    n_players: int,
    permutations: int,
    seed: int,
    batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Shapley values of a game by plain permutation sampling, and their standard errors.

    Parameters
    ----------
    evaluate
        The game: ``(n, M)`` bool coalitions (true where a feature is kept) to ``(n,)`` or ``(n, T)`` values.
    n_players
        M.
    permutations
        Independent uniformly random permutations; each costs M + 1 coalitions (the empty and the full one
        included, so that a game that does not memoise them still gets exact contributions).
    seed
        Seed of the permutations.
    batch
        Permutations evaluated per call of ``evaluate``; a permutation's coalitions are passed in walking order, so
        an engine that memoises its windows recomputes only what each one-feature step changes.

    Returns
    -------
    values, stderr
        ``(M, T)`` arrays: the mean marginal contribution of each feature and its standard error.
    """
    if permutations < 2:
        raise ValueError(f"permutations must be at least 2 for a standard error, not {permutations}")
    rng = np.random.default_rng(seed)
    steps = np.arange(n_players + 1)
    total = squares = None
    for start in range(0, permutations, batch):
        n = min(batch, permutations - start)
        orders = np.argsort(rng.random((n, n_players)), axis=1)
        position = np.argsort(orders, axis=1)  # position[p, i]: when permutation p adds feature i
        coalitions = position[:, None, :] < steps[None, :, None]  # (n, M + 1, M): the prefixes of each walk
        values = np.asarray(evaluate(coalitions.reshape(-1, n_players)), dtype=np.float64)
        values = values.reshape(n, n_players + 1, -1)
        # Step k of permutation p adds feature orders[p, k]; feature i's contribution is the step at its position.
        contributions = np.take_along_axis(np.diff(values, axis=1), position[:, :, None], axis=1)
        if total is None:
            total, squares = contributions.sum(axis=0), (contributions**2).sum(axis=0)
        else:
            total += contributions.sum(axis=0)
            squares += (contributions**2).sum(axis=0)
    mean = total / permutations
    variance = np.maximum(squares / permutations - mean**2, 0.0) * permutations / (permutations - 1)
    return mean, np.sqrt(variance / permutations)
