"""Where to look: a markups ROI as the voxels of a volume (exactly, for oblique volumes, rotated boxes and parent
transforms), written for the worker as its ``roi``, and the boxes the panel places, aligned to the volume's voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk

from .exchange import (
    checkScalarVolume,
    ijkToRas,
    imageData,
    linearBetween,
    numpyMatrix,
    segmentNameOf,
    segmentsOnVolumeGrid,
    volumeShape,
    voxelSpacing,
    vtkMatrix,
)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""Half-open voxel index ranges ``((i0, i1), (j0, j1), (k0, k1))`` in a volume's IJK, the axes of the worker's
image (``segshap.io.read_image`` of ``exchange.exportVolume``'s file gives its voxels indexed ``[i, j, k]``)."""

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
    roiToVolume = linearBetween(roiNode, volumeNode, f"the ROI {roiNode.GetName()!r}")
    objectToIjk = np.linalg.inv(ijkToRas(volumeNode)) @ roiToVolume @ numpyMatrix(roiNode.GetObjectToNodeMatrix())
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
    maskNode.SetAndObserveImageData(imageData(covered.astype(np.uint8)))
    boxToRas = ijkToRas(volumeNode)
    boxToRas[:3, 3] += boxToRas[:3, :3] @ np.array([start for start, _ in box], float)
    maskNode.SetIJKToRASMatrix(vtkMatrix(boxToRas))
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
    halfSize = np.broadcast_to(np.asarray(sizeMm, float), (3,)) / 2 / voxelSpacing(volumeNode)
    # Voxel v spans v - 0.5 .. v + 0.5: the face nearest to x is floor(x) + 0.5, with voxel floor(x) + 1 after it.
    start = np.floor(centerIjk[:3] - halfSize + 1).astype(int)
    stop = np.maximum(np.floor(centerIjk[:3] + halfSize + 1).astype(int), start + 1)
    box = _clippedBox(start, stop, volumeNode)
    if box is None:
        size = " x ".join(f"{v:g}" for v in 2 * halfSize * voxelSpacing(volumeNode))
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
    segmentName = segmentNameOf(segmentationNode, segmentId)
    labels = segmentsOnVolumeGrid(segmentationNode, [segmentId], volumeNode)
    if not labels.any():
        raise ValueError(
            f"The segment {segmentName!r} has no voxel inside the volume "
            f"{volumeNode.GetName()!r}; choose a segment drawn on this image, or place the box by hand."
        )
    inside = [np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    margin = np.ceil(np.asarray(marginMm, float) / voxelSpacing(volumeNode) - 1e-9).astype(int)
    start = np.array([n[0] for n in inside]) - margin
    stop = np.array([n[-1] + 1 for n in inside]) + margin
    return _addRoiOnVoxels(scene, volumeNode, _clippedBox(start, stop, volumeNode), name)


# --------------------------------------------------------------------------------- organs: a segmentation's labels


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
    spacing = voxelSpacing(volumeNode)
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
    roiNode.SetAndObserveObjectToNodeMatrix(vtkMatrix(objectToNode))
    roiNode.SetSize(*((stop - start) * spacing))
    return roiNode
