"""Exact, ROI-restricted, memoised evaluation of coalitions of features.

A coalition switches features on (their voxels keep the image's intensities) or off (their voxels take the
baseline's). Its value is what a sliding-window inference of the whole perturbed volume says about the target
segment, read on the region of interest (ROI). :class:`PatchEngine` computes exactly that value while running only
what can change it:

* only windows whose output overlaps the ROI are run, and only features that change those windows' input (some
  voxel of the feature inside them differs from the baseline) can change a value: they are the engine's features
  (:attr:`PatchEngine.feature_ids`); every other feature has a Shapley value of exactly 0;
* a window's input depends only on the on/off states of the features that change it, so its logits are cached
  under the key (window, those states) and each distinct key is run once (within the cache budget);
* cached and fresh windows are blended in the inference's own order with its own weights, so the blended logits
  on the ROI equal those of full-volume inference;
* the ROI's box is cut into cells covered by the same windows throughout, and the additive sums a value is made
  of are remembered per cell and combination of its windows' inputs, so blending runs once per distinct cell input
  (:mod:`segshap.cells`).

Glossary
--------
window
    One patch of the sliding-window inference (:class:`~segshap.tiling.Tiling`): a box of the padded image the
    model reads, whose output is blended back into the same box. The engine runs only the windows whose box
    overlaps the ROI (:attr:`PatchEngine.windows`).
region
    The bounding box of the ROI in padded coordinates: the only part of any window's output that is kept.
support
    The union of the run windows' boxes: the only part of the image, baseline and feature map the engine reads,
    so it keeps them cropped to it (:mod:`segshap.support`).
cell
    A box of the region covered by the same windows throughout (:class:`~segshap.cells.Cell`).
key
    ``(window, states)``: a window and the packed on/off states of the features that change its input. Two
    coalitions with the same key give the window the same input; its output is cached under the key
    (:class:`~segshap.cache.PatchCache`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .cache import DEFAULT_CACHE_BYTES, DEFAULT_HOST_CACHE_BYTES, PatchCache
from .cells import Cell, CellStatistics, WindowLookup, cut_cells, distinct_rows
from .inference import DEFAULT_BATCH_SIZE, predict_labels, require_predicted
from .inputs import (
    DEFAULT_MARGIN,
    as_baseline,
    as_features,
    as_image,
    as_roi_mask,
    as_targets,
    bounding_box,
    checked_choice,
    checked_integer,
    reference_masks,
    resolve_device,
    roi_around,
)
from .network import Network
from .support import WindowInputs, crop_to_support
from .tiling import Box, TilingSpec, box_slices
from .values import VALUE_NAMES, class_probabilities, segment_statistics, values_from_statistics

__all__ = ["PatchEngine"]

_BLEND_BYTES = 256 * 1024**2
"""Bound on the blending buffer of one chunk of coalitions."""

_HELD_BYTES = 1024**3
"""Bound on the window outputs one chunk of coalitions may hold (all distinct) beyond the cache's budget."""


def _volume(slices: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in slices]))


class PatchEngine:
    """Values of coalitions of features, exactly as full-volume sliding-window inference gives them.

    Parameters
    ----------
    model : torch.nn.Module or callable
        Maps a ``(B, C, *patch_size)`` float tensor to ``(B, K, *patch_size)`` logits. A module must be in eval
        mode; it is moved to ``device``.
    image : np.ndarray
        ``(X, Y, Z)`` or ``(C, X, Y, Z)`` image, already preprocessed for the model.
    features : np.ndarray
        ``(X, Y, Z)`` integer map: 0 for voxels never perturbed, ``1..N`` for the features.
    reference : np.ndarray, optional
        The target segment: a bool ``(X, Y, Z)`` mask, or an integer label map whose value ``t`` marks the segment
        of target ``t`` (needed for several targets). ``None``: the model's unperturbed prediction of each target.
    target : int or sequence of int
        Class index to explain, or several, all evaluated from the same forward passes.
    value : str
        ``"soft_dice"``, ``"dice"``, ``"tp"``, ``"fp"`` or ``"mean_prob"`` (see :mod:`segshap.values`).
    roi : np.ndarray or box, optional
        The voxels values are read on: a bool ``(X, Y, Z)`` mask or a box ``((x0, x1), (y0, y1), (z0, z1))``.
        ``None``: the bounding box of each target's reference grown by ``margin`` voxels (their union when several).
    margin : int
        Voxels added around the reference's bounding box when ``roi`` is ``None``.
    baseline : float or np.ndarray
        What replaces a feature's voxels when it is off: a number, or an array shaped like ``image``.
    device : str or torch.device
        Where the model runs and windows are blended (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    batch_size : int
        Windows per forward pass.
    tiling : str or TilingSpec
        The sliding-window settings: a :class:`~segshap.tiling.TilingSpec` holding all of them (such as
        :attr:`segshap.LoadedModel.tiling_spec`), or the name of whose sliding window to reproduce with the
        settings given by keyword: ``"monai"`` (the default) or ``"nnunet"``, nnU-Net v2's window grid
        (``tile_step_size = 1 - overlap``) and its Gaussian fusion summed in float16, as its predictor runs a
        preprocessed image.
    cache_bytes : int
        Budget for cached window outputs on ``device``; the all-on and all-off states are kept beyond it. Within
        the budget a window input is never run twice. The outputs one batch of coalitions needs are held beyond it
        while the batch is blended (at most 1 GiB: larger batches are split), and a window's slab of outputs grows
        by a quarter when full, so device memory peaks at about 1.25 times the budget plus that.
    host_cache_bytes : int, optional
        Budget of the cache's second level in host memory: outputs evicted from the device move there and are
        copied back when asked for again (no forward). ``None``: :data:`~segshap.cache.DEFAULT_HOST_CACHE_BYTES`
        on a GPU, 0 on the CPU (where the device is the host: give the memory to ``cache_bytes``).
    autocast_dtype : torch.dtype, optional
        Run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``). Faster, not exact.
    **tiling_settings
        With ``tiling`` a name, the settings of :class:`~segshap.tiling.TilingSpec` by keyword: ``patch_size``,
        ``overlap``, ``blend`` (MONAI's ``roi_size``, ``overlap``, ``mode``; default ``(64, 64, 64)``, 0.5 and
        ``"gaussian"``), ``sigma_scale`` (MONAI's, default 0.125; nnU-Net uses its own Gaussian) and ``folds``
        (nnU-Net: the model returns the logits of this many folds concatenated along channels, each fused on its
        own and the results averaged, as nnU-Net averages folds).

    Attributes
    ----------
    feature_ids : np.ndarray
        ``(M,)`` ids of the features that can change a value (:attr:`n_players`); coalitions are bool arrays over
        these columns.
    targets : tuple of int
        The target classes, in the order of the columns of multi-target values.
    tiling_spec : segshap.tiling.TilingSpec
        The sliding-window settings.
    tiling : segshap.tiling.Tiling
        The windows of the inference over the image.
    windows : np.ndarray
        Indices into ``tiling`` of the windows whose output overlaps the ROI: the only ones ever run.
    roi_box : tuple
        Bounding box of the ROI in image coordinates.

    Notes
    -----
    ``evaluate(c)`` equals: build the image with every feature in ``feature_ids`` that ``c`` leaves off replaced
    by ``baseline``, run ``monai.inferers.sliding_window_inference(x[None], patch_size, batch_size, model,
    overlap=overlap, mode=blend)``, apply softmax over classes (sigmoid when ``K == 1``) and compute the value on
    the ROI voxels (with ``tiling="nnunet"``: nnU-Net's ``predict_sliding_window_return_logits``). Window outputs
    are identical whether run fresh or fetched from the cache, and blended in the inference's order with its
    weights; values differ from a full inference only by the float64 rounding of their sums, where the model's own
    numerics depend on batch composition, and, for nnU-Net, by its float16 accumulation (the engine sums in
    float32).
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        image: np.ndarray,
        features: np.ndarray,
        *,
        reference: np.ndarray | None = None,
        target: int | Sequence[int] = 1,
        value: str = "soft_dice",
        roi: np.ndarray | Sequence[tuple[int, int]] | None = None,
        margin: int = DEFAULT_MARGIN,
        baseline: float | np.ndarray = 0.0,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        tiling: str | TilingSpec = "monai",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        host_cache_bytes: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        **tiling_settings,
    ) -> None:
        started = time.perf_counter()
        self._stats = {
            "coalitions": 0,
            "patch_forwards": 0,
            "forward_batches": 0,
            "cache_hits": 0,
            "total_seconds": 0.0,
        }
        self._device = resolve_device(device)
        self.value = checked_choice(value, "value", VALUE_NAMES)
        self.batch_size = checked_integer(batch_size, "batch_size")
        self.tiling_spec = TilingSpec.resolve(tiling, **tiling_settings)
        self._network = Network(model, self._device, autocast_dtype, self.tiling_spec.folds)
        if host_cache_bytes is None:
            host_cache_bytes = DEFAULT_HOST_CACHE_BYTES if self._device.type == "cuda" else 0
        self._cache = PatchCache(cache_bytes, host_cache_bytes, self._device)

        given_ndim = np.ndim(image)
        image = as_image(image)
        spatial = image.shape[1:]
        features = as_features(features, spatial)
        self.targets, self._single_target = as_targets(target)
        baseline = as_baseline(baseline, image.shape, given_ndim)
        self.tiling = self.tiling_spec.over(spatial)
        self._importance = self.tiling.importance_map(self._device)
        masks = self._target_masks(reference, roi, image)
        roi_mask = roi_around(masks, checked_integer(margin, "margin", 0)) if roi is None else as_roi_mask(roi, spatial)

        support = crop_to_support(self.tiling, roi_mask, image, features, baseline)
        self.roi_box: Box = bounding_box(roi_mask)
        self.windows: np.ndarray = support.windows
        self.feature_ids: np.ndarray = support.feature_ids
        self._window_columns = support.window_columns
        self._feature_window_positions = support.feature_window_positions
        self._state_ids: list[dict[bytes, int]] = [{} for _ in self.windows]
        self._region_shape = tuple(b - a for a, b in support.region)
        self._in_window = support.in_window
        self._inputs = WindowInputs(support, self._device)
        self._in_window_channels = [(slice(None), *in_window) for in_window in self._in_window]
        self._window_weight = [self._importance[in_window] for in_window in self._in_window]
        cells = cut_cells(
            support.region, support.run_boxes, support.roi_padded, self._importance, self.tiling.accumulation_dtype
        )
        self._cell_statistics = CellStatistics(cells)
        all_on = np.ones((1, self.n_players), dtype=bool)
        self._fetch(np.concatenate([all_on, ~all_on]), pin=True)  # probes the model, and pins both ends
        self._network.check_targets(self.targets)
        self._set_cell_references(cells, masks)
        self._stats["total_seconds"] += time.perf_counter() - started

    def _target_masks(self, reference, roi, image: np.ndarray) -> np.ndarray | None:
        """``(T, X, Y, Z)`` target segments: the reference's; without one, the model's unperturbed prediction when
        the ROI must be found around it (none given); ``None`` when the ROI is given, for the prediction inside it
        is read from the windows the engine runs anyway (:meth:`_set_cell_references`)."""
        if reference is not None:
            return reference_masks(reference, image.shape[1:], self.targets)
        if roi is not None:
            return None
        label = predict_labels(self._network, image, self.tiling, self._device, self.batch_size)
        self._stats["reference_forwards"] = self.tiling.n_windows
        self._network.check_targets(self.targets)
        require_predicted(label, self.targets)
        return np.stack([label == t for t in self.targets])

    def _set_cell_references(self, cells: list[Cell], masks: np.ndarray | None) -> None:
        """Give each cell its targets' segments at its ROI voxels (from ``masks``, else from the model's
        prediction on the unperturbed image), and refuse a target with no voxel inside the ROI."""
        if masks is None:
            lookups = self._fetch(np.ones((1, self.n_players), dtype=bool))
            requests = [(cell, np.zeros(1, np.int64)) for cell in cells]
            for cell, logits in zip(cells, self._cell_logits(requests, lookups)):
                predicted = class_probabilities(logits).max(dim=1).indices[0]
                cell.reference = torch.stack([predicted == t for t in self.targets])
        else:
            padded_masks = torch.from_numpy(self.tiling.pad(masks, False)).to(self._device)
            for cell in cells:
                cell.reference = cell.at_roi(padded_masks[(slice(None), *box_slices(cell.box))].flatten(1))
        self._reference_size = sum(cell.reference.sum(dim=1).cpu() for cell in cells)
        self._roi_size = sum(cell.reference.shape[1] for cell in cells)
        for t, size in zip(self.targets, self._reference_size.tolist()):
            if not size:
                source = "the reference" if masks is not None else "the model's unperturbed prediction"
                raise ValueError(
                    f"Inside the ROI, {source} has no voxel of target {t}: there is nothing to explain. "
                    "Pass a reference mask of the segment, widen the roi, or choose another target."
                )

    # ------------------------------------------------------------------ public

    @property
    def n_players(self) -> int:
        """``M``: the number of features that can change a value, the players of the game."""
        return int(self.feature_ids.size)

    @property
    def n_classes(self) -> int:
        """``K``: the number of output channels of the model."""
        return int(self._network.n_classes)

    @property
    def stats(self) -> dict:
        """Counters: coalitions evaluated, patch forwards, cache hits, seconds in the model and in total, and more."""
        return {
            "reference_forwards": 0,
            **self._stats,
            "forward_seconds": self._network.forward_seconds,
            "windows": int(self.windows.size),
            "features": self.n_players,
            "cache_entries": len(self._cache),
            "cache_bytes": self._cache.nbytes,
            "cache_reserved_bytes": self._cache.reserved_bytes,
            "cache_evictions": self._cache.evictions,
            "cache_host_entries": self._cache.host_entries,
            "cache_host_reserved_bytes": self._cache.host_reserved_bytes,
            "cache_host_hits": self._cache.host_hits,
        }

    @property
    def feature_windows(self) -> list[np.ndarray]:
        """Per feature (column of a coalition), the windows whose input it changes: indices into :attr:`tiling`,
        a subset of :attr:`windows`. Switching the feature alone reruns just these windows."""
        return [self.windows[positions] for positions in self._feature_window_positions]

    def forward_cost(self, coalitions: np.ndarray) -> int:
        """Window forwards that evaluating ``coalitions`` now would run: their distinct window inputs that are
        not cached. Runs no model; as cheap as a cache lookup per window and coalition.

        Parameters
        ----------
        coalitions : np.ndarray
            ``(n, M)`` bool over :attr:`feature_ids`.
        """
        coalitions = self._checked(coalitions)
        cost = 0
        for window, columns in enumerate(self._window_columns):
            states = self._distinct_states(coalitions, columns)[0]
            cost += sum((window, state) not in self._cache for state in states)
        return int(cost)

    def evaluate(self, coalitions: np.ndarray, retain: np.ndarray | None = None) -> np.ndarray:
        """Values of a batch of coalitions.

        Parameters
        ----------
        coalitions : np.ndarray
            ``(n, M)`` bool over :attr:`feature_ids`: True keeps a feature, False replaces it by the baseline.
        retain : np.ndarray, optional
            ``(n,)`` bool: the coalitions whose window outputs stay cached, whatever the budget, until the next call
            has been evaluated. A design that walks from these coalitions to neighbours one feature away then runs
            only the windows of the features it changes.

        Returns
        -------
        np.ndarray
            ``(n,)`` float64 for a single target, ``(n, T)`` when ``target`` was a sequence.
        """
        started = time.perf_counter()
        coalitions = self._checked(coalitions)
        retain = np.zeros(len(coalitions), bool) if retain is None else np.asarray(retain, dtype=bool)
        if retain.shape != (len(coalitions),):
            raise ValueError(f"retain must be a bool array of shape ({len(coalitions)},), got {retain.shape}.")
        values = np.empty((len(coalitions), len(self.targets)), dtype=np.float64)
        blend_bytes = 4 * self._network.n_outputs * int(np.prod(self._region_shape))
        output_bytes = 4 * self._network.n_outputs * sum(_volume(in_window) for in_window in self._in_window)
        chunk = max(1, min(_BLEND_BYTES // blend_bytes, _HELD_BYTES // output_bytes))
        retained: set = set()
        for first in range(0, len(coalitions), chunk):
            part = coalitions[first : first + chunk]
            values[first : first + len(part)] = (
                self._values(part, retain[first : first + chunk], retained).cpu().numpy()
            )
        self._cache.retain(retained)
        self._stats["coalitions"] += len(coalitions)
        self._stats["total_seconds"] += time.perf_counter() - started
        return values[:, 0] if self._single_target else values

    def _checked(self, coalitions) -> np.ndarray:
        coalitions = np.asarray(coalitions)
        if coalitions.dtype != bool:
            raise ValueError(
                f"coalitions must be a bool array (True = feature kept), got dtype {coalitions.dtype}; "
                "convert with .astype(bool)."
            )
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(
                f"coalitions must have shape (n, {self.n_players}) (one column per engine.feature_ids), "
                f"got {coalitions.shape}."
            )
        return coalitions

    # ------------------------------------------------------------------ evaluation

    @staticmethod
    def _distinct_states(coalitions: np.ndarray, columns: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """A window's distinct inputs among ``coalitions``: the packed states of its ``columns``, the first row
        giving each, and each row's position among them."""
        if not columns.size:
            return [b""], np.zeros(1, np.int64), np.zeros(len(coalitions), np.int64)
        distinct, first, inverse = distinct_rows(np.packbits(coalitions[:, columns], axis=1))
        return [row.tobytes() for row in distinct], first, inverse

    def _cell_logits(
        self, requests: list[tuple[Cell, np.ndarray]], lookups: list[WindowLookup]
    ) -> Iterator[torch.Tensor]:
        """Per request ``(cell, rows)``, the ``(u, K, V)`` blended logits at the cell's ROI voxels for the coalitions
        ``rows`` of the batch: per covering window, in blending order, one gather of the rows' outputs from its
        slab, added (the first gather is the sum so far: adding it to zeros would change nothing). The slots of
        all requests go to the device in one copy."""
        slots = [lookups[w].slots[lookups[w].input_of_row[rows]] for cell, rows in requests for w in cell.windows]
        slots = iter(torch.from_numpy(np.concatenate(slots)).to(self._device).split([len(s) for s in slots]))
        for cell, _ in requests:
            blended = None
            for window, in_entry in zip(cell.windows, cell.in_entry):
                gathered = self._cache.slab(window)[(slice(None), slice(None), *in_entry)].index_select(0, next(slots))
                if blended is None:
                    blended = gathered.to(self.tiling.accumulation_dtype)
                else:
                    blended += gathered
            yield self.tiling.fuse(cell.at_roi(blended.flatten(2)), cell.weight, channel_axis=1)

    def _cell_statistics_of(self, requests: list[tuple[Cell, np.ndarray]], lookups: list[WindowLookup]) -> torch.Tensor:
        """``(u, T, 4)`` value statistics of the requests ``(cell, rows)``, stacked in order."""
        logits = self._cell_logits(requests, lookups)
        return torch.cat(
            [
                segment_statistics(cell_logits, self.targets, cell.reference)
                for (cell, _), cell_logits in zip(requests, logits)
            ]
        )

    @torch.inference_mode()
    def _values(self, coalitions: np.ndarray, retain: np.ndarray, retained: set) -> torch.Tensor:
        """``(n, T)`` values: per cell, statistics of each distinct combination of its windows' inputs, summed.
        The cache keys of the ``retain`` rows are added to ``retained`` and kept from eviction from now on."""
        with self._cache.held():
            return self._held_values(coalitions, retain, retained)

    def _held_values(self, coalitions: np.ndarray, retain: np.ndarray, retained: set) -> torch.Tensor:
        lookups = self._fetch(coalitions)
        for row in np.flatnonzero(retain):
            retained.update((w, lookup.states[int(lookup.input_of_row[row])]) for w, lookup in enumerate(lookups))
        self._cache.retain(retained, keep_previous=True)
        statistics = self._cell_statistics.summed(
            lookups, len(coalitions), lambda requests: self._cell_statistics_of(requests, lookups), len(self.targets)
        )
        return values_from_statistics(statistics, self._reference_size, self._roi_size, self.value)

    def _fetch(self, coalitions: np.ndarray, pin: bool = False) -> list[WindowLookup]:
        """Per window: its distinct inputs among ``coalitions``, their slots in the cache (running the misses) and
        each row's input among them."""
        lookups, misses = [], []
        for window, columns in enumerate(self._window_columns):
            states, first, inverse = self._distinct_states(coalitions, columns)
            known = self._state_ids[window]
            ids = np.array([known.setdefault(state, len(known)) for state in states], dtype=np.int64)
            lookup = WindowLookup(states, ids, self._cache.find(window, states), inverse)
            missing = np.flatnonzero(lookup.slots < 0)
            if missing.size:
                misses.append((window, missing, first[missing]))
            lookups.append(lookup)
            if not pin:
                self._stats["cache_hits"] += len(coalitions) - missing.size
        if misses:
            self._run(coalitions, misses, lookups, pin)
        return lookups

    def _run(self, coalitions: np.ndarray, misses: list, lookups: list[WindowLookup], pin: bool) -> None:
        """Run the missing windows ``batch_size`` at a time; store their weighted outputs on the region in the
        cache's slabs and their slots in ``lookups``.

        ``misses`` holds, per window with missing inputs, ``(window, positions, rows)``: the positions of its missing
        inputs among its distinct ones, and coalition rows that give them. A batch's windows come in runs of the
        same window, each built, stored and weighted by a few tensor operations.
        """
        windows = [window for window, positions, _ in misses for _ in range(positions.size)]
        positions = np.concatenate([positions for _, positions, _ in misses])
        rows = torch.from_numpy(np.concatenate([rows for *_, rows in misses])).to(self._device)
        # Per coalition, not per miss: misses can outnumber coalitions many times over, and M can be thousands.
        kept = torch.ones((len(coalitions), self.n_players + 1), dtype=torch.float32, device=self._device)
        kept[:, : self.n_players] = torch.from_numpy(coalitions).to(self._device)
        # One buffer for every batch's inputs: allocated per batch, its pages were touched anew each time.
        buffer = torch.empty((min(self.batch_size, len(windows)), *self._inputs.shape), device=self._device)
        for first in range(0, len(windows), self.batch_size):
            stop = min(first + self.batch_size, len(windows))
            starts = [i for i in range(first, stop) if i == first or windows[i] != windows[i - 1]]
            runs = [(windows[a], a, b) for a, b in zip(starts, [*starts[1:], stop])]
            inputs = buffer[: stop - first]
            kept_rows = kept.index_select(0, rows[first:stop])
            for window, a, b in runs:
                self._inputs.fill(inputs[a - first : b - first], window, kept_rows[a - first : b - first])
            out = self._network(inputs)
            self._stats["patch_forwards"] += stop - first
            self._stats["forward_batches"] += 1
            for window, a, b in runs:
                self._store(window, out[a - first : b - first], positions[a:b], lookups[window], pin)

    def _store(self, window: int, out: torch.Tensor, positions: np.ndarray, lookup: WindowLookup, pin: bool) -> None:
        """Weight the outputs ``out`` of one window's missing inputs (at ``positions`` among its distinct ones) on
        the region, straight into new slots of its slab."""
        output = out[(slice(None), *self._in_window_channels[window])]
        weight = self._window_weight[window]
        like = (output.shape[1:], torch.promote_types(output.dtype, weight.dtype))
        slots = self._cache.store(window, [lookup.states[p] for p in positions.tolist()], like, pinned=pin)
        slab = self._cache.slab(window)
        listed = slots.tolist()
        if listed == list(range(listed[0], listed[0] + len(listed))):
            torch.mul(output, weight, out=slab[listed[0] : listed[0] + len(listed)])
        else:
            for one, slot in zip(output, listed):
                torch.mul(one, weight, out=slab[slot])
        lookup.slots[positions] = slots
