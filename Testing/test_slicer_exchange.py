"""Where to look, from MRML to the worker's request: a box ROI as the voxels it covers (``roi``) and a segmentation as
the organ label map (``labelmap``), on an oblique, anisotropic volume under parent transforms (PyPI ``slicer-core``).

The expected voxels are computed independently of ``SegShapExplainLib.exchange``: every voxel centre is carried to
world space with the volume's IJK-to-RAS and its parents' ``GetMatrixTransformToWorld``, then into the ROI's box
with its ``GetObjectToWorldMatrix``; segments are shifted by whole voxels, so their place on the volume's grid is
known exactly. The files are read back as the worker reads them (``segshap.request``, ``segshap.io.read_labels``).
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from helpers.slicer_scenes import add_linear_transform, add_volume, rigid
from scipy.spatial.transform import Rotation

from segshap.geometry import Grid
from segshap.inputs import as_roi_mask
from segshap.io import read_image, read_labels
from segshap.request import _roi
from SegShapExplainLib.exchange import (
    ensureSegmentationConverters,
    exportLabelmap,
    exportVolume,
)
from SegShapExplainLib.region import createRoi, createRoiAroundSegment, exportRoi, roiVoxels


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _to_world(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    parent = node.GetParentTransformNode()
    if parent is not None:
        assert parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


FACE_TOLERANCE_MM = 1e-3
"""The rule of ``roiVoxels``: a centre at most this far outside a face is inside."""


def _covered(roi, volume) -> np.ndarray:
    """The volume's voxels whose centres lie inside the ROI, over the whole volume, indexed ``[i, j, k]``."""
    shape = volume.GetImageData().GetDimensions()
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    world = _to_world(volume) @ _ijk_to_ras(volume) @ np.c_[ijk, np.ones(len(ijk))].T
    box = np.linalg.solve(slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix()), world)
    inside = np.all(np.abs(box[:3]) <= np.array(roi.GetSize())[:, None] / 2 + FACE_TOLERANCE_MM, axis=0)
    return inside.reshape(shape)


def _placed(box, mask, shape) -> np.ndarray:
    full = np.zeros(shape, bool)
    full[tuple(slice(start, stop) for start, stop in box)] = mask
    return full


def _worker_roi(value: str, image_path) -> np.ndarray:
    """The ROI as the worker takes the request's ``roi``: a box string or a mask file, onto the image's grid."""
    image, affine = read_image(image_path)
    return as_roi_mask(_roi(value, Grid(image.shape, affine)), image.shape)


def _random_rotation(rng) -> np.ndarray:
    return Rotation.from_rotvec(rng.normal(0, 1, 3)).as_matrix()


def _roi_node(scene, center, size, rotation: np.ndarray, parent=None):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(rigid(rotation, center)))
    roi.SetSize(*size)
    if parent is not None:
        roi.SetAndObserveTransformNodeID(parent.GetID())
    return roi


def _thin_plate_spline(scene):
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(0, 0, 0), (100, 0, 0), (0, 100, 0), (0, 0, 100), (50, 50, 50)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 5 * (point == (50, 50, 50)), point[1], point[2])
    spline = vtk.vtkThinPlateSplineTransform()
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(spline)
    return warp


@pytest.fixture
def scene(oblique_t1):
    """The oblique T1 (1.5 x 2.5 x 2 mm, rotated) under a registration under a patient position: nested transforms."""
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    voxels, affine = oblique_t1
    volume = add_volume(scene, voxels, affine, "T1 oblique")
    patient = add_linear_transform(
        scene, rigid(Rotation.from_euler("xyz", [5, -8, 20], True).as_matrix(), [4, -7, 12]), "patient"
    )
    registration = add_linear_transform(
        scene, rigid(Rotation.from_euler("zyx", [-12, 6, 3], True).as_matrix(), [-3, 2, 5]), "registration", patient
    )
    volume.SetAndObserveTransformNodeID(registration.GetID())
    return scene


def _volume(scene):
    return scene.GetFirstNodeByName("T1 oblique")


def _centre_world(volume) -> np.ndarray:
    shape = np.array(volume.GetImageData().GetDimensions())
    return (_to_world(volume) @ _ijk_to_ras(volume) @ np.r_[(shape - 1) / 2, 1])[:3]


# ------------------------------------------------------------------------------------------------------ the image


def test_the_exported_volume_is_indexed_ijk_with_the_volume_s_own_geometry(scene, tmp_path):
    volume = _volume(scene)
    data, affine = read_image(exportVolume(volume, tmp_path / "input.nrrd"))
    np.testing.assert_array_equal(data, slicer.util.arrayFromVolume(volume).transpose(2, 1, 0))
    assert data.shape == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(affine, _ijk_to_ras(volume), atol=1e-9)  # the parent transforms are not in the file


# ------------------------------------------------------------------------------------------------------------ ROI


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_rotated_roi_under_its_own_transform_becomes_a_mask_of_the_voxels_it_covers(scene, tmp_path, seed):
    volume = _volume(scene)
    rng = np.random.default_rng(seed)
    other = add_linear_transform(scene, rigid(_random_rotation(rng), rng.normal(0, 5, 3)), "other")
    # Near the volume's centre, 30 x 20 x 25 mm, rotated at random, under a transform of its own.
    centre = np.linalg.solve(_to_world(other), np.r_[_centre_world(volume), 1])[:3] + rng.normal(0, 4, 3)
    roi = _roi_node(scene, centre, [30, 20, 25], _random_rotation(rng), other)
    expected = _covered(roi, volume)
    assert 100 < expected.sum() < expected.size / 2

    box, mask = roiVoxels(roi, volume)
    np.testing.assert_array_equal(_placed(box, mask, expected.shape), expected)
    assert mask.shape == tuple(stop - start for start, stop in box)
    assert all(mask.any(axis=tuple(a for a in range(3) if a != axis))[[0, -1]].all() for axis in range(3))

    value = exportRoi(roi, volume, tmp_path)
    assert value == str(tmp_path / "roi.nrrd")
    np.testing.assert_array_equal(_worker_roi(value, exportVolume(volume, tmp_path / "input.nrrd")), expected)


def test_a_roi_along_the_volume_s_axes_is_a_box_whatever_its_axis_order(scene, tmp_path):
    volume = _volume(scene)
    directions = _ijk_to_ras(volume)[:3, :3] / np.linalg.norm(_ijk_to_ras(volume)[:3, :3], axis=0)
    # The box's x runs along the volume's J, its y against I, its z along K; in the volume's own frame.
    rotation = np.c_[directions[:, 1], -directions[:, 0], directions[:, 2]]
    roi = _roi_node(scene, _ijk_to_ras(volume)[:3] @ [17.3, 11.8, 14.2, 1], [12.2, 9.4, 15.1], rotation)
    roi.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    expected = _covered(roi, volume)

    value = exportRoi(roi, volume, tmp_path)
    assert ":" in value and not list(tmp_path.iterdir())
    box = tuple(tuple(int(v) for v in part.split(":")) for part in value.split(","))
    np.testing.assert_array_equal(_placed(box, True, expected.shape), expected)
    # 9.4 mm around I = 17.3 (1.5 mm voxels): 14.17..20.43; 12.2 mm around J = 11.8 (2.5 mm): 9.36..14.24; 15.1 mm
    # around K = 14.2 (2 mm): 10.43..17.98.
    assert box == ((15, 21), (10, 15), (11, 18))
    np.testing.assert_array_equal(_worker_roi(value, exportVolume(volume, tmp_path / "input.nrrd")), expected)


def test_centres_on_a_face_are_inside(tmp_path):
    # An upright 1 mm volume and an upright box whose faces pass through voxel centres, as typed-in numbers do.
    scene = slicer.vtkMRMLScene()
    volume = add_volume(scene, np.zeros((20, 15, 10), np.int16), np.eye(4), "upright")
    roi = _roi_node(scene, [10.0, 7.0, 5.0], [6.0, 4.0, 2.0], np.eye(3))
    assert exportRoi(roi, volume, tmp_path) == "7:14,5:10,4:7"
    np.testing.assert_array_equal(_placed(roiVoxels(roi, volume)[0], True, (20, 15, 10)), _covered(roi, volume))
    roi.SetSize(6.0, 4.0, 1.99)  # 5 microns short of the centres on either side: those rows are out
    assert exportRoi(roi, volume, tmp_path) == "7:14,5:10,5:6"


def test_a_placed_box_lies_on_the_voxels_and_exports_as_the_box_it_shows(scene, tmp_path):
    volume = _volume(scene)
    centre = (_to_world(volume) @ _ijk_to_ras(volume) @ [20, 12, 15, 1])[:3]
    roi = createRoi(scene, volume, centre, 31.0, name="where")
    assert roi.GetName() == "where" and roi.GetDisplayNode() is not None
    assert roi.GetTransformNodeID() == volume.GetTransformNodeID()
    # 31 mm is 20.7 voxels of 1.5 mm, 12.4 of 2.5 mm, 15.5 of 2 mm: the faces move to the nearest voxel faces.
    box = ((10, 31), (6, 19), (8, 23))
    np.testing.assert_allclose(roi.GetSize(), [21 * 1.5, 13 * 2.5, 15 * 2.0], atol=1e-9)
    # Faces on voxel faces: the box's corners are half a voxel from voxel centres, along every axis.
    bounds = np.zeros(6)
    roi.GetObjectBounds(bounds)
    corner = np.linalg.solve(
        _ijk_to_ras(volume), slicer.util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix()) @ np.r_[bounds[0::2], 1]
    )
    np.testing.assert_allclose(np.abs(corner[:3] - np.round(corner[:3])), 0.5, atol=1e-5)  # single precision

    assert exportRoi(roi, volume, tmp_path) == "10:31,6:19,8:23"
    np.testing.assert_array_equal(_placed(box, True, _covered(roi, volume).shape), _covered(roi, volume))


def test_a_placed_box_near_the_edge_is_clipped_to_the_image_and_one_off_it_is_refused(scene):
    volume = _volume(scene)
    corner = (_to_world(volume) @ _ijk_to_ras(volume) @ [0, 0, 0, 1])[:3]
    roi = createRoi(scene, volume, corner, [4.8, 8.0, 6.4])  # 1.6 voxels each way from voxel 0
    assert roiVoxels(roi, volume)[0] == ((0, 2), (0, 2), (0, 2))
    beyond = (_to_world(volume) @ _ijk_to_ras(volume) @ [-20, 5, 5, 1])[:3]
    with pytest.raises(ValueError, match="lies outside the volume"):
        createRoi(scene, volume, beyond, 10.0)


def test_a_box_around_a_segment_holds_it_and_the_margin(scene, oblique_t1):
    volume = _volume(scene)
    labels = np.zeros(oblique_t1[0].shape, np.uint8)
    labels[12:20, 3:9, 24:29] = 1
    segmentation = _segmentation(scene, [(labels, ["lesion"])])
    segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
    roi = createRoiAroundSegment(scene, segmentation, segmentId, volume, 4.0)
    # 4 mm is 3 voxels of 1.5 mm, 2 of 2.5 mm, 2 of 2 mm; along K the box stops at the image's end (30 voxels).
    assert roiVoxels(roi, volume)[0] == ((9, 23), (1, 11), (22, 30))
    assert roiVoxels(roi, volume)[1].all()
    empty = segmentation.GetSegmentation().AddEmptySegment("", "nothing")
    with pytest.raises(ValueError, match="'nothing' has no voxel inside the volume.*place the box by hand"):
        createRoiAroundSegment(scene, segmentation, empty, volume, 4.0)


def test_a_roi_off_the_image_or_unplaced_is_refused_saying_what_to_do(scene, tmp_path):
    volume = _volume(scene)
    far = _roi_node(scene, _centre_world(volume) + [0, 0, 200], [20, 20, 20], np.eye(3))
    with pytest.raises(ValueError, match="covers no voxel.*Move the box onto the image"):
        exportRoi(far, volume, tmp_path)
    unplaced = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "new")
    with pytest.raises(ValueError, match="has no size yet; place it"):
        roiVoxels(unplaced, volume)


def test_a_non_linear_transform_between_roi_and_volume_is_refused(scene):
    volume = _volume(scene)
    warp = _thin_plate_spline(scene)
    roi = _roi_node(scene, _centre_world(volume), [20, 20, 20], np.eye(3), warp)
    with pytest.raises(ValueError, match="non-linear transform.*harden the transform"):
        roiVoxels(roi, volume)


# ---------------------------------------------------------------------------------------------------- organs


def _segmentation(scene, layers: list[tuple[np.ndarray, list[str]]]):
    """A segmentation on the volume's grid: each ``(labels, names)`` imported as its own layer, label n named
    ``names[n - 1]`` (so segments of different layers may overlap)."""
    volume = _volume(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for labels, names in layers:
        labelmap = add_volume(scene, labels, _ijk_to_ras(volume), "labels", "vtkMRMLLabelMapVolumeNode")
        before = segmentation.GetSegmentation().GetNumberOfSegments()
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        for index, name in enumerate(names):
            segmentation.GetSegmentation().GetNthSegment(before + index).SetName(name)
        scene.RemoveNode(labelmap)
    segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    return segmentation


def _snapshot(scene, segmentation) -> tuple:
    nodes = [(n.GetID(), n.GetName()) for n in map(scene.GetNthNode, range(scene.GetNumberOfNodes()))]
    content = segmentation.GetSegmentation()
    segments = [
        (content.GetNthSegmentID(i), content.GetNthSegment(i).GetName()) for i in range(content.GetNumberOfSegments())
    ]
    names = [name for name in ("Binary labelmap", "Closed surface") if content.ContainsRepresentation(name)]
    return nodes, segments, names, segmentation.GetParentTransformNode(), segmentation.GetMTime(), content.GetMTime()


def test_a_segmentation_becomes_named_organs_on_the_volume_s_grid(scene, oblique_t1, tmp_path):
    volume = _volume(scene)
    shape = oblique_t1[0].shape
    first = np.zeros(shape, np.uint8)
    first[4:16, 3:12, 5:18] = 1  # liver
    first[22:36, 3:12, 5:18] = 2  # spleen
    first[30:40, 15:24, 20:30] = 3  # pancreas: partly shifted off the image
    second = np.zeros(shape, np.uint8)
    second[10:26, 8:14, 10:14] = 1  # kidney, over liver and spleen: the later segment takes the voxel
    segmentation = _segmentation(scene, [(first, ["liver", "spleen", "pancreas"]), (second, ["kidney"])])
    # The segmentation sits under its own transform, which puts it 3, -2 and 1 voxels along the volume's axes.
    shift = np.array([3, -2, 1])
    toVolume = _ijk_to_ras(volume) @ rigid(np.eye(3), shift) @ np.linalg.inv(_ijk_to_ras(volume))
    moved = add_linear_transform(scene, toVolume, "moved", volume.GetParentTransformNode())
    segmentation.SetAndObserveTransformNodeID(moved.GetID())
    before = _snapshot(scene, segmentation)

    written = exportLabelmap(segmentation, volume, tmp_path / "organs.seg.nrrd")

    assert _snapshot(scene, segmentation) == before
    assert written.names == ["liver", "spleen", "pancreas", "kidney"] and written.skipped == []
    image, affine = read_image(exportVolume(volume, tmp_path / "input.nrrd"))
    labels, names = read_labels(written.path, Grid(image.shape, affine), what="label map")  # as the worker does
    assert names == {1: "liver", 2: "spleen", 3: "pancreas", 4: "kidney"}
    expected = np.zeros(shape, np.int64)
    for source, label in [(first == 1, 1), (first == 2, 2), (first == 3, 3), (second == 1, 4)]:
        target = np.zeros(shape, bool)
        target[tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape))] = source[
            tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, shape))
        ]
        expected[target] = label
    np.testing.assert_array_equal(labels, expected)
    # 3D Slicer's own export of each segment on the volume's geometry (arrayFromSegmentBinaryLabelmap's way),
    # later segments over earlier ones.
    slicers = np.zeros(shape, np.int64)
    for label, name in names.items():
        slicers[
            _slicer_segment(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName(name), volume)
        ] = label
    np.testing.assert_array_equal(labels, slicers)


def _slicer_segment(segmentation, segmentId: str, volume) -> np.ndarray:
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.SetAndObserveDisplayNodeID(scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode").GetID())
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
    return slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0) > 0


def test_chosen_segments_come_in_the_order_given_and_empty_ones_are_left_out(scene, oblique_t1, tmp_path):
    volume = _volume(scene)
    labels = np.zeros(oblique_t1[0].shape, np.uint8)
    labels[4:16, 3:12, 5:18] = 1
    labels[22:36, 3:12, 5:18] = 2
    inside = np.zeros(labels.shape, np.uint8)
    inside[6:10, 5:8, 7:10] = 1  # within the liver
    segmentation = _segmentation(scene, [(labels, ["liver", "spleen"]), (inside, ["cyst"])])
    content = segmentation.GetSegmentation()
    empty = content.AddEmptySegment("", "gallbladder")
    liver, spleen, cyst = (content.GetSegmentIdBySegmentName(name) for name in ("liver", "spleen", "cyst"))

    written = exportLabelmap(segmentation, volume, tmp_path / "organs.seg.nrrd", [spleen, empty, cyst, liver])

    # The cyst, before the liver that covers it, keeps no voxel: left out, as the empty gallbladder is.
    assert written.names == ["spleen", "liver"] and written.skipped == ["gallbladder", "cyst"]
    image, affine = read_image(exportVolume(volume, tmp_path / "input.nrrd"))
    read, names = read_labels(written.path, Grid(image.shape, affine), what="label map")
    assert names == {1: "spleen", 2: "liver"}
    np.testing.assert_array_equal(read, np.array([0, 2, 1])[labels])


def test_organ_label_maps_that_the_worker_could_not_use_are_refused(scene, oblique_t1, tmp_path):
    volume = _volume(scene)
    labels = np.zeros(oblique_t1[0].shape, np.uint8)
    labels[4:16, 3:12, 5:18] = 1
    labels[22:36, 3:12, 5:18] = 2
    twins = _segmentation(scene, [(labels, ["Liver", "liver"])])
    with pytest.raises(ValueError, match="named 'Liver' and 'liver'.*rename one"):
        exportLabelmap(twins, volume, tmp_path / "organs.seg.nrrd")
    none = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "blank")
    with pytest.raises(ValueError, match="has no segments"):
        exportLabelmap(none, volume, tmp_path / "organs.seg.nrrd")
    none.GetSegmentation().AddEmptySegment("", "nothing")
    with pytest.raises(ValueError, match="None of the segments 'nothing' has a voxel"):
        exportLabelmap(none, volume, tmp_path / "organs.seg.nrrd")
    with pytest.raises(ValueError, match="no segment with id 'missing'; its segments are 'Liver', 'liver'"):
        exportLabelmap(twins, volume, tmp_path / "organs.seg.nrrd", ["missing"])
    twins.SetAndObserveTransformNodeID(_thin_plate_spline(scene).GetID())
    with pytest.raises(ValueError, match="non-linear transform"):
        exportLabelmap(twins, volume, tmp_path / "organs.seg.nrrd", [twins.GetSegmentation().GetNthSegmentID(0)])
    assert not list(tmp_path.iterdir())
