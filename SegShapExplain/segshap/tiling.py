"""Sliding-window tiling with the semantics of MONAI's ``sliding_window_inference``.

A :class:`Tiling` says where the windows of a sliding-window inference lie, in which order their outputs are
blended and with which weights. The engine needs exactly this to reproduce full-volume inference from a subset of
windows: a voxel's blended logits are the weighted sum, in window order, of the windows covering it, divided by the
sum of their weights; windows that do not cover the voxel play no part.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Box", "Tiling", "monai_tiling"]

BLEND_MODES = ("constant", "gaussian")

Box = tuple[tuple[int, int], ...]
"""A box as one ``(start, stop)`` pair per axis, stops exclusive."""


@dataclass(frozen=True)
class Tiling:
    """Windows of a sliding-window inference over one image.

    Attributes
    ----------
    image_shape : tuple of int
        Spatial shape of the image before padding.
    patch_size : tuple of int
        Spatial size of every window.
    pad_before, pad_after : tuple of int
        Constant (zero) padding added before and after each axis when the image is smaller than the patch.
    starts : np.ndarray
        ``(W, ndim)`` window starts in padded coordinates, in the order the windows are blended.
    blend : str
        ``"constant"`` or ``"gaussian"``: the importance map each window's output is multiplied by.
    sigma_scale : tuple of float
        Gaussian sigma as a fraction of the patch size, per axis.
    """

    image_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    starts: np.ndarray
    blend: str
    sigma_scale: tuple[float, ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, a, b in zip(self.image_shape, self.pad_before, self.pad_after))

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def window_box(self, index: int) -> Box:
        """The box window ``index`` covers, in padded coordinates."""
        return tuple((int(s), int(s) + p) for s, p in zip(self.starts[index], self.patch_size))

    def windows_touching(self, box: Box) -> np.ndarray:
        """Indices, in blending order, of the windows that overlap ``box`` (padded coordinates)."""
        lo = np.array([b[0] for b in box])
        hi = np.array([b[1] for b in box])
        ends = self.starts + np.array(self.patch_size)
        hit = np.all((self.starts < hi) & (ends > lo), axis=1)
        return np.flatnonzero(hit)

    def windows_reading(self, roi_padded: np.ndarray) -> tuple[np.ndarray, Box]:
        """The windows whose output covers a voxel of the ROI, and the box their inputs span.

        Parameters
        ----------
        roi_padded : np.ndarray
            Bool ROI mask in padded coordinates (see :meth:`pad`).

        Returns
        -------
        windows : np.ndarray
            Their indices, in blending order: the only windows a value on the ROI depends on.
        support : Box
            The bounding box of their inputs, in padded coordinates: only voxels inside it can change a value.
        """
        region = tuple((int(hit[0]), int(hit[-1]) + 1) for hit in _true_along_axes(roi_padded))
        windows = [
            w
            for w in self.windows_touching(region)
            if roi_padded[tuple(slice(max(a, c), min(b, d)) for (a, b), (c, d) in zip(self.window_box(w), region))].any()
        ]
        boxes = [self.window_box(w) for w in windows]
        support = tuple((min(b[axis][0] for b in boxes), max(b[axis][1] for b in boxes)) for axis in range(len(region)))
        return np.asarray(windows, dtype=np.int64), support

    def unpad_box(self, box: Box) -> Box:
        """A padded-coordinates box clipped to the image, in image coordinates."""
        return tuple(
            (max(a - before, 0), min(b - before, size))
            for (a, b), before, size in zip(box, self.pad_before, self.image_shape)
        )

    def importance_map(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The per-window weight map, float32, of shape ``patch_size``.

        Computed by MONAI itself, on the device the windows are blended on, so that the weights are bit for bit
        the ones ``sliding_window_inference`` uses there.
        """
        from monai.data.utils import compute_importance_map

        return compute_importance_map(
            self.patch_size, mode=self.blend, sigma_scale=self.sigma_scale, device=device, dtype=torch.float32
        )

    def pad(self, array: np.ndarray, value: float | bool = 0) -> np.ndarray:
        """Pad the trailing spatial axes of ``array`` the way the inference pads the image."""
        if not any(self.pad_before) and not any(self.pad_after):
            return array
        lead = [(0, 0)] * (array.ndim - len(self.image_shape))
        widths = lead + list(zip(self.pad_before, self.pad_after))
        return np.pad(array, widths, mode="constant", constant_values=value)


def _true_along_axes(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, the indices where ``mask`` has a true voxel in that slice."""
    if not mask.any():
        raise ValueError("The ROI holds no voxel.")
    return [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)]


def _as_triple(value, name: str, ndim: int, kind: type) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(f"{name} needs one value per spatial axis ({ndim}), got {value!r}.")
    return tuple(kind(v) for v in values)


def monai_tiling(
    image_shape: Sequence[int],
    patch_size: Sequence[int] | int,
    overlap: Sequence[float] | float = 0.25,
    blend: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
) -> Tiling:
    """Tile an image the way ``monai.inferers.sliding_window_inference`` does.

    Parameters
    ----------
    image_shape : sequence of int
        Spatial shape of the image.
    patch_size : int or sequence of int
        Window size (MONAI's ``roi_size``).
    overlap : float or sequence of float
        Fraction of overlap between neighbouring windows, in ``[0, 1)``.
    blend : {"constant", "gaussian"}
        MONAI's ``mode``.
    sigma_scale : float or sequence of float
        MONAI's ``sigma_scale`` for Gaussian blending.

    Returns
    -------
    Tiling

    Notes
    -----
    An axis smaller than the patch is padded (``(d // 2, d - d // 2)`` zeros). The stride along an axis is
    ``int(patch * (1 - overlap))`` (at least 1; the patch itself when it equals the padded size), windows start at
    multiples of the stride and the last start is clamped to ``size - patch``, so the last step can be shorter.
    Windows enumerate with the first axis outermost.
    """
    shape = tuple(int(s) for s in image_shape)
    ndim = len(shape)
    if ndim == 0 or min(shape) < 1:
        raise ValueError(f"The image needs at least one voxel along every axis, got shape {shape}.")
    patch = _as_triple(patch_size, "patch_size", ndim, int)
    if min(patch) < 1:
        raise ValueError(f"patch_size must be positive, got {patch}.")
    overlaps = _as_triple(overlap, "overlap", ndim, float)
    if any(not 0.0 <= o < 1.0 for o in overlaps):
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}.")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}.")
    sigmas = _as_triple(sigma_scale, "sigma_scale", ndim, float)
    if min(sigmas) <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}.")

    pad_total = [max(p - s, 0) for s, p in zip(shape, patch)]
    pad_before = tuple(d // 2 for d in pad_total)
    pad_after = tuple(d - d // 2 for d in pad_total)
    padded = [s + d for s, d in zip(shape, pad_total)]

    axis_starts = []
    for size, p, o in zip(padded, patch, overlaps):
        stride = p if p == size else max(int(p * (1 - o)), 1)
        count = math.ceil((size - p) / stride) + 1
        axis_starts.append([min(j * stride, size - p) for j in range(count)])
    starts = np.array(list(itertools.product(*axis_starts)), dtype=np.int64).reshape(-1, ndim)
    return Tiling(shape, patch, pad_before, pad_after, starts, blend, sigmas)
