"""The pictures of an explanation: the overview figure (matplotlib, always) and the views as 3D Slicer draws them
(``slices.png``, when slicer-core is installed: the ``views`` extra).

The engine imports no Slicer code: ``slices.png`` is rendered by the Slicer-side ``SegShapExplainLib.views`` in a
process of its own, so that a graphics driver that fails cannot take the explanation with it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .geometry import Grid
from .inputs import bounding_box

__all__ = ["overview_figure", "cohort_figure", "slicer_views_available", "slicer_views_picture", "SLICES_FILE"]

SLICES_FILE = "slices.png"
SLICER_VIEWS_TIMEOUT = 600
"""Seconds the rendering process may take (the first import of slicer-core on a cold disk is the slow part)."""
_log = logging.getLogger("segshap")

TOP_FEATURES = 15
FAINT = 0.01
"""Values below this fraction of the largest absolute value are not painted."""
ZOOM_MARGIN = 6
"""Voxels shown around the features' support."""
TOP_ORGANS = 8
"""Organs shown per target in the cohort figure's bar charts."""


def cohort_figure(table, full_values: dict[str, dict[str, float]], path: str | os.PathLike) -> None:
    """Save the PNG of a cohort (``cohort.png``).

    With organ features: the target x organ matrix of the mean normalised attribution across cases, in a diverging
    colour map centred at 0 (red: the organ supports the target's segmentation, blue: it works against it), each
    cell labelled with its mean and the number of cases; beside it, for each target, its organs with the largest
    mean absolute attribution and error bars of one standard deviation across cases. Other features (supervoxels
    differ from case to case) get, per target, each case's value of the full image instead.

    Parameters
    ----------
    table : pandas.DataFrame
        The cohort's table (:data:`segshap.cohort.COHORT_COLUMNS`).
    full_values : dict
        Case id to target to the case's value of the full image.
    path : str or path-like
        Where to write the PNG.
    """
    # A Figure of its own, not pyplot's: drawing it leaves the caller's plotting backend (a notebook's) alone.
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    organs = table[table["organ"] != ""]
    targets = sorted(table["target"].unique())
    cases = sorted(full_values)
    if table.empty:
        figure = Figure(figsize=(6.0, 2.0))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(0.5, 0.5, "No complete case yet (failed.csv says why)", ha="center", va="center")
        figure.savefig(path, dpi=110)
        return
    if organs.empty:
        figure = Figure(figsize=(max(6.0, 0.5 * len(cases) + 3), 4.5), layout="constrained")
        axis = figure.subplots()
        for offset, target in enumerate(targets):
            shown = [full_values[case].get(target, np.nan) for case in cases]
            axis.plot(np.arange(len(cases)) + 0.1 * offset, shown, "o", label=target)
        axis.set_xticks(range(len(cases)), cases, rotation=60, ha="right")
        axis.set(ylabel="value of the full image", title=f"{len(cases)} case(s): organ features compare across cases")
        axis.legend(fontsize="small")
        figure.savefig(path, dpi=110)
        return
    grouped = organs.groupby(["target", "organ"])["normalised"]
    mean, sd, count = (grouped.agg(statistic).unstack("organ") for statistic in ("mean", "std", "count"))
    # Organs that are also targets first, on the diagonal, then the others by their largest absolute mean.
    by_size = mean.abs().max().sort_values(ascending=False).index
    order = [target for target in targets if target in by_size] + [o for o in by_size if o not in targets]
    mean, sd, count = (frame.reindex(index=targets, columns=order) for frame in (mean, sd, count))
    width = max(5.0, 0.9 * len(order) + 2.5)
    figure = Figure(figsize=(width + 5.0, max(3.5, 1.1 * len(targets) + 2.5, 2.2 * len(targets))), layout="constrained")
    axes = figure.subplots(len(targets), 2, gridspec_kw={"width_ratios": [width, 5.0]}, squeeze=False)
    grid = axes[0, 0].get_gridspec()
    for axis in axes[:, 0]:
        axis.remove()
    matrix_axis = figure.add_subplot(grid[:, 0])
    finite = np.abs(mean.to_numpy())[np.isfinite(mean.to_numpy())]
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    shown = matrix_axis.imshow(
        mean.to_numpy(), cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto", interpolation="nearest"
    )
    for (row, column), value in np.ndenumerate(mean.to_numpy()):
        n = count.iat[row, column]
        if np.isfinite(value):
            colour = "white" if abs(value) > 0.6 * limit else "black"
            matrix_axis.text(column, row, f"{value:.2f}\nn={n:.0f}", ha="center", va="center", fontsize=8, color=colour)
    matrix_axis.set_xticks(range(len(order)), order, rotation=45, ha="right")
    matrix_axis.set_yticks(range(len(targets)), targets)
    matrix_axis.set(xlabel="input organ", ylabel="target class")
    matrix_axis.set_title(f"Mean normalised attribution over {len(cases)} case(s)")
    figure.colorbar(shown, ax=matrix_axis, shrink=0.8, label="value / (full - base)")
    for axis, target in zip(axes[:, 1], targets):
        top = mean.loc[target].dropna()
        top = top.reindex(top.abs().sort_values(ascending=False).index[:TOP_ORGANS])[::-1]
        errors = sd.loc[target, top.index].fillna(0.0)
        axis.barh(
            range(len(top)),
            top.to_numpy(),
            xerr=errors.to_numpy(),
            color=np.where(top.to_numpy() >= 0, "#c0392b", "#2e86c1"),
            capsize=3,
        )
        axis.set_yticks(range(len(top)), [f"{organ} (n={count.at[target, organ]:.0f})" for organ in top.index])
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_title(f"{target}: top organs, \u00b11 sd across cases", fontsize=9)
    axes[-1, 1].set_xlabel("normalised attribution")
    figure.savefig(path, dpi=110)


def _plane(volume: np.ndarray, *, crop: tuple, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` along ``axis`` of ``volume[crop]``, transposed for ``imshow``."""
    return np.take(volume[crop], index, axis=axis).T


def _views(shape: tuple[int, ...], affine: np.ndarray | None) -> list[tuple[str, int]]:
    """The voxel axis across which each of the sagittal, coronal and axial slices is cut."""
    codes = Grid(shape, np.eye(4) if affine is None else affine).axcodes
    planes = (("sagittal", "LR"), ("coronal", "PA"), ("axial", "IS"))
    return [(name, next(axis for axis, code in enumerate(codes) if code in letters)) for name, letters in planes]


def overview_figure(explanation, path: str | os.PathLike, target_index: int = 0) -> None:
    """Save a PNG with three orthogonal slices through the target and a bar chart of the top features.

    The slices, zoomed on the features' support, show the image in grey, the heatmap over it in a diverging colour
    map centred at 0 (red: the feature supports the segmentation, blue: it works against it), the target segment's
    outline in black and the ROI's in dashed gold, and a colour bar. The bar chart shows the features with the
    largest absolute values, with ±1 standard error bars; beside it, when the explanation has them, the deletion and
    insertion curves of its ranking and of a random one.

    Parameters
    ----------
    explanation : segshap.Explanation
    path : str or path-like
        Where to write the PNG.
    target_index : int
        Which target to show when the explanation has several.
    """
    from matplotlib.colors import TwoSlopeNorm
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
    limit = float(np.abs(heat).max()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)

    figure = Figure(figsize=(13, 8.5), layout="constrained")  # not pyplot's: a notebook's backend stays as it is
    grid = figure.add_gridspec(2, 3, height_ratios=[1.15, 1])
    image = explanation.image
    low, high = np.percentile(image, [1, 99])
    views = _views(roi.shape, explanation.affine)
    overlay = None
    for column, (name, axis) in enumerate(views):
        ax = figure.add_subplot(grid[0, column])
        # Slices are shown with the first remaining axis horizontal and the second pointing up.
        crop = tuple(slice(None) if a == axis else zoom[a] for a in range(3))
        take = functools.partial(_plane, crop=crop, axis=axis, index=center[axis])
        ax.imshow(take(image), cmap="gray", vmin=low, vmax=high, origin="lower")
        # Features with values near 0 stay transparent so that the anatomy under them shows.
        shown = np.ma.masked_where(np.abs(take(heat)) < FAINT * limit, take(heat))
        overlay = ax.imshow(shown, cmap="RdBu_r", norm=norm, alpha=0.75, origin="lower")
        ax.contour(take(reference.astype(np.float32)), levels=[0.5], colors="black", linewidths=0.8)
        ax.contour(take(roi.astype(np.float32)), levels=[0.5], colors="gold", linewidths=1.0, linestyles="dashed")
        ax.set_title(f"{name} slice {center[axis]}")
        ax.set_axis_off()
    figure.colorbar(overlay, ax=figure.axes, shrink=0.8, label="Shapley value")

    curves = explanation.faithfulness[target_index] if explanation.faithfulness else None
    ax = figure.add_subplot(grid[1, :2] if curves is not None else grid[1, :])
    order = np.argsort(-np.abs(values))[:TOP_FEATURES]
    colours = np.where(values[order] >= 0, "#c0392b", "#2e6da4")
    positions = np.arange(len(order))
    errors = np.nan_to_num(stderr[order])
    ax.bar(positions, values[order], yerr=errors, color=colours, capsize=3)
    labels = [f"#{explanation.feature_ids[i]}" for i in order]
    if explanation.organ_labels is not None:
        labels = [f"{label}\n(label {explanation.organ_labels[i]})" for label, i in zip(labels, order)]
    ax.set_xticks(positions, labels, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("Shapley value ± s.e.")
    settings = explanation.settings
    ax.set_title(
        f"Top {len(order)} of {len(values)} features for {explanation.target_names[target_index]}: "
        f"{settings['value']}, baseline {settings['baseline']}; "
        f"v(all) = {np.ravel(explanation.full_value)[target_index]:.3f}, "
        f"v(none) = {np.ravel(explanation.base_value)[target_index]:.3f}"
    )
    if curves is not None:
        _plot_faithfulness(figure.add_subplot(grid[1, 2]), curves)
    figure.savefig(path, dpi=110)


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
