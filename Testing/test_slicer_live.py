"""Anytime explanations on the Slicer side, headless with real MRML: the worker's ``estimate`` events reach the
callbacks (the newest of each poll only), the live overlay shows each estimate in one node refreshed in place and
leaves the scene as it found it, Stop and keep makes the request's stop file, and, end to end with the real worker,
a stopped run keeps the estimate on show.

Most tests play the worker's part (:class:`ScriptedProcess`): they write the heatmap files on the exported volume's
grid as the worker does, so each step is known exactly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.slicer_scenes import DEMO, SMALL, add_volume
from vtkmodules.util.misc import calldata_type

from segshap.io import read_image, write_image
from SegShapExplainLib import Device, ExplainSettings, JobCallbacks, SegShapExplainLogic, WorkerJob
from SegShapExplainLib.exchange import ensureSegmentationConverters, exportVolume
from SegShapExplainLib.live import LIVE_OPACITY, LIVE_ROLE, LiveOverlay
from SegShapExplainLib.results import RESULT_ATTRIBUTE, ROLE_ATTRIBUTE

FEATURES = 4
UPDATES = ([0.5, -0.2, 0.1, 0.0], [0.8, -0.4, 0.02, 0.3], [0.9, -0.5, 0.03, 0.25])
"""Each feature's value at each live update of the scripted worker."""


# ---------------------------------------------------------------------------------------------------- a worker


class ScriptedProcess:
    """A :class:`~SegShapExplainLib.worker.RunningProcess` whose output comes one batch per poll (a batch is made
    when it is taken, so it can write files then); it exits with ``code`` once the batches are used up."""

    def __init__(self, batches: Iterable[list[str]], code: int = 0) -> None:
        self.batches: Iterator[list[str]] = iter(batches)
        self.code = code
        self.ended = False
        self.killed = False

    def takeLines(self) -> list[str]:
        if self.ended:
            return []
        try:
            return next(self.batches)
        except StopIteration:
            self.ended = True
            return []

    def returnCode(self) -> int | None:
        return self.code if self.ended else None

    def kill(self) -> None:
        self.killed = self.ended = True


def _line(event: str, **fields) -> str:
    return json.dumps({"event": event, **fields}) + "\n"


def _estimate(update: int, values: list[float], heatmap: str = "", final: bool = False) -> str:
    top = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    return _line(
        "estimate",
        update=update,
        level="features",
        regions=None,
        feature_ids=list(range(1, len(values) + 1)),
        values=values,
        stderr=[None] * len(values),
        coalitions=100 * update,
        forwards=None,
        seconds=0.5 * update,
        fraction=0.1 * update,
        top_changed=0,
        stable_updates=update - 1,
        top=[{"feature": i + 1, "value": values[i], "stderr": None} for i in top],
        heatmap=heatmap,
        heatmaps=[heatmap],
        text=f"top 10 unchanged for {update - 1} updates",
        final=final,
    )


def _features(shape: tuple[int, int, int]) -> np.ndarray:
    """Feature ids 1..FEATURES: four boxes side by side along i, in the middle of the grid; 0 elsewhere."""
    labels = np.zeros(shape, np.uint16)
    width = shape[0] // (FEATURES + 1)
    j, k = slice(shape[1] // 4, 3 * shape[1] // 4), slice(shape[2] // 4, 3 * shape[2] // 4)
    for feature in range(1, FEATURES + 1):
        labels[(feature - 1) * width + width // 2 : feature * width + width // 2, j, k] = feature
    return labels


def _heatmap(labels: np.ndarray, values: list[float]) -> np.ndarray:
    return np.r_[0.0, values].astype(np.float32)[labels]


def _write_atomically(path: Path, voxels: np.ndarray, affine: np.ndarray) -> None:
    """As the worker writes a live heatmap: whole, in place of the previous one."""
    partial = path.with_name("partial-" + path.name)
    write_image(partial, voxels, affine)
    os.replace(partial, path)


def explanation_output(request: dict, updates=UPDATES, *, fail: str = "") -> Iterator[list[str]]:
    """The output of an explanation, one batch per poll. With live updates: an estimate per update (its heatmap
    written first) until the stop file appears, then the final estimate (the last one delivered). Then, once the
    outputs are written, ``done`` with the last values (or, with ``fail``, an ``error`` event)."""
    image, affine = read_image(request["image"])
    labels = _features(image.shape)
    yield [_line("log", message="Estimating")]
    values = updates[-1]
    if "update_every" in request:
        live = Path(request["live_folder"])
        live.mkdir()
        heatmap = live / "estimate.nrrd"
        for update, values in enumerate(updates, 1):
            _write_atomically(heatmap, _heatmap(labels, values), affine)
            yield [_estimate(update, values, str(heatmap))]
            if Path(request["stop_file"]).exists():
                break
        if not fail:
            yield [_estimate(update, values, str(heatmap), final=True)]
    if fail:
        yield [_line("error", message=fail)]
        return
    out = Path(request["out"])
    out.mkdir()
    write_image(out / "features.nrrd", labels, affine)
    write_image(out / "heatmap.nrrd", _heatmap(labels, values), affine)
    rows = [{"id": f, "value": v, "stderr": None, "voxels": int((labels == f).sum())} for f, v in enumerate(values, 1)]
    report = {"targets": [{"name": request["target"]}], "features": rows}
    (out / "explanation.json").write_text(json.dumps(report))
    outputs = {name: str(out / name) for name in ("features.nrrd", "heatmap.nrrd", "explanation.json")}
    yield [_line("done", outputs=dict(zip(("features", "heatmap", "report"), outputs.values())), summary="done")]


class ScriptedRunner:
    """A process runner that plays an explanation (:func:`explanation_output`) for the request it is given."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.requests: list[dict] = []

    def __call__(self, command, env) -> ScriptedProcess:
        request = json.loads(Path(command[command.index("--request") + 1]).read_text())
        self.requests.append(request)
        return ScriptedProcess(explanation_output(request, fail=self.fail), code=1 if self.fail else 0)


# ---------------------------------------------------------------------------------------------------- a scene


@pytest.fixture
def scene(oblique_t1):
    """The oblique T1 with a window/level of its own as the background of the Red view, a "PET" volume as its
    foreground at 0.3, and a Yellow view that shows nothing."""
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    voxels, affine = oblique_t1
    volume = add_volume(scene, voxels, affine, "T1 oblique")
    volume.CreateDefaultDisplayNodes()
    volume.GetDisplayNode().AutoWindowLevelOff()
    volume.GetDisplayNode().SetWindowLevel(3.0, 0.5)
    pet = add_volume(scene, voxels[::-1].copy(), affine, "PET")
    for name in ("Red", "Yellow"):
        scene.AddNewNodeByClass("vtkMRMLSliceNode").SetLayoutName(name)
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName(name)
    red = _composite(scene, "Red")
    red.SetBackgroundVolumeID(volume.GetID())
    red.SetForegroundVolumeID(pet.GetID())
    red.SetForegroundOpacity(0.3)
    return scene


def _composite(scene, name: str):
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() == name:
            return composite
    raise LookupError(name)


def _views(scene) -> dict:
    """What the overlay must give back: every view's layers and position, the input's window/level."""
    views = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        layers = (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID())
        views[composite.GetLayoutName()] = layers + (composite.GetForegroundOpacity(),)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        views[node.GetLayoutName() + " position"] = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS()).tolist()
    display = scene.GetFirstNodeByName("T1 oblique").GetDisplayNode()
    views["window/level"] = (display.GetWindow(), display.GetLevel())
    return views


def _contents(scene) -> list[tuple]:
    """The scene's nodes (id, class, name) and subject hierarchy items."""
    shNode = scene.GetSubjectHierarchyNode()  # first: it makes the node when there is none
    nodes = [(n.GetID(), n.GetClassName(), n.GetName()) for n in map(scene.GetNthNode, range(scene.GetNumberOfNodes()))]
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    return nodes + sorted(shNode.GetItemName(items.GetId(i)) for i in range(items.GetNumberOfIds()))


def _live_nodes(scene) -> list:
    return [
        n for n in map(scene.GetNthNode, range(scene.GetNumberOfNodes())) if n.GetAttribute(ROLE_ATTRIBUTE) == LIVE_ROLE
    ]


def _ijk(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _logic(scene, tmp_path, runner) -> SegShapExplainLogic:
    return SegShapExplainLogic(scene, runner=runner, temporaryFolder=str(tmp_path))


def _explain(logic, scene, liveUpdateSeconds=0.5, **callbacks):
    volume = scene.GetFirstNodeByName("T1 oblique")
    return logic.explainAsync(
        volume,
        str(DEMO.model),
        "white_matter",
        settings=SMALL,
        callbacks=JobCallbacks(**callbacks),
        liveUpdateSeconds=liveUpdateSeconds,
    )


def _until_estimate(job: WorkerJob, update: int) -> None:
    for _ in range(10):
        job.poll()
        if job.estimate is not None and job.estimate["update"] == update:
            return
    raise AssertionError(f"estimate {update} never came; the job's last: {job.estimate}")


class SceneEvents:
    """Nodes added (their names) and removed (their roles), and batches started and ended, in order."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.seen: list[tuple] = []
        self.tags = [
            scene.AddObserver(scene.NodeAddedEvent, self._added),
            scene.AddObserver(scene.NodeRemovedEvent, self._removed),
            scene.AddObserver(scene.StartBatchProcessEvent, lambda *_: self.seen.append(("start",))),
            scene.AddObserver(scene.EndBatchProcessEvent, lambda *_: self.seen.append(("end",))),
        ]

    @calldata_type(vtk.VTK_OBJECT)
    def _added(self, caller, event, node) -> None:
        self.seen.append(("added", node.GetName()))

    @calldata_type(vtk.VTK_OBJECT)
    def _removed(self, caller, event, node) -> None:
        self.seen.append(("removed", node.GetAttribute(ROLE_ATTRIBUTE) or node.GetName()))

    def close(self) -> None:
        for tag in self.tags:
            self.scene.RemoveObserver(tag)


# ---------------------------------------------------------------------------------------------------- the job


def test_only_the_newest_estimate_of_a_poll_is_handed_over_after_the_other_events():
    received = []
    process = ScriptedProcess(
        [
            [_line("progress", done=1, total=10, eta_s=None), _estimate(1, [0.1]), _estimate(2, [0.2])],
            [_line("log", message="Estimating"), _estimate(3, [0.3])],
            [],
            [_estimate(4, [0.4]), _estimate(5, [0.5], final=True), _line("done", outputs={})],
        ]
    )
    callbacks = JobCallbacks(
        onProgress=lambda progress: received.append(("progress", progress.done)),
        onLog=lambda text: received.append(("log", text)),
        onEstimate=lambda fields: received.append(("estimate", fields["update"], fields["values"])),
        onDone=lambda result: received.append(("done", result)),
    )
    job = WorkerJob(process, finish=lambda fields: "result", callbacks=callbacks)
    assert job.estimate is None
    polls = 0
    while not job.poll():
        polls += 1
        if polls == 1:
            assert job.estimate["update"] == 2  # what the panel reads to show Stop and keep
    assert received == [
        ("progress", 1),
        ("estimate", 2, [0.2]),
        ("log", "Estimating"),
        ("estimate", 3, [0.3]),
        ("estimate", 5, [0.5]),  # before the result: the status line has the final estimate when it comes
        ("done", "result"),
    ]
    assert job.estimate["final"] and job.result == "result"


def test_stop_and_keep_creates_the_stop_file_and_only_a_live_explanation_has_one(tmp_path):
    stop = tmp_path / "stop"
    job = WorkerJob(ScriptedProcess([[]] * 5), finish=dict, stopFile=stop)
    job.poll()
    assert not stop.exists() and not job.stopping
    job.stopAndKeep()
    assert stop.is_file() and job.stopping and not job.finished  # the worker finishes on its own
    job.stopAndKeep()  # pressed twice: still one file, no error
    with pytest.raises(ValueError, match="cancel this job"):
        WorkerJob(ScriptedProcess([]), finish=dict).stopAndKeep()


# ---------------------------------------------------------------------------------------------------- the overlay


def test_the_overlay_is_one_node_refreshed_in_place_and_leaves_with_the_result(scene, tmp_path):
    runner = ScriptedRunner()
    logic = _logic(scene, tmp_path, runner)
    volume = scene.GetFirstNodeByName("T1 oblique")
    views = _views(scene)
    estimates, done = [], []
    job = _explain(logic, scene, onEstimate=estimates.append, onDone=done.append)

    # The request: live updates every half second, into the job's folder; the stop file not there yet.
    (request,) = runner.requests
    folder = job.workFolder
    assert request["update_every"] == 0.5
    assert Path(request["live_folder"]).parent == folder and Path(request["stop_file"]).parent == folder
    assert not Path(request["stop_file"]).exists() and job.stopFile == Path(request["stop_file"])
    assert _live_nodes(scene) == []  # nothing before the first estimate

    _until_estimate(job, 1)
    (node,) = [n for n in _live_nodes(scene) if n.IsA("vtkMRMLScalarVolumeNode")]
    labels = _features(slicer.util.arrayFromVolume(volume).shape[::-1])
    first = slicer.util.arrayFromVolume(node).transpose(2, 1, 0).copy()
    np.testing.assert_array_equal(first, _heatmap(labels, UPDATES[0]))
    np.testing.assert_allclose(_ijk(node), _ijk(volume), atol=1e-6)  # on the input's grid, under its transform
    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    assert estimates[-1]["update"] == 1 and estimates[-1]["text"] == "top 10 unchanged for 0 updates"
    # Over every view's background, which stays; the input's window/level and the views' positions too.
    for name in ("Red", "Yellow"):
        composite = _composite(scene, name)
        assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetForegroundOpacity() == LIVE_OPACITY
    assert _composite(scene, "Red").GetBackgroundVolumeID() == volume.GetID()
    assert _composite(scene, "Yellow").GetBackgroundVolumeID() == volume.GetID()  # it had none: as a result does
    changed = {key for key in views if views[key] != _views(scene)[key]}
    assert changed == {"Red", "Yellow"}  # their layers only
    display = node.GetDisplayNode()
    assert display.GetWindow() == pytest.approx(2 * 0.5) and display.GetLevel() == pytest.approx(0.0)
    # Temporary: not saved, not offered, not in the subject hierarchy.
    assert not node.GetSaveWithScene() and node.GetHideFromEditors()
    assert all(not n.GetSaveWithScene() for n in _live_nodes(scene))
    assert scene.GetSubjectHierarchyNode().GetItemByDataNode(node) == 0
    added = scene.GetNumberOfNodes()

    events = SceneEvents(scene)
    _until_estimate(job, 2)
    assert [n.GetID() for n in _live_nodes(scene) if n.IsA("vtkMRMLScalarVolumeNode")] == [node.GetID()]
    assert scene.GetNumberOfNodes() == added and events.seen == []  # nothing added, nothing removed
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node).transpose(2, 1, 0), _heatmap(labels, UPDATES[1]))
    assert display.GetWindow() == pytest.approx(2 * 0.8)  # the strongest |value| sets the range each time

    while not job.poll():
        pass
    events.close()
    assert job.error is None and len(done) == 1
    (result,) = done[0]
    assert result.values == dict(enumerate(UPDATES[-1], 1))
    assert _live_nodes(scene) == [] and node.GetScene() is None
    assert _views(scene) == views  # the views' layers as they were: the PET foreground again
    # The overlay left in the batch in which the result came: the views never showed both, nor neither.
    seen = events.seen
    start, end = seen.index(("start",)), seen.index(("end",))
    heatmap = ("added", logic.resultName(volume, "white_matter", SMALL))
    assert start < seen.index(heatmap) < end and start < seen.index(("removed", LIVE_ROLE)) < end
    assert seen.count(("start",)) == 1
    assert not folder.exists()


def test_a_run_with_live_updates_leaves_what_a_run_without_them_leaves(oblique_t1, tmp_path):
    left = []
    for live in (None, 0.5):
        scene = slicer.vtkMRMLScene()
        volume = add_volume(scene, *oblique_t1, "T1 oblique")
        volume.CreateDefaultDisplayNodes()
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName("Red")
        job = _explain(_logic(scene, tmp_path, ScriptedRunner()), scene, liveUpdateSeconds=live)
        (result,) = job.wait()
        assert (job.estimate is not None) == bool(live)
        assert result.values == dict(enumerate(UPDATES[-1], 1))
        left.append([entry[1:] if isinstance(entry, tuple) else entry for entry in _contents(scene)])  # no ids
    assert left[0] == left[1]


def test_cancel_and_failure_leave_the_scene_as_it_was(scene, tmp_path):
    before = (_contents(scene), _views(scene))
    cancelled, failed = [], []
    job = _explain(_logic(scene, tmp_path, ScriptedRunner()), scene, onCancelled=lambda: cancelled.append(1))
    _until_estimate(job, 2)
    assert _live_nodes(scene)
    job.cancel()
    assert cancelled == [1] and job.process.killed
    assert (_contents(scene), _views(scene)) == before

    job = _explain(_logic(scene, tmp_path, ScriptedRunner(fail="out of luck")), scene, onError=failed.append)
    _until_estimate(job, 3)
    assert _live_nodes(scene)
    while not job.poll():
        pass
    assert [str(error) for error in failed] == ["out of luck"]
    assert (_contents(scene), _views(scene)) == before


def test_stop_and_keep_ends_with_the_last_estimate_delivered(scene, tmp_path):
    runner = ScriptedRunner()
    estimates, done = [], []
    job = _explain(_logic(scene, tmp_path, runner), scene, onEstimate=estimates.append, onDone=done.append)
    _until_estimate(job, 1)
    job.stopAndKeep()
    assert Path(runner.requests[0]["stop_file"]).read_text() == "1"  # the estimate on show, for the worker to keep
    while not job.poll():
        pass
    assert [fields["update"] for fields in estimates] == [1, 1] and estimates[-1]["final"]
    (result,) = done[0]
    assert result.values == dict(enumerate(UPDATES[0], 1))
    assert _live_nodes(scene) == []


def test_the_overlay_can_be_shown_by_itself_and_hides_a_result_shown_meanwhile(scene, tmp_path):
    volume = scene.GetFirstNodeByName("T1 oblique")
    shown = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "an earlier result's segments")
    shown.SetAttribute(ROLE_ATTRIBUTE, "segments")
    shown.SetAttribute(RESULT_ATTRIBUTE, "earlier")
    shown.CreateDefaultDisplayNodes()
    overlay = LiveOverlay(scene, volume, "live")
    image, affine = read_image(exportVolume(volume, tmp_path / "input.nrrd"))
    labels = _features(image.shape)
    path = tmp_path / "estimate.nrrd"
    _write_atomically(path, _heatmap(labels, UPDATES[0]), affine)
    overlay.update({"heatmap": str(path)})
    assert not shown.GetDisplayNode().GetVisibility2D()  # it would cover the estimate
    overlay.update({"heatmap": None})  # an event without a file changes nothing
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(overlay.node).transpose(2, 1, 0), _heatmap(labels, UPDATES[0])
    )
    _write_atomically(path, np.zeros((3, 3, 3), np.float32), affine)
    with pytest.raises(ValueError, match="voxels"):
        overlay.update({"heatmap": str(path)})
    overlay.remove()
    overlay.remove()  # twice: nothing more
    assert shown.GetDisplayNode().GetVisibility2D() and _live_nodes(scene) == []


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_the_real_worker_streams_estimates_and_stop_and_keep_keeps_the_one_on_show(scene, tmp_path):
    volume = scene.GetFirstNodeByName("T1 oblique")
    logic = SegShapExplainLogic(scene, python=sys.executable, temporaryFolder=str(tmp_path))
    estimates, done, overlays = [], [], []

    def onEstimate(fields: dict) -> None:
        estimates.append(fields)
        overlays.append([n.GetID() for n in _live_nodes(scene) if n.IsA("vtkMRMLScalarVolumeNode")])

    job = logic.explainAsync(
        volume,
        str(DEMO.model),
        "white_matter",
        settings=ExplainSettings(nFeatures=40, nSamples=100000, device=Device.CPU),
        callbacks=JobCallbacks(onEstimate=onEstimate, onDone=done.append),
        liveUpdateSeconds=0.5,
    )
    deadline = time.monotonic() + 300
    try:
        while len(estimates) < 2:
            assert not job.poll(), f"the run ended before two estimates: {job.error}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(overlays[0]) == 1 and all(ids == overlays[0] for ids in overlays)  # one node, from the first on
        shown = job.estimate
        job.stopAndKeep()
        while not job.poll():
            assert time.monotonic() < deadline, "the worker did not stop"
            time.sleep(0.05)
    finally:
        job.cancel()  # after a failed check: no worker left sampling 100,000 coalitions (else: nothing to do)
    assert job.error is None, job.error
    (result,) = done[0]
    last = estimates[-1]
    assert last["final"] and last["values"] == shown["values"]  # what was on show, not an update that came after
    assert result.values == dict(zip(shown["feature_ids"], shown["values"]))
    assert _live_nodes(scene) == []
    assert result.report.get("faithfulness") is not None  # a whole result: the check ran
