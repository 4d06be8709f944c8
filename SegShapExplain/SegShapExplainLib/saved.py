"""The results a scene holds: found again (after File > Open too), removed, replaced.

Every node of a result carries its :data:`~SegShapExplainLib.results.RESULT_ATTRIBUTE` (and its role and target),
so a result is rebuilt from the scene alone; removing one takes its display and storage nodes with it and leaves
what others share (the input, colour tables).
"""

from __future__ import annotations

import json

from .report import targetRows
from .results import (
    INPUT_REFERENCE,
    INPUTS_ATTRIBUTE,
    RESULT_ATTRIBUTE,
    ROLE_ATTRIBUTE,
    TARGET_ATTRIBUTE,
    ExplanationNodes,
    topFeatureIds,
)
from .settings import OutlineStyle

_HELPER_CLASSES = ("vtkMRMLDisplayNode", "vtkMRMLStorageNode", "vtkMRMLVolumePropertyNode", "vtkMRMLShaderPropertyNode")
"""Nodes that exist for a result's nodes only and go with them (colour tables and ROIs may be shared: they stay)."""


def findExplanations(scene, inputVolume=None, inputs: str | None = None) -> list[ExplanationNodes]:
    """The results in ``scene`` (e.g. a scene saved with them and opened again), oldest first, one
    :class:`ExplanationNodes` per target; only those of ``inputVolume`` and with these ``inputs`` when given.

    A result is found by its report node and the nodes sharing its :data:`RESULT_ATTRIBUTE`; a target whose
    heatmap, segments or value table was deleted is left out, as is a result without its feature label map.
    """
    byResult: dict[str, dict] = {}
    reports = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        resultId, role = node.GetAttribute(RESULT_ATTRIBUTE), node.GetAttribute(ROLE_ATTRIBUTE)
        if not resultId or not role:
            continue
        target = node.GetAttribute(TARGET_ATTRIBUTE)
        byResult.setdefault(resultId, {})[(role, int(target) if target else None)] = node
        if role == "report" and node.IsA("vtkMRMLTextNode"):
            reports.append((resultId, node))
    shNode = scene.GetSubjectHierarchyNode()
    found = []
    for resultId, reportNode in reports:
        if inputs is not None and reportNode.GetAttribute(INPUTS_ATTRIBUTE) != inputs:
            continue
        if inputVolume is not None and reportNode.GetNodeReferenceID(INPUT_REFERENCE) != inputVolume.GetID():
            continue
        nodes = byResult[resultId]
        features = nodes.get(("features", None))
        try:
            report = json.loads(reportNode.GetText())
        except ValueError:
            continue  # not a report any more (edited by hand)
        if features is None:
            continue
        folder = shNode.GetItemParent(shNode.GetItemByDataNode(reportNode))
        for target in range(len(report["targets"])):
            heatmap, segments, table = (nodes.get((role, target)) for role in ("heatmap", "segments", "table"))
            if heatmap is None or segments is None or table is None:
                continue
            found.append(
                ExplanationNodes(
                    heatmap,
                    features,
                    segments,
                    table,
                    _volumeRenderingOf(heatmap),
                    folder,
                    reportNode,
                    nodes.get(("reportTable", None)),
                    nodes.get(("overview", None)),
                    nodes.get(("slices", None)),
                    targetIndex=target,
                    resultId=resultId,
                    outlineStyle=_outlineStyleOf(segments, targetRows(report, target)),
                )
            )
    return found


def _volumeRenderingOf(heatmap):
    for index in range(heatmap.GetNumberOfDisplayNodes()):
        display = heatmap.GetNthDisplayNode(index)
        if display is not None and display.IsA("vtkMRMLVolumeRenderingDisplayNode"):
            return display
    return None


def _outlineStyleOf(segments, rows: list[dict]) -> OutlineStyle:
    """The outline style the segments' display shows (``TOP`` when it matches none exactly)."""
    display = segments.GetDisplayNode()
    segmentation = segments.GetSegmentation()
    if display is None:
        return OutlineStyle.TOP
    outlined = set()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        if display.GetSegmentVisibility2DOutline(segmentId):
            outlined.add(segmentation.GetSegment(segmentId).GetLabelValue())
    every = {segmentation.GetNthSegment(i).GetLabelValue() for i in range(segmentation.GetNumberOfSegments())}
    if not outlined:
        return OutlineStyle.NONE
    return OutlineStyle.ALL if outlined == every and len(every) > len(topFeatureIds(rows)) else OutlineStyle.TOP


def removeExplanation(scene, result: ExplanationNodes | str) -> None:
    """Remove a result from ``scene``: every node of it (all its targets), their display and storage nodes, and its
    subject hierarchy folder when nothing else was put in it. Nodes it shares with others (the input, colour
    tables) stay. Call it once the result that replaces it is in the scene (:func:`replaceExplanations` checks
    that), so a failed run loses nothing."""
    resultId = result.resultId if isinstance(result, ExplanationNodes) else str(result)
    if not resultId:
        raise ValueError("This result has no id; it was not made by importExplanations.")
    own = [
        n
        for n in map(scene.GetNthNode, range(scene.GetNumberOfNodes()))
        if n.GetAttribute(RESULT_ATTRIBUTE) == resultId
    ]
    removed = {node.GetID() for node in own}
    helpers = []
    pending = list(own)
    while pending:
        node = pending.pop()
        for role in [node.GetNthNodeReferenceRole(i) for i in range(node.GetNumberOfNodeReferenceRoles())]:
            for index in range(node.GetNumberOfNodeReferences(role)):
                referenced = node.GetNthNodeReference(role, index)
                if (
                    referenced is not None
                    and referenced.GetID() not in removed
                    and any(referenced.IsA(name) for name in _HELPER_CLASSES)
                    and not referenced.GetSingletonTag()
                ):
                    removed.add(referenced.GetID())
                    helpers.append(referenced)
                    pending.append(referenced)
    helpers = [node for node in helpers if not _referencedFrom(scene, node, removed)]
    shNode = scene.GetSubjectHierarchyNode()
    folders = {shNode.GetItemParent(shNode.GetItemByDataNode(node)) for node in own if shNode.GetItemByDataNode(node)}
    scene.StartState(scene.BatchProcessState)
    try:
        for node in own + helpers:
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.RemoveItem(item, False, False)
            if node.GetScene() is scene:
                scene.RemoveNode(node)
        for folder in folders:
            if (
                folder
                and shNode.GetItemAttribute(folder, RESULT_ATTRIBUTE) == resultId
                and shNode.GetNumberOfItemChildren(folder) == 0
            ):
                shNode.RemoveItem(folder, False, False)
    finally:
        scene.EndState(scene.BatchProcessState)


def _referencedFrom(scene, node, removed: set[str]) -> bool:
    """Whether a node that stays refers to ``node``."""
    nodeId = node.GetID()
    for index in range(scene.GetNumberOfNodes()):
        other = scene.GetNthNode(index)
        if other.GetID() in removed:
            continue
        for role in [other.GetNthNodeReferenceRole(i) for i in range(other.GetNumberOfNodeReferenceRoles())]:
            if any(
                other.GetNthNodeReferenceID(role, i) == nodeId for i in range(other.GetNumberOfNodeReferences(role))
            ):
                return True
    return False


def replaceExplanations(scene, new: list[ExplanationNodes]) -> list[str]:
    """Remove the earlier results of the same inputs as ``new`` (same input volume and
    :attr:`ExplanationNodes.inputs`), once ``new`` is in the scene; returns the ids of the results removed.

    Raises
    ------
    ValueError
        When ``new`` is empty or its nodes are not in ``scene`` (import first, replace after: a failed run
        must not lose the previous result).
    """
    if not new or any(
        nodes.reportNode.GetScene() is not scene or nodes.heatmap.GetScene() is not scene for nodes in new
    ):
        raise ValueError("Replace only with a result that is in the scene: import it first.")
    first = new[0]
    volume = first.inputVolume
    if volume is None:
        return []
    earlier = []
    for nodes in findExplanations(scene, volume, first.inputs):
        if nodes.resultId != first.resultId and nodes.resultId not in earlier:
            earlier.append(nodes.resultId)
    for resultId in earlier:
        removeExplanation(scene, resultId)
    return earlier
