"""Every value the engine returns equals full-volume MONAI sliding-window inference on the perturbed image."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.contract import grid_features, perturbed, reference_values
from helpers.models import PerSample, small_unet

import segshap

VALUES = ("soft_dice", "dice", "tp", "fp", "mean_prob")
PATCH = (24, 24, 24)

# name: (crop of the 4 mm MNI152 T1, reference box, roi)
CASES = {
    # 45 x 38 x 41 is a multiple of neither stride (12 or 18), so the last windows are clamped back.
    "uneven": ((slice(2, 47), slice(10, 48), slice(3, 44)), ((14, 30), (12, 26), (15, 29)), None),
    # smaller than the patch along x and z: MONAI pads the image and crops the output back.
    "smaller_than_patch": ((slice(15, 35), slice(14, 44), slice(17, 31)), ((5, 15), (8, 20), (3, 11)), None),
    # the segment and its ROI touch the far corner of the volume.
    "roi_at_edge": ((slice(0, 40), slice(0, 36), slice(0, 38)), ((30, 40), (27, 36), (29, 38)), "box"),
}


def _case(mni_t1, name):
    crop, box, roi_kind = CASES[name]
    image = mni_t1[::2, ::2, ::2][crop]
    reference = np.zeros(image.shape, dtype=bool)
    reference[tuple(slice(a, b) for a, b in box)] = True
    roi = tuple((max(a - 3, 0), min(b + 3, s)) for (a, b), s in zip(box, image.shape)) if roi_kind else None
    return image, reference, roi


def _coalitions(rng, n_features, n):
    rows = [np.ones(n_features, bool), np.zeros(n_features, bool)]
    rows += [rng.random(n_features) < p for p in rng.uniform(0.2, 0.8, n - 2)]
    return np.array(rows)


def _assert_soft_dice_matches_monai(engine, model, image, features, reference, rng, n):
    """Random coalitions of a single-target soft-Dice engine (baseline 0, overlap 0.5, Gaussian) against MONAI."""
    coalitions = _coalitions(rng, engine.n_players, n)
    roi_mask = np.zeros(image.shape, dtype=bool)
    roi_mask[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    for coalition, value in zip(coalitions, engine.evaluate(coalitions)):
        x = perturbed(image, features, engine.feature_ids, coalition, 0.0)
        want = reference_values(
            model,
            x,
            roi_mask,
            [reference],
            [1],
            "soft_dice",
            engine.tiling.patch_size,
            0.5,
            "gaussian",
            engine.batch_size,
        )
        assert abs(value - want[0]) <= 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, pytest.param(0.5, marks=pytest.mark.slow)])
def test_values_equal_full_volume_inference(mni_t1, name, blend, overlap):
    image, reference, roi = _case(mni_t1, name)
    features = grid_features(image.shape, 7)
    model = PerSample(small_unet())
    rng = np.random.default_rng(hash((name, blend, overlap)) % 2**32)
    baseline = float(image.min())
    engines = {
        value: segshap.PatchEngine(
            model,
            image,
            features,
            reference=reference,
            target=1,
            value=value,
            roi=roi,
            margin=4,
            patch_size=PATCH,
            overlap=overlap,
            blend=blend,
            baseline=baseline,
        )
        for value in VALUES
    }
    first = engines["soft_dice"]
    assert first.n_players > 0
    coalitions = _coalitions(rng, first.n_players, 5)
    roi_mask = np.zeros(image.shape, dtype=bool)
    roi_mask[tuple(slice(a, b) for a, b in first.roi_box)] = True
    got = {value: engine.evaluate(coalitions) for value, engine in engines.items()}
    for row, coalition in enumerate(coalitions):
        x = perturbed(image, features, first.feature_ids, coalition, baseline)
        for value in VALUES:
            want = reference_values(model, x, roi_mask, [reference], [1], value, PATCH, overlap, blend)
            assert abs(got[value][row] - want[0]) <= 1e-5, (value, row, got[value][row], want[0])


def test_batched_model_matches_within_tolerance(mni_t1):
    """Without per-window isolation the model's batching changes the last bits only."""
    image, reference, _ = _case(mni_t1, "uneven")
    features = grid_features(image.shape, 9)
    model = small_unet()
    engine = segshap.PatchEngine(
        model, image, features, reference=reference, value="soft_dice", patch_size=PATCH, batch_size=3
    )
    _assert_soft_dice_matches_monai(engine, model, image, features, reference, np.random.default_rng(1), 6)


def test_several_targets_from_one_pass_with_channels_and_baseline_image(mni_t1):
    """Two input channels, an image-shaped baseline, an integer reference label map and two targets."""
    image, _, _ = _case(mni_t1, "uneven")
    image2 = np.stack([image, np.roll(image, 3, axis=0) * 0.5])
    baseline = np.stack([np.full(image.shape, -1.0), np.linspace(-1, 1, image.size).reshape(image.shape)])
    labels = np.zeros(image.shape, dtype=np.int16)
    labels[10:22, 8:20, 12:24] = 1
    labels[24:36, 20:30, 18:30] = 2
    features = grid_features(image.shape, 8)
    model = PerSample(small_unet(in_channels=2))
    engine = segshap.PatchEngine(
        model,
        image2,
        features,
        reference=labels,
        target=[1, 2],
        value="mean_prob",
        patch_size=PATCH,
        baseline=baseline.astype(np.float32),
        margin=2,
    )
    coalitions = _coalitions(np.random.default_rng(2), engine.n_players, 4)
    values = engine.evaluate(coalitions)
    assert values.shape == (4, 2)
    roi_mask = np.zeros(image.shape, dtype=bool)
    for target in (1, 2):
        roi_mask[tuple(slice(a, b) for a, b in segshap.inputs.bounding_box(labels == target, 2))] = True
    for coalition, row in zip(coalitions, values):
        x = perturbed(image2, features, engine.feature_ids, coalition, baseline)
        want = reference_values(
            model, x, roi_mask, [labels == 1, labels == 2], [1, 2], "mean_prob", PATCH, 0.5, "gaussian"
        )
        np.testing.assert_allclose(row, want, atol=1e-5, rtol=0)
    # One target on the same ROI needs exactly the same forwards: the second target came for free.
    single = segshap.PatchEngine(
        model,
        image2,
        features,
        reference=labels,
        target=2,
        value="mean_prob",
        roi=roi_mask,
        patch_size=PATCH,
        baseline=baseline.astype(np.float32),
    )
    np.testing.assert_array_equal(single.feature_ids, engine.feature_ids)
    np.testing.assert_array_equal(single.evaluate(coalitions), values[:, 1])
    assert single.stats["patch_forwards"] == engine.stats["patch_forwards"]


@pytest.mark.parametrize("roi_given", [False, True])
def test_reference_defaults_to_the_unperturbed_prediction(mni_t1, roi_given):
    image, _, _ = _case(mni_t1, "uneven")
    features = grid_features(image.shape, 8)
    model = PerSample(small_unet(seed=3))
    roi = ((8, 40), (6, 30), (10, 36)) if roi_given else None
    engine = segshap.PatchEngine(model, image, features, target=2, value="dice", roi=roi, patch_size=PATCH)
    everything = np.ones((1, engine.n_players), dtype=bool)
    # Dice of the unperturbed prediction with itself.
    assert engine.evaluate(everything)[0] == pytest.approx(1.0, abs=1e-12)
    assert (engine.stats["reference_forwards"] > 0) != roi_given
    coalitions = _coalitions(np.random.default_rng(4), engine.n_players, 4)
    values = engine.evaluate(coalitions)
    roi_mask = np.zeros(image.shape, dtype=bool)
    roi_mask[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        full = sliding_window_inference(
            torch.from_numpy(image)[None, None], PATCH, 4, model, overlap=0.5, mode="gaussian"
        )
    predicted = full[0].argmax(0).numpy() == 2
    for coalition, value in zip(coalitions, values):
        x = perturbed(image, features, engine.feature_ids, coalition, 0.0)
        want = reference_values(model, x, roi_mask, [predicted], [2], "dice", PATCH, 0.5, "gaussian")
        assert abs(value - want[0]) <= 1e-5


@pytest.mark.slow
def test_windowed_attention_model_swinunetr(mni_t1):
    """SwinUNETR spreads any change inside a window across it; whole-window caching stays exact."""
    import torch
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    model = model.eval()
    image = np.ascontiguousarray(mni_t1[10:90, 20:90, 15:79])
    reference = np.zeros(image.shape, dtype=bool)
    reference[30:50, 28:44, 24:40] = True
    features = grid_features(image.shape, 16)
    engine = segshap.PatchEngine(model, image, features, reference=reference, patch_size=(64, 64, 64), batch_size=2)
    _assert_soft_dice_matches_monai(engine, model, image, features, reference, np.random.default_rng(5), 3)
