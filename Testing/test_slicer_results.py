"""Results that last and do not disturb, headless (real MRML, PyPI ``slicer-core``): showing a result keeps the
user's slice layers; the report and the figures are nodes of the scene, saved and reopened with it and found again
by ``findExplanations``; several targets give one result each; an earlier result of the same inputs is replaced
only once the new one is in the scene; the 3D view of the top features is switched on and off.

Two results are made once per module: the real worker on the demo model (one target, the oblique T1) and, cheaper,
``segshap.explain`` of a small seeded network on the MNI template with two targets, saved by the engine's own
``Explanation.save``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.models import small_unet
from helpers.slicer_scenes import DEMO, SMALL, add_volume, load_scene, save_scene
from matplotlib.image import imread, imsave

import segshap
from SegShapExplainLib import OutlineStyle
from SegShapExplainLib.display import hideInViews, isShown3D, setShow3D, showInSliceViews
from SegShapExplainLib.exchange import ensureSegmentationConverters, exportVolume
from SegShapExplainLib.report import REPORT_COLUMNS, reportItems, targetRows
from SegShapExplainLib.results import (
    DIVERGING_COLOR_TAG,
    INPUTS_ATTRIBUTE,
    RESULT_ATTRIBUTE,
    ROLE_ATTRIBUTE,
    TABLE_COLUMNS,
    TARGET_ATTRIBUTE,
    ExplanationNodes,
    importExplanation,
    importExplanations,
)
from SegShapExplainLib.saved import findExplanations, removeExplanation, replaceExplanations
from SegShapExplainLib.worker import SubprocessRunner, WorkerJob, workerCommand, workerEnvironment

pytestmark = pytest.mark.slow
MNI_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
VIEWS = ("Red", "Yellow", "Green")


# ---------------------------------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def worker_result(oblique_t1, tmp_path_factory) -> dict:
    """The real worker's outputs (demo model, white matter of the oblique T1, 20 supervoxels, 64 samples, CPU), kept
    in a folder of their own, with its summary; ``slices`` is a small PNG standing in for slices.png (the worker's
    request cannot ask for one)."""
    folder = tmp_path_factory.mktemp("worker")
    scene = slicer.vtkMRMLScene()
    volume = add_volume(scene, *oblique_t1, "T1 oblique")
    request = {
        "task": "explain",
        "image": str(exportVolume(volume, folder / "input.nrrd")),
        "model": str(DEMO.model),
        "target": "white_matter",
        "out": str(folder / "out"),
        "options": SMALL.workerOptions(),
    }
    (folder / "request.json").write_text(json.dumps(request))
    process = SubprocessRunner()(workerCommand(folder / "request.json", sys.executable), workerEnvironment())
    fields = WorkerJob(process, finish=lambda done: done).wait()
    outputs = dict(fields["outputs"])
    assert set(outputs) == {"heatmap", "features", "report", "overview"}
    slices = np.zeros((30, 50, 3), np.uint8)
    slices[..., 0] = np.arange(50, dtype=np.uint8)[None, :] * 5  # red grows to the right
    slices[..., 1] = np.arange(30, dtype=np.uint8)[:, None] * 8  # green grows downwards
    slices[:5, :5] = (255, 255, 255)  # a white corner: top left
    imsave(folder / "out" / "slices.png", slices)
    outputs["slices"] = str(folder / "out" / "slices.png")
    return {"outputs": outputs, "summary": fields["summary"]}


@pytest.fixture(scope="module")
def two_targets(mni_t1, tmp_path_factory) -> dict:
    """A two-target explanation (classes 1 and 2 of a small seeded UNet on the MNI T1, 27 grid features, 200
    samples, faithfulness curves) saved by ``Explanation.save``: its outputs and the image."""
    explanation = segshap.explain(
        small_unet(1, 3),
        mni_t1,
        target=[1, 2],
        roi=((40, 52), (50, 62), (40, 52)),
        features="grid",
        n_features=8,
        nsamples=200,
        device="cpu",
        affine=MNI_AFFINE,
        patch_size=(32, 32, 32),
        overlap=0.25,
        blend="gaussian",
    )
    outputs = explanation.save(tmp_path_factory.mktemp("two_targets"))
    report = json.loads(outputs["report"].read_text())
    assert len(report["targets"]) == 2 and isinstance(report["faithfulness"], list), "the case this module needs"
    assert len(report["features"]) > 10  # more features than the top ones
    return {"outputs": {name: str(path) for name, path in outputs.items()}, "image": mni_t1}


# ---------------------------------------------------------------------------------------------------- scenes


def _scene(voxels: np.ndarray, affine: np.ndarray, name: str):
    """A scene with the image in patient/study, the three slice views (no layers yet) and a volume rendering logic."""
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    volume = add_volume(scene, voxels, affine, name)
    volume.CreateDefaultDisplayNodes()
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
    shNode.CreateItem(study, volume)
    for view in VIEWS:
        scene.AddNewNodeByClass("vtkMRMLSliceNode").SetLayoutName(view)
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName(view)
    return scene, volume, rendering


def _composites(scene) -> list:
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def _nodes(scene) -> list:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def _snapshot(scene) -> tuple:
    """Nodes (id, class, name) and subject hierarchy items."""
    shNode = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    nodes = [(n.GetID(), n.GetClassName(), n.GetName()) for n in _nodes(scene)]
    return nodes, sorted(items.GetId(i) for i in range(items.GetNumberOfIds()))


def _voxels(node) -> np.ndarray:
    """A volume node's voxels indexed (i, j, k)."""
    return slicer.util.arrayFromVolume(node).transpose(2, 1, 0)


def _table_rows(tableNode) -> list[dict]:
    """A table's rows: text as text, numbers as floats at full precision (``None`` for NaN)."""
    table = tableNode.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            cell = table.GetValue(r, c)
            number = None if cell.IsString() else cell.ToDouble()
            row[table.GetColumnName(c)] = cell.ToString() if cell.IsString() else None if math.isnan(number) else number
        rows.append(row)
    return rows


def _png_rgb(path) -> np.ndarray:
    """A PNG's RGB pixels as uint8, row 0 on top."""
    return np.round(imread(path)[..., :3] * 255).astype(np.uint8)


def _picture(node) -> np.ndarray:
    """An image node's pixels as the PNG holds them: ``(rows, columns, RGB)``, row 0 on top."""
    array = slicer.util.arrayFromVolume(node)  # (k, j, i, components)
    assert array.shape[0] == 1
    return array[0]


def _children(shNode, folder) -> set[str]:
    items = vtk.vtkIdList()
    shNode.GetItemChildren(folder, items)
    return {shNode.GetItemDataNode(items.GetId(i)).GetName() for i in range(items.GetNumberOfIds())}


def _import_two(scene, volume, rendering, two_targets, name="MNI SHAP", **keywords) -> list[ExplanationNodes]:
    return importExplanations(scene, two_targets["outputs"], volume, name, rendering, **keywords)


# ---------------------------------------------------------------------------------------------------- layers


def test_showing_a_result_leaves_the_user_s_layers_as_they_are(two_targets):
    scene, volume, rendering = _scene(two_targets["image"], MNI_AFFINE, "MNI T1")
    pet = add_volume(scene, two_targets["image"] * 2, MNI_AFFINE, "PET")
    labels = add_volume(
        scene, (two_targets["image"] > 0).astype(np.uint8), MNI_AFFINE, "brain", "vtkMRMLLabelMapVolumeNode"
    )
    red, yellow, green = _composites(scene)
    for composite in (red, yellow):  # a PET/CT-like fusion with a label layer
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetForegroundVolumeID(pet.GetID())
        composite.SetForegroundOpacity(0.5)
        composite.SetLabelVolumeID(labels.GetID())
    green.SetForegroundVolumeID(pet.GetID())  # no background here
    green.SetForegroundOpacity(0.5)
    green.SetLabelVolumeID(labels.GetID())

    def layers():
        return [
            (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity(), c.GetLabelVolumeID())
            for c in _composites(scene)
        ]

    before = layers()
    first, second = _import_two(scene, volume, rendering, two_targets)
    assert layers() == before  # importing touches no view
    showInSliceViews(scene, volume, first)
    after = layers()
    assert after[:2] == before[:2]
    assert after[2] == (volume.GetID(), pet.GetID(), 0.5, labels.GetID())  # only the missing background was set
    display = first.segments.GetDisplayNode()
    assert display.GetVisibility() and display.GetVisibility2D()
    layered = {layer for composite in after for layer in composite if isinstance(layer, str)}
    for node in (first.heatmap, second.heatmap, first.features):
        assert node.GetID() not in layered  # the heatmaps and the label map stay off the views

    # Another target shown: its segments replace the first's in the slice views, the layers still as they were.
    showInSliceViews(scene, None, second)  # the input volume is the result's own by default
    assert layers() == after
    assert second.segments.GetDisplayNode().GetVisibility2D() and not display.GetVisibility2D()
    hideInViews(second)
    assert not second.segments.GetDisplayNode().GetVisibility() and not isShown3D(second)
    assert layers() == after


# ---------------------------------------------------------------------------------------------------- lasting


def test_a_result_survives_saving_and_reopening_the_scene(worker_result, oblique_t1, tmp_path):
    original, summary = worker_result["outputs"], worker_result["summary"]
    report = json.loads(Path(original["report"]).read_text())
    job = tmp_path / "job"  # the job's temporary folder, removed once the result is in the scene
    shutil.copytree(Path(original["report"]).parent, job)
    outputs = {name: str(job / Path(path).name) for name, path in original.items()}
    scene, volume, rendering = _scene(*oblique_t1, "T1 oblique")
    nodes = importExplanation(scene, outputs, volume, "T1 SHAP white_matter", rendering, inputs="demo", summary=summary)
    shutil.rmtree(job)

    # The report lives in the scene: it outlasts the job's folder.
    assert nodes.report == report and nodes.rows == report["features"]
    assert nodes.summary == summary and nodes.target == "white_matter" and nodes.inputs == "demo"
    assert nodes.inputVolume is volume
    heat, ids = _voxels(nodes.heatmap).copy(), _voxels(nodes.features).copy()
    values_table = _table_rows(nodes.table)
    np.testing.assert_array_equal(_picture(nodes.overview), _png_rgb(original["overview"]))
    np.testing.assert_array_equal(_picture(nodes.slices), _png_rgb(original["slices"]))
    assert _picture(nodes.slices)[0, 0].tolist() == [255, 255, 255]  # row 0 on top, as in the file
    items = [tuple(row[c] for c in REPORT_COLUMNS) for row in _table_rows(nodes.reportTable)]
    assert items == reportItems(report, summary)
    keys = dict(items)
    assert keys["summary"] == summary and keys["version: segshap"] == report["versions"]["segshap"]
    assert float(keys["base value (every feature off)"]) == pytest.approx(report["base_value"], rel=1e-5)
    assert float(keys["full value"]) == pytest.approx(report["full_value"], rel=1e-5)
    assert float(keys["deletion AUC"]) == pytest.approx(report["faithfulness"]["deletion_auc"], rel=1e-5)
    assert keys["setting: n_features"] == "20" and keys["warning 1"] == report["warnings"][0]
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.GetItemParent(shNode.GetItemByDataNode(volume))
    shared = {
        f"T1 SHAP white_matter {suffix}" for suffix in ("features", "report", "report (JSON)", "overview", "slices")
    }
    mine = {"T1 SHAP white_matter", "T1 SHAP white_matter segments", "T1 SHAP white_matter values"}
    assert _children(shNode, nodes.folderItem) == shared | mine
    assert shNode.GetItemParent(nodes.folderItem) == study

    path = save_scene(scene, tmp_path / "saved")
    reopened, _ = load_scene(path)
    found = findExplanations(reopened)
    assert found == [nodes] and len(found) == 1
    again = found[0]
    assert again.heatmap.GetScene() is reopened and again.heatmap.GetName() == "T1 SHAP white_matter"

    # The report: settings, versions, base and full values, faithfulness curves, standard errors, warnings.
    assert again.report == report
    assert again.report["faithfulness"]["deletion"] == report["faithfulness"]["deletion"]
    assert [row["stderr"] for row in again.rows] == [row["stderr"] for row in report["features"]]
    assert again.summary == summary and again.inputs == "demo" and again.target == "white_matter"
    assert again.inputVolume is not None and again.inputVolume.GetName() == "T1 oblique"
    assert [tuple(row[c] for c in REPORT_COLUMNS) for row in _table_rows(again.reportTable)] == items
    # The values, the maps and the figures.
    # 3D Slicer's table files keep 6 significant digits: the table is for reading, the exact values are the report's.
    reread = _table_rows(again.table)
    assert [list(row) for row in reread] == [list(row) for row in values_table]
    for row, original_row in zip(reread, values_table):
        for column, cell in row.items():
            if isinstance(cell, float):
                assert cell == pytest.approx(original_row[column], rel=1e-5, abs=1e-12), (column, row)
            else:
                assert cell == original_row[column], (column, row)  # text, or None for NaN
    table = again.table.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    assert again.values == nodes.values  # from the report, exactly
    np.testing.assert_array_equal(_voxels(again.heatmap), heat)
    np.testing.assert_array_equal(_voxels(again.features), ids)
    np.testing.assert_array_equal(_picture(again.overview), _png_rgb(original["overview"]))
    np.testing.assert_array_equal(_picture(again.slices), _png_rgb(original["slices"]))
    segments = again.segments.GetSegmentation()
    assert segments.GetNumberOfSegments() == nodes.segments.GetSegmentation().GetNumberOfSegments()
    assert again.outlineStyle is OutlineStyle.TOP and again.topFeatures == nodes.topFeatures
    assert again.volumeRendering is not None and again.volumeRendering.GetVisibility()
    assert again.heatmap.GetDisplayNode().GetColorNode() is reopened.GetSingletonNode(
        DIVERGING_COLOR_TAG, "vtkMRMLColorTableNode"
    )
    # Its place in the subject hierarchy, and it can be shown.
    shAgain = reopened.GetSubjectHierarchyNode()
    assert shAgain.GetItemName(again.folderItem) == "T1 SHAP white_matter"
    assert _children(shAgain, again.folderItem) == shared | mine
    assert shAgain.GetItemLevel(shAgain.GetItemParent(again.folderItem)) == "Study"
    showInSliceViews(reopened, None, again, outlines=OutlineStyle.ALL)
    assert again.segments.GetDisplayNode().GetVisibility()


def test_several_targets_give_one_result_each_sharing_features_report_and_folder(two_targets, tmp_path):
    outputs = two_targets["outputs"]
    report = json.loads(Path(outputs["report"]).read_text())
    scene, volume, rendering = _scene(two_targets["image"], MNI_AFFINE, "MNI T1")
    before = _snapshot(scene)
    with pytest.raises(ValueError, match="2 targets.*importExplanations"):
        importExplanation(scene, outputs, volume, "one", rendering)
    assert _snapshot(scene) == before

    results = _import_two(scene, volume, rendering, two_targets)
    assert [nodes.target for nodes in results] == ["class 1", "class 2"]
    assert [nodes.targetIndex for nodes in results] == [0, 1]
    first, second = results
    for shared in ("features", "reportNode", "reportTable", "overview", "folderItem", "resultId"):
        assert getattr(first, shared) == getattr(second, shared), shared
    for own in ("heatmap", "segments", "table", "volumeRendering"):
        assert getattr(first, own) is not getattr(second, own), own
    assert first.slices is None  # save() made no slices.png here
    assert [nodes.name for nodes in results] == ["MNI SHAP class 1", "MNI SHAP class 2"]
    assert (
        second.table.GetName() == "MNI SHAP class 2 values" and second.segments.GetName() == "MNI SHAP class 2 segments"
    )
    assert first.features.GetName() == "MNI SHAP features"
    assert (
        second.heatmap.GetAttribute(TARGET_ATTRIBUTE) == "1" and first.features.GetAttribute(TARGET_ATTRIBUTE) is None
    )
    assert {first.heatmap.GetAttribute(RESULT_ATTRIBUTE), first.reportNode.GetAttribute(RESULT_ATTRIBUTE)} == {
        first.resultId
    }
    assert first.reportNode.GetAttribute(INPUTS_ATTRIBUTE) == "class 1, class 2"  # by default the targets
    shNode = scene.GetSubjectHierarchyNode()
    assert _children(shNode, first.folderItem) == {
        "MNI SHAP features",
        "MNI SHAP report",
        "MNI SHAP report (JSON)",
        "MNI SHAP overview",
        *(f"MNI SHAP class {t}{suffix}" for t in (1, 2) for suffix in ("", " segments", " values")),
    }

    # Each heatmap is the engine's heatmap of its target (the 4D file, read here with nibabel).
    written = nibabel.load(outputs["heatmap"]).get_fdata(dtype=np.float32)
    assert written.shape[3] == 2
    ids = _voxels(first.features)
    for t, nodes in enumerate(results):
        np.testing.assert_array_equal(_voxels(nodes.heatmap), written[..., t])
        matrix = vtk.vtkMatrix4x4()
        nodes.heatmap.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], MNI_AFFINE)
        values = {row["id"]: row["value"][t] for row in report["features"]}
        assert nodes.values == values
        rows = _table_rows(nodes.table)
        assert [int(row["Feature"]) for row in rows] == sorted(values, key=lambda i: -abs(values[i]))
        for row in rows:
            source = next(r for r in report["features"] if r["id"] == int(row["Feature"]))
            assert row["Value"] == pytest.approx(source["value"][t], rel=1e-12)
            assert row["Std. error"] == pytest.approx(source["stderr"][t], rel=1e-12)
        segments = nodes.segments.GetSegmentation()
        names = {
            segments.GetNthSegment(i).GetLabelValue(): segments.GetNthSegment(i).GetName()
            for i in range(segments.GetNumberOfSegments())
        }
        assert set(names) == set(np.unique(ids)) - {0}
        assert all(f"({values[label]:+.4g})" in name for label, name in names.items())
        assert nodes.topFeatures == [
            row["id"] for row in sorted(targetRows(report, t), key=lambda r: -abs(r["value"]))[:10]
        ]
    assert first.volumeRendering.GetVisibility() and not second.volumeRendering.GetVisibility()  # one at a time
    keys = dict((row["Item"], row["Value"]) for row in _table_rows(first.reportTable))
    for t, target in enumerate(("class 1", "class 2")):
        assert float(keys[f"{target}: full value"]) == pytest.approx(report["full_value"][t], rel=1e-5)
        assert float(keys[f"{target}: insertion AUC"]) == pytest.approx(
            report["faithfulness"][t]["insertion_auc"], rel=1e-5
        )
    assert keys["targets"] == "class 1, class 2"

    # Found again, target by target, after saving and reopening.
    assert findExplanations(scene) == results and findExplanations(scene, volume) == results
    assert findExplanations(scene, inputs="something else") == []
    reopened, _ = load_scene(save_scene(scene, tmp_path / "saved"))
    found = findExplanations(reopened)
    assert found == results
    assert found[0].features is found[1].features and found[0].reportNode is found[1].reportNode
    np.testing.assert_array_equal(_voxels(found[1].heatmap), written[..., 1])
    assert found[1].values == second.values and found[1].report == report


# ---------------------------------------------------------------------------------------------------- replacing


def test_replacing_removes_only_the_earlier_result_of_the_same_inputs(two_targets):
    scene, volume, rendering = _scene(two_targets["image"], MNI_AFFINE, "MNI T1")
    other_volume = add_volume(scene, two_targets["image"], MNI_AFFINE, "MNI T1 copy")
    kept = _snapshot(scene)
    old = _import_two(scene, volume, rendering, two_targets, "old", inputs="model A")
    unrelated = _import_two(scene, volume, rendering, two_targets, "model B", inputs="model B")
    elsewhere = _import_two(scene, other_volume, rendering, two_targets, "other volume", inputs="model A")
    old_ids = {n.GetID() for n in _nodes(scene) if n.GetAttribute(RESULT_ATTRIBUTE) == old[0].resultId}
    old_helpers = {old[0].volumeRendering.GetID(), old[0].volumeRendering.GetVolumePropertyNodeID()}
    old_helpers |= {nodes.segments.GetDisplayNode().GetID() for nodes in old}
    shNode = scene.GetSubjectHierarchyNode()
    folder = old[0].folderItem

    # A new run fails half-way: nothing is added, the old result stays (replacing comes after the import).
    before = _snapshot(scene)
    broken = dict(two_targets["outputs"], overview=two_targets["outputs"]["report"])  # not a PNG
    with pytest.raises(OSError, match="picture"):
        _import_two(scene, volume, rendering, dict(two_targets, outputs=broken), "new", inputs="model A")
    assert _snapshot(scene) == before
    with pytest.raises(ValueError, match="import it first"):
        replaceExplanations(scene, [])

    new = _import_two(scene, volume, rendering, two_targets, "new", inputs="model A")
    assert replaceExplanations(scene, new) == [old[0].resultId]
    for nodeId in old_ids | old_helpers:
        assert scene.GetNodeByID(nodeId) is None, nodeId
    assert folder not in _snapshot(scene)[1]  # its folder went with it
    assert findExplanations(scene) == unrelated + elsewhere + new
    assert scene.GetSingletonNode(DIVERGING_COLOR_TAG, "vtkMRMLColorTableNode") is not None  # shared: stays
    assert volume.GetScene() is scene and new[0].volumeRendering.GetVolumePropertyNode() is not None
    assert replaceExplanations(scene, new) == []  # nothing left to replace

    # A folder the user put something into stays; every result removed leaves the scene as it was.
    note = scene.AddNewNodeByClass("vtkMRMLTextNode", "my note")
    shNode.CreateItem(unrelated[0].folderItem, note)
    removeExplanation(scene, unrelated[1])  # any target removes the whole result
    assert shNode.GetItemName(unrelated[0].folderItem) == "model B"
    assert _children(shNode, unrelated[0].folderItem) == {"my note"}
    shNode.RemoveItem(shNode.GetItemByDataNode(note), False, False)
    scene.RemoveNode(note)
    shNode.RemoveItem(unrelated[0].folderItem, False, False)
    for result in (elsewhere[0], new[0].resultId):
        removeExplanation(scene, result)
    assert findExplanations(scene) == []
    left = _snapshot(scene)
    assert [node for node in left[0] if node not in kept[0]] == [
        (
            scene.GetSingletonNode(DIVERGING_COLOR_TAG, "vtkMRMLColorTableNode").GetID(),
            "vtkMRMLColorTableNode",
            "SegShapExplain diverging",
        )
    ]
    assert left[1] == kept[1]


# ---------------------------------------------------------------------------------------------------- 3D


def test_show_3d_switches_the_volume_rendering_or_the_top_segments(two_targets):
    scene, volume, rendering = _scene(two_targets["image"], MNI_AFFINE, "MNI T1")
    first, second = _import_two(scene, volume, rendering, two_targets)
    assert isShown3D(first) and not isShown3D(second)
    setShow3D(first, False)
    assert not first.volumeRendering.GetVisibility() and not isShown3D(first)
    setShow3D(second, True)
    assert second.volumeRendering.GetVisibility() and isShown3D(second)
    assert not second.segments.GetDisplayNode().GetVisibility3D()  # the rendering, not the segments

    # Without a volume rendering logic: the top features' segments as surfaces, the slice views as they were.
    plain = _import_two(scene, volume, None, two_targets, "no rendering")[0]
    assert plain.volumeRendering is None and not isShown3D(plain)
    display = plain.segments.GetDisplayNode()
    fills = display.GetVisibility2D()
    setShow3D(plain, True)
    assert isShown3D(plain) and display.GetVisibility3D() and display.GetVisibility2D() == fills
    segmentation = plain.segments.GetSegmentation()
    shown = {
        segmentation.GetNthSegment(i).GetLabelValue()
        for i in range(segmentation.GetNumberOfSegments())
        if display.GetSegmentVisibility3D(segmentation.GetNthSegmentID(i))
    }
    assert shown == set(plain.topFeatures) and len(shown) == 10 < segmentation.GetNumberOfSegments()
    assert segmentation.ContainsRepresentation("Closed surface")
    setShow3D(plain, False)
    assert not display.GetVisibility3D() and not isShown3D(plain)
    hideInViews(plain)  # hidden everywhere: showing it in 3D does not bring back the slice views' fills
    setShow3D(plain, True)
    assert display.GetVisibility() and display.GetVisibility3D() and not display.GetVisibility2D()
    assert plain.segments.GetAttribute(ROLE_ATTRIBUTE) == "segments"


def test_slices_png_shows_the_chosen_target_of_a_multi_target_run(two_targets, tmp_path):
    """slices.png is rendered for the second target of a multi-target explanation (it used to refuse them)."""
    import os
    import subprocess

    import SegShapExplainLib
    from segshap.io import write_image

    image = tmp_path / "image.nii.gz"
    write_image(image, two_targets["image"], MNI_AFFINE)
    outputs = Path(two_targets["outputs"]["report"]).parent
    centre = (MNI_AFFINE @ np.array([46.0, 56.0, 46.0, 1.0]))[:3]
    out = tmp_path / "slices.png"
    command = [sys.executable, "-m", "SegShapExplainLib.views", "--image", str(image), "--outputs", str(outputs)]
    command += ["--centre=" + ",".join(map(str, centre)), "--out", str(out), "--target-index", "1"]
    environment = {**os.environ, "PYTHONPATH": str(Path(SegShapExplainLib.__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert imread(out).shape[0] > 100
