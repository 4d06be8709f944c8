"""The panel's rules (SegShapExplainLib.panel) and what a request carries, headless: the first run on a fresh
install, models whose classes cannot be read, bundles, and a box and organs chosen in the scene."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
from helpers.slicer_scenes import DEMO, add_volume, oblique_demo_t1

from segshap.geometry import Grid
from segshap.io import read_image, read_labels
from SegShapExplainLib import Device, ExplainSettings, FeatureKind, SegShapExplainLogic, SubprocessRunner, WorkerError
from SegShapExplainLib.dependencies import missingPackages
from SegShapExplainLib.exchange import ensureSegmentationConverters
from SegShapExplainLib.panel import STOP_TOOLTIP, STOPPING_STATUS, PanelInputs, liveStatus, modelStatus, panelState
from SegShapExplainLib.region import roiVoxels
from SegShapExplainLib.resources import resourcesFolder


def test_a_fresh_install_lists_the_classes_and_lets_explain_install_the_packages():
    """Before torch and the rest are in Slicer's Python, the model's classes come from its sidecar, Explain is
    enabled once a target is chosen, and the message says that Explain installs the packages."""
    status = modelStatus(DEMO.model, ["torch", "monai>=1.4"])
    assert status.usable and status.classes == ("gray_matter", "white_matter") and not status.needsTrust
    assert "torch, monai" in status.message and "Explain installs them first" in status.message
    state = panelState(PanelInputs(hasVolume=True, model=status, target="white_matter"))
    assert state.explainEnabled and state.explainText == "Explain" and not state.trustVisible
    waiting = panelState(PanelInputs(hasVolume=True, model=status, target=""))
    assert not waiting.explainEnabled and waiting.explainToolTip == "Choose a target class."
    assert "installs" not in modelStatus(DEMO.model, []).message


def test_a_model_whose_classes_cannot_be_read_takes_a_typed_target(tmp_path):
    bare = tmp_path / "model.pt"
    shutil.copy(DEMO.model, bare)  # no sidecar beside it
    status = modelStatus(bare)
    assert status.usable and status.classes == () and "Type the target" in status.message
    assert "sidecar" in status.message
    assert panelState(PanelInputs(hasVolume=True, model=status, target="2")).explainEnabled
    broken = modelStatus(tmp_path / "missing.pt")
    assert not broken.usable and broken.message.startswith("This model cannot be used: No such model")
    state = panelState(PanelInputs(hasVolume=False, model=broken, target=""))
    assert not state.explainEnabled and state.explainToolTip == "Choose an input volume, a model and a target class."
    assert not state.segmentEnabled and not state.placeBoxEnabled


def test_a_bundle_shows_trust_and_needs_it(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": {}}))
    channels = {"0": "background", "1": "liver"}
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": channels}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (bundle / "models" / "model.pt").write_bytes(b"")
    status = modelStatus(bundle)
    assert status.needsTrust and status.classes == ("liver",) and "Trust" in status.message
    untrusted = panelState(PanelInputs(hasVolume=True, model=status, target="liver"))
    assert untrusted.trustVisible and not untrusted.explainEnabled and not untrusted.segmentEnabled
    assert "Trust" in untrusted.explainToolTip
    trusted = panelState(PanelInputs(hasVolume=True, model=status, target="liver", trustModel=True))
    assert trusted.explainEnabled and trusted.segmentEnabled


def test_the_other_rules_follow_their_inputs():
    status = modelStatus(DEMO.model)
    base = dict(hasVolume=True, model=status, target="white_matter")
    running = panelState(PanelInputs(**base, running=True, hasResult=True))
    assert running.explainEnabled and running.explainText == "Cancel" and not running.segmentEnabled
    assert not running.show3DEnabled and not running.placeBoxEnabled
    organs = panelState(PanelInputs(**base, features=FeatureKind.ORGAN_AWARE, device=Device.CUDA, autoSamples=False))
    assert organs.organSegmentationEnabled and organs.gpuIndexEnabled and organs.nSamplesEnabled
    assert not organs.toleranceEnabled
    plain = panelState(PanelInputs(**base, hasResult=True))
    assert not plain.organSegmentationEnabled and not plain.gpuIndexEnabled and plain.show3DEnabled


def test_settings_name_the_gpu_and_the_foreground():
    assert ExplainSettings(device=Device.CUDA, gpuIndex=1).workerOptions()["device"] == "cuda:1"
    assert ExplainSettings(device=Device.CUDA).workerOptions()["device"] == "cuda"
    assert ExplainSettings(device=Device.MPS).workerOptions()["device"] == "mps"
    assert ExplainSettings().workerOptions()["foreground"] == "auto"
    assert ExplainSettings(foreground=False).workerOptions()["foreground"] == "none"
    with pytest.raises(ValueError, match="GPU number"):
        ExplainSettings(gpuIndex=-1)


def test_the_packages_check_runs_without_importing_them():
    assert isinstance(missingPackages(), list)  # here everything is installed; the check itself must not fail


class _RecordingRunner:
    """Keeps a copy of each request and its files, then runs a real process that answers with a worker error."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, []

    def __call__(self, command, env):
        request_path = Path(command[command.index("--request") + 1])
        copy = self.folder / f"job{len(self.requests)}"
        shutil.copytree(request_path.parent, copy)
        request = json.loads((copy / "request.json").read_text())
        self.requests.append(
            {k: str(copy / Path(v).name) if isinstance(v, str) and v.startswith(str(request_path.parent)) else v
             for k, v in request.items()}
        )  # fmt: skip
        script = "import json; print(json.dumps({'event': 'error', 'message': 'recorded'}))"
        return SubprocessRunner()([sys.executable, "-c", script], {})


@pytest.fixture
def oblique_scene():
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    voxels, affine = oblique_demo_t1()
    volume = add_volume(scene, voxels, affine, "T1 oblique")
    # Organs: two named segments, as an atlas or an earlier segmentation would give them.
    labels = np.zeros(voxels.shape, np.uint8)
    labels[5:20, 5:20, 5:20] = 1
    labels[20:30, 10:25, 8:18] = 2
    labelmap = add_volume(scene, labels, affine, "atlas labels", "vtkMRMLLabelMapVolumeNode")
    organs = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Atlas")
    organs.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, organs)
    for index, name in enumerate(("caudate", "putamen")):
        organs.GetSegmentation().GetNthSegment(index).SetName(name)
    scene.RemoveNode(labelmap)
    return scene, volume, organs


def test_the_request_carries_the_box_and_the_organs_chosen_in_the_scene(oblique_scene, tmp_path):
    """A box placed around the volume's centre goes as its exact voxel box; organs from a segmentation node go as a
    label map on the volume's grid with the segments' names; a bad pairing is refused before any worker runs."""
    scene, volume, organs = oblique_scene
    runner = _RecordingRunner(tmp_path / "recorded")
    runner.folder.mkdir()
    logic = SegShapExplainLogic(scene, runner=runner, python=sys.executable, temporaryFolder=str(tmp_path / "jobs"))
    (tmp_path / "jobs").mkdir()
    box = logic.placeBox(volume)
    assert box.IsA("vtkMRMLMarkupsROINode") and box.GetScene() is scene
    settings = ExplainSettings(features=FeatureKind.ORGANS, device=Device.CPU, foreground=False)
    with pytest.raises(WorkerError, match="recorded"):
        logic.explain(
            volume, str(DEMO.model), "white_matter", None, None, settings, roiNode=box, organSegmentationNode=organs
        )
    (request,) = runner.requests
    (i0, i1), (j0, j1), (k0, k1) = roiVoxels(box, volume)[0]
    assert request["roi"] == f"{i0}:{i1},{j0}:{j1},{k0}:{k1}"
    assert request["options"]["features"] == "organs" and request["options"]["foreground"] == "none"
    image, affine = read_image(request["image"])
    labels, names = read_labels(request["labelmap"], Grid(image.shape, affine))
    assert names == {1: "caudate", 2: "putamen"}
    voxels = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0)
    assert labels.shape == voxels.shape and set(np.unique(labels)) == {0, 1, 2}
    assert list((tmp_path / "jobs").iterdir()) == []  # the job's folder is gone
    with pytest.raises(ValueError, match="apply to organ features only"):
        logic.explain(volume, str(DEMO.model), "white_matter", organSegmentationNode=organs)
    assert len(runner.requests) == 1


def test_organs_from_a_segmentation_need_organ_features():
    """The organs segmentation stays enabled (to be cleared) but holds Explain back when the features are not
    organs: the worker would refuse the label map."""
    status = modelStatus(DEMO.model)
    base = dict(hasVolume=True, model=status, target="white_matter", hasOrganSegmentation=True)
    stray = panelState(PanelInputs(**base))
    assert not stray.explainEnabled and stray.organSegmentationEnabled and "organ features" in stray.explainToolTip
    assert panelState(PanelInputs(**base, features=FeatureKind.ORGANS)).explainEnabled


def test_a_target_segmentation_needs_one_of_its_segments():
    status = modelStatus(DEMO.model)
    state = panelState(PanelInputs(hasVolume=True, model=status, target="white_matter", segmentMissing=True))
    assert not state.explainEnabled and "a segment of the target segmentation" in state.explainToolTip


def test_stop_and_keep_shows_once_an_explanation_has_an_estimate_and_is_pressed_once():
    status = modelStatus(DEMO.model)
    base = dict(hasVolume=True, model=status, target="white_matter")
    idle = panelState(PanelInputs(**base, hasEstimate=True))  # an estimate left from a run that ended
    starting = panelState(PanelInputs(**base, running=True))
    assert not idle.stopVisible and not starting.stopVisible and not starting.stopEnabled
    live = panelState(PanelInputs(**base, running=True, hasEstimate=True))
    assert live.stopVisible and live.stopEnabled and live.stopToolTip == STOP_TOOLTIP
    assert live.explainText == "Cancel" and "discard" in live.explainToolTip and "Stop and keep" in live.explainToolTip
    stopping = panelState(PanelInputs(**base, running=True, hasEstimate=True, stopping=True))
    assert stopping.stopVisible and not stopping.stopEnabled and stopping.stopToolTip == STOPPING_STATUS
    assert stopping.explainEnabled  # Cancel still ends it at once


def test_the_stop_and_keep_button_sits_beside_explain_hidden_until_there_is_an_estimate():
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(resourcesFolder() / "UI" / "SegShapExplain.ui").getroot()
    (row,) = [layout for layout in root.iter("layout") if layout.get("name") == "explainLayout"]
    buttons = [widget.get("name") for widget in row.iter("widget")]
    assert buttons == ["explainButton", "stopAndKeepButton"]
    button = next(widget for widget in row.iter("widget") if widget.get("name") == "stopAndKeepButton")
    properties = {prop.get("name"): prop for prop in button.findall("property")}
    assert properties["toolTip"].findtext("string") == STOP_TOOLTIP  # the panel's rule sets the same text
    assert properties["visible"].findtext("bool") == "false"


def test_the_status_line_of_a_live_estimate_names_the_update_and_says_the_engine_s_words():
    fields = {
        "update": 3,
        "level": "features",
        "regions": None,
        "coalitions": 1234,
        "seconds": 12.3,
        "text": "top 10 unchanged for 3 updates, 41 % of the budget",
        "final": False,
    }
    assert liveStatus(fields) == "Estimate 3 (1,234 samples, 12 s): top 10 unchanged for 3 updates, 41 % of the budget."
    coarse = fields | {"update": 1, "level": "regions", "regions": 32, "text": "first look from 32 regions"}
    assert liveStatus(coarse) == "Coarse estimate 1 (1,234 samples, 12 s): first look from 32 regions."
    final = fields | {"update": 7, "text": "final values", "final": True}
    assert liveStatus(final) == "Final estimate (1,234 samples, 12 s): final values; finishing the result..."
    assert liveStatus({"update": 2}) == "Estimate 2."  # fields the engine may leave out
