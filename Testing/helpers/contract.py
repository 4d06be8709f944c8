"""The engine's contract, built on MONAI's own ``sliding_window_inference``: what a value must equal."""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference


def grid_features(shape: tuple[int, ...], size: int) -> np.ndarray:
    """Cubes of ``size`` voxels numbered 1..N."""
    cells = [np.arange(s) // size for s in shape]
    counts = [c[-1] + 1 for c in cells]
    ids = (cells[0][:, None, None] * counts[1] + cells[1][None, :, None]) * counts[2] + cells[2][None, None, :]
    return ids.astype(np.int64) + 1


def perturbed(image: np.ndarray, features: np.ndarray, feature_ids: np.ndarray, coalition: np.ndarray, baseline):
    """The image with every feature the coalition leaves off replaced by the baseline."""
    image = image if image.ndim == 4 else image[None]
    off = np.isin(features, feature_ids[~coalition])
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), image.shape)
    return np.where(off[None], base, image).astype(np.float32)


def reference_values(model, image, roi, reference_masks, targets, value, patch_size, overlap, blend, batch_size=4):
    """The contract: full-volume MONAI inference, softmax (sigmoid for one channel), value on the ROI voxels."""
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(image)[None], patch_size, batch_size, model, overlap=overlap, mode=blend
        )[0]
    if logits.shape[0] == 1:
        fg = torch.sigmoid(logits)
        probabilities = torch.cat([1 - fg, fg]).numpy()
    else:
        probabilities = torch.softmax(logits, dim=0).numpy()
    label = probabilities.argmax(axis=0)[roi]
    out = []
    for t, mask in zip(targets, reference_masks):
        r = mask[roi]
        p = probabilities[t][roi].astype(np.float64)
        a = label == t
        out.append(
            {
                "soft_dice": 2 * (p * r).sum() / (p.sum() + r.sum()),
                "dice": 2 * (a & r).sum() / (a.sum() + r.sum()),
                "tp": (a & r).sum() / r.sum(),
                "fp": (a & ~r).sum() / roi.sum(),
                "mean_prob": (p * r).sum() / r.sum(),
            }[value]
        )
    return np.array(out)
