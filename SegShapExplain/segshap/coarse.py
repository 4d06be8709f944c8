"""The coarse level of a live explanation: the features merged into a few dozen regions, explained first.

With many features a chain over them is long (``2 (M - 1)`` coalitions: 10,000 with 5,000 supervoxels), so the
first estimate with standard errors would come late. When a run has live updates (:mod:`segshap.anytime`) and more
than :data:`COARSE_FROM` features, :func:`explain_regions` first estimates the Shapley values of the game of
:data:`COARSE_REGIONS` regions merged along the features' adjacency (:mod:`segshap.hierarchy`), with a few chains
over the regions; each region's value is shown shared equally among its features. Its coalitions are coalitions of
the features too: they count in the budget and the limits, and they enter the fine chains' surrogate fit (``prior``
of :func:`segshap.chains.chain_shap`), so the first look is not thrown away. The final values are the features'
own Shapley values, unless a limit or the user stops the run during the coarse level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chains import chain_shap
from .evaluation import Evaluator, Limits, ShapleyResult
from .hierarchy import merge_tree, regions

__all__ = [
    "COARSE_FROM",
    "COARSE_REGIONS",
    "COARSE_CHAINS",
    "COARSE_SHARE",
    "CoarseLevel",
    "coarse_budget",
    "explain_regions",
    "share_among_features",
]

COARSE_FROM = 500
"""Live runs over more features than this start at the coarse level."""

COARSE_REGIONS = 32
"""Regions of the coarse level."""

COARSE_CHAINS = 8
"""Chains over the regions, at most."""

COARSE_SHARE = 0.1
"""The most of the coalition budget the coarse level may take (it needs room for two chains, else it is skipped)."""


@dataclass(frozen=True)
class CoarseLevel:
    """What the coarse level found.

    Attributes
    ----------
    result : ShapleyResult
        Over the regions.
    labels : np.ndarray
        ``(M,)`` each feature's region.
    """

    result: ShapleyResult
    labels: np.ndarray

    @property
    def n_regions(self) -> int:
        return int(self.labels.max()) + 1

    def expand(self, per_region: np.ndarray) -> np.ndarray:
        """``(M, ...)``: each region's entry shared equally among its features."""
        return share_among_features(per_region, self.labels)

    @property
    def finished(self) -> bool:
        """Whether the coarse level ran its course (rather than a limit or the user stopping the run)."""
        return self.result.stop_reason in ("budget", "tolerance")


def share_among_features(per_region: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(M, ...)``: each region's entry (``per_region``: ``(R, ...)``) shared equally among its features."""
    counts = np.bincount(labels, minlength=len(per_region)).astype(np.float64)
    shape = (-1,) + (1,) * (np.ndim(per_region) - 1)
    return np.asarray(per_region)[labels] / counts[labels].reshape(shape)


def coarse_budget(n_players: int, budget: int, spare: int, n_regions: int = COARSE_REGIONS) -> int:
    """Coalitions for the coarse level: :data:`COARSE_CHAINS` chains over the regions within
    :data:`COARSE_SHARE` of the budget and within ``spare``, the coalitions the fine design leaves unused (whole
    chains over the features that the budget holds), so that the first look never costs the final values a chain;
    0 when that holds fewer than two chains or there are too few features."""
    if n_players <= COARSE_FROM:
        return 0
    per_chain = 2 * (n_regions - 1)
    chains = min(COARSE_CHAINS, (min(int(COARSE_SHARE * budget), spare) - 2) // per_chain)
    return 2 + chains * per_chain if chains >= 2 else 0


def explain_regions(evaluator: Evaluator, pairs: np.ndarray, budget: int, seed: int) -> CoarseLevel:
    """Estimate the Shapley values of the regions (chains over them, evaluated through ``evaluator`` as coalitions of
    the features, within its limits) and make the live updates of this level meanwhile.

    Parameters
    ----------
    evaluator : Evaluator
        The run's, with its live updates.
    pairs : np.ndarray
        ``(P, 2)`` touching features, along which regions are merged.
    budget : int
        Coalitions for this level (:func:`coarse_budget`).
    seed : int
    """
    m = evaluator.n_players
    labels = regions(merge_tree(m, pairs), COARSE_REGIONS)
    n_regions = int(labels.max()) + 1
    region_pairs = np.unique(np.sort(labels[pairs], axis=1), axis=0) if len(pairs) else np.zeros((0, 2), np.int64)
    region_pairs = region_pairs[region_pairs[:, 0] != region_pairs[:, 1]]

    def region_values(coalitions: np.ndarray, retain: np.ndarray) -> np.ndarray:
        # The ends come first and always run, as a design's first batch does.
        return evaluator(coalitions[:, labels], retain=retain, force=evaluator.done == 0)

    def expand(per_region: np.ndarray) -> np.ndarray:
        return share_among_features(per_region, labels)

    regional = Evaluator(
        region_values, n_regions, evaluator.batch_size, None, Limits(None, None, None), evaluator.live, expand
    )
    result = chain_shap(regional, budget, np.random.default_rng([seed, 5]), None, region_pairs, False, seed)
    level = CoarseLevel(result, labels)
    if evaluator.live is not None:
        evaluator.live.use(None)  # no more news from this level: the next updates come from the features
        if level.finished:
            values, stderr = (level.expand(a.reshape(n_regions, -1)) for a in (result.values, result.stderr))
            evaluator.live.show(values, stderr, result.adjusted, n_regions)
    return level
