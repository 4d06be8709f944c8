"""The explanation pipeline: from a model, an image and a target class to Shapley values per supervoxel.

:func:`explain` runs the steps in order: preprocess the image for the model, find the target segment (the model's
own prediction unless a reference is given), choose the region of interest around it, build the features only
where they can change a value (the input support of the windows that cover the ROI), evaluate coalitions with the
exact :class:`~segshap.engine.PatchEngine` and estimate Shapley values with :func:`~segshap.estimator.kernel_shap`.
The result, an :class:`Explanation`, saves itself as NIfTI volumes, a JSON report and an overview figure.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import features as feature_maps
from .engine import PatchEngine, predict_labels
from .estimator import DESIGNS, kernel_shap
from .faithfulness import Faithfulness, faithfulness_curves
from .geometry import ModelInput
from .inputs import as_image, as_roi_mask, bounding_box, reference_masks, resolve_device
from .io import StagedOutput, write_image
from .models import LoadedModel, load_model
from .surrogate import adjacent_pairs
from .tiling import make_tiling

__all__ = [
    "explain",
    "predict",
    "Explanation",
    "FEATURE_KINDS",
    "BASELINES",
    "OUTPUT_FILES",
    "VOLUME_FORMATS",
    "output_files",
]

FEATURE_KINDS = ("slic", "fcc", "grid", "organs", "organ_aware")
BASELINES = ("mean", "min", "zero")
OUTPUT_FILES = {
    "heatmap": "heatmap.nii.gz",
    "features": "features.nii.gz",
    "report": "explanation.json",
    "overview": "overview.png",
}
VOLUME_FORMATS = (".nii.gz", ".nii", ".nrrd")
AUTO_TOLERANCE = 0.01
"""Early-stopping tolerance of ``nsamples="auto"`` (max stderr relative to the spread of the values)."""

_log = logging.getLogger("segshap")
_ENGINE_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(PatchEngine).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


@dataclass
class Explanation:
    """Shapley values of supervoxels for one or several target classes.

    Attributes
    ----------
    values, stderr : np.ndarray
        ``(M,)`` (or ``(M, T)`` for several targets): value and standard error of each feature.
    feature_ids : np.ndarray
        ``(M,)`` the feature ids, in the order of ``values``.
    feature_map : np.ndarray
        ``(X, Y, Z)`` int32 on the image's grid: each voxel's feature id, 0 where no feature can change the value.
    base_value, full_value : float or np.ndarray
        The value with every feature replaced by the baseline, and on the unperturbed image.
    stats : dict
        Evaluations, patch forwards, cache hits, seconds and more.
    targets : tuple of int
        Target classes; ``target_names`` their names.
    settings : dict
        Everything that determined the result.
    image : np.ndarray
        ``(X, Y, Z)`` the first channel of the image as given (for display).
    reference : np.ndarray
        ``(T, X, Y, Z)`` bool on the image's grid: the target segments the values refer to.
    roi : np.ndarray
        ``(X, Y, Z)`` bool on the image's grid: where the values are read.
    organ_labels : np.ndarray, optional
        ``(M,)`` the label map's label of each feature (organ features only).
    class_names : dict of int to str
        The model's class names (empty for a bare network): names the organs of ``organ_labels``.
    affine : np.ndarray, optional
        The image's voxel-to-RAS affine, used by :meth:`save` when none is passed.
    exact : bool
        Whether every coalition was evaluated.
    model_feature_map : np.ndarray, optional
        The features on the model's grid, as the engine perturbed them (``feature_map`` is this map carried to the
        image's grid, each image voxel taking the feature its centre falls in).
    model_affine : np.ndarray, optional
        The model grid's voxel-to-RAS affine. ``settings["roi_box"]`` and ``settings["support_box"]`` are voxel
        boxes on that grid.
    faithfulness : tuple of Faithfulness
        One per target: deletion and insertion curves of the ranking by value and of a random ranking (empty when
        :func:`explain` was told ``faithfulness=False``).
    """

    values: np.ndarray
    stderr: np.ndarray
    feature_ids: np.ndarray
    feature_map: np.ndarray
    base_value: float | np.ndarray
    full_value: float | np.ndarray
    stats: dict
    targets: tuple[int, ...]
    target_names: tuple[str, ...]
    settings: dict
    image: np.ndarray
    reference: np.ndarray
    roi: np.ndarray
    organ_labels: np.ndarray | None = None
    class_names: dict = field(default_factory=dict)
    affine: np.ndarray | None = None
    exact: bool = False
    versions: dict = field(default_factory=dict)
    model_feature_map: np.ndarray | None = None
    model_affine: np.ndarray | None = None
    faithfulness: tuple[Faithfulness, ...] = ()

    @property
    def heatmap(self) -> np.ndarray:
        """float32 volume, each voxel the value of its feature and 0 elsewhere; ``(T, X, Y, Z)`` for T targets."""
        size = max(int(self.feature_map.max()), int(self.feature_ids.max(initial=0))) + 1
        lookup = np.zeros((size,) + self.values.shape[1:], dtype=np.float32)
        lookup[self.feature_ids] = self.values
        heat = lookup[self.feature_map]
        return np.moveaxis(heat, -1, 0) if heat.ndim == 4 else heat

    @property
    def efficiency_error(self) -> float:
        gap = np.sum(self.values, axis=0) - (np.asarray(self.full_value) - np.asarray(self.base_value))
        return float(np.max(np.abs(gap)))

    def to_dict(self) -> dict:
        """The content of ``explanation.json``.

        Per feature (``features``): its voxels on the image's grid (``voxels``; 0 for a feature smaller than an
        image voxel) and
        on the model's (``model_voxels``), and its centroid, computed on the model's grid, in image voxel
        coordinates and RAS millimetres.
        """
        size = max(int(self.feature_map.max()), int(self.feature_ids.max(initial=0))) + 1
        counts = np.bincount(self.feature_map.ravel(), minlength=size)
        model_map = self.feature_map if self.model_feature_map is None else self.model_feature_map
        model_counts = np.bincount(model_map.ravel(), minlength=size)
        centroids = _centroids(model_map, self.feature_ids, size)
        if self.model_feature_map is not None and self.affine is not None and self.model_affine is not None:
            to_image = np.linalg.solve(self.affine, self.model_affine)
            centroids = centroids @ to_image[:3, :3].T + to_image[:3, 3]
        rows = []
        for i, feature in enumerate(self.feature_ids.tolist()):
            row = {
                "id": feature,
                "value": _plain(self.values[i]),
                "stderr": _plain(self.stderr[i]),
                "voxels": int(counts[feature]),
                "model_voxels": int(model_counts[feature]),
                "centroid_voxel": [round(c, 2) for c in centroids[i].tolist()],
            }
            if self.affine is not None:
                world = self.affine @ np.append(centroids[i], 1.0)
                row["centroid_ras_mm"] = [round(c, 2) for c in world[:3].tolist()]
            if self.organ_labels is not None:
                row["organ_label"] = int(self.organ_labels[i])
                if row["organ_label"] in self.class_names:
                    row["organ"] = self.class_names[row["organ_label"]]
            rows.append(row)
        return {
            "targets": [{"index": t, "name": n} for t, n in zip(self.targets, self.target_names)],
            "settings": self.settings,
            "versions": self.versions,
            "base_value": _plain(self.base_value),
            "full_value": _plain(self.full_value),
            "efficiency_error": self.efficiency_error,
            "exact": self.exact,
            "stats": self.stats,
            "faithfulness": self._faithfulness_entry(),
            "features": rows,
        }

    def _faithfulness_entry(self) -> dict | list | None:
        """One dict for one target, a list for several (as ``value``), ``None`` when not computed."""
        if not self.faithfulness:
            return None
        entries = [curves.to_dict() for curves in self.faithfulness]
        return entries[0] if np.ndim(self.values) == 1 else entries

    def save(
        self,
        out_dir: str | os.PathLike,
        affine: np.ndarray | None = None,
        *,
        volume_format: str = ".nii.gz",
        slices: bool | None = False,
    ) -> dict[str, Path]:
        """Write ``heatmap.nii.gz``, ``features.nii.gz``, ``explanation.json``, ``overview.png`` and, when asked,
        ``slices.png``.

        Files are written to a staging folder and moved into ``out_dir`` together at the end, so an error or an
        interruption leaves ``out_dir`` as it was.

        Parameters
        ----------
        out_dir : str or path-like
            The output folder (created if needed).
        affine : np.ndarray, optional
            Voxel-to-RAS affine of the outputs; default the image's (:attr:`affine`), else identity.
        volume_format : str
            ``".nii.gz"``, ``".nii"`` or ``".nrrd"`` (full-precision geometry, as 3D Slicer writes): the format of
            the heatmap and the feature map.
        slices : bool or None
            Also render ``slices.png``: the explanation as 3D Slicer's own slice and 3D views show it (needs
            slicer-core, the ``views`` extra; rendered in a separate process). ``True`` fails when it cannot be made,
            ``None`` makes it when it can (a warning says why not otherwise), ``False`` skips it.

        Returns
        -------
        dict
            Output name (``heatmap``, ``features``, ``report``, ``overview``, and ``slices`` when written) to its
            final path.
        """
        from .report import SLICES_FILE, overview_figure, slicer_views_available, slicer_views_picture

        affine = np.asarray(affine if affine is not None else self.affine if self.affine is not None else np.eye(4))
        files = output_files(volume_format)
        if slices is None and not slicer_views_available():
            _log.warning("slices.png not made: it needs slicer-core (pip install 'segshap[views]')")
            slices = False
        with StagedOutput(out_dir) as staging:
            write_image(staging / files["heatmap"], self.heatmap, affine)
            write_image(staging / files["features"], self.feature_map.astype(np.int32), affine)
            report = self.to_dict()
            (staging / files["report"]).write_text(json.dumps(report, indent=1))
            overview_figure(self, staging / files["overview"])
            if slices is not False:
                staged = {name: staging / file for name, file in files.items()}
                try:
                    slicer_views_picture(self, staged, staging / SLICES_FILE, affine, volume_format)
                    files["slices"] = SLICES_FILE
                except RuntimeError as error:
                    if slices:
                        raise
                    _log.warning("slices.png not made: %s", error)
        return {name: Path(out_dir) / file for name, file in files.items()}


def output_files(volume_format: str = ".nii.gz") -> dict[str, str]:
    """The names :meth:`Explanation.save` writes, with volumes in ``volume_format``."""
    if volume_format not in VOLUME_FORMATS:
        raise ValueError(f"volume_format must be one of {VOLUME_FORMATS}, got {volume_format!r}.")
    return {name: file.replace(".nii.gz", volume_format) for name, file in OUTPUT_FILES.items()}


def _plain(value):
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]


def _centroids(feature_map: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    """``(M, 3)`` mean voxel index of each feature (``size``: more than the largest id)."""
    flat = feature_map.ravel()
    counts = np.bincount(flat, minlength=size).astype(np.float64)
    coordinates = np.indices(feature_map.shape).reshape(3, -1)
    sums = np.stack([np.bincount(flat, weights=c, minlength=size) for c in coordinates], axis=1)
    return sums[ids] / np.maximum(counts[ids], 1)[:, None]


def predict(
    model: LoadedModel | torch.nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 4,
    affine: np.ndarray | None = None,
    **tiling,
) -> np.ndarray:
    """The model's segmentation of an image: full sliding-window inference, then argmax over classes.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        With a :class:`LoadedModel` the image is preprocessed as it says and its tiling is used; a bare network
        takes the image as it is and ``patch_size`` (and optionally ``overlap``, ``blend``, ``sigma_scale``,
        ``tiling``).
    image : np.ndarray
        The image (see :meth:`LoadedModel.preprocess`, or ``(X, Y, Z)``/``(C, X, Y, Z)`` for a bare network).
    device, batch_size
        Where and how many windows at a time the network runs.
    affine : np.ndarray, optional
        The image's voxel-to-RAS affine, for a model that reorients or resamples.

    Returns
    -------
    np.ndarray
        ``(X, Y, Z)`` int16 label map on the image's grid.
    """
    network, prepared, settings = _prepared(model, image, affine, tiling)
    if tiling:
        raise ValueError(
            f"Unknown option(s) {sorted(tiling)}; predict takes patch_size, overlap, blend, sigma_scale, tiling."
        )
    labels = _predict_labels(network, prepared.image, settings, resolve_device(device), batch_size)
    return prepared.to_image_grid(labels)


_TILING_KEYS = ("tiling", "patch_size", "overlap", "blend", "sigma_scale", "folds")


def _prepared(model, image, affine, options: dict) -> tuple:
    """The network, its :class:`ModelInput` and the tiling settings (``options`` win over the model's)."""
    if isinstance(model, LoadedModel):
        settings = model.tiling_options
        prepared = model.preprocess(image, affine)
        network = model.network
    else:
        if not callable(model):
            raise ValueError(f"model must be a path, a LoadedModel or a torch.nn.Module, got {type(model).__name__}.")
        settings = {}
        prepared = ModelInput.unchanged(as_image(image), affine)
        network = model
    for name in _TILING_KEYS:
        settings[name] = options.pop(name, settings.get(name, _ENGINE_DEFAULTS[name]))
    return network, prepared, settings


def _predict_labels(network, x: np.ndarray, settings: dict, device: torch.device, batch_size: int) -> np.ndarray:
    if isinstance(network, torch.nn.Module):
        network = network.to(device)
    return predict_labels(lambda batch: network(batch).float(), x, _tiling(settings, x.shape[1:]), device, batch_size)


def _tiling(settings: dict, shape: tuple[int, ...]):
    """The tiling the settings (``_TILING_KEYS``) describe, over an image of spatial ``shape``."""
    return make_tiling(settings["tiling"], shape, **{k: v for k, v in settings.items() if k != "tiling"})


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


def _features(kind, n_features: int, x: np.ndarray, labelmap, support) -> np.ndarray:
    if not isinstance(kind, str):
        return np.asarray(kind)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS} or an integer map, got {kind!r}.")
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}.")
    spatial = x.shape[1:]
    volume = math.prod(b - a for a, b in support)
    if kind == "slic":
        return feature_maps.slic(x if len(x) > 1 else x[0], n_segments=n_features, support=support)
    if kind == "fcc":
        spacing = (math.sqrt(2) * volume / n_features) ** (1 / 3)
        return feature_maps.fcc(spatial, spacing, support=support)
    if kind == "grid":
        return feature_maps.grid(spatial, max(1, round((volume / n_features) ** (1 / 3))), support=support)
    if kind == "organs":
        return feature_maps.organs(labelmap, support=support)
    inside = labelmap[tuple(slice(a, b) for a, b in support)]
    regions = len(np.unique(inside))
    return feature_maps.organ_aware(labelmap, x[0], max(1, round(n_features / regions)), support=support)


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
    tiling : dict
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
    tiling: dict
    device: torch.device
    engine_options: dict
    baseline: float | np.ndarray = 0.0

    @property
    def n_features(self) -> int:
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
    network, prepared, tiling_settings = _prepared(model, image, affine, engine_options)
    x = prepared.image
    spatial = x.shape[1:]
    margin = engine_options.pop("margin", _ENGINE_DEFAULTS["margin"])
    batch_size = engine_options.get("batch_size", _ENGINE_DEFAULTS["batch_size"])

    prediction = None
    needs_labelmap = isinstance(features, str) and features in ("organs", "organ_aware") and labelmap is None
    if reference is None or needs_labelmap:
        _log.info("Segmenting the image with the model")
        prediction = _predict_labels(network, x, tiling_settings, device, batch_size)
    if reference is None:
        for t, name in zip(targets, names):
            if not (prediction == t).any():
                raise ValueError(
                    f"The model predicts no voxel of {name} (class {t}) on this image, so there is nothing to "
                    "explain; pass a reference segmentation or choose another target."
                )
        reference = prediction
    else:
        reference = prepared.to_model_grid(np.asarray(reference))
    masks = reference_masks(reference, spatial, targets)
    labelmap = prediction if labelmap is None else prepared.to_model_grid(np.asarray(labelmap))
    if not isinstance(features, str):
        features = prepared.to_model_grid(np.asarray(features))

    tiling = _tiling(tiling_settings, spatial)
    if roi is None:
        roi = np.zeros(spatial, dtype=bool)
        for mask in masks:
            roi[tuple(slice(a, b) for a, b in bounding_box(mask, margin))] = True
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
        **tiling_settings,
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
        tiling=tiling_settings,
        device=device,
        engine_options=engine_options,
        baseline=resolved_baseline,
    )


def explain(
    model: LoadedModel | torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    *,
    target: int | str | Sequence[int | str],
    reference: np.ndarray | None = None,
    roi: np.ndarray | Sequence[tuple[int, int]] | None = None,
    features: str | np.ndarray = "slic",
    n_features: int = 100,
    value: str = "soft_dice",
    nsamples: int | str = "auto",
    baseline: str | float | np.ndarray = "mean",
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    tolerance: float | None = None,
    labelmap: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    design: str = "auto",
    max_forwards: int | None = None,
    max_seconds: float | None = None,
    faithfulness: bool = True,
    **engine_options,
) -> Explanation:
    """Explain a model's segmentation of a target class with Shapley values of supervoxels.

    Parameters
    ----------
    model : path, LoadedModel or torch.nn.Module
        A TorchScript file with its sidecar (see :func:`segshap.load_model`), a loaded model, or a bare network
        taking the image as it is (give ``patch_size`` etc. in ``engine_options``).
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
        box grown by ``margin`` (an engine option, 8 voxels).
    features : str or np.ndarray
        ``"slic"``, ``"fcc"``, ``"grid"``, ``"organs"``, ``"organ_aware"`` (built only where they can matter), or
        your own integer map (ids ``1..N``, 0 = never perturbed).
    n_features : int
        About how many features to build inside the support (per organ for ``"organ_aware"``: divided among the
        regions; ignored for ``"organs"``).
    value : str
        ``"soft_dice"``, ``"dice"``, ``"tp"``, ``"fp"`` or ``"mean_prob"``.
    nsamples : int or "auto"
        Coalitions to evaluate at most. ``"auto"``: ``2 M + 2048`` (all ``2**M`` when fewer), stopping early at
        ``tolerance`` (default 0.01).
    baseline : str, number or np.ndarray
        What a removed feature's voxels become, in the network's input space: ``"mean"`` (of each channel),
        ``"min"``, ``"zero"``, a number, or an array like the network's input.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : int
        Seed of the coalition sampler.
    progress : callable, optional
        ``progress(done, total)`` in window forwards, what takes the time: ``total`` is ``max_forwards`` when given,
        else the forwards the remaining coalitions would take at the pace so far.
    tolerance : float, optional
        Early-stopping tolerance (see :func:`segshap.kernel_shap`).
    labelmap : np.ndarray, optional
        Organ label map for ``"organs"``/``"organ_aware"`` features; default the model's prediction.
    affine : np.ndarray, optional
        The image's voxel-to-RAS affine. A model that works in another orientation or spacing gets the image
        reoriented and resampled onto its grid (perturbations happen there); ``reference``, ``roi``, ``labelmap``
        and a given feature map are on the image's grid and carried to the model's by nearest neighbour, and the
        outputs come back onto the image's grid. Without it the image is taken to lie on the model's grid.
    design : str
        Coalition design (see :func:`segshap.kernel_shap`): ``"auto"``, ``"chains"`` (walks that change one
        feature at a time, so each coalition reruns only that feature's windows) or ``"leverage"``.
    max_forwards : int, optional
        Stop sampling before the window forwards of the explanation would exceed this.
    max_seconds : float, optional
        Stop sampling before the estimation would run longer than this (the set-up before it is not counted).
    faithfulness : bool
        After estimating, compute the deletion and insertion curves of the ranking by value and of one random
        ranking (:attr:`Explanation.faithfulness`): ``4 (M + 1)`` coalitions per target, each one feature away from
        the one before, so each reruns only that feature's windows. Their forwards (``stats["faithfulness_forwards"]``)
        are not limited by ``max_forwards`` or ``max_seconds``.
    **engine_options
        Passed to :class:`segshap.PatchEngine` (``patch_size``, ``overlap``, ``blend``, ``margin``, ``batch_size``,
        ``cache_bytes``, ``autocast_dtype``, ...).

    Returns
    -------
    Explanation
    """
    started = time.perf_counter()
    if nsamples != "auto" and (
        isinstance(nsamples, bool) or not isinstance(nsamples, (int, np.integer)) or nsamples < 2
    ):
        raise ValueError(f"nsamples must be 'auto' or an integer >= 2 (coalitions to evaluate), got {nsamples!r}.")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}.")
    if max_forwards is not None and (
        isinstance(max_forwards, bool) or not isinstance(max_forwards, (int, np.integer)) or max_forwards < 1
    ):
        raise ValueError(f"max_forwards must be a positive integer (window forwards) or None, got {max_forwards!r}.")
    if max_seconds is not None and (
        isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or max_seconds <= 0
    ):
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}.")
    if not isinstance(faithfulness, (bool, np.bool_)):
        raise ValueError(f"faithfulness must be True or False, got {faithfulness!r}.")
    game = explanation_game(
        model,
        image,
        target=target,
        reference=reference,
        roi=roi,
        features=features,
        n_features=n_features,
        value=value,
        baseline=baseline,
        device=device,
        labelmap=labelmap,
        affine=affine,
        **engine_options,
    )
    engine, prepared, feature_map, labelmap = game.engine, game.prepared, game.feature_map, game.labelmap
    targets, names, single, masks, roi = game.targets, game.target_names, game.single, game.masks, game.roi
    model, device, support, margin, tiling_settings = game.model, game.device, game.support, game.margin, game.tiling
    engine_options = game.engine_options
    m = engine.n_features
    exact_count = 2**m if m < 62 else None
    if nsamples == "auto":
        budget = 2 * m + 2048 if exact_count is None else min(exact_count, 2 * m + 2048)
        tolerance = AUTO_TOLERANCE if tolerance is None else tolerance
    else:
        budget = int(nsamples)
    _log.info("Estimating Shapley values of %d features from up to %d coalitions", m, budget)
    forwards_before = engine.stats["patch_forwards"]
    estimation_started = time.perf_counter()
    result = kernel_shap(
        engine.evaluate,
        m,
        budget,
        seed=seed,
        tolerance=tolerance,
        batch_size=64,
        progress=None if progress is None else _forward_progress(progress, engine, max_forwards),
        design=design,
        cost=engine.forward_cost,
        max_cost=max_forwards,
        max_seconds=max_seconds,
        interactions=lambda: adjacent_pairs(feature_map, engine.feature_ids),
    )
    forwards = engine.stats["patch_forwards"] - forwards_before
    estimation_seconds = time.perf_counter() - estimation_started
    curves = _faithfulness(engine, result.values, seed) if faithfulness else ()
    faithfulness_seconds = time.perf_counter() - estimation_started - estimation_seconds

    kept = np.isin(feature_map, engine.feature_ids)
    feature_map = np.where(kept, feature_map, 0).astype(np.int32)
    organ_labels = None
    if isinstance(features, str) and features in ("organs", "organ_aware"):
        organ_labels = feature_maps.feature_organs(feature_map, labelmap)[engine.feature_ids]
    image_feature_map = prepared.to_image_grid(feature_map)
    hidden = np.setdiff1d(engine.feature_ids, image_feature_map)
    if hidden.size:
        _log.warning(
            "%d of %d features are smaller than the image's voxels and show on no image voxel (the model's grid is "
            "finer than the image's); explanation.json lists them all",
            hidden.size,
            engine.n_features,
        )
    values, stderr = result.values, result.stderr
    base, full = result.base_value, result.full_value
    if single:
        values, stderr, base, full = values[:, 0], stderr[:, 0], float(base[0]), float(full[0])
    stats = {
        **engine.stats,
        "evaluations": result.n_evaluations,
        "budget": budget,
        "design": result.design,
        "tree_adjusted": result.adjusted,
        "stop_reason": {"max_cost": "max_forwards"}.get(result.stop_reason, result.stop_reason),
        "estimation_forwards": forwards,
        "forwards_per_coalition": forwards / max(result.n_evaluations, 1),
        "estimation_seconds": estimation_seconds,
        "faithfulness_forwards": sum(c.forwards for c in curves),
        "faithfulness_seconds": faithfulness_seconds,
        "seconds": time.perf_counter() - started,
    }
    settings = {
        "target": list(targets),
        "features": features if isinstance(features, str) else "given",
        "n_features": n_features,
        "value": value,
        "nsamples": nsamples,
        "tolerance": tolerance,
        "design": design,
        "max_forwards": max_forwards,
        "max_seconds": max_seconds,
        "faithfulness": faithfulness,
        "baseline": baseline if isinstance(baseline, (str, int, float)) else "array",
        "device": str(device),
        "seed": seed,
        "roi_box": [list(b) for b in engine.roi_box],
        "support_box": [list(b) for b in support],
        "margin": margin,
        "model_format": model.format if isinstance(model, LoadedModel) else "network",
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in tiling_settings.items()},
        **{k: v for k, v in engine_options.items() if isinstance(v, (int, float, str, bool))},
    }
    display = np.asarray(image, dtype=np.float32)
    display = display if display.ndim == 3 else (display[..., 0] if isinstance(model, LoadedModel) else display[0])
    return Explanation(
        values=values,
        stderr=stderr,
        feature_ids=engine.feature_ids.copy(),
        feature_map=image_feature_map,
        base_value=base,
        full_value=full,
        stats=stats,
        targets=targets,
        target_names=names,
        settings=settings,
        image=display,
        reference=prepared.to_image_grid(masks),
        roi=prepared.to_image_grid(roi),
        organ_labels=organ_labels,
        class_names=dict(model.classes) if isinstance(model, LoadedModel) else {},
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        exact=result.exact,
        versions=_versions(),
        model_feature_map=feature_map,
        model_affine=prepared.grid.affine,
        faithfulness=curves,
    )


def _faithfulness(engine: PatchEngine, values: np.ndarray, seed: int) -> tuple[Faithfulness, ...]:
    """Deletion and insertion curves of each target's ranking (``values``: ``(M, T)``), with their forwards."""
    _log.info("Checking faithfulness: deletion and insertion curves over %d features", engine.n_features)
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
