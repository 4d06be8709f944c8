"""Faithfulness of a ranking: does the value fall fastest when the features ranked first are removed?

The deletion curve starts from every feature on and switches features off in the order of a ranking (largest value
first); the insertion curve starts from every feature off and switches them on in the same order. A faithful
explanation makes the deletion curve drop early (small area under it) and the insertion curve rise early (large
area). The same curves for a random ranking say what "early" means on this game.

A curve has a fixed number of points (:data:`CURVE_POINTS`): with more features than points, each step switches
several features, so that the curves' cost does not grow with the number of features. Consecutive coalitions of a
curve differ in one step's features, so with :class:`~segshap.engine.PatchEngine` each step reruns only the windows
those features reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CURVE_POINTS",
    "Faithfulness",
    "curve_steps",
    "faithfulness_coalitions",
    "faithfulness_curves",
    "ranking_curves",
]

CURVE_POINTS = 20
"""Steps per curve at most: the curves' area is read at 21 points, enough for an area to two digits, whatever the
number of features."""


def curve_steps(n_players: int, points: int = CURVE_POINTS) -> np.ndarray:
    """How many features are taken at each point of a curve: ``0 .. M`` in ``points`` steps as equal as they can
    be (one feature per step when ``M <= points``)."""
    if n_players < 1 or points < 1:
        raise ValueError(f"A curve needs at least one feature and one step, got M={n_players}, points={points}.")
    return np.unique(np.round(np.linspace(0, n_players, min(points, n_players) + 1)).astype(np.int64))


def _check_order(order: np.ndarray) -> np.ndarray:
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(order.size)):
        raise ValueError(f"order must be a permutation of 0..{order.size - 1}.")
    return order


def ranking_coalitions(order: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
    """The coalitions of one ranking's deletion curve, then of its insertion curve: ``(2 S, M)`` bool for the ``S``
    points of ``steps`` (default every feature count ``0 .. M``)."""
    order = _check_order(order)
    steps = np.arange(order.size + 1) if steps is None else np.asarray(steps)
    taken = steps[:, None] > np.argsort(order)[None, :]  # (S, M): feature already taken at this point
    return np.concatenate([~taken, taken])


def ranking_curves(
    evaluate: Callable[[np.ndarray], np.ndarray],
    order: np.ndarray,
    *,
    steps: np.ndarray | None = None,
    column: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves of one ranking.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(coalitions)`` for a ``(n, M)`` bool array returns ``(n,)`` or ``(n, T)`` values.
    order : np.ndarray
        ``(M,)`` feature indices, the first one removed (deletion) or added (insertion) first.
    steps : np.ndarray, optional
        How many features are taken at each point (:func:`curve_steps`); default every count ``0 .. M``.
    column : int
        Which target's value to read when ``evaluate`` returns several.
    batch_size : int
        Coalitions per call of ``evaluate``.

    Returns
    -------
    deletion, insertion : np.ndarray
        The value at each point of ``steps`` (``(M + 1,)`` each by default).
    """
    coalitions = ranking_coalitions(order, steps)
    values = [
        np.asarray(evaluate(coalitions[i : i + batch_size]), dtype=np.float64)
        for i in range(0, len(coalitions), batch_size)
    ]
    curve = np.concatenate(values)
    curve = curve[:, column] if curve.ndim == 2 else curve
    half = len(coalitions) // 2
    return curve[:half], curve[half:]


def _area(curve: np.ndarray, steps: np.ndarray | None) -> float:
    """Area under a curve over the fraction of features taken, 0 .. 1 (in units of the value)."""
    if steps is None or curve.size < 2:
        return float(np.trapezoid(curve, dx=1 / max(curve.size - 1, 1)))
    return float(np.trapezoid(curve, steps / steps[-1]))


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves of an explanation's ranking and of one random ranking.

    Attributes
    ----------
    deletion, insertion : np.ndarray
        The value after switching off (on) the ``k`` features of largest value, for each ``k`` of ``steps``.
    random_deletion, random_insertion : np.ndarray
        The same for a random order of the features.
    forwards : int
        Window forwards the curves cost (0 when not measured).
    steps : np.ndarray, optional
        How many features are taken at each point (default one point per feature count, ``0 .. M``).
    """

    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray
    forwards: int = 0
    steps: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.steps is None:
            object.__setattr__(self, "steps", np.arange(np.asarray(self.deletion).size))

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve over the fraction of features removed (lower: more faithful)."""
        return _area(self.deletion, self.steps)

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve over the fraction of features added (higher: more faithful)."""
        return _area(self.insertion, self.steps)

    @property
    def random_deletion_auc(self) -> float:
        return _area(self.random_deletion, self.steps)

    @property
    def random_insertion_auc(self) -> float:
        return _area(self.random_insertion, self.steps)

    @property
    def fractions(self) -> np.ndarray:
        """The fraction of features taken at each point, ``0 .. 1``."""
        return self.steps / max(int(self.steps[-1]), 1)

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
            "steps": self.steps.tolist(),
            "forwards": self.forwards,
        }

    @classmethod
    def from_dict(cls, entry: dict) -> Faithfulness:
        curves = {
            k: np.asarray(entry[k], dtype=np.float64)
            for k in ("deletion", "insertion", "random_deletion", "random_insertion")
        }
        steps = np.asarray(entry["steps"], dtype=np.int64) if "steps" in entry else None
        return cls(**curves, forwards=int(entry.get("forwards", 0)), steps=steps)

    def summary(self) -> str:
        """One line for a status bar or a log."""
        return (
            f"deletion AUC {self.deletion_auc:.3g} (random order {self.random_deletion_auc:.3g}), "
            f"insertion AUC {self.insertion_auc:.3g} (random {self.random_insertion_auc:.3g})"
        )


def _orders(values: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ranking by value (ties keep the features' order) and the random ranking of ``seed``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one value per feature, got shape {values.shape}.")
    return np.argsort(-values, kind="stable"), np.random.default_rng(seed).permutation(values.size)


def faithfulness_coalitions(values: np.ndarray, *, steps: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Every coalition :func:`faithfulness_curves` evaluates, in its order (to price them before running them)."""
    return np.concatenate([ranking_coalitions(order, steps) for order in _orders(values, seed)])


def faithfulness_curves(
    evaluate: Callable[[np.ndarray], np.ndarray],
    values: np.ndarray,
    *,
    steps: np.ndarray | None = None,
    column: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> Faithfulness:
    """Deletion and insertion curves of the ranking by ``values`` and of one random ranking.

    Parameters
    ----------
    evaluate : callable
        The game (see :func:`ranking_curves`); ``4 len(steps)`` coalitions are evaluated, the ends included.
    values : np.ndarray
        ``(M,)`` the attribution of each feature; ties keep the features' order.
    steps : np.ndarray, optional
        How many features are taken at each point (:func:`curve_steps`); default every count ``0 .. M``.
    column, batch_size
        See :func:`ranking_curves`.
    seed : int
        Seed of the random ranking.

    Returns
    -------
    Faithfulness
        With ``forwards`` 0: the caller knows what its game counts.
    """
    ranked, shuffled = _orders(values, seed)
    steps = np.arange(ranked.size + 1) if steps is None else np.asarray(steps, dtype=np.int64)
    deletion, insertion = ranking_curves(evaluate, ranked, steps=steps, column=column, batch_size=batch_size)
    random_deletion, random_insertion = ranking_curves(
        evaluate, shuffled, steps=steps, column=column, batch_size=batch_size
    )
    return Faithfulness(deletion, insertion, random_deletion, random_insertion, steps=steps)
