"""Feature abstractions: contiguous ids, nothing (and no work) outside the support, exact FCC cells, SLIC on a real
MRI, organ-aware supervoxels that never cross a label boundary, and clear errors."""

from __future__ import annotations

import importlib
import itertools
import math
import time

import numpy as np
import pytest
import skimage.segmentation

from segshap.features import fcc, feature_organs, grid, organ_aware, organs, slic

# The modules of two kinds, whose functions their names stand for in segshap.features.
FCC = importlib.import_module("segshap.features.fcc")
ORGANS = importlib.import_module("segshap.features.organs")


def assert_feature_map(out: np.ndarray, shape: tuple[int, ...], support=None) -> int:
    """int32, the right shape, ids 1..N all present, 0 outside the support; returns N."""
    assert out.dtype == np.int32
    assert out.shape == shape
    assert out.min() >= 0
    n = int(out.max())
    assert n >= 1
    assert np.all(np.bincount(out.ravel(), minlength=n + 1)[1:] > 0)
    if support is not None:
        outside = np.ones(shape, dtype=bool)
        outside[tuple(slice(a, b) for a, b in support)] = False
        assert not out[outside].any()
    return n


def ranked(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in increasing order (0 kept)."""
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape) + (0 if values[0] == 0 else 1)


def crop(array: np.ndarray, box) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    """The MNI152 brain mask at 2 mm (nilearn ships it), aligned with the ``mni_t1`` fixture."""
    from nilearn.datasets import load_mni152_brain_mask

    return np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0


@pytest.fixture(scope="module")
def tissues(mni_t1, brain) -> np.ndarray:
    """A label map from the MRI: white matter (bright) and the rest of the brain, split by hemisphere (labels
    1..4); 0 outside the brain. Regions with ragged, disconnected parts, as real label maps have."""
    labels = np.zeros(mni_t1.shape, dtype=np.int16)
    white = mni_t1 > 0.5
    labels[brain & white] = 1
    labels[brain & ~white] = 3
    half = mni_t1.shape[0] // 2
    labels[half:][labels[half:] > 0] += 1
    return labels


@pytest.fixture(scope="module")
def mni_slic(mni_t1, brain) -> np.ndarray:
    return slic(mni_t1, 200, mask=brain)


# ---------------------------------------------------------------------------------------------------------------
# grid


def test_grid_blocks_have_the_requested_sizes():
    shape, size = (10, 7, 5), (4, 3, 5)
    out = grid(shape, size)
    n = assert_feature_map(out, shape)
    assert n == 3 * 3 * 1
    for i, j in itertools.product(range(3), range(3)):
        block = out[4 * i : 4 * i + 4, 3 * j : 3 * j + 3, :]
        assert np.unique(block).tolist() == [i * 3 + j + 1]  # numbered in C order of the block position
        assert (out == i * 3 + j + 1).sum() == block.size
    cubes = grid((12, 12, 12), 4)
    assert np.all(np.bincount(cubes.ravel())[1:] == 64)


def test_grid_support_is_the_cropped_full_grid():
    shape, box = (23, 17, 19), ((5, 18), (3, 4), (7, 19))
    full = grid(shape, (4, 5, 3))
    out = grid(shape, (4, 5, 3), support=box)
    assert_feature_map(out, shape, box)
    # Blocks stay aligned to the volume origin: the same partition, renumbered inside the support.
    assert np.array_equal(crop(out, box), ranked(crop(full, box)))


# ---------------------------------------------------------------------------------------------------------------
# fcc


def d3_points(low: float, high: float) -> np.ndarray:
    """All D3 points (integer, even coordinate sum) in the cube [low, high]^3."""
    r = np.arange(math.floor(low), math.ceil(high) + 1)
    points = np.array(list(itertools.product(r, r, r)))
    return points[points.sum(axis=1) % 2 == 0]


@pytest.mark.slow
def test_nearest_d3_point_is_exactly_nearest():
    rng = np.random.default_rng(0)
    q = rng.uniform(-4, 4, size=(3, 5000))
    q[:, :500] = np.round(q[:, :500] * 2) / 2  # half-integers: ties everywhere
    nearest = np.stack(FCC._nearest_d3(list(q)))
    assert np.all(nearest.sum(axis=0) % 2 == 0)
    points = d3_points(-6, 6)
    best = ((q.T[:, None, :] - points[None]) ** 2).sum(-1).min(axis=1)
    assert np.allclose(((q - nearest) ** 2).sum(axis=0), best, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing, shape", [(3.3, (13, 11, 9)), (5.0, (13, 11, 9)), (0.6, (5, 4, 3))])
def test_fcc_assigns_every_voxel_to_its_nearest_lattice_point(spacing, shape):
    out = fcc(shape, spacing)
    n = assert_feature_map(out, shape)
    scale = spacing / math.sqrt(2)
    points = d3_points(-2, max(shape) / scale + 2) * scale  # every lattice point near the volume
    voxels = np.indices(shape).reshape(3, -1).T.astype(float)
    distances = ((voxels[:, None, :] - points[None]) ** 2).sum(-1)
    nearest = distances <= distances.min(axis=1, keepdims=True) + 1e-9  # (voxel, point): a nearest point
    ids = out.ravel()
    chosen = []
    for i in range(1, n + 1):
        common = np.flatnonzero(nearest[ids == i].all(axis=0))
        assert common.size, f"cell {i} holds voxels with different nearest lattice points"
        chosen.append(common[0] if common.size == 1 else -i)
    assert len(set(chosen)) == n  # distinct cells are distinct lattice points
    if spacing == 0.6:
        assert n == math.prod(shape)  # cells smaller than voxels: every voxel its own cell


def test_fcc_cells_have_the_rhombic_dodecahedron_volume():
    spacing, shape = 8.0, (64, 64, 64)
    out = fcc(shape, spacing)
    assert_feature_map(out, shape)
    border = np.unique(np.concatenate([np.moveaxis(out, a, 0)[[0, -1]].ravel() for a in range(3)]))
    sizes = np.bincount(out.ravel())
    interior = np.setdiff1d(np.arange(1, len(sizes)), border)
    assert interior.size > 100
    expected = spacing**3 / math.sqrt(2)
    assert abs(sizes[interior].mean() / expected - 1) < 0.02
    assert np.all(np.abs(sizes[interior] / expected - 1) < 0.2)


def test_fcc_support_is_the_cropped_full_lattice():
    shape, box = (40, 33, 27), ((7, 31), (0, 33), (13, 14))
    full = fcc(shape, 6.5)
    out = fcc(shape, 6.5, support=box)
    assert_feature_map(out, shape, box)
    assert np.array_equal(crop(out, box), ranked(crop(full, box)))
    # The lattice is anchored at the origin: voxel (0, 0, 0) is a lattice point, its cell holds its neighbours.
    assert full[0, 0, 0] == full[1, 0, 0] == full[0, 1, 0] == full[0, 0, 1] == 1


def test_regular_partitions_work_only_inside_the_support():
    shape, box = (1000, 1000, 250), ((500, 530), (100, 140), (0, 25))  # 2.5e8 voxels
    for make in (lambda s: grid(shape, 7, support=s), lambda s: fcc(shape, 7.0, support=s)):
        start = time.perf_counter()
        out = crop(make(box), box)  # the zero map around it is never touched
        assert time.perf_counter() - start < 2.0
        assert out.min() >= 1
        assert np.all(np.bincount(out.ravel())[1:] > 0)


# ---------------------------------------------------------------------------------------------------------------
# slic


@pytest.mark.slow
def test_slic_on_mri_gives_about_n_segments_in_the_mask(mni_slic, brain):
    n = assert_feature_map(mni_slic, brain.shape)
    assert 160 <= n <= 240
    assert np.array_equal(mni_slic > 0, brain)
    sizes = np.bincount(mni_slic[brain])[1:]
    assert sizes.std() / sizes.mean() < 0.5  # roughly equal supervoxels


def test_slic_default_follows_tissue_edges_and_stays_compact(mni_t1, brain, mni_slic):
    """The default compactness: supervoxels purer in tissue than blind blocks of the same size, yet compact."""
    tissue = np.digitize(mni_t1, np.percentile(mni_t1[brain], [33, 67]))

    def purity(labels):
        table = np.bincount(labels[brain] * 3 + tissue[brain], minlength=3 * labels.max() + 3).reshape(-1, 3)[1:]
        return table.max(axis=1).sum() / table.sum()

    def surface(labels):
        faces = np.zeros(labels.max() + 1)
        for axis in range(3):
            a = np.moveaxis(labels, axis, 0)
            cut = a[1:] != a[:-1]
            faces += np.bincount(a[1:][cut], minlength=len(faces)) + np.bincount(a[:-1][cut], minlength=len(faces))
        return (faces[1:] / np.bincount(labels.ravel())[1:] ** (2 / 3)).mean()

    spacing = (brain.sum() / mni_slic.max() * math.sqrt(2)) ** (1 / 3)  # cells as large as the supervoxels
    blocks = np.where(brain, fcc(brain.shape, spacing), 0)
    blocks = ranked(blocks)
    assert purity(mni_slic) > purity(blocks) + 0.05
    assert surface(mni_slic) < 1.5 * surface(blocks)


def test_slic_compactness_does_not_depend_on_intensity_units(mni_t1):
    box = ((20, 60), (30, 70), (30, 60))
    out = slic(mni_t1, 30, support=box)
    assert_feature_map(out, mni_t1.shape, box)
    assert np.array_equal(slic(mni_t1 * 1024.0, 30, support=box), out)
    shifted = slic(mni_t1 * 1000.0 + 1e4, 30, support=box)
    assert np.mean(crop(shifted, box) == crop(out, box)) > 0.97


def test_slic_multichannel_images_are_not_read_as_rgb(mni_t1):
    box = ((20, 60), (30, 70), (30, 60))
    single = slic(mni_t1, 30, 0.2, support=box)
    # Three equal channels weigh intensity sqrt(3) times more; scaled compactness gives the same supervoxels.
    triple = slic(np.stack([mni_t1] * 3), 30, 0.2 * math.sqrt(3), support=box)
    assert_feature_map(triple, mni_t1.shape, box)
    assert np.mean(crop(triple, box) == crop(single, box)) > 0.97
    # Channels in other units are normalised separately.
    mixed = slic(np.stack([mni_t1, 1000 * mni_t1, 1000 * mni_t1]), 30, 0.2 * math.sqrt(3), support=box)
    assert np.mean(crop(mixed, box) == crop(single, box)) > 0.97


def test_slic_works_only_on_the_support(mni_t1, brain, monkeypatch):
    seen = []
    real = skimage.segmentation.slic

    def spy(image, *args, **kwargs):
        seen.append((image.shape, None if kwargs.get("mask") is None else kwargs["mask"].shape))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(skimage.segmentation, "slic", spy)
    box = ((10, 50), (20, 70), (40, 80))
    out = slic(mni_t1, 40, mask=brain, support=box)
    assert seen == [((40, 50, 40), (40, 50, 40))]
    assert_feature_map(out, mni_t1.shape, box)
    assert np.array_equal(out > 0, crop_mask(brain, box))
    assert 25 <= out.max() <= 55  # n_segments counts supervoxels inside the support and mask


def crop_mask(mask, box):
    inside = np.zeros_like(mask)
    inside[tuple(slice(a, b) for a, b in box)] = True
    return mask & inside


def test_slic_is_fast_on_a_huge_volume_with_a_small_support(mni_t1):
    huge = np.broadcast_to(mni_t1[:, :, 45:46], (99, 117, 4000))  # 4.6e7 voxels in no memory
    box = ((30, 70), (40, 80), (2000, 2030))
    start = time.perf_counter()
    out = slic(huge, 20, support=box)
    assert time.perf_counter() - start < 3.0
    n = int(crop(out, box).max())
    assert 10 <= n <= 30
    assert np.all(np.bincount(crop(out, box).ravel())[1:] > 0)
    assert not out[:, :, :2000].any() and not out[:, :, 2030:].any()


def test_slic_small_cases(mni_t1):
    one = slic(mni_t1, 1, support=((0, 5), (0, 5), (0, 5)))
    assert np.array_equal(crop(one, ((0, 5), (0, 5), (0, 5))), np.ones((5, 5, 5), np.int32))
    mask = np.zeros(mni_t1.shape, dtype=bool)
    mask[40, 50, 60] = True
    single = slic(mni_t1, 10, mask=mask)
    assert np.array_equal(single, mask.astype(np.int32))


# ---------------------------------------------------------------------------------------------------------------
# organs and organ-aware supervoxels


def test_organs_map_one_to_one_to_labels():
    labels = np.zeros((8, 9, 10), dtype=np.uint16)
    labels[1:4, 2:5, 3:7] = 7
    labels[5:8, :, :2] = 300
    labels[0, 0, 0] = 2
    out = organs(labels)
    assert_feature_map(out, labels.shape)
    assert np.array_equal(out, np.select([labels == 2, labels == 7, labels == 300], [1, 2, 3], 0))
    box = ((1, 8), (0, 9), (2, 10))  # label 2 lies outside: ids follow the labels present inside
    inside = organs(labels, support=box)
    assert_feature_map(inside, labels.shape, box)
    assert np.array_equal(crop(inside, box), crop(np.select([labels == 7, labels == 300], [1, 2], 0), box))
    assert organs(labels > 0).max() == 1  # a bool mask is one organ


def test_organ_aware_never_crosses_a_label_boundary(mni_t1, tissues):
    box = ((15, 85), (20, 100), (25, 75))
    out = organ_aware(tissues, mni_t1, 8, support=box)
    n = assert_feature_map(out, tissues.shape, box)
    # Every feature holds exactly one label, background (0) included: it is split too.
    table = np.bincount(out.ravel() * 5 + tissues.ravel(), minlength=(n + 1) * 5).reshape(n + 1, 5)[1:]
    assert np.all((table > 0).sum(axis=1) == 1)
    assert np.array_equal(crop(out, box) > 0, np.ones(crop(out, box).shape, dtype=bool))
    per_region = np.bincount(table.argmax(axis=1), minlength=5)
    assert np.all((per_region >= 5) & (per_region <= 12)), per_region
    # Numbered region by region, in increasing label order.
    assert np.all(np.diff(table.argmax(axis=1)) >= 0)
    assert np.array_equal(organ_aware(tissues, mni_t1, 8, support=box), out)


def test_organ_aware_keeps_small_regions_whole(mni_t1):
    labels = np.zeros(mni_t1.shape, dtype=np.int32)
    labels[30:60, 30:70, 30:60] = 1  # large: split
    labels[70:73, 40:43, 40:43] = 2  # 27 voxels: one feature
    labels[75:79, 40:44, 40:46] = 3  # 96 voxels: less than 2 * min_voxels, one feature
    box = ((25, 85), (25, 75), (25, 65))
    out = organ_aware(labels, mni_t1, 6, support=box)
    assert_feature_map(out, labels.shape, box)
    owner = feature_organs(out, labels)
    assert np.bincount(owner[1:], minlength=4)[2:].tolist() == [1, 1]
    assert 4 <= np.sum(owner[1:] == 1) <= 8
    assert np.array_equal(np.unique(out[labels == 2]), [np.flatnonzero(owner == 2)[0]])


def test_feature_organs_is_the_majority_label():
    rng = np.random.default_rng(1)
    features = rng.integers(0, 30, size=(12, 13, 14))
    features = ranked(features)
    labels = rng.integers(0, 5, size=features.shape) * 10
    expected = [0]
    for i in range(1, features.max() + 1):
        counts = np.bincount(labels[features == i] // 10, minlength=5)
        expected.append(10 * int(np.argmax(counts)))  # ties: the smaller label
    assert feature_organs(features, labels).tolist() == expected


def test_feature_organs_sorting_path_matches(monkeypatch, mni_t1, tissues):
    box = ((15, 85), (20, 100), (25, 75))
    out = organ_aware(tissues, mni_t1, 4, support=box)
    dense = feature_organs(out, tissues)
    monkeypatch.setattr(ORGANS, "_DENSE_COUNTS", 0)
    assert np.array_equal(feature_organs(out, tissues), dense)
    ties = np.array([1, 1, 2, 2, 3], dtype=np.int32).reshape(5, 1, 1)
    assert feature_organs(ties, np.array([5, 4, 9, 9, 0]).reshape(5, 1, 1)).tolist() == [0, 4, 9, 0]
    assert feature_organs(out, tissues)[0] == 0


def test_organ_ids_map_back_to_their_labels(tissues):
    out = organs(tissues)
    assert feature_organs(out, tissues).tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_errors():
    image = np.zeros((6, 7, 8), dtype=np.float32)
    labels = np.zeros((6, 7, 8), dtype=np.int32)
    labels[:3] = 1
    cases = [
        (lambda: grid((6, 7), 2), "three positive integers"),
        (lambda: grid((6, 7, 0), 2), "three positive integers"),
        (lambda: grid((6, 7, 8), 0), "size must be a positive integer"),
        (lambda: grid((6, 7, 8), (2, 2)), "size must be a positive integer"),
        (lambda: grid((6, 7, 8), 2.5), "size must be a positive integer"),
        (lambda: fcc((6, 7, 8), 0), "spacing must be a finite number > 0"),
        (lambda: fcc((6, 7, 8), float("nan")), "spacing must be a finite number > 0"),
        (lambda: fcc((6, 7, 8), 3, support=((0, 6), (0, 7))), "support must be None or a box"),
        (lambda: fcc((6, 7, 8), 3, support=((0, 6), (0, 7), (0, 9))), "reaches outside the volume"),
        (lambda: fcc((6, 7, 8), 3, support=((0, 6), (4, 4), (0, 8))), "is empty"),
        (lambda: grid((6, 7, 8), 3, support=((0.0, 6), (0, 7), (0, 8))), "integer voxel ranges"),
        (lambda: grid((6, 7, 8), 3, support=5), "support must be None or a box"),
        (lambda: slic(image[0], 10), "(X, Y, Z) or (C, X, Y, Z)"),
        (lambda: slic(image, 0), "n_segments must be a positive integer"),
        (lambda: slic(image, 10, -1.0), "compactness must be a finite number > 0"),
        (lambda: slic(image, 10, mask=np.ones((6, 7, 9), bool)), "mask has shape"),
        (lambda: slic(image, 10, mask=np.ones((6, 7, 8))), "mask must be a bool array"),
        (lambda: slic(image, 10, mask=labels == 1, support=((4, 6), (0, 7), (0, 8))), "no voxel inside the support"),
        (lambda: slic(np.full((6, 7, 8), np.nan), 10), "NaN or infinite"),
        (lambda: slic(image.astype(str), 10), "real numbers"),
        (lambda: organs(labels.astype(float)), "np.rint(labelmap).astype(np.int32)"),
        (lambda: organs(labels[0]), "(X, Y, Z) label map"),
        (lambda: organs(-labels), "negative labels"),
        (lambda: organs(labels, support=((3, 6), (0, 7), (0, 8))), "no label > 0 inside the support"),
        (lambda: organ_aware(labels, image[:, :, :7]), "labelmap has shape"),
        (lambda: organ_aware(labels, image, 0), "n_per_organ must be a positive integer"),
        (lambda: organ_aware(labels, image, 4, min_voxels=0), "min_voxels must be a positive integer"),
        (lambda: feature_organs(labels, labels[:, :, :7]), "feature_map has shape"),
        (lambda: feature_organs(labels * 2, labels), "1..N without gaps"),
        (lambda: feature_organs(labels.astype(float), labels), "integer label map"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError, match=None) as info:
            call()
        assert fragment in str(info.value), (fragment, str(info.value))
