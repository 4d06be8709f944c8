"""What a clinician sees: a real explanation shown by the Lib's ``showResults`` and rendered by 3D Slicer's own
slice and 3D view code (slicer-core, offscreen through Mesa's EGL), checked pixel by pixel.

The features are drawn by Slicer's segmentation displayable manager, through OpenGL. Where no EGL can be had, the
slice pixels come from the slice logic's blended layers (the same pixels without OpenGL, but without the
displayable managers' drawing): only the untouched background is checked then, and the tests say so.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.slicer_scenes import DEMO, SMALL, vtk_matrix
from scipy import ndimage

from SegShapExplainLib import OutlineStyle, SegShapExplainLogic
from SegShapExplainLib.results import (
    STRONGEST_ALPHA,
    featureColor,
    featureOpacity,
    importExplanation,
    setOutlineStyle,
    showInSliceViews,
)
from SegShapExplainLib.views import SLICE_VIEWS, HeadlessViews, _nonzeroBounds, openGLAvailable

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
    nodes = logic.explain(volume, str(DEMO.model), "white_matter", settings=SMALL)
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
            # Inside, every feature is tinted by its value: none is invisible, the strongest is the most opaque.
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


def test_a_feature_of_two_percent_is_visibly_tinted(shown, egl, tmp_path):
    if not egl:
        pytest.skip("The segments are drawn through OpenGL; no EGL here.")
    scene, views, volume, nodes, _ = shown
    rows, strongest = _rows(nodes), _strongest(nodes)
    weak = min(rows, key=lambda i: abs(rows[i]["value"]))
    report = copy.deepcopy(nodes.report)
    for row in report["features"]:
        if row["id"] == weak:
            row["value"] = 0.02 * strongest
    (tmp_path / "explanation.json").write_text(json.dumps(report))
    outputs = {
        "heatmap": _write(nodes.heatmap, tmp_path / "heatmap.nrrd"),
        "features": _write(nodes.features, tmp_path / "features.nrrd"),
        "report": tmp_path / "explanation.json",
    }
    edited = importExplanation(scene, outputs, volume, "two percent")
    _through(views, volume, rows[weak])
    seen = 0
    for name, (plain, after, ids) in _before_and_after(scene, views, volume, edited).items():
        pixels = _inside(ids, weak)
        if pixels.any():
            seen += 1
            # Opacity 0.34: at least 25 grey levels from the image in some channel, whatever the anatomy.
            assert np.abs(after[pixels] - plain[pixels]).max(axis=-1).min() >= 25, name
    assert seen, "the weak feature shows in no slice view through its centre"


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
