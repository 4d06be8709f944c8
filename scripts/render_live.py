"""Draw ``docs/live.png``: the live overlay of an explanation at three of its updates (the first, one midway, the last).

The run: the demo model on the demo MRI, gray matter, the whole structure, every option at its default (the anytime
benchmark's ``whole`` case), with ``on_update`` every 5 s; ``--demo-roi`` runs the demo as ``segshap demo`` does
instead (white matter inside its box). Each panel is the same axial slice, through the centre of the target segment
inside the ROI, drawn as ``overview.png`` draws its axial view (:mod:`segshap.figure`: 3D Slicer's orientation, the
features in :mod:`segshap.palette`'s colours at its opacity rule, its letters at the edges, the target's outline in
black), zoomed on the features' support. Each update is painted against its own strongest |value|, as the live view
repaints each estimate; the title gives the update's seconds since the call, its level, and how its top 10 moved.

Run in the project's environment (``.venv``)::

    python scripts/render_live.py [--out docs/live.png] [--demo-roi]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import segshap
from segshap.figure import FIGURE_DPI, ZOOM_MARGIN, _overlay, _panels
from segshap.inputs import bounding_box
from segshap.palette import edge_letters, position_text
from segshap.request import demo_request, load_inputs

ROOT = Path(__file__).resolve().parents[1]
UPDATE_EVERY = 5.0


def _title(update: segshap.Update) -> str:
    level = "features" if update.level == "features" else f"{update.regions} regions"
    moved = (
        f"top 10: {update.top_changed} new"
        if update.top_changed or update.number == 1
        else f"top 10 unchanged for {update.stable_updates} update{'s' if update.stable_updates > 1 else ''}"
    )
    final = ", final" if update.final else ""
    return f"update {update.number}{final}: {update.seconds:.0f} s, {level}\n{update.coalitions} coalitions; {moved}"


def draw(explanation: segshap.Explanation, updates: list[segshap.Update], affine: np.ndarray) -> Figure:
    """The strip: the axial slice through the target with each update's heatmap over it."""
    axial = next(panel for panel in _panels(affine) if panel.name == "axial")
    roi = explanation.roi
    reference = explanation.reference[0] & roi
    centre = np.round(np.argwhere(reference).mean(axis=0)).astype(int)
    support = bounding_box(explanation.feature_map > 0)
    zoom = tuple(
        slice(None) if axis == axial.normal else slice(max(a - ZOOM_MARGIN, 0), min(b + ZOOM_MARGIN, size))
        for axis, ((a, b), size) in enumerate(zip(support, roi.shape))
    )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    centre_ras = (affine @ np.append(centre, 1.0))[:3]
    image = explanation.image
    low, high = np.percentile(image, [1, 99])
    grey = axial.plane(image[zoom], centre[axial.normal])
    target = axial.plane(reference.astype(np.float32)[zoom], centre[axial.normal])
    rows, columns = grey.shape
    width, height = spacing[axial.columns], spacing[axial.rows]
    extent = (0.0, columns * width, rows * height, 0.0)  # millimetres, so that the voxel spacing sets the aspect

    figure = Figure(figsize=(4.2 * len(updates), 5.0), dpi=FIGURE_DPI, layout="constrained")
    for ax, update in zip(figure.subplots(1, len(updates)), updates):
        heat = axial.plane(update.heatmap()[zoom], centre[axial.normal])
        finite = np.abs(update.values[np.isfinite(update.values)])
        strongest = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        ax.imshow(grey, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
        ax.imshow(_overlay(heat, strongest), extent=extent, interpolation="nearest")
        ax.contour(
            (np.arange(columns) + 0.5) * width,
            (np.arange(rows) + 0.5) * height,
            target,
            levels=[0.5],
            colors="black",
            linewidths=0.8,
        )
        edge_letters(ax, axial.letters)
        ax.set_title(_title(update), fontsize=10)
        ax.set_axis_off()
    figure.suptitle(
        f"Live updates, {explanation.target_names[0]} on the demo MRI, {len(explanation.values)} features, axial "
        f"{position_text(axial.normal_ras, centre_ras[axial.normal_ras])} (each update at its own strongest value)",
        fontsize=11,
    )
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "live.png"))
    parser.add_argument("--demo-roi", action="store_true", help="the demo as `segshap demo` runs it")
    args = parser.parse_args(argv)
    request = demo_request(str(Path(args.out).parent), {})
    image, affine, model, _ = load_inputs(request)
    case = {"target": request["target"], "roi": request["roi"]} if args.demo_roi else {"target": "gray_matter"}
    updates: list[segshap.Update] = []
    started = time.perf_counter()
    explanation = segshap.explain(
        model, image, affine=affine, on_update=updates.append, update_every=UPDATE_EVERY, **case
    )
    print(f"{len(updates)} updates, {time.perf_counter() - started:.0f} s")
    shown = [updates[0], updates[len(updates) // 2], updates[-1]] if len(updates) >= 3 else updates
    draw(explanation, shown, affine).savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
