"""How a result shows in 3D Slicer's views: its feature segments over the user's own slice layers, their
outlines, the strongest features in 3D, and the views centred on a feature. The nodes themselves are made by
:mod:`.results`.
"""

from __future__ import annotations

import slicer
import vtk

from .results import ROLE_ATTRIBUTE, TRANSFORM_ATTRIBUTE, ExplanationNodes, outlineFeatures
from .settings import OutlineStyle


def jumpToFeature(tableNode, row: int) -> tuple[float, float, float]:
    """Centre the slice views on the centroid of the feature in ``row`` of an explanation table; returns it
    (world RAS, i.e. with the heatmap's parent transform applied)."""
    table = tableNode.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise IndexError(f"The table {tableNode.GetName()!r} has {table.GetNumberOfRows()} rows; row {row} is none.")
    point = [float(table.GetValueByName(row, axis).ToDouble()) for axis in ("R", "A", "S")]
    transformId = tableNode.GetAttribute(TRANSFORM_ATTRIBUTE)
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
    """Add the feature segments (filled by value, ``opacity`` scaling every fill, with the chosen outlines) over
    what every slice view shows. The views' background, foreground and label layers stay as they are, except that a
    view without a background gets ``inputVolume`` (default the result's input volume). The segments of other
    results are hidden in the slice views (one result at a time: they would cover each other)."""
    inputVolume = inputVolume if inputVolume is not None else nodes.inputVolume
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        background = composite.GetBackgroundVolumeID()
        if inputVolume is not None and (not background or scene.GetNodeByID(background) is None):
            composite.SetBackgroundVolumeID(inputVolume.GetID())
    for other in _otherSegments(scene, nodes):
        other.GetDisplayNode().SetVisibility2D(False)
    display = nodes.segments.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    display.SetOpacity2DFill(opacity)
    setOutlineStyle(nodes, outlines)


def hideInViews(nodes: ExplanationNodes) -> None:
    """Hide a result everywhere: its segments (slice and 3D views) and its volume rendering."""
    nodes.segments.GetDisplayNode().SetVisibility(False)
    if nodes.volumeRendering is not None:
        nodes.volumeRendering.SetVisibility(False)


def _otherSegments(scene, nodes: ExplanationNodes) -> list:
    """The feature segmentations of the other results (and other targets) in the scene, with a display node."""
    found = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node is not nodes.segments and node.GetAttribute(ROLE_ATTRIBUTE) == "segments" and node.GetDisplayNode():
            found.append(node)
    return found


def setOutlineStyle(nodes: ExplanationNodes, style: OutlineStyle) -> None:
    """Outline the top features, all of them, or none (each in its own colour)."""
    outlineFeatures(nodes.segments, {OutlineStyle.TOP: set(nodes.topFeatures), OutlineStyle.NONE: set()}.get(style))
    nodes.outlineStyle = style


def setShow3D(nodes: ExplanationNodes, visible: bool) -> None:
    """Show or hide the top features in 3D: the heatmap's volume rendering when there is one, else the top
    features' segments as surfaces (made on first use; the other segments stay hidden in 3D). The slice views are
    left as they are."""
    if nodes.volumeRendering is not None:
        nodes.volumeRendering.SetVisibility(visible)
        return
    display = nodes.segments.GetDisplayNode()
    if visible:
        top = set(nodes.topFeatures)
        segmentation = nodes.segments.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            display.SetSegmentVisibility3D(segmentId, segmentation.GetSegment(segmentId).GetLabelValue() in top)
        nodes.segments.CreateClosedSurfaceRepresentation()
        if not display.GetVisibility():  # hidden everywhere: show it in 3D only
            display.SetVisibility2D(False)
            display.SetVisibility(True)
    display.SetVisibility3D(visible)


def isShown3D(nodes: ExplanationNodes) -> bool:
    """Whether :func:`setShow3D` shows the result in 3D now."""
    if nodes.volumeRendering is not None:
        return bool(nodes.volumeRendering.GetVisibility())
    display = nodes.segments.GetDisplayNode()
    return bool(display.GetVisibility() and display.GetVisibility3D())
