"""The Slicer-side logic, headless: real MRML (PyPI ``slicer-core``), the real worker process on CPU, the demo model.

The input volume is the MNI152 T1 resampled onto an anisotropic (1.5 x 2.5 x 2 mm), rotated grid, placed in a
patient/study of the subject hierarchy; the model resamples it to its 2 mm RAS grid and the results come back on
the volume's own grid.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.slicer_scenes import DEMO, SMALL, vtk_matrix
from vtk.util import numpy_support

import segshap
from segshap.features import FEATURE_KINDS
from segshap.inputs import BASELINES
from segshap.io import read_image, read_segmentation, write_segmentation
from segshap.options import OPTION_NAMES, ExplainOptions
from segshap.processes import process_alive
from segshap.request import demo_request
from segshap.values import VALUE_NAMES
from SegShapExplainLib import (
    Baseline,
    Device,
    ExplainSettings,
    FeatureKind,
    JobCallbacks,
    OutOfMemoryError,
    SegShapExplainLogic,
    SubprocessRunner,
    ValueFunction,
    WorkerCancelled,
    WorkerError,
    WorkerJob,
)
from SegShapExplainLib.exchange import ensureSegmentationConverters, exportSegment, exportVolume
from SegShapExplainLib.results import DIVERGING_COLOR_TAG, TABLE_COLUMNS, SceneAdditions
from SegShapExplainLib.worker import parseEvent

MODEL = DEMO.model


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _voxels(node) -> np.ndarray:
    """A volume node's voxels indexed (i, j, k)."""
    return slicer.util.arrayFromVolume(node).transpose(2, 1, 0)


@pytest.fixture
def scene(oblique_t1):
    """A scene with the oblique T1 in patient/study, a white-matter segmentation of it, and a red slice view."""
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    voxels, affine = oblique_t1
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1 oblique")
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    volume.SetIJKToRASMatrix(vtk_matrix(affine))
    shNode = scene.GetSubjectHierarchyNode()
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
    study = shNode.CreateStudyItem(patient, "Study")
    shNode.CreateItem(study, volume)
    # Reference: bright tissue in a box (a hand-made "white matter" segment), held at the volume's geometry.
    labels = np.zeros(voxels.shape, np.uint8)
    box = (slice(14, 26), slice(8, 16), slice(10, 20))
    labels[box] = voxels[box] > np.percentile(voxels[box], 40)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "wm labels")
    slicer.util.updateVolumeFromArray(labelmap, np.ascontiguousarray(labels.transpose(2, 1, 0)))
    labelmap.SetIJKToRASMatrix(vtk_matrix(affine))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("white_matter")
    scene.RemoveNode(labelmap)
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName("Red")
    return scene


def _snapshot(scene) -> tuple:
    """What must not change when a job fails or is cancelled: nodes (id, class, name) and subject hierarchy items."""
    nodes = [(n.GetID(), n.GetClassName(), n.GetName()) for n in map(scene.GetNthNode, range(scene.GetNumberOfNodes()))]
    shNode = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    return nodes, sorted(items.GetId(i) for i in range(items.GetNumberOfIds()))


def _logic(scene, tmp_path) -> SegShapExplainLogic:
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    return SegShapExplainLogic(
        scene, python=sys.executable, volumeRenderingLogic=rendering, temporaryFolder=str(tmp_path)
    )


def _segment_id(scene) -> tuple:
    segmentation = scene.GetFirstNodeByName("Segmentation")
    return segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_explain_end_to_end_builds_the_nodes_on_the_input_geometry(scene, tmp_path):
    logic = _logic(scene, tmp_path)
    volume = scene.GetFirstNodeByName("T1 oblique")
    segmentation, segment = _segment_id(scene)
    # The volume sits under a transform (e.g. a registration): the worker sees its own geometry, the results
    # follow it under the same transform.
    shift = np.array([10.0, -5.0, 3.0])
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    transform.SetMatrixTransformToParent(vtk_matrix(np.r_[np.c_[np.eye(3), shift], [[0, 0, 0, 1]]]))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    progress, stages = [], []
    (nodes,) = logic.explain(
        volume,
        str(MODEL),
        "white_matter",
        segmentation,
        segment,
        SMALL,
        onProgress=progress.append,
        onLog=stages.append,
    )

    # Progress and stages came through; the job's folder is gone.
    assert progress and progress[-1].done == progress[-1].total > 0  # window forwards
    assert progress[-1].eta == "0s"  # as the worker writes it
    assert any("Estimating" in stage for stage in stages)
    assert list(tmp_path.iterdir()) == []

    # The panel's status line carries the faithfulness of the ranking, in the user's words.
    summary = nodes.summary
    assert "deletion AUC" in summary and "insertion AUC" in summary and "samples" in summary, summary
    assert logic.findResults() == [nodes]

    # Geometry identical to the input.
    for node in (nodes.heatmap, nodes.features):
        assert node.GetScene() is scene
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(volume), atol=1e-9)
        assert node.GetTransformNodeID() == transform.GetID()

    # Heatmap = the worker's values on the worker's features, 0 elsewhere.
    heat, ids = _voxels(nodes.heatmap), _voxels(nodes.features)
    values = nodes.values
    assert len(values) == len(nodes.report["features"]) > 5
    expected = np.zeros(heat.shape, np.float32)
    for feature, value in values.items():
        expected[ids == feature] = value
    np.testing.assert_array_equal(heat, expected)
    assert set(np.unique(ids)) - {0} <= set(values)
    assert (heat != 0).any()

    # Diverging colours, window symmetric around zero reaching the strongest value.
    display = nodes.heatmap.GetDisplayNode()
    strongest = max(abs(v) for v in values.values())
    assert display.GetColorNodeID() == scene.GetSingletonNode(DIVERGING_COLOR_TAG, "vtkMRMLColorTableNode").GetID()
    assert display.GetLevel() == pytest.approx(0.0, abs=1e-9)
    assert display.GetWindow() == pytest.approx(2 * strongest, rel=1e-6)
    assert not display.GetAutoWindowLevel()

    # The table: the worker's rows, sorted by |value|.
    table = nodes.table.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    rows = [{name: table.GetValueByName(r, name) for name in TABLE_COLUMNS} for r in range(table.GetNumberOfRows())]
    rows = [
        {name: cell.ToString() if name == "Organ" else cell.ToDouble() for name, cell in row.items()} for row in rows
    ]
    by_id = {row["id"]: row for row in nodes.report["features"]}
    assert sorted(int(row["Feature"]) for row in rows) == sorted(by_id)
    magnitudes = [abs(float(row["Value"])) for row in rows]
    assert magnitudes == sorted(magnitudes, reverse=True)
    for row in rows:
        source = by_id[int(row["Feature"])]
        assert float(row["Value"]) == pytest.approx(source["value"], rel=1e-12)
        stderr = math.nan if source["stderr"] is None else source["stderr"]  # null: not estimated
        assert row["Std. error"] == pytest.approx(stderr, rel=1e-12, nan_ok=True)
        assert int(row["Voxels"]) == source["voxels"] == int((ids == source["id"]).sum())

    # Subject hierarchy: a folder under the input's study holds the three nodes.
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.GetItemParent(shNode.GetItemByDataNode(volume))
    assert shNode.GetItemLevel(study) == "Study"
    assert shNode.GetItemParent(nodes.folderItem) == study
    for node in (nodes.heatmap, nodes.features, nodes.table):
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == nodes.folderItem
    assert nodes.heatmap.GetName() == "T1 oblique SHAP white_matter (slic 20, soft_dice)"
    assert nodes.table.GetName().endswith(" values") and nodes.features.GetName().endswith(" features")

    # Volume rendering: only the top features are opaque, zero is transparent.
    opacity = nodes.volumeRendering.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert opacity.GetValue(0.0) == 0.0 and opacity.GetValue(strongest) > 0.5 and opacity.GetValue(-strongest) > 0.5
    weakest_top = min(abs(values[i]) for i in nodes.topFeatures)
    assert all(opacity.GetValue(v) == 0.0 for v in values.values() if abs(v) < weakest_top * 0.5)

    # Slice views: the input under the feature segments (one per feature, named with its value); a table row
    # recentres them on its feature.
    logic.showResults(volume, nodes)
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == volume.GetID() and not composite.GetLabelVolumeID()
    segments = nodes.segments.GetSegmentation()
    assert segments.GetNumberOfSegments() == len(set(np.unique(ids)) - {0})
    assert shNode.GetItemParent(shNode.GetItemByDataNode(nodes.segments)) == nodes.folderItem
    assert nodes.segments.GetDisplayNode().GetVisibility()
    point = logic.jumpToFeature(nodes.table, 0)
    top = by_id[int(rows[0]["Feature"])]
    np.testing.assert_allclose(point, np.array(top["centroid_ras_mm"]) + shift)
    red = scene.GetFirstNodeByClass("vtkMRMLSliceNode")
    np.testing.assert_allclose([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)], point, atol=1e-6)


@pytest.mark.slow
def test_segment_with_model_and_describe(scene, tmp_path, oblique_t1):
    logic = _logic(scene, tmp_path)
    volume = scene.GetFirstNodeByName("T1 oblique")
    description = logic.describeModel(str(MODEL), device=Device.CPU)
    assert description.format == "torchscript"
    assert description.classes == {0: "background", 1: "gray_matter", 2: "white_matter"}
    assert description.device == "cpu" and description.patchSize == (32, 32, 32)

    segmentation = logic.segment(volume, str(MODEL), device=Device.CPU)
    segments = segmentation.GetSegmentation()
    names = {segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())}
    assert names == {"gray_matter", "white_matter"}
    shNode = scene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentation)) == shNode.GetItemParent(
        shNode.GetItemByDataNode(volume)
    )
    # Voxel for voxel the model's prediction on this image (computed here in-process), on the volume's grid.
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    ids = vtk.vtkStringArray()
    segments.GetSegmentIDs(ids)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labels, volume)
    names_by_label = {
        index + 1: segments.GetSegment(ids.GetValue(index)).GetName() for index in range(ids.GetNumberOfValues())
    }
    exported = np.vectorize(lambda v: {0: "background", **names_by_label}[v])(_voxels(labels))
    voxels, affine = oblique_t1
    predicted = segshap.predict(segshap.load_model(MODEL, device="cpu"), voxels, affine=affine, device="cpu")
    expected = np.vectorize(description.classes.get)(predicted)
    np.testing.assert_array_equal(exported, expected)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- failures


@pytest.mark.slow
def test_cancel_mid_run_leaves_the_scene_as_it_was(scene, tmp_path):
    logic = _logic(scene, tmp_path)
    volume = scene.GetFirstNodeByName("T1 oblique")
    before = _snapshot(scene)
    stages, cancelled = [], []
    job = logic.explainAsync(
        volume,
        str(MODEL),
        "white_matter",
        settings=ExplainSettings(nFeatures=60, nSamples=20000, device=Device.CPU),
        callbacks=JobCallbacks(onLog=stages.append, onCancelled=lambda: cancelled.append(1)),
    )
    deadline = time.monotonic() + 120
    while not any("Estimating" in stage for stage in stages):
        assert not job.poll(), f"the job ended before it could be cancelled: {job.error}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.cancel()
    assert cancelled == [1] and job.finished and job.cancelled
    assert job.process.returnCode() is not None  # the worker is gone
    assert _snapshot(scene) == before
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WorkerCancelled):
        job.wait()


@pytest.mark.slow
def test_worker_error_raises_its_message_and_adds_nothing(scene, tmp_path):
    logic = _logic(scene, tmp_path)
    volume = scene.GetFirstNodeByName("T1 oblique")
    before = _snapshot(scene)
    with pytest.raises(WorkerError, match="no_such_class.*white_matter") as error:
        logic.explain(volume, str(MODEL), "no_such_class", settings=SMALL)
    assert not isinstance(error.value, OutOfMemoryError)
    assert _snapshot(scene) == before
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_refused_before_the_worker_starts(scene, tmp_path):
    logic = _logic(scene, tmp_path)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(ValueError, match="not a scalar image"):
        logic.explain(labelmap, str(MODEL), "white_matter")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no voxels"):
        logic.explain(empty, str(MODEL), "white_matter")
    volume = scene.GetFirstNodeByName("T1 oblique")
    segmentation, _ = _segment_id(scene)
    with pytest.raises(ValueError, match="Choose a segment"):
        logic.explain(volume, str(MODEL), "white_matter", segmentation, None)
    with pytest.raises(ValueError, match="no segment with id 'nope'.*'white_matter'"):
        logic.explain(volume, str(MODEL), "white_matter", segmentation, "nope")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="different transforms"):
        logic.explain(volume, str(MODEL), "white_matter", segmentation, "nope")
    with pytest.raises(ValueError, match=r"Pass the scene: SegShapExplainLogic\(scene\)"):
        SegShapExplainLogic()  # outside 3D Slicer there is no slicer.mrmlScene to default to
    with pytest.raises(ValueError, match="number of samples"):
        ExplainSettings(nSamples=1)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_import_removes_what_it_added(scene):
    before = _snapshot(scene)
    shNode = scene.GetSubjectHierarchyNode()
    with pytest.raises(RuntimeError, match="half-way"):
        with SceneAdditions(scene) as added:
            node = added.addNew("vtkMRMLScalarVolumeNode", "partial")
            node.CreateDefaultDisplayNodes()
            added.items.append(shNode.CreateFolderItem(shNode.GetSceneItemID(), "partial results"))
            raise RuntimeError("half-way")
    assert _snapshot(scene) == before


# ---------------------------------------------------------------------------------------------------- files


def test_exported_inputs_keep_the_volume_geometry(scene, tmp_path, oblique_t1):
    volume = scene.GetFirstNodeByName("T1 oblique")
    voxels, affine = oblique_t1
    data, written = read_image(exportVolume(volume, tmp_path / "input.nrrd"))
    np.testing.assert_allclose(written, affine, atol=1e-9)
    np.testing.assert_array_equal(data, voxels)
    segmentation, segment = _segment_id(scene)
    segments, segment_affine = read_segmentation(exportSegment(segmentation, segment, tmp_path / "r.seg.nrrd"))
    assert list(segments) == ["white_matter"]
    # Slicer crops a segment to its extent; placed by its own affine it covers the same voxels as the labelmap.
    mask = segments["white_matter"]
    offset = np.linalg.solve(affine, segment_affine)
    np.testing.assert_allclose(offset[:3, :3], np.eye(3), atol=1e-6)
    start = np.round(offset[:3, 3]).astype(int)
    placed = np.zeros(voxels.shape, bool)
    placed[tuple(slice(s, s + n) for s, n in zip(start, mask.shape))] = mask
    box = (slice(14, 26), slice(8, 16), slice(10, 20))
    expected = np.zeros(voxels.shape, bool)
    expected[box] = voxels[box] > np.percentile(voxels[box], 40)
    np.testing.assert_array_equal(placed, expected)


# ---------------------------------------------------------------------------------------------------- protocol


def test_settings_speak_the_engine_s_names():
    options = ExplainSettings().workerOptions()
    assert set(options) <= set(OPTION_NAMES)
    assert ExplainOptions.from_dict(options) == ExplainOptions()  # the panel's defaults are the engine's
    chosen = ExplainSettings(
        features=FeatureKind.ORGANS, nSamples=500, tolerance=0.02, timeLimit=30, batchSize=8, device=Device.CPU
    )
    parsed = ExplainOptions.from_dict(chosen.workerOptions())  # every value one the engine takes
    assert (parsed.features, parsed.nsamples, parsed.tolerance, parsed.max_seconds) == ("organs", 500, 0.02, 30.0)
    assert (parsed.batch_size, parsed.device) == (8, "cpu")
    assert {kind.value for kind in FeatureKind} == set(FEATURE_KINDS)
    assert {value.value for value in ValueFunction} == set(VALUE_NAMES)
    assert {baseline.value for baseline in Baseline} == set(BASELINES)
    assert options["nsamples"] == "auto" and options["tolerance"] is None
    assert ExplainSettings(nSamples=500, tolerance=0.02).workerOptions()["nsamples"] == 500
    assert "batch_size" not in options  # the engine's default (segshap.inference.DEFAULT_BATCH_SIZE) applies
    assert ExplainSettings(batchSize=8).workerOptions()["batch_size"] == 8
    assert all(FeatureKind.label(kind) for kind in FeatureKind)


def test_the_slicer_self_test_and_segshap_demo_explain_the_same_case():
    request = demo_request("out", {})
    assert (Path(request["image"]).resolve(), Path(request["model"]).resolve()) == (DEMO.image, DEMO.model)
    assert request["target"] == DEMO.target and tuple(map(tuple, request["roi"])) == DEMO.roi
    assert DEMO.image.is_file() and DEMO.model.is_file()


def test_events_are_parsed_and_other_lines_kept_as_output():
    event = parseEvent('{"event": "progress", "done": 3, "total": 10, "eta_s": 1.5}\n')
    assert event.kind == "progress" and event.fields == {"done": 3, "total": 10, "eta_s": 1.5}
    assert parseEvent("Traceback (most recent call last):\n").kind == "output"
    assert parseEvent('{"not": "an event"}').kind == "output"
    assert parseEvent("{broken json").text == "{broken json"


def _job(script: str) -> WorkerJob:
    process = SubprocessRunner()([sys.executable, "-c", script], {})
    return WorkerJob(process, finish=lambda fields: fields["outputs"])


def test_a_crashing_worker_reports_its_last_output():
    with pytest.raises(WorkerError, match=r"exit code 3.*\n.*segfault-like crash"):
        _job("import sys; print('segfault-like crash', file=sys.stderr); sys.exit(3)").wait()


def test_an_out_of_memory_error_event_is_its_own_exception():
    script = (
        "import json; print(json.dumps({'event': 'error', 'message': 'The GPU ran out of memory', "
        "'reason': 'out_of_memory'})); raise SystemExit(1)"
    )
    with pytest.raises(OutOfMemoryError, match="ran out of memory"):
        _job(script).wait()


def test_done_event_gives_the_result():
    assert _job("import json; print(json.dumps({'event': 'done', 'outputs': {'a': 1}}))").wait() == {"a": 1}


def test_cancel_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    job = _job(script)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    job.cancel()
    deadline = time.monotonic() + 10
    while process_alive(child):
        assert time.monotonic() < deadline, "the worker's child outlived the cancel"
        time.sleep(0.05)


def test_a_segmentation_segshap_writes_loads_in_slicer_by_name_and_place(tmp_path):
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[5:7, 5:8, 5:9] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 6.0)
    write_segmentation(tmp_path / "tissues.seg.nrrd", labels, affine, {1: "gray_matter", 2: "white_matter"})
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "tissues.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == ["gray_matter", "white_matter"]
    # Each segment's voxels, and where they lie: the centroid in RAS of the voxels the file labels.
    for segment, mask in zip(segments, (labels == 1, labels == 2)):
        image = segment.GetRepresentation("Binary labelmap")
        extent = image.GetExtent()
        shape = [extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in range(3)]
        array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape[::-1]).transpose(2, 1, 0)
        ijk = np.argwhere(array == segment.GetLabelValue()) + [extent[0], extent[2], extent[4]]
        to_world = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(to_world)
        matrix = np.array([[to_world.GetElement(i, j) for j in range(4)] for i in range(4)])
        assert len(ijk) == mask.sum()
        np.testing.assert_allclose(
            (matrix[:3, :3] @ ijk.mean(0) + matrix[:3, 3]), affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]
        )
