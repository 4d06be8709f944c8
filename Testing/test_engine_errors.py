"""Bad input raises ValueError saying what is wrong and how to fix it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.contract import grid_features
from helpers.models import small_unet
from monai.networks.nets import UNet

import segshap

SHAPE = (20, 18, 22)
PATCH = (16, 16, 16)


def _inputs():
    rng = np.random.default_rng(0)
    image = rng.normal(size=SHAPE).astype(np.float32)
    features = grid_features(SHAPE, 5)
    reference = np.zeros(SHAPE, dtype=bool)
    reference[5:12, 6:12, 8:14] = True
    return image, features, reference


def _engine(**overrides):
    image, features, reference = _inputs()
    kwargs = dict(model=small_unet(), image=image, features=features, reference=reference, patch_size=PATCH)
    kwargs.update(overrides)
    return segshap.PatchEngine(**kwargs)


def _with_nan():
    image = _inputs()[0].copy()
    image[3, 4, 5] = np.nan
    return image


def _with_gap():
    features = _inputs()[1].copy()
    features[features == 3] = 2
    return features


class _Background(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.ones_like(x), torch.zeros_like(x), torch.zeros_like(x)], dim=1)


class _Tuple(torch.nn.Module):
    def forward(self, x):
        return (x, x)


class _Shrinks(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, -x], dim=1)[:, :, ::2, ::2, ::2]


def _training_unet():
    torch.manual_seed(0)
    return UNet(3, 1, 3, (4, 8), (2,), dropout=0.2)


def _box(lo, hi):
    return tuple(zip(lo, hi))


CASES = {
    "image_2d": (dict(image=np.zeros((20, 18), np.float32)), "image must be"),
    "image_nan": (dict(image=_with_nan()), "NaN or infinite voxels .first at .3, 4, 5.."),
    "features_shape": (dict(features=np.ones((20, 18, 21), np.int64)), "features has shape"),
    "features_float": (dict(features=np.ones(SHAPE, np.float32)), "integer label map"),
    "features_gap": (dict(features=_with_gap()), "without gaps; 1 of 1..[0-9]+ are missing .3."),
    "features_negative": (dict(features=-np.ones(SHAPE, np.int64)), "negative ids"),
    "reference_shape": (dict(reference=np.ones((20, 18, 2), bool)), "reference has shape"),
    "reference_empty": (dict(reference=np.zeros(SHAPE, bool)), "reference of target 1 is empty"),
    "reference_label_missing": (dict(reference=np.ones(SHAPE, np.int8), target=[1, 2]), "target 2 is empty"),
    "reference_bool_two_targets": (dict(target=[1, 2]), "integer label map"),
    "reference_float": (dict(reference=np.ones(SHAPE, np.float32)), "bool mask or an integer label map"),
    "target_outside_classes": (dict(target=3), r"target \[3\] is outside the model's classes 0..2"),
    "target_negative": (dict(target=-1), "non-negative class indices"),
    "target_repeated": (dict(target=[1, 1], reference=np.ones(SHAPE, np.int8)), "lists a class twice"),
    "value_unknown": (dict(value="iou"), "value= must be one of"),
    "roi_empty": (dict(roi=np.zeros(SHAPE, bool)), "roi is empty"),
    "roi_outside": (dict(roi=_box((0, 0, 10), (10, 10, 30))), "reaches outside the volume"),
    "roi_inverted": (dict(roi=_box((5, 5, 5), (5, 9, 9))), "is empty or reaches outside"),
    "roi_shape": (dict(roi=np.ones((20, 18, 2), bool)), "roi mask has shape"),
    "roi_misses_reference": (dict(roi=_box((0, 0, 0), (3, 3, 3))), "Inside the ROI, the reference has no voxel"),
    "baseline_shape": (dict(baseline=np.zeros((20, 18, 2), np.float32)), "baseline must be a number or an array"),
    "baseline_nan": (dict(baseline=float("nan")), "baseline must be finite"),
    "patch_not_accepted": (dict(patch_size=(18, 18, 18)), "The model failed on a batch of windows"),
    "model_channels": (dict(model=small_unet(in_channels=2)), "channels the model expects"),
    "model_tuple": (dict(model=_Tuple()), "returned a tuple, not a tensor"),
    "model_shrinks": (dict(model=_Shrinks()), r"the engine needs logits of shape \(B, K, 16, 16, 16\)"),
    "model_training": (dict(model=_training_unet()), "training mode .* call model.eval"),
    "model_not_callable": (dict(model="unet.pt"), "model must be a torch.nn.Module or a callable"),
    "nothing_predicted": (dict(model=_Background(), reference=None), "predicts no voxel of class 1"),
    "batch_size": (dict(batch_size=0), "batch_size= must be a positive integer"),
    "margin": (dict(margin=-1), "margin= must be a non-negative integer"),
    "cache_bytes": (dict(cache_bytes=-5), "cache_bytes= must be a non-negative integer"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name):
    overrides, match = CASES[name]
    with pytest.raises(ValueError, match=match):
        _engine(**overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="PyTorch sees none on this computer: choose the CPU"):
        _engine(device="cuda")


@pytest.mark.parametrize(
    "coalitions, match",
    [
        (lambda m: np.ones((2, m), np.int64), "must be a bool array"),
        (lambda m: np.ones((2, m + 1), bool), r"must have shape \(n, [0-9]+\)"),
        (lambda m: np.ones(m, bool), r"must have shape \(n, [0-9]+\)"),
    ],
)
def test_bad_coalitions(coalitions, match):
    engine = _engine()
    with pytest.raises(ValueError, match=match):
        engine.evaluate(coalitions(engine.n_players))
