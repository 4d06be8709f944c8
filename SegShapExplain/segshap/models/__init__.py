"""Models as their authors run them: the network, its sliding-window settings and its preprocessing.

:func:`load_model` recognises three formats from their files (:func:`model_format`, in :mod:`segshap.modelinfo`,
which reads what the files say with the standard library alone), each loaded by a module of its own that imports
only :mod:`.base` (and :mod:`segshap.modelinfo`):

* **TorchScript** (a ``.pt``/``.ts`` file) with a JSON sidecar that says what the network expects: see
  :mod:`segshap.models.torchscript`;
* **MONAI bundle** folders (``configs/inference.json`` or ``.yaml``, ``models/model.pt`` or ``model.ts``): see
  :mod:`segshap.models.bundle`. Their configs can run code, so they load only with ``trust=True``;
* **nnU-Net v2** trained-model folders (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``): see
  :mod:`segshap.models.nnunet` (needs the ``nnunet`` extra).

A new format is a ``holds_<format>(path)`` test and the reading of its class names in :mod:`segshap.modelinfo`
(listed in :data:`MODEL_FORMATS` and :func:`model_format` there), and a module here with a loader returning a
:class:`LoadedModel`, called from :func:`load_model`. Checkpoints are read with
``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..inputs import resolve_device
from ..modelinfo import MODEL_FORMATS, model_format
from .base import LoadedModel
from .bundle import load_bundle
from .nnunet import load_nnunet
from .torchscript import load_torchscript_model

__all__ = ["load_model", "model_format", "LoadedModel", "MODEL_FORMATS"]


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
