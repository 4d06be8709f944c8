"""The game :func:`~segshap.explain.explain` estimates: from a model, an image and targets to the
:class:`PatchEngine` that values any coalition of features, with the features, target segments and ROI it needs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import features as feature_maps
from .engine import DEFAULT_MARGIN, PatchEngine
from .geometry import ModelInput
from .inputs import as_roi_mask, reference_masks, resolve_device, roi_around
from .models import LoadedModel, load_model
from .predict import DEFAULT_BATCH_SIZE, model_labels, prepare, require_predicted
from .tiling import TilingSpec

__all__ = ["ExplanationGame", "explanation_game", "FEATURE_KINDS", "ORGAN_FEATURES", "BASELINES"]

FEATURE_KINDS = ("slic", "fcc", "grid", "organs", "organ_aware")
ORGAN_FEATURES = ("organs", "organ_aware")
"""The feature kinds made from an organ label map."""
BASELINES = ("mean", "min", "zero")

_log = logging.getLogger("segshap")


@dataclass
class ExplanationGame:
    """A model's segmentation of its targets as a cooperative game over features: what :func:`explain` estimates
    the Shapley values of. ``engine.evaluate(coalitions)`` gives the value of any coalitions (``(n, M)`` bool, True
    = feature kept), exactly as full sliding-window inference on the perturbed image would.

    Attributes
    ----------
    engine : PatchEngine
    model : LoadedModel or torch.nn.Module
    prepared : ModelInput
        The image on the model's grid.
    feature_map : np.ndarray
        All features built, on the model's grid (``engine.feature_ids`` are those that can change a value).
    labelmap : np.ndarray or None
        The organ label map on the model's grid (organ features only).
    targets, target_names : tuple
    single : bool
        One target was asked for (values come out as ``(n,)``, not ``(n, 1)``).
    masks, roi : np.ndarray
        The target segments and the ROI on the model's grid.
    support : tuple
        The box of model-grid voxels that can change a value.
    margin : int
    tiling : TilingSpec
        The sliding-window settings.
    device : torch.device
    engine_options : dict
        The remaining options given to the engine.
    baseline : float or np.ndarray
        What a removed feature's voxels become, in the network's input space.
    """

    engine: PatchEngine
    model: object
    prepared: ModelInput
    feature_map: np.ndarray
    labelmap: np.ndarray | None
    targets: tuple
    target_names: tuple
    single: bool
    masks: np.ndarray
    roi: np.ndarray
    support: tuple
    margin: int
    tiling: TilingSpec
    device: torch.device
    engine_options: dict
    baseline: float | np.ndarray = 0.0

    @property
    def n_players(self) -> int:
        """``M``: the features that can change a value, the game's players (``engine.feature_ids``). The
        ``n_features`` given to :func:`explanation_game` is how many were asked for; ``M`` is often fewer."""
        return self.engine.n_features


def explanation_game(
    model: LoadedModel | torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    *,
    target: int | str | Sequence[int | str],
    reference: np.ndarray | None = None,
    roi: np.ndarray | Sequence[tuple[int, int]] | None = None,
    features: str | np.ndarray = "slic",
    n_features: int = 100,
    value: str = "soft_dice",
    baseline: str | float | np.ndarray = "mean",
    device: str = "auto",
    labelmap: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    **engine_options,
) -> ExplanationGame:
    """Everything :func:`explain` sets up before it estimates: the model's input, the features, the target
    segments and ROI, and the :class:`PatchEngine` that evaluates coalitions. Parameters as for :func:`explain`.
    Useful to evaluate chosen coalitions (deletion curves, exact enumeration, other estimators) on the same game.
    """
    device = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=str(device))
    targets, names, single = _targets(model, target)
    _refuse_flat(np.shape(image), channels_last=isinstance(model, LoadedModel))
    network, prepared, tiling_spec = prepare(model, image, affine, engine_options)
    x = prepared.image
    spatial = x.shape[1:]
    margin = engine_options.pop("margin", DEFAULT_MARGIN)
    batch_size = engine_options.get("batch_size", DEFAULT_BATCH_SIZE)

    prediction = None
    needs_labelmap = isinstance(features, str) and features in ORGAN_FEATURES and labelmap is None
    if reference is None or needs_labelmap:
        _log.info("Segmenting the image with the model")
        prediction = model_labels(network, x, tiling_spec, device, batch_size)
    if reference is None:
        require_predicted(prediction, targets, names)
        reference = prediction
    else:
        reference = prepared.to_model_grid(np.asarray(reference))
    masks = reference_masks(reference, spatial, targets)
    labelmap = prediction if labelmap is None else prepared.to_model_grid(np.asarray(labelmap))
    if not isinstance(features, str):
        features = prepared.to_model_grid(np.asarray(features))

    tiling = tiling_spec.over(spatial)
    if roi is None:
        roi = roi_around(masks, margin)
    else:
        roi = prepared.to_model_grid(as_roi_mask(roi, prepared.source.shape))
        if not roi.any():
            raise ValueError("The ROI covers no voxel of the model's grid; give a larger ROI.")
    roi = as_roi_mask(roi, spatial)
    _, padded_support = tiling.windows_reading(tiling.pad(roi, False))
    support = tiling.unpad_box(padded_support)
    _log.info("Building %s features inside the support %s", features if isinstance(features, str) else "given", support)
    feature_map = _features(features, n_features, x, labelmap, support)

    resolved_baseline = _baseline(baseline, x)
    engine = PatchEngine(
        network,
        x,
        feature_map,
        reference=reference,
        target=list(targets),
        value=value,
        roi=roi,
        baseline=resolved_baseline,
        device=device,
        tiling=tiling_spec,
        **engine_options,
    )
    m = engine.n_features
    if m == 0:
        raise ValueError(
            "No feature can change the value: inside the windows that cover the ROI the image equals the baseline. "
            "Choose another baseline."
        )
    return ExplanationGame(
        engine=engine,
        model=model,
        prepared=prepared,
        feature_map=feature_map,
        labelmap=labelmap,
        targets=targets,
        target_names=names,
        single=single,
        masks=masks,
        roi=roi,
        support=support,
        margin=margin,
        tiling=tiling_spec,
        device=device,
        engine_options=engine_options,
        baseline=resolved_baseline,
    )


def _targets(model, target) -> tuple[tuple[int, ...], tuple[str, ...], bool]:
    single = isinstance(target, (int, np.integer, str)) and not isinstance(target, bool)
    requested = [target] if single else list(target)
    if isinstance(model, LoadedModel):
        indices = [model.class_index(t) for t in requested]
        names = [model.classes[i] for i in indices]
    else:
        if any(isinstance(t, str) for t in requested):
            raise ValueError("Targets by name need a model with class names (a path or LoadedModel); pass indices.")
        indices = [int(t) for t in requested]
        names = [f"class {i}" for i in indices]
    return tuple(indices), tuple(names), single


def _refuse_flat(shape: tuple[int, ...], channels_last: bool) -> None:
    """Refuse an image with a single slice along an axis: a 3D model has no volume to read context from (and
    such an image ran for minutes with the defaults)."""
    spatial = shape[:3] if channels_last or len(shape) == 3 else shape[1:]
    if len(spatial) == 3 and min(spatial) < 2:
        axis = "XYZ"[spatial.index(min(spatial))]
        raise ValueError(
            f"The image is a single slice along {axis} (spatial shape {tuple(spatial)}); segshap explains 3D "
            "volumes. Give the whole series (e.g. load the full DICOM series in 3D Slicer and export that volume)."
        )


def _baseline(baseline, x: np.ndarray):
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be a number, an array or one of {BASELINES}, got {baseline!r}.")
        if baseline == "zero":
            return 0.0
        per_channel = [float(c.mean(dtype=np.float64) if baseline == "mean" else c.min()) for c in x]
        if len(per_channel) == 1:
            return per_channel[0]
        return np.broadcast_to(np.asarray(per_channel, np.float32)[:, None, None, None], x.shape).copy()
    return baseline


def _features(kind, asked: int, x: np.ndarray, labelmap, support) -> np.ndarray:
    """The feature map of ``kind`` with about ``asked`` features in the support (the ``n_features`` argument)."""
    if not isinstance(kind, str):
        return np.asarray(kind)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS} or an integer map, got {kind!r}.")
    if isinstance(asked, bool) or not isinstance(asked, (int, np.integer)) or asked < 1:
        raise ValueError(f"n_features must be a positive integer, got {asked!r}.")
    spatial = x.shape[1:]
    volume = math.prod(b - a for a, b in support)
    if kind == "slic":
        return feature_maps.slic(x if len(x) > 1 else x[0], n_segments=asked, support=support)
    if kind == "fcc":
        spacing = (math.sqrt(2) * volume / asked) ** (1 / 3)
        return feature_maps.fcc(spatial, spacing, support=support)
    if kind == "grid":
        return feature_maps.grid(spatial, max(1, round((volume / asked) ** (1 / 3))), support=support)
    if kind == "organs":
        return feature_maps.organs(labelmap, support=support)
    inside = labelmap[tuple(slice(a, b) for a, b in support)]
    regions = len(np.unique(inside))
    return feature_maps.organ_aware(labelmap, x[0], max(1, round(asked / regions)), support=support)
