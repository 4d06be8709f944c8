"""Full sliding-window inference: a model's segmentation of an image (:func:`predict`), and the blended labels
the engine starts from when no reference is given (:func:`predict_labels`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .geometry import ModelInput
from .inputs import as_image, resolve_device
from .models import LoadedModel
from .tiling import Tiling, TilingSpec, box_slices
from .values import class_probabilities

__all__ = ["predict", "predict_labels", "prepare", "require_predicted", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 4
"""Windows per forward pass, unless told otherwise (the engine, :func:`predict`, the CLI and the worker)."""


def predict(
    model: LoadedModel | torch.nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    affine: np.ndarray | None = None,
    **tiling,
) -> np.ndarray:
    """The model's segmentation of an image: full sliding-window inference, then argmax over classes.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        With a :class:`LoadedModel` the image is preprocessed as it says and its tiling is used; a bare network
        takes the image as it is and ``patch_size`` (and optionally ``overlap``, ``blend``, ``sigma_scale``,
        ``tiling``; see :class:`~segshap.tiling.TilingSpec`).
    image : np.ndarray
        The image (see :meth:`LoadedModel.preprocess`, or ``(X, Y, Z)``/``(C, X, Y, Z)`` for a bare network).
    device, batch_size
        Where and how many windows at a time the network runs.
    affine : np.ndarray, optional
        The image's voxel-to-RAS affine, for a model that reorients or resamples.

    Returns
    -------
    np.ndarray
        ``(X, Y, Z)`` int16 label map on the image's grid.
    """
    network, prepared, spec = prepare(model, image, affine, tiling)
    if tiling:
        raise ValueError(f"Unknown option(s) {sorted(tiling)}; predict takes {', '.join(TilingSpec.KEYWORDS)}.")
    labels = model_labels(network, prepared.image, spec, resolve_device(device), batch_size)
    return prepared.to_image_grid(labels)


def prepare(model, image: np.ndarray, affine: np.ndarray | None, options: dict) -> tuple:
    """The network, the image as its :class:`ModelInput`, and the :class:`TilingSpec` to run it with: the
    model's, with the settings named in ``options`` (taken out of it) in their place.
    """
    if isinstance(model, LoadedModel):
        base = model.tiling_spec
        prepared = model.preprocess(image, affine)
        network = model.network
    else:
        if not callable(model):
            raise ValueError(
                f"model must be a LoadedModel (segshap.load_model) or a torch.nn.Module, got {type(model).__name__}."
            )
        base = None
        prepared = ModelInput.unchanged(as_image(image), affine)
        network = model
    return network, prepared, TilingSpec.pop_from(options, base)


def require_predicted(labels: np.ndarray, targets, names=None) -> None:
    """Refuse a target the model predicts nowhere: with no reference given there is no segment to explain."""
    for t, name in zip(targets, names or [None] * len(targets)):
        if not (labels == t).any():
            raise ValueError(
                f"The model predicts no voxel of {f'{name} (class {t})' if name else f'class {t}'} on this image, so "
                "there is no segment to explain; pass a reference segmentation of it (reference=) or choose another "
                "target."
            )


def model_labels(network, x: np.ndarray, spec: TilingSpec, device: torch.device, batch_size: int) -> np.ndarray:
    """:func:`predict_labels` of a network (moved to ``device``) over ``x`` (``(C, X, Y, Z)``) tiled by ``spec``."""
    if isinstance(network, torch.nn.Module):
        network = network.to(device)
    return predict_labels(lambda batch: network(batch).float(), x, spec.over(x.shape[1:]), device, batch_size)


@torch.inference_mode()
def predict_labels(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    tiling: Tiling,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """Full sliding-window inference of ``image`` (``(C, X, Y, Z)``), then the most probable class of each voxel.

    Windows are blended in ``tiling``'s order with its weights, as ``sliding_window_inference`` does; ``forward``
    maps a batch of windows to float logits. Returns an ``(X, Y, Z)`` int16 label map.
    """
    importance = tiling.importance_map(device)
    padded = torch.from_numpy(tiling.pad(image)).to(device)
    logits = None
    weight = torch.zeros(tiling.padded_shape, dtype=tiling.accumulation_dtype, device=device)
    for first in range(0, tiling.n_windows, batch_size):
        boxes = [tiling.window_box(w) for w in range(first, min(first + batch_size, tiling.n_windows))]
        out = forward(torch.stack([padded[(slice(None), *box_slices(box))] for box in boxes])) * importance
        if logits is None:
            logits = torch.zeros((out.shape[1], *tiling.padded_shape), dtype=tiling.accumulation_dtype, device=device)
        for window_out, box in zip(out, boxes):
            logits[(slice(None), *box_slices(box))] += window_out
            weight[box_slices(box)] += importance
    unpadded = tuple(slice(b, b + s) for b, s in zip(tiling.pad_before, tiling.image_shape))
    label = class_probabilities(tiling.fuse(logits, weight, channel_axis=0)[None])[0].argmax(dim=0)[unpadded]
    return label.cpu().numpy().astype(np.int16)
