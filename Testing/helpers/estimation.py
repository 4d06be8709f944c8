"""What the estimator tests share: exact values by enumeration, and a game that records how it was called."""

from __future__ import annotations

import numpy as np

from segshap.estimator import shapley_from_enumeration


def enumerated_shapley(game, n_features: int) -> np.ndarray:
    codes = np.arange(2**n_features)
    coalitions = ((codes[:, None] >> np.arange(n_features)) & 1).astype(bool)
    return shapley_from_enumeration(coalitions, game(coalitions))


class Recorder:
    """Wraps a game and keeps every batch it was called with."""

    def __init__(self, game) -> None:
        self.game, self.batches = game, []

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        self.batches.append(coalitions.copy())
        return self.game(coalitions)

    @property
    def coalitions(self) -> np.ndarray:
        return np.concatenate(self.batches)
