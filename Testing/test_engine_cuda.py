"""The engine on a CUDA device: same contract, and bf16 autocast as an opt-in that is close but not exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.contract import grid_features, perturbed, reference_values
from helpers.models import PerSample, small_unet

import segshap

PATCH = (32, 32, 32)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _setting(mni_t1):
    image = np.ascontiguousarray(mni_t1[10:90, 12:100, 8:80])
    reference = np.zeros(image.shape, dtype=bool)
    reference[30:50, 35:60, 25:45] = True
    return image, reference, grid_features(image.shape, 10)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_values_equal_full_volume_inference_on_cuda(mni_t1, blend):
    image, reference, features = _setting(mni_t1)
    model = PerSample(small_unet()).cuda()
    engine = segshap.PatchEngine(
        model, image, features, reference=reference, patch_size=PATCH, blend=blend, device="cuda", batch_size=8
    )
    coalitions = np.random.default_rng(0).random((6, engine.n_players)) < 0.5
    values = engine.evaluate(coalitions)
    roi = np.zeros(image.shape, dtype=bool)
    roi[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    for coalition, value in zip(coalitions, values):
        x = perturbed(image, features, engine.feature_ids, coalition, 0.0)
        want = reference_values(
            lambda t: model(t.cuda()).cpu(), x, roi, [reference], [1], "soft_dice", PATCH, 0.5, blend
        )
        assert abs(value - want[0]) <= 1e-5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda])])
@pytest.mark.slow
def test_bf16_autocast_is_close_but_not_exact(mni_t1, device):
    image, reference, features = _setting(mni_t1)
    options = dict(reference=reference, patch_size=PATCH, device=device, batch_size=4)
    exact = segshap.PatchEngine(small_unet(), image, features, **options)
    fast = segshap.PatchEngine(small_unet(), image, features, autocast_dtype=torch.bfloat16, **options)
    coalitions = np.random.default_rng(1).random((4, exact.n_players)) < 0.5
    difference = np.abs(exact.evaluate(coalitions) - fast.evaluate(coalitions))
    assert 0 < difference.max() < 2e-2
