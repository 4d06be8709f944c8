"""The explanation pipeline: from a model, an image and a target class to Shapley values per supervoxel.

:func:`explain` runs the steps in order: build the game (:func:`~segshap.game.explanation_game`: preprocess the
image for the model, find the target segment, choose the region of interest around it, build the features only
where they can change a value, set up the exact :class:`~segshap.engine.PatchEngine`), estimate Shapley values
with :func:`~segshap.estimator.kernel_shap`, check the ranking's faithfulness, and carry everything back to the
image's grid as an :class:`~segshap.explanation.Explanation`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .anytime import Update
from .engine import PatchEngine
from .estimator import AUTO_TOLERANCE, auto_budget, kernel_shap
from .explanation import Explanation, paint
from .faithfulness import CURVE_POINTS, Faithfulness, curve_steps, faithfulness_coalitions, faithfulness_curves
from .features import feature_organs
from .game import explanation_game
from .models import LoadedModel
from .options import ExplainOptions
from .surrogate import adjacent_pairs

__all__ = ["explain", "FAITHFULNESS_SHARE"]

_log = logging.getLogger("segshap")

FAITHFULNESS_SHARE = 0.25
"""The faithfulness curves cost at most this fraction of the estimation's window forwards: a check around the
estimate must not cost more than the estimate (with one step per feature they took 48 of 86 s with 1,200
features, BENCHMARKS.md)."""


def explain(
    model: LoadedModel | torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    *,
    target: int | str | Sequence[int | str],
    reference: np.ndarray | None = None,
    roi: np.ndarray | Sequence[tuple[int, int]] | None = None,
    labelmap: np.ndarray | None = None,
    organ_names: dict[int, str] | None = None,
    affine: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_update: Callable[[Update], bool | None] | None = None,
    update_every: float = 5.0,
    stop: threading.Event | None = None,
    options: ExplainOptions | None = None,
    **option_values,
) -> Explanation:
    """Explain a model's segmentation of a target class with Shapley values of supervoxels.

    Parameters
    ----------
    model : path, LoadedModel or torch.nn.Module
        A TorchScript file with its sidecar (see :func:`segshap.load_model`), a loaded model, or a bare network
        taking the image as it is (give ``patch_size`` etc. among the options).
    image : np.ndarray
        The image as read from disk (``(X, Y, Z)`` or channels last) for a model with preprocessing, or the
        network's ``(X, Y, Z)``/``(C, X, Y, Z)`` input for a bare network.
    target : int, str or sequence
        Class index or name, or several (all explained from the same model evaluations).
    reference : np.ndarray, optional
        The segment to explain (bool mask, or label map whose value ``t`` marks target ``t``). Default: the model's
        prediction on the unperturbed image.
    roi : np.ndarray or box, optional
        Where values are read (bool mask or ``((x0, x1), (y0, y1), (z0, z1))``). Default: the reference's bounding
        box grown by the ``margin`` option (8 voxels).
    labelmap : np.ndarray, optional
        Organ label map for ``"organs"``/``"organ_aware"`` features; default the model's prediction.
    organ_names : dict of int to str, optional
        The names of ``labelmap``'s labels (as a ``.seg.nrrd`` names its segments); default the model's class
        names, which name the labels of its own prediction.
    affine : np.ndarray, optional
        The image's voxel-to-RAS affine. A model that works in another orientation or spacing gets the image
        reoriented and resampled onto its grid (perturbations happen there); ``reference``, ``roi``, ``labelmap``
        and a given feature map are on the image's grid and carried to the model's by nearest neighbour, and the
        outputs come back onto the image's grid. Without it the image is taken to lie on the model's grid.
    progress : callable, optional
        ``progress(done, total)`` in window forwards, what takes the time, the faithfulness curves included:
        ``total`` is ``max_forwards`` when given, else the forwards the remaining coalitions (and the curves'
        share) would take at the pace so far.
    on_update : callable, optional
        ``on_update(update)`` with a :class:`segshap.Update` while the values are estimated: the estimate as the
        result would hold it if the run stopped then (``update.heatmap()`` on the image's grid, ``update.seconds``
        since this call), every ``update_every`` seconds, first as soon as there are standard errors (over more
        than 500 features, first from a few dozen regions of them), last with the final values. It runs on a
        thread of its own: a slow callback does not hold up the run. Returning ``False`` stops the sampling; the run
        then finishes as usual (faithfulness, everything else) with the estimate of that update
        (``stats["stop_reason"] == "user"``). ``stats["updates"]`` lists the updates.
    update_every : float
        Seconds between updates.
    stop : threading.Event, optional
        Set from any thread, it stops the sampling as ``on_update`` returning ``False`` does.
    options : ExplainOptions, optional
        The options as one object (default: every default).
    **option_values
        Options by name, in place of those of ``options``: ``features``, ``n_features``, ``value``, ``nsamples``,
        ``baseline``, ``design``, ``max_forwards``, ``max_seconds``, ``faithfulness``, ``device``, ``seed``... (every
        field of :class:`~segshap.options.ExplainOptions`, which says what each does). ``features`` may also be
        your own integer feature map (ids ``1..N``, 0 = never perturbed) and ``baseline`` an array like the
        network's input.

    Returns
    -------
    Explanation

    Notes
    -----
    ``max_forwards`` and ``max_seconds`` bound the whole call, the faithfulness curves (option ``faithfulness``)
    and, for ``max_seconds``, the set-up included: the sampling stops in time to leave the curves their share.
    The curves cost at most :data:`FAITHFULNESS_SHARE` of the estimation's forwards: each has up to
    :data:`~segshap.faithfulness.CURVE_POINTS` steps (several features per step when there are more features),
    fewer when that costs too much, and they are skipped (``stats["faithfulness_skipped"]`` says why) when even
    two steps per curve would.
    """
    started = time.perf_counter()
    game = explanation_game(
        model, image, target=target, reference=reference, roi=roi, labelmap=labelmap, affine=affine,
        options=options, **option_values,
    )  # fmt: skip
    options, engine, m = game.options, game.engine, game.n_players
    if options.nsamples == "auto":
        budget, tolerance = auto_budget(m), AUTO_TOLERANCE if options.tolerance is None else options.tolerance
    else:
        budget, tolerance = options.nsamples, options.tolerance
    curve_share = FAITHFULNESS_SHARE if options.faithfulness else 0.0
    _log.info("Estimating the Shapley value of each of %d features (up to %s samples)", m, f"{budget:,}")
    feature_map = np.where(np.isin(game.feature_map, engine.feature_ids), game.feature_map, 0).astype(np.int32)
    image_feature_map = game.prepared.to_image_grid(feature_map)
    forwards_before = engine.stats["patch_forwards"]
    estimation_started = time.perf_counter()
    set_up = estimation_started - started
    report = None if progress is None else _ForwardProgress(progress, engine, options.max_forwards, curve_share)
    result = kernel_shap(
        engine.evaluate,
        m,
        budget,
        seed=options.seed,
        tolerance=tolerance,
        batch_size=64,
        progress=None if report is None else report.estimation,
        design=options.design,
        forward_cost=engine.forward_cost,
        max_forwards=None if options.max_forwards is None else options.max_forwards / (1 + curve_share),
        max_seconds=_estimation_seconds(options.max_seconds, curve_share, estimation_started - started),
        interactions=lambda: adjacent_pairs(game.feature_map, engine.feature_ids),
        on_update=None if on_update is None else _on_image_grid(on_update, game, image_feature_map, affine, set_up),
        update_every=update_every,
        stop=stop,
    )
    forwards = engine.stats["patch_forwards"] - forwards_before
    estimation_seconds = time.perf_counter() - estimation_started
    curves, skipped = (), None
    if options.faithfulness:
        allowed = FAITHFULNESS_SHARE * forwards
        if options.max_forwards is not None:
            allowed = min(allowed, options.max_forwards - forwards)
        seconds_left = None if options.max_seconds is None else options.max_seconds - (time.perf_counter() - started)
        curves, skipped = _faithfulness(
            engine,
            result.values,
            options.seed,
            max_forwards=allowed,
            max_seconds=seconds_left,
            seconds_per_forward=estimation_seconds / max(forwards, 1),
            report=report,
        )
    faithfulness_seconds = time.perf_counter() - estimation_started - estimation_seconds
    if report is not None:
        report.finish()

    organ_labels = feature_organs(feature_map, game.labelmap)[engine.feature_ids] if game.organ_features else None
    hidden = np.setdiff1d(engine.feature_ids, image_feature_map)
    if hidden.size:
        _log.warning(
            "%d of %d features are smaller than the image's voxels and show on no image voxel (the model's grid is "
            "finer than the image's); explanation.json lists them all",
            hidden.size,
            m,
        )
    values, stderr = result.values, result.stderr
    base, full = result.base_value, result.full_value
    if game.single:
        values, stderr, base, full = values[:, 0], stderr[:, 0], float(base[0]), float(full[0])
    stats = {
        **engine.stats,
        "evaluations": result.n_evaluations,
        "budget": budget,
        "design": result.design,
        "tree_adjusted": result.adjusted,
        "stop_reason": result.stop_reason,
        "level": "features" if result.regions is None else "regions",
        "regions": result.regions,
        "updates": [{**record, "seconds": round(record["seconds"] + set_up, 3)} for record in result.updates],
        "estimation_forwards": forwards,
        "forwards_per_coalition": forwards / max(result.n_evaluations, 1),
        "estimation_seconds": estimation_seconds,
        "faithfulness_forwards": sum(c.forwards for c in curves),
        "faithfulness_seconds": faithfulness_seconds,
        "faithfulness_skipped": skipped,
        "seconds": time.perf_counter() - started,
    }
    display = np.asarray(image, dtype=np.float32)
    display = display if display.ndim == 3 else (display[..., 0] if isinstance(game.model, LoadedModel) else display[0])
    return Explanation(
        values=values,
        stderr=stderr,
        feature_ids=engine.feature_ids.copy(),
        feature_map=image_feature_map,
        base_value=base,
        full_value=full,
        stats=stats,
        targets=game.targets,
        target_names=game.target_names,
        settings=_settings(game, tolerance),
        image=display,
        reference=game.prepared.to_image_grid(game.masks),
        roi=game.prepared.to_image_grid(game.roi),
        organ_labels=organ_labels,
        class_names=_organ_names(organ_names, game.model),
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        exact=result.exact,
        versions=_versions(),
        model_feature_map=feature_map,
        model_affine=game.prepared.grid.affine,
        faithfulness=curves,
    )


def _on_image_grid(
    on_update: Callable[[Update], bool | None], game, image_feature_map: np.ndarray, affine, set_up: float
) -> Callable[[Update], bool | None]:
    """``on_update`` given the updates as :func:`explain` describes them: one value per feature for a single
    target, the features' ids, the heatmap on the image's grid (and its affine), the seconds since the call (the
    set-up's ``set_up`` seconds added to the sampling's)."""
    ids = game.engine.feature_ids.copy()
    affine = None if affine is None else np.asarray(affine, dtype=np.float64)

    def relay(update: Update) -> bool | None:
        values, stderr = update.values, update.stderr
        if game.single:
            values, stderr = values[:, 0], stderr[:, 0]
        return on_update(
            dataclasses.replace(
                update,
                values=values,
                stderr=stderr,
                seconds=update.seconds + set_up,
                feature_ids=ids,
                affine=affine,
                painter=lambda shown: paint(shown, ids, image_feature_map),
            )
        )

    return relay


def _settings(game, tolerance: float | None) -> dict:
    """Everything that determined the result (``explanation.json``'s ``settings``): the options as used, the
    targets, the boxes of the ROI and the support, and the model's format."""
    options = game.options.to_dict()
    return {
        **options,
        "target": list(game.targets),
        "features": "given" if game.features_given else options["features"],
        "baseline": "array" if game.baseline_given else options["baseline"],
        "foreground": "array" if game.foreground_given else options["foreground"],
        "tolerance": tolerance,
        "device": str(game.device),
        "roi_box": [list(b) for b in game.engine.roi_box],
        "support_box": [list(b) for b in game.support],
        "model_format": game.model.format if isinstance(game.model, LoadedModel) else "network",
        **game.tiling_spec.to_dict(),
    }


def _estimation_seconds(max_seconds: float | None, curve_share: float, set_up: float) -> float | None:
    """The sampling's time limit: the run's, less the set-up, with the curves' share left over (at least the
    sampling's first batch runs whatever this says)."""
    if max_seconds is None:
        return None
    return max(max_seconds / (1 + curve_share) - set_up, 1e-3)


def _faithfulness(
    engine: PatchEngine,
    values: np.ndarray,
    seed: int,
    *,
    max_forwards: float,
    max_seconds: float | None,
    seconds_per_forward: float,
    report: _ForwardProgress | None,
) -> tuple[tuple[Faithfulness, ...], str | None]:
    """Deletion and insertion curves of each target's ranking (``values``: ``(M, T)``) with their forwards, at the
    most points per curve (up to :data:`CURVE_POINTS`) whose forwards fit ``max_forwards`` and, at the estimation's
    pace, ``max_seconds``; or no curves and the reason."""
    m, targets = engine.n_players, values.shape[1]
    for points in _point_counts(m):
        steps = curve_steps(m, points)
        coalitions = np.concatenate(
            [faithfulness_coalitions(values[:, t], steps=steps, seed=seed) for t in range(targets)]
        )
        cost = engine.forward_cost(coalitions)
        if cost <= max_forwards and (max_seconds is None or cost * seconds_per_forward <= max_seconds):
            break
    else:
        limit = f"{max(max_forwards, 0):.0f} window forwards"
        limit += "" if max_seconds is None else f" and {max(max_seconds, 0):.1f} s"
        reason = (
            f"even {len(steps) - 1} steps per curve would cost {cost} window forwards; {limit} were left for them "
            f"(at most {FAITHFULNESS_SHARE:.0%} of the estimation's forwards, within max_forwards and max_seconds)"
        )
        _log.warning("Faithfulness curves skipped: %s", reason)
        return (), reason
    _log.info(
        "Checking faithfulness: the score as the features are removed and added in order of value (%d points)",
        len(steps),
    )
    if report is not None:
        report.curves_expected(cost)
    evaluate = engine.evaluate if report is None else report.curve_evaluation(engine.evaluate)
    curves = []
    for column in range(targets):
        before = engine.stats["patch_forwards"]
        found = faithfulness_curves(evaluate, values[:, column], steps=steps, column=column, seed=seed)
        curves.append(dataclasses.replace(found, forwards=engine.stats["patch_forwards"] - before))
    return tuple(curves), None


def _point_counts(n_players: int) -> list[int]:
    """Steps per curve to try, most first: :data:`CURVE_POINTS` (at most ``M``), halved down to 2."""
    counts, points = [], min(CURVE_POINTS, n_players)
    while True:
        counts.append(points)
        if points <= 2:
            return counts
        points = max(points // 2, 2)


class _ForwardProgress:
    """Turns the estimator's ``(coalitions done, budget)`` and the curves' evaluations into ``(window forwards
    done, expected in all)``: the estimation's forwards at the pace so far plus the curves' share until the curves
    are priced, then their price."""

    def __init__(
        self, progress: Callable[[int, int], None], engine: PatchEngine, max_forwards: int | None, curve_share: float
    ) -> None:
        self.progress, self.engine, self.max_forwards, self.curve_share = progress, engine, max_forwards, curve_share
        self.before = engine.stats["patch_forwards"]
        self.curves_total = 0

    def _done(self) -> int:
        return self.engine.stats["patch_forwards"] - self.before

    def estimation(self, done: int, total: int) -> None:
        forwards = self._done()
        if self.max_forwards is not None:
            expected = self.max_forwards
        else:
            expected = (forwards + (total - done) * forwards / max(done, 1)) * (1 + self.curve_share)
        self.progress(forwards, int(round(max(expected, forwards))))

    def finish(self) -> None:
        self.progress(self._done(), self._done())

    def curves_expected(self, cost: int) -> None:
        self.curves_total = self._done() + cost

    def curve_evaluation(self, evaluate: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        def evaluated(coalitions: np.ndarray) -> np.ndarray:
            values = evaluate(coalitions)
            self.progress(self._done(), max(self.curves_total, self._done()))
            return values

        return evaluated


def _versions() -> dict:
    import monai

    from .version import __version__

    return {
        "segshap": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _organ_names(given: dict[int, str] | None, model) -> dict[int, str]:
    """The names of the organ labels: those given with the label map, else the model's class names."""
    if given is not None:
        return {int(label): str(name) for label, name in given.items()}
    return dict(model.classes) if isinstance(model, LoadedModel) else {}
