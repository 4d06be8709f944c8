"""The game :func:`~segshap.explain` estimates: from a model, an image and targets to the
:class:`PatchEngine` that values any coalition of features, with the features, target segments and ROI it needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .engine import PatchEngine
from .features import FEATURE_WORDS, ORGAN_FEATURES, build_features
from .foreground import foreground_mask
from .geometry import ModelInput
from .inference import model_labels, prepare, require_predicted
from .inputs import (
    ArgumentError,
    as_roi_mask,
    reference_masks,
    resolve_baseline,
    resolve_device,
    roi_around,
    target_list,
)
from .io import read_labels
from .models import LoadedModel, load_model
from .options import ExplainOptions, split_arrays
from .tiling import TilingSpec

__all__ = ["ExplanationGame", "explanation_game"]

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
    options : ExplainOptions
        The options the game was made with.
    prepared : ModelInput
        The image on the model's grid.
    feature_map : np.ndarray
        All features built, on the model's grid (``engine.feature_ids`` are those that can change a value).
    features_given, baseline_given, foreground_given : bool
        Whether the feature map, the baseline or the foreground was given as an array (in place of the options'
        names).
    foreground : np.ndarray or None
        Where features may be, on the model's grid (``None``: everywhere); see the ``foreground`` option.
    organ_features : bool
        Whether the features are organs or organ-aware supervoxels of :attr:`labelmap`.
    labelmap : np.ndarray or None
        The organ label map on the model's grid (organ features only).
    targets, target_names : tuple
    single : bool
        One target was asked for (values come out as ``(n,)``, not ``(n, 1)``).
    masks, roi : np.ndarray
        The target segments and the ROI on the model's grid.
    support : tuple
        The box of model-grid voxels that can change a value.
    tiling_spec : TilingSpec
        The sliding-window settings.
    device : torch.device
    baseline : float or np.ndarray
        What a removed feature's voxels become, in the network's input space.
    """

    engine: PatchEngine
    model: object
    options: ExplainOptions
    prepared: ModelInput
    feature_map: np.ndarray
    features_given: bool
    baseline_given: bool
    foreground_given: bool
    foreground: np.ndarray | None
    organ_features: bool
    labelmap: np.ndarray | None
    targets: tuple
    target_names: tuple
    single: bool
    masks: np.ndarray
    roi: np.ndarray
    support: tuple
    tiling_spec: TilingSpec
    device: torch.device
    baseline: float | np.ndarray = 0.0

    @property
    def n_players(self) -> int:
        """``M``: the features that can change a value, the game's players (``engine.feature_ids``). The
        ``n_features`` option is how many were asked for; ``M`` is often fewer."""
        return self.engine.n_players


def explanation_game(
    model: LoadedModel | torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    *,
    target: int | str | Sequence[int | str],
    reference: np.ndarray | None = None,
    roi: np.ndarray | Sequence[tuple[int, int]] | None = None,
    labelmap: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    options: ExplainOptions | None = None,
    **option_values,
) -> ExplanationGame:
    """Everything :func:`explain` sets up before it estimates: the model's input, the features, the target
    segments and ROI, and the :class:`PatchEngine` that evaluates coalitions. Parameters as for :func:`explain`.
    Useful to evaluate chosen coalitions (deletion curves, exact enumeration, other estimators) on the same game.
    """
    values, arrays = split_arrays(option_values)
    given_features, given_baseline = arrays.get("features"), arrays.get("baseline")
    options = ExplainOptions.given(options, values)
    device = resolve_device(options.device)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=str(device))
    targets, names, single = _targets(model, target)
    _refuse_flat(np.shape(image), channels_last=isinstance(model, LoadedModel))
    network, prepared, tiling_spec = prepare(model, image, affine, options.tiling_settings())
    x = prepared.image
    spatial = x.shape[1:]

    prediction = None
    organ_features = given_features is None and options.features in ORGAN_FEATURES
    if reference is None or (organ_features and labelmap is None):
        _log.info("Segmenting the image with the model")
        prediction = model_labels(network, x, tiling_spec, device, options.batch_size)
    if reference is None:
        require_predicted(prediction, targets, names)
        reference = prediction
    else:
        reference = prepared.to_model_grid(np.asarray(reference))
    masks = reference_masks(reference, spatial, targets)
    labelmap = prediction if labelmap is None else prepared.to_model_grid(np.asarray(labelmap))

    tiling = tiling_spec.over(spatial)
    if roi is None:
        roi = roi_around(masks, options.margin)
    else:
        roi = prepared.to_model_grid(as_roi_mask(roi, prepared.source.shape))
        if not roi.any():
            raise ValueError("The ROI covers no voxel of the model's grid; give a larger ROI.")
    roi = as_roi_mask(roi, spatial)
    _, padded_support = tiling.windows_reading(tiling.pad(roi, False))
    support = tiling.unpad_box(padded_support)
    foreground = None
    if given_features is None:
        foreground = _foreground(options.foreground, arrays.get("foreground"), prepared, options.features == "organs")
        _log.info(
            "Building %s in the part of the image that can change the result (voxels %s)",
            "organs"
            if options.features == "organs"
            else f"about {options.n_features} {FEATURE_WORDS[options.features]}",
            " x ".join(f"{a}-{b}" for a, b in support),
        )
        feature_map = build_features(options.features, x, labelmap, support, options.n_features, foreground)
    else:
        feature_map = prepared.to_model_grid(np.asarray(given_features))

    baseline = resolve_baseline(options.baseline if given_baseline is None else given_baseline, x)
    engine = PatchEngine(
        network,
        x,
        feature_map,
        reference=reference,
        target=list(targets),
        value=options.value,
        roi=roi,
        baseline=baseline,
        device=device,
        batch_size=options.batch_size,
        tiling=tiling_spec,
        cache_bytes=options.cache_bytes,
        autocast_dtype=options.torch_autocast_dtype,
    )
    if engine.n_players == 0:
        raise ValueError(
            "No feature can change the value: inside the windows that cover the ROI the image equals the baseline. "
            "Choose another baseline."
        )
    return ExplanationGame(
        engine=engine,
        model=model,
        options=options,
        prepared=prepared,
        feature_map=feature_map,
        features_given=given_features is not None,
        baseline_given=given_baseline is not None,
        foreground_given="foreground" in arrays,
        foreground=foreground,
        organ_features=organ_features,
        labelmap=labelmap,
        targets=targets,
        target_names=names,
        single=single,
        masks=masks,
        roi=roi,
        support=support,
        tiling_spec=tiling_spec,
        device=device,
        baseline=baseline,
    )


def _foreground(option: str, given: np.ndarray | None, prepared: ModelInput, whole_organs: bool) -> np.ndarray | None:
    """Where features may be, on the model's grid: the given mask (an array or a file on the image's grid), the
    image's own foreground for ``"auto"`` (not for whole organs, which the label map delimits), or everywhere
    (``None``)."""
    if given is None and option == "auto":
        if whole_organs:
            return None
        mask = foreground_mask(prepared.image)
        if mask is None:
            _log.info("The image has no background to leave out: features may be anywhere")
        else:
            _log.info(
                "Features only in the image's foreground, %.0f %% of it (foreground='none' puts them everywhere)",
                100 * mask.mean(),
            )
        return mask
    if given is None and option == "none":
        return None
    if given is None:
        given, _ = read_labels(option, prepared.source, mask=True, what="foreground mask")
    given, shape = np.asarray(given), tuple(prepared.source.shape)
    if given.shape != shape:
        raise ArgumentError(
            "foreground", f"{{argument}} has shape {given.shape}; it must be a mask on the image's grid, {shape}."
        )
    return prepared.to_model_grid(given > 0)


def _targets(model, target) -> tuple[tuple[int, ...], tuple[str, ...], bool]:
    """The targets' class indices and names, and whether one target (not a list) was given."""
    requested, single = target_list(target)
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
