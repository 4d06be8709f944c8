"""The worker's outputs as MRML nodes: heatmap, feature labelmap, value table, report, figures, volume rendering,
subject hierarchy (finding them again in a saved scene: :mod:`.saved`; showing them: :mod:`.display`; the report
read in words: :mod:`.report`).

What the slice views show: the feature segments over whatever the views already show (:mod:`.display`): one segment
per feature, each filled in the colour of its sign (red supports the segmentation, blue works against it) at an
opacity proportional to |value| (``segshap.palette``, the rule ``overview.png`` follows too: none under
``UNPAINTED_FRACTION`` of the strongest, ``STRONGEST_ALPHA`` for the strongest), so weak features let the anatomy
through. The top features are also outlined, in their own colour at full opacity (outline colour is sign, as the
fill's; a neutral colour would be a third one to read). Segments are drawn by Slicer's segmentation displayable
manager, which blends each segment's opacity over the image; a label layer cannot: Slicer's slice view draws the
blended layers with their alpha over black, so a translucent label entry darkens the anatomy under it. The
segments are named with their values for the data probe.

What lasts: every node of a result is saved with the scene, the worker's ``explanation.json`` included (a text
node, :data:`ROLE_ATTRIBUTE` ``"report"``: settings, versions, base and full values, faithfulness curves, standard
errors, warnings), with a table of it for people to read (``"reportTable"``) and ``overview.png``/``slices.png`` as
image nodes (``"overview"``, ``"slices"``). The nodes of one result share :data:`RESULT_ATTRIBUTE`; a target's own
nodes (heatmap, segments, value table) carry its position in the report's targets (:data:`TARGET_ATTRIBUTE`), so
``saved.findExplanations`` rebuilds the :class:`ExplanationNodes` of a reloaded scene. Several targets give one
:class:`ExplanationNodes` each, sharing the feature label map, the report and the figures.

Everything is built first and added to the scene last, inside :class:`SceneAdditions`, so an error half-way
removes what was added and the scene is as it was.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

# Colours and opacities shared with overview.png (segshap.palette needs nothing but the standard library); the
# redundant aliases re-export names that this module's callers use.
from segshap.palette import FAINTEST_ALPHA as FAINTEST_ALPHA
from segshap.palette import NEGATIVE_RGB, POSITIVE_RGB, STRONGEST_ALPHA
from segshap.palette import NEUTRAL_RGB as NEUTRAL_RGB
from segshap.palette import feature_color as featureColor
from segshap.palette import feature_opacity as featureOpacity

from .exchange import ensureSegmentationConverters, readVolume
from .report import fillReportTable, reportSummary, targetRows
from .settings import OutlineStyle

DIVERGING_COLOR_NAME = "SegShapExplain diverging"
DIVERGING_COLOR_TAG = "SegShapExplainDiverging"
TOP_FEATURES = 10
"""The top features (by |value|) that are outlined and shown in 3D: this many, or all when there are fewer."""
TABLE_COLUMNS = ("Feature", "Value", "Std. error", "Voxels", "Organ", "R", "A", "S")
"""The columns of a target's value table: one row per feature."""
ROLE_ATTRIBUTE = "SegShapExplain.Role"
"""What a node is in its result: ``heatmap``, ``features``, ``segments``, ``table``, ``report``, ``reportTable``,
``overview`` or ``slices``."""
RESULT_ATTRIBUTE = "SegShapExplain.Result"
"""The id shared by every node of one result (all its targets) and by its subject hierarchy folder."""
TARGET_ATTRIBUTE = "SegShapExplain.Target"
"""On a target's own nodes (heatmap, segments, value table): the target's position in the report's ``targets``."""
INPUTS_ATTRIBUTE = "SegShapExplain.Inputs"
"""On the report node: what identifies the result's inputs besides the volume (see :func:`importExplanations`)."""
SUMMARY_ATTRIBUTE = "SegShapExplain.Summary"
"""On the report node and the value tables: the worker's summary line, when the caller gave it."""
TRANSFORM_ATTRIBUTE = "SegShapExplain.TransformNodeID"
"""On a value table: the input's parent transform, which ``display.jumpToFeature`` applies to the centroids."""
INPUT_REFERENCE = "SegShapExplainInput"
"""Node reference role from the report node to the explained volume (saved with the scene)."""


@dataclass(eq=False)
class ExplanationNodes:
    """The nodes of one target of one explanation in the scene.

    Two instances are equal when they are the same target of the same result (e.g. one from the import, one from
    ``saved.findExplanations``).

    Attributes
    ----------
    heatmap : vtkMRMLScalarVolumeNode
        Each voxel the Shapley value of its feature (0 outside all features), on the input's grid.
    features : vtkMRMLLabelMapVolumeNode
        The feature ids (0: not a feature); shared by the targets of a result.
    segments : vtkMRMLSegmentationNode
        One segment per feature (named after its id and value), filled by value and outlined when on top.
    table : vtkMRMLTableNode
        One row per feature, sorted by |value|: ``TABLE_COLUMNS`` (R, A, S: the feature's centroid). A saved
        scene keeps its numbers to 6 significant digits (3D Slicer's table files); :attr:`values` are the report's,
        exact.
    volumeRendering : vtkMRMLVolumeRenderingDisplayNode or None
        The top features in 3D: positive red, negative blue (none without a volume rendering logic; with several
        targets only the first target's is visible after the import).
    folderItem : int
        The subject hierarchy folder holding the result's nodes, under the input volume's study.
    reportNode : vtkMRMLTextNode
        The worker's ``explanation.json``, as it wrote it; shared by the targets of a result.
    reportTable : vtkMRMLTableNode or None
        The report in words, one row per item (``report.REPORT_COLUMNS``); shared.
    overview, slices : vtkMRMLVectorVolumeNode or None
        ``overview.png`` and ``slices.png`` (RGB, one slice), when the worker made them; shared.
    targetIndex : int
        This target's position in the report's ``targets``.
    resultId : str
        The :data:`RESULT_ATTRIBUTE` of the result's nodes.
    outlineStyle : OutlineStyle
        The outlines last set by ``display.setOutlineStyle``.
    """

    heatmap: object
    features: object
    segments: object
    table: object
    volumeRendering: object | None
    folderItem: int
    reportNode: object
    reportTable: object | None = None
    overview: object | None = None
    slices: object | None = None
    targetIndex: int = 0
    resultId: str = ""
    outlineStyle: OutlineStyle = OutlineStyle.TOP
    _parsed: tuple = field(default=(None, None), repr=False)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ExplanationNodes):
            return NotImplemented
        return (self.resultId, self.targetIndex) == (other.resultId, other.targetIndex)

    def __hash__(self) -> int:
        return hash((self.resultId, self.targetIndex))

    @property
    def report(self) -> dict:
        """The worker's ``explanation.json``, read from :attr:`reportNode` (so it is there after a reload)."""
        stamp = self.reportNode.GetMTime()
        if self._parsed[0] != stamp:
            self._parsed = (stamp, json.loads(self.reportNode.GetText()))
        return self._parsed[1]

    @property
    def target(self) -> str:
        """This target's name."""
        return self.report["targets"][self.targetIndex]["name"]

    @property
    def name(self) -> str:
        """What lists name the result by: the heatmap's name (the result's name, and the target's with several)."""
        return self.heatmap.GetName()

    @property
    def rows(self) -> list[dict]:
        """The report's feature rows with this target's ``value`` and ``stderr`` (:func:`targetRows`)."""
        return targetRows(self.report, self.targetIndex)

    @property
    def values(self) -> dict[int, float]:
        """Feature id to value, as the worker computed them."""
        return {row["id"]: row["value"] for row in self.rows}

    @property
    def topFeatures(self) -> list[int]:
        """The ids of the top features (``TOP_FEATURES`` of largest |value|), strongest first."""
        return topFeatureIds(self.rows)

    @property
    def inputVolume(self):
        """The explained volume, while it is in the scene (else ``None``)."""
        return self.reportNode.GetNodeReference(INPUT_REFERENCE)

    @property
    def inputs(self) -> str | None:
        """What identifies the result's inputs besides the volume (:data:`INPUTS_ATTRIBUTE`)."""
        return self.reportNode.GetAttribute(INPUTS_ATTRIBUTE)

    @property
    def summary(self) -> str:
        """The worker's summary line when it was given to the import, else one made from the report."""
        given = self.reportNode.GetAttribute(SUMMARY_ATTRIBUTE)
        return given if given else reportSummary(self.report, self.targetIndex)


def topFeatureIds(rows: list[dict], count: int = TOP_FEATURES) -> list[int]:
    """The ids of the ``count`` rows of largest |value| that are not 0, strongest first."""
    ranked = sorted((row for row in rows if row["value"] != 0), key=lambda row: -abs(row["value"]))
    return [row["id"] for row in ranked[:count]]


class SceneAdditions:
    """Context in which nodes are added to a scene: leaving it by an exception removes every node and subject
    hierarchy item added meanwhile (by this code or by logics it calls), so the scene is as it was."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.items: list[int] = []
        self._before: set[str] = set()

    def add(self, node):
        return self.scene.AddNode(node)

    def addNew(self, className: str, name: str):
        return self.scene.AddNewNodeByClass(className, name)

    def __enter__(self) -> SceneAdditions:
        self._before = set(_nodeIds(self.scene))
        self.scene.StartState(self.scene.BatchProcessState)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is not None:
                shNode = self.scene.GetSubjectHierarchyNode()
                for item in reversed(self.items):
                    shNode.RemoveItem(item, False, False)
                for nodeId in reversed([i for i in _nodeIds(self.scene) if i not in self._before]):
                    node = self.scene.GetNodeByID(nodeId)
                    if node is not None:
                        self.scene.RemoveNode(node)
        finally:
            self.scene.EndState(self.scene.BatchProcessState)


def _nodeIds(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def importExplanations(
    scene,
    outputs: dict,
    inputVolume,
    baseName: str,
    volumeRenderingLogic=None,
    *,
    inputs: str | None = None,
    summary: str | None = None,
) -> list[ExplanationNodes]:
    """Load the worker's outputs into ``scene``: one :class:`ExplanationNodes` per target, in one folder.

    Each target gets its own heatmap, segments, value table and volume rendering (only the first target's is
    visible); they share the feature label map, the report (``explanation.json`` as a text node, and a table of it
    in words) and the figures (``overview.png``, ``slices.png`` as image nodes). Every node is saved with the scene.

    Parameters
    ----------
    scene : vtkMRMLScene
    outputs : dict
        The ``outputs`` of the worker's ``done`` event: ``heatmap``, ``features`` and ``report`` paths, and
        ``overview`` and ``slices`` where the worker made them.
    inputVolume : vtkMRMLScalarVolumeNode
        The explained volume: outputs share its parent transform and its place in the subject hierarchy, and the
        report node refers to it (:attr:`ExplanationNodes.inputVolume`).
    baseName : str
        Names the folder and the nodes: ``baseName`` (heatmap; ``baseName + " " + target`` with several targets),
        ``... segments``, ``... values``, and the shared ``baseName + " features"``, ``" report"``,
        ``" report (JSON)"``, ``" overview"``, ``" slices"``.
    volumeRenderingLogic : vtkSlicerVolumeRenderingLogic, optional
        3D Slicer's (``slicer.modules.volumerendering.logic()``); without one no volume rendering is made.
    inputs : str, optional
        What identifies the inputs besides the volume, e.g. the model, target(s) and target segment; results
        with the same volume and ``inputs`` are "the same inputs" for ``saved.replaceExplanations``. Default: the
        target names.
    summary : str, optional
        The worker's summary line (its ``done`` event's ``summary``): :attr:`ExplanationNodes.summary`, a row of
        the report table and the value tables' :data:`SUMMARY_ATTRIBUTE`.

    Returns
    -------
    list of ExplanationNodes
        One per target, in the report's order.
    """
    reportText = Path(outputs["report"]).read_text()
    report = json.loads(reportText)
    targets = [target["name"] for target in report["targets"]]
    several = len(targets) > 1
    features = readVolume(outputs["features"], "vtkMRMLLabelMapVolumeNode", f"{baseName} features")
    names = [f"{baseName} {target}" if several else baseName for target in targets]
    if several:  # 3D Slicer reads a 4D NIfTI as a sequence: each heatmap is made as the engine makes the file
        heatmaps = [_targetHeatmap(features, targetRows(report, t), names[t]) for t in range(len(targets))]
    else:
        heatmaps = [readVolume(outputs["heatmap"], "vtkMRMLScalarVolumeNode", baseName)]
    pictures = {
        role: _readPicture(outputs[role], f"{baseName} {role}") for role in ("overview", "slices") if outputs.get(role)
    }
    resultId = uuid.uuid4().hex
    transformId = inputVolume.GetTransformNodeID()
    with SceneAdditions(scene) as added:
        color = _divergingColorNode(scene, added)
        added.add(features)
        _mark(features, "features", resultId)
        features.SetAndObserveTransformNodeID(transformId)
        features.CreateDefaultDisplayNodes()
        features.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeLabels")
        reportNode = added.addNew("vtkMRMLTextNode", f"{baseName} report (JSON)")
        reportNode.SetText(reportText)
        reportNode.SetForceCreateStorageNode(reportNode.CreateStorageNodeAlways)  # saved beside the scene
        _mark(reportNode, "report", resultId)
        reportNode.SetAttribute(INPUTS_ATTRIBUTE, inputs if inputs is not None else ", ".join(targets))
        reportNode.SetNodeReferenceID(INPUT_REFERENCE, inputVolume.GetID())
        if summary:
            reportNode.SetAttribute(SUMMARY_ATTRIBUTE, summary)
        reportTable = added.addNew("vtkMRMLTableNode", f"{baseName} report")
        _mark(reportTable, "reportTable", resultId)
        fillReportTable(reportTable, report, summary)
        shared = [features, reportNode, reportTable]
        for role, picture in pictures.items():
            added.add(picture)
            _mark(picture, role, resultId)
            picture.CreateDefaultDisplayNodes()
            shared.append(picture)
        results, own = [], []
        for t, heatmap in enumerate(heatmaps):
            rows = sorted(targetRows(report, t), key=lambda row: -abs(row["value"]))
            strongest = max((abs(row["value"]) for row in rows), default=0.0)
            added.add(heatmap)
            _mark(heatmap, "heatmap", resultId, t)
            heatmap.SetAndObserveTransformNodeID(transformId)
            heatmap.CreateDefaultDisplayNodes()
            showDiverging(heatmap.GetDisplayNode(), color, strongest)
            segments = _featureSegments(scene, features, rows, strongest, f"{names[t]} segments", added)
            _mark(segments, "segments", resultId, t)
            segments.SetAndObserveTransformNodeID(transformId)
            table = added.addNew("vtkMRMLTableNode", f"{names[t]} values")
            _mark(table, "table", resultId, t)
            _fillTable(table, rows, heatmap)
            if summary:
                table.SetAttribute(SUMMARY_ATTRIBUTE, summary)
            rendering = None
            if volumeRenderingLogic is not None:
                rendering = _renderTop(volumeRenderingLogic, heatmap, rows, strongest)
                if rendering is not None and t > 0:
                    rendering.SetVisibility(False)  # one target at a time in 3D
            own += [heatmap, segments, table]
            results.append((heatmap, segments, table, rendering, t))
        folder = placeInStudy(scene, inputVolume, baseName, own + shared, added)
        scene.GetSubjectHierarchyNode().SetItemAttribute(folder, RESULT_ATTRIBUTE, resultId)
    explanations = [
        ExplanationNodes(
            heatmap,
            features,
            segments,
            table,
            rendering,
            folder,
            reportNode,
            reportTable,
            pictures.get("overview"),
            pictures.get("slices"),
            targetIndex=t,
            resultId=resultId,
        )
        for heatmap, segments, table, rendering, t in results
    ]
    for nodes in explanations:  # OutlineStyle.TOP, the nodes' default
        outlineFeatures(nodes.segments, set(nodes.topFeatures))
    return explanations


def importExplanation(
    scene,
    outputs: dict,
    inputVolume,
    baseName: str,
    volumeRenderingLogic=None,
    *,
    inputs: str | None = None,
    summary: str | None = None,
) -> ExplanationNodes:
    """:func:`importExplanations` of a result with one target; raises ``ValueError`` (adding nothing) for a report
    with several targets."""
    targets = json.loads(Path(outputs["report"]).read_text())["targets"]
    if len(targets) != 1:
        raise ValueError(
            f"The report holds values for {len(targets)} targets; import them with importExplanations, one "
            "ExplanationNodes per target."
        )
    return importExplanations(
        scene, outputs, inputVolume, baseName, volumeRenderingLogic, inputs=inputs, summary=summary
    )[0]


def _mark(node, role: str, resultId: str, target: int | None = None) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(RESULT_ATTRIBUTE, resultId)
    if target is not None:
        node.SetAttribute(TARGET_ATTRIBUTE, str(target))


def importSegmentation(scene, path: str, classes: dict, inputVolume, name: str):
    """Load the worker's label map as a segmentation node with one segment per class (named after it).

    Returns the ``vtkMRMLSegmentationNode``, placed beside ``inputVolume`` in the subject hierarchy.
    """
    ensureSegmentationConverters()
    labels = readVolume(path, "vtkMRMLLabelMapVolumeNode", f"{name} labels")
    with SceneAdditions(scene) as added:
        segmentation = added.addNew("vtkMRMLSegmentationNode", name)
        segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation):
            raise ValueError(f"Could not turn the model's label map {path} into segments.")
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            segment.SetName(classes.get(str(segment.GetLabelValue()), segment.GetName()))
        segmentation.CreateDefaultDisplayNodes()
        placeInStudy(scene, inputVolume, None, [segmentation], added)
    return segmentation


def placeInStudy(scene, inputVolume, folderName: str | None, nodes: list, added: SceneAdditions) -> int:
    """Put ``nodes`` under the input volume's parent in the subject hierarchy (its study, when it has one), in a
    new folder named ``folderName`` (or directly, without one). Returns the folder's item (or the parent's)."""
    shNode = scene.GetSubjectHierarchyNode()
    inputItem = shNode.GetItemByDataNode(inputVolume)
    parent = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
    if folderName is not None:
        parent = shNode.CreateFolderItem(parent, folderName)
        added.items.append(parent)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:  # 3D Slicer's subject hierarchy plugins made one when the node was added
            shNode.SetItemParent(item, parent)
        else:
            added.items.append(shNode.CreateItem(parent, node))
    return parent


def outlineFeatures(segments, shown: set[int] | None) -> None:
    """Outline, in the slice views, the segments of the features in ``shown`` (every feature for ``None``), each in
    its own colour; the others lose their outline."""
    display = segments.GetDisplayNode()
    segmentation = segments.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        feature = segmentation.GetSegment(segmentId).GetLabelValue()
        display.SetSegmentVisibility2DOutline(segmentId, shown is None or feature in shown)


def _featureSegments(scene, features, rows: list[dict], strongest: float, name: str, added: SceneAdditions):
    """One segment per feature, named with its value, filled in its sign's colour at an opacity growing with
    |value|; shown in the slice views only (the 3D view has the volume rendering, or ``display.setShow3D``)."""
    ensureSegmentationConverters()
    segmentation = added.addNew("vtkMRMLSegmentationNode", name)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(features)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(features, segmentation):
        raise ValueError(f"Could not make segments of the features of {features.GetName()!r}.")
    segmentation.CreateDefaultDisplayNodes()
    display = segmentation.GetDisplayNode()
    display.SetVisibility3D(False)
    display.SetOpacity2DOutline(1.0)
    values = {row["id"]: row["value"] for row in rows}
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segmentId = segments.GetNthSegmentID(index)
        segment = segments.GetSegment(segmentId)
        value = values.get(segment.GetLabelValue(), 0.0)
        segment.SetName(f"feature {segment.GetLabelValue()} ({value:+.4g})")
        segment.SetColor(*featureColor(value))
        display.SetSegmentOpacity2DFill(segmentId, featureOpacity(value, strongest))
    return segmentation


def _targetHeatmap(features, rows: list[dict], name: str):
    """A new scalar volume (not in a scene) holding each feature's value on the features' grid, 0 elsewhere: the
    engine's heatmap of one target (``Explanation.heatmap``), made from the label map and that target's rows."""
    ids = numpy_support.vtk_to_numpy(features.GetImageData().GetPointData().GetScalars())
    size = max(int(ids.max(initial=0)), max((row["id"] for row in rows), default=0)) + 1
    lookup = np.zeros(size, np.float32)
    for row in rows:
        lookup[row["id"]] = row["value"]
    image = vtk.vtkImageData()
    image.CopyStructure(features.GetImageData())
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(lookup[ids], deep=True))
    heatmap = slicer.vtkMRMLScalarVolumeNode()
    heatmap.SetName(name)
    heatmap.CopyOrientation(features)
    heatmap.SetAndObserveImageData(image)
    return heatmap


def _readPicture(path: str | Path, name: str):
    """A new vector volume (not in a scene) holding a PNG's RGB pixels as one slice, placed as 3D Slicer places a
    PNG it opens (first row on top in the axial view)."""
    reader = vtk.vtkPNGReader()
    if not reader.CanReadFile(str(path)):
        raise OSError(f"Could not read the worker's picture {path}; the worker may have been interrupted.")
    reader.SetFileName(str(path))
    reader.Update()
    components = reader.GetOutput().GetNumberOfScalarComponents()
    rgb = vtk.vtkImageExtractComponents()
    rgb.SetInputConnection(reader.GetOutputPort())
    rgb.SetComponents(*((0, 1, 2) if components >= 3 else (0, 0, 0)))  # alpha dropped; grey as RGB
    flip = vtk.vtkImageFlip()  # VTK's reader puts the bottom row first; the file's top row first, as ITK reads it
    flip.SetInputConnection(rgb.GetOutputPort())
    flip.SetFilteredAxis(1)
    flip.Update()
    image = vtk.vtkImageData()
    image.DeepCopy(flip.GetOutput())
    image.SetOrigin(0, 0, 0)
    image.SetSpacing(1, 1, 1)
    node = slicer.vtkMRMLVectorVolumeNode()
    node.SetName(name)
    node.SetIToRASDirection(-1, 0, 0)  # LPS, as ITK reads a PNG
    node.SetJToRASDirection(0, -1, 0)
    node.SetKToRASDirection(0, 0, 1)
    node.SetAndObserveImageData(image)
    return node


def _divergingColorNode(scene, added: SceneAdditions):
    """The heatmap's blue-white-red table (one per scene), for a user who shows the heatmap itself as a layer;
    zero is transparent. 255 entries: a slice layer indexes at most 256."""
    existing = scene.GetSingletonNode(DIVERGING_COLOR_TAG, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    color = slicer.vtkMRMLColorTableNode()
    color.SetName(DIVERGING_COLOR_NAME)
    color.SetSingletonTag(DIVERGING_COLOR_TAG)
    color.SetTypeToUser()
    color.SetAttribute("Category", "SegShapExplain")
    count = 255  # odd: one entry sits exactly on zero
    color.SetNumberOfColors(count)
    middle = (count - 1) / 2
    for index in range(count):
        t = (index - middle) / middle  # -1 .. 1
        rgb = [1.0 + (c - 1.0) * abs(t) for c in (POSITIVE_RGB if t > 0 else NEGATIVE_RGB)]
        color.SetColor(index, f"{t:+.3f}", *rgb, 0.0 if index == middle else 1.0)
    added.add(color)
    return color


def showDiverging(display, color, strongest: float) -> None:
    """``color`` over a window symmetric around 0 reaching the strongest |value|, no smoothing (also live.py's)."""
    half = strongest if strongest > 0 else 1.0
    display.SetAndObserveColorNodeID(color.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(-half, half)
    display.SetInterpolate(False)


def _fillTable(table, rows: list[dict], heatmap) -> None:
    arrays = [
        vtk.vtkIntArray(),
        vtk.vtkDoubleArray(),
        vtk.vtkDoubleArray(),
        vtk.vtkIntArray(),
        vtk.vtkStringArray(),
        vtk.vtkDoubleArray(),
        vtk.vtkDoubleArray(),
        vtk.vtkDoubleArray(),
    ]
    for name, array in zip(TABLE_COLUMNS, arrays):
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
    for index, row in enumerate(rows):
        centroid = row.get("centroid_ras_mm", [math.nan] * 3)
        organ = row.get("organ", str(row["organ_label"]) if "organ_label" in row else "")
        stderr = math.nan if row["stderr"] is None else row["stderr"]  # null: not estimated (too few samples)
        for array, value in zip(arrays, (row["id"], row["value"], stderr, row["voxels"], organ, *centroid)):
            array.SetValue(index, value)
    for array in arrays:
        table.AddColumn(array)
    table.SetColumnDescription("Value", "Shapley value: how much the feature moves the target's score")
    table.SetColumnDescription("Std. error", "standard error of the estimate (0 when computed exactly)")
    table.SetColumnDescription("Voxels", "voxels of the feature on the input's grid")
    for axis in "RAS":
        table.SetColumnUnitLabel(axis, "mm")
        table.SetColumnDescription(axis, "feature centroid, before the input's parent transform")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
    if heatmap.GetTransformNodeID():
        table.SetAttribute(TRANSFORM_ATTRIBUTE, heatmap.GetTransformNodeID())


def _renderTop(logic, heatmap, rows: list[dict], strongest: float):
    """Volume rendering of the heatmap in which only the top features (``topFeatureIds``) are opaque.

    The opacity steps up just below the weakest top feature's |value|. The step is kept at least 1/1000 of the
    value range wide: closer points make GPU ray casters build lookup tables of millions of entries (and warn).
    """
    top = topFeatureIds(rows)
    if not top:
        return None
    values = {row["id"]: abs(row["value"]) for row in rows}
    threshold = min(values[i] for i in top)
    weaker = max((v for i, v in values.items() if v < threshold), default=0.0)
    step = max((threshold - weaker) / 2, strongest / 1000)
    below = max(threshold - step, strongest / 2000)
    display = logic.CreateDefaultVolumeRenderingNodes(heatmap)
    volumeProperty = display.GetVolumePropertyNode().GetVolumeProperty()
    colors = vtk.vtkColorTransferFunction()
    colors.AddRGBPoint(-strongest, *NEGATIVE_RGB)
    colors.AddRGBPoint(-below, *NEGATIVE_RGB)
    colors.AddRGBPoint(below, *POSITIVE_RGB)
    colors.AddRGBPoint(strongest, *POSITIVE_RGB)
    opacity = vtk.vtkPiecewiseFunction()
    points = {
        -strongest: STRONGEST_ALPHA,
        -threshold: 0.6,
        -below: 0.0,
        below: 0.0,
        threshold: 0.6,
        strongest: STRONGEST_ALPHA,
    }
    for x in sorted(points):
        opacity.AddPoint(x, points[x])
    volumeProperty.SetColor(colors)
    volumeProperty.SetScalarOpacity(opacity)
    volumeProperty.SetInterpolationTypeToNearest()
    volumeProperty.ShadeOff()
    display.SetVisibility(True)
    return display
