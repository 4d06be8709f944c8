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

__all__ = ["VALUE_NAMES", "class_probabilities", "segment_statistics", "values_from_statistics", "segment_values"]

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


def segment_statistics(logits: torch.Tensor, targets: Sequence[int], reference: torch.Tensor) -> torch.Tensor:
    """The additive sums every value is made of, for a stack of predictions.

    Parameters
    ----------
    logits : torch.Tensor
        ``(n, K, V)`` blended logits at ``V`` voxels of the region of interest.
    targets : sequence of int
        Class index of each of the ``T`` targets.
    reference : torch.Tensor
        ``(T, V)`` bool: each target's reference segment at those voxels.

    Returns
    -------
    torch.Tensor
        ``(n, T, 4)`` float64: ``Σ p·R``, ``Σ p``, ``|A ∩ R|`` and ``|A|`` per prediction and target. Sums over
        disjoint sets of voxels add up, so a region's statistics are the sum of its parts'.
    """
    probabilities = class_probabilities(logits)
    target_index = torch.as_tensor(list(targets), device=logits.device)
    p = probabilities.index_select(1, target_index)
    # The first most probable class, as argmax gives it; max's indices come several times faster than argmax's.
    winner = probabilities.max(dim=1).indices
    predicted = winner[:, None, :] == target_index[None, :, None]
    # p·R is exact in float32 (R is 0 or 1); the sums accumulate in float64.
    return torch.stack(
        [
            (p * reference).sum(dim=2, dtype=torch.float64),
            p.sum(dim=2, dtype=torch.float64),
            (predicted & reference).sum(dim=2, dtype=torch.float64),
            predicted.sum(dim=2, dtype=torch.float64),
        ],
        dim=2,
    )


def values_from_statistics(
    statistics: torch.Tensor, reference_size: torch.Tensor, roi_size: int, value: str
) -> torch.Tensor:
    """``(n, T)`` values from ``(n, T, 4)`` statistics, the ``(T,)`` reference sizes and the ROI's voxel count."""
    if value not in VALUE_NAMES:
        raise ValueError(f"value must be one of {VALUE_NAMES}, got {value!r}.")
    overlap, mass, hits, predicted = statistics.unbind(dim=2)
    reference_size = reference_size.to(torch.float64)
    if value == "soft_dice":
        return 2 * overlap / (mass + reference_size)
    if value == "mean_prob":
        return overlap / reference_size
    if value == "dice":
        return 2 * hits / (predicted + reference_size)
    if value == "tp":
        return hits / reference_size
    return (predicted - hits) / roi_size


def segment_values(logits: torch.Tensor, targets: Sequence[int], reference: torch.Tensor, value: str) -> torch.Tensor:
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
    statistics = segment_statistics(logits, targets, reference)
    return values_from_statistics(statistics, reference.sum(dim=1), reference.shape[1], value)
