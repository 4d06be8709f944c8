"""Geometry: images in their own space (anisotropic, non-RAS, oblique), the model's grid, and outputs mapped back.

Every check compares against world coordinates computed here from the affines, never against the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.models import TEST_SIDECAR
from helpers.volumes import oblique_affine

import segshap
from segshap.geometry import Grid, reorient, resample, transfer
from segshap.io import read_image


def world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``(3, N)`` RAS positions of ``(3, N)`` voxel indices."""
    return affine[:3, :3] @ indices + affine[:3, 3:4]


def voxel_of(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(3, N)`` continuous voxel coordinates of ``(3, N)`` RAS points."""
    return np.linalg.solve(affine[:3, :3], points - affine[:3, 3:4])


def test_reorienting_is_exact_and_keeps_every_voxel_where_it_was():
    rng = np.random.default_rng(0)
    affine = oblique_affine()
    data = rng.random((2, 9, 11, 7)).astype(np.float32)
    moved, moved_affine = reorient(data, affine, "RAS")
    assert Grid(moved.shape[1:], moved_affine).axcodes == ("R", "A", "S")
    # Each reoriented voxel holds the value of the original voxel at the same world position.
    indices = np.indices(moved.shape[1:]).reshape(3, -1)
    original = np.rint(voxel_of(affine, world(moved_affine, indices))).astype(int)
    np.testing.assert_array_equal(moved.reshape(2, -1), data[(slice(None), *original)])
    # A transposed orientation too (axes swapped, not only flipped).
    swapped, swapped_affine = reorient(data, affine, "SRA")
    assert Grid(swapped.shape[1:], swapped_affine).axcodes == ("S", "R", "A") and swapped.shape[1:] == (7, 9, 11)
    with pytest.raises(ValueError, match="one direction per axis"):
        reorient(data, affine, "RRS")


def test_resampling_reaches_the_spacing_keeps_the_centre_and_interpolates_linearly():
    affine = oblique_affine(spacing=(0.8, 1.3, 3.0))
    shape = (30, 20, 10)
    # A linear function of world position is reproduced exactly by linear interpolation inside the grid.
    coefficients = np.array([0.3, -0.2, 0.5])
    values = (coefficients @ world(affine, np.indices(shape).reshape(3, -1))).reshape(shape)[None]
    out, out_affine = resample(values.astype(np.float64), affine, (2.0, 2.0, 2.0))
    grid = Grid(out.shape[1:], out_affine)
    np.testing.assert_allclose(grid.spacing, (2.0, 2.0, 2.0), rtol=1e-9)
    assert grid.shape == (12, 13, 15)
    centre = lambda g: world(g.affine, (np.array(g.shape)[:, None] - 1) / 2)  # noqa: E731
    np.testing.assert_allclose(centre(grid), centre(Grid(shape, affine)), atol=1e-9)
    positions = voxel_of(affine, world(out_affine, np.indices(grid.shape).reshape(3, -1)))
    inside = np.all((positions >= 0) & (positions <= np.array(shape)[:, None] - 1), axis=0)
    expected = coefficients @ world(out_affine, np.indices(grid.shape).reshape(3, -1))
    np.testing.assert_allclose(out.reshape(-1)[inside], expected[inside], atol=1e-4)
    assert inside.mean() > 0.7
    same, same_affine = resample(values, affine, (0.8, 1.3, 3.0))
    assert same is values and np.array_equal(same_affine, affine)


@pytest.mark.parametrize("target_is_rotated", [False, True])
def test_a_feature_painted_on_the_model_grid_lands_on_the_input_voxels_it_covers(target_is_rotated):
    image_grid = Grid((23, 16, 12), oblique_affine(spacing=(1.45, 2.35, 2.1)))
    data = np.zeros((1, *image_grid.shape), np.float32)
    model_data, model_affine = resample(*reorient(data, image_grid.affine, "RAS"), (2.0, 2.0, 2.0))
    model_grid = Grid(model_data.shape[1:], model_affine)
    source = model_grid
    if target_is_rotated:  # a grid that is not a flip/scale of the other: the per-voxel path
        rotated = oblique_affine(spacing=(2.0, 2.0, 2.0), angles=(0.6, 0.2, -0.3), origin=(38, -28, 10))
        source = Grid((14, 16, 12), rotated)
    painted = np.zeros(source.shape, np.int32)
    painted[4:7, 5:9, 3:6] = 5
    painted[7, 5, 3] = 9  # a single voxel next to it
    on_image = transfer(painted, source, image_grid, fill=-1)
    assert on_image.shape == image_grid.shape and on_image.dtype == np.int32
    # Ground truth: the source voxel each image voxel's centre falls in, from the affines.
    centres = voxel_of(source.affine, world(image_grid.affine, np.indices(image_grid.shape).reshape(3, -1)))
    nearest = np.floor(centres + 0.5).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.array(source.shape)[:, None]), axis=0)
    expected = np.full(inside.shape, -1)
    expected[inside] = painted[tuple(nearest[:, inside])]
    # A centre exactly on a boundary between two voxels may take either; compare everywhere else.
    ties = np.any(np.isclose(centres - np.floor(centres), 0.5, atol=1e-6), axis=0)
    assert ties.mean() < 0.01
    np.testing.assert_array_equal(on_image.reshape(-1)[~ties], expected[~ties])
    assert (on_image == 5).sum() > 10 and (on_image == 9).any()


@pytest.fixture(scope="module")
def ras_model(scripted_model):
    """The test network with a sidecar that asks for RAS at 2 mm isotropic."""
    config = json.loads(json.dumps(TEST_SIDECAR))
    config["preprocessing"].update(orientation="RAS", spacing=[2.0, 2.0, 2.0], interpolation="linear")
    return segshap.load_model(scripted_model, config=config, device="cpu")


@pytest.mark.slow
def test_explaining_an_image_in_its_own_space_maps_outputs_back_exactly(ras_model, mni_nifti, tmp_path):
    """A real MRI stored oblique, LPS and anisotropic: perturbation on the model's grid, outputs on the image's."""
    _, template, template_affine = mni_nifti
    # Build the input: the template resampled onto an oblique, flipped, anisotropic grid.
    image_affine = oblique_affine(spacing=(1.55, 2.35, 2.15), angles=(0.12, -0.08, 0.05), origin=(70, 90, -60))
    image_grid = Grid((100, 76, 70), image_affine)
    centres = voxel_of(template_affine, world(image_affine, np.indices(image_grid.shape).reshape(3, -1)))
    from scipy import ndimage

    image = ndimage.map_coordinates(template, centres, order=1).reshape(image_grid.shape).astype(np.float32)
    reference = np.zeros(image_grid.shape, bool)
    reference[45:55, 35:45, 30:40] = True
    explanation = segshap.explain(
        ras_model,
        image,
        affine=image_affine,
        target=1,
        reference=reference,
        roi=((40, 60), (30, 50), (25, 45)),
        features="grid",
        n_features=12,
        nsamples=30,
        device="cpu",
        faithfulness=False,
    )
    model_affine = explanation.model_affine
    model_grid = Grid(explanation.model_feature_map.shape, model_affine)
    assert model_grid.axcodes == ("R", "A", "S")
    np.testing.assert_allclose(model_grid.spacing, (2.0, 2.0, 2.0), rtol=1e-9)
    # Independently of the code under test: the model grid is centred on the image and spans its extent.
    centre = lambda g: world(g.affine, (np.array(g.shape)[:, None] - 1) / 2)  # noqa: E731
    np.testing.assert_allclose(centre(model_grid), centre(image_grid), atol=1e-6)
    extent = np.abs(image_affine[:3, :3]) @ np.array(image_grid.shape)  # per RAS axis (the rotation is small)
    np.testing.assert_allclose(sorted(2.0 * np.array(model_grid.shape)), sorted(extent), atol=0.2 * extent.max())
    # The outputs lie on the image's grid: each voxel shows the feature (and value) its centre falls in.
    assert explanation.feature_map.shape == image_grid.shape and explanation.reference.shape[1:] == image_grid.shape
    centres = voxel_of(model_affine, world(image_affine, np.indices(image_grid.shape).reshape(3, -1)))
    nearest = np.floor(centres + 0.5).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.array(model_grid.shape)[:, None]), axis=0)
    expected = np.zeros(inside.shape, np.int32)
    expected[inside] = explanation.model_feature_map[tuple(nearest[:, inside])]
    ties = np.any(np.isclose(centres - np.floor(centres), 0.5, atol=1e-6), axis=0)
    assert ties.mean() < 0.01
    np.testing.assert_array_equal(explanation.feature_map.reshape(-1)[~ties], expected[~ties])
    heat = explanation.heatmap
    for i, feature in enumerate(explanation.feature_ids):
        assert np.all(heat[explanation.feature_map == feature] == np.float32(explanation.values[i]))
    # The reference given on the image's grid went to the model's grid and came back where it was.
    assert (explanation.reference[0] & reference).sum() / reference.sum() > 0.9
    # Saved outputs carry the image's geometry: exactly in NRRD, to single precision in NIfTI.
    for volume_format, atol in ((".nrrd", 0.0), (".nii.gz", 1e-4)):
        outputs = explanation.save(tmp_path / volume_format.strip("."), volume_format=volume_format)
        saved, saved_affine = read_image(outputs["heatmap"])
        assert saved.shape == image_grid.shape and np.array_equal(saved, heat)
        np.testing.assert_allclose(saved_affine, image_affine, rtol=0, atol=atol)
        features, _ = read_image(outputs["features"])
        np.testing.assert_array_equal(features, explanation.feature_map)


@pytest.mark.slow
def test_an_image_coarser_than_the_model_grid_keeps_every_feature_in_the_report(ras_model, mni_nifti, tmp_path):
    """16 mm voxels for a 2 mm model: features smaller than an image voxel cover no image voxel centre, yet they
    are reported (with their model-grid voxels and centroid) and the outputs are written."""
    _, template, template_affine = mni_nifti
    coarse_affine = template_affine @ np.diag([8.0, 8.0, 8.0, 1.0])
    image = np.ascontiguousarray(template[::8, ::8, ::8])
    explanation = segshap.explain(
        ras_model,
        image,
        affine=coarse_affine,
        target=1,
        reference=np.ones(image.shape, bool),
        roi=((6, 7), (7, 8), (6, 7)),
        features="grid",
        n_features=2000,
        nsamples=16,
        device="cpu",
        faithfulness=False,
    )
    shown = set(np.unique(explanation.feature_map)) - {0}
    assert len(shown) < explanation.feature_ids.size  # some features are smaller than an image voxel
    report = explanation.to_dict()
    rows = {row["id"]: row for row in report["features"]}
    assert set(rows) == set(explanation.feature_ids.tolist())
    assert all(row["model_voxels"] > 0 for row in rows.values())
    assert all((row["voxels"] > 0) == (feature in shown) for feature, row in rows.items())
    outputs = explanation.save(tmp_path / "out")
    assert read_image(outputs["heatmap"])[0].shape == image.shape


def test_a_pure_reorientation_maps_features_back_by_flipping_only(ras_model, mni_nifti):
    """An LPS copy of the template at the model's spacing: outputs are the model-grid maps flipped back, exactly."""
    _, template, template_affine = mni_nifti
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = np.array(template.shape) - 1
    flip[2, 3] = 0
    lps_affine = template_affine @ flip
    lps_image = np.ascontiguousarray(template[::-1, ::-1])
    explanation = segshap.explain(
        ras_model,
        lps_image,
        affine=lps_affine,
        target=1,
        roi=((40, 60), (40, 60), (40, 60)),
        features="fcc",
        n_features=8,
        nsamples=20,
        device="cpu",
        reference=np.ones(template.shape, bool),
        faithfulness=False,
    )
    np.testing.assert_allclose(explanation.model_affine, template_affine, atol=1e-9)
    np.testing.assert_array_equal(explanation.feature_map, explanation.model_feature_map[::-1, ::-1])
