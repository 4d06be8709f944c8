"""Regular blocks: the simplest regular partition (cuboids with six face neighbours), aligned to the volume origin."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..inputs import is_integer
from ..tiling import Box
from .base import as_shape, as_support, paste, restricted


def build(
    image: np.ndarray, labelmap: np.ndarray | None, support: Box, n_features: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """Blocks of about ``n_features`` inside ``support`` (cubes of the volume they share), cut to ``mask`` (the
    cubes keep their size: those outside the mask are gone)."""
    size = max(1, round((math.prod(b - a for a, b in support) / n_features) ** (1 / 3)))
    return restricted(grid(image.shape[1:], size, support=support), mask)


def grid(shape: Sequence[int], size: int | Sequence[int], *, support: Box | None = None) -> np.ndarray:
    """Regular blocks of ``size`` voxels, aligned to the volume origin.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape ``(X, Y, Z)`` of the volume.
    size : int or sequence of int
        Edge length of a block in voxels, one for all axes or one per axis. Blocks at the far end of an axis (or
        cut by the support) are smaller.
    support : box, optional
        ``((x0, x1), (y0, y1), (z0, z1))``: blocks only inside this box, 0 outside. ``None``: the whole volume.

    Returns
    -------
    np.ndarray
        int32 map of ``shape``; ids ``1..N`` numbered in C order of the block position.
    """
    shape = as_shape(shape)
    sizes = tuple(size) if isinstance(size, Sequence) else (size,) * 3
    if len(sizes) != 3 or not all(is_integer(s) and s >= 1 for s in sizes):
        raise ValueError(f"size must be a positive integer or three positive integers (one per axis), got {size!r}.")
    box = as_support(support, shape)
    blocks, counts = [], []
    for (a, b), s in zip(box, sizes):
        index = np.arange(a, b) // int(s)
        blocks.append(index - index[0])
        counts.append(int(index[-1] - index[0]) + 1)
    ids = (blocks[0][:, None, None] * counts[1] + blocks[1][None, :, None]) * counts[2] + blocks[2][None, None, :]
    return paste(ids + 1, box, shape)
