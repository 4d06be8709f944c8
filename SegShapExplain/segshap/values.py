"""Value functions: how well a (perturbed) prediction reproduces the target segment.

Every function reads blended logits at the voxels of the region of interest only. ``R`` is the reference mask of a
target (the segment being explained), ``p`` the target's probability and ``A`` the voxels whose most probable class is
the target:

==============  ====================================  ==========================================
name            value                                 reads
==============  ====================================  ==========================================
``soft_dice``   ``2 Σ p·R / (Σ p + Σ R)``             probabilities
``dice``        ``2 |A ∩ R| / (|A| + |R|)``           the hard prediction
``tp``          ``|A ∩ R| / |R|``                     the hard prediction
``fp``          ``|A \\ R| / |ROI|``                  the hard prediction
``mean_prob``   ``Σ p·R / Σ R``                       probabilities
==============  ====================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["VALUE_NAMES", "class_probabilities", "segment_values"]

VALUE_NAMES = ("soft_dice", "dice", "tp", "fp", "mean_prob")


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities from logits of shape ``(n, K, ...)``.

    Softmax over the ``K`` classes; a single-channel model (``K == 1``) is read as a sigmoid foreground
    probability and returned as the two classes ``[1 - σ, σ]``.
    """
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        return torch.cat([1 - foreground, foreground], dim=1)
    return torch.softmax(logits, dim=1)


def segment_values(
    logits: torch.Tensor, targets: Sequence[int], reference: torch.Tensor, value: str
) -> torch.Tensor:
    """Values of every target for a stack of predictions.

    Parameters
    ----------
    logits : torch.Tensor
        ``(n, K, V)`` blended logits at the ``V`` voxels of the region of interest.
    targets : sequence of int
        Class index of each of the ``T`` targets.
    reference : torch.Tensor
        ``(T, V)`` bool: each target's reference segment at those voxels; none may be empty.
    value : str
        One of :data:`VALUE_NAMES`.

    Returns
    -------
    torch.Tensor
        ``(n, T)`` float64.
    """
    if value not in VALUE_NAMES:
        raise ValueError(f"value must be one of {VALUE_NAMES}, got {value!r}.")
    probabilities = class_probabilities(logits)
    target_index = torch.as_tensor(list(targets), device=logits.device)
    ref_size = reference.sum(dim=1, dtype=torch.float64)
    if value in ("soft_dice", "mean_prob"):
        p = probabilities[:, target_index]
        # p·R is exact in float32 (R is 0 or 1); the sums accumulate in float64.
        overlap = (p * reference).sum(dim=2, dtype=torch.float64)
        if value == "mean_prob":
            return overlap / ref_size
        return 2 * overlap / (p.sum(dim=2, dtype=torch.float64) + ref_size)
    predicted = probabilities.argmax(dim=1, keepdim=True) == target_index[None, :, None]
    hits = (predicted & reference).sum(dim=2).to(torch.float64)
    if value == "tp":
        return hits / ref_size
    if value == "fp":
        return (predicted & ~reference).sum(dim=2).to(torch.float64) / reference.shape[1]
    return 2 * hits / (predicted.sum(dim=2).to(torch.float64) + ref_size)
