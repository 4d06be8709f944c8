"""What every feature kind shares: checking shapes, supports and label maps, numbering ids ``1..N``, and pasting
the features built on a support's crop back into the volume."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..inputs import is_integer
from ..tiling import Box, box_slices


def as_shape(shape) -> tuple[int, int, int]:
    try:
        values = tuple(shape)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(is_integer(v) and v >= 1 for v in values):
        raise ValueError(f"shape must be three positive integers (X, Y, Z), got {shape!r}.")
    return tuple(int(v) for v in values)


def as_support(support, shape: tuple[int, ...]) -> Box:
    """The support as a box of ``(start, stop)`` pairs; the whole volume for ``None``."""
    if support is None:
        return tuple((0, s) for s in shape)
    try:
        pairs = [tuple(pair) for pair in support]
    except TypeError:
        pairs = []
    if len(pairs) != len(shape) or not all(len(p) == 2 and all(is_integer(v) for v in p) for p in pairs):
        raise ValueError(
            f"support must be None or a box ((x0, x1), (y0, y1), (z0, z1)) of integer voxel ranges, got {support!r}."
        )
    box = tuple((int(a), int(b)) for a, b in pairs)
    if any(not 0 <= a < b <= s for (a, b), s in zip(box, shape)):
        raise ValueError(
            f"support {box} is empty or reaches outside the volume of shape {shape}; "
            "each (start, stop) must satisfy 0 <= start < stop <= size."
        )
    return box


def paste(local: np.ndarray, box: Box, shape: tuple[int, ...]) -> np.ndarray:
    """A zero int32 map of ``shape`` with ``local`` (the crop's features) at ``box``."""
    out = np.zeros(shape, dtype=np.int32)
    out[box_slices(box)] = local
    return out


def as_positive_int(value, name: str) -> int:
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def as_positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def as_labelmap(labelmap, shape: tuple[int, ...] | None = None, name: str = "labelmap") -> np.ndarray:
    """A non-negative integer ``(X, Y, Z)`` label map (a bool mask counts as labels 0 and 1)."""
    array = np.asarray(labelmap)
    if array.dtype == bool:
        array = array.view(np.uint8)
    if array.ndim != 3:
        raise ValueError(f"{name} must be an (X, Y, Z) label map, got an array of shape {array.shape}.")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape} but the image's spatial shape is {shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer label map, got dtype {array.dtype}. A label map read as floats "
            "(e.g. nibabel's get_fdata()) converts with np.rint(labelmap).astype(np.int32)."
        )
    if array.size and array.min() < 0:
        raise ValueError(f"{name} contains negative labels; use 0 for background and positive integers for organs.")
    return array


def check_finite(crop: np.ndarray, mask: np.ndarray | None, name: str) -> None:
    values = crop if mask is None else crop[:, mask]
    if not np.isfinite(values).all():
        raise ValueError(
            f"{name} contains NaN or infinite voxels inside the support; replace them (e.g. np.nan_to_num) first."
        )


def number_present(keys: np.ndarray, total: int, zero_is_none: bool = False) -> np.ndarray:
    """Map non-negative keys below ``total`` to ``1..N`` in increasing key order, in O(voxels + total).

    With ``zero_is_none``, key 0 marks no feature: it maps to 0 and the others start at 1.
    """
    present = np.bincount(keys.ravel(), minlength=total) > 0
    if zero_is_none:
        present[0] = False
    ids = np.cumsum(present, dtype=np.int64).astype(np.int32)
    return ids[keys]


def distinct(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values of a non-negative integer array and each voxel's index among them.

    ``np.unique`` in O(voxels) when the values are small (a lookup table), by sorting otherwise.
    """
    largest = int(labels.max())
    if largest < max(2**16, labels.size):
        present = np.bincount(labels.ravel(), minlength=largest + 1) > 0
        index = np.cumsum(present) - 1
        return np.flatnonzero(present), index[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    return values, inverse.reshape(labels.shape)


def contiguous(labels: np.ndarray) -> np.ndarray:
    """Non-negative labels renumbered ``1..N`` in increasing order, 0 kept as 0."""
    labels = np.asarray(labels, dtype=np.int64)
    return number_present(labels, int(labels.max()) + 1, zero_is_none=True)


def restricted(features: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``features`` with the voxels outside ``mask`` in no feature, renumbered ``1..N`` (a feature wholly outside
    is gone, one cut by the mask keeps its inside part)."""
    if mask is None:
        return features
    return contiguous(np.where(mask, features, 0))
