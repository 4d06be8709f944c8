"""The worker's outputs as MRML nodes: heatmap, feature labelmap, value table, volume rendering, subject hierarchy.

What the slice views show: the input as background and a segmentation with one segment per feature, each filled in
the colour of its sign (red supports the segmentation, blue works against it) at an opacity proportional to |value|
(``segshap.palette``, the rule ``overview.png`` follows too: none under ``UNPAINTED_FRACTION`` of the strongest,
``STRONGEST_ALPHA`` for the strongest), so weak features let the anatomy through. The top features are also
outlined, in their own colour at full opacity (outline colour is sign, as the fill's; a neutral colour would be a
third one to read). Segments are drawn by Slicer's segmentation displayable manager, which blends each segment's
opacity over the image; a label layer cannot: Slicer's slice view draws the blended layers with their alpha over
black, so a translucent label entry darkens the anatomy under it. The segments are named with their values for the
data probe.

Everything is built first and added to the scene last, inside :class:`SceneAdditions`, so an error half-way
removes what was added and the scene is as it was.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

# Colours and opacities shared with overview.png (segshap.palette needs nothing but the standard library); the
# redundant aliases re-export names that this module's callers use.
from segshap.palette import FAINTEST_ALPHA as FAINTEST_ALPHA
from segshap.palette import NEGATIVE_RGB, POSITIVE_RGB, STRONGEST_ALPHA
from segshap.palette import NEUTRAL_RGB as NEUTRAL_RGB
from segshap.palette import feature_color as featureColor
from segshap.palette import feature_opacity as featureOpacity

from .exchange import ensureSegmentationConverters, readVolume
from .settings import OutlineStyle

DIVERGING_COLOR_NAME = "SegShapExplain diverging"
DIVERGING_COLOR_TAG = "SegShapExplainDiverging"
TOP_FEATURES = 10
"""The top features (by |value|) that are outlined and shown in 3D: this many, or all when there are fewer."""
TABLE_COLUMNS = ("Feature", "Value", "Std. error", "Voxels", "Organ", "R", "A", "S")
ROLE_ATTRIBUTE = "SegShapExplain.Role"


@dataclass
class ExplanationNodes:
    """The nodes of one explanation in the scene.

    Attributes
    ----------
    heatmap : vtkMRMLScalarVolumeNode
        Each voxel the Shapley value of its feature (0 outside all features), on the input's grid.
    features : vtkMRMLLabelMapVolumeNode
        The feature ids (0: not a feature), coloured by value (see the module's docstring).
    segments : vtkMRMLSegmentationNode
        One segment per feature (named after its id and value), filled by value and outlined when on top.
    table : vtkMRMLTableNode
        One row per feature, sorted by |value|: ``TABLE_COLUMNS`` (R, A, S: the feature's centroid).
    volumeRendering : vtkMRMLVolumeRenderingDisplayNode or None
        The top features in 3D: positive red, negative blue.
    folderItem : int
        The subject hierarchy folder holding the nodes, under the input volume's study.
    report : dict
        The worker's ``explanation.json``.
    """

    heatmap: object
    features: object
    segments: object
    table: object
    volumeRendering: object | None
    folderItem: int
    report: dict = field(repr=False)

    @property
    def values(self) -> dict[int, float]:
        """Feature id to value, as the worker computed them."""
        return {row["id"]: row["value"] for row in self.report["features"]}

    @property
    def topFeatures(self) -> list[int]:
        """The ids of the top features (``TOP_FEATURES`` of largest |value|), strongest first."""
        return topFeatureIds(self.report["features"])


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


def importExplanation(
    scene,
    outputs: dict,
    inputVolume,
    baseName: str,
    volumeRenderingLogic=None,
) -> ExplanationNodes:
    """Load the worker's outputs (``heatmap``, ``features``, ``report`` paths) into ``scene``.

    Parameters
    ----------
    scene : vtkMRMLScene
    outputs : dict
        The ``outputs`` of the worker's ``done`` event.
    inputVolume : vtkMRMLScalarVolumeNode
        The explained volume: outputs share its parent transform and its place in the subject hierarchy.
    baseName : str
        Names the nodes: ``baseName`` (heatmap), ``baseName + " features"``, ``baseName + " values"``.
    volumeRenderingLogic : vtkSlicerVolumeRenderingLogic, optional
        3D Slicer's (``slicer.modules.volumerendering.logic()``); without one no volume rendering is made.
    """
    report = json.loads(Path(outputs["report"]).read_text())
    heatmap = readVolume(outputs["heatmap"], "vtkMRMLScalarVolumeNode", baseName)
    features = readVolume(outputs["features"], "vtkMRMLLabelMapVolumeNode", f"{baseName} features")
    rows = sorted(report["features"], key=lambda row: -abs(row["value"]))
    if rows and isinstance(rows[0]["value"], list):
        raise ValueError("The report holds values for several targets; the module explains one target at a time.")
    strongest = max((abs(row["value"]) for row in rows), default=0.0)
    with SceneAdditions(scene) as added:
        color = _divergingColorNode(scene, added)
        for node in (heatmap, features):
            added.add(node)
            node.SetAttribute(ROLE_ATTRIBUTE, "heatmap" if node is heatmap else "features")
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            node.CreateDefaultDisplayNodes()
        _showDiverging(heatmap.GetDisplayNode(), color, strongest)
        features.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeLabels")
        segments = _featureSegments(scene, features, rows, strongest, f"{baseName} segments", added)
        segments.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        table = added.addNew("vtkMRMLTableNode", f"{baseName} values")
        table.SetAttribute(ROLE_ATTRIBUTE, "table")
        _fillTable(table, rows, heatmap)
        rendering = None
        if volumeRenderingLogic is not None:
            rendering = _renderTop(volumeRenderingLogic, heatmap, rows, strongest)
        folder = placeInStudy(scene, inputVolume, baseName, [heatmap, features, segments, table], added)
    nodes = ExplanationNodes(heatmap, features, segments, table, rendering, folder, report)
    setOutlineStyle(nodes, OutlineStyle.TOP)
    return nodes


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


def jumpToFeature(tableNode, row: int) -> tuple[float, float, float]:
    """Centre the slice views on the centroid of the feature in ``row`` of an explanation table; returns it
    (world RAS, i.e. with the heatmap's parent transform applied)."""
    table = tableNode.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise IndexError(f"The table {tableNode.GetName()!r} has {table.GetNumberOfRows()} rows; row {row} is none.")
    point = [float(table.GetValueByName(row, axis).ToDouble()) for axis in ("R", "A", "S")]
    transformId = tableNode.GetAttribute("SegShapExplain.TransformNodeID")
    scene = tableNode.GetScene()
    transform = scene.GetNodeByID(transformId) if transformId else None
    if transform is not None:
        toWorld = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(toWorld)
        point = list(toWorld.TransformPoint(point))
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *point, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return tuple(point)


def showInSliceViews(
    scene, inputVolume, nodes: ExplanationNodes, opacity: float = 1.0, outlines: OutlineStyle = OutlineStyle.TOP
) -> None:
    """In every slice view: the input as background, no foreground or label layer (they would cover it), and the
    feature segments filled by value (``opacity`` scales every fill) with the chosen outlines."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(inputVolume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
    display = nodes.segments.GetDisplayNode()
    display.SetVisibility(True)
    display.SetOpacity2DFill(opacity)
    setOutlineStyle(nodes, outlines)


def setOutlineStyle(nodes: ExplanationNodes, style: OutlineStyle) -> None:
    """Outline the top features, all of them, or none (each in its own colour)."""
    display = nodes.segments.GetDisplayNode()
    shown = {OutlineStyle.TOP: set(topFeatureIds(nodes.report["features"])), OutlineStyle.NONE: set()}.get(style)
    segments = nodes.segments.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segmentId = segments.GetNthSegmentID(index)
        feature = segments.GetSegment(segmentId).GetLabelValue()
        display.SetSegmentVisibility2DOutline(segmentId, shown is None or feature in shown)


def _featureSegments(scene, features, rows: list[dict], strongest: float, name: str, added: SceneAdditions):
    """One segment per feature, named with its value, filled in its sign's colour at an opacity growing with
    |value|; shown in the slice views only (the 3D view has the volume rendering)."""
    ensureSegmentationConverters()
    segmentation = added.addNew("vtkMRMLSegmentationNode", name)
    segmentation.SetAttribute(ROLE_ATTRIBUTE, "segments")
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


def _showDiverging(display, color, strongest: float) -> None:
    """Diverging colours with a window symmetric around 0 reaching the strongest |value|; no smoothing."""
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
        table.SetAttribute("SegShapExplain.TransformNodeID", heatmap.GetTransformNodeID())


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
