"""``SegShapExplainLogic``: explain, segment and describe models from MRML nodes, in a background worker.

Usable from 3D Slicer's Python console in one call::

    from SegShapExplainLib import SegShapExplainLogic
    nodes = SegShapExplainLogic(slicer.mrmlScene).explain(volumeNode, "/models/model.pt", "liver")

Every method with ``Async`` in its name returns a :class:`WorkerJob` at once; its callbacks run on the thread
that calls ``job.poll()`` (the panel polls from a timer). The blocking methods poll until the job ends;
``explainAsync`` also shows the estimates as they come (:mod:`.live`) and can stop early (``job.stopAndKeep()``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import slicer

from .display import hideInViews, jumpToFeature, setOutlineStyle, setShow3D, showInSliceViews
from .exchange import checkScalarVolume, exportLabelmap, exportSegment, exportVolume
from .live import LIVE_UPDATE_SECONDS, LiveOverlay
from .region import createRoi, createRoiAroundSegment, exportRoi
from .results import ExplanationNodes, importExplanations, importSegmentation
from .saved import findExplanations, replaceExplanations
from .settings import Device, ExplainSettings, FeatureKind, OutlineStyle, workerBatchSize
from .worker import (
    JobCallbacks,
    ProcessRunner,
    Progress,
    SubprocessRunner,
    WorkerJob,
    workerCommand,
    workerEnvironment,
)


@dataclass(frozen=True)
class ModelDescription:
    """What the worker found in a model file or folder.

    Attributes
    ----------
    format : str
        ``"torchscript"``, ``"monai_bundle"`` or ``"nnunet"``.
    classes : dict of int to str
        Output channel to class name.
    inChannels : int
    patchSize : tuple of int
    device : str
        Where the worker would run it (``"cuda"`` or ``"cpu"`` for device ``auto``).
    cudaDevices : tuple of str
        The GPUs the worker's torch sees (empty: CPU only).
    torch : dict
        The worker's PyTorch and the machine's GPUs (``segshap.jobs.torch_facts``), which
        ``dependencies.torchGpuMessage`` words when PyTorch cannot use a GPU that is there.
    """

    format: str
    classes: dict
    inChannels: int
    patchSize: tuple
    device: str
    cudaDevices: tuple
    torch: dict

    @classmethod
    def fromEvent(cls, fields: dict) -> ModelDescription:
        model = fields["model"]
        return cls(
            format=model["format"],
            classes={int(index): name for index, name in model["classes"].items()},
            inChannels=int(model["in_channels"]),
            patchSize=tuple(model["patch_size"]),
            device=model["device"],
            cudaDevices=tuple(model["cuda_devices"]),
            torch=dict(fields.get("torch") or {}),
        )


class SegShapExplainLogic:
    """Explanations of a segmentation model's output, as MRML nodes of ``scene``.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        Where inputs are read from and results go; default ``slicer.mrmlScene`` (in 3D Slicer).
    runner : callable, optional
        Starts the worker process (:data:`ProcessRunner`); default :class:`SubprocessRunner`.
    python : str, optional
        The Python that runs ``segshap worker``; default ``PythonSlicer`` where present, else this Python.
    volumeRenderingLogic : vtkSlicerVolumeRenderingLogic, optional
        For the 3D view of the strongest features; default 3D Slicer's volume rendering module logic where there
        is one. Without it no volume rendering is made.
    temporaryFolder : str, optional
        Where each job's folder of input and output files is made (and removed afterwards); default 3D Slicer's
        temporary folder, else the system's.
    """

    def __init__(
        self,
        scene=None,
        *,
        runner: ProcessRunner | None = None,
        python: str | None = None,
        volumeRenderingLogic=None,
        temporaryFolder: str | None = None,
    ) -> None:
        application = getattr(slicer, "app", None)  # only inside 3D Slicer
        modules = getattr(slicer, "modules", None)
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
            if scene is None:
                raise ValueError(
                    "Pass the scene: SegShapExplainLogic(scene) (slicer.mrmlScene exists only in 3D Slicer)."
                )
        if volumeRenderingLogic is None and hasattr(modules, "volumerendering"):
            volumeRenderingLogic = modules.volumerendering.logic()
        if temporaryFolder is None and application is not None:
            temporaryFolder = application.temporaryPath
        self.scene = scene
        self.runner = runner or SubprocessRunner()
        self.python = python
        self.volumeRenderingLogic = volumeRenderingLogic
        self.temporaryFolder = temporaryFolder

    # ------------------------------------------------------------------------------------------------ explain

    def explain(
        self,
        volumeNode,
        modelPath: str,
        target: str | int,
        segmentationNode=None,
        segmentId: str | None = None,
        settings: ExplainSettings | None = None,
        *,
        roiNode=None,
        organSegmentationNode=None,
        trustModel: bool = False,
        onProgress: Callable[[Progress], None] | None = None,
        onLog: Callable[[str], None] | None = None,
    ) -> list[ExplanationNodes]:
        """Explain why the model segmented ``target`` on ``volumeNode``; blocks until the nodes are in the scene.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            The image, in its own geometry (the model's preprocessing resamples it; results come back on it).
        modelPath : str
            TorchScript file with its JSON sidecar, MONAI bundle folder, or nnU-Net v2 model folder.
        target : str or int
            The model's class, by name or index; several separated by commas (all explained from the same model
            evaluations).
        segmentationNode, segmentId : optional
            The target segment to read values on; default the model's own segmentation of ``target``.
        settings : ExplainSettings, optional
            Features, value function, samples, baseline, device...; default ``ExplainSettings()``.
        roiNode : vtkMRMLMarkupsROINode, optional
            The box where values are read (the voxels whose centres lie inside it, exactly, also when the box or
            the volume is rotated); default the target segment's bounding box with a margin.
        organSegmentationNode : vtkMRMLSegmentationNode, optional
            For organ and organ-aware features: the organs, one per segment and named after it (an atlas, an
            earlier segmentation...); default the model's own segmentation of the image.
        trustModel : bool
            Allow a MONAI bundle, whose configuration can run code.
        onProgress, onLog : callable, optional
            Called with each :class:`Progress` and each stage message.

        Returns
        -------
        list of ExplanationNodes
            One per target, in one subject hierarchy folder; kept with the scene (report, figures, values), found
            again after a reload by :meth:`findResults`.

        Raises
        ------
        ValueError
            Bad input found before the worker starts (no volume, a label map, a missing segment...).
        WorkerError
            The worker's message (e.g. an unknown class); ``OutOfMemoryError`` when the GPU is too small.
        WorkerCancelled
            On Ctrl+C; the scene is unchanged.
        """
        return self.explainAsync(
            volumeNode,
            modelPath,
            target,
            segmentationNode,
            segmentId,
            settings,
            roiNode=roiNode,
            organSegmentationNode=organSegmentationNode,
            trustModel=trustModel,
            callbacks=JobCallbacks(onProgress=onProgress, onLog=onLog),
            liveUpdateSeconds=None,  # blocking: the views are not redrawn meanwhile
        ).wait()

    def explainAsync(
        self,
        volumeNode,
        modelPath: str,
        target: str | int,
        segmentationNode=None,
        segmentId: str | None = None,
        settings: ExplainSettings | None = None,
        *,
        roiNode=None,
        organSegmentationNode=None,
        trustModel: bool = False,
        callbacks: JobCallbacks | None = None,
        liveUpdateSeconds: float | None = LIVE_UPDATE_SECONDS,
    ) -> WorkerJob:
        """Start :meth:`explain` in the background; its result (a list of ``ExplanationNodes``, one per target) goes
        to ``onDone``.

        Every ``liveUpdateSeconds`` (``None`` or 0: never) the worker sends its estimate so far: the slice views show
        it over the volume (:class:`~SegShapExplainLib.live.LiveOverlay`, gone when the job ends) and ``onEstimate``
        gets the event's fields; ``job.stopAndKeep()`` ends the sampling, keeping that estimate (a whole result).
        """
        settings = settings or ExplainSettings()
        checkScalarVolume(volumeNode)
        if organSegmentationNode is not None and settings.features not in (FeatureKind.ORGANS, FeatureKind.ORGAN_AWARE):
            raise ValueError(
                f"Organs from {organSegmentationNode.GetName()!r} apply to organ features only: choose "
                f"'{FeatureKind.label(FeatureKind.ORGANS)}' or '{FeatureKind.label(FeatureKind.ORGAN_AWARE)}', or "
                "clear the organs segmentation."
            )
        if segmentationNode is not None and not segmentId:
            raise ValueError(f"Choose a segment of {segmentationNode.GetName()!r} as the target segment.")
        if segmentationNode is not None and segmentationNode.GetTransformNodeID() != volumeNode.GetTransformNodeID():
            raise ValueError(
                f"The segmentation {segmentationNode.GetName()!r} and the volume {volumeNode.GetName()!r} are under "
                "different transforms; put them under the same one (or harden both) in the Transforms module."
            )
        baseName = self.resultName(volumeNode, target, settings)

        def prepare(folder: Path) -> dict:
            request = {
                "task": "explain",
                "image": str(exportVolume(volumeNode, folder / "input.nrrd")),
                "model": str(modelPath),
                "trust_model": trustModel,
                "target": target,
                "out": str(folder / "out"),
                "options": settings.workerOptions(),
            }
            if segmentationNode is not None:
                request["reference"] = str(exportSegment(segmentationNode, segmentId, folder / "reference.seg.nrrd"))
            if roiNode is not None:
                request["roi"] = exportRoi(roiNode, volumeNode, folder)
            if organSegmentationNode is not None:
                organs = exportLabelmap(organSegmentationNode, volumeNode, folder / "organs.seg.nrrd")
                request["labelmap"] = str(organs.path)
            if liveUpdateSeconds:
                request["update_every"] = float(liveUpdateSeconds)
                request["live_folder"] = str(folder / "live")  # the worker makes it
                request["stop_file"] = str(folder / "stop")  # made by job.stopAndKeep()
            return request

        # What "the previous result of the same inputs" means to the output selector: same model, target and segment.
        inputs = json.dumps(
            [str(modelPath), str(target), segmentationNode.GetID() if segmentationNode else None, segmentId]
        )

        live = LiveOverlay(self.scene, volumeNode, f"{baseName} (live estimate)")

        def finish(fields: dict) -> list[ExplanationNodes]:
            with live.replacedBy():
                return importExplanations(
                    self.scene,
                    fields["outputs"],
                    volumeNode,
                    baseName,
                    self.volumeRenderingLogic,
                    inputs=inputs,
                    summary=fields.get("summary"),
                )

        return self._start(prepare, finish, live.jobCallbacks(callbacks))

    @staticmethod
    def resultName(volumeNode, target: str | int, settings: ExplainSettings) -> str:
        """Names the result nodes, e.g. ``"MRHead SHAP liver (slic 100, soft_dice)"``."""
        return f"{volumeNode.GetName()} SHAP {target} ({settings.shortName()})"

    # ------------------------------------------------------------------------------------------------ segment

    def segment(
        self,
        volumeNode,
        modelPath: str,
        *,
        device: Device = Device.AUTO,
        gpuIndex: int = 0,
        batchSize: int = 0,
        trustModel: bool = False,
    ):
        """The model's segmentation of ``volumeNode`` as a new segmentation node (one segment per class found).
        ``batchSize`` 0 leaves the windows per forward pass to the engine."""
        return self.segmentAsync(
            volumeNode, modelPath, device=device, gpuIndex=gpuIndex, batchSize=batchSize, trustModel=trustModel
        ).wait()

    def segmentAsync(
        self,
        volumeNode,
        modelPath: str,
        *,
        device: Device = Device.AUTO,
        gpuIndex: int = 0,
        batchSize: int = 0,
        trustModel: bool = False,
        callbacks: JobCallbacks | None = None,
    ) -> WorkerJob:
        """Start :meth:`segment` in the background; the segmentation node goes to ``onDone``."""
        checkScalarVolume(volumeNode)
        name = f"{volumeNode.GetName()} {Path(str(modelPath).rstrip('/')).stem} segmentation"

        def prepare(folder: Path) -> dict:
            return {
                "task": "segment",
                "image": str(exportVolume(volumeNode, folder / "input.nrrd")),
                "model": str(modelPath),
                "trust_model": trustModel,
                "out": str(folder / "out"),
                "options": {"device": device.workerName(gpuIndex)} | workerBatchSize(batchSize),
            }

        def finish(fields: dict):
            return importSegmentation(
                self.scene, fields["outputs"]["segmentation"], fields["classes"], volumeNode, name
            )

        return self._start(prepare, finish, callbacks)

    # ------------------------------------------------------------------------------------------------ describe

    def describeModel(
        self, modelPath: str, *, device: Device = Device.AUTO, gpuIndex: int = 0, trustModel: bool = False
    ) -> ModelDescription:
        """Load the model in the worker and report its format, classes and the device it would run on (the
        classes alone, without the worker: :func:`SegShapExplainLib.panel.modelStatus`)."""
        return self.describeModelAsync(modelPath, device=device, gpuIndex=gpuIndex, trustModel=trustModel).wait()

    def describeModelAsync(
        self,
        modelPath: str,
        *,
        device: Device = Device.AUTO,
        gpuIndex: int = 0,
        trustModel: bool = False,
        callbacks: JobCallbacks | None = None,
    ) -> WorkerJob:
        """Start :meth:`describeModel` in the background; the :class:`ModelDescription` goes to ``onDone``."""

        def prepare(folder: Path) -> dict:
            return {
                "task": "describe",
                "model": str(modelPath),
                "trust_model": trustModel,
                "options": {"device": device.workerName(gpuIndex)},
            }

        return self._start(prepare, ModelDescription.fromEvent, callbacks)

    # ------------------------------------------------------------------------------------------------ region

    def placeBox(
        self,
        volumeNode,
        segmentationNode=None,
        segmentId: str | None = None,
        *,
        marginMm: float = 10.0,
        sizeMm: float = 60.0,
    ):
        """A box (markups ROI, aligned to the volume's voxels) to explain, for the user to drag: around the target
        segment with ``marginMm`` on every side when one is given, else ``sizeMm`` wide around the slice views'
        crosshair (the volume's centre without one). Returns the ``vtkMRMLMarkupsROINode``."""
        checkScalarVolume(volumeNode)
        name = f"{volumeNode.GetName()} SHAP box"
        if segmentationNode is not None and segmentId:
            return createRoiAroundSegment(self.scene, segmentationNode, segmentId, volumeNode, marginMm, name)
        return createRoi(self.scene, volumeNode, self._viewCentre(volumeNode), sizeMm, name)

    def _viewCentre(self, volumeNode) -> tuple[float, float, float]:
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None and any(crosshair.GetCrosshairRAS()):
            return tuple(crosshair.GetCrosshairRAS())
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        return tuple((bounds[2 * axis] + bounds[2 * axis + 1]) / 2 for axis in range(3))

    # ------------------------------------------------------------------------------------------------ display

    def showResults(
        self, volumeNode, nodes: ExplanationNodes, opacity: float = 1.0, outlines: OutlineStyle = OutlineStyle.TOP
    ) -> None:
        """Add the features over every slice view, filled by value, with the chosen outlines; the views' own layers
        stay as they are (a view without a background gets ``volumeNode``)."""
        showInSliceViews(self.scene, volumeNode, nodes, opacity, outlines)

    def hideResults(self, nodes: ExplanationNodes) -> None:
        """Take a result's features off the views."""
        hideInViews(nodes)

    def setShow3D(self, nodes: ExplanationNodes, visible: bool) -> None:
        """Show or hide the strongest features of a result in the 3D view."""
        setShow3D(nodes, visible)

    def findResults(self, volumeNode=None) -> list[ExplanationNodes]:
        """The explanations in the scene (of ``volumeNode``, when given), oldest first: also those of a scene that
        was saved and opened again."""
        return findExplanations(self.scene, volumeNode)

    def replacePrevious(self, results: list[ExplanationNodes]) -> list[str]:
        """Remove the earlier results of the same volume, model, target and segment as ``results`` (which are
        already in the scene, so that a failed run loses nothing); returns the removed results' ids."""
        return replaceExplanations(self.scene, results)

    def setOutlineStyle(self, nodes: ExplanationNodes, outlines: OutlineStyle) -> None:
        """Outline the top features, all of them, or none, in the slice views."""
        setOutlineStyle(nodes, outlines)

    def jumpToFeature(self, tableNode, row: int) -> tuple[float, float, float]:
        """Centre the slice views on the feature of ``row`` in an explanation table; returns the point (RAS)."""
        return jumpToFeature(tableNode, row)

    # ------------------------------------------------------------------------------------------------ jobs

    def _start(
        self, prepare: Callable[[Path], dict], finish: Callable[[dict], object], callbacks: JobCallbacks | None
    ) -> WorkerJob:
        """Write the inputs and the request into a fresh folder, then start the worker on it."""
        folder = Path(tempfile.mkdtemp(prefix="segshap-", dir=self.temporaryFolder))
        try:
            request = prepare(folder)
            requestPath = folder / "request.json"
            requestPath.write_text(json.dumps(request, indent=1))
            process = self.runner(workerCommand(requestPath, self.python), workerEnvironment())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return WorkerJob(process, finish, callbacks, workFolder=folder, stopFile=request.get("stop_file"))
