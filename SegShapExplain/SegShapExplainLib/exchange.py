"""MRML nodes to the worker's input files, and the worker's output files to nodes not yet in any scene.

Inputs are written with 3D Slicer's own storage nodes, so the worker sees exactly the geometry Slicer has (the
volume's IJK-to-RAS, not its parent transform): the image, a reference segment, and where to look, a ROI's voxels
(:func:`exportRoi`) and an organ label map (:func:`exportLabelmap`), both on the image's voxel grid; the ROI boxes
the panel places (:func:`createRoi`) lie on that grid too. Outputs are read into *detached* nodes: nothing touches
the scene until every file has been read, and the nodes carry no storage node pointing at the temporary folder.
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
    segmentName = _segmentName(segmentationNode, segmentId)
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


# ------------------------------------------------------------------------------------------ where to look: the ROI

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""Half-open voxel index ranges ``((i0, i1), (j0, j1), (k0, k1))`` in a volume's IJK, the axes of the worker's
image (``segshap.io.read_image`` of :func:`exportVolume`'s file gives its voxels indexed ``[i, j, k]``)."""

_FACE_TOLERANCE_MM = 1e-3
"""A voxel centre this close outside a ROI face counts as inside: a ROI keeps its centre in single precision
(errors of 1e-5 mm at 100 mm from the origin), which must not drop a row of voxels the user placed a face on."""


def roiVoxels(roiNode, volumeNode) -> tuple[Box, np.ndarray]:
    """The voxels of ``volumeNode`` whose centres lie inside the box ROI ``roiNode``.

    The rule: a voxel is covered when its centre lies inside the ROI's box or on its faces (within 1e-3 mm),
    taken in 3D space with every parent transform of both nodes applied; voxels outside the image do not exist.
    This is exact for oblique and anisotropic volumes and for a ROI rotated relative to the volume's axes.

    Parameters
    ----------
    roiNode : vtkMRMLMarkupsROINode
        The box, possibly rotated, possibly under linear transforms.
    volumeNode : vtkMRMLScalarVolumeNode
        The volume to explain, possibly under linear transforms.

    Returns
    -------
    box : Box
        The smallest voxel box holding every covered voxel, half-open ranges in the volume's IJK.
    mask : np.ndarray
        ``bool``, the shape of ``box``, indexed ``[i, j, k]`` from the box's first voxel: which voxels of the box
        are covered (all of them for a ROI aligned with the volume's axes).

    Raises
    ------
    ValueError
        When the ROI is not placed, when a non-linear transform lies between the ROI and the volume, or when the
        ROI covers no voxel centre of the image.
    """
    checkScalarVolume(volumeNode)
    if roiNode is None:
        raise ValueError("No ROI: place a box (Markups ROI) around the region to explain, or explain everywhere.")
    bounds = np.zeros(6)
    roiNode.GetObjectBounds(bounds)
    low, high = bounds[0::2], bounds[1::2]
    if roiNode.GetNumberOfControlPoints() == 0 or not np.all(high > low):
        raise ValueError(
            f"The ROI {roiNode.GetName()!r} has no size yet; place it in a view (or use Place a box) and try again."
        )
    roiToVolume = _linearBetween(roiNode, volumeNode, f"the ROI {roiNode.GetName()!r}")
    objectToIjk = np.linalg.inv(ijkToRas(volumeNode)) @ roiToVolume @ _numpy(roiNode.GetObjectToNodeMatrix())
    shape = volumeShape(volumeNode)
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
    cornersIjk = objectToIjk[:3, :3] @ corners + objectToIjk[:3, 3:]
    # The corners' bounding box (a voxel wider, for centres on its faces) holds every centre the ROI can cover.
    start = np.clip(np.floor(cornersIjk.min(axis=1)).astype(int), 0, shape)
    stop = np.clip(np.ceil(cornersIjk.max(axis=1)).astype(int) + 1, 0, shape)
    if np.any(stop <= start):
        raise _roiMisses(roiNode, volumeNode)
    # Along I the covered centres of each (j, k) row are a run: each pair of faces bounds i from both sides. Runs
    # cost a value per row where testing every centre costs several per voxel (seconds for a CT).
    toObject = np.linalg.inv(objectToIjk)
    j = np.arange(start[1], stop[1], dtype=float)[:, None]
    k = np.arange(start[2], stop[2], dtype=float)[None, :]
    first = np.full((len(j), k.shape[1]), float(start[0]))
    last = np.full_like(first, stop[0] - 1.0)
    for axis in range(3):
        rest = toObject[axis, 1] * j + toObject[axis, 2] * k + toObject[axis, 3]
        lowest, highest = low[axis] - _FACE_TOLERANCE_MM - rest, high[axis] + _FACE_TOLERANCE_MM - rest
        slope = toObject[axis, 0]
        if slope == 0:  # this pair of faces runs along I: a row is inside them or not
            last[(lowest > 0) | (highest < 0)] = -np.inf
            continue
        with np.errstate(over="ignore"):  # a face all but parallel to I: the run reaches the box's end
            ends = np.sort([lowest / slope, highest / slope], axis=0)
        first = np.maximum(first, np.ceil(ends[0]))
        last = np.minimum(last, np.floor(ends[1]))
    i = np.arange(start[0], stop[0], dtype=float)[:, None, None]
    covered = (i >= first) & (i <= last)
    if not covered.any():
        raise _roiMisses(roiNode, volumeNode)
    nonEmpty = [np.flatnonzero(covered.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    crop = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nonEmpty)
    box = tuple((int(s + c.start), int(s + c.stop)) for s, c in zip(start, crop))
    return box, covered[crop]


def exportRoi(roiNode, volumeNode, folder: Path) -> str:
    """What the request's ``roi`` needs for a box ROI over ``volumeNode``, written into ``folder`` when a file.

    The voxels are those of :func:`roiVoxels` (centres inside the box). When they fill a box of the volume's
    voxels (a ROI aligned with the volume's axes, as :func:`createRoi` makes), the value is that box as
    ``"i0:i1,j0:j1,k0:k1"``; otherwise (a ROI rotated relative to the volume) it is the path of a mask,
    ``folder/roi.nrrd``, on the volume's voxel grid (cropped to the covered voxels), which the worker places by its
    geometry exactly onto the image.

    Raises
    ------
    ValueError
        As :func:`roiVoxels`.
    OSError
        When the mask cannot be written.
    """
    box, covered = roiVoxels(roiNode, volumeNode)
    if covered.all():
        return ",".join(f"{start}:{stop}" for start, stop in box)
    path = Path(folder) / "roi.nrrd"
    maskNode = slicer.vtkMRMLLabelMapVolumeNode()
    maskNode.SetAndObserveImageData(_imageData(covered.astype(np.uint8)))
    boxToRas = ijkToRas(volumeNode)
    boxToRas[:3, 3] += boxToRas[:3, :3] @ np.array([start for start, _ in box], float)
    maskNode.SetIJKToRASMatrix(_vtkMatrix(boxToRas))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)  # a mask is mostly runs of equal values
    if not storage.WriteData(maskNode):
        raise OSError(f"Could not write the ROI mask to {path}; check free space in the temporary folder.")
    return str(path)


def createRoi(scene, volumeNode, centerRas, sizeMm, name: str = "ROI"):
    """A new box ROI in ``scene`` of about ``sizeMm`` around the world point ``centerRas``, aligned with
    ``volumeNode``'s voxels, so that the voxels the explanation uses are exactly those the box shows.

    The box's axes are the volume's IJK axes and its faces lie on voxel faces: each face moves to the voxel face
    nearest to it, the box keeps at least one voxel per axis and is clipped to the image. The ROI goes under the
    volume's parent transform, so it follows the volume; :func:`exportRoi` then gives a box string.

    Parameters
    ----------
    scene : vtkMRMLScene
    volumeNode : vtkMRMLScalarVolumeNode
    centerRas : sequence of 3 float
        The centre in world RAS millimetres (e.g. where the slice views cross).
    sizeMm : float or sequence of 3 float
        The edge lengths along the volume's I, J and K axes.
    name : str
        The ROI node's name.

    Raises
    ------
    ValueError
        When the box lies outside the image.
    """
    checkScalarVolume(volumeNode)
    parent = volumeNode.GetParentTransformNode()
    worldToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToVolume)
    centerIjk = np.linalg.solve(ijkToRas(volumeNode), [*worldToVolume.TransformPoint(list(map(float, centerRas))), 1])
    halfSize = np.broadcast_to(np.asarray(sizeMm, float), (3,)) / 2 / _spacing(volumeNode)
    # Voxel v spans v - 0.5 .. v + 0.5: the face nearest to x is floor(x) + 0.5, with voxel floor(x) + 1 after it.
    start = np.floor(centerIjk[:3] - halfSize + 1).astype(int)
    stop = np.maximum(np.floor(centerIjk[:3] + halfSize + 1).astype(int), start + 1)
    box = _clippedBox(start, stop, volumeNode)
    if box is None:
        size = " x ".join(f"{v:g}" for v in 2 * halfSize * _spacing(volumeNode))
        centre = ", ".join(f"{v:g}" for v in centerRas)
        raise ValueError(
            f"A box of {size} mm around ({centre}) lies outside the volume {volumeNode.GetName()!r}; centre the "
            "views on the image and try again."
        )
    return _addRoiOnVoxels(scene, volumeNode, box, name)


def createRoiAroundSegment(scene, segmentationNode, segmentId: str, volumeNode, marginMm: float, name: str = "ROI"):
    """A new box ROI in ``scene`` around a segment, ``marginMm`` beyond it on every side, aligned with
    ``volumeNode``'s voxels as :func:`createRoi`'s.

    The segment is taken on the volume's grid (as :func:`exportLabelmap` takes it); the box holds its voxels and
    ``ceil(marginMm / spacing)`` more voxels on each side of each axis, clipped to the image. The user's
    segmentation is left as it is.

    Raises
    ------
    ValueError
        When the segment does not exist, has no voxel on the volume's grid, or lies beyond a non-linear transform
        from the volume.
    """
    checkScalarVolume(volumeNode)
    segmentName = _segmentName(segmentationNode, segmentId)
    labels = _segmentsOnVolumeGrid(segmentationNode, [segmentId], volumeNode)
    if not labels.any():
        raise ValueError(
            f"The segment {segmentName!r} has no voxel inside the volume "
            f"{volumeNode.GetName()!r}; choose a segment drawn on this image, or place the box by hand."
        )
    inside = [np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    margin = np.ceil(np.asarray(marginMm, float) / _spacing(volumeNode) - 1e-9).astype(int)
    start = np.array([n[0] for n in inside]) - margin
    stop = np.array([n[-1] + 1 for n in inside]) + margin
    return _addRoiOnVoxels(scene, volumeNode, _clippedBox(start, stop, volumeNode), name)


# --------------------------------------------------------------------------------- organs: a segmentation's labels


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
    names = [_segmentName(segmentationNode, segmentId) for segmentId in segmentIds]
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise ValueError(
                f"Two segments of {segmentationNode.GetName()!r} are named {seen[name.lower()]!r} and {name!r}; "
                "organs are told apart by name (case does not matter), so rename one in the Segment Editor."
            )
        seen[name.lower()] = name
    labels = _segmentsOnVolumeGrid(segmentationNode, list(segmentIds), volumeNode)
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
    return _numpy(matrix)


def volumeShape(volumeNode) -> tuple[int, int, int]:
    """The number of voxels along I, J and K (the worker's image shape)."""
    return tuple(int(n) for n in volumeNode.GetImageData().GetDimensions())


def _spacing(volumeNode) -> np.ndarray:
    return np.linalg.norm(ijkToRas(volumeNode)[:3, :3], axis=0)


def _numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _vtkMatrix(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _linearBetween(node, volumeNode, what: str) -> np.ndarray:
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
    return _numpy(matrix)


def _roiMisses(roiNode, volumeNode) -> ValueError:
    return ValueError(
        f"The ROI {roiNode.GetName()!r} covers no voxel of the volume {volumeNode.GetName()!r}: it lies outside the "
        "image (or is thinner than a voxel). Move the box onto the image (or enlarge it), or use Place a box."
    )


def _clippedBox(start, stop, volumeNode) -> Box | None:
    start = np.clip(start, 0, volumeShape(volumeNode))
    stop = np.clip(stop, 0, volumeShape(volumeNode))
    return None if np.any(stop <= start) else tuple((int(a), int(b)) for a, b in zip(start, stop))


def _addRoiOnVoxels(scene, volumeNode, box: Box, name: str):
    """A box ROI whose faces are the outer faces of the voxels of ``box``, its axes the volume's IJK axes."""
    toRas = ijkToRas(volumeNode)
    spacing = _spacing(volumeNode)
    axes = toRas[:3, :3] / spacing
    if np.linalg.det(axes) < 0:  # a left-handed IJK: flip one ROI axis, the box (symmetric) stays the same
        axes[:, 2] = -axes[:, 2]
    start, stop = np.array(box).T
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = axes
    objectToNode[:3, 3] = toRas[:3, :3] @ ((start + stop - 1) / 2) + toRas[:3, 3]
    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(name))
    roiNode.CreateDefaultDisplayNodes()
    roiNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    roiNode.SetAndObserveObjectToNodeMatrix(_vtkMatrix(objectToNode))
    roiNode.SetSize(*((stop - start) * spacing))
    return roiNode


def _imageData(array: np.ndarray):
    """A ``vtkImageData`` (origin 0, spacing 1) holding ``array``, indexed ``[i, j, k]``."""
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def _segmentName(segmentationNode, segmentId: str) -> str:
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


def _segmentsOnVolumeGrid(segmentationNode, segmentIds: list[str], volumeNode) -> np.ndarray:
    """Segments as labels ``1..len(segmentIds)`` on the volume's grid, indexed ``[i, j, k]`` (later segments over
    earlier ones), by 3D Slicer's export on copies in a private scene."""
    between = _linearBetween(segmentationNode, volumeNode, f"the segmentation {segmentationNode.GetName()!r}")
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
        transform.SetMatrixTransformToParent(_vtkMatrix(between))
        copy.SetAndObserveTransformNodeID(transform.GetID())
    reference = privateScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    geometry = vtk.vtkImageData()  # the grid alone: the export reads the extent and IJK-to-RAS, not the voxels
    geometry.SetExtent(volumeNode.GetImageData().GetExtent())
    reference.SetAndObserveImageData(geometry)
    reference.SetIJKToRASMatrix(_vtkMatrix(ijkToRas(volumeNode)))
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
    labelmap.SetAndObserveImageData(_imageData(labels))
    labelmap.SetIJKToRASMatrix(_vtkMatrix(ijkToRas(volumeNode)))
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
