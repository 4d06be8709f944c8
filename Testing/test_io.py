"""Reading and writing images: NIfTI and NRRD give the same world geometry; 3D Slicer segmentations by segment name."""

from __future__ import annotations

import shutil

import nibabel
import numpy as np
import pytest
from helpers.volumes import oblique_affine, write_slicer_segmentation

from segshap.geometry import Grid, transfer
from segshap.inputs import ArgumentError
from segshap.io import (
    read_image,
    read_image_shape,
    read_labels,
    read_segmentation,
    segment_names,
    write_image,
    write_segmentation,
)
from segshap.staging import StagedOutput


def test_nrrd_and_nifti_give_the_same_world_geometry(tmp_path):
    import nrrd

    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, (8, 6, 5)).astype(np.int16)
    affine = oblique_affine()
    # NRRD as 3D Slicer writes it: LPS space, one direction vector per axis.
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    nrrd.write(
        str(tmp_path / "image.nrrd"),
        data,
        {
            "space": "left-posterior-superior",
            "space directions": lps[:, :3].T,
            "space origin": lps[:, 3],
            "kinds": ["domain"] * 3,
        },
    )
    nibabel.save(nibabel.Nifti1Image(data, affine), str(tmp_path / "image.nii.gz"))
    from_nrrd, nrrd_affine = read_image(tmp_path / "image.nrrd")
    from_nifti, nifti_affine = read_image(tmp_path / "image.nii.gz")
    np.testing.assert_array_equal(from_nrrd, data)
    np.testing.assert_array_equal(from_nifti, data)
    np.testing.assert_allclose(nrrd_affine, affine, atol=1e-12)
    np.testing.assert_allclose(nifti_affine, affine, atol=1e-5)  # NIfTI stores single precision
    # Our NRRD writer round-trips the affine exactly, with a 4D (list) axis too.
    write_image(tmp_path / "out.nrrd", np.stack([data, data + 1]).astype(np.float32), affine)
    back, back_affine = read_image(tmp_path / "out.nrrd")
    assert back.shape == (8, 6, 5, 2) and np.array_equal(back[..., 1], data + 1)
    np.testing.assert_array_equal(back_affine, affine)
    # The abbreviated space names NRRD allows.
    for space, signs in (("RAS", (1, 1, 1)), ("LPS", (-1, -1, 1)), ("LAS", (-1, 1, 1))):
        nrrd.write(str(tmp_path / f"{space}.nrrd"), data, {"space": space, "space directions": np.diag([1.0, 2, 3])})
        _, abbreviated = read_image(tmp_path / f"{space}.nrrd")
        np.testing.assert_array_equal(abbreviated[:3, :3], np.diag(np.multiply(signs, [1.0, 2, 3])))
    nrrd.write(str(tmp_path / "bad.nrrd"), data, {"space": "scanner-xyz", "space directions": np.eye(3)})
    with pytest.raises(ValueError, match="only anatomical 3D spaces"):
        read_image(tmp_path / "bad.nrrd")
    (tmp_path / "image.mha").write_text("x")
    with pytest.raises(ValueError, match="NIfTI .* or NRRD"):
        read_image(tmp_path / "image.mha")


def test_slicer_segmentations_are_read_by_segment_name_and_placed_by_their_geometry(tmp_path):
    image_grid = Grid((20, 18, 10), oblique_affine())
    # Slicer crops a saved segmentation to its extent: the file's grid starts at voxel (5, 4, 2) of the image's.
    crop = np.eye(4)
    crop[:3, 3] = (5, 4, 2)
    seg_affine = image_grid.affine @ crop
    layers = np.zeros((2, 8, 7, 5), np.uint8)
    layers[0, 1:4, 1:4, 1:3] = 1  # liver
    layers[0, 5:7, 2:5, 0:2] = 2  # spleen, same layer
    layers[1, 2:6, 2:6, 1:4] = 1  # tumour, overlapping the liver, on a second layer
    write_slicer_segmentation(
        tmp_path / "ref.seg.nrrd", layers, seg_affine, [("liver", 0, 1), ("spleen", 0, 2), ("tumour", 1, 1)]
    )
    segments, affine = read_segmentation(tmp_path / "ref.seg.nrrd")
    assert list(segments) == ["liver", "spleen", "tumour"]
    np.testing.assert_allclose(affine, seg_affine, atol=1e-12)
    assert np.array_equal(segments["tumour"], layers[1] == 1) and np.array_equal(segments["spleen"], layers[0] == 2)
    on_image = transfer(segments["liver"], Grid(layers.shape[1:], affine), image_grid)
    expected = np.zeros(image_grid.shape, bool)
    expected[6:9, 5:8, 3:5] = True
    np.testing.assert_array_equal(on_image, expected)
    # A single-layer file, and the older layout without Layer/LabelValue (one binary layer per segment).
    write_slicer_segmentation(tmp_path / "one.seg.nrrd", layers[:1], seg_affine, [("liver", 0, 1), ("spleen", 0, 2)])
    import nrrd

    data, header = nrrd.read(str(tmp_path / "one.seg.nrrd"))
    header["space directions"] = header["space directions"][1:]
    header["kinds"] = header["kinds"][1:]
    nrrd.write(str(tmp_path / "single.seg.nrrd"), np.ascontiguousarray(data[0]), header)
    single, _ = read_segmentation(tmp_path / "single.seg.nrrd")
    assert list(single) == ["liver", "spleen"] and np.array_equal(single["spleen"], layers[0] == 2)
    old_header = {
        k: v
        for k, v in nrrd.read_header(str(tmp_path / "ref.seg.nrrd")).items()
        if not k.endswith(("_Layer", "_LabelValue")) and not k.startswith("Segment2")
    }
    binary = np.stack([layers[0] == 1, layers[1] == 1]).astype(np.uint8)
    nrrd.write(str(tmp_path / "old.seg.nrrd"), binary, old_header)
    old, _ = read_segmentation(tmp_path / "old.seg.nrrd")
    assert list(old) == ["liver", "spleen"] and np.array_equal(old["spleen"], layers[1] == 1)
    # What segshap writes reads back by name, on its geometry.
    write_segmentation(tmp_path / "written.seg.nrrd", layers[0], seg_affine, {2: "spleen", 1: "liver"})
    written, written_affine = read_segmentation(tmp_path / "written.seg.nrrd")
    assert list(written) == ["liver", "spleen"] and np.array_equal(written["spleen"], layers[0] == 2)
    np.testing.assert_allclose(written_affine, seg_affine, atol=1e-12)
    with pytest.raises(ValueError, match=r"no name to label\(s\) \[2\]"):
        write_segmentation(tmp_path / "unnamed.seg.nrrd", layers[0], seg_affine, {1: "liver"})
    with pytest.raises(ValueError, match="0..255"):
        write_segmentation(tmp_path / "big.seg.nrrd", layers[0].astype(int) * 300, seg_affine, {300: "x", 600: "y"})
    # A plain label map works as well; its labels become segment names.
    write_image(tmp_path / "labels.nrrd", (layers[0]).astype(np.int16), seg_affine)
    labels, _ = read_segmentation(tmp_path / "labels.nrrd")
    assert list(labels) == ["1", "2"] and np.array_equal(labels["2"], layers[0] == 2)


@pytest.mark.parametrize("name", ["volume.nii.gz", "volume.nrrd"])
def test_the_shape_is_read_from_the_header_alone(tmp_path, name):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    write_image(tmp_path / name, data, np.eye(4))
    assert read_image_shape(tmp_path / name) == read_image(tmp_path / name)[0].shape == (6, 5, 4)
    (tmp_path / "broken.nrrd").write_text("NRRD0004\nnot a header\n")
    with pytest.raises(ValueError, match="as an NRRD image"):
        read_image_shape(tmp_path / "broken.nrrd")


def test_read_labels_is_the_one_reader_of_masks_label_maps_and_segmentations(tmp_path):
    image_grid = Grid((20, 18, 10), oblique_affine())
    crop = np.eye(4)
    crop[:3, 3] = (5, 4, 2)
    seg_affine = image_grid.affine @ crop  # a crop of the image's grid, as 3D Slicer saves segmentations
    layers = np.zeros((2, 8, 7, 5), np.uint8)
    layers[0, 1:4, 1:4, 1:3] = 1  # liver
    layers[0, 5:7, 2:5, 0:2] = 2  # spleen
    layers[1, 2:6, 2:6, 1:4] = 1  # tumour, overlapping the liver
    path = tmp_path / "organs.seg.nrrd"
    write_slicer_segmentation(path, layers, seg_affine, [("liver", 0, 1), ("spleen", 0, 2), ("tumour", 1, 1)])
    assert segment_names(path) == ["liver", "spleen", "tumour"]

    labels, names = read_labels(path, image_grid)
    assert names == {1: "liver", 2: "spleen", 3: "tumour"} and labels.shape == image_grid.shape
    on_image = np.zeros(image_grid.shape, np.int64)
    on_image[5:13, 4:11, 2:7] = np.where(layers[1] == 1, 3, layers[0])  # the later segment takes overlaps
    np.testing.assert_array_equal(labels, on_image)
    picked, picked_names = read_labels(path, image_grid, segments=["Tumour", "liver"])  # by name, any case
    assert picked_names == {1: "tumour", 2: "liver"}
    expected = np.zeros(image_grid.shape, np.int64)
    expected[5:13, 4:11, 2:7] = np.where(layers[0] == 1, 2, np.where(layers[1] == 1, 1, 0))  # liver, later, wins
    np.testing.assert_array_equal(picked, expected)
    with pytest.raises(ValueError, match="has no segment named 'kidney'; its segments are 'liver', 'spleen'"):
        read_labels(path, image_grid, segments=["kidney"], what="reference")

    # A label map keeps its labels and has no names; a probability map is a mask only when read as one.
    write_image(tmp_path / "labels.nii.gz", layers[0].astype(np.int16), seg_affine)
    plain, plain_names = read_labels(tmp_path / "labels.nii.gz", image_grid)
    assert plain_names is None and set(np.unique(plain)) == {0, 1, 2}
    write_image(tmp_path / "probability.nii.gz", layers[0].astype(np.float32) * 0.4, seg_affine)
    with pytest.raises(ValueError, match="must be a 3D label map or mask of non-negative integers"):
        read_labels(tmp_path / "probability.nii.gz", image_grid)
    mask, _ = read_labels(tmp_path / "probability.nii.gz", image_grid, mask=True, what="ROI mask")
    np.testing.assert_array_equal(mask > 0, plain > 0)

    # Drawn elsewhere: no labelled voxel lands on the image.
    far = seg_affine.copy()
    far[:3, 3] += 1000
    write_image(tmp_path / "far.nii.gz", layers[0].astype(np.int16), far)
    with pytest.raises(ValueError, match="The label map .* does not overlap the image"):
        read_labels(tmp_path / "far.nii.gz", image_grid)


def test_staged_output_writes_nothing_into_a_folder_removed_while_it_worked(tmp_path):
    """A cohort's case saves into a folder of the run's staging area; once the run has removed that area, the
    save must not make it again (nor stage anything beside it)."""
    owned = tmp_path / "run" / ".staging" / "case-1"
    owned.mkdir(parents=True)
    staged = StagedOutput(owned)
    shutil.rmtree(tmp_path / "run" / ".staging")  # the run ends and clears its staging folder
    with pytest.raises(ArgumentError, match="Cannot write outputs next to"):
        with staged as folder:
            (folder / "explanation.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    new = StagedOutput(tmp_path / "new" / "deeper")  # a folder that did not exist: made, parents included
    with new as folder:
        (folder / "a.txt").write_text("a")
    assert (tmp_path / "new" / "deeper" / "a.txt").read_text() == "a"
