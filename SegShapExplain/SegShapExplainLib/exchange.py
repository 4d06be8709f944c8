"""MRML nodes to the worker's input files, and the worker's output files to nodes not yet in any scene.

Inputs are written with 3D Slicer's own storage nodes, so the worker sees exactly the geometry Slicer has (the
volume's IJK-to-RAS, not its parent transform): the image, a reference segment and an organ label map
(:func:`exportLabelmap`, on the image's voxel grid); the volume geometry here serves ``region`` (the ROI) too.
Outputs are read into *detached* nodes: nothing touches the scene until every file has been read, and the nodes
carry no storage node pointing at the temporary folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

BINARY_LABELMAP = "Binary labelmap"


def ensureSegmentationConverters() -> None:
    """Register the labelmap/closed-surface conversion rules; 3D Slicer does this at start-up, a bare
    ``slicer-core`` Python does not, and segments cannot hold a binary labelmap without them."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    names = {rules[i].GetName() for i in range(len(rules))} if rules else set()
    for rule in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule(),
    ):
        if rule.GetName() not in names:
            factory.RegisterConverterRule(rule)


def checkScalarVolume(volumeNode) -> None:
    """Raise ``ValueError`` unless ``volumeNode`` is a 3D single-component scalar volume with voxels."""
    if volumeNode is None:
        raise ValueError("No input volume: choose the image to explain.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(
            f"{volumeNode.GetName()!r} is a {volumeNode.GetClassName()}, not a scalar image; choose the image the "
            "model segments (a label map or a vector volume cannot be explained)."
        )
    image = volumeNode.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"The volume {volumeNode.GetName()!r} has no voxels; load its image data first.")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"The volume {volumeNode.GetName()!r} has {image.GetNumberOfScalarComponents()} components per voxel; "
            "the worker takes one (extract a component with the Vector to Scalar Volume module)."
        )


def exportVolume(volumeNode, path: Path) -> Path:
    """Write a scalar volume to ``path`` (NRRD, uncompressed) with its geometry; returns ``path``."""
    checkScalarVolume(volumeNode)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise OSError(f"Could not write {volumeNode.GetName()!r} to {path}; check free space in the temporary folder.")
    return path


def exportSegment(segmentationNode, segmentId: str, path: Path) -> Path:
    """Write one segment, as a binary labelmap in its own geometry, to a ``.seg.nrrd``; returns ``path``.

    The copy lives in a private scene, so the user's segmentation (and scene) are left as they are.
    """
    segmentName = segmentNameOf(segmentationNode, segmentId)
    ensureSegmentationConverters()
    privateScene = slicer.vtkMRMLScene()
    copy = privateScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copy.GetSegmentation().CopySegmentFromSegmentation(segmentationNode.GetSegmentation(), segmentId)
    copied = copy.GetSegmentation()
    if not copied.ContainsRepresentation(BINARY_LABELMAP) and not copied.CreateRepresentation(BINARY_LABELMAP):
        raise ValueError(
            f"The segment {segmentName!r} cannot be made into a binary labelmap; convert it in the "
            "Segmentations module (Representations) and try again."
        )
    copied.SetSourceRepresentationName(BINARY_LABELMAP)
    storage = privateScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.WriteData(copy):
        raise OSError(f"Could not write the segment {segmentName!r} to {path}.")
    return path


def readVolume(path: str | Path, nodeClass: str, name: str):
    """A new node of ``nodeClass`` (not in a scene, without a storage node) holding the volume file ``path``."""
    node = getattr(slicer, nodeClass)()
    node.SetName(name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise OSError(f"Could not read the worker's output {path}; the worker may have been interrupted.")
    return node


class LabelmapExport(NamedTuple):
    """What :func:`exportLabelmap` wrote."""

    path: Path
    """The ``.seg.nrrd``, the request's ``labelmap``."""
    names: list[str]
    """The organs' names, in file order: the worker labels them 1, 2, ... in this order."""
    skipped: list[str]
    """Segments left out because they have no voxel on the volume's grid (empty, outside the image, or covered
    entirely by later segments)."""


def exportLabelmap(segmentationNode, volumeNode, path: Path, segmentIds: list[str] | None = None) -> LabelmapExport:
    """Write segments as the organ label map of organ features: a ``.seg.nrrd`` on ``volumeNode``'s voxel grid,
    one label per segment, named after the segment (the worker's ``segshap.io.read_labels`` reads the names from
    the ``.seg.nrrd`` header; a plain label map would carry none).

    Each segment is resampled onto the volume's grid by 3D Slicer's own export (nearest neighbour, with the
    transforms between the segmentation and the volume applied); where segments overlap, the later one in
    ``segmentIds`` takes the voxel, as in 3D Slicer's *Export to label map*. Segments with no voxel on the grid
    are left out (listed in ``skipped``). The copy lives in a private scene, so the user's segmentation (and scene)
    are left as they are.

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
    volumeNode : vtkMRMLScalarVolumeNode
        The volume to explain: the label map takes its geometry.
    path : Path
        Where to write; must end in ``.seg.nrrd``.
    segmentIds : list of str, optional
        The segments, in label order; default all, in the segmentation's order.

    Returns
    -------
    LabelmapExport

    Raises
    ------
    ValueError
        When a segment does not exist, two segments share a name (the worker finds organs by name), no segment
        has a voxel on the volume's grid, or a non-linear transform lies between the segmentation and the volume.
    OSError
        When the file cannot be written.
    """
    checkScalarVolume(volumeNode)
    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"The organ label map is written as a .seg.nrrd (it names the organs), not {path}.")
    segmentation = segmentationNode.GetSegmentation()
    if segmentIds is None:
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not segmentIds:
        raise ValueError(
            f"The segmentation {segmentationNode.GetName()!r} has no segments; draw the organs in the Segment "
            "Editor, or choose another segmentation."
        )
    names = [segmentNameOf(segmentationNode, segmentId) for segmentId in segmentIds]
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise ValueError(
                f"Two segments of {segmentationNode.GetName()!r} are named {seen[name.lower()]!r} and {name!r}; "
                "organs are told apart by name (case does not matter), so rename one in the Segment Editor."
            )
        seen[name.lower()] = name
    labels = segmentsOnVolumeGrid(segmentationNode, list(segmentIds), volumeNode)
    present = sorted(int(label) for label in np.unique(labels) if label > 0)
    if not present:
        raise ValueError(
            f"None of the segments {', '.join(map(repr, names))} has a voxel inside the volume "
            f"{volumeNode.GetName()!r}; choose a segmentation drawn on this image."
        )
    # Labels 1..K in segment order, without gaps: the worker numbers a .seg.nrrd's segments in file order.
    renumber = np.zeros(len(segmentIds) + 1, np.uint8 if len(present) < 256 else np.uint16)
    renumber[present] = np.arange(1, len(present) + 1)
    written = [names[label - 1] for label in present]
    _writeLabelsAsSegmentation(renumber[labels], volumeNode, written, Path(path))
    return LabelmapExport(Path(path), written, [name for label, name in enumerate(names, 1) if label not in present])


# ------------------------------------------------------------------------------------------------------ geometry


def ijkToRas(volumeNode) -> np.ndarray:
    """The ``(4, 4)`` IJK-to-RAS matrix of a volume node (its own, without parent transforms): the affine the
    worker reads from :func:`exportVolume`'s file."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return numpyMatrix(matrix)


def volumeShape(volumeNode) -> tuple[int, int, int]:
    """The number of voxels along I, J and K (the worker's image shape)."""
    return tuple(int(n) for n in volumeNode.GetImageData().GetDimensions())


def voxelSpacing(volumeNode) -> np.ndarray:
    return np.linalg.norm(ijkToRas(volumeNode)[:3, :3], axis=0)


def numpyMatrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def vtkMatrix(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def linearBetween(node, volumeNode, what: str) -> np.ndarray:
    """The matrix from ``node``'s coordinates to ``volumeNode``'s (their parent transforms, which may differ)."""
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        node.GetParentTransformNode(), volumeNode.GetParentTransformNode(), matrix
    ):
        raise ValueError(
            f"A non-linear transform lies between {what} and the volume {volumeNode.GetName()!r}, so its voxels "
            "cannot be matched exactly; put it under the volume's transform, or harden the transform "
            "(Transforms module), and try again."
        )
    return numpyMatrix(matrix)


def imageData(array: np.ndarray):
    """A ``vtkImageData`` (origin 0, spacing 1) holding ``array``, indexed ``[i, j, k]``."""
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def segmentNameOf(segmentationNode, segmentId: str) -> str:
    """The name of a segment; raises ``ValueError`` listing the segments when there is no such segment."""
    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId) if segmentId else None
    if segment is None:
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        raise ValueError(
            f"The segmentation {segmentationNode.GetName()!r} has no segment with id {segmentId!r}; its segments "
            f"are {', '.join(map(repr, names)) or 'none'}. Choose one of them."
        )
    return segment.GetName()


def segmentsOnVolumeGrid(segmentationNode, segmentIds: list[str], volumeNode) -> np.ndarray:
    """Segments as labels ``1..len(segmentIds)`` on the volume's grid, indexed ``[i, j, k]`` (later segments over
    earlier ones), by 3D Slicer's export on copies in a private scene."""
    between = linearBetween(segmentationNode, volumeNode, f"the segmentation {segmentationNode.GetName()!r}")
    ensureSegmentationConverters()
    privateScene = slicer.vtkMRMLScene()
    copy = privateScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copied = copy.GetSegmentation()
    # The conversion parameters (the reference geometry above all) make a surface into the labelmap Slicer shows.
    copied.CopyConversionParameters(segmentationNode.GetSegmentation())
    for segmentId in segmentIds:
        copied.CopySegmentFromSegmentation(segmentationNode.GetSegmentation(), segmentId)
    if not np.allclose(between, np.eye(4), rtol=0, atol=1e-12):
        transform = privateScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(vtkMatrix(between))
        copy.SetAndObserveTransformNodeID(transform.GetID())
    reference = privateScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    geometry = vtk.vtkImageData()  # the grid alone: the export reads the extent and IJK-to-RAS, not the voxels
    geometry.SetExtent(volumeNode.GetImageData().GetExtent())
    reference.SetAndObserveImageData(geometry)
    reference.SetIJKToRASMatrix(vtkMatrix(ijkToRas(volumeNode)))
    labelmap = privateScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    # With a display node already there the export does not look for Slicer's default colour table, which a
    # private scene lacks (and would warn about).
    labelmap.SetAndObserveDisplayNodeID(privateScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode").GetID())
    ids = vtk.vtkStringArray()
    for segmentId in segmentIds:
        ids.InsertNextValue(segmentId)
    # The whole grid, not the segments' extent: the labels are the volume's voxels, index for index.
    wholeGrid = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        copy, ids, labelmap, reference, wholeGrid
    ):
        raise ValueError(
            f"The segments of {segmentationNode.GetName()!r} cannot be made into a label map; convert them to a "
            "binary labelmap in the Segmentations module (Representations) and try again."
        )
    return slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0).astype(np.int64)


def _writeLabelsAsSegmentation(labels: np.ndarray, volumeNode, names: list[str], path: Path) -> None:
    """Write labels ``1..len(names)`` on the volume's grid as a ``.seg.nrrd``, label ``n`` named ``names[n - 1]``."""
    privateScene = slicer.vtkMRMLScene()
    labelmap = privateScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.SetAndObserveImageData(imageData(labels))
    labelmap.SetIJKToRASMatrix(vtkMatrix(ijkToRas(volumeNode)))
    segmentationNode = privateScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode):
        raise OSError(f"Could not make the organ label map {path} into a segmentation.")
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        segment.SetName(names[segment.GetLabelValue() - 1])
    storage = privateScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentationNode):
        raise OSError(f"Could not write the organ label map to {path}; check free space in the temporary folder.")
