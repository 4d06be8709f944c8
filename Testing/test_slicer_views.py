"""What a clinician sees: a real explanation shown by the Lib's ``showResults`` and rendered by 3D Slicer's own
slice and 3D view code (slicer-core, offscreen through Mesa's EGL), checked pixel by pixel: the colours and
opacities of ``segshap.palette`` (weak features leave the anatomy readable), the screen directions, the outlines,
the 3D view, and the orientation letters and marker of ``slices.png``; and the live estimate shown while a run samples.

The features are drawn by Slicer's segmentation displayable manager, through OpenGL. Where no EGL can be had, the
slice pixels come from the slice logic's blended layers (the same pixels without OpenGL, but without the
displayable managers' drawing): only the untouched background is checked then, and the tests say so.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.slicer_scenes import DEMO, SMALL, vtk_matrix
from matplotlib.image import imread
from scipy import ndimage

import SegShapExplainLib
from segshap.io import write_image
from segshap.palette import UNPAINTED_FRACTION
from SegShapExplainLib import OutlineStyle, SegShapExplainLogic
from SegShapExplainLib.display import setOutlineStyle, showInSliceViews
from SegShapExplainLib.live import LIVE_OPACITY, LiveOverlay, liveColor
from SegShapExplainLib.results import (
    STRONGEST_ALPHA,
    featureColor,
    featureOpacity,
    importExplanation,
)
from SegShapExplainLib.views import (
    PICTURE_SIZE,
    SLICE_VIEWS,
    HeadlessViews,
    _nonzeroBounds,
    openGLAvailable,
    panelOrigins,
    screenLetters,
)

pytestmark = pytest.mark.slow
SIZE = (240, 240)


@pytest.fixture(scope="module")
def egl() -> bool:
    available = openGLAvailable()
    if not available and os.environ.get("SEGSHAP_REQUIRE_EGL") == "1":
        pytest.fail("Mesa's EGL is installed (SEGSHAP_REQUIRE_EGL=1) but an offscreen EGL window does not work.")
    if not available:
        print("No EGL here: slice pixels are checked from the slice logic's blended layers, without OpenGL.")
    return available


@pytest.fixture(scope="module")
def shown(egl, oblique_t1, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    """A scene with Slicer's views, the oblique T1 and the demo model's explanation of its white matter."""
    scene = slicer.vtkMRMLScene()
    views = HeadlessViews(scene, openGL=egl)
    voxels, affine = oblique_t1
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1 oblique")
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    volume.SetIJKToRASMatrix(vtk_matrix(affine))
    volume.CreateDefaultDisplayNodes()
    logic = SegShapExplainLogic(
        scene,
        python=sys.executable,
        volumeRenderingLogic=views.volumeRendering,
        temporaryFolder=str(tmp_path_factory.mktemp("jobs")),
    )
    (nodes,) = logic.explain(volume, str(DEMO.model), "white_matter", settings=SMALL)
    yield scene, views, volume, nodes, logic
    views.close()


def _rows(nodes) -> dict[int, dict]:
    return {row["id"]: row for row in nodes.report["features"]}


def _strongest(nodes) -> float:
    return max(abs(row["value"]) for row in nodes.report["features"])


def _expected(background: np.ndarray, rgb, alpha: float) -> np.ndarray:
    return alpha * np.array(rgb) * 255 + (1 - alpha) * background


def _composites(scene) -> list:
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def _hide(scene, volume) -> None:
    """Only the background in every slice view."""
    for composite in _composites(scene):
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetLabelVolumeID(None)
        composite.SetForegroundVolumeID(None)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationDisplayNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSegmentationDisplayNode").SetVisibility(False)


def _feature_ids(scene, views, name, nodes) -> np.ndarray:
    """The feature under each pixel of a slice view (the feature label map resliced as the view's label layer)."""
    for composite in _composites(scene):
        composite.SetLabelVolumeID(nodes.features.GetID())
    ids = views.sliceLayerValues(name, "Label")
    for composite in _composites(scene):
        composite.SetLabelVolumeID(None)
    return ids


def _through(views, volume, row) -> None:
    views.showSlicesThrough(tuple(row["centroid_ras_mm"]), SIZE, volume)


def _before_and_after(scene, views, volume, nodes, outlines=OutlineStyle.NONE) -> dict:
    """Per slice view: the background alone, the explanation shown, and the feature id under each pixel."""
    found = {}
    for name in SLICE_VIEWS:
        _hide(scene, volume)
        plain = views.renderSlice(name).astype(float)
        showInSliceViews(scene, volume, nodes, outlines=outlines)
        found[name] = (plain, views.renderSlice(name).astype(float), _feature_ids(scene, views, name, nodes))
    return found


def _write(node, path):
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    return path


def _inside(ids: np.ndarray, feature: int) -> np.ndarray:
    """The pixels of a feature at least two pixels from its border (where edges are drawn)."""
    return ndimage.binary_erosion(ids == feature, iterations=2)


def test_only_feature_pixels_change_and_the_strongest_show_the_end_colours(shown, egl):
    scene, views, volume, nodes, _ = shown
    rows, strongest = _rows(nodes), _strongest(nodes)
    values = {i: row["value"] for i, row in rows.items()}
    checked = {"positive": 0, "negative": 0}
    for sign, pick in (("positive", max), ("negative", min)):
        feature = pick(values, key=values.get)
        if (values[feature] > 0) != (sign == "positive"):
            continue  # this explanation has no feature of that sign
        _through(views, volume, rows[feature])
        for name, (plain, after, ids) in _before_and_after(scene, views, volume, nodes).items():
            # Outside every feature (and off its border) the image is untouched.
            away = ~ndimage.binary_dilation(ids > 0, iterations=1)
            np.testing.assert_array_equal(after[away], plain[away], err_msg=name)
            assert (ids > 0).any(), name
            if not egl:
                continue
            # Inside, every feature is tinted as the palette says (the weakest not at all), the strongest most.
            for other in np.unique(ids[ids > 0]):
                pixels = _inside(ids, other)
                expected = _expected(
                    plain[pixels], featureColor(values[other]), featureOpacity(values[other], strongest)
                )
                np.testing.assert_allclose(after[pixels], expected, atol=3, err_msg=f"{name}, feature {other}")
            mine = _inside(ids, feature)
            if mine.any():
                checked[sign] += 1
                if abs(values[feature]) == strongest:
                    assert featureOpacity(values[feature], strongest) == STRONGEST_ALPHA
    if not egl:
        pytest.skip("No EGL: only the untouched background was checked (the segments are drawn through OpenGL).")
    assert checked["positive"] >= 1, "the strongest positive feature shows in no slice view through its centre"


def _saved(nodes, volume, folder, report=None) -> tuple:
    """The explanation's outputs (its report, or ``report``) and the image, written to ``folder``."""
    (folder / "explanation.json").write_text(json.dumps(report or nodes.report))
    outputs = {
        "heatmap": _write(nodes.heatmap, folder / "heatmap.nrrd"),
        "features": _write(nodes.features, folder / "features.nrrd"),
        "report": folder / "explanation.json",
    }
    return outputs, _write(volume, folder / "image.nrrd")


def test_weak_features_leave_the_anatomy_readable(shown, egl, tmp_path):
    if not egl:
        pytest.skip("The segments are drawn through OpenGL; no EGL here.")
    scene, views, volume, nodes, _ = shown
    rows, strongest = _rows(nodes), _strongest(nodes)
    faint, weak = sorted(rows, key=lambda i: abs(rows[i]["value"]))[:2]
    report = copy.deepcopy(nodes.report)
    shares = {faint: UNPAINTED_FRACTION / 2, weak: 0.2}  # of the strongest |value|
    for row in report["features"]:
        row["value"] = shares[row["id"]] * strongest if row["id"] in shares else row["value"]
    edited = importExplanation(scene, _saved(nodes, volume, tmp_path, report)[0], volume, "weak")
    alpha = featureOpacity(0.2 * strongest, strongest)
    seen = {faint: 0, weak: 0}
    for feature in seen:
        _through(views, volume, rows[feature])
        for name, (plain, after, ids) in _before_and_after(scene, views, volume, edited).items():
            pixels = _inside(ids, feature)
            grey = plain[pixels].mean(axis=-1)
            if pixels.sum() < 20 or grey.std() < 3:
                continue  # too few pixels, or too little anatomy under them, to read
            seen[feature] += 1
            if feature == faint:  # not painted: the image as it is
                np.testing.assert_allclose(after[pixels], plain[pixels], atol=1, err_msg=name)
                continue
            for channel in range(3):
                # The anatomy's grey levels still drive what is shown: the tint adds a constant and keeps 1 - alpha
                # of their contrast (here 0.85).
                slope = np.polyfit(grey, after[pixels][:, channel], 1)[0]
                assert slope == pytest.approx(1 - alpha, abs=0.05), f"{name}, channel {channel}: slope {slope:.2f}"
                assert np.corrcoef(grey, after[pixels][:, channel])[0, 1] > 0.98, f"{name}, channel {channel}"
    assert all(seen.values()), f"a feature shows in no slice view through its centre: {seen}"


def test_slices_png_has_letters_at_the_slice_edges_and_the_orientation_marker(shown, egl, tmp_path):
    scene, views, volume, nodes, _ = shown
    rows = _rows(nodes)
    centre = rows[max(rows, key=lambda i: abs(rows[i]["value"]))]["centroid_ras_mm"]
    _, image = _saved(nodes, volume, tmp_path)
    # In a process of its own, as the engine renders slices.png: the displayable-manager factories are
    # process-wide, and a second set of views in this process would share them with the fixture's.
    command = [sys.executable, "-m", "SegShapExplainLib.views", "--image", str(image), "--outputs", str(tmp_path)]
    command += ["--volume-format", ".nrrd", "--centre=" + ",".join(map(str, centre)), "--out", str(tmp_path / "s.png")]
    environment = {**os.environ, "PYTHONPATH": str(Path(SegShapExplainLib.__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    size = PICTURE_SIZE
    picture = (imread(tmp_path / "s.png")[..., :3] * 255).round()
    panels = [picture[r : r + size, c : c + size] for r, c in panelOrigins(size)]
    expected = {
        "Red": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "Yellow": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
        "Green": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    }
    half, edge = size // 2, 26
    boxes = {
        "left": np.s_[half - 15 : half + 15, :edge],
        "right": np.s_[half - 15 : half + 15, -edge:],
        "top": np.s_[:edge, half - 15 : half + 15],
        "bottom": np.s_[-edge:, half - 15 : half + 15],
    }
    for (name, letters), panel in zip(expected.items(), panels):
        assert screenLetters(views.sliceNode(name)) == letters, name
        yellow = (panel[..., 0] > 200) & (panel[..., 1] > 170) & (panel[..., 2] < 80)  # palette.LETTER_RGB
        for side, box in boxes.items():
            assert yellow[box].sum() >= 10, f"{name}: no letter at the {side} edge"
        inside = np.zeros_like(yellow)
        inside[edge:-edge, edge:-edge] = True
        assert not (yellow & inside).any(), f"{name}: letter-coloured pixels away from the edges"
    if not egl:
        pytest.skip("The 3D view and its orientation marker need OpenGL; no EGL here (the letters were checked).")
    # Slicer's own marker, found as what it adds to the 3D view: the R axis (red) points to the screen's left and
    # the S axis (blue) up from the A axis (green, towards the viewer), as a patient seen from the front.
    bounds = _nonzeroBounds(nodes.features, set(nodes.topFeatures))
    node = views.viewNode
    node.SetOrientationMarkerSize(node.OrientationMarkerSizeLarge)
    marked = {}
    for kind in (node.OrientationMarkerTypeNone, node.OrientationMarkerTypeAxes):
        node.SetOrientationMarkerType(kind)
        marked[kind] = views.renderThreeD((size, size), bounds).astype(float)
    node.SetOrientationMarkerType(node.OrientationMarkerTypeNone)
    marker = np.abs(marked[node.OrientationMarkerTypeAxes] - marked[node.OrientationMarkerTypeNone]).max(axis=-1) > 30
    pixels = marked[node.OrientationMarkerTypeAxes]
    centres = {}
    for colour, channel in (("red", 0), ("green", 1), ("blue", 2)):
        others = np.delete(pixels, channel, axis=-1).max(axis=-1)
        where = marker & (pixels[..., channel] > 80) & (others < 60)
        assert where.sum() >= 10, f"no {colour} axis in the orientation marker"
        centres[colour] = np.argwhere(where).mean(axis=0)
    assert centres["red"][1] < centres["green"][1] - 10, centres
    assert centres["blue"][0] < centres["green"][0] - 10, centres
    # slices.png's 3D panel carries the same marker.
    assert np.abs(panels[3][marker] - pixels[marker]).mean() < 10


def test_axial_shows_patient_right_on_screen_left_and_anterior_up(shown):
    scene, views, volume, nodes, _ = shown
    rows = _rows(nodes)
    top = max(rows, key=lambda i: abs(rows[i]["value"]))
    _through(views, volume, rows[top])
    ids = _before_and_after(scene, views, volume, nodes)
    checks = {"Red": ((0, 1), (1, -1)), "Green": ((0, 1), (2, -1)), "Yellow": ((1, 1), (2, -1))}
    for name, ((horizontal_axis, _), (vertical_axis, _)) in checks.items():
        labels = ids[name][2]  # the label layer's pixels: what the view shows, oriented as it shows them
        features = [f for f in np.unique(labels[labels > 0]) if (labels == f).sum() >= 10]
        assert len(features) >= 4, name
        where = {f: np.argwhere(labels == f).mean(axis=0) for f in features}  # (row, column)
        centroid = {f: rows[int(f)]["centroid_ras_mm"] for f in features}
        columns = np.corrcoef([where[f][1] for f in features], [centroid[f][horizontal_axis] for f in features])[0, 1]
        rows_up = np.corrcoef([where[f][0] for f in features], [centroid[f][vertical_axis] for f in features])[0, 1]
        # Screen columns grow towards patient left (R falls) in axial and coronal, towards posterior in sagittal;
        # screen rows grow downwards, towards posterior in axial and inferior in coronal and sagittal.
        assert columns < -0.5, f"{name}: columns against {'RAS'[horizontal_axis]}: {columns:.2f}"
        assert rows_up < -0.5, f"{name}: rows against {'RAS'[vertical_axis]}: {rows_up:.2f}"


def test_outlines_follow_the_chosen_style(shown, egl):
    if not egl:
        pytest.skip("Outlines are drawn by the segmentation displayable manager through OpenGL; no EGL here.")
    scene, views, volume, nodes, _ = shown
    rows = _rows(nodes)
    top = set(nodes.topFeatures)
    assert 0 < len(top) < len(rows)
    _through(views, volume, rows[max(rows, key=lambda i: abs(rows[i]["value"]))])
    beside_other = 0
    for name in SLICE_VIEWS:
        _hide(scene, volume)
        showInSliceViews(scene, volume, nodes, outlines=OutlineStyle.NONE)
        plain = views.renderSlice(name).astype(int)
        ids = _feature_ids(scene, views, name, nodes)
        near_top = ndimage.binary_dilation(np.isin(ids, list(top)), iterations=2)
        showInSliceViews(scene, volume, nodes, outlines=OutlineStyle.TOP)
        drawn = np.abs(views.renderSlice(name).astype(int) - plain).max(axis=-1) > 0
        assert not (drawn & ~near_top).any(), f"{name}: an outline away from every top feature"
        if np.isin(ids, list(top)).any():
            assert drawn.any(), name
        showInSliceViews(scene, volume, nodes, outlines=OutlineStyle.ALL)
        everywhere = np.abs(views.renderSlice(name).astype(int) - plain).max(axis=-1) > 0
        beside_other += int((everywhere & ~near_top).sum())
    assert beside_other > 0, "outlining all features drew nothing beyond the top ones"
    setOutlineStyle(nodes, OutlineStyle.TOP)


def test_the_3d_view_shows_only_the_top_features_without_warnings(shown, egl, tmp_path):
    if not egl:
        pytest.skip("The 3D view needs OpenGL; no EGL here.")
    scene, views, volume, nodes, _ = shown
    messages = tmp_path / "vtk.log"
    window = vtk.vtkFileOutputWindow()
    window.SetFileName(str(messages))
    previous = vtk.vtkOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(window)
    try:
        top = set(nodes.topFeatures)
        bounds = _nonzeroBounds(nodes.features, top)
        heat = slicer.util.arrayFromVolume(nodes.heatmap)
        ids = slicer.util.arrayFromVolume(nodes.features)
        original = heat.copy()
        rendered = views.renderThreeD((200, 200), bounds).astype(int)
        empty_heat = np.zeros_like(original)
        results = {}
        for name, keep in (
            ("top only", np.isin(ids, list(top))),
            ("without top", ~np.isin(ids, list(top))),
            ("nothing", np.zeros(ids.shape, bool)),
        ):
            heat[:] = np.where(keep, original, empty_heat)
            slicer.util.arrayFromVolumeModified(nodes.heatmap)
            results[name] = views.renderThreeD((200, 200), bounds).astype(int)
        heat[:] = original
        slicer.util.arrayFromVolumeModified(nodes.heatmap)
    finally:
        vtk.vtkOutputWindow.SetInstance(previous)
    assert np.abs(rendered - results["nothing"]).max() > 50, "the top features are not in the 3D view"
    # The ray caster's sampling may round a colour differently from one render to the next: one grey level.
    assert np.abs(rendered - results["top only"]).max() <= 1
    assert np.abs(results["without top"] - results["nothing"]).max() <= 1
    log = messages.read_text() if messages.exists() else ""
    assert "Warning" not in log and "ERROR" not in log, log


def test_the_live_estimate_shows_over_the_anatomy_and_follows_each_update(shown, oblique_t1, tmp_path):
    """Two estimates as the worker writes them: a rough one in which the strongest feature is not found yet, then
    the final values. Each is painted over the anatomy in the heatmap's colours at half opacity (the anatomy
    untouched where the value is 0 or too weak to paint), the second in the same node, and the views are as they
    were once the overlay is gone."""
    scene, views, volume, nodes, _ = shown
    _, affine = oblique_t1
    rows = _rows(nodes)
    top = max(rows, key=lambda i: abs(rows[i]["value"]))
    final = slicer.util.arrayFromVolume(nodes.heatmap).transpose(2, 1, 0)  # i, j, k: on the input's grid
    ids = slicer.util.arrayFromVolume(nodes.features).transpose(2, 1, 0)
    rough = np.where(ids == top, 0.0, 0.5 * final).astype(np.float32)
    estimates = {}
    for name, heat in (("first", rough), ("last", final)):
        write_image(tmp_path / f"{name}.nrrd", heat, affine)
        estimates[name] = (tmp_path / f"{name}.nrrd", float(np.abs(heat).max()))
    _through(views, volume, rows[top])
    _hide(scene, volume)
    plain = {name: views.renderSlice(name).astype(float) for name in SLICE_VIEWS}
    overlay = LiveOverlay(scene, volume, "live estimate")
    shown_values, painted = {}, {}
    for estimate, (path, strongest) in estimates.items():
        overlay.update({"heatmap": str(path)})
        for name in SLICE_VIEWS:
            values = views.sliceLayerValues(name, "Foreground")  # the estimate under each pixel
            after = views.renderSlice(name).astype(float)
            zero = values == 0
            assert zero.any() and (~zero).any(), name
            np.testing.assert_array_equal(after[zero], plain[name][zero], err_msg=f"{estimate}, {name}")
            rgba = np.array([liveColor(v / strongest) for v in values.ravel()]).reshape(values.shape + (4,))
            alpha = LIVE_OPACITY * rgba[..., 3:]
            expected = alpha * rgba[..., :3] * 255 + (1 - alpha) * plain[name]
            # The colour table has 255 entries over the window: a colour is off by at most 1/127 of the way from
            # white, and one entry either side of the unpainted fraction may fall the other way.
            clear = np.abs(np.abs(values) / strongest - UNPAINTED_FRACTION) > 0.01
            np.testing.assert_allclose(after[clear], expected[clear], atol=3, err_msg=f"{estimate}, {name}")
            assert (rgba[..., 3][clear] > 0).any(), f"{estimate}, {name}: nothing painted"
            shown_values[estimate, name], painted[estimate, name] = values, after
    # The strongest feature appears with the last estimate: tinted red or blue where the first left the anatomy.
    sign = np.sign(rows[top]["value"])
    found = 0
    for name in SLICE_VIEWS:
        where = shown_values["last", name] == np.float32(rows[top]["value"])
        assert (shown_values["first", name][where] == 0).all()
        np.testing.assert_array_equal(painted["first", name][where], plain[name][where])
        found += int(where.sum())
        change = painted["last", name][where] - plain[name][where]
        channel = 0 if sign > 0 else 2
        assert (change[:, channel] > change[:, 1] + 20).all(), name
    assert found > 0, "the strongest feature shows in no slice view through its centroid"
    overlay.remove()
    for name in SLICE_VIEWS:
        np.testing.assert_array_equal(views.renderSlice(name), plain[name], err_msg=name)
