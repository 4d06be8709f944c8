"""Faithfulness of a ranking: does the value fall fastest when the features ranked first are removed?

The deletion curve starts from every feature on and switches features off one at a time in the order of a ranking
(largest value first); the insertion curve starts from every feature off and switches them on in the same order.
A faithful explanation makes the deletion curve drop early (small area under it) and the insertion curve rise early
(large area). The same curves for a random ranking say what "early" means on this game.

Consecutive coalitions of a curve differ in one feature, so with :class:`~segshap.engine.PatchEngine` each step
reruns only the windows that feature reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Faithfulness", "faithfulness_curves", "ranking_curves"]


def ranking_curves(
    evaluate: Callable[[np.ndarray], np.ndarray], order: np.ndarray, *, column: int = 0, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves of one ranking.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(coalitions)`` for a ``(n, M)`` bool array returns ``(n,)`` or ``(n, T)`` values.
    order : np.ndarray
        ``(M,)`` feature indices, the first one removed (deletion) or added (insertion) first.
    column : int
        Which target's value to read when ``evaluate`` returns several.
    batch_size : int
        Coalitions per call of ``evaluate``.

    Returns
    -------
    deletion, insertion : np.ndarray
        ``(M + 1,)`` each: the value after ``k`` steps, ``k = 0 .. M``.
    """
    order = np.asarray(order)
    m = order.size
    if sorted(order.tolist()) != list(range(m)):
        raise ValueError(f"order must be a permutation of 0..{m - 1}.")
    steps = np.arange(m + 1)[:, None] > np.argsort(order)[None, :]  # (M + 1, M): feature already taken at step k
    coalitions = np.concatenate([~steps, steps])
    values = [
        np.asarray(evaluate(coalitions[i : i + batch_size]), dtype=np.float64)
        for i in range(0, len(coalitions), batch_size)
    ]
    curve = np.concatenate(values)
    curve = curve[:, column] if curve.ndim == 2 else curve
    return curve[: m + 1], curve[m + 1 :]


def _area(curve: np.ndarray) -> float:
    """Area under a curve over the fraction of features taken, 0 .. 1 (in units of the value)."""
    return float(np.trapezoid(curve, dx=1 / max(curve.size - 1, 1)))


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves of an explanation's ranking and of one random ranking.

    Attributes
    ----------
    deletion, insertion : np.ndarray
        ``(M + 1,)`` the value after switching off (on) the ``k`` features of largest value.
    random_deletion, random_insertion : np.ndarray
        The same for a random order of the features.
    forwards : int
        Window forwards the curves cost (0 when not measured).
    """

    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray
    forwards: int = 0

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve over the fraction of features removed (lower: more faithful)."""
        return _area(self.deletion)

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve over the fraction of features added (higher: more faithful)."""
        return _area(self.insertion)

    @property
    def random_deletion_auc(self) -> float:
        return _area(self.random_deletion)

    @property
    def random_insertion_auc(self) -> float:
        return _area(self.random_insertion)

    def to_dict(self) -> dict:
        """The ``faithfulness`` entry of ``explanation.json``."""
        return {
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "random_deletion_auc": self.random_deletion_auc,
            "random_insertion_auc": self.random_insertion_auc,
            "deletion": self.deletion.tolist(),
            "insertion": self.insertion.tolist(),
            "random_deletion": self.random_deletion.tolist(),
            "random_insertion": self.random_insertion.tolist(),
            "forwards": self.forwards,
        }

    @classmethod
    def from_dict(cls, entry: dict) -> Faithfulness:
        curves = {
            k: np.asarray(entry[k], dtype=np.float64)
            for k in ("deletion", "insertion", "random_deletion", "random_insertion")
        }
        return cls(**curves, forwards=int(entry.get("forwards", 0)))

    def summary(self) -> str:
        """One line for a status bar or a log."""
        return (
            f"deletion AUC {self.deletion_auc:.3g} (random order {self.random_deletion_auc:.3g}), "
            f"insertion AUC {self.insertion_auc:.3g} (random {self.random_insertion_auc:.3g})"
        )


def faithfulness_curves(
    evaluate: Callable[[np.ndarray], np.ndarray],
    values: np.ndarray,
    *,
    column: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> Faithfulness:
    """Deletion and insertion curves of the ranking by ``values`` and of one random ranking.

    Parameters
    ----------
    evaluate : callable
        The game (see :func:`ranking_curves`); ``M`` coalitions per curve plus the two ends are evaluated.
    values : np.ndarray
        ``(M,)`` the attribution of each feature; ties keep the features' order.
    column, batch_size
        See :func:`ranking_curves`.
    seed : int
        Seed of the random ranking.

    Returns
    -------
    Faithfulness
        With ``forwards`` 0: the caller knows what its game counts.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one value per feature, got shape {values.shape}.")
    ranked = np.argsort(-values, kind="stable")
    shuffled = np.random.default_rng(seed).permutation(values.size)
    deletion, insertion = ranking_curves(evaluate, ranked, column=column, batch_size=batch_size)
    random_deletion, random_insertion = ranking_curves(evaluate, shuffled, column=column, batch_size=batch_size)
    return Faithfulness(deletion, insertion, random_deletion, random_insertion)
