"""Cells of the region, and the memo of their value statistics.

The region (the bounding box of the ROI, in padded coordinates) is cut at every window boundary into *cells*:
boxes that lie wholly inside or wholly outside each window. A cell's blended logits therefore depend only on the
inputs of the windows covering it, so the additive sums a value is made of (:func:`segshap.values.segment_statistics`)
are computed once per cell and combination of those inputs, and remembered (:class:`CellStatistics`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cache import LeastRecentlyUsed
from .tiling import Box, box_slices

__all__ = ["Cell", "cut_cells", "WindowLookup", "CellStatistics", "distinct_rows", "shift_box", "intersect_boxes"]

MEMO_ENTRIES = 2**18
"""Cells whose value statistics are remembered (least recently used forgotten first); a few hundred MB at most."""


def shift_box(box: Box, origin: Sequence[int]) -> Box:
    """``box`` in coordinates whose zero is ``origin``."""
    return tuple((a - o, b - o) for (a, b), o in zip(box, origin))


def intersect_boxes(first: Box, second: Box) -> Box:
    return tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(first, second))


class Cell:
    """A box of the region covered by the same windows throughout.

    Attributes
    ----------
    box : Box
        Padded coordinates.
    shape : tuple of int
    windows : list of int
        The covering windows, as positions among the run windows, in blending order.
    in_entry : list of tuple of slice
        The cell inside each covering window's cached output.
    index : torch.Tensor or None
        Its ROI voxels in the flattened cell; ``None`` when it is all ROI.
    weight : torch.Tensor
        The summed window weights at its ROI voxels.
    reference : torch.Tensor or None
        ``(T, V)`` bool: each target's segment at its ROI voxels, set once the reference is known.
    """

    def __init__(self, box: Box, windows: list[int], in_entry: list, index, weight: torch.Tensor) -> None:
        self.box, self.windows, self.in_entry, self.index = box, windows, in_entry, index
        self.shape = tuple(b - a for a, b in box)
        self.weight = self.at_roi(weight.flatten())
        self.reference: torch.Tensor | None = None

    def at_roi(self, flat: torch.Tensor) -> torch.Tensor:
        """The ROI voxels of a tensor whose last axis runs over the flattened cell."""
        return flat if self.index is None else flat[..., self.index]


def cut_cells(
    region: Box, boxes: list[Box], roi_padded: np.ndarray, importance: torch.Tensor, dtype: torch.dtype
) -> list[Cell]:
    """Cut the region at every window boundary; keep the cells that hold ROI voxels.

    ``boxes`` are the run windows' boxes (padded coordinates). A cell's weights are MONAI's: the covering windows'
    importance, summed in order.
    """
    cuts = []
    for axis, (low, high) in enumerate(region):
        inner = {p for box in boxes for p in box[axis] if low < p < high}
        cuts.append(sorted({low, high} | inner))
    cells = []
    for corner in itertools.product(*(range(len(c) - 1) for c in cuts)):
        box = tuple((cuts[axis][i], cuts[axis][i + 1]) for axis, i in enumerate(corner))
        roi = roi_padded[box_slices(box)]
        if not roi.any():
            continue
        windows = [w for w, window in enumerate(boxes) if all(a <= c and d <= b for (a, b), (c, d) in zip(window, box))]
        in_entry = [box_slices(shift_box(box, [a for a, _ in intersect_boxes(boxes[w], region)])) for w in windows]
        weight = torch.zeros(tuple(b - a for a, b in box), dtype=dtype, device=importance.device)
        for w in windows:
            weight += importance[box_slices(shift_box(box, [a for a, _ in boxes[w]]))]
        index = None if roi.all() else torch.from_numpy(np.flatnonzero(roi)).to(importance.device)
        cells.append(Cell(box, windows, in_entry, index, weight))
    return cells


@dataclass
class WindowLookup:
    """What one window gives a batch of coalitions: its distinct inputs, and which one each coalition gives it.

    Attributes
    ----------
    states : list of bytes
        Per distinct input, the packed on/off states of the features that change the window: its cache key.
    ids : np.ndarray
        ``(d,)`` per distinct input, an integer the engine gives each ``(window, states)`` once and for all.
    slots : np.ndarray
        ``(d,)`` per distinct input, the slot of the window's weighted output on the region in the cache's slab
        (``-1`` until it has been run).
    input_of_row : np.ndarray
        ``(n,)`` per coalition of the batch, the position of its input among the distinct ones.
    """

    states: list[bytes]
    ids: np.ndarray
    slots: np.ndarray
    input_of_row: np.ndarray


def distinct_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows of a 2-D array, the first row holding each, and each row's position among them: one
    sort of the rows as opaque byte strings (much faster than ``np.unique(axis=0)``)."""
    array = np.ascontiguousarray(array)
    as_bytes = array.view(np.dtype((np.void, array.dtype.itemsize * array.shape[1]))).ravel()
    _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
    return array[first], first, inverse.reshape(-1)


class CellStatistics:
    """The value statistics of every cell, remembered per combination of its windows' inputs.

    Parameters
    ----------
    cells : list of Cell
    max_entries : int
        Combinations remembered over all cells; the least recently used are forgotten first.
    """

    def __init__(self, cells: list[Cell], max_entries: int = MEMO_ENTRIES) -> None:
        self.cells = cells
        self.max_entries = max_entries
        self._memo: LeastRecentlyUsed[tuple, torch.Tensor] = LeastRecentlyUsed()

    def summed(
        self,
        lookups: list[WindowLookup],
        n_rows: int,
        compute: Callable[[list[tuple[Cell, np.ndarray]]], torch.Tensor],
        n_targets: int,
    ) -> torch.Tensor:
        """``(n, T, 4)`` float64: per coalition, the statistics of every cell, summed.

        ``compute(requests)`` gives, for requests ``(cell, rows)`` (rows: indices into the batch), the ``(u, T, 4)``
        statistics of each cell for its rows, stacked in order on the device; it is called once, with the
        combinations of each cell's windows' inputs not remembered, one row per combination, and their statistics
        come to the host in one transfer.
        """
        plans, requests, fresh = [], [], []
        for index, cell in enumerate(self.cells):
            ids = np.stack([lookups[w].ids[lookups[w].input_of_row] for w in cell.windows], axis=1)
            combos, first, inverse = distinct_rows(ids)
            keys = [(index, *combo) for combo in combos.tolist()]
            missing = [position for position, key in enumerate(keys) if self._memo.get(key) is None]
            if missing:
                requests.append((cell, first[missing]))
                fresh.extend(keys[position] for position in missing)
            plans.append((keys, inverse))
        if requests:
            for key, row in zip(fresh, compute(requests).cpu()):
                self._memo[key] = row
        total = torch.zeros((n_rows, n_targets, 4), dtype=torch.float64)
        for keys, inverse in plans:
            total += torch.stack([self._memo[key] for key in keys])[torch.from_numpy(inverse)]
        self._memo.forget_oldest(self.max_entries)
        return total
