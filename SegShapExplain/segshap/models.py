"""Models as their authors run them: the network plus its tiling settings and preprocessing.

A TorchScript file (``.pt``/``.ts``) comes with a JSON sidecar (``<name>.json`` or ``model.json`` beside it, or
``config=``) that says what the network expects::

    {
      "format": "segshap-torchscript/1",
      "in_channels": 1,
      "classes": {"0": "background", "1": "gray_matter", "2": "white_matter"},
      "patch_size": [32, 32, 32], "overlap": 0.25, "blend": "gaussian",
      "preprocessing": {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS",
                        "clip": null, "normalize": "zscore", "nonzero": true}
    }

``normalize`` is ``"zscore"`` (mean and std over all voxels, or over voxels > 0 with ``"nonzero": true``),
``"scale"`` (``(x - offset) / factor`` with ``"offset"`` and ``"factor"``) or ``"none"``; ``clip`` is ``null``
or ``[low, high]`` applied first. ``spacing`` (mm) and ``orientation`` describe the grid the network was trained
on: images must already be on it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .inputs import resolve_device

__all__ = ["LoadedModel", "load_model"]

_FORMAT = "segshap-torchscript/1"
_REQUIRED = ("in_channels", "classes", "patch_size")
_NORMALIZATIONS = ("zscore", "scale", "none")


@dataclass
class LoadedModel:
    """A network with everything needed to run it as its authors do.

    Attributes
    ----------
    network : torch.nn.Module
        Maps ``(B, in_channels, *patch_size)`` to ``(B, len(classes), *patch_size)`` logits; in eval mode.
    classes : dict of int to str
        Output channel index to class name.
    in_channels : int
    patch_size : tuple of int
    overlap : float
    blend : str
        ``"gaussian"`` or ``"constant"``.
    preprocessing : dict
        The sidecar's ``preprocessing`` block.
    path : pathlib.Path
        Where the network was loaded from.
    config : dict
        The whole sidecar.
    """

    network: torch.nn.Module
    classes: dict[int, str]
    in_channels: int
    patch_size: tuple[int, ...]
    overlap: float = 0.5
    blend: str = "gaussian"
    preprocessing: dict = field(default_factory=dict)
    path: Path | None = None
    config: dict = field(default_factory=dict)

    def class_index(self, target: int | str) -> int:
        """The output channel of a class given by index or by name."""
        if isinstance(target, str) and not target.isdigit():
            for index, name in self.classes.items():
                if name == target:
                    return index
            raise ValueError(f"Unknown target {target!r}; the model's classes are {self._listing()}.")
        index = int(target)
        if index not in self.classes:
            raise ValueError(f"Unknown target {index}; the model's classes are {self._listing()}.")
        return index

    def _listing(self) -> str:
        return ", ".join(f"{i} ({name})" for i, name in sorted(self.classes.items()))

    def preprocess(self, image: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
        """The network's input, ``(C, X, Y, Z)`` float32, from an image as read from disk.

        ``image`` is ``(X, Y, Z)``, or ``(X, Y, Z, C)`` as NIfTI stores channels. With an ``affine`` the voxel
        spacing is checked against the model's.
        """
        data = np.array(image, dtype=np.float32)  # a copy: the caller's image stays as it was
        if data.ndim == 3:
            data = data[None]
        elif data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        else:
            raise ValueError(f"The image must be 3D, or 3D with channels last; got shape {data.shape}.")
        if data.shape[0] != self.in_channels:
            raise ValueError(
                f"The model expects {self.in_channels} channel(s) but the image has {data.shape[0]} "
                f"(shape {tuple(image.shape)}); pass an image with {self.in_channels} channel(s)."
            )
        if not np.isfinite(data).all():
            raise ValueError("The image contains NaN or infinite voxels; replace them before explaining.")
        spacing = self.preprocessing.get("spacing")
        if affine is not None and spacing is not None:
            found = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
            if not np.allclose(found, spacing, rtol=0.01):
                raise ValueError(
                    f"The image has voxel spacing {tuple(np.round(found, 3))} mm but the model works at "
                    f"{tuple(spacing)} mm; resample the image to that spacing first."
                )
        clip = self.preprocessing.get("clip")
        if clip is not None:
            data = np.clip(data, clip[0], clip[1])
        method = self.preprocessing.get("normalize", "none")
        if method == "zscore":
            for channel in data:
                inside = channel[channel > 0] if self.preprocessing.get("nonzero") else channel
                if inside.size == 0 or inside.std() == 0:
                    raise ValueError("The image is constant (or has no voxel > 0): it cannot be z-scored.")
                channel -= inside.mean()
                channel /= inside.std()
        elif method == "scale":
            data = (data - float(self.preprocessing.get("offset", 0.0))) / float(self.preprocessing.get("factor", 1.0))
        return np.ascontiguousarray(data, dtype=np.float32)


def _sidecar_for(path: Path) -> Path:
    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"No JSON sidecar for {path}: put {path.with_suffix('.json').name} or model.json beside it, or pass "
        "config= (--model-config), with in_channels, classes and patch_size (see segshap.models)."
    )


def _read_config(config, model_path: Path) -> tuple[dict, str]:
    if isinstance(config, dict):
        return config, "config"
    source = Path(config) if config is not None else _sidecar_for(model_path)
    if not source.is_file():
        raise FileNotFoundError(f"No such model config file: {source}.")
    try:
        return json.loads(source.read_text()), str(source)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}.") from error


def _validate(config: dict, source: str) -> None:
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise ValueError(f"{source} misses {', '.join(missing)}; a model sidecar needs {', '.join(_REQUIRED)}.")
    if config.get("format", _FORMAT) != _FORMAT:
        raise ValueError(f"{source} has format {config['format']!r}; this version reads {_FORMAT!r}.")
    if not isinstance(config["classes"], dict) or not config["classes"]:
        raise ValueError(f"{source}: classes must map output channel indices to names, e.g. {{\"0\": \"background\"}}.")
    method = config.get("preprocessing", {}).get("normalize", "none")
    if method not in _NORMALIZATIONS:
        raise ValueError(f"{source}: preprocessing.normalize must be one of {_NORMALIZATIONS}, got {method!r}.")


def load_model(
    path: str | os.PathLike, *, config: dict | str | os.PathLike | None = None, device: str = "auto"
) -> LoadedModel:
    """Load a TorchScript model and its sidecar, and check the network against it.

    Parameters
    ----------
    path : str or path-like
        The TorchScript file.
    config : dict or path, optional
        The sidecar, when it is not beside the model as ``<name>.json`` or ``model.json``.
    device : str
        Where to load the network (``"auto"``: CUDA when available).

    Returns
    -------
    LoadedModel

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, a file that is not TorchScript, a sidecar missing a field, or classes that do not match the
        network's output channels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such model: {path}.")
    if not path.is_file():
        raise ValueError(f"{path} is a folder; pass the TorchScript file (.pt or .ts) with its JSON sidecar.")
    settings, source = _read_config(config, path)
    _validate(settings, source)
    device = resolve_device(device)
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript in favour of torch.export, but loading it stays supported.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
            network = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # torch raises RuntimeError or others for anything that is not TorchScript
        raise ValueError(
            f"{path} is not a TorchScript model ({error.__class__.__name__}); export the network with "
            "torch.jit.script or torch.jit.trace and save it with torch.jit.save."
        ) from error
    network.eval()
    classes = {int(k): str(v) for k, v in settings["classes"].items()}
    loaded = LoadedModel(
        network=network,
        classes=classes,
        in_channels=int(settings["in_channels"]),
        patch_size=tuple(int(p) for p in settings["patch_size"]),
        overlap=float(settings.get("overlap", 0.5)),
        blend=str(settings.get("blend", "gaussian")),
        preprocessing=dict(settings.get("preprocessing") or {}),
        path=path,
        config=settings,
    )
    with torch.inference_mode():
        probe = network(torch.zeros((1, loaded.in_channels, *loaded.patch_size), device=device))
    if probe.shape[1] != max(len(classes), 2) and not (len(classes) == 2 and probe.shape[1] == 1):
        raise ValueError(
            f"{source} lists {len(classes)} classes but the network outputs {probe.shape[1]} channels; make the "
            "classes match the network's output channels."
        )
    return loaded

