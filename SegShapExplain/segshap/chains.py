"""Permutation chains: a coalition design that walks one feature at a time, with a regression-adjusted estimate.

A unit of the design is a uniformly random permutation ``pi`` walked as one loop: from the empty coalition add
``pi_1, ..., pi_M`` (the prefixes ``F_k``), then from the full coalition remove ``pi_1, ..., pi_M`` (the complements
``~F_k``). Each of its ``2 (M - 1)`` coalitions differs from the one before in a single feature, so an engine that
caches window outputs by the features they see reruns only that feature's windows; and every size ``1 .. M-1``
gets two coalitions, each uniform within its size and complementary to another of the unit: Leverage SHAP's size
allocation, paired (Musco & Witter, 2025).

The estimate is regression-adjusted (Witter, Liu & Musco, 2025): a second-order surrogate ``g``
(:mod:`segshap.surrogate`) contributes its exact Shapley values, and each unit an unbiased estimate of the Shapley
values of the residual game ``r = v - g``, combining two estimators:

* the unit's marginal contributions along its two walks (antithetic permutation sampling), and
* a per-size Horvitz-Thompson estimate: for each size ``s`` the difference between the mean residual of size-``s``
  coalitions that hold feature ``i`` and of those that do not, from the unit's two coalitions of that size
  weighted by the inverse probabilities ``M / s`` and ``M / (M - s)``.

Their mix is the one with the smaller variance across units. The surrogate is cross-fitted: the units are split in
two halves and each half's residuals come from the surrogate fitted on the other half (and on the coalitions
known to both), so a unit's estimate is unbiased given the surrogate it uses, and standard errors follow from the
spread of the units' estimates. Sizes 1 and ``M - 1``, enumerated whole when the budget is small, enter exactly.

With four units or more, boosted trees fitted to every coalition replace the ridge surrogate for a target when the
grouped jackknife over units says their estimate varies less than the cross-fitted one
(:func:`segshap.adjustment.tree_adjusted`); in-sample, that estimate may carry a small bias, which the choice weighs
only through its variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .adjustment import ADJUST_CELLS, tree_adjusted
from .evaluation import Evaluator, LimitReached, ShapleyResult, converged, t_scaled
from .surrogate import fit_surrogate

__all__ = ["ChainDesign", "loop_coalitions", "chain_estimate", "chain_shap"]

_WALKS = 8
"""Chains walked side by side: one batch holds consecutive steps of each."""

_TOLERANCE_CHAINS = 4
"""With a tolerance, the chains' standard errors are checked from this many complete chains on (with fewer they
rest on too few units to be trusted)."""


def loop_coalitions(permutation: np.ndarray) -> np.ndarray:
    """``(2 (M - 1), M)`` bool: the prefixes ``F_1 .. F_{M-1}`` of ``permutation``, then their complements
    ``~F_1 .. ~F_{M-1}``, in walking order (each differs from the previous one, or from the empty or full
    coalition, in one feature)."""
    m = len(permutation)
    rank = np.empty(m, dtype=np.int64)
    rank[permutation] = np.arange(m)
    prefixes = rank[None, :] < np.arange(1, m)[:, None]
    return np.concatenate([prefixes, ~prefixes])


@dataclass
class ChainDesign:
    """The units sampled so far and what is known of the game.

    Attributes
    ----------
    n_players : int
    border : bool
        Whether sizes 1 and ``M - 1`` are enumerated whole.
    permutations : list of np.ndarray
        One per unit started; ``complete[u]`` says whether all of its coalitions were evaluated.
    """

    n_players: int
    border: bool
    permutations: list = field(default_factory=list)
    complete: list = field(default_factory=list)

    def border_coalitions(self) -> np.ndarray:
        """``(2 M, M)``: every coalition of size 1, then every coalition of size ``M - 1``."""
        eye = np.eye(self.n_players, dtype=bool)
        return np.concatenate([eye, ~eye])

    def new_unit(self, rng: np.random.Generator) -> np.ndarray:
        permutation = rng.permutation(self.n_players)
        self.permutations.append(permutation)
        self.complete.append(False)
        return permutation


def chain_estimate(
    design: ChainDesign,
    lookup,
    ends: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray],
    pairs: np.ndarray,
    seed: int = 0,
    adjust: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Shapley values and standard errors from the complete units.

    Parameters
    ----------
    design : ChainDesign
    lookup : callable
        Maps ``(n, M)`` bool coalitions (all evaluated) to their ``(n, T)`` values.
    ends : np.ndarray
        ``(2, T)``: the values of the empty and the full coalition.
    extra : tuple
        Coalitions evaluated outside complete units and their values (incomplete units): used in the surrogate's
        fit only.
    pairs : np.ndarray
        ``(P, 2)`` feature pairs with an interaction term in the surrogate.
    seed : int
        Seeds the boosted trees and their jackknife groups.
    adjust : bool
        Whether to try the boosted-tree adjustment (:func:`_tree_adjusted`).

    Returns
    -------
    values, stderr : np.ndarray
        ``(M, T)``; the standard errors are NaN with fewer than two complete units.
    adjusted : np.ndarray
        ``(T,)`` bool: where the boosted-tree adjustment was taken.
    """
    m = design.n_players
    units = [p for p, done in zip(design.permutations, design.complete) if done]
    n_units = len(units)
    loops = [loop_coalitions(p) for p in units]
    loop_values = [lookup(c) for c in loops]
    t = ends.shape[1]
    empty, full = ends[0], ends[1]

    known_rows = [np.zeros((1, m), bool), np.ones((1, m), bool), extra[0]]
    known_values = [empty[None], full[None], extra[1].reshape(-1, t)]
    if design.border:
        border = design.border_coalitions()
        known_rows.append(border)
        known_values.append(lookup(border))
    known = (np.concatenate(known_rows), np.concatenate(known_values))

    halves = [np.arange(n_units) % 2 == h for h in (0, 1)] if n_units >= 2 else [np.ones(n_units, bool)]
    surrogates = []
    for half in halves:
        # A unit's residuals come from the surrogate fitted without it: on the other half when there is one.
        other = ~half if len(halves) == 2 else half
        rows = [known[0]] + [loops[u] for u in np.flatnonzero(other)]
        values = [known[1]] + [loop_values[u] for u in np.flatnonzero(other)]
        surrogates.append(fit_surrogate(np.concatenate(rows), np.concatenate(values), pairs))

    taken = np.zeros(t, bool)
    if not n_units:  # stopped before a chain was complete: the surrogate's values alone, with no error estimate
        values = surrogates[0].shapley_values()
        return values + ((full - empty) - values.sum(axis=0)) / m, np.full((m, t), np.nan), taken

    walks = _Walks(design, units, loops, loop_values, ends, known)
    values, stderr = _combine(*walks.unit_estimates(list(zip(halves, surrogates))))
    if adjust and n_units >= _ADJUST_UNITS and (sum(len(c) for c in loops) + len(known[0])) * m <= ADJUST_CELLS:
        values, stderr, taken, _ = _tree_adjusted(walks, values, stderr, seed)
    return values + ((full - empty) - values.sum(axis=0)) / m, stderr, taken


_ADJUST_UNITS = 4
"""Complete chains needed before the boosted-tree adjustment is tried (its variance comes from groups of them)."""


class _Walks:
    """The complete units' coalitions and values, and the unbiased per-unit estimates of a residual game."""

    def __init__(self, design, units, loops, loop_values, ends, known) -> None:
        self.design, self.units, self.loops, self.loop_values = design, units, loops, loop_values
        self.ends, self.known = ends, known

    def rows(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The known coalitions and those of the units marked in ``keep``, with their values."""
        chosen = np.flatnonzero(keep)
        rows = np.concatenate([self.known[0]] + [self.loops[u] for u in chosen])
        return rows, np.concatenate([self.known[1]] + [self.loop_values[u] for u in chosen])

    def unit_estimates(self, assignment) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, the permutation and the Horvitz-Thompson estimates ``(units, M, T)`` of the game's Shapley
        values: the surrogate's exact values plus the unit's estimate of the residual's. ``assignment`` pairs a
        bool mask of units with the surrogate their residuals are taken against."""
        design, units, m = self.design, self.units, self.design.n_players
        ends = self.ends
        t = ends.shape[1]
        per_unit_perm = np.zeros((len(units), m, t))
        per_unit_ht = np.zeros((len(units), m, t))
        sampled = np.ones(m + 1, dtype=bool)
        sampled[[0, m]] = False
        if design.border:
            sampled[[1, m - 1]] = False
        for members_mask, surrogate in assignment:
            members = np.flatnonzero(members_mask)
            residual_ends = ends - surrogate(np.stack([np.zeros(m, bool), np.ones(m, bool)]))
            # Per unit: residuals along the walk, prefixes F_0..F_M and complements ~F_0..~F_M.
            forward = np.zeros((len(members), m + 1, t))
            backward = np.zeros((len(members), m + 1, t))
            for row, u in enumerate(members):
                residual = self.loop_values[u] - surrogate(self.loops[u])
                forward[row, 1:m] = residual[: m - 1]
                backward[row, 1:m] = residual[m - 1 :]
            forward[:, 0], forward[:, m] = residual_ends[0], residual_ends[1]
            backward[:, 0], backward[:, m] = residual_ends[1], residual_ends[0]
            phi_surrogate = surrogate.shapley_values()
            exact_terms = _border_terms(surrogate, self.known, design, m) if design.border else 0.0
            centre = _leave_one_out_centres(forward, backward, m)
            for row, u in enumerate(members):
                rank_order = units[u]
                # Marginal contribution of pi_k: entering after F_{k-1}, and leaving ~F_{k-1} for ~F_k.
                marginal = 0.5 * ((forward[row, 1:] - forward[row, :-1]) + (backward[row, :-1] - backward[row, 1:]))
                per_unit_perm[u, rank_order] = marginal
                per_unit_ht[u, rank_order] = _horvitz_thompson(forward[row], backward[row], centre[row], sampled, m)
                per_unit_perm[u] += phi_surrogate
                per_unit_ht[u] += phi_surrogate + (exact_terms + residual_ends[1] - residual_ends[0]) / m
        return per_unit_perm, per_unit_ht


def _tree_adjusted(walks: _Walks, values: np.ndarray, stderr: np.ndarray, seed: int):
    """The boosted-tree adjustment (:func:`segshap.adjustment.tree_adjusted`) of the units' cross-fitted estimate:
    the trees' exact Shapley values plus the units' estimates of the residual's, with groups of units left out."""
    n_units = len(walks.units)
    everyone = np.ones(n_units, bool)

    def estimate(surrogates) -> np.ndarray:
        return np.stack([_combine(*walks.unit_estimates([(everyone, trees)]))[0] for trees in surrogates])

    return tree_adjusted(
        estimate,
        walks.rows,
        n_units,
        values,
        stderr,
        groups=min(_ADJUST_GROUPS, n_units),
        depths=(None,),
        seed=(seed, 3),
    )


_ADJUST_GROUPS = 5
"""Groups of units left out in turn for the adjusted estimate's variance."""


def _leave_one_out_centres(forward: np.ndarray, backward: np.ndarray, m: int) -> np.ndarray:
    """``(units, M + 1, T)``: per size, the mean residual of the other units (0 with a single unit).

    Index ``k`` centres the size-``k`` prefix ``F_k``; the complement ``~F_k`` has size ``M - k``, so its centre is
    at ``M - k``. Subtracting a constant that does not depend on the unit keeps the estimate unbiased and removes
    the part of the variance a size's mean residual would cause.
    """
    n = len(forward)
    if n < 2:
        return np.zeros_like(forward)
    per_size = forward + backward[:, ::-1]  # both of a unit's coalitions of size k
    total = per_size.sum(axis=0, keepdims=True)
    return (total - per_size) / (2 * (n - 1))


def _horvitz_thompson(forward, backward, centre, sampled, m) -> np.ndarray:
    """One unit's estimate of ``sum over sampled sizes s of (mean r over size-s coalitions with i - without i) / M``,
    indexed by rank in the unit's permutation (``(M, T)``)."""
    k = np.arange(m + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.where(sampled, m / np.maximum(k, 1), 0.0)[:, None]
        outside = np.where(sampled, m / np.maximum(m - k, 1), 0.0)[:, None]
    f = (forward - centre) * sampled[:, None]
    g = (backward - centre[::-1]) * sampled[::-1][:, None]
    # Prefix F_k holds the features of rank < k; complement ~F_k (size M - k) those of rank >= k.
    size_inside_f = f * inside  # feature in F_k
    size_outside_f = f * outside  # feature not in F_k
    g_size = g  # ~F_k has size M - k
    inside_g = g_size * outside  # weight M / (M - k) for a feature in ~F_k
    outside_g = g_size * inside  # weight M / k for a feature not in ~F_k
    # For the feature of rank rho: F_k holds it iff k > rho; ~F_k holds it iff k <= rho.
    suffix = np.cumsum((size_inside_f - outside_g)[::-1], axis=0)[::-1]  # sum over k >= index
    prefix = np.cumsum(inside_g - size_outside_f, axis=0)  # sum over k <= index
    rho = np.arange(m)
    return 0.5 * (suffix[rho + 1] + prefix[rho]) / m


def _border_terms(surrogate, known, design, m) -> np.ndarray:
    """``(M, T)``: the exact size-1 and size-``M - 1`` terms of the residual's Shapley values (times ``M``)."""
    border = design.border_coalitions()
    rows, values = known
    lookup = {row.tobytes(): i for i, row in enumerate(np.packbits(rows, axis=1))}
    index = [lookup[row.tobytes()] for row in np.packbits(border, axis=1)]
    residual = values[index] - surrogate(border)
    singles, all_but = residual[:m], residual[m:]
    # Size 1: r({i}) - mean_{j != i} r({j}); size M - 1: mean_{j != i} r(N - j) - r(N - i).
    term_1 = singles - (singles.sum(axis=0) - singles) / (m - 1)
    term_last = (all_but.sum(axis=0) - all_but) / (m - 1) - all_but
    return term_1 + term_last


def _combine(perm: np.ndarray, ht: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per target, the mix ``lam * perm + (1 - lam) * ht`` of two unbiased per-unit estimates with the smallest
    summed variance across units; its mean and standard error (scaled for ``units - 1`` degrees of freedom)."""
    n, m, t = perm.shape
    if n < 2:
        return 0.5 * (perm + ht).mean(axis=0), np.full((m, t), np.nan)
    dp = perm - perm.mean(axis=0)
    dh = ht - ht.mean(axis=0)
    var_p = np.einsum("umt,umt->t", dp, dp)
    var_h = np.einsum("umt,umt->t", dh, dh)
    cov = np.einsum("umt,umt->t", dp, dh)
    denominator = var_p + var_h - 2 * cov
    lam = np.clip(np.divide(var_h - cov, denominator, out=np.full(t, 0.5), where=denominator > 0), 0.0, 1.0)
    mixed = lam * perm + (1 - lam) * ht
    return mixed.mean(axis=0), t_scaled(mixed.std(axis=0, ddof=1) / np.sqrt(n), n - 1)


def chain_shap(
    evaluator: Evaluator,
    budget: int,
    rng: np.random.Generator,
    tolerance: float | None,
    pairs: np.ndarray,
    border: bool,
    seed: int,
    prior: np.ndarray | None = None,
) -> ShapleyResult:
    """Walk chains side by side in rounds until the budget, a limit or the tolerance stops them; then the
    (adjusted) estimate of :func:`chain_estimate`. ``pairs`` are the surrogate's interactions, ``border`` whether
    sizes 1 and ``M - 1`` are enumerated first, ``prior`` coalitions evaluated before (the coarse level's), which
    enter the surrogate's fit. The first rounds are small (2, 2, 4 chains, then :data:`_WALKS`), so that an
    estimate with standard errors comes early."""
    m = evaluator.n_players
    evaluator.total = budget
    design = ChainDesign(m, border=border)
    prior = np.zeros((0, m), dtype=bool) if prior is None else prior
    ends = np.zeros((2, m), dtype=bool)
    ends[1] = True
    first = np.concatenate([ends, design.border_coalitions()]) if design.border else ends
    first = first[evaluator.unknown(first)]
    if len(first):
        evaluator(first, force=True)
    evaluator.use_estimate(lambda adjust: _chain_solution(evaluator, design, pairs, seed, adjust, prior))
    reason = "budget"
    try:
        per_chain = 2 * (m - 1) - (4 if design.border else 0)
        while True:
            walks = min(_WALKS, max(2, len(design.permutations)), (budget - evaluator.done) // per_chain)
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
            if n_complete >= 2:
                evaluator.milestone()
            if tolerance is not None and n_complete >= _TOLERANCE_CHAINS:
                if converged(*_chain_solution(evaluator, design, pairs, seed, False, prior)[:2], tolerance):
                    reason = "tolerance"
                    break
    except LimitReached as stop:
        reason = stop.reason
    values, stderr, adjusted = evaluator.final_estimate(
        lambda: _chain_solution(evaluator, design, pairs, seed, True, prior)
    )
    evaluator.finish()
    return evaluator.result(values, stderr, exact=False, design="chains", reason=reason, adjusted=bool(adjusted.any()))


def _chain_solution(
    evaluator: Evaluator, design: ChainDesign, pairs: np.ndarray, seed: int, adjust: bool, prior: np.ndarray
):
    m = evaluator.n_players
    ends = evaluator.lookup(np.stack([np.zeros(m, bool), np.ones(m, bool)]))
    incomplete = [loop_coalitions(p) for p, done in zip(design.permutations, design.complete) if not done]
    if incomplete:
        rows = np.concatenate(incomplete)
        rows = rows[[row.tobytes() in evaluator.index for row in np.packbits(rows, axis=1)]]
    else:
        rows = np.zeros((0, m), dtype=bool)
    rows = np.concatenate([prior, rows])
    extra = (rows, evaluator.lookup(rows) if len(rows) else np.zeros((0, ends.shape[1])))
    return chain_estimate(design, evaluator.lookup, ends, extra, pairs, seed, adjust)
