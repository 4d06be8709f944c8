"""Models as their authors run them: the network, its sliding-window settings and its preprocessing.

:func:`segshap.loading.load_model` recognises three formats:

* **TorchScript** (a ``.pt``/``.ts`` file) with a JSON sidecar (``<name>.json`` or ``model.json`` beside it, or
  ``config=``) that says what the network expects::

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
* **MONAI bundle** folders (``configs/inference.json`` or ``.yaml``, ``models/model.pt`` or ``model.ts``): see
  :mod:`segshap.bundle`. Their configs can run code, so they load only with ``trust=True``.
* **nnU-Net v2** trained-model folders (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``): see
  :mod:`segshap.nnunet` (needs the ``nnunet`` extra).

Checkpoints are read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .geometry import INTERPOLATION_ORDERS, Grid, ModelInput, reorient, resample
from .io import read_json

__all__ = ["LoadedModel", "load_torchscript_model", "model_format", "load_checkpoint", "image_grid", "MODEL_FORMATS"]

MODEL_FORMATS = ("torchscript", "monai_bundle", "nnunet")
_SIDECAR_FORMAT = "segshap-torchscript/1"
_REQUIRED = ("in_channels", "classes", "patch_size")
_NORMALIZATIONS = ("zscore", "scale", "none")
_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")

Preprocessor = Callable[[np.ndarray, "np.ndarray | None"], ModelInput]


@dataclass
class LoadedModel:
    """A network with everything needed to run it as its authors do.

    Attributes
    ----------
    network : callable
        Maps ``(B, in_channels, *patch_size)`` to ``(B, len(classes), *patch_size)`` logits (a module in eval
        mode, or for nnU-Net the average over folds and mirrorings).
    classes : dict of int to str
        Output channel index to class name.
    in_channels : int
    patch_size : tuple of int
    overlap : float
        Overlap of neighbouring windows (for nnU-Net: ``1 - tile_step_size``).
    blend : str
        ``"gaussian"`` or ``"constant"`` (MONAI tiling; nnU-Net always blends with its own Gaussian).
    preprocessing : dict
        What the preprocessing does, as the model's files state it.
    path : pathlib.Path
        Where the model was loaded from.
    config : dict
        The sidecar, or the settings read from the bundle or nnU-Net folder.
    format : str
        One of :data:`MODEL_FORMATS`.
    tiling : str
        ``"monai"`` or ``"nnunet"``: whose sliding-window grid and fusion the model is run with.
    sigma_scale : float
        MONAI's Gaussian ``sigma_scale``.
    folds : int
        nnU-Net: how many folds' logits ``network`` returns, concatenated along channels (fused, then averaged).
    preprocessor : callable, optional
        ``(image (C, X, Y, Z), affine) -> ModelInput``; ``None`` for a network that takes images as they come.
    """

    network: Callable[[torch.Tensor], torch.Tensor]
    classes: dict[int, str]
    in_channels: int
    patch_size: tuple[int, ...]
    overlap: float | tuple[float, ...] = 0.5
    blend: str = "gaussian"
    preprocessing: dict = field(default_factory=dict)
    path: Path | None = None
    config: dict = field(default_factory=dict)
    format: str = "torchscript"
    tiling: str = "monai"
    sigma_scale: float | tuple[float, ...] = 0.125
    folds: int = 1
    preprocessor: Preprocessor | None = field(default=None, repr=False)

    @property
    def tiling_options(self) -> dict:
        """The sliding-window settings, as keyword arguments of :class:`segshap.PatchEngine`."""
        return {
            "tiling": self.tiling,
            "patch_size": self.patch_size,
            "overlap": self.overlap,
            "blend": self.blend,
            "sigma_scale": self.sigma_scale,
            "folds": self.folds,
        }

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

    def preprocess(self, image: np.ndarray, affine: np.ndarray | None = None) -> ModelInput:
        """The network's input on the model's grid, from an image as read from disk.

        Parameters
        ----------
        image : np.ndarray
            ``(X, Y, Z)``, or ``(X, Y, Z, C)`` as NIfTI stores channels. It is not modified.
        affine : np.ndarray, optional
            The image's voxel-to-RAS affine. Without it a TorchScript model takes the image to lie on its grid
            already; MONAI bundles and nnU-Net, whose preprocessing works from the image's geometry, need it.

        Returns
        -------
        ModelInput
            ``image`` (``(C, X', Y', Z')`` float32), the model grid and the image's own grid.
        """
        data = np.asarray(image)
        if data.ndim == 3:
            data = data[None]
        elif data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        else:
            raise ValueError(f"The image must be 3D, or 3D with channels last; got shape {data.shape}.")
        if data.shape[0] != self.in_channels:
            raise ValueError(
                f"The model expects {self.in_channels} channel(s) but the image has {data.shape[0]} "
                f"(shape {tuple(np.shape(image))}); pass an image with {self.in_channels} channel(s)."
            )
        data = data.astype(np.float32)  # a copy: the caller's image stays as it was
        if not np.isfinite(data).all():
            raise ValueError("The image contains NaN or infinite voxels; replace them before explaining.")
        if self.preprocessor is None:
            return ModelInput.unchanged(data, affine)
        return self.preprocessor(data, affine)


def image_grid(data: np.ndarray, affine: np.ndarray | None, preprocessing: str) -> Grid:
    """The grid of an image whose ``preprocessing`` works from its geometry; a clear error without an affine."""
    if affine is None:
        raise ValueError(
            f"{preprocessing} works from the image's geometry (spacing, orientation): pass the image's affine "
            "(affine=, as segshap.io.read_image returns it)."
        )
    return Grid(data.shape[1:], affine)


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


def model_format(path: str | os.PathLike) -> str:
    """Which of :data:`MODEL_FORMATS` ``path`` holds, from its files alone (nothing is loaded or run).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When it is none of the formats; the message lists what each needs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such model: {path}.")
    if path.is_file():
        if path.suffix.lower() in (".pt", ".ts", ".pth", ".jit"):
            return "torchscript"
    elif any((path / "configs" / name).is_file() for name in _BUNDLE_CONFIGS):
        return "monai_bundle"
    elif (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return "nnunet"
    raise ValueError(
        f"{path} is not a model segshap knows. Pass a TorchScript file (.pt/.ts) with its JSON sidecar, a MONAI "
        "bundle folder (configs/inference.json or .yaml, models/model.pt or model.ts) or an nnU-Net v2 "
        "trained-model folder (dataset.json, plans.json, fold_N/checkpoint_final.pth)."
    )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint read with ``torch.load(weights_only=True)``: tensors, containers, numbers and strings only.

    NumPy scalars and dtypes, which training loops often store in their logs, are allowed too; nothing that
    would run code while unpickling is.
    """
    numpy_types = [np.dtype, *{type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}]
    numpy_scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    # Checkpoints pickled under NumPy 1.x name the scalar constructor by its old module path.
    allowed = [numpy_scalar, (numpy_scalar, "numpy.core.multiarray.scalar"), *numpy_types]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location=device, weights_only=True)
    except Exception as error:  # UnpicklingError for refused content, RuntimeError/EOFError for damaged files
        raise ValueError(
            f"Cannot load the checkpoint {path} safely: {str(error).splitlines()[0]}. segshap reads checkpoints "
            "with torch.load(weights_only=True) (tensors, dicts, lists, numbers, strings); re-save it as a plain "
            "state dict (torch.save(model.state_dict(), path))."
        ) from error


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
    return read_json(source, "model config file"), str(source)


def _validate(config: dict, source: str) -> None:
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise ValueError(f"{source} misses {', '.join(missing)}; a model sidecar needs {', '.join(_REQUIRED)}.")
    if config.get("format", _SIDECAR_FORMAT) != _SIDECAR_FORMAT:
        raise ValueError(f"{source} has format {config['format']!r}; this version reads {_SIDECAR_FORMAT!r}.")
    if not isinstance(config["classes"], dict) or not config["classes"]:
        raise ValueError(f'{source}: classes must map output channel indices to names, e.g. {{"0": "background"}}.')
    preprocessing = config.get("preprocessing") or {}
    method = preprocessing.get("normalize", "none")
    if method not in _NORMALIZATIONS:
        raise ValueError(f"{source}: preprocessing.normalize must be one of {_NORMALIZATIONS}, got {method!r}.")
    interpolation = preprocessing.get("interpolation", "linear")
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(
            f"{source}: preprocessing.interpolation must be one of {tuple(INTERPOLATION_ORDERS)}, "
            f"got {interpolation!r}."
        )


def load_torchscript(path: Path, *, device: torch.device) -> torch.nn.Module:
    """A TorchScript network from ``path``, in eval mode on ``device``; a clear error for anything else."""
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript in favour of torch.export, but loading it stays supported.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
            network = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # torch raises RuntimeError or others for anything that is not TorchScript
        raise ValueError(
            f"{path} is not a TorchScript model ({error.__class__.__name__}); export the network with "
            "torch.jit.script or torch.jit.trace and save it with torch.jit.save (a state dict needs the "
            "network's code: package it as a MONAI bundle)."
        ) from error
    return network.eval()


def output_channels(network, in_channels: int, patch_size: tuple[int, ...], device: torch.device) -> int:
    """How many channels ``network`` outputs, from one run on a window of zeros."""
    with torch.inference_mode():
        return int(network(torch.zeros((1, in_channels, *patch_size), device=device)).shape[1])


def check_classes(classes: dict[int, str], channels: int, source: str) -> None:
    """Refuse class names that do not match the network's output channels (one channel: sigmoid, two classes)."""
    if channels != max(len(classes), 2) and not (len(classes) == 2 and channels == 1):
        raise ValueError(
            f"{source} lists {len(classes)} classes but the network outputs {channels} channels; make the classes "
            "match the network's output channels."
        )


def load_torchscript_model(path: Path, config: dict | str | os.PathLike | None, device: torch.device) -> LoadedModel:
    """A TorchScript network with its JSON sidecar (``config``, or found beside ``path``) as a :class:`LoadedModel`;
    see the module's description for the sidecar's fields."""
    settings, source = _read_config(config, path)
    _validate(settings, source)
    preprocessing = dict(settings.get("preprocessing") or {})
    loaded = LoadedModel(
        network=load_torchscript(path, device=device),
        classes={int(k): str(v) for k, v in settings["classes"].items()},
        in_channels=int(settings["in_channels"]),
        patch_size=tuple(int(p) for p in settings["patch_size"]),
        overlap=float(settings.get("overlap", 0.5)),
        blend=str(settings.get("blend", "gaussian")),
        preprocessing=preprocessing,
        path=path,
        config=settings,
        sigma_scale=float(settings.get("sigma_scale", 0.125)),
        preprocessor=functools.partial(sidecar_preprocess, settings=preprocessing),
    )
    check_classes(
        loaded.classes, output_channels(loaded.network, loaded.in_channels, loaded.patch_size, device), source
    )
    return loaded
