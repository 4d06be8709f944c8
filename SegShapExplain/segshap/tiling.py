"""Sliding-window tiling with the semantics of MONAI's ``sliding_window_inference`` or of nnU-Net v2's predictor.

A :class:`Tiling` says where the windows of a sliding-window inference lie, in which order their outputs are
blended and with which weights. The engine needs exactly this to reproduce full-volume inference from a subset of
windows: a voxel's blended logits are the weighted sum, in window order, of the windows covering it, divided by the
sum of their weights; windows that do not cover the voxel play no part.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = [
    "Box",
    "box_slices",
    "Tiling",
    "TilingSpec",
    "monai_tiling",
    "nnunet_tiling",
    "make_tiling",
    "TILING_SCHEMES",
]

BLEND_MODES = ("constant", "gaussian")
TILING_SCHEMES = ("monai", "nnunet")

Box = tuple[tuple[int, int], ...]
"""A box as one ``(start, stop)`` pair per axis, stops exclusive."""


def box_slices(box: Box) -> tuple[slice, ...]:
    """The slices that index ``box`` out of an array."""
    return tuple(slice(a, b) for a, b in box)


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
        The importance map each window's output is multiplied by: MONAI's ``"constant"`` or ``"gaussian"``, or
        ``"nnunet"`` (nnU-Net's Gaussian).
    sigma_scale : tuple of float
        Gaussian sigma as a fraction of the patch size, per axis.
    folds : int
        How many models' logits each window output holds, concatenated along channels (nnU-Net's folds): each is
        fused on its own and the fused logits are averaged, as nnU-Net averages folds after fusion.
    """

    image_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    starts: np.ndarray
    blend: str
    sigma_scale: tuple[float, ...]
    folds: int = 1

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
            if roi_padded[
                tuple(slice(max(a, c), min(b, d)) for (a, b), (c, d) in zip(self.window_box(w), region))
            ].any()
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

        Computed by MONAI (or nnU-Net) itself, on the device the windows are blended on, so that the weights are
        bit for bit the ones the inference uses there (nnU-Net's are float16 values, returned as float32).
        """
        if self.blend == "nnunet":
            try:
                from nnunetv2.inference.sliding_window_prediction import compute_gaussian
            except ImportError as error:
                raise ValueError(
                    "nnU-Net tiling needs nnunetv2: install segshap with its nnunet extra (see the README)."
                ) from error
            weights = compute_gaussian(
                self.patch_size,
                sigma_scale=1.0 / 8,
                value_scaling_factor=10,
                dtype=torch.float16,
                device=torch.device(device),
            )
            return weights.float()
        from monai.data.utils import compute_importance_map

        return compute_importance_map(
            self.patch_size, mode=self.blend, sigma_scale=self.sigma_scale, device=device, dtype=torch.float32
        )

    @property
    def accumulation_dtype(self) -> torch.dtype:
        """The precision weighted outputs and weights are summed in: float16 for nnU-Net, as its predictor does."""
        return torch.float16 if self.blend == "nnunet" else torch.float32

    def fuse(self, weighted_sum: torch.Tensor, weight: torch.Tensor, channel_axis: int) -> torch.Tensor:
        """Fused float32 logits from the summed weighted window outputs and the summed weights.

        Divides in :attr:`accumulation_dtype`, then averages the :attr:`folds` groups of channels in that
        precision, in order, as nnU-Net does; ``channel_axis`` is the axis of ``weighted_sum`` holding channels.
        """
        logits = weighted_sum / weight
        if self.folds > 1:
            axis = channel_axis % logits.ndim
            groups = logits.unflatten(axis, (self.folds, -1)).unbind(axis)
            logits = groups[0].clone()
            for group in groups[1:]:
                logits += group
            logits /= self.folds
        return logits.float()

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
    shape, patch = _checked_shapes(image_shape, patch_size)
    ndim = len(shape)
    overlaps = _as_triple(overlap, "overlap", ndim, float)
    if any(not 0.0 <= o < 1.0 for o in overlaps):
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}.")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}.")
    sigmas = _as_triple(sigma_scale, "sigma_scale", ndim, float)
    if min(sigmas) <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}.")

    pad_before, pad_after, padded = _padding(shape, patch)
    axis_starts = []
    for size, p, o in zip(padded, patch, overlaps):
        stride = p if p == size else max(int(p * (1 - o)), 1)
        count = math.ceil((size - p) / stride) + 1
        axis_starts.append([min(j * stride, size - p) for j in range(count)])
    return Tiling(shape, patch, pad_before, pad_after, _grid(axis_starts), blend, sigmas)


def _checked_shapes(image_shape: Sequence[int], patch_size) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 0 or min(shape) < 1:
        raise ValueError(f"The image needs at least one voxel along every axis, got shape {shape}.")
    patch = _as_triple(patch_size, "patch_size", len(shape), int)
    if min(patch) < 1:
        raise ValueError(f"patch_size must be positive, got {patch}.")
    return shape, patch


def _padding(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """Zeros before and after each axis smaller than the patch (``d // 2`` before, the rest after)."""
    pad_total = [max(p - s, 0) for s, p in zip(shape, patch)]
    padded = [s + d for s, d in zip(shape, pad_total)]
    return tuple(d // 2 for d in pad_total), tuple(d - d // 2 for d in pad_total), padded


def _grid(axis_starts: list[list[int]]) -> np.ndarray:
    """All combinations of per-axis starts, the first axis outermost."""
    return np.array(list(itertools.product(*axis_starts)), dtype=np.int64).reshape(-1, len(axis_starts))


def nnunet_tiling(
    image_shape: Sequence[int], patch_size: Sequence[int] | int, tile_step_size: float = 0.5, folds: int = 1
) -> Tiling:
    """Tile an image the way nnU-Net v2's ``nnUNetPredictor`` does.

    Parameters
    ----------
    image_shape : sequence of int
        Spatial shape of the preprocessed image.
    patch_size : int or sequence of int
        The configuration's patch size.
    tile_step_size : float
        Step between windows as a fraction of the patch (nnU-Net's default 0.5), in ``(0, 1]``.
    folds : int
        Number of folds whose logits each window output concatenates.

    Returns
    -------
    Tiling
        Blended with nnU-Net's Gaussian (``blend="nnunet"``), summed in float16 like nnU-Net's predictor.

    Notes
    -----
    An axis smaller than the patch is padded with zeros as ``pad_nd_image`` does (``d // 2`` before). Along an
    axis of padded size ``I`` there are ``n = ceil((I - P) / (P * tile_step_size)) + 1`` windows, starting at
    ``round(j * (I - P) / (n - 1))`` (NumPy rounding), the first axis outermost.
    """
    shape, patch = _checked_shapes(image_shape, patch_size)
    if not 0.0 < float(tile_step_size) <= 1.0:
        raise ValueError(f"tile_step_size must lie in (0, 1], got {tile_step_size!r}.")
    pad_before, pad_after, padded = _padding(shape, patch)
    axis_starts = []
    for size, p in zip(padded, patch):
        count = int(np.ceil((size - p) / (p * tile_step_size))) + 1
        step = (size - p) / (count - 1) if count > 1 else 0.0
        axis_starts.append([int(np.round(step * j)) for j in range(count)])
    if not isinstance(folds, (int, np.integer)) or folds < 1:
        raise ValueError(f"folds must be a positive integer, got {folds!r}.")
    return Tiling(shape, patch, pad_before, pad_after, _grid(axis_starts), "nnunet", (0.125,) * len(shape), int(folds))


def make_tiling(
    scheme: str,
    image_shape: Sequence[int],
    patch_size: Sequence[int] | int,
    overlap: Sequence[float] | float = 0.25,
    blend: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    folds: int = 1,
) -> Tiling:
    """The tiling of ``scheme`` (``"monai"`` or ``"nnunet"``); for nnU-Net, ``tile_step_size = 1 - overlap``
    and ``blend``/``sigma_scale`` are nnU-Net's own."""
    if scheme == "monai":
        if folds != 1:
            raise ValueError("folds is an nnU-Net setting; MONAI tiling fuses a single model's logits.")
        return monai_tiling(image_shape, patch_size, overlap, blend, sigma_scale)
    if scheme == "nnunet":
        if not isinstance(overlap, (int, float)):
            raise ValueError(f"nnU-Net tiling takes one overlap for all axes, got {overlap!r}.")
        # Rounded so that a step size stored as 1 - overlap comes back as written (0.8, not 0.8000000000000000444).
        return nnunet_tiling(image_shape, patch_size, round(1.0 - float(overlap), 12), folds)
    raise ValueError(f"tiling must be one of {TILING_SCHEMES}, got {scheme!r}.")


@dataclass(frozen=True)
class TilingSpec:
    """The settings of a sliding-window inference, before there is an image to tile: the one home of their
    defaults. :meth:`over` gives the :class:`Tiling` of an image.

    Attributes
    ----------
    patch_size : int or tuple of int
        Spatial size of every window.
    overlap : float or tuple of float
        Overlap of neighbouring windows, as a fraction of the window (nnU-Net: ``1 - tile_step_size``).
    blend : str
        ``"gaussian"`` or ``"constant"`` (MONAI's ``mode``; nnU-Net always uses its own Gaussian).
    sigma_scale : float or tuple of float
        MONAI's Gaussian ``sigma_scale``.
    scheme : str
        One of :data:`TILING_SCHEMES`: whose window grid and fusion to reproduce. Keyword APIs call it ``tiling``.
    folds : int
        nnU-Net: how many folds' logits the network returns side by side (fused separately, then averaged).
    """

    patch_size: tuple[int, ...] | int = (64, 64, 64)
    overlap: tuple[float, ...] | float = 0.5
    blend: str = "gaussian"
    sigma_scale: tuple[float, ...] | float = 0.125
    scheme: str = "monai"
    folds: int = 1

    KEYWORDS = ("tiling", "patch_size", "overlap", "blend", "sigma_scale", "folds")
    """The keyword arguments that carry these settings in :func:`segshap.predict`, :func:`segshap.explain` and
    :class:`segshap.PatchEngine` (``tiling`` is :attr:`scheme`)."""

    def over(self, image_shape: Sequence[int]) -> Tiling:
        """The windows over an image of spatial shape ``image_shape``."""
        return make_tiling(
            self.scheme, image_shape, self.patch_size, self.overlap, self.blend, self.sigma_scale, self.folds
        )

    @classmethod
    def resolve(cls, tiling: str | TilingSpec = "monai", **settings) -> TilingSpec:
        """A spec from ``tiling`` (a scheme name or a spec) and the settings given by keyword (``None``: not
        given, so the default).

        Raises
        ------
        ValueError
            When ``tiling`` is a spec and settings are given too: say the settings in one place.
        """
        given = {name: value for name, value in settings.items() if value is not None}
        unknown = set(given) - {f.name for f in fields(cls)} - {"scheme"}
        if unknown:
            raise ValueError(f"Unknown tiling setting(s) {sorted(unknown)}; the settings are {cls.KEYWORDS}.")
        if isinstance(tiling, TilingSpec):
            if given:
                raise ValueError(
                    f"Got a TilingSpec and the settings {sorted(given)} besides it; put them into the spec "
                    "(dataclasses.replace(spec, ...)) or pass the settings alone."
                )
            return tiling
        if tiling not in TILING_SCHEMES:
            raise ValueError(f"tiling must be one of {TILING_SCHEMES} or a TilingSpec, got {tiling!r}.")
        return cls(scheme=tiling, **given)

    @classmethod
    def pop_from(cls, options: dict, base: TilingSpec | None = None) -> TilingSpec:
        """Take the settings named in :attr:`KEYWORDS` out of ``options`` (a dict of keyword arguments; the others
        stay); those not there come from ``base`` (default: the defaults)."""
        base = base if base is not None else cls()
        settings = {name: options.pop(name) for name in cls.KEYWORDS if name in options}
        scheme = settings.pop("tiling", base.scheme)
        return cls.resolve(
            scheme, **{f.name: getattr(base, f.name) for f in fields(cls) if f.name != "scheme"} | settings
        )

    def to_dict(self) -> dict:
        """The settings under their keyword names, tuples as lists (as ``explanation.json`` records them)."""
        values = {"tiling": self.scheme} | {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scheme"}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}
