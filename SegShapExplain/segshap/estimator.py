"""KernelSHAP: Shapley values of a set function from a budget of evaluations.

:func:`kernel_shap` estimates the Shapley values of a value function ``v`` over ``M`` features (players). A
coalition is a bool vector over the features; the Shapley values are the solution of the Shapley-kernel weighted
least-squares problem (Lundberg & Lee, 2017) under the efficiency constraint ``sum(phi) = v(all) - v(empty)``.

* When ``2**M`` coalitions fit the budget they are all evaluated and the values are exact.
* ``design="chains"`` (:mod:`segshap.chains`): antithetic permutation chains, each coalition one feature away from
  the previous one, with a cross-fitted regression-adjusted estimate. An engine that caches window outputs by the
  features they see pays one feature's windows per coalition, and the surrogate's exact Shapley values leave only
  a small residual to estimate. Standard errors come from the spread of independent chains.
* ``design="leverage"`` (:mod:`segshap.leverage`): coalitions sampled as in Leverage SHAP (Musco & Witter, 2025):
  every coalition size gets the same share of the budget (the leverage scores of the kernel regression are equal
  across sizes), sizes are enumerated whole once their share covers them, coalitions are drawn without replacement
  and in complementary pairs ``(S, ~S)``. Each evaluated coalition enters the regression with its kernel weight
  divided by its inclusion probability (Horvitz-Thompson), and the regression is solved in the subspace where
  efficiency holds exactly. Standard errors come from the estimator's linearisation around its solution (a sandwich
  variance), with the sampled pairs as independent units inside each size (stratum) and the finite-population
  correction of sampling without replacement, so sizes enumerated whole contribute no error. Residuals are inflated
  by their leverage (HC3), which makes this the jackknife over sampled pairs in its closed form.
* Both designs try a **regression adjustment** by boosted trees (:mod:`segshap.adjustment`) at
  the end: trees fitted to every evaluated coalition give their exact Shapley values, and the design's own
  estimator applied to the residual ``v - trees`` corrects them. Paired kernel regression is already exact on
  games of order two; the trees capture the higher orders that real models' games hold (on the exactly enumerated
  games of ``benchmarks/cases/real_games.py`` the error at 8M coalitions falls 2.5x). Fitted in-sample the adjustment
  can overfit few coalitions, so its variance is estimated by a grouped jackknife (groups of sampled pairs, or of
  chains, left out of the trees' fit) and each target keeps whichever estimate, adjusted or plain, has the
  smaller summed variance, with that estimate's standard errors (``ShapleyResult.adjusted`` says whether any
  target took it). The jackknife overstates variance on average, so the choice leans to the plain estimate. It
  is tried while (coalitions) x M stays below about 4e5, where fitting stays within seconds.
* Leverage SHAP also tries **regression-adjusted Monte Carlo** (:mod:`segshap.msr`): a second-order surrogate's
  exact Shapley values per coalition size, plus the cross-fitted, unbiased MSR estimate of its residual from the
  sampled pairs; a target keeps it where its variance is the smallest of the three (plain, trees, MSR). It wins
  where thresholds or high-order interactions leave the kernel regression a large residual (hard Dice, false
  positives: BENCHMARKS.md, accuracy by family).
* Standard errors are scaled for the degrees of freedom they rest on (:func:`segshap.evaluation.t_scaled`), so
  that ``+-1.645`` of them aims at 90 % coverage also with few chains.
* ``design="auto"`` takes the chains when at least one fits the budget and their coalitions, as the ``forward_cost``
  function prices them, are cheap enough to make up for their error per coalition. At equal coalitions that error,
  measured against Leverage SHAP's (both adjusted), depends on the budget in multiples of ``M`` and on ``M`` (see
  :data:`_CHAIN_ERROR_RATIOS`): far lower at ``2M``, where Leverage SHAP's regression has barely more rows than
  unknowns, and up to about twice as high from ``8M`` on, less with more features. With errors falling as one
  over the square root of the coalitions, the chains win when a chain coalition costs less than ``1 / ratio**2`` of
  a sampled one (as with an engine that reruns only the windows a step changes). Without ``forward_cost`` every
  coalition costs the same: the chains are taken where their error per coalition is the lower (``ratio < 1``:
  budgets below about ``3.4M`` with a dozen features, ``4.5M`` with 60 and ``7.4M`` with 146 or more).

No coalition is ever evaluated twice.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import threading
from collections.abc import Callable

import numpy as np

from .anytime import LiveUpdates, Update
from .chains import chain_shap, loop_coalitions
from .coarse import coarse_budget, explain_regions
from .evaluation import STOP_REASONS, Evaluator, Limits, ShapleyResult, efficiency_error
from .inputs import checked_choice, checked_integer, checked_number
from .leverage import leverage_shap

__all__ = [
    "ShapleyResult",
    "kernel_shap",
    "shapley_from_enumeration",
    "efficiency_error",
    "auto_budget",
    "enumerates",
    "DESIGNS",
    "STOP_REASONS",
    "AUTO_TOLERANCE",
]

DESIGNS = ("auto", "chains", "leverage")
"""Coalition designs: ``"chains"`` (:mod:`segshap.chains`), ``"leverage"`` (:mod:`segshap.leverage`), or the one
``"auto"`` expects to be cheaper. A new design is a module beside those two, dispatched from :func:`kernel_shap`."""

AUTO_TOLERANCE = 0.01
"""Early-stopping tolerance of ``nsamples="auto"`` (max stderr relative to the spread of the values)."""

_ENUMERABLE = 63
"""Below this many players ``2**M`` is an integer the budgets can be compared with."""


def enumerates(n_players: int, budget: int) -> bool:
    """Whether ``budget`` coalitions cover all ``2**M`` of ``n_players``, so that the values are exact."""
    return n_players < _ENUMERABLE and 2**n_players <= budget


def auto_budget(n_players: int) -> int:
    """The budget of ``nsamples="auto"``: ``2 M + 2048`` coalitions, or all ``2**M`` when they are fewer."""
    default = 2 * n_players + 2048
    return min(default, 2**n_players) if n_players < _ENUMERABLE else default


_CHAIN_ERROR_RATIOS = {
    12: ((2.0, 0.2), (4.0, 1.25), (8.0, 1.8), (16.0, 1.95)),
    52: ((2.0, 0.05), (4.0, 1.0), (8.0, 1.3), (16.0, 1.45)),
    146: ((2.0, 0.05), (4.0, 0.6), (8.0, 1.05), (16.0, 1.75), (30.0, 1.8)),
}
"""Per number of features ``M``: ``(budget / M, error of the chains / error of Leverage SHAP)`` at equal
coalitions, both adjusted as they run, as measured (mean relative L2 errors; BENCHMARKS.md, 2026-12-07).

* ``M = 12``: the 17 exactly enumerated games of the accuracy suite (M = 11-14, four families, 4 seeds), the mean
  of the families' ratios (4M: 1.02-1.48, 8M: 1.48-2.19, 16M: 1.73-2.17); at 2M from an earlier run on six of them
  (Leverage SHAP's regression is unstable there). With few features Leverage SHAP soon enumerates the smallest
  sizes whole, which the chains cannot use, so the ratio is high.
* ``M = 52``: the accuracy suite's ``many_features`` games (M = 44 and 60, against plain permutation sampling);
  at 2M, 4 seeds outside the suite: 0.003 and 0.12 (Leverage SHAP's errors were 111 and 2.5).
* ``M = 146``: the efficiency suite's full case (2 seeds per budget, against plain permutation sampling), where
  Leverage SHAP's regression at 2M errs by 1.6; it runs Leverage SHAP up to 8M only, so 16M and 30M keep an
  earlier measurement (2026-12-01, M = 135, against the mean of runs of the chains: at 16M from the errors pooled
  over that run; at 30M a whole-structure target of 74 features, the ratio of the largest standard errors). Its
  quick case (M = 41) measured about 0.8 at 4M and 1.2 at 8M.

Interpolated in log(budget / M) within a row, constant beyond its ends, then in log M between the rows (constant
outside them)."""

_COST_PROBE = 16
"""Coalitions of each design whose cost ``design="auto"`` asks for before it chooses."""


def kernel_shap(
    value_fn: Callable[[np.ndarray], np.ndarray],
    n_players: int,
    budget: int,
    *,
    seed: int = 0,
    tolerance: float | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    design: str = "auto",
    forward_cost: Callable[[np.ndarray], float] | None = None,
    max_forwards: float | None = None,
    max_seconds: float | None = None,
    interactions: np.ndarray | Callable[[], np.ndarray] | None = None,
    on_update: Callable[[Update], bool | None] | None = None,
    update_every: float = 5.0,
    stop: threading.Event | None = None,
) -> ShapleyResult:
    """Shapley values of ``value_fn`` from at most ``budget`` evaluations.

    Parameters
    ----------
    value_fn : callable
        Maps an ``(n, M)`` bool array of coalitions (True = feature present) to ``(n,)`` or ``(n, T)`` values. It
        is called with at most ``batch_size`` coalitions at a time and never with a coalition twice. If it takes a
        keyword ``retain``, the chains pass a bool mask of the rows the next call continues from (an engine keeps
        what they need, as :meth:`segshap.PatchEngine.evaluate` does).
    n_players : int
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
    forward_cost : callable, optional
        ``forward_cost(coalitions)``: the model forwards evaluating these coalitions next would run, given
        everything evaluated before (:meth:`PatchEngine.forward_cost`), what an evaluation costs. Needed by
        ``max_forwards``; the total is reported (:attr:`ShapleyResult.forwards`).
    max_forwards : float, optional
        Stop before a batch whose forwards would take the total beyond this.
    max_seconds : float, optional
        Stop before a batch that, at the pace so far, would end after this many seconds.
    interactions : np.ndarray or callable, optional
        ``(P, 2)`` feature pairs the surrogates give an interaction term (e.g. adjacent supervoxels), or a function
        returning them, called only if a surrogate is fitted (the chains, or Leverage SHAP's MSR adjustment). Default:
        the chains take those of :func:`default_interactions`, the MSR adjustment every pair of up to 60 features.
        With live updates over many features, the coarse level merges regions along these pairs.
    on_update : callable, optional
        ``on_update(update)`` with an :class:`~segshap.anytime.Update`, the estimate as the result would hold it
        if the run stopped then, every ``update_every`` seconds, first when the design has standard errors, and
        last with the final values; on a thread of its own, so a slow callback does not hold up the sampling.
        Returning ``False`` stops the sampling, and the result holds the estimate of the last update the callback
        was given (``stop_reason`` ``"user"``). Over more than :data:`~segshap.coarse.COARSE_FROM` features the
        first updates come from regions of features (:mod:`segshap.coarse`). See :mod:`segshap.anytime`.
    update_every : float
        Seconds between updates.
    stop : threading.Event, optional
        Set from any thread, it stops the sampling as ``on_update`` returning ``False`` does (with updates: the
        result holds the last update's estimate).

    Returns
    -------
    ShapleyResult

    Raises
    ------
    ValueError
        For a bad argument, or when ``value_fn`` returns values of the wrong shape or that are not finite.
    """
    n_players = checked_integer(n_players, "n_players")
    budget = checked_integer(budget, "budget", 2)
    batch_size = checked_integer(batch_size, "batch_size", 2)
    tolerance = None if tolerance is None else checked_number(tolerance, "tolerance", below=1)
    checked_choice(design, "design", DESIGNS)
    max_forwards = None if max_forwards is None else checked_number(max_forwards, "max_forwards")
    max_seconds = None if max_seconds is None else checked_number(max_seconds, "max_seconds")
    if max_forwards is not None and forward_cost is None:
        raise ValueError("max_forwards needs forward_cost=..., which says what a batch of coalitions costs.")
    limits = Limits(forward_cost, max_forwards, max_seconds)
    evaluator = Evaluator(value_fn, n_players, batch_size, progress, limits)
    live = None
    if on_update is not None or stop is not None:
        every = checked_number(update_every, "update_every")
        live = LiveUpdates(on_update if on_update is not None else (lambda update: None), every, stop)
        live.attach(evaluator)
    try:
        result, regions = _sample(evaluator, budget, seed, tolerance, design, forward_cost, interactions, live)
    except BaseException:
        if live is not None:
            live.abandon()
        raise
    if live is None:
        return result
    kept = live.kept()
    if kept is not None:  # what the user saw is what the result holds
        result = dataclasses.replace(result, values=kept.values, stderr=kept.stderr, adjusted=kept.adjusted)
        regions = kept.regions
    shape = (n_players, -1)
    live.finish(result.values.reshape(shape), result.stderr.reshape(shape), result.adjusted, regions)
    return dataclasses.replace(result, updates=tuple(live.records), regions=regions)


def _sample(evaluator, budget, seed, tolerance, design, forward_cost, interactions, live):
    """The estimate of the design asked for, after the coarse level where there is one; and the number of regions
    when the run ended at that level (else ``None``)."""
    n_players = evaluator.n_players
    if enumerates(n_players, budget):
        return _exact(evaluator), None
    rng = np.random.default_rng(seed)
    border, chains_fit = _chain_plan(n_players, budget)
    if design == "chains" and chains_fit < 1:
        raise ValueError(
            f"design='chains' needs a budget of at least {2 * n_players} coalitions for {n_players} features (one "
            f"chain), got {budget}; raise the budget or use design='leverage'."
        )
    pairs = None
    prior = None
    per_chain = 2 * (n_players - 1) - (4 if border else 0)
    spare = budget - 2 - (2 * n_players if border else 0) - chains_fit * per_chain if chains_fit else budget
    first_look = coarse_budget(n_players, budget, spare) if live is not None else 0
    if first_look:
        pairs = _interaction_pairs(interactions, n_players, budget)
        evaluator.total = budget
        coarse = explain_regions(evaluator, pairs, first_look, seed)
        if not coarse.finished:
            evaluator.finish()
            values, stderr = (
                coarse.expand(a.reshape(coarse.n_regions, -1)) for a in (coarse.result.values, coarse.result.stderr)
            )
            stopped = evaluator.result(
                values, stderr, False, "chains", coarse.result.stop_reason, coarse.result.adjusted
            )
            return stopped, coarse.n_regions
        prior = np.concatenate(evaluator.coalitions)
        prior = prior[prior.any(axis=1) & ~prior.all(axis=1)]  # the ends are the chains' own
    if design == "auto":
        design = _cheaper_design(forward_cost, n_players, budget, chains_fit, seed)
    if design == "chains":
        pairs = _interaction_pairs(interactions, n_players, budget) if pairs is None else pairs
        return chain_shap(evaluator, budget, rng, tolerance, pairs, border, seed, prior), None
    surrogate_pairs = functools.cache(lambda: _surrogate_pairs(interactions, n_players))
    return leverage_shap(evaluator, budget, rng, tolerance, seed, surrogate_pairs), None


_ALL_PAIRS_UP_TO = 60
"""Up to this many features the MSR adjustment's surrogate has a term for every pair of features (at most 1,770
terms), unless ``interactions`` name the pairs."""


def _surrogate_pairs(interactions, n_players: int) -> np.ndarray:
    """The feature pairs of the MSR adjustment's surrogate: those given, else every pair of up to
    :data:`_ALL_PAIRS_UP_TO` features, else none."""
    if interactions is not None:
        return _as_pairs(interactions() if callable(interactions) else interactions, n_players)
    if n_players > _ALL_PAIRS_UP_TO:
        return np.zeros((0, 2), dtype=np.int64)
    return _every_pair(n_players)


def _interaction_pairs(interactions, n_players: int, budget: int) -> np.ndarray:
    if interactions is None:
        return default_interactions(n_players, budget)
    return _as_pairs(interactions() if callable(interactions) else interactions, n_players)


def _chain_error_ratio(budget: int, n_players: int) -> float:
    """The chains' error over Leverage SHAP's at equal coalitions for this budget (:data:`_CHAIN_ERROR_RATIOS`)."""
    sizes = sorted(_CHAIN_ERROR_RATIOS)
    by_size = []
    for size in sizes:
        multiples, ratios = zip(*_CHAIN_ERROR_RATIOS[size])
        by_size.append(np.interp(math.log(budget / n_players), np.log(multiples), ratios))
    return float(np.interp(math.log(n_players), np.log(sizes), by_size))


def _cheaper_design(forward_cost, n_players: int, budget: int, chains_fit: int, seed: int) -> str:
    """The design with the lower expected error per forward: the chains if one fits and a chain's coalitions, as
    ``forward_cost`` prices them now, are cheap enough to make up for their error per coalition at this budget;
    without ``forward_cost``, if their error per coalition is the lower."""
    if chains_fit < 1:
        return "leverage"
    if forward_cost is None:
        return "chains" if _chain_error_ratio(budget, n_players) < 1.0 else "leverage"
    rng = np.random.default_rng([seed, 1])
    steps = min(n_players - 1, _COST_PROBE)
    chain = loop_coalitions(rng.permutation(n_players))[:steps]
    sizes = rng.integers(1, n_players, size=steps)
    sampled = rng.random((steps, n_players)).argsort(axis=1) < sizes[:, None]
    chain_cost, sampled_cost = float(forward_cost(chain)) / steps, float(forward_cost(sampled)) / steps
    return "chains" if chain_cost * _chain_error_ratio(budget, n_players) ** 2 < sampled_cost else "leverage"


def default_interactions(n_players: int, budget: int) -> np.ndarray:
    """The surrogate's interaction pairs when none are given: all pairs while they number at most a quarter of the
    budget, else none (give the pairs that matter, such as adjacent supervoxels, through ``interactions``)."""
    if n_players * (n_players - 1) // 2 > budget // 4:
        return np.zeros((0, 2), dtype=np.int64)
    return _every_pair(n_players)


def _every_pair(n_players: int) -> np.ndarray:
    return np.array(list(itertools.combinations(range(n_players), 2)), dtype=np.int64).reshape(-1, 2)


def _as_pairs(interactions, n_players: int) -> np.ndarray:
    pairs = np.asarray(interactions)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"interactions must be an integer array of shape (P, 2), got shape {pairs.shape}.")
    if pairs.min() < 0 or pairs.max() >= n_players or np.any(pairs[:, 0] == pairs[:, 1]):
        raise ValueError(f"interactions must pair two different features among 0..{n_players - 1}.")
    return np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int64)


def _chain_plan(n_players: int, budget: int) -> tuple[bool, int]:
    """Whether the chains start by enumerating sizes 1 and ``M - 1`` (at budgets up to ``8 M``, where it pays most,
    if two chains still fit beside them), and how many chains the budget holds."""
    if n_players < 3:
        return False, 0
    per_chain = 2 * (n_players - 1)
    if n_players >= 4 and budget <= 8 * n_players:
        with_border = (budget - 2 - 2 * n_players) // (per_chain - 4)
        if with_border >= 2:
            return True, with_border
    return False, max(0, (budget - 2) // per_chain)


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


def _exact(evaluator: Evaluator) -> ShapleyResult:
    m = evaluator.n_players
    evaluator.total = 2**m
    codes = np.arange(2**m, dtype=np.int64)
    coalitions = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    values = evaluator(coalitions, force=True)  # exact enumeration is all or nothing
    phi = shapley_from_enumeration(coalitions, values).reshape(m, -1)
    evaluator.finish()
    return evaluator.result(phi, np.zeros_like(phi), exact=True, design="exact", reason="exact")
