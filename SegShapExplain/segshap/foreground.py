"""The image's foreground: where features are built, so that the air around a patient is never a feature.

Supervoxels in air carry almost no value, yet each one costs model forwards and, drawn, tints the space around the
patient (about 40 % of the demo's supervoxels lay mostly in air, holding 3 % of the total |value|). The voxels
outside the foreground belong to no feature: they keep their intensities in every coalition.

:func:`foreground_mask` finds the foreground of an image on its own (the ``foreground="auto"`` option): intensities
above Otsu's threshold, with every hole of each 2D slice filled, along each of the three axes (the lungs, the
airways and the sinuses are enclosed by tissue in the slices that cut them, though they reach the outside air in
3D), grown by one voxel so that the skin's partial-volume edge stays in. It assumes a background darker than the
anatomy and touching the image's edge, as air does; for an image cropped inside the body, where fat would be taken
for background, give ``foreground="none"`` or a mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["FOREGROUND_CHOICES", "MIN_BACKGROUND", "foreground_mask"]

FOREGROUND_CHOICES = ("auto", "none")
"""The ``foreground`` option's names; a mask (a file or an array) is the third choice."""
MIN_BACKGROUND = 0.05
"""Least fraction of the image the automatic mask must leave out to be used: below it, the image has no background
to speak of (a crop inside the body) and every voxel is foreground."""


def foreground_mask(image: np.ndarray) -> np.ndarray | None:
    """The foreground of an image, or ``None`` when it has no background (see the module's description).

    Parameters
    ----------
    image : np.ndarray
        ``(X, Y, Z)`` or ``(C, X, Y, Z)``: the network's input. A voxel is foreground when any channel is above
        that channel's Otsu threshold.

    Returns
    -------
    np.ndarray or None
        Bool ``(X, Y, Z)``; ``None`` when the background would be under :data:`MIN_BACKGROUND` of the image or
        the image is constant.
    """
    from skimage.filters import threshold_otsu

    channels = np.asarray(image)
    channels = channels[None] if channels.ndim == 3 else channels
    above = np.zeros(channels.shape[1:], dtype=bool)
    for channel in channels:
        finite = channel[np.isfinite(channel)].astype(np.float64)  # float32 near its limit overflows in Otsu
        if finite.size == 0 or finite.min() == finite.max():
            continue
        above |= channel > threshold_otsu(finite)
    if not above.any():
        return None
    filled = above.copy()
    for axis in range(3):
        filled |= np.stack(
            [ndimage.binary_fill_holes(plane) for plane in np.moveaxis(above, axis, 0)], axis=0
        ).transpose(np.argsort([axis, *(a for a in range(3) if a != axis)]))
    mask = ndimage.binary_dilation(filled, iterations=1)
    if mask.mean() > 1 - MIN_BACKGROUND:
        return None
    return mask
