"""The support of an engine: the part of the input it ever reads, and what in it can change a value.

Only the windows whose output overlaps the region of interest are run, so only their inputs matter: their union
is the *support*, and the engine keeps the image, the baseline and the feature map cropped to it. Switching a
feature off changes a window's input only where the image differs from the baseline, so a window's cache key
holds just those features, and a feature that changes no window is no feature at all (its Shapley value is 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .cells import intersect_boxes, shift_box
from .inputs import bounding_box
from .tiling import Box, box_slices

__all__ = ["Support", "crop_to_support", "WindowInputs"]


class Support(NamedTuple):
    """The part of the input the engine ever reads: what the windows it runs read (see :func:`crop_to_support`)."""

    windows: np.ndarray
    run_boxes: list[Box]
    window_boxes: list[Box]
    feature_ids: np.ndarray
    window_columns: list[np.ndarray]
    feature_window_positions: list[np.ndarray]
    columns: np.ndarray
    image: np.ndarray
    baseline: float | np.ndarray
    region: Box
    in_window: list[tuple[slice, ...]]
    roi_padded: np.ndarray


def crop_to_support(
    tiling, roi_mask: np.ndarray, image: np.ndarray, features: np.ndarray, baseline: float | np.ndarray
) -> Support:
    """The windows whose output overlaps the ROI, the features that change their input, and the image, baseline
    and feature map cropped to the windows' support.

    Switching a feature off changes a window's input only where the image differs from the baseline, so a
    window's key holds just those features, and a feature that changes no window is no feature at all.
    """
    roi_padded = tiling.pad(roi_mask, False)
    region = bounding_box(roi_padded)
    windows, support = tiling.windows_reading(roi_padded)
    run_boxes = [tiling.window_box(w) for w in windows]
    origin = [a for a, _ in support]
    crop = (slice(None), *box_slices(support))
    image_support = np.ascontiguousarray(tiling.pad(image)[crop])
    baseline_support = baseline if isinstance(baseline, float) else np.ascontiguousarray(tiling.pad(baseline)[crop])
    features_support = tiling.pad(features, 0)[crop[1:]]
    changes = np.any(image_support != baseline_support, axis=0)
    window_boxes = [shift_box(b, origin) for b in run_boxes]
    window_ids = []
    for box in window_boxes:
        inside = box_slices(box)
        ids = np.unique(features_support[inside][changes[inside]])
        window_ids.append(ids[ids > 0])
    feature_ids = np.unique(np.concatenate([np.zeros(0, np.int64), *window_ids]))
    window_columns = [np.searchsorted(feature_ids, ids) for ids in window_ids]
    positions: list[list[int]] = [[] for _ in range(feature_ids.size)]
    for position, columns in enumerate(window_columns):
        for column in columns.tolist():
            positions[column].append(position)
    # Voxels of no feature read column M, which every coalition keeps.
    column_of = np.full(int(features.max()) + 1, feature_ids.size, dtype=np.int32)
    column_of[feature_ids] = np.arange(feature_ids.size)
    return Support(
        windows=windows,
        run_boxes=run_boxes,
        window_boxes=window_boxes,
        feature_ids=feature_ids,
        window_columns=window_columns,
        feature_window_positions=[np.array(p, dtype=np.int64) for p in positions],
        columns=column_of[features_support],
        image=image_support,
        baseline=baseline_support,
        region=region,
        # Each window's output is kept only where it overlaps the region.
        in_window=[box_slices(shift_box(intersect_boxes(box, region), [a for a, _ in box])) for box in run_boxes],
        roi_padded=roi_padded,
    )


class WindowInputs:
    """The perturbed input of any run window for any coalition, built on the device from the support.

    Per window it keeps views of the image and the baseline in its box and the coalition column of each of its
    voxels, flattened: the inputs of a window for several coalitions are one gather of those columns into 0/1
    masks and one ``lerp(baseline, image, masks)``, which is exactly the image or the baseline at every voxel.
    The columns take 8 bytes per voxel of every run window (int64 indices gather fastest), about 8 times the
    cropped image's memory.

    Parameters
    ----------
    support : Support
    device : torch.device
    """

    def __init__(self, support: Support, device: torch.device) -> None:
        image = torch.from_numpy(support.image).to(device)
        baseline = torch.as_tensor(support.baseline, dtype=torch.float32, device=device)
        columns = torch.from_numpy(support.columns).to(device, torch.int64)
        self._image, self._baseline, self._columns = [], [], []
        for box in support.window_boxes:
            inside = (slice(None), *box_slices(box))
            self._image.append(image[inside])
            self._baseline.append(baseline.expand_as(image[inside]) if baseline.ndim == 0 else baseline[inside])
            self._columns.append(columns[inside[1:]].reshape(-1))
        self.shape = (image.shape[0], *(b - a for a, b in support.window_boxes[0]))
        """``(C, *patch_size)``: every window input's shape."""

    def fill(self, into: torch.Tensor, window: int, kept: torch.Tensor) -> None:
        """Write the inputs of run window ``window`` (a position among the run windows) into ``into``, ``(k, C,
        *patch_size)``, for ``k`` coalitions whose ``(k, M + 1)`` float ``kept`` is 1 for their kept features and
        for the last column (voxels of no feature), 0 elsewhere."""
        columns = self._columns[window]
        masks = torch.gather(kept, 1, columns.expand(len(kept), columns.numel()))
        torch.lerp(self._baseline[window], self._image[window], masks.view(len(kept), 1, *self.shape[1:]), out=into)
