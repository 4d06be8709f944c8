"""Checking and normalising what users hand to the engine.

Each function either returns the input in the engine's canonical form or raises ``ValueError`` saying what is
wrong and how to fix it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .tiling import Box

__all__ = [
    "ArgumentError",
    "DEFAULT_MARGIN",
    "BASELINES",
    "checked_integer",
    "checked_number",
    "checked_choice",
    "resolve_baseline",
    "as_image",
    "as_channels_first",
    "as_features",
    "as_baseline",
    "as_targets",
    "target_list",
    "reference_masks",
    "as_roi_mask",
    "parse_box",
    "box_problem",
    "bounding_box",
    "roi_around",
    "resolve_device",
    "is_integer",
]


DEFAULT_MARGIN = 8
"""Voxels added around the reference's bounding box to make the default ROI."""

BASELINES = ("mean", "min", "zero")
"""The baselines given by name (:func:`resolve_baseline`)."""


class ArgumentError(ValueError):
    """A bad or missing argument, named so that each front end can say it as its users know it.

    The message is ``template`` with ``{argument}`` replaced by a name of the argument: ``spelling`` (default
    ``"<argument>="``) for Python callers, as ``str(error)`` shows it; :meth:`naming` gives it another (the command
    line's flag, the worker's request key).
    """

    def __init__(self, argument: str, template: str, spelling: str | None = None) -> None:
        self.argument, self.template = argument, template
        super().__init__(template.replace("{argument}", spelling or f"{argument}="))

    def naming(self, name_of: Callable[[str], str]) -> str:
        """The message with the argument named by ``name_of(argument)``."""
        return self.template.replace("{argument}", name_of(self.argument))


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def checked_integer(value, name: str, least: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= least``; else an :class:`ArgumentError` naming ``name``."""
    if not is_integer(value) or value < least:
        wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(least, f"an integer >= {least}")
        raise ArgumentError(name, f"{{argument}} must be {wanted}, got {value!r}.")
    return int(value)


def checked_number(value, name: str, below: float | None = None) -> float:
    """``value`` as a ``float`` if it is a finite number ``> 0`` (and ``< below``); else an :class:`ArgumentError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (np.isfinite(value) and value > 0 and (below is None or value < below))
    ):
        wanted = "a positive number" if below is None else f"a number in (0, {below})"
        raise ArgumentError(name, f"{{argument}} must be {wanted}, got {value!r}.")
    return float(value)


def checked_choice(value, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; else an :class:`ArgumentError` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(name, f"{{argument}} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def as_channels_first(image, name: str = "image") -> np.ndarray:
    """``(C, X, Y, Z)`` from an ``(X, Y, Z)`` or ``(C, X, Y, Z)`` array of real numbers, dtype kept."""
    array = np.asarray(image)
    if array.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be (X, Y, Z) or (C, X, Y, Z), got an array of shape {array.shape}. "
            "Drop batch or time axes, and put channels first."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    if array.ndim == 3:
        array = array[None]
    if array.shape[0] < 1:
        raise ValueError(f"{name} has no channel (shape {array.shape}).")
    return array


def as_image(image) -> np.ndarray:
    """``(C, X, Y, Z)`` float32 from an ``(X, Y, Z)`` or ``(C, X, Y, Z)`` array of finite numbers."""
    array = np.asarray(as_channels_first(image), dtype=np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0][1:])
        raise ValueError(
            f"image contains {int(bad.sum())} NaN or infinite voxels (first at {where}). "
            "Replace them (e.g. np.nan_to_num) before explaining."
        )
    return array


def as_features(features, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """An int64 feature map with ids ``1..N`` (0: never perturbed) matching the image's spatial shape."""
    array = np.asarray(features)
    if array.shape != spatial_shape:
        raise ValueError(f"features has shape {array.shape} but the image's spatial shape is {spatial_shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"features must be an integer label map, got dtype {array.dtype}.")
    array = array.astype(np.int64, copy=False)
    if array.min() < 0:
        raise ValueError(
            "features contains negative ids; use 0 for voxels that are never perturbed and 1..N for features."
        )
    largest = int(array.max())
    if largest > array.size:
        raise ValueError(
            f"feature ids must run 1..N without gaps, but the largest id is {largest} in a map of {array.size} voxels. "
            "Relabel them, e.g. with skimage.segmentation.relabel_sequential."
        )
    present = np.bincount(array.ravel(), minlength=largest + 1)[1:] > 0
    missing = np.flatnonzero(~present) + 1
    if missing.size:
        shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if missing.size > 5 else "")
        raise ValueError(
            f"feature ids must run 1..N without gaps; {missing.size} of 1..{largest} are missing ({shown}). "
            "Relabel them, e.g. with skimage.segmentation.relabel_sequential."
        )
    return array


def resolve_baseline(baseline, image: np.ndarray) -> float | np.ndarray:
    """A named baseline (:data:`BASELINES`) made from the ``(C, X, Y, Z)`` network input: ``"mean"`` or ``"min"``
    of each channel (a number for one channel, an array like ``image`` for several), or 0; numbers and arrays are
    returned as they are (:func:`as_baseline` checks them)."""
    if not isinstance(baseline, str):
        return baseline
    checked_choice(baseline, "baseline", BASELINES)
    if baseline == "zero":
        return 0.0
    per_channel = [float(c.mean(dtype=np.float64) if baseline == "mean" else c.min()) for c in image]
    if len(per_channel) == 1:
        return per_channel[0]
    return np.broadcast_to(np.asarray(per_channel, np.float32)[:, None, None, None], image.shape).copy()


def as_baseline(baseline, image_shape: tuple[int, ...], given_ndim: int) -> np.ndarray | float:
    """A finite float, or a float32 array shaped like the ``(C, X, Y, Z)`` image."""
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not np.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}.")
        return float(baseline)
    array = np.asarray(baseline, dtype=np.float32)
    if array.ndim == 3 and given_ndim == 3:
        array = array[None]
    if array.shape != image_shape:
        raise ValueError(
            f"baseline must be a number or an array shaped like the image; got shape {np.shape(baseline)} "
            f"for an image of shape {image_shape[1:] if given_ndim == 3 else image_shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError("baseline contains NaN or infinite values.")
    return array


def target_list(target) -> tuple[list[int | str], bool]:
    """Targets as given to the pipeline: a list of class indices and names, and whether a single one (not a list)
    was given. Refuses anything else (an object, an empty list, a bool, an empty name) naming ``target``."""
    single = is_integer(target) or isinstance(target, str)
    requested = [target] if single else list(target) if isinstance(target, (list, tuple, np.ndarray)) else []
    if not requested or any(not (is_integer(t) or (isinstance(t, str) and t)) for t in requested):
        raise ArgumentError("target", f"{{argument}} must be a class index or name, or a list of them; got {target!r}.")
    return requested, single


def as_targets(target) -> tuple[tuple[int, ...], bool]:
    """Target class indices and whether a single target (not a sequence) was given."""
    single = is_integer(target)
    values = (target,) if single else target
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(f"target must be a class index or a sequence of class indices, got {target!r}.")
    values = list(values)
    if not values or any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in values):
        raise ValueError(f"target must be non-negative class indices, got {target!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"target lists a class twice: {target!r}.")
    return tuple(int(t) for t in values), single


def reference_masks(reference, spatial_shape: tuple[int, ...], targets: tuple[int, ...]) -> np.ndarray:
    """``(T, X, Y, Z)`` bool masks from a bool mask (one target) or an integer label map (``== target``)."""
    array = np.asarray(reference)
    if array.shape != spatial_shape:
        raise ValueError(f"reference has shape {array.shape} but the image's spatial shape is {spatial_shape}.")
    if array.dtype == bool:
        if len(targets) > 1:
            raise ValueError(
                "A bool reference describes one segment but several targets were given; pass an integer label map "
                "whose value t marks the reference of target t."
            )
        masks = array[None]
    elif np.issubdtype(array.dtype, np.integer):
        masks = np.stack([array == t for t in targets])
    else:
        raise ValueError(f"reference must be a bool mask or an integer label map, got dtype {array.dtype}.")
    for t, mask in zip(targets, masks):
        if not mask.any():
            hint = " (a bool mask marks the segment itself)" if array.dtype != bool else ""
            raise ValueError(f"The reference of target {t} is empty{hint}: there is no segment to explain.")
    return masks


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box:
    """The box around the true voxels of ``mask``, grown by ``margin`` and clipped to the array."""
    box = []
    for axis, size in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, size)))
    return tuple(box)


def parse_box(text: str) -> Box:
    """A box from its text ``x0:x1,y0:y1,z0:z1`` (voxel indices, stops exclusive).

    Raises
    ------
    ValueError
        When the text is not three ``start:stop`` pairs of integers.
    """
    parts = [part.split(":") for part in text.split(",")]
    try:
        if len(parts) != 3 or any(len(part) != 2 for part in parts):
            raise ValueError
        return tuple((int(start), int(stop)) for start, stop in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a box x0:x1,y0:y1,z0:z1") from None


def box_problem(box: Box, spatial_shape: Sequence[int]) -> str | None:
    """What is wrong with a box for a volume of this spatial shape, or ``None``."""
    if any(start < 0 or stop > size or start >= stop for (start, stop), size in zip(box, spatial_shape)):
        return (
            f"box {[tuple(pair) for pair in box]} is empty or reaches outside the volume of shape "
            f"{tuple(spatial_shape)}; each (start, stop) must satisfy 0 <= start < stop <= size"
        )
    return None


def as_roi_mask(roi, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """A bool ROI mask from a mask of the image's shape or a box ``((x0, x1), (y0, y1), (z0, z1))``."""
    if isinstance(roi, np.ndarray) and roi.ndim == len(spatial_shape):
        if roi.shape != spatial_shape:
            raise ValueError(f"roi mask has shape {roi.shape} but the image's spatial shape is {spatial_shape}.")
        if roi.dtype != bool:
            raise ValueError(f"roi mask must be bool, got dtype {roi.dtype}.")
        if not roi.any():
            raise ValueError("roi is empty: it selects no voxel to read values from.")
        return roi
    try:
        box = [(int(start), int(stop)) for start, stop in roi]
    except (TypeError, ValueError):
        box = []
    if len(box) != len(spatial_shape):
        raise ValueError(
            f"roi must be a bool mask of the image's spatial shape {spatial_shape} or a box "
            f"((x0, x1), (y0, y1), (z0, z1)); got {roi!r}."
        )
    problem = box_problem(box, spatial_shape)
    if problem:
        raise ValueError(f"roi {problem}.")
    mask = np.zeros(spatial_shape, dtype=bool)
    mask[tuple(slice(start, stop) for start, stop in box)] = True
    return mask


def roi_around(masks: np.ndarray, margin: int) -> np.ndarray:
    """The default ROI: the union of the bounding boxes of ``masks`` (``(T, X, Y, Z)`` bool, none empty), each
    grown by ``margin`` voxels and clipped to the volume."""
    roi = np.zeros(masks.shape[1:], dtype=bool)
    for mask in masks:
        roi[tuple(slice(a, b) for a, b in bounding_box(mask, margin))] = True
    return roi


def resolve_device(device) -> torch.device:
    """A ``torch.device``, refusing CUDA where none is available; ``"auto"`` is CUDA when there is one, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"A GPU ({device}) was asked for, but PyTorch sees none on this computer: choose the CPU or auto. If it "
            "has an NVIDIA GPU, PyTorch may be a CPU-only build or too new for the GPU's driver."
        )
    return resolved
