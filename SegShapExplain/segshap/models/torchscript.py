"""TorchScript models with a JSON sidecar (``<name>.json`` or ``model.json`` beside the file, or ``config=``) that
says what the network expects::

    {
      "format": "segshap-torchscript/1",
      "in_channels": 1,
      "classes": {"0": "background", "1": "gray_matter", "2": "white_matter"},
      "patch_size": [32, 32, 32], "overlap": 0.25, "blend": "gaussian",
      "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "interpolation": "linear",
                        "clip": null, "normalize": "zscore", "nonzero": true}
    }

``orientation`` (axis codes) and ``spacing`` (mm) describe the grid the network was trained on: images are
reoriented (exactly: flips and transposes) and resampled (``interpolation``: ``"linear"``, ``"nearest"`` or
``"cubic"``) onto it; leave them out for a network that takes images as they come. Then ``clip`` (``null`` or
``[low, high]``) and ``normalize``: ``"zscore"`` (mean and std over all voxels, or over voxels > 0 with
``"nonzero": true``), ``"scale"`` (``(x - offset) / factor``) or ``"none"``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from ..geometry import INTERPOLATION_ORDERS, Grid, ModelInput, reorient, resample
from ..inputs import ArgumentError
from ..modelinfo import missing_sidecar, read_sidecar, sidecar_candidates, torchscript_info
from ..tiling import TilingSpec
from .base import LoadedModel, check_classes, load_torchscript, output_channels

# sidecar_candidates is re-exported for segshap.cohort.case, which imports it from here.
__all__ = ["load_torchscript_model", "sidecar_preprocess", "sidecar_candidates"]

_TILING_FIELDS = {"overlap": float, "blend": str, "sigma_scale": float}
"""The sidecar's optional sliding-window settings; missing ones take :class:`~segshap.tiling.TilingSpec`'s defaults."""
_NORMALIZATIONS = ("zscore", "scale", "none")


def sidecar_preprocess(data: np.ndarray, affine: np.ndarray | None, settings: dict) -> ModelInput:
    """A sidecar's preprocessing: reorient, resample, clip, normalise (see the module's docstring)."""
    source = Grid(data.shape[1:], np.eye(4) if affine is None else affine)
    grid_affine = source.affine
    if affine is not None and settings.get("orientation"):
        data, grid_affine = reorient(data, grid_affine, settings["orientation"])
    if affine is not None and settings.get("spacing"):
        data, grid_affine = resample(data, grid_affine, settings["spacing"], settings.get("interpolation", "linear"))
    data = np.array(data, dtype=np.float32)  # owned and contiguous: normalised in place below
    clip = settings.get("clip")
    if clip is not None:
        np.clip(data, clip[0], clip[1], out=data)
    method = settings.get("normalize", "none")
    if method == "zscore":
        for channel in data:
            inside = channel[channel > 0] if settings.get("nonzero") else channel
            # In float64: the squares of float32 intensities above about 1e19 overflow.
            if inside.size == 0 or inside.std(dtype=np.float64) == 0:
                raise ValueError("The image is constant (or has no voxel > 0): it cannot be z-scored.")
            mean, std = inside.mean(dtype=np.float64), inside.std(dtype=np.float64)
            channel -= mean
            channel /= std
    elif method == "scale":
        data -= float(settings.get("offset", 0.0))
        data /= float(settings.get("factor", 1.0))
    return ModelInput(data, Grid(data.shape[1:], grid_affine), source)


def _check_preprocessing(settings: dict, source: str) -> None:
    preprocessing = settings.get("preprocessing") or {}
    method = preprocessing.get("normalize", "none")
    if method not in _NORMALIZATIONS:
        raise ValueError(f"{source}: preprocessing.normalize must be one of {_NORMALIZATIONS}, got {method!r}.")
    interpolation = preprocessing.get("interpolation", "linear")
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(
            f"{source}: preprocessing.interpolation must be one of {tuple(INTERPOLATION_ORDERS)}, "
            f"got {interpolation!r}."
        )


def load_torchscript_model(path: Path, config: dict | str | os.PathLike | None, device: torch.device) -> LoadedModel:
    """A TorchScript network with its JSON sidecar (``config``, or found beside ``path``) as a :class:`LoadedModel`;
    see the module's description for the sidecar's fields."""
    found = read_sidecar(path, config)
    if found is None:
        raise ArgumentError("config", missing_sidecar(path, "{argument}"))
    settings, source = found
    info = torchscript_info(path, settings, source)
    _check_preprocessing(settings, source)
    preprocessing = dict(settings.get("preprocessing") or {})
    loaded = LoadedModel(
        network=load_torchscript(path, device=device),
        classes=info.classes,
        in_channels=info.in_channels,
        tiling_spec=TilingSpec(
            patch_size=info.patch_size,
            **{name: kind(settings[name]) for name, kind in _TILING_FIELDS.items() if name in settings},
        ),
        preprocessing=preprocessing,
        path=path,
        config=settings,
        preprocessor=functools.partial(sidecar_preprocess, settings=preprocessing),
    )
    check_classes(
        loaded.classes, output_channels(loaded.network, loaded.in_channels, loaded.patch_size, device), source
    )
    return loaded
