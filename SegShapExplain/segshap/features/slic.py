"""Image-driven supervoxels: scikit-image's SLIC in 3D, compact clusters that follow intensity edges.

The intensities are first divided by a robust spread, so ``compactness`` means the same whatever the units.
"""

from __future__ import annotations

import numpy as np

from ..inputs import as_channels_first
from ..tiling import Box, box_slices
from .base import as_positive_float, as_positive_int, as_support, check_finite, contiguous, paste


def build(
    image: np.ndarray, labelmap: np.ndarray | None, support: Box, n_features: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """About ``n_features`` supervoxels inside ``support`` and ``mask`` (mask-SLIC seeds them over the mask)."""
    return slic(image if len(image) > 1 else image[0], n_segments=n_features, mask=mask, support=support)


DEFAULT_COMPACTNESS = 0.2
"""Default SLIC compactness, in units of the image's robust spread (see :func:`slic`).

Chosen on the MNI152 T1 at 2 mm, 200 supervoxels in the brain mask. At 0.2 SLIC makes 195 supervoxels whose sizes
vary by 18 % (coefficient of variation), whose surface-to-volume ratio is within 1.4 times that of the compact
limit, and which are clearly purer in tissue (CSF / grey / white matter) than regular cells of the same size. At
0.1 and below they follow edges more closely but fragment along the thin cortex into fewer, ragged supervoxels of
less equal size; from 0.5 up they are practically blind to the image.
"""

_PERCENTILE_SAMPLES = 2**20
"""At most this many voxels (an even stride through them) estimate the intensity spread."""


def spread_normalised(crop: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``crop`` (``(C, X, Y, Z)``) with every channel divided by its 1-99 percentile range over the masked voxels.

    The percentiles are estimated on an even stride of at most ``_PERCENTILE_SAMPLES`` voxels. A channel whose
    range is 0 falls back to its full range, a constant channel to 1.
    """
    out = np.empty(crop.shape, dtype=np.float64)
    for channel in range(crop.shape[0]):
        values = (crop[channel] if mask is None else crop[channel][mask]).ravel()
        sample = values[:: max(1, values.size // _PERCENTILE_SAMPLES)].astype(np.float64)
        low, high = np.percentile(sample, [1.0, 99.0])
        spread = high - low
        if spread <= 0:
            spread = float(values.max()) - float(values.min())
        out[channel] = crop[channel] / (spread if spread > 0 else 1.0)
    return out


def slic_labels(normalised: np.ndarray, n_segments: int, compactness: float, mask: np.ndarray | None) -> np.ndarray:
    """SLIC labels (0 outside ``mask``, ``1..N`` contiguous inside) of a spread-normalised ``(C, X, Y, Z)`` crop.

    scikit-image rescales the intensities it is given to [0, 1] by their min and max (over the mask), which would
    make the compactness depend on the most extreme voxel; the compactness passed is scaled to undo that, so the
    colour distance SLIC weighs against ``step`` voxels is ``compactness`` spreads, whatever the outliers.
    """
    from skimage.segmentation import slic as skimage_slic

    if mask is not None and mask.all():
        mask = None  # seeding on a regular grid is cheaper and more even than mask-SLIC's k-means
    if mask is not None:
        count = int(mask.sum())
        if n_segments == 1 or count <= 1:
            # One segment: the whole mask (scikit-image's mask seeding needs two seeds to measure their step).
            return mask.astype(np.int32)
        n_segments = min(n_segments, count)
    if n_segments == 1:
        return np.ones(normalised.shape[1:], dtype=np.int32)
    values = normalised if mask is None else normalised[:, mask]
    span = float(values.max() - values.min())
    effective = compactness / span if span > 0 else compactness
    single = normalised.shape[0] == 1
    labels = skimage_slic(
        normalised[0] if single else normalised,
        n_segments=n_segments,
        compactness=effective,
        start_label=1,
        mask=mask,
        channel_axis=None if single else 0,
        convert2lab=False,
    )
    if mask is not None:
        labels = np.where(mask, labels, 0)
    return contiguous(labels)


def slic(
    image,
    n_segments: int = 100,
    compactness: float = DEFAULT_COMPACTNESS,
    mask: np.ndarray | None = None,
    *,
    support: Box | None = None,
) -> np.ndarray:
    """Supervoxels that follow the image's edges: scikit-image's SLIC in 3D.

    Parameters
    ----------
    image : np.ndarray
        ``(X, Y, Z)`` or ``(C, X, Y, Z)`` image (channels first, as the engine takes it).
    n_segments : int
        About how many supervoxels to make inside the support (inside the mask when one is given).
    compactness : float
        Balance of intensity and space. The image is first divided by a robust spread (per channel, the range
        between the 1st and 99th percentile of the voxels being segmented), so the value does not depend on
        intensity units: an intensity difference of ``compactness`` spreads weighs as much as a distance of one
        supervoxel step. Larger values give rounder, more equal supervoxels; smaller values follow edges more
        closely. The default, 0.2, gives compact supervoxels of similar size that still follow tissue boundaries
        on a brain MRI.
    mask : np.ndarray, optional
        Bool ``(X, Y, Z)``: only these voxels become features (scikit-image's mask-SLIC, which seeds the
        supervoxels evenly over the mask).
    support : box, optional
        ``((x0, x1), (y0, y1), (z0, z1))``: supervoxels only inside this box, 0 outside. ``None``: the whole volume.

    Returns
    -------
    np.ndarray
        int32 map of the spatial shape; ids ``1..N`` contiguous, in scikit-image's order (by first voxel in C
        order).
    """
    array = as_channels_first(image)
    shape = array.shape[1:]
    n_segments = as_positive_int(n_segments, "n_segments")
    compactness = as_positive_float(compactness, "compactness")
    box = as_support(support, shape)
    crop_mask = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask has shape {mask.shape} but the image's spatial shape is {shape}.")
        if mask.dtype != bool:
            raise ValueError(f"mask must be a bool array (e.g. labelmap > 0), got dtype {mask.dtype}.")
        crop_mask = np.ascontiguousarray(mask[box_slices(box)])
        if not crop_mask.any():
            raise ValueError("mask has no voxel inside the support: there is nothing to segment.")
    crop = array[(slice(None), *box_slices(box))]
    check_finite(crop, crop_mask, "image")
    labels = slic_labels(spread_normalised(crop, crop_mask), n_segments, compactness, crop_mask)
    return paste(labels, box, shape)
