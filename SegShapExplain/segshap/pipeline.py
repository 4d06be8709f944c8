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
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .engine import PatchEngine
from .estimator import AUTO_TOLERANCE, auto_budget, kernel_shap
from .explanation import Explanation
from .faithfulness import Faithfulness, faithfulness_curves
from .features import feature_organs
from .game import explanation_game
from .models import LoadedModel
from .options import ExplainOptions
from .surrogate import adjacent_pairs

__all__ = ["explain"]

_log = logging.getLogger("segshap")


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
        ``progress(done, total)`` in window forwards, what takes the time: ``total`` is ``max_forwards`` when given,
        else the forwards the remaining coalitions would take at the pace so far.
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
    The faithfulness curves (option ``faithfulness``) cost ``4 (M + 1)`` coalitions per target, each one feature
    away from the one before, so each reruns only that feature's windows. Their forwards
    (``stats["faithfulness_forwards"]``) are not limited by ``max_forwards`` or ``max_seconds``.
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
    _log.info("Estimating Shapley values of %d features from up to %d coalitions", m, budget)
    forwards_before = engine.stats["patch_forwards"]
    estimation_started = time.perf_counter()
    result = kernel_shap(
        engine.evaluate,
        m,
        budget,
        seed=options.seed,
        tolerance=tolerance,
        batch_size=64,
        progress=None if progress is None else _forward_progress(progress, engine, options.max_forwards),
        design=options.design,
        forward_cost=engine.forward_cost,
        max_forwards=options.max_forwards,
        max_seconds=options.max_seconds,
        interactions=lambda: adjacent_pairs(game.feature_map, engine.feature_ids),
    )
    forwards = engine.stats["patch_forwards"] - forwards_before
    estimation_seconds = time.perf_counter() - estimation_started
    curves = _faithfulness(engine, result.values, options.seed) if options.faithfulness else ()
    faithfulness_seconds = time.perf_counter() - estimation_started - estimation_seconds

    feature_map = np.where(np.isin(game.feature_map, engine.feature_ids), game.feature_map, 0).astype(np.int32)
    organ_labels = feature_organs(feature_map, game.labelmap)[engine.feature_ids] if game.organ_features else None
    image_feature_map = game.prepared.to_image_grid(feature_map)
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
        "estimation_forwards": forwards,
        "forwards_per_coalition": forwards / max(result.n_evaluations, 1),
        "estimation_seconds": estimation_seconds,
        "faithfulness_forwards": sum(c.forwards for c in curves),
        "faithfulness_seconds": faithfulness_seconds,
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


def _settings(game, tolerance: float | None) -> dict:
    """Everything that determined the result (``explanation.json``'s ``settings``): the options as used, the
    targets, the boxes of the ROI and the support, and the model's format."""
    options = game.options.to_dict()
    return {
        **options,
        "target": list(game.targets),
        "features": "given" if game.features_given else options["features"],
        "baseline": "array" if game.baseline_given else options["baseline"],
        "tolerance": tolerance,
        "device": str(game.device),
        "roi_box": [list(b) for b in game.engine.roi_box],
        "support_box": [list(b) for b in game.support],
        "model_format": game.model.format if isinstance(game.model, LoadedModel) else "network",
        **game.tiling_spec.to_dict(),
    }


def _faithfulness(engine: PatchEngine, values: np.ndarray, seed: int) -> tuple[Faithfulness, ...]:
    """Deletion and insertion curves of each target's ranking (``values``: ``(M, T)``), with their forwards."""
    _log.info("Checking faithfulness: deletion and insertion curves over %d features", engine.n_players)
    curves = []
    for column in range(values.shape[1]):
        before = engine.stats["patch_forwards"]
        found = faithfulness_curves(engine.evaluate, values[:, column], column=column, seed=seed)
        curves.append(dataclasses.replace(found, forwards=engine.stats["patch_forwards"] - before))
    return tuple(curves)


def _forward_progress(progress: Callable[[int, int], None], engine: PatchEngine, max_forwards: int | None):
    """Turns the estimator's ``(coalitions done, budget)`` into ``(window forwards done, expected in all)``."""
    before = engine.stats["patch_forwards"]

    def report(done: int, total: int) -> None:
        forwards = engine.stats["patch_forwards"] - before
        if max_forwards is not None:
            expected = max_forwards
        else:
            expected = forwards + (total - done) * forwards / max(done, 1)
        progress(forwards, int(round(max(expected, forwards))) if done < total else forwards)

    return report


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
