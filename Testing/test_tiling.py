"""The tiling reproduces MONAI's windows, order, padding and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from segshap.tiling import monai_tiling


@pytest.mark.parametrize(
    "shape, patch, overlap",
    [
        ((226, 64, 64), (96, 64, 32), 0.25),
        ((45, 38, 41), (24, 24, 24), 0.5),
        ((45, 38, 41), (24, 24, 24), 0.25),
        ((20, 30, 14), (24, 24, 24), 0.5),
        ((24, 24, 24), (24, 24, 24), 0.5),
        ((100, 33, 65), (32, 32, 32), (0.5, 0.0, 0.9)),
        ((7, 9, 11), (3, 4, 5), 0.7),
    ],
)
def test_windows_match_monai(shape, patch, overlap):
    tiling = monai_tiling(shape, patch, overlap)
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    overlaps = overlap if isinstance(overlap, tuple) else (overlap,) * 3
    interval = _get_scan_interval(padded, patch, 3, overlaps)
    expected = [tuple(s.start for s in window) for window in dense_patch_slices(padded, patch, interval)]
    assert [tuple(map(int, s)) for s in tiling.starts] == expected
    assert tiling.padded_shape == padded
    expected_pad = [((p - s) // 2, p - s - (p - s) // 2) if p > s else (0, 0) for s, p in zip(shape, patch)]
    assert list(zip(tiling.pad_before, tiling.pad_after)) == expected_pad


def test_documented_example():
    assert monai_tiling((226, 96, 96), (96, 96, 96), 0.25).starts[:, 0].tolist() == [0, 72, 130]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_importance_map_is_monais(blend):
    tiling = monai_tiling((40, 40, 40), (16, 24, 32), 0.5, blend)
    want = compute_importance_map((16, 24, 32), mode=blend, sigma_scale=0.125, device="cpu", dtype=torch.float32)
    assert torch.equal(tiling.importance_map("cpu"), want)


def test_windows_touching_a_box():
    tiling = monai_tiling((64, 64, 64), (32, 32, 32), 0.5)
    box = ((40, 41), (0, 1), (10, 20))
    touching = tiling.windows_touching(box)
    for w in range(tiling.n_windows):
        hit = all(a < b_hi and b > b_lo for (a, b), (b_lo, b_hi) in zip(tiling.window_box(w), box))
        assert (w in touching) == hit
    assert np.all(np.diff(touching) > 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": (0, 4, 4)}, "patch_size must be positive"),
        ({"patch_size": (4, 4)}, "one value per spatial axis"),
        ({"overlap": 1.0}, r"overlap must lie in \[0, 1\)"),
        ({"blend": "linear"}, "blend must be one of"),
    ],
)
def test_bad_settings(kwargs, match):
    settings = {"patch_size": (4, 4, 4), "overlap": 0.5, "blend": "gaussian", **kwargs}
    with pytest.raises(ValueError, match=match):
        monai_tiling((10, 10, 10), **settings)
