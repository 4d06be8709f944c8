"""Cooperative games with known Shapley values, in plain NumPy so that the shap reference environment can import
them too (see Testing/helpers/shap_reference.py)."""

from __future__ import annotations

import numpy as np


def additive(n_features: int, seed: int = 0):
    """``v(S) = sum_{i in S} a_i``: ``phi = a``."""
    weights = np.random.default_rng(seed).normal(size=n_features)

    def game(coalitions: np.ndarray) -> np.ndarray:
        return coalitions.astype(np.float64) @ weights

    return game, weights.copy()


def pairwise(n_features: int, seed: int = 0):
    """``v(S) = sum_i a_i + sum_{i<j} b_ij`` over members: ``phi_i = a_i + sum_j b_ij / 2``."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=n_features)
    pairs = np.triu(rng.normal(size=(n_features, n_features)), 1)

    def game(coalitions: np.ndarray) -> np.ndarray:
        z = coalitions.astype(np.float64)
        return z @ weights + np.einsum("ni,ij,nj->n", z, pairs, z)

    return game, weights + (pairs.sum(axis=0) + pairs.sum(axis=1)) / 2


def nonlinear(n_features: int, seed: int = 0):
    """A soft-Dice game shaped like a segmentation value: features add predicted probability inside and outside
    a reference segment through smooth sigmoid responses to main effects and pairwise interactions, and the value
    is ``2 * inside / (inside + outside + 1)``. Every order of interaction is present, the low orders dominating
    as they do when supervoxels act mostly on their neighbourhood; its Shapley values come from enumeration."""
    rng = np.random.default_rng(seed)
    inside_weights, outside_weights = rng.normal(scale=0.4, size=(2, n_features))
    pairs = np.triu(rng.normal(scale=0.4, size=(n_features, n_features)), 1)

    def game(coalitions: np.ndarray) -> np.ndarray:
        z = coalitions.astype(np.float64)
        interaction = np.einsum("ni,ij,nj->n", z, pairs, z)
        inside = 1.0 / (1.0 + np.exp(-(z @ inside_weights + interaction) / 4))
        outside = 0.5 / (1.0 + np.exp(-(z @ outside_weights - interaction) / 4))
        return 2 * inside / (inside + outside + 1.0)

    return game, None


def thresholded(n_features: int, seed: int = 0):
    """Hard Dice and false-positive share of 60 voxels, each switched on when a few features (and a few pairs)
    present push its score past zero, against the voxels the full coalition switches on: thresholds make every
    order of interaction strong, as hard values of a real model do. Two targets; values from enumeration."""
    rng = np.random.default_rng(seed)
    voxels = 60
    reach = rng.normal(size=(n_features, voxels)) * (rng.random((n_features, voxels)) < 0.3)
    pairs = np.triu(rng.normal(scale=0.8, size=(n_features, n_features)), 1)
    paired = rng.random(voxels) < 0.3
    offset = 0.25 * np.abs(reach).sum(axis=0)

    def scores(z):
        return z @ reach + np.einsum("ni,ij,nj->n", z, pairs, z)[:, None] * paired - offset

    reference = scores(np.ones((1, n_features)))[0] > 0

    def game(coalitions: np.ndarray) -> np.ndarray:
        on = scores(coalitions.astype(np.float64)) > 0
        dice = 2 * (on & reference).sum(axis=1) / (on.sum(axis=1) + reference.sum())
        return np.stack([dice, (on & ~reference).sum(axis=1) / voxels], axis=1)

    return game, None


GAMES = {"additive": additive, "pairwise": pairwise, "nonlinear": nonlinear, "thresholded": thresholded}
