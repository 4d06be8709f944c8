"""One entry point for models in any format: :func:`load_model` detects the format from the files and hands over
to the loader of :mod:`segshap.models` (TorchScript with a sidecar), :mod:`segshap.bundle` (MONAI bundles) or
:mod:`segshap.nnunet` (nnU-Net v2 folders). It sits above them, so none of them imports another's caller."""

from __future__ import annotations

import os
from pathlib import Path

from .bundle import load_bundle
from .inputs import resolve_device
from .models import MODEL_FORMATS, LoadedModel, load_torchscript_model, model_format
from .nnunet import load_nnunet

__all__ = ["load_model", "MODEL_FORMATS"]


def load_model(
    path: str | os.PathLike,
    *,
    config: dict | str | os.PathLike | None = None,
    trust: bool = False,
    device: str = "auto",
) -> LoadedModel:
    """Load a model in any of :data:`MODEL_FORMATS`, detected from its files.

    Parameters
    ----------
    path : str or path-like
        A TorchScript file (with its JSON sidecar), a MONAI bundle folder or an nnU-Net v2 trained-model folder.
    config : dict or path, optional
        TorchScript: the sidecar, when it is not beside the model as ``<name>.json`` or ``model.json``.
        nnU-Net: options (``folds``, ``checkpoint``, ``configuration``, ``use_mirroring``, ``tile_step_size``).
    trust : bool
        Allow loading a MONAI bundle, whose config can run arbitrary Python code. Only for bundles whose source
        you trust.
    device : str
        Where to load the network (``"auto"``: CUDA when available).

    Returns
    -------
    LoadedModel

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, an unknown format, a sidecar missing a field, classes that do not match the network's
        output channels, an untrusted bundle, a missing fold... each with what to do about it.
    """
    path = Path(path)
    kind = model_format(path)
    device = resolve_device(device)
    if kind == "monai_bundle":
        return load_bundle(path, trust=trust, device=device)
    if kind == "nnunet":
        return load_nnunet(path, options=config, device=device)
    return load_torchscript_model(path, config, device)
