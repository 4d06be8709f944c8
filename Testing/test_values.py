"""Value functions against a direct NumPy reading of their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segshap.values import VALUE_NAMES, class_probabilities, segment_values


def _numpy_value(probabilities, reference, target, value):
    p = probabilities[target].astype(np.float64)
    a = probabilities.argmax(axis=0) == target
    r = reference
    return {
        "soft_dice": 2 * (p * r).sum() / (p.sum() + r.sum()),
        "dice": 2 * (a & r).sum() / (a.sum() + r.sum()),
        "tp": (a & r).sum() / r.sum(),
        "fp": (a & ~r).sum() / r.size,
        "mean_prob": (p * r).sum() / r.sum(),
    }[value]


@pytest.mark.parametrize("value", VALUE_NAMES)
@pytest.mark.parametrize("channels", [1, 4])
def test_values_match_definitions(value, channels):
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(3, channels, 500)).astype(np.float32) * 3)
    targets = [1, 0] if channels == 1 else [2, 3]
    reference = torch.from_numpy(rng.random((2, 500)) < 0.3)
    got = segment_values(logits, targets, reference, value)
    assert got.dtype == torch.float64 and got.shape == (3, 2)
    probabilities = class_probabilities(logits).numpy()
    for n in range(3):
        for t, target in enumerate(targets):
            want = _numpy_value(probabilities[n], reference[t].numpy(), target, value)
            assert got[n, t].item() == pytest.approx(want, abs=1e-12)


def test_single_channel_is_a_sigmoid_foreground():
    logits = torch.tensor([[[-2.0, 0.0, 3.0]]])
    probabilities = class_probabilities(logits)
    torch.testing.assert_close(probabilities[0, 1], torch.sigmoid(logits[0, 0]))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 3))


def test_perfect_and_disjoint_predictions():
    reference = torch.tensor([[True, True, False, False]])
    perfect = torch.tensor([[[-9.0, -9.0, 9.0, 9.0], [9.0, 9.0, -9.0, -9.0]]])
    disjoint = perfect.flip(1)
    assert segment_values(perfect, [1], reference, "dice").item() == 1.0
    assert segment_values(perfect, [1], reference, "fp").item() == 0.0
    assert segment_values(disjoint, [1], reference, "tp").item() == 0.0
    assert segment_values(disjoint, [1], reference, "fp").item() == 0.5


def test_unknown_value():
    with pytest.raises(ValueError, match="value must be one of"):
        segment_values(torch.zeros(1, 2, 3), [1], torch.ones(1, 3, dtype=torch.bool), "iou")
