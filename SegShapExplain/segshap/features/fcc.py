"""Regular, isotropic supervoxels: the Voronoi cells of a face-centred cubic lattice.

Rhombic dodecahedra of equal volume around the centres of the densest sphere packing, round, with twelve
equidistant neighbours each (a cube has six close and twenty far ones). They ignore the image, so the explanation
says where the model looks, not where the image has edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..tiling import Box
from .base import as_positive_float, as_shape, as_support, number_present, paste, restricted


def build(
    image: np.ndarray, labelmap: np.ndarray | None, support: Box, n_features: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """About ``n_features`` cells inside ``support`` (a cell holds ``spacing**3 / sqrt(2)`` voxels), cut to
    ``mask`` (the cells keep their size: those outside the mask are gone)."""
    spacing = (math.sqrt(2) * math.prod(b - a for a, b in support) / n_features) ** (1 / 3)
    return restricted(fcc(image.shape[1:], spacing, support=support), mask)


_CHUNK_VOXELS = 2**21
"""Voxels handled at once by :func:`fcc`, bounding its temporaries to a few tens of MB."""


def _nearest_d3(q: list[np.ndarray]) -> list[np.ndarray]:
    """Nearest point of the D3 lattice (integer points with an even coordinate sum) to each point ``q``.

    Conway & Sloane's algorithm: round every coordinate (halves up); where the sum is odd, round the coordinate
    with the largest rounding error the other way. Ties between axes go to the first axis, a coordinate that
    rounded exactly goes up: deterministic, and a function of the point alone.
    """
    f = [np.floor(c + 0.5) for c in q]
    err = [c - r for c, r in zip(q, f)]
    odd = ((f[0] + f[1] + f[2]) % 2) != 0
    mag = np.stack([np.abs(e) for e in err])
    worst = np.argmax(mag, axis=0)
    out = []
    for axis in range(3):
        fix = odd & (worst == axis)
        step = np.where(err[axis] >= 0, 1.0, -1.0)
        out.append((f[axis] + np.where(fix, step, 0.0)).astype(np.int64))
    return out


def fcc(shape: Sequence[int], spacing: float, *, support: Box | None = None) -> np.ndarray:
    """Voronoi cells of a face-centred cubic lattice: regular, isotropic supervoxels.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape ``(X, Y, Z)`` of the volume.
    spacing : float
        Distance between nearest lattice points, in voxels. A cell is a rhombic dodecahedron of volume
        ``spacing**3 / sqrt(2)`` voxels (about ``0.71 spacing**3``).
    support : box, optional
        ``((x0, x1), (y0, y1), (z0, z1))``: cells only inside this box, 0 outside. ``None``: the whole volume.

    Returns
    -------
    np.ndarray
        int32 map of ``shape``; ids ``1..N`` numbered in lexicographic order of the lattice points.

    Notes
    -----
    The lattice is anchored at voxel ``(0, 0, 0)`` (a lattice point), independently of the support. It is the D3
    lattice (integer points with an even coordinate sum) scaled by ``spacing / sqrt(2)``; each voxel centre goes to
    its exactly nearest lattice point (Conway & Sloane's decoder), in O(voxels). Voxels equidistant from several
    lattice points are assigned by a fixed rule that depends on the voxel alone.
    """
    shape = as_shape(shape)
    spacing = as_positive_float(spacing, "spacing")
    box = as_support(support, shape)
    scale = spacing / math.sqrt(2.0)
    crop_shape = tuple(b - a for a, b in box)
    axes = [np.arange(a, b, dtype=np.float64) / scale for a, b in box]
    # The decoded coordinate differs from the scaled voxel coordinate by at most 1 (rounding, then re-rounding).
    low = [math.floor(ax[0]) - 1 for ax in axes]
    counts = [math.ceil(ax[-1]) + 1 - lo + 1 for ax, lo in zip(axes, low)]
    total = math.prod(counts)
    voxels = math.prod(crop_shape)
    dense = total <= 8 * voxels + 4096

    keys = np.empty(crop_shape, dtype=np.int64)
    points = None if dense else [np.empty(crop_shape, dtype=np.int64) for _ in range(3)]
    rows = max(1, _CHUNK_VOXELS // (crop_shape[1] * crop_shape[2]))
    for start in range(0, crop_shape[0], rows):
        stop = min(start + rows, crop_shape[0])
        part = (stop - start, crop_shape[1], crop_shape[2])
        q = [
            np.broadcast_to(axes[0][start:stop, None, None], part),
            np.broadcast_to(axes[1][None, :, None], part),
            np.broadcast_to(axes[2][None, None, :], part),
        ]
        f = _nearest_d3(q)
        if dense:
            keys[start:stop] = ((f[0] - low[0]) * counts[1] + (f[1] - low[1])) * counts[2] + (f[2] - low[2])
        else:
            for axis in range(3):
                points[axis][start:stop] = f[axis]
    if dense:
        return paste(number_present(keys, total), box, shape)
    # Cells smaller than voxels: most lattice points hold no voxel. Number the points that do by sorting.
    compact = [np.unique(p, return_inverse=True) for p in points]
    sizes = [len(values) for values, _ in compact]
    keys = (compact[0][1].reshape(crop_shape) * sizes[1] + compact[1][1].reshape(crop_shape)) * sizes[2]
    keys += compact[2][1].reshape(crop_shape)
    _, ids = np.unique(keys, return_inverse=True)
    return paste(ids.reshape(crop_shape) + 1, box, shape)
