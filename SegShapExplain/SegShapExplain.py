"""3D Slicer module: explain a segmentation model's output with efficient KernelSHAP over supervoxels.

GUI and self-test only. Every rule of the panel lives in ``SegShapExplainLib`` (no Qt, tested headless with
slicer-core: ``panel.panelState`` says what each widget shows); the engine ``segshap`` runs in a separate worker
process (Slicer's side imports only its standard-library modules).
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SegShapExplainLib import (
    Baseline,
    Device,
    ExplainSettings,
    FeatureKind,
    JobCallbacks,
    OutlineStyle,
    OutOfMemoryError,
    OutputMode,
    SegShapExplainLogic,
    ValueFunction,
    WorkerCancelled,
    WorkerError,
)
from SegShapExplainLib.dependencies import installDependencies, installMessage, missingPackages, torchGpuMessage
from SegShapExplainLib.panel import STOPPING_STATUS, PanelInputs, liveStatus, modelStatus, panelState
from SegShapExplainLib.resources import HELP_TEXT, demoCase, demoSampleData, resourcesFolder
from SegShapExplainLib.worker import slicerRunner

DEMO = demoCase()


class SegShapExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegShapExplain"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations", "SampleData", "VolumeRendering"]
        self.parent.contributors = ["SegShapExplain developers"]
        self.parent.helpText = HELP_TEXT
        self.parent.acknowledgementText = (
            "Builds on efficient KernelSHAP for patch-based 3D segmentation (Coimbra Brioso et al., arXiv 2604.11775)."
        )
        # Slicer looks for the icon beside the module; a source checkout keeps it in the top-level Resources/.
        self.parent.icon = qt.QIcon(str(resourcesFolder() / "Icons" / "SegShapExplain.png"))
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The demo MRI in the Sample Data module (its model is the panel's default)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**demoSampleData())


@parameterNodeWrapper
class SegShapExplainParameterNode:
    """What the panel shows, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: pathlib.Path = DEMO.model
    trustModel: bool = False
    target: str = ""
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegmentId: str = ""
    roi: vtkMRMLMarkupsROINode
    features: FeatureKind = FeatureKind.SUPERVOXELS
    nFeatures: Annotated[int, WithinRange(1, 100000)] = 100
    organSegmentation: vtkMRMLSegmentationNode
    foreground: bool = True
    value: ValueFunction = ValueFunction.SOFT_DICE
    autoSamples: bool = True
    nSamples: Annotated[int, WithinRange(2, 10000000)] = 2000
    tolerance: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    timeLimit: Annotated[int, WithinRange(0, 86400)] = 0
    baseline: Baseline = Baseline.MEAN
    device: Device = Device.AUTO
    gpuIndex: Annotated[int, WithinRange(0, 63)] = 0
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    faithfulness: bool = True
    outputMode: OutputMode = OutputMode.NEW
    outlineStyle: OutlineStyle = OutlineStyle.TOP
    resultTable: vtkMRMLTableNode

    def settings(self) -> ExplainSettings:
        return ExplainSettings(
            features=self.features,
            nFeatures=self.nFeatures,
            value=self.value,
            nSamples=0 if self.autoSamples else self.nSamples,
            tolerance=self.tolerance,
            timeLimit=self.timeLimit,
            baseline=self.baseline,
            device=self.device,
            gpuIndex=self.gpuIndex,
            foreground=self.foreground,
            seed=self.seed,
            faithfulness=self.faithfulness,
        )


class SegShapExplainParameterLogic(ScriptedLoadableModuleLogic):
    """The module's parameter node. The work is done by ``SegShapExplainLogic`` from ``SegShapExplainLib``
    (imported here, so ``slicer.util.getModuleLogic("SegShapExplain")`` finds it too)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = "SegShapExplain"

    def getParameterNode(self) -> SegShapExplainParameterNode:
        return SegShapExplainParameterNode(super().getParameterNode())


class SegShapExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to the parameter node and applies ``panelState``; the jobs run in the worker."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode: SegShapExplainParameterNode | None = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.modelJob = None
        self._model = None  # (path, ModelStatus) of the model the panel last read
        self._describedModel = None  # (path, trust, device, GPU) the worker last described
        self._deviceNote = ""  # what the worker said of where the model runs, shown after the model's line
        self._missing = None  # the worker's packages missing from Slicer's Python (cached: a file read per event)
        self._restoringReference = False
        self._retry = None  # starts the last job again (after an out-of-memory error, on the CPU)
        self._results = []  # the ExplanationNodes the result selector lists
        self._shown = None  # the ExplanationNodes in the views

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resourcesFolder() / "UI" / "SegShapExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.parameterLogic = SegShapExplainParameterLogic()
        self.logic = SegShapExplainLogic(slicer.mrmlScene, runner=slicerRunner())

        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.pollJobs)

        self.ui.targetComboBox.editable = True
        self.ui.targetComboBox.currentTextChanged.connect(self.onTargetChanged)
        self.ui.referenceSegmentSelector.currentNodeChanged.connect(self.onReferenceChanged)
        self.ui.referenceSegmentSelector.currentSegmentChanged.connect(self.onReferenceChanged)
        self.ui.modelFolderButton.clicked.connect(self.onChooseModelFolder)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.onModelPathTyped)
        self.ui.explainButton.clicked.connect(self.onExplainOrCancel)
        self.ui.stopAndKeepButton.clicked.connect(self.onStopAndKeep)
        self.ui.segmentWithModelButton.clicked.connect(self.onSegmentWithModel)
        self.ui.placeBoxButton.clicked.connect(self.onPlaceBox)
        self.ui.show3DButton.toggled.connect(self.onShow3D)
        self.ui.resultTargetComboBox.currentIndexChanged.connect(self.onResultChosen)
        self.ui.resultsTableView.selectionModel().currentRowChanged.connect(self.onResultRowChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.initializeParameterNode()
        self.listResults()

    # ------------------------------------------------------------------------------------------ parameter node

    def cleanup(self) -> None:
        self.removeObservers()
        self.cancelJobs()
        self.timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJobs()
        self.setParameterNode(None)
        self._results, self._shown = [], None

    def onSceneEndClose(self, caller, event) -> None:
        self._model, self._describedModel, self._deviceNote = None, None, ""
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.listResults()

    def onSceneImported(self, caller, event) -> None:
        if self._parameterNode is not None:  # a scene closed while another module was shown has none yet
            self.listResults()  # a scene saved with results shows them again

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterLogic.getParameterNode())
        if not self._parameterNode.inputVolume:
            images = [
                node
                for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetAttribute("SegShapExplain.Role")
            ]
            if images:
                self._parameterNode.inputVolume = images[0]

    def setParameterNode(self, parameterNode: SegShapExplainParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self._showReference(self._parameterNode.referenceSegmentation, self._parameterNode.referenceSegmentId)
            self.ui.targetComboBox.setCurrentText(self._parameterNode.target)
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultTable)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is None:
            return
        if self._shown is not None and not _inScene(self._shown):  # removed: replaced, or deleted by the user
            self._shown = None
        if self._shown is not None and parameters.outlineStyle is not self._shown.outlineStyle:
            self.logic.setOutlineStyle(self._shown, parameters.outlineStyle)
        model = self.readModel()
        self._showParameters()
        state = panelState(
            PanelInputs(
                hasVolume=bool(parameters.inputVolume),
                model=model,
                target=parameters.target,
                trustModel=parameters.trustModel,
                segmentMissing=bool(parameters.referenceSegmentation) and not parameters.referenceSegmentId,
                running=self.job is not None,
                features=parameters.features,
                hasOrganSegmentation=bool(parameters.organSegmentation),
                device=parameters.device,
                autoSamples=parameters.autoSamples,
                hasResult=self._shown is not None,
                hasEstimate=self.job is not None and self.job.estimate is not None,
                stopping=self.job is not None and self.job.stopping,
            )
        )
        self.ui.explainButton.text = state.explainText
        self.ui.explainButton.enabled = state.explainEnabled
        self.ui.explainButton.toolTip = state.explainToolTip
        self.ui.stopAndKeepButton.visible = state.stopVisible
        self.ui.stopAndKeepButton.enabled = state.stopEnabled
        self.ui.stopAndKeepButton.toolTip = state.stopToolTip
        self.ui.segmentWithModelButton.enabled = state.segmentEnabled
        self.ui.placeBoxButton.enabled = state.placeBoxEnabled
        self.ui.trustModelCheckBox.visible = state.trustVisible
        self.ui.organSegmentationSelector.enabled = state.organSegmentationEnabled
        self.ui.gpuIndexSpinBox.enabled = state.gpuIndexEnabled
        self.ui.nSamplesSpinBox.enabled = state.nSamplesEnabled
        self.ui.toleranceSpinBox.enabled = state.toleranceEnabled
        self.ui.show3DButton.enabled = state.show3DEnabled
        self.ui.modelInfoLabel.text = state.modelMessage + (f" {self._deviceNote}" if self._deviceNote else "")

    def missing(self) -> list[str]:
        if self._missing is None:
            self._missing = missingPackages()
        return self._missing

    def readModel(self):
        """The chosen model's format and classes from its files (no PyTorch needed); the target list follows, and
        Trust is given again for each model."""
        parameters = self._parameterNode
        path = parameters.modelPath
        if self._model is None or self._model[0] != path:
            another = self._model is not None
            self._model = (path, modelStatus(path, self.missing()))  # first: the changes below call this again
            self._deviceNote = ""
            if self.modelJob is not None:
                self.modelJob.cancel()
                self.modelJob = None
            classes = list(self._model[1].classes)
            wanted = parameters.target
            target = wanted if wanted in classes or not classes else classes[-1]
            self.ui.targetComboBox.blockSignals(True)
            self.ui.targetComboBox.clear()
            self.ui.targetComboBox.addItems(classes)
            self.ui.targetComboBox.setCurrentText(target)
            self.ui.targetComboBox.blockSignals(False)
            if another:
                parameters.trustModel = False
            parameters.target = target
        status = self._model[1]
        described = (path, parameters.trustModel, parameters.device, parameters.gpuIndex)
        trusted = parameters.trustModel or not status.needsTrust
        if status.usable and trusted and self.job is None and described != self._describedModel and not self.missing():
            try:
                self.describeModel(described)
            except Exception as error:  # the panel must still show its state; the label says why
                self._deviceNote = f"The worker could not start: {error}"
        return status

    def onModelPathTyped(self, text: str) -> None:
        if self._parameterNode and pathlib.Path(text) != self._parameterNode.modelPath:
            self._parameterNode.modelPath = pathlib.Path(text)

    def _showParameters(self) -> None:
        """Show the model, the target and the target segment the parameter node holds (a scene opened in place of
        another brings its own). These widgets are not bound by the parameter node wrapper: it would write the path
        back into the box at each key typed, moving the cursor to its end, and it cannot bind a free-text combo box
        or a segment."""
        parameters = self._parameterNode
        if pathlib.Path(self.ui.modelPathLineEdit.currentPath) != parameters.modelPath:
            self.ui.modelPathLineEdit.currentPath = str(parameters.modelPath)
        if self.ui.targetComboBox.currentText != parameters.target:
            self.ui.targetComboBox.blockSignals(True)
            self.ui.targetComboBox.setCurrentText(parameters.target)
            self.ui.targetComboBox.blockSignals(False)
        selector = self.ui.referenceSegmentSelector
        segmentId = parameters.referenceSegmentId if parameters.referenceSegmentation else ""
        if (
            selector.currentNode() != parameters.referenceSegmentation
            or (selector.currentSegmentID() or "") != segmentId
        ):
            self._showReference(parameters.referenceSegmentation, segmentId)

    def onTargetChanged(self, text: str) -> None:
        if self._parameterNode:
            self._parameterNode.target = text

    def onReferenceChanged(self, *args) -> None:
        if self._parameterNode and not self._restoringReference:
            self._parameterNode.referenceSegmentation = self.ui.referenceSegmentSelector.currentNode()
            self._parameterNode.referenceSegmentId = self.ui.referenceSegmentSelector.currentSegmentID() or ""

    def _showReference(self, segmentation, segmentId: str) -> None:
        """Show a stored target segment; the selector would otherwise pick (and store) the node's first segment."""
        self._restoringReference = True
        try:
            self.ui.referenceSegmentSelector.setCurrentNode(segmentation)
            self.ui.referenceSegmentSelector.setCurrentSegmentID(segmentId)
        finally:
            self._restoringReference = False

    def onChooseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Model folder (MONAI bundle or nnU-Net)", str(self._parameterNode.modelPath)
        )
        if folder:
            self._parameterNode.modelPath = pathlib.Path(folder)

    # ------------------------------------------------------------------------------------------ actions

    def describeModel(self, described) -> None:
        """Ask the worker where the model would run (and whether PyTorch can use the GPU), without blocking."""
        if self.modelJob is not None:
            self.modelJob.cancel()
            self.modelJob = None
        self._describedModel = described
        path, trust, device, gpuIndex = described
        self.modelJob = self.logic.describeModelAsync(
            str(path),
            device=device,
            gpuIndex=gpuIndex,
            trustModel=trust,
            callbacks=JobCallbacks(onDone=self.onModelDescribed, onError=self.onModelFailed),
        )
        self.timer.start()

    def onModelDescribed(self, description) -> None:
        self.modelJob = None
        if description.device.startswith("cuda"):
            where = f"the GPU ({description.cudaDevices[0]})" if description.cudaDevices else "the GPU"
        else:
            where = {"cpu": "the CPU", "mps": "the Apple GPU"}.get(description.device, description.device)
        warning = torchGpuMessage(description.torch) if description.torch else None
        self._deviceNote = f"It runs on {where}." + (f" {warning}" if warning else "")
        self.updateButtons()

    def onModelFailed(self, error: BaseException) -> None:
        self.modelJob = None
        self._deviceNote = f"The worker could not load it: {error}"
        self.updateButtons()

    def onPlaceBox(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not place a box.", waitCursor=True):
            reference = parameters.referenceSegmentation
            parameters.roi = self.logic.placeBox(
                parameters.inputVolume, reference, parameters.referenceSegmentId if reference else None
            )

    def onExplainOrCancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the explanation.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self._retry = self.startExplanation
            self.startExplanation()

    def onStopAndKeep(self) -> None:
        if self.job is not None:
            self.job.stopAndKeep()
            self.ui.statusLabel.text = STOPPING_STATUS
            self.updateButtons()

    def startExplanation(self) -> None:
        parameters = self._parameterNode
        reference = parameters.referenceSegmentation
        self.job = self.logic.explainAsync(
            parameters.inputVolume,
            str(parameters.modelPath),
            parameters.target,
            reference,
            parameters.referenceSegmentId if reference else None,
            parameters.settings(),
            roiNode=parameters.roi,
            organSegmentationNode=parameters.organSegmentation,
            trustModel=parameters.trustModel,
            callbacks=JobCallbacks(
                onProgress=self.onProgress,
                onLog=self.onStage,
                onEstimate=self.onEstimate,
                onDone=self.onExplained,
                onError=self.onFailed,
                onCancelled=self.onCancelled,
            ),
        )
        self._started("Starting the worker...", progress=True)

    def onSegmentWithModel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not segment with the model.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self._retry = self.startSegmentation
            self.startSegmentation()

    def startSegmentation(self) -> None:
        parameters = self._parameterNode
        self.job = self.logic.segmentAsync(
            parameters.inputVolume,
            str(parameters.modelPath),
            device=parameters.device,
            gpuIndex=parameters.gpuIndex,
            trustModel=parameters.trustModel,
            callbacks=JobCallbacks(
                onLog=self.onStage, onDone=self.onSegmented, onError=self.onFailed, onCancelled=self.onCancelled
            ),
        )
        self._started("Segmenting with the model...", progress=False)

    def _started(self, status: str, progress: bool) -> None:
        self.ui.progressBar.visible = progress
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = status
        self.ui.statusLabel.text = status
        self.timer.start()
        self.updateButtons()

    def pollJobs(self) -> None:
        for job in (self.job, self.modelJob):
            if job is not None:
                job.poll()
        if self.job is None and self.modelJob is None:
            self.timer.stop()

    def cancelJobs(self) -> None:
        for job in (self.job, self.modelJob):
            if job is not None:
                job.cancel()
        self.job = self.modelJob = None

    # ------------------------------------------------------------------------------------------ job callbacks

    def onProgress(self, progress) -> None:
        self.ui.progressBar.value = int(progress.percent)
        self.ui.progressBar.format = progress.text or "%p%"

    def onStage(self, message: str) -> None:
        self.ui.statusLabel.text = message

    def onEstimate(self, fields: dict) -> None:
        """The logic has shown the estimate in the views; the status line says what it is."""
        self.ui.statusLabel.text = liveStatus(fields)
        self.updateButtons()

    def onExplained(self, results) -> None:
        self._finished(f"Done: {results[0].summary}")
        if self._parameterNode.outputMode is OutputMode.REPLACE:
            with slicer.util.tryWithErrorDisplay("Could not remove the previous result.", waitCursor=True):
                self.logic.replacePrevious(results)
        self.listResults(shown=results[0])

    def listResults(self, shown=None) -> None:
        """Fill the result selector with the explanations in the scene and show ``shown`` (default the newest)."""
        if self._parameterNode is None:
            return
        self._results = self.logic.findResults()
        self.ui.resultTargetComboBox.blockSignals(True)
        self.ui.resultTargetComboBox.clear()
        self.ui.resultTargetComboBox.addItems([result.name for result in self._results])
        self.ui.resultTargetComboBox.blockSignals(False)
        if self._results:
            chosen = shown if shown in self._results else self._results[-1]
            self.ui.resultTargetComboBox.blockSignals(True)
            self.ui.resultTargetComboBox.setCurrentIndex(self._results.index(chosen))
            self.ui.resultTargetComboBox.blockSignals(False)
            self.showResult(chosen)

    def onResultChosen(self, index: int) -> None:
        if 0 <= index < len(self._results):
            self.showResult(self._results[index])

    def showResult(self, result) -> None:
        """Add ``result``'s features over the views (the user's layers stay), its table below; Show 3D follows."""
        if self._shown is not None and self._shown != result and _inScene(self._shown):
            self.logic.hideResults(self._shown)
        self._shown = result
        self.logic.showResults(result.inputVolume, result, outlines=self._parameterNode.outlineStyle)
        self.logic.setShow3D(result, self.ui.show3DButton.checked)
        self._parameterNode.resultTable = result.table
        self.ui.resultsTableView.setMRMLTableNode(result.table)
        self.updateButtons()

    def onShow3D(self, checked: bool) -> None:
        if self._shown is not None:
            self.logic.setShow3D(self._shown, checked)

    def onSegmented(self, segmentation) -> None:
        self._finished(f"Segmented: {segmentation.GetName()}.")
        # Offer the target class's segment as the target segment; never another class's.
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(self._parameterNode.target)
        self._parameterNode.referenceSegmentation = segmentation if segmentId else None
        self._parameterNode.referenceSegmentId = segmentId or ""
        self._showReference(self._parameterNode.referenceSegmentation, self._parameterNode.referenceSegmentId)

    def onFailed(self, error: BaseException) -> None:
        self._finished("Failed; nothing was added to the scene.")
        if isinstance(error, OutOfMemoryError) and self._parameterNode.device is not Device.CPU:
            if slicer.util.confirmYesNoDisplay(f"{error}\n\nRun on the CPU instead? It is slower but has the memory."):
                self._parameterNode.device = Device.CPU
                with slicer.util.tryWithErrorDisplay("Could not start again on the CPU.", waitCursor=True):
                    self._retry()
            return
        slicer.util.errorDisplay(str(error), windowTitle="SegShapExplain")

    def onCancelled(self) -> None:
        self._finished("Cancelled; the scene is as it was.")

    def _finished(self, status: str) -> None:
        self.job = None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = status
        self.updateButtons()

    def onResultRowChanged(self, current, previous) -> None:
        table = self._parameterNode.resultTable if self._parameterNode else None
        if table is not None and current.isValid():
            self.logic.jumpToFeature(table, current.row())

    # ------------------------------------------------------------------------------------------ dependencies

    def ensureDependencies(self) -> bool:
        """Install what the worker needs after one confirmation; ``False`` if the user declines."""
        missing = missingPackages()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(installMessage(missing), windowTitle="SegShapExplain"):
            return False
        installDependencies(missing)
        self._model = self._describedModel = self._missing = None  # read the model again: the worker can run
        self.updateButtons()
        return True


def _inScene(result) -> bool:
    """Whether a result's nodes are still in the scene (replaced or deleted ones are not)."""
    return result.segments is not None and result.segments.GetScene() is not None


class SegShapExplainTest(ScriptedLoadableModuleTest):
    """Runs in 3D Slicer: the demo model on the demo MRI, end to end, then cancel and a worker error."""

    SETTINGS = ExplainSettings(nFeatures=20, nSamples=64, device=Device.CPU)

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ExplainDemo()
        self.setUp()
        self.test_CancelAndError()

    def _inputs(self):
        import numpy as np

        volume = slicer.util.loadVolume(str(DEMO.image))
        logic = SegShapExplainLogic(slicer.mrmlScene)
        segmentation = logic.segment(volume, str(DEMO.model), device=Device.CPU)
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(DEMO.target)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)  # k, j, i
        box = np.zeros_like(mask)
        box[tuple(slice(start, stop) for start, stop in DEMO.roi[::-1])] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask * box, segmentation, segmentId, volume)
        return logic, volume, segmentation, segmentId

    def test_ExplainDemo(self) -> None:
        import numpy as np

        self.delayDisplay("Explaining the demo model's white matter")
        logic, volume, segmentation, segmentId = self._inputs()
        (nodes,) = logic.explain(volume, str(DEMO.model), DEMO.target, segmentation, segmentId, self.SETTINGS)
        heat = slicer.util.arrayFromVolume(nodes.heatmap)
        ids = slicer.util.arrayFromVolume(nodes.features)
        self.assertEqual(heat.shape, slicer.util.arrayFromVolume(volume).shape)
        for feature, value in nodes.values.items():
            self.assertTrue(np.all(heat[ids == feature] == np.float32(value)))
        display = nodes.heatmap.GetDisplayNode()
        self.assertAlmostEqual(display.GetLevel(), 0.0)
        table = nodes.table.GetTable()
        values = [abs(table.GetValueByName(r, "Value").ToDouble()) for r in range(table.GetNumberOfRows())]
        self.assertEqual(values, sorted(values, reverse=True))
        logic.showResults(volume, nodes)
        logic.jumpToFeature(nodes.table, 0)
        self.delayDisplay("Explanation test passed")

    def test_CancelAndError(self) -> None:
        logic, volume, segmentation, segmentId = self._inputs()
        before = slicer.mrmlScene.GetNumberOfNodes()
        stages = []
        job = logic.explainAsync(
            volume,
            str(DEMO.model),
            DEMO.target,
            segmentation,
            segmentId,
            ExplainSettings(nFeatures=60, nSamples=20000, device=Device.CPU),
            callbacks=JobCallbacks(onLog=stages.append),
        )
        while not any("Estimating" in stage for stage in stages):
            self.assertFalse(job.poll(), f"the run ended before it could be cancelled: {job.error}")
            slicer.app.processEvents()
        job.cancel()
        self.assertTrue(job.cancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        with self.assertRaises(WorkerCancelled):
            job.wait()
        with self.assertRaises(WorkerError):
            logic.explain(volume, str(DEMO.model), "no_such_class", settings=self.SETTINGS)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Cancel and error test passed")
