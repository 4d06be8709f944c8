"""MRML nodes to the worker's input files, and the worker's output files to nodes not yet in any scene.

Inputs are written with 3D Slicer's own storage nodes, so the worker sees exactly the geometry Slicer has (the
volume's IJK-to-RAS, not its parent transform). Outputs are read into *detached* nodes: nothing touches the scene
until every file has been read, and the nodes carry no storage node pointing at the temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import slicer

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
    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId) if segmentId else None
    if segment is None:
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        raise ValueError(
            f"The segmentation {segmentationNode.GetName()!r} has no segment with id {segmentId!r}; its segments "
            f"are {', '.join(map(repr, names)) or 'none'}. Choose one of them."
        )
    ensureSegmentationConverters()
    privateScene = slicer.vtkMRMLScene()
    copy = privateScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copy.GetSegmentation().CopySegmentFromSegmentation(segmentation, segmentId)
    copied = copy.GetSegmentation()
    if not copied.ContainsRepresentation(BINARY_LABELMAP) and not copied.CreateRepresentation(BINARY_LABELMAP):
        raise ValueError(
            f"The segment {segment.GetName()!r} cannot be made into a binary labelmap; convert it in the "
            "Segmentations module (Representations) and try again."
        )
    copied.SetSourceRepresentationName(BINARY_LABELMAP)
    storage = privateScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    if not storage.WriteData(copy):
        raise OSError(f"Could not write the segment {segment.GetName()!r} to {path}.")
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
