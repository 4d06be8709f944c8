"""The worker's outputs as MRML nodes: heatmap, feature labelmap, value table, volume rendering, subject hierarchy.

Everything is built first and added to the scene last, inside :class:`SceneAdditions`, so an error half-way
removes what was added and the scene is as it was.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from .exchange import ensureSegmentationConverters, readVolume

DIVERGING_COLOR_NAME = "SegShapExplain diverging"
DIVERGING_COLOR_TAG = "SegShapExplainDiverging"
NEGATIVE_RGB = (0.23, 0.30, 0.75)
"""Blue: features that work against the segmentation (Moreland's cool-warm end points)."""
POSITIVE_RGB = (0.71, 0.02, 0.15)
"""Red: features that support the segmentation."""
TABLE_COLUMNS = ("Feature", "Value", "Std. error", "Voxels", "Organ", "R", "A", "S")
ROLE_ATTRIBUTE = "SegShapExplain.Role"
STRONGEST_FRACTION = 0.1
"""The volume rendering shows the features whose |value| is among the strongest tenth."""


@dataclass
class ExplanationNodes:
    """The nodes of one explanation in the scene.

    Attributes
    ----------
    heatmap : vtkMRMLScalarVolumeNode
        Each voxel the Shapley value of its feature (0 outside all features), on the input's grid.
    features : vtkMRMLLabelMapVolumeNode
        The feature ids (0: not a feature).
    table : vtkMRMLTableNode
        One row per feature, sorted by |value|: ``TABLE_COLUMNS`` (R, A, S: the feature's centroid).
    volumeRendering : vtkMRMLVolumeRenderingDisplayNode or None
        The strongest positive (red) and negative (blue) features in 3D.
    folderItem : int
        The subject hierarchy folder holding the nodes, under the input volume's study.
    report : dict
        The worker's ``explanation.json``.
    """

    heatmap: object
    features: object
    table: object
    volumeRendering: object | None
    folderItem: int
    report: dict = field(repr=False)

    @property
    def values(self) -> dict[int, float]:
        """Feature id to value, as the worker computed them."""
        return {row["id"]: row["value"] for row in self.report["features"]}


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
        table = added.addNew("vtkMRMLTableNode", f"{baseName} values")
        table.SetAttribute(ROLE_ATTRIBUTE, "table")
        _fillTable(table, rows, heatmap)
        rendering = None
        if volumeRenderingLogic is not None:
            rendering = _renderStrongest(volumeRenderingLogic, heatmap, rows, strongest, added)
        folder = placeInStudy(scene, inputVolume, baseName, [heatmap, features, table], added)
    return ExplanationNodes(heatmap, features, table, rendering, folder, report)


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


def showInSliceViews(scene, inputVolume, nodes: ExplanationNodes, opacity: float = 0.5) -> None:
    """Input as background, heatmap as foreground, feature outlines as label layer in every slice view."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(inputVolume.GetID())
        composite.SetForegroundVolumeID(nodes.heatmap.GetID())
        composite.SetForegroundOpacity(opacity)
        composite.SetLabelVolumeID(nodes.features.GetID())
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").SetUseLabelOutline(True)


def _divergingColorNode(scene, added: SceneAdditions):
    """The module's blue-white-red table (one per scene); zero is transparent so unexplained voxels show the image."""
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
        end = POSITIVE_RGB if t > 0 else NEGATIVE_RGB
        weight = abs(t)
        rgb = [1.0 + (c - 1.0) * weight for c in end]  # white at 0, the end colour at +-1
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
    arrays = [vtk.vtkIntArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray(), vtk.vtkIntArray(), vtk.vtkStringArray(),
              vtk.vtkDoubleArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray()]
    for name, array in zip(TABLE_COLUMNS, arrays):
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
    for index, row in enumerate(rows):
        centroid = row.get("centroid_ras_mm", [math.nan] * 3)
        organ = row.get("organ", str(row["organ_label"]) if "organ_label" in row else "")
        for array, value in zip(arrays, (row["id"], row["value"], row["stderr"], row["voxels"], organ, *centroid)):
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


def _renderStrongest(logic, heatmap, rows: list[dict], strongest: float, added: SceneAdditions):
    """Volume rendering of the heatmap in which only the strongest features (by |value|) are opaque."""
    if strongest <= 0:
        return None
    magnitudes = np.sort(np.abs([row["value"] for row in rows]))[::-1]
    shown = max(1, int(math.ceil(STRONGEST_FRACTION * len(magnitudes))))
    threshold = float(magnitudes[shown - 1]) * (1 - 1e-6)
    display = logic.CreateDefaultVolumeRenderingNodes(heatmap)
    propertyNode = display.GetVolumePropertyNode()
    volumeProperty = propertyNode.GetVolumeProperty()
    colors = vtk.vtkColorTransferFunction()
    colors.AddRGBPoint(-strongest, *NEGATIVE_RGB)
    colors.AddRGBPoint(0.0, 1.0, 1.0, 1.0)
    colors.AddRGBPoint(strongest, *POSITIVE_RGB)
    opacity = vtk.vtkPiecewiseFunction()
    below = threshold * (1 - 1e-3)
    for x, alpha in ((-strongest, 0.9), (-threshold, 0.5), (-below, 0.0), (below, 0.0), (threshold, 0.5),
                     (strongest, 0.9)):
        opacity.AddPoint(x, alpha)
    volumeProperty.SetColor(colors)
    volumeProperty.SetScalarOpacity(opacity)
    volumeProperty.SetInterpolationTypeToNearest()
    volumeProperty.ShadeOff()
    display.SetVisibility(True)
    return display
