"""What the Slicer-side tests share: the demo case, small explanation settings, building MRML geometry, and saving
and reopening a scene headless."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel
import numpy as np
import slicer.util
import vtk
from scipy import ndimage

from SegShapExplainLib import Device, ExplainSettings
from SegShapExplainLib.exchange import ensureSegmentationConverters
from SegShapExplainLib.resources import demoCase

DEMO = demoCase()
SMALL = ExplainSettings(nFeatures=20, nSamples=64, device=Device.CPU)
"""Settings of a quick explanation: 20 supervoxels, 64 coalitions, on the CPU."""


def vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            matrix.SetElement(i, j, float(array[i, j]))
    return matrix


def oblique_demo_t1() -> tuple[np.ndarray, np.ndarray]:
    """The demo MRI resampled (linearly) onto a rotated, anisotropic grid around the left centrum semiovale."""
    image = nibabel.load(DEMO.image)
    data = np.asarray(image.get_fdata(), np.float32)
    angle = 0.35
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    spacing = np.array([1.5, 2.5, 2.0])
    shape = (40, 24, 30)
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    centre = image.affine @ np.array([46.0, 66.0, 56.0, 1.0])
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    source = np.linalg.solve(image.affine, np.c_[ijk @ affine[:3, :3].T + affine[:3, 3], np.ones(len(ijk))].T)
    voxels = ndimage.map_coordinates(data, source[:3], order=1).reshape(shape).astype(np.float32)
    return voxels, affine


def add_volume(scene, voxels: np.ndarray, affine: np.ndarray, name: str, node_class="vtkMRMLScalarVolumeNode"):
    """A volume node holding ``voxels`` (indexed ``[i, j, k]``) with ``affine`` as its IJK-to-RAS."""
    volume = scene.AddNewNodeByClass(node_class, name)
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    volume.SetIJKToRASMatrix(vtk_matrix(affine))
    return volume


def add_linear_transform(scene, matrix: np.ndarray, name: str, parent=None):
    """A linear transform node (to parent: ``matrix``), under ``parent`` when given."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    transform.SetMatrixTransformToParent(vtk_matrix(matrix))
    if parent is not None:
        transform.SetAndObserveTransformNodeID(parent.GetID())
    return transform


def rigid(rotation: np.ndarray, shift) -> np.ndarray:
    """The ``(4, 4)`` matrix rotating by ``rotation`` (3 x 3) and then shifting by ``shift``."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = shift
    return matrix


def save_scene(scene, folder: Path) -> Path:
    """Save ``scene`` as 3D Slicer's File > Save does, headless (slicer-core has no ``slicer.util.saveScene``):
    every storable node's data to a file in ``folder`` through its storage node (its default one, made when it
    has none), then the scene itself as ``folder/scene.mrml``. Returns the ``.mrml`` path.

    Raises ``AssertionError`` naming the node whose data could not be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
        if not node.IsA("vtkMRMLStorableNode"):
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue  # kept in the .mrml file itself (e.g. a short text)
        storage = node.GetStorageNode()
        if storage is None:
            continue
        storage.SetFileName(str(folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), f"could not write {node.GetClassName()} {node.GetName()!r}"
    path = folder / "scene.mrml"
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(path))
    assert scene.Commit(), f"could not write {path}"
    return path


def load_scene(path: Path):
    """A new scene read from a ``.mrml`` file and the data files beside it (as File > Open does), with a volume
    rendering logic (it registers the volume rendering node classes): ``(scene, volume_rendering_logic)``."""
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    scene.SetURL(str(path))
    assert scene.Connect(), f"could not read {path}"
    return scene, rendering
