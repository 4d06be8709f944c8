"""Anytime estimates: the Shapley values as they stand while the sampling goes on.

``kernel_shap(..., on_update=, update_every=)`` hands a callback an :class:`Update`: the estimate the run would
return if it stopped at that moment (the same estimator, with its standard errors and efficiency), every
``update_every`` seconds, as soon as the design has its first estimate with standard errors (its first round of
chains), and once more with the final values. :class:`LiveUpdates` decides when one is due and makes it; a courier
thread calls the callback, so that a slow callback never holds up the sampling: while it is busy, newer updates
replace the one waiting and only the latest is delivered.

Stopping: the callback returns ``False``, or the run's ``stop`` event is set from any thread (the worker's stop
request). Sampling then stops before its next batch and the run finishes with the estimate of the last update the
callback was given, so that what the user saw is what the result holds; a :class:`Stop` may name an earlier update
to keep (the one a viewer was showing when the user pressed stop, while a newer one was on its way).

Making an update costs an estimate (a regression, sometimes boosted trees); updates are put off while their cost
so far exceeds :data:`UPDATE_SHARE` of the time elapsed, and an update tries the boosted-tree adjustment only when
that share has room for it (:attr:`Update.adjusted` says whether it was applied).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Update", "LiveUpdates", "Stop", "UPDATE_SHARE", "TOP_COUNT", "top_features"]

UPDATE_SHARE = 0.05
"""The share of the elapsed time that making updates is held to (the live view's whole overhead): checked before
each update, so the first, and one that costs more than the room left, overshoot it."""

TOP_COUNT = 10
"""How many of the largest values :attr:`Update.top_changed` and :attr:`Update.stable_updates` follow."""

ADJUST_FIRST_ROOM = 0.5
"""Seconds of the updates' share that must be unspent before an update first tries the boosted-tree adjustment (it
can take seconds); later it is tried whenever the share has room for what it took the last time."""

LEVELS = ("features", "regions")
"""Where an update's estimate comes from: the features themselves, or the coarse level of regions merged from
them (:mod:`segshap.coarse`), each region's value shared equally among its features."""


@dataclass(frozen=True)
class Update:
    """The estimate while a run goes on.

    Attributes
    ----------
    values, stderr : np.ndarray
        ``(M,)`` or ``(M, T)``: the current estimate as the final result would hold it (NaN standard errors where
        they cannot be estimated yet).
    coalitions : int
        Coalitions evaluated so far.
    forwards : float or None
        Model forwards so far (where the run prices them).
    seconds : float
        Since sampling started (:func:`segshap.explain`: since the call, set-up included).
    fraction : float
        The share of the budget spent: the largest of coalitions, forwards and seconds against their limits.
    top_changed : int
        How many of the current top :data:`TOP_COUNT` (by ``|value|``, per target) were not in the previous update's.
    stable_updates : int
        For how many updates in a row ``top_changed`` has been 0.
    number : int
        1 for the first update.
    level : str
        ``"features"``, or ``"regions"`` for the coarse first look (:data:`LEVELS`).
    regions : int or None
        How many regions, at that level.
    adjusted : bool
        Whether the boosted-tree adjustment was applied to this estimate.
    final : bool
        True for the last update, which holds the final values.
    feature_ids : np.ndarray or None
        The features' ids in the feature map (:func:`segshap.explain`); ``None`` from :func:`kernel_shap`.
    affine : np.ndarray or None
        The voxel-to-RAS affine of :meth:`heatmap`'s grid, where :func:`segshap.explain` was given one.
    """

    values: np.ndarray
    stderr: np.ndarray
    coalitions: int
    forwards: float | None
    seconds: float
    fraction: float
    top_changed: int
    stable_updates: int
    number: int
    level: str = "features"
    regions: int | None = None
    adjusted: bool = False
    final: bool = False
    feature_ids: np.ndarray | None = None
    affine: np.ndarray | None = None
    painter: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def heatmap(self) -> np.ndarray:
        """float32 volume on the image's grid, each voxel the value of its feature, like
        :meth:`segshap.Explanation.heatmap` (``(T, X, Y, Z)`` for several targets)."""
        if self.painter is None:
            raise ValueError("This update comes from kernel_shap, which knows no image: use segshap.explain's.")
        return self.painter(self.values)

    def top(self, count: int = TOP_COUNT) -> np.ndarray:
        """Indices of the ``count`` largest ``|values|`` (of any target), largest first."""
        return top_features(self.values, count)

    def record(self) -> dict:
        """What the report keeps of an update (``explanation.json``'s ``stats["updates"]``)."""
        return {
            "number": self.number,
            "seconds": round(self.seconds, 3),
            "coalitions": self.coalitions,
            "forwards": self.forwards,
            "fraction": round(self.fraction, 4),
            "level": self.level,
            "regions": self.regions,
            "adjusted": self.adjusted,
            "top_changed": self.top_changed,
            "stable_updates": self.stable_updates,
            "final": self.final,
        }


def top_features(values: np.ndarray, count: int = TOP_COUNT) -> np.ndarray:
    """Indices of the ``count`` largest ``|values|`` (rows; the largest over targets for ``(M, T)``), largest first."""
    magnitude = np.abs(np.asarray(values, dtype=np.float64).reshape(len(values), -1)).max(axis=1)
    return np.argsort(-magnitude, kind="stable")[:count]


def _top_sets(values: np.ndarray) -> list[set[int]]:
    columns = np.asarray(values).reshape(len(values), -1)
    return [set(top_features(columns[:, t]).tolist()) for t in range(columns.shape[1])]


class Stop(threading.Event):
    """A stop event that may name the update to keep: :meth:`request` with the number of the update a viewer showed
    (one of the last :data:`KEPT_UPDATES` given to the callback; else the last one is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.keep: int | None = None

    def request(self, keep: int | None = None) -> None:
        self.keep = keep
        self.set()


KEPT_UPDATES = 8
"""Updates given to the callback that a :class:`Stop` may still name."""


Estimate = Callable[[bool], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``estimate(adjust) -> (values (M, T), stderr (M, T), adjusted (T,))``: a design's estimate from what it has."""


class LiveUpdates:
    """When updates are due, what they hold, and their delivery (see the module's description).

    Parameters
    ----------
    on_update : callable
        Called with each :class:`Update` on the courier thread; returning ``False`` stops the sampling.
    every : float
        Seconds between updates.
    stop : threading.Event, optional
        Set it from any thread to stop the sampling as a ``False`` from the callback does.
    """

    def __init__(
        self,
        on_update: Callable[[Update], bool | None],
        every: float,
        stop: threading.Event | None = None,
    ) -> None:
        self.every = every
        self.stop = threading.Event() if stop is None else stop
        self.started = time.perf_counter()
        self.last_at = self.started
        self.spent = 0.0
        self.adjusted_cost: float | None = None
        self.estimate: Estimate | None = None
        self.context: dict = {"level": "features", "regions": None}
        self.expand: Callable[[np.ndarray], np.ndarray] | None = None
        self.previous_top: list[set[int]] | None = None
        self.stable = 0
        self.records: list[dict] = []
        self.evaluator = None
        self.courier = _Courier(on_update, self.stop)

    def attach(self, evaluator) -> None:
        """The run's :class:`~segshap.evaluation.Evaluator`, whose counts and limits the updates report."""
        self.evaluator = evaluator
        evaluator.live = self

    @property
    def stopped(self) -> bool:
        """Whether the user asked the sampling to stop."""
        return self.stop.is_set()

    def use(
        self,
        estimate: Estimate | None,
        regions: int | None = None,
        expand: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Make updates from ``estimate`` from now on: of the features, or of ``regions`` regions whose arrays
        ``expand`` carries to the features; ``None``: no updates until the next estimate is given."""
        self.estimate, self.expand = estimate, expand
        self.context = {"level": "features" if regions is None else "regions", "regions": regions}

    def show(self, values: np.ndarray, stderr: np.ndarray, adjusted: bool, regions: int | None = None) -> None:
        """Post an update of an estimate made elsewhere (``(M, T)``; the coarse level's final one)."""
        self.last_at = time.perf_counter()
        self._post(values, stderr, adjusted, final=False, level="regions" if regions else "features", regions=regions)

    def checkpoint(self, milestone: bool = False) -> None:
        """Called between batches: make and post an update if one is due. ``milestone``: the design has just
        completed a step that gives standard errors (a round of chains), which makes the first update due."""
        self.courier.raise_error()
        if self.estimate is None or self.stopped:
            return
        now = time.perf_counter()
        first = not self.records
        due = (milestone and first) or now - self.last_at >= self.every
        room = UPDATE_SHARE * (now - self.started) - self.spent
        if not due or (not first and room < 0):
            return
        adjust = room >= (ADJUST_FIRST_ROOM if self.adjusted_cost is None else self.adjusted_cost)
        values, stderr, adjusted = self.estimate(adjust)
        cost = time.perf_counter() - now
        if adjust:
            self.adjusted_cost = cost
        self.spent += cost
        self.last_at = time.perf_counter()
        if self.expand is not None:
            values, stderr = self.expand(values), self.expand(stderr)
        self._post(values, stderr, bool(np.any(adjusted)), final=False)

    def finish(self, values: np.ndarray, stderr: np.ndarray, adjusted: bool, regions: int | None = None) -> None:
        """Deliver the final update (``(M, T)`` arrays; ``regions`` when the run ended at the coarse level) and wait
        until the callback has had it."""
        level = "features" if regions is None else "regions"
        self._post(values, stderr, adjusted, final=True, level=level, regions=regions)
        self.courier.close()
        self.courier.raise_error()

    def abandon(self) -> None:
        """The run failed: deliver nothing more."""
        self.courier.close(deliver=False)

    def kept(self) -> Update | None:
        """The update the run finishes with when the user stopped it: the one the :class:`Stop` names, else the
        last one the callback was given."""
        if not self.stopped:
            return None
        wanted = getattr(self.stop, "keep", None)
        return self.courier.history.get(wanted, self.courier.handed)

    def _post(self, values, stderr, adjusted: bool, final: bool, **context) -> None:
        evaluator = self.evaluator
        tops = _top_sets(values)
        changed = (
            len(tops[0]) if self.previous_top is None else max(len(a - b) for a, b in zip(tops, self.previous_top))
        )
        self.stable = self.stable + 1 if self.previous_top is not None and changed == 0 else 0
        self.previous_top = tops
        if not evaluator.value_shape:
            values, stderr = values[:, 0], stderr[:, 0]
        update = Update(
            values=values,
            stderr=stderr,
            coalitions=evaluator.done,
            forwards=evaluator.limits.spent,
            seconds=time.perf_counter() - self.started,
            fraction=_fraction(evaluator, self.started),
            top_changed=changed,
            stable_updates=self.stable,
            number=len(self.records) + 1,
            adjusted=adjusted,
            final=final,
            **{**self.context, **context},
        )
        self.records.append(update.record())
        self.courier.post(update)


def _fraction(evaluator, started: float) -> float:
    """The share of the budget spent: coalitions, forwards and seconds against their limits, the largest."""
    limits = evaluator.limits
    shares = [evaluator.done / max(evaluator.total, 1)]
    if limits.max_forwards and limits.spent is not None:
        shares.append(limits.spent / limits.max_forwards)
    if limits.max_seconds:
        shares.append((time.perf_counter() - limits.started) / limits.max_seconds)
    return float(min(max(shares), 1.0))


class _Courier:
    """Calls the callback on its own thread with the latest update posted; a ``False`` answer (or the stop event)
    ends the delivery of further updates but the final one."""

    def __init__(self, callback: Callable[[Update], bool | None], stop: threading.Event) -> None:
        self.callback, self.stop = callback, stop
        self.pending: Update | None = None
        self.handed: Update | None = None
        self.history: dict[int, Update] = {}
        self.error: BaseException | None = None
        self.closed = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="segshap-updates", daemon=True)
        self.thread.start()

    def post(self, update: Update) -> None:
        with self.condition:
            if self.pending is None or not self.pending.final:
                self.pending = update
            self.condition.notify()

    def close(self, deliver: bool = True) -> None:
        with self.condition:
            self.closed = True
            if not deliver:
                self.pending = None
            self.condition.notify()
        if deliver:
            self.thread.join()

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        while True:
            with self.condition:
                while self.pending is None and not self.closed:
                    self.condition.wait()
                update, self.pending = self.pending, None
                if update is None:
                    return
                if self.stop.is_set() and not update.final:
                    continue  # the run finishes with what the callback was last given
                if not update.final:
                    self.handed = update
                    self.history[update.number] = update
                    self.history.pop(update.number - KEPT_UPDATES, None)
            try:
                answer = self.callback(update)
            except BaseException as error:  # handed to the sampling thread, which raises it
                self.error = error
                self.stop.set()
                return
            if answer is False and not update.final:
                self.stop.set()
