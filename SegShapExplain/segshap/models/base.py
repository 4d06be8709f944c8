"""What every model format shares: :class:`LoadedModel` (a network with its tiling and preprocessing) and the
checks and loaders the formats use (safe checkpoint loading, TorchScript loading, class names against the
network's output channels, images that must carry their geometry)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import Grid, ModelInput
from ..tiling import TilingSpec

__all__ = [
    "LoadedModel",
    "Preprocessor",
    "image_grid",
    "load_checkpoint",
    "load_torchscript",
    "output_channels",
    "check_classes",
]

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
    tiling_spec : TilingSpec
        The sliding-window settings the model is run with; ``patch_size``, ``overlap``, ``blend``,
        ``sigma_scale``, ``tiling`` (the scheme: ``"monai"`` or ``"nnunet"``) and ``folds`` read them.
    preprocessing : dict
        What the preprocessing does, as the model's files state it.
    path : pathlib.Path
        Where the model was loaded from.
    config : dict
        The sidecar, or the settings read from the bundle or nnU-Net folder.
    format : str
        One of :data:`segshap.models.MODEL_FORMATS`.
    preprocessor : callable, optional
        ``(image (C, X, Y, Z), affine) -> ModelInput``; ``None`` for a network that takes images as they come.
    """

    network: Callable[[torch.Tensor], torch.Tensor]
    classes: dict[int, str]
    in_channels: int
    tiling_spec: TilingSpec
    preprocessing: dict = field(default_factory=dict)
    path: Path | None = None
    config: dict = field(default_factory=dict)
    format: str = "torchscript"
    preprocessor: Preprocessor | None = field(default=None, repr=False)

    @property
    def patch_size(self) -> tuple[int, ...]:
        size = self.tiling_spec.patch_size
        return (size,) * 3 if isinstance(size, int) else tuple(size)

    @property
    def overlap(self) -> float | tuple[float, ...]:
        return self.tiling_spec.overlap

    @property
    def blend(self) -> str:
        return self.tiling_spec.blend

    @property
    def sigma_scale(self) -> float | tuple[float, ...]:
        return self.tiling_spec.sigma_scale

    @property
    def tiling(self) -> str:
        return self.tiling_spec.scheme

    @property
    def folds(self) -> int:
        return self.tiling_spec.folds

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
