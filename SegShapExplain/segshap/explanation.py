"""The result of an explanation: :class:`Explanation` (values, maps, statistics) and the files it saves."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import figure
from .estimator import efficiency_error
from .faithfulness import Faithfulness
from .io import json_number, write_image
from .staging import StagedOutput

__all__ = ["Explanation", "OUTPUT_FILES", "VOLUME_FORMATS", "output_files", "paint"]

OUTPUT_FILES = {
    "heatmap": "heatmap.nii.gz",
    "features": "features.nii.gz",
    "report": "explanation.json",
    "overview": "overview.png",
}
VOLUME_FORMATS = (".nii.gz", ".nii", ".nrrd")

_log = logging.getLogger("segshap")


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
        The names of the organs of ``organ_labels``: the label map's own names when it had them, else the model's
        class names (empty for a bare network).
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
        return paint(self.values, self.feature_ids, self.feature_map)

    @property
    def warnings(self) -> list[str]:
        """What a reader of the values must know, in words (also in ``explanation.json`` and the summary line):
        standard errors that could not be estimated, a limit that stopped the sampling before the values settled,
        faithfulness curves that were skipped."""
        found = []
        stderr = np.asarray(self.stderr, dtype=np.float64)
        stop = self.stats.get("stop_reason")
        limit = {"max_seconds": "the time limit", "max_forwards": "the forward limit"}.get(stop)
        stopped = {"user": "stopped by the user"}.get(stop, limit and f"stopped at {limit}")
        if not self.exact and np.isnan(stderr).any():
            found.append(
                f"standard errors not estimated: {self.stats.get('evaluations', 0):,} samples are too few for "
                f"{len(self.feature_ids)} features, so the values are rough"
                + (f" (raise {limit} or the number of samples)" if limit else " (raise the number of samples)")
            )
        elif stopped is not None and not self.exact:
            spread = np.ptp(np.asarray(self.values, dtype=np.float64), axis=0)
            relative = float(np.max(np.max(stderr, axis=0) / np.where(spread > 0, spread, np.inf)))
            tolerance = self.settings.get("tolerance")
            if tolerance is not None and relative > tolerance:
                found.append(
                    f"{stopped} before the values settled: the largest standard error is {relative:.0%} "
                    "of the values' range"
                )
        if self.stats.get("level") == "regions":
            found.append(
                f"the values are those of {self.stats['regions']} regions of features, each shared equally among its "
                "features: the run stopped before the features' own values were estimated"
            )
        if self.stats.get("faithfulness_skipped"):
            found.append(f"faithfulness curves skipped: {self.stats['faithfulness_skipped']}")
        return found

    @property
    def efficiency_error(self) -> float:
        """Largest ``|sum(values) - (full_value - base_value)|`` over targets."""
        return efficiency_error(self.values, self.full_value, self.base_value)

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
                "value": json_number(self.values[i]),
                "stderr": json_number(self.stderr[i]),
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
            "base_value": json_number(self.base_value),
            "full_value": json_number(self.full_value),
            "efficiency_error": self.efficiency_error,
            "exact": self.exact,
            "warnings": self.warnings,
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
        affine = np.asarray(affine if affine is not None else self.affine if self.affine is not None else np.eye(4))
        files = output_files(volume_format)
        if slices is None and not figure.slicer_views_available():
            _log.warning("slices.png not made: it needs slicer-core (pip install 'segshap[views]')")
            slices = False
        with StagedOutput(out_dir) as staging:
            write_image(staging / files["heatmap"], self.heatmap, affine)
            write_image(staging / files["features"], self.feature_map.astype(np.int32), affine)
            report = self.to_dict()
            (staging / files["report"]).write_text(json.dumps(report, indent=1))
            figure.overview_figure(self, staging / files["overview"])
            if slices is not False:
                staged = {name: staging / file for name, file in files.items()}
                try:
                    figure.slicer_views_picture(self, staged, staging / figure.SLICES_FILE, affine, volume_format)
                    files["slices"] = figure.SLICES_FILE
                except RuntimeError as error:
                    if slices:
                        raise
                    _log.warning("slices.png not made: %s", error)
        return {name: Path(out_dir) / file for name, file in files.items()}


def paint(values: np.ndarray, feature_ids: np.ndarray, feature_map: np.ndarray) -> np.ndarray:
    """float32 volume on ``feature_map``'s grid, each voxel the value (``(M,)`` or ``(M, T)``) of its feature and 0
    elsewhere; ``(T, X, Y, Z)`` for T targets."""
    values = np.asarray(values)
    size = max(int(feature_map.max(initial=0)), int(np.max(feature_ids, initial=0))) + 1
    lookup = np.zeros((size,) + values.shape[1:], dtype=np.float32)
    lookup[feature_ids] = values
    heat = lookup[feature_map]
    return np.moveaxis(heat, -1, 0) if heat.ndim == 4 else heat


def output_files(volume_format: str = ".nii.gz") -> dict[str, str]:
    """The names :meth:`Explanation.save` writes, with volumes in ``volume_format``."""
    if volume_format not in VOLUME_FORMATS:
        raise ValueError(f"volume_format must be one of {VOLUME_FORMATS}, got {volume_format!r}.")
    return {name: file.replace(".nii.gz", volume_format) for name, file in OUTPUT_FILES.items()}


def _centroids(feature_map: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    """``(M, 3)`` mean voxel index of each feature (``size``: more than the largest id)."""
    flat = feature_map.ravel()
    counts = np.bincount(flat, minlength=size).astype(np.float64)
    coordinates = np.indices(feature_map.shape).reshape(3, -1)
    sums = np.stack([np.bincount(flat, weights=c, minlength=size) for c in coordinates], axis=1)
    return sums[ids] / np.maximum(counts[ids], 1)[:, None]
