"""What a model's files say without loading it: its format, class names, input channels and window size, read with
the standard library alone.

3D Slicer's side reads a model here before the worker's packages (torch, MONAI, nnU-Net) are installed, so that the
panel lists a model's classes on a fresh install. The loaders in :mod:`segshap.models` detect formats and read
class names through the same functions. This module imports nothing but the standard library (and ``segshap``'s
package loads its other names only when used): keep it so, ``Testing/test_model_info.py`` checks.

Where the files name no classes, :func:`read_model_info` says so instead of failing: a TorchScript file without its
JSON sidecar, and a MONAI bundle whose ``metadata.json`` has no ``channel_def`` (numbered only once it is loaded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MODEL_FORMATS",
    "TORCHSCRIPT_SUFFIXES",
    "ModelInfo",
    "read_model_info",
    "model_format",
    "read_json",
    "holds_torchscript",
    "holds_bundle",
    "holds_nnunet",
    "sidecar_candidates",
    "read_sidecar",
    "missing_sidecar",
    "torchscript_info",
    "bundle_config",
    "bundle_metadata",
    "bundle_classes",
    "bundle_in_channels",
    "NNUNET_OPTIONS",
    "nnunet_options",
    "nnunet_default_configuration",
    "nnunet_classes",
]

MODEL_FORMATS = ("torchscript", "monai_bundle", "nnunet")
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit")
_SIDECAR_FORMAT = "segshap-torchscript/1"
_SIDECAR_REQUIRED = ("in_channels", "classes", "patch_size")
_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
NNUNET_OPTIONS = {
    "folds": "all",
    "checkpoint": "checkpoint_final.pth",
    "configuration": None,
    "use_mirroring": True,
    "tile_step_size": 0.5,
}
"""nnU-Net's options (``config=`` of :func:`segshap.load_model`) and nnU-Net's defaults."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model's files say, read without loading the model.

    Attributes
    ----------
    path : pathlib.Path
    format : str
        One of :data:`MODEL_FORMATS`.
    classes : dict of int to str, or None
        Output channel to class name; ``None`` where the files name no classes (``classes_reason`` says why).
    classes_reason : str or None
        Why ``classes`` is ``None`` and how to make them known; ``None`` when they are known.
    in_channels : int or None
        The image channels the model takes; ``None`` where the files do not say.
    patch_size : tuple of int, or None
        The sliding window, where the files state it (a MONAI bundle's YAML config, or an expression, leaves it
        unknown until the bundle is loaded).
    needs_trust : bool
        Loading the model runs code from its files (a MONAI bundle): it loads only with ``trust=True``.
    """

    path: Path
    format: str
    classes: dict[int, str] | None
    classes_reason: str | None
    in_channels: int | None
    patch_size: tuple[int, ...] | None
    needs_trust: bool = False


def read_model_info(path: str | os.PathLike, config: dict | str | os.PathLike | None = None) -> ModelInfo:
    """What the files of a model in any of :data:`MODEL_FORMATS` say, without loading it.

    Parameters
    ----------
    path : str or path-like
        A TorchScript file (with its JSON sidecar), a MONAI bundle folder or an nnU-Net v2 trained-model folder.
    config : dict or path, optional
        As for :func:`segshap.load_model`: a TorchScript model's sidecar when it is not beside the file; nnU-Net's
        options (their ``configuration`` chooses the window size).

    Returns
    -------
    ModelInfo
        With ``classes`` ``None`` and the reason where the files name no classes.

    Raises
    ------
    FileNotFoundError
        When ``path`` (or a ``config`` file) does not exist.
    ValueError
        When ``path`` holds no known format, or its files are malformed (a sidecar missing a field, a region-based
        nnU-Net model...): the message says how to fix it.
    """
    path = Path(path)
    kind = model_format(path)
    if kind == "monai_bundle":
        return _bundle_info(path)
    if kind == "nnunet":
        return _nnunet_info(path, config)
    found = read_sidecar(path, config)
    if found is None:
        return ModelInfo(path, kind, None, missing_sidecar(path, "config="), None, None)
    return torchscript_info(path, *found)


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
        raise FileNotFoundError(f"No such model: {path}. Check the path: a model is a file or a folder.")
    for name, holds in (("torchscript", holds_torchscript), ("monai_bundle", holds_bundle), ("nnunet", holds_nnunet)):
        if holds(path):
            return name
    raise ValueError(
        f"{path} is not a model segshap knows. Pass a TorchScript file (.pt/.ts) with its JSON sidecar, a MONAI "
        "bundle folder (configs/inference.json or .yaml, models/model.pt or model.ts) or an nnU-Net v2 "
        "trained-model folder (dataset.json, plans.json, fold_N/checkpoint_final.pth)."
    )


def read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path`` (``what`` names the file in errors: "model config file", ...).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not valid JSON or holds something other than an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such {what}: {path}.")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The {what} {path} is not valid JSON: {error}.") from None
    if not isinstance(content, dict):
        raise ValueError(f"The {what} {path} must hold a JSON object.")
    return content


# --------------------------------------------------------------------------------------------------- TorchScript


def holds_torchscript(path: Path) -> bool:
    """Whether ``path`` is a file with a TorchScript suffix (nothing is loaded)."""
    return path.is_file() and path.suffix.lower() in TORCHSCRIPT_SUFFIXES


def sidecar_candidates(path: Path) -> tuple[Path, Path]:
    """Where a TorchScript model's sidecar may lie: ``<name>.json`` beside it, then ``model.json``."""
    return path.with_suffix(".json"), path.parent / "model.json"


def read_sidecar(path: Path, config: dict | str | os.PathLike | None) -> tuple[dict, str] | None:
    """A TorchScript model's sidecar and where it came from (named in messages): ``config`` (a dict or a JSON
    file), else the first of :func:`sidecar_candidates` that exists; ``None`` when there is none."""
    if isinstance(config, dict):
        return config, "config"
    if config is not None:
        source = Path(config)
    else:
        source = next((candidate for candidate in sidecar_candidates(path) if candidate.is_file()), None)
        if source is None:
            return None
    return read_json(source, "model config file"), str(source)


def missing_sidecar(path: Path, argument: str) -> str:
    """What to do about a TorchScript model without a sidecar; ``argument`` names the option that gives one."""
    return (
        f"No JSON sidecar for {path}: put {path.with_suffix('.json').name} or model.json beside it, or pass its "
        f"path as {argument}; it holds in_channels, classes and patch_size (see segshap.models.torchscript)."
    )


def torchscript_info(path: Path, sidecar: dict, source: str) -> ModelInfo:
    """A TorchScript model's description from its sidecar, whose required fields are checked here (``source``
    names it in errors; the preprocessing is checked by its loader)."""
    missing = [key for key in _SIDECAR_REQUIRED if key not in sidecar]
    if missing:
        raise ValueError(f"{source} misses {', '.join(missing)}; a model sidecar needs {', '.join(_SIDECAR_REQUIRED)}.")
    if sidecar.get("format", _SIDECAR_FORMAT) != _SIDECAR_FORMAT:
        raise ValueError(f"{source} has format {sidecar['format']!r}; this version reads {_SIDECAR_FORMAT!r}.")
    if not isinstance(sidecar["classes"], dict) or not sidecar["classes"]:
        raise ValueError(f'{source}: classes must map output channel indices to names, e.g. {{"0": "background"}}.')
    try:
        classes = {int(index): str(name) for index, name in sidecar["classes"].items()}
        in_channels = int(sidecar["in_channels"])
        patch_size = tuple(int(size) for size in sidecar["patch_size"])
    except (TypeError, ValueError):
        raise ValueError(
            f'{source}: classes must be keyed by channel numbers ({{"0": "background"}}), in_channels must be a '
            "number and patch_size a list of numbers ([96, 96, 96])."
        ) from None
    return ModelInfo(path, "torchscript", classes, None, in_channels, patch_size)


# --------------------------------------------------------------------------------------------------- MONAI bundles


def bundle_config(folder: Path) -> Path | None:
    """A bundle's inference config (``configs/inference.json``, ``.yaml`` or ``.yml``); ``None`` without one."""
    return next((folder / "configs" / name for name in _BUNDLE_CONFIGS if (folder / "configs" / name).is_file()), None)


def holds_bundle(path: Path) -> bool:
    """Whether ``path`` is a folder with a bundle's inference config (nothing is parsed or run)."""
    return path.is_dir() and bundle_config(path) is not None


def bundle_metadata(folder: Path) -> dict:
    """A bundle's ``configs/metadata.json``; empty when it has none."""
    path = folder / "configs" / "metadata.json"
    return read_json(path, "bundle metadata file") if path.is_file() else {}


def bundle_classes(metadata: dict) -> dict[int, str] | None:
    """The class names of the first output's ``channel_def`` in a bundle's metadata; ``None`` without one."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(outputs.values()), {}).get("channel_def") if outputs else None
    return {int(k): str(v) for k, v in channel_def.items()} if channel_def else None


def bundle_in_channels(metadata: dict) -> int:
    """The first input's ``num_channels`` in a bundle's metadata (1 when it does not say)."""
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    return int(next(iter(inputs.values()), {}).get("num_channels", 1)) if inputs else 1


def _bundle_info(folder: Path) -> ModelInfo:
    metadata = bundle_metadata(folder)
    classes = bundle_classes(metadata)
    reason = None
    if classes is None:
        reason = (
            f"{folder / 'configs' / 'metadata.json'} names no classes (network_data_format.outputs has no "
            "channel_def): they are numbered (background, class 1, ...) once the bundle is loaded, which runs its "
            'code; add a channel_def, e.g. {"0": "background", "1": "liver"}, to name them.'
        )
    return ModelInfo(folder, "monai_bundle", classes, reason, bundle_in_channels(metadata), _roi_size(folder), True)


def _roi_size(folder: Path) -> tuple[int, ...] | None:
    """The inferer's ``roi_size`` where the config states it as numbers; its loader takes the parsed value.

    Only JSON configs are read: YAML needs a package that may not be installed yet.
    """
    config = bundle_config(folder)
    if config is None or config.suffix != ".json":
        return None
    inferer = read_json(config, "bundle config file").get("inferer")
    size = inferer.get("roi_size") if isinstance(inferer, dict) else None
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size] * 3
    if not isinstance(size, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        return None  # an expression, a reference or a size taken from the image (0 or -1)
    return tuple(size)


# --------------------------------------------------------------------------------------------------- nnU-Net


def holds_nnunet(path: Path) -> bool:
    """Whether ``path`` is a folder with nnU-Net's plans and dataset description (nothing is loaded)."""
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def nnunet_options(options: dict | str | os.PathLike | None) -> dict:
    """nnU-Net's options (a dict or a JSON file) over :data:`NNUNET_OPTIONS`; an unknown one is refused."""
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        options = read_json(options, "nnU-Net options file")
    unknown = set(options) - set(NNUNET_OPTIONS)
    if unknown:
        raise ValueError(f"Unknown nnU-Net option(s) {sorted(unknown)}; known: {', '.join(NNUNET_OPTIONS)}.")
    return {**NNUNET_OPTIONS, **options}


def nnunet_default_configuration(folder: Path, plans: dict) -> str | None:
    """The configuration a model folder was trained with, from its name (``Trainer__Plans__configuration``), else
    the plans' only configuration; ``None`` when neither says."""
    parts = folder.name.split("__")
    if len(parts) == 3:
        return parts[2]
    configurations = list(plans.get("configurations", {}))
    return configurations[0] if len(configurations) == 1 else None


def nnunet_classes(dataset: dict, source: str) -> dict[int, str]:
    """Output channel to class name from nnU-Net's ``dataset.json`` (``labels``: name to label), in channel order.

    Raises
    ------
    ValueError
        When there are no labels, or they define regions (a model with sigmoid outputs per region).
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f'{source} has no labels; nnU-Net\'s dataset.json maps names to labels: "labels": {{...}}.')
    regions = [name for name, label in labels.items() if isinstance(label, list) and len(label) > 1]
    if regions:
        raise ValueError(
            f"{source} describes a region-based nnU-Net model (regions {', '.join(regions)}: sigmoid outputs per "
            "region); segshap explains models whose classes compete in a softmax."
        )
    # The ignore label marks unannotated voxels in training; the network has no output channel for it.
    classes = {
        int(label[0] if isinstance(label, list) else label): str(name)
        for name, label in labels.items()
        if name != "ignore"
    }
    return dict(sorted(classes.items()))


def _nnunet_info(folder: Path, config: dict | str | os.PathLike | None) -> ModelInfo:
    plans = read_json(folder / "plans.json", "nnU-Net plans file")
    dataset = read_json(folder / "dataset.json", "nnU-Net dataset file")
    classes = nnunet_classes(dataset, str(folder / "dataset.json"))
    channels = dataset.get("modality") or dataset.get("channel_names")  # nnU-Net reads "modality" first
    name = nnunet_options(config)["configuration"] or nnunet_default_configuration(folder, plans)
    return ModelInfo(folder, "nnunet", classes, None, len(channels) if channels else None, _patch_size(plans, name))


def _patch_size(plans: dict, name: str | None) -> tuple[int, ...] | None:
    """A configuration's patch size, through the configurations it inherits from; ``None`` where none states it."""
    configurations = plans.get("configurations", {})
    seen = set()
    while name in configurations and name not in seen:
        seen.add(name)
        if "patch_size" in configurations[name]:
            return tuple(int(size) for size in configurations[name]["patch_size"])
        name = configurations[name].get("inherits_from")
    return None
