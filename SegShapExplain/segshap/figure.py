"""The pictures of an explanation: the overview figure (matplotlib, always) and the views as 3D Slicer draws them
(``slices.png``, when slicer-core is installed: the ``views`` extra).

The engine imports no Slicer code: ``slices.png`` is rendered by the Slicer-side ``SegShapExplainLib.views`` in a
process of its own, so that a graphics driver that fails cannot take the explanation with it. Both pictures show
slices as 3D Slicer's views do (``SCREEN_DIRECTIONS``), with anatomical letters at their edges, and paint features
by one rule, :mod:`segshap.palette`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inputs import bounding_box
from .palette import direction_letter, edge_letters, feature_color, feature_opacity, position_text

__all__ = [
    "overview_figure",
    "draw_overview",
    "slicer_views_available",
    "slicer_views_picture",
    "SLICES_FILE",
    "SCREEN_DIRECTIONS",
]

SLICES_FILE = "slices.png"
SLICER_VIEWS_TIMEOUT = 600
"""Seconds the rendering process may take (the first import of slicer-core on a cold disk is the slow part)."""
_log = logging.getLogger("segshap")

SCREEN_DIRECTIONS = {
    "axial": ((0, -1), (1, 1)),
    "sagittal": ((1, -1), (2, 1)),
    "coronal": ((0, -1), (2, 1)),
}
"""Where each of 3D Slicer's slice views (Red axial, Yellow sagittal, Green coronal) points the screen's right and
up, as ``(RAS axis, sign)``: the first two columns of ``vtkMRMLSliceNode``'s Axial, Sagittal and Coronal
SliceToRAS presets. Axial and coronal put the patient's left on the screen's right, sagittal puts posterior there;
up is anterior in axial, superior in the others."""
TOP_FEATURES = 15
FIGURE_DPI = 110
"""Pixels per inch of ``overview.png``."""
ZOOM_MARGIN = 6
"""Voxels shown around the features' support."""


@dataclass(frozen=True)
class _Panel:
    """How one of 3D Slicer's slice views reads a volume: the voxel axis it cuts across (``normal``), the voxel axes
    shown along the screen's columns and rows, whether each is drawn reversed, and the letters at its edges."""

    name: str
    normal: int
    columns: int
    rows: int
    flip_columns: bool
    flip_rows: bool
    normal_ras: int
    letters: dict[str, str]

    def plane(self, volume: np.ndarray, index: int) -> np.ndarray:
        """The slice ``index`` of ``volume`` as the view shows it: ``[row, column]``, top row and left column
        first."""
        plane = np.take(volume, index, axis=self.normal)
        plane = plane if self.rows < self.columns else plane.T  # np.take keeps the other axes in their order
        return plane[:: -1 if self.flip_rows else 1, :: -1 if self.flip_columns else 1]


def _panels(affine: np.ndarray) -> list[_Panel]:
    """The axial, sagittal and coronal views (``SCREEN_DIRECTIONS``) of a volume with this voxel-to-RAS affine.

    Each voxel axis is taken along its nearest RAS axis (nibabel's ``io_orientation``), so an oblique volume is read
    as planes of voxels, never resampled.
    """
    from nibabel.orientations import io_orientation

    nearest = io_orientation(affine)  # per voxel axis: its RAS axis and whether it points along or against it
    voxel_axis = {int(ras): axis for axis, (ras, _) in enumerate(nearest)}
    sign = {int(ras): float(along) for ras, along in nearest}
    panels = []
    for name, ((right, right_sign), (up, up_sign)) in SCREEN_DIRECTIONS.items():
        normal = 3 - right - up
        panels.append(
            _Panel(
                name=name,
                normal=voxel_axis[normal],
                columns=voxel_axis[right],
                rows=voxel_axis[up],
                flip_columns=sign[right] * right_sign < 0,
                flip_rows=sign[up] * up_sign > 0,  # rows run down the screen, against "up"
                normal_ras=normal,
                letters={
                    "right": direction_letter(right, right_sign),
                    "left": direction_letter(right, -right_sign),
                    "top": direction_letter(up, up_sign),
                    "bottom": direction_letter(up, -up_sign),
                },
            )
        )
    return panels


def _overlay(heat: np.ndarray, strongest: float) -> np.ndarray:
    """``(rows, columns, 4)`` RGBA of a heatmap slice: each feature in its colour at its opacity (``palette``)."""
    values, inverse = np.unique(heat, return_inverse=True)
    rgba = np.array([(*feature_color(v), feature_opacity(v, strongest)) for v in values.tolist()])
    return rgba[inverse.reshape(heat.shape)]


def _value_colour_map():
    """The colour bar's map from -strongest to +strongest: the palette's colour and opacity of each value."""
    from matplotlib.colors import ListedColormap

    return ListedColormap([(*feature_color(t), feature_opacity(t, 1.0)) for t in np.linspace(-1, 1, 255)])


def _stderr_note(stderr: np.ndarray) -> str:
    """What the bar chart says of standard errors that were not estimated (NaN), or ``""`` when all were.

    A run with too few samples for an estimate of its error reports NaN: no error bar is drawn for it, rather than
    a bar of ±0 that would claim an exact value.
    """
    missing = int(np.isnan(stderr).sum())
    if missing == 0:
        return ""
    if missing == stderr.size:
        return "standard errors not estimated: too few samples"
    return f"standard errors of {missing} of {stderr.size} features not estimated: too few samples"


def _feature_labels(explanation, indices: np.ndarray) -> list[str]:
    """The bar chart's label of each feature in ``indices`` (positions in ``explanation.values``): an organ's name
    (``class_names`` of its label, else ``label N``), otherwise ``#id``."""
    if explanation.organ_labels is None:
        return [f"#{explanation.feature_ids[i]}" for i in indices]
    labels = [int(explanation.organ_labels[i]) for i in indices]
    return [explanation.class_names.get(label, f"label {label}") for label in labels]


def draw_overview(explanation, target_index: int = 0):
    """The overview figure (:func:`overview_figure` saves it), as a matplotlib ``Figure`` (not pyplot's: a
    notebook's plotting backend stays as it is).

    Parameters
    ----------
    explanation : segshap.Explanation
    target_index : int
        Which target to show when the explanation has several.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    heat = explanation.heatmap
    values, stderr = explanation.values, explanation.stderr
    if heat.ndim == 4:
        heat, values, stderr = heat[target_index], values[:, target_index], stderr[:, target_index]
    # Values are read on the ROI only: outline the target there, and zoom on the support of the features.
    roi = explanation.roi
    reference = explanation.reference[target_index] & roi
    shown = reference if reference.any() else roi if roi.any() else explanation.feature_map > 0
    center = np.round(np.argwhere(shown).mean(axis=0)).astype(int) if shown.any() else np.array(roi.shape) // 2
    visible = explanation.feature_map > 0 if explanation.feature_map.any() else roi
    support = bounding_box(visible) if visible.any() else tuple((0, n) for n in roi.shape)
    zoom = [slice(max(a - ZOOM_MARGIN, 0), min(b + ZOOM_MARGIN, size)) for (a, b), size in zip(support, roi.shape)]
    finite = np.abs(values[np.isfinite(values)])
    strongest = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    affine = np.eye(4) if explanation.affine is None else np.asarray(explanation.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    centre_ras = (affine @ np.append(center, 1.0))[:3]

    figure = Figure(figsize=(13, 8.5), dpi=FIGURE_DPI, layout="constrained")
    grid = figure.add_gridspec(2, 3, height_ratios=[1.15, 1])
    image = explanation.image
    low, high = np.percentile(image, [1, 99])
    for column, panel in enumerate(_panels(affine)):
        ax = figure.add_subplot(grid[0, column])
        crop = tuple(slice(None) if a == panel.normal else zoom[a] for a in range(3))
        grey, tint, target, box = (
            panel.plane(volume[crop], center[panel.normal])
            for volume in (image, heat, reference.astype(np.float32), roi.astype(np.float32))
        )
        # Millimetres on both screen axes, so that the voxel spacing sets the aspect; y runs down, as rows do.
        rows, columns = grey.shape
        width, height = spacing[panel.columns], spacing[panel.rows]
        extent = (0.0, columns * width, rows * height, 0.0)
        ax.imshow(grey, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
        ax.imshow(_overlay(tint, strongest), extent=extent, interpolation="nearest")
        x, y = (np.arange(columns) + 0.5) * width, (np.arange(rows) + 0.5) * height
        ax.contour(x, y, target, levels=[0.5], colors="black", linewidths=0.8)
        ax.contour(x, y, box, levels=[0.5], colors="gold", linewidths=1.0, linestyles="dashed")
        ax.set_xlim(0.0, columns * width)
        ax.set_ylim(rows * height, 0.0)
        edge_letters(ax, panel.letters)
        ax.set_title(f"{panel.name}, {position_text(panel.normal_ras, centre_ras[panel.normal_ras])}")
        ax.set_axis_off()
    scale = ScalarMappable(Normalize(-strongest, strongest), _value_colour_map())
    figure.colorbar(
        scale,
        ax=figure.axes,
        shrink=0.8,
        label="Shapley value (opacity ∝ |value|)",
    )

    curves = explanation.faithfulness[target_index] if explanation.faithfulness else None
    ax = figure.add_subplot(grid[1, :2] if curves is not None else grid[1, :])
    order = np.argsort(-np.abs(values))[:TOP_FEATURES]
    positions = np.arange(len(order))
    errors = stderr[order]
    note = _stderr_note(errors)
    ax.bar(
        positions,
        values[order],
        yerr=errors if np.isfinite(errors).any() else None,  # a NaN error draws no bar
        color=[feature_color(v) for v in values[order]],
        capsize=3,
    )
    organs = explanation.organ_labels is not None
    ax.set_xticks(
        positions,
        _feature_labels(explanation, order),
        fontsize=8,
        rotation=30 if organs else 0,
        ha="right" if organs else "center",
    )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("Shapley value ± s.e.")
    settings = explanation.settings
    ax.set_title(
        f"Top {len(order)} of {len(values)} features for {explanation.target_names[target_index]} "
        f"({settings['value']}, baseline {settings['baseline']}): score "
        f"{np.ravel(explanation.full_value)[target_index]:.3f} on the image,\n"
        f"{np.ravel(explanation.base_value)[target_index]:.3f} with every feature at the baseline"
        + (f"\n{note}" if note else "")
    )
    if curves is not None:
        _plot_faithfulness(figure.add_subplot(grid[1, 2]), curves)
    return figure


def overview_figure(explanation, path: str | os.PathLike, target_index: int = 0) -> None:
    """Save a PNG with three orthogonal slices through the target and a bar chart of the top features.

    The slices are 3D Slicer's axial, sagittal and coronal views (``SCREEN_DIRECTIONS``: patient left on the
    screen's right in axial and coronal, posterior on the right in sagittal), with L/R, A/P, S/I at their edges and
    their position in RAS millimetres in their titles, drawn in millimetres so that the voxel spacing sets their
    aspect. An oblique image is read along its nearest anatomical axes (nibabel's ``io_orientation``): each slice
    is a plane of voxels, flipped and transposed to those screen directions, not resampled, whereas 3D Slicer
    reslices along true anatomical planes; the two differ by the image's obliquity. Zoomed on the features'
    support, the slices show the image in grey and each feature over it in its sign's colour (red: it supports the
    segmentation, blue: it works against it) at an opacity proportional to its |value|, none under 5 % of the
    strongest (:mod:`segshap.palette`, the rule 3D Slicer's scene uses), the target segment's outline in black and
    the ROI's in dashed gold, and a colour bar. The bar chart shows the features with the largest absolute values
    (organs by name), with ±1 standard error bars (none, and a note in its title, where the errors were not
    estimated); beside it, when the explanation has them, the deletion and insertion curves of its ranking and of a
    random one.

    Parameters
    ----------
    explanation : segshap.Explanation
    path : str or path-like
        Where to write the PNG.
    target_index : int
        Which target to show when the explanation has several.
    """
    draw_overview(explanation, target_index).savefig(path)


def _plot_faithfulness(ax, curves) -> None:
    """Deletion and insertion curves of the ranking (solid) and of a random ranking (dotted)."""
    steps = np.linspace(0, 1, curves.deletion.size)
    for name, ranked, auc, shuffled, colour in (
        ("deletion", curves.deletion, curves.deletion_auc, curves.random_deletion, "#2e6da4"),
        ("insertion", curves.insertion, curves.insertion_auc, curves.random_insertion, "#c0392b"),
    ):
        ax.plot(steps, ranked, color=colour, label=f"{name} by value (AUC {auc:.3f})")
        ax.plot(steps, shuffled, color=colour, linestyle=":", label=f"{name}, random order")
    ax.set_xlabel("fraction of features switched off (deletion) or on (insertion)")
    ax.set_ylabel("value")
    ax.set_title("Faithfulness", fontsize=10)
    ax.legend(fontsize=7)


def _lib_folder() -> Path | None:
    """The folder holding ``SegShapExplainLib`` (beside the engine in a checkout or a Slicer extension)."""
    spec = importlib.util.find_spec("SegShapExplainLib")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent.parent
    beside = Path(__file__).resolve().parent.parent
    return beside if (beside / "SegShapExplainLib" / "views.py").is_file() else None


def slicer_views_available() -> bool:
    """Whether ``slices.png`` can be rendered here: slicer-core installed and ``SegShapExplainLib`` found."""
    return importlib.util.find_spec("slicer") is not None and _lib_folder() is not None


def _target_centre(explanation, target_index: int, affine: np.ndarray) -> np.ndarray:
    """RAS centre of the target segment inside the ROI (of the ROI when the segment is not in it)."""
    roi = explanation.roi
    reference = explanation.reference[target_index] & roi
    shown = reference if reference.any() else roi
    voxel = np.argwhere(shown).mean(axis=0) if shown.any() else (np.array(roi.shape) - 1) / 2
    return (affine @ np.append(voxel, 1.0))[:3]


def slicer_views_picture(
    explanation,
    outputs: dict,
    path: str | os.PathLike,
    affine: np.ndarray,
    volume_format: str = ".nii.gz",
    target_index: int = 0,
) -> None:
    """Render ``path`` (``slices.png``): axial, sagittal and coronal views through the target and a 3D view of the
    top features, as 3D Slicer shows the explanation (``SegShapExplainLib.views.explanationPicture``).

    Parameters
    ----------
    explanation : segshap.Explanation
    outputs : dict
        Its saved ``heatmap``, ``features`` and ``report``, in one folder.
    path : path
        The PNG to write.
    affine : np.ndarray
        The outputs' voxel-to-RAS affine (the image is written with it as the views' background).

    Raises
    ------
    RuntimeError
        slicer-core or ``SegShapExplainLib`` is missing, or the rendering process failed (its last output quoted).
    """
    from .io import write_image

    if not slicer_views_available():
        raise RuntimeError(
            "slices.png needs slicer-core (pip install 'segshap[views]') and the SegShapExplainLib "
            "folder beside the engine; overview.png shows the same explanation without them."
        )
    centre = _target_centre(explanation, target_index, affine)
    lib = str(_lib_folder())
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([lib, *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryDirectory(prefix="segshap-views-") as scratch:
        image = Path(scratch) / "image.nii.gz"
        write_image(image, explanation.image, affine)
        command = [
            sys.executable,
            "-m",
            "SegShapExplainLib.views",
            "--image",
            str(image),
            "--outputs",
            str(Path(outputs["report"]).parent),
            "--volume-format",
            volume_format,
            "--centre=" + ",".join(f"{c:.4f}" for c in centre),
            "--target-index",
            str(target_index),
            "--out",
            str(path),
        ]
        try:
            result = subprocess.run(
                command, env=environment, capture_output=True, text=True, timeout=SLICER_VIEWS_TIMEOUT
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"Rendering slices.png took more than {SLICER_VIEWS_TIMEOUT} s; stopped.") from error
    if result.returncode != 0 or not Path(path).is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"Rendering slices.png failed (exit code {result.returncode}): {tail}")
