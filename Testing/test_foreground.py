"""The image's foreground (segshap.foreground) and features only inside it: air is no feature."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.models import small_unet

import segshap
from segshap.foreground import foreground_mask

TILING = {"patch_size": (32, 32, 32), "overlap": 0.25, "blend": "gaussian"}


def _chest_phantom() -> np.ndarray:
    """A bright body in dark air, with a dark lung inside that reaches the outside air through a narrow airway."""
    image = np.random.default_rng(0).normal(0.0, 0.05, (48, 40, 44)).astype(np.float32)
    x, y, z = np.indices(image.shape)
    body = ((x - 24) / 18) ** 2 + ((y - 20) / 14) ** 2 < 1
    image[body & (z > 4) & (z < 40)] += 1.0
    lung = ((x - 24) / 8) ** 2 + ((y - 20) / 6) ** 2 + ((z - 20) / 10) ** 2 < 1
    image[lung] -= 1.0
    image[23:26, 19:22, 28:] = image[0, 0, 0]  # the airway, open to the air above the body
    return image


def test_the_air_around_the_body_is_background_and_what_the_body_encloses_is_not():
    image = _chest_phantom()
    mask = foreground_mask(image)
    assert mask[24, 20, 20]  # the lung, dark but enclosed in every axial slice that cuts it
    assert mask[24, 20, 30]  # the airway inside the body
    assert not mask[2, 2, 20] and not mask[24, 20, 1]  # air beside and below the body
    assert 0.3 < mask.mean() < 0.6
    # Every channel counts: a body bright in the second channel only is foreground.
    np.testing.assert_array_equal(foreground_mask(np.stack([np.zeros_like(image), image])), mask)


def test_an_image_without_background_has_no_mask():
    inside = np.random.default_rng(1).normal(0.0, 1.0, (24, 24, 24)).astype(np.float32) + 5.0
    inside[:2] = 0.0  # a sliver of background: less than MIN_BACKGROUND of the image
    assert foreground_mask(inside) is None
    assert foreground_mask(np.ones((8, 8, 8), np.float32)) is None


@pytest.mark.slow
def test_features_are_built_only_in_the_foreground_unless_told_otherwise(mni_t1, tmp_path):
    """The MNI template is a brain in zeros: by default no feature lies mostly outside the brain; foreground='none'
    puts them everywhere; a mask array or file puts them inside it only."""
    net = small_unet(1, 3)
    from scipy import ndimage

    brain = ndimage.binary_dilation(mni_t1 > mni_t1.min())  # the mask keeps the brain's edge voxel
    roi = ((30, 50), (50, 70), (60, 75))  # near the top of the brain: the windows read air above it
    options = dict(roi=roi, features="grid", n_features=27, nsamples=16, faithfulness=False, device="cpu", **TILING)
    inside = segshap.explanation_game(net, mni_t1, target=1, **options)
    everywhere = segshap.explanation_game(net, mni_t1, target=1, foreground="none", **options)

    def air_fractions(game):
        feature_map = game.feature_map
        return [np.mean(~brain[feature_map == i]) for i in range(1, feature_map.max() + 1)]

    assert max(air_fractions(inside)) < 0.5 < max(air_fractions(everywhere))
    assert not inside.feature_map[~inside.foreground].any() and everywhere.foreground is None
    half = np.zeros(mni_t1.shape, bool)
    half[:40] = True
    given = segshap.explanation_game(net, mni_t1, target=1, foreground=half, **options)
    assert given.feature_map.any() and not given.feature_map[~half].any() and given.foreground_given
    from segshap.io import write_image

    write_image(tmp_path / "half.nii.gz", half.astype(np.uint8), np.eye(4))
    from_file = segshap.explanation_game(
        net, mni_t1, target=1, foreground=str(tmp_path / "half.nii.gz"), affine=np.eye(4), **options
    )
    np.testing.assert_array_equal(from_file.feature_map, given.feature_map)
    with pytest.raises(ValueError, match="no voxel where features could change the value"):
        segshap.explanation_game(net, mni_t1, target=1, foreground=np.zeros(mni_t1.shape, bool), **options)
