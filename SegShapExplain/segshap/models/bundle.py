"""MONAI bundles: the network, preprocessing and sliding-window settings from the bundle's own config.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and the weights,
``models/model.pt`` (a state dict for the config's ``network_def``) or ``models/model.ts`` (TorchScript). The
config is parsed by ``monai.bundle.ConfigParser``, which evaluates the Python expressions and instantiates the
classes it names: loading a bundle runs code from it, so :func:`load_bundle` refuses unless ``trust=True``.

What is taken from the config:

* ``preprocessing``: the transforms are run as the bundle defines them, except its image-loading transforms
  (``LoadImage``/``LoadImaged``), replaced by the ``MetaTensor`` they would return (its affine, channels last,
  ``as_closest_canonical`` and ``ensure_channel_first`` honoured), so orientation, spacing and cropping
  transforms place the image on the model's grid and report that grid's affine;
* ``inferer``: a ``SlidingWindowInferer``; its ``roi_size``, ``overlap``, ``mode`` and ``sigma_scale`` become the
  tiling (the engine pads with zeros, as the default ``padding_mode="constant"``, ``cval=0`` does);
* ``network_def`` and the weights; class names from ``metadata.json``
  (``network_data_format.outputs.pred.channel_def``).

Postprocessing is not used: the engine applies softmax over the blended logits itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry import Grid, ModelInput, reorient
from ..inputs import ArgumentError
from ..modelinfo import bundle_classes, bundle_config, bundle_in_channels, bundle_metadata
from ..tiling import TilingSpec
from .base import LoadedModel, check_classes, image_grid, load_checkpoint, load_torchscript, output_channels

__all__ = ["load_bundle"]

_WEIGHT_NAMES = ("model.pt", "model.ts")


def _config_file(folder: Path) -> Path:
    config = bundle_config(folder)
    if config is None:
        raise ValueError(f"{folder} has no configs/inference.json or configs/inference.yaml: it is not a MONAI bundle.")
    return config


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_NAMES:
        if (folder / "models" / name).is_file():
            return folder / "models" / name
    raise ValueError(
        f"The bundle {folder} has no weights: put them in models/model.pt (a state dict) or models/model.ts."
    )


def _parsed(parser, key: str, folder: Path, config: Path):
    if key not in parser:
        return None
    try:
        return parser.get_parsed_content(key)
    except Exception as error:  # the bundle's own code failed: report which part, with its message
        raise ValueError(f"The bundle {folder} failed to build {key!r} from {config.name}: {error}") from error


def _state_dict(checkpoint: dict, path: Path) -> dict:
    """The network's weights: a plain state dict, or one under ``"model"``/``"state_dict"`` as trainers save."""
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    for key in ("model", "state_dict", "network"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    raise ValueError(f"{path} holds no state dict (keys: {sorted(checkpoint)[:8]}); save model.state_dict() there.")


def _image_key(transforms) -> str:
    for transform in transforms:
        if type(transform).__name__ == "LoadImaged":
            return transform.keys[0]
    return "image"


def _setting(value) -> float | tuple[float, ...]:
    """A per-axis inferer setting as one number when all axes agree."""
    values = tuple(float(v) for v in np.ravel(value))
    return values[0] if len(set(values)) == 1 else values


class _BundlePreprocessor:
    """A bundle's preprocessing on an image with its affine: its loader replaced by what the loader would return.

    MONAI's NIfTI reader returns the spatial axes first and channels last (none for one channel), the affine in
    RAS, reoriented to the closest canonical orientation when asked (``as_closest_canonical``), and moves
    channels first when asked (``ensure_channel_first``); the bundle's other transforms then run as written.
    """

    def __init__(self, transforms, key: str, loader) -> None:
        self.transforms, self.key = transforms, key
        load_image = getattr(loader, "_loader", loader)
        self.ensure_channel_first = bool(getattr(load_image, "ensure_channel_first", False))
        readers = getattr(load_image, "readers", [])
        self.canonical = any(getattr(reader, "as_closest_canonical", False) for reader in readers)

    def __call__(self, data: np.ndarray, affine: np.ndarray | None) -> ModelInput:
        from monai.data import MetaTensor
        from monai.transforms import Compose, EnsureChannelFirst

        source = image_grid(data, affine, "A MONAI bundle's preprocessing")
        loaded_affine = source.affine
        if self.canonical:
            data, loaded_affine = reorient(data, loaded_affine, "RAS")
        single = data.shape[0] == 1
        array = np.ascontiguousarray(data[0] if single else np.moveaxis(data, 0, -1))
        image = MetaTensor(
            torch.from_numpy(array),
            affine=torch.as_tensor(loaded_affine, dtype=torch.float64),
            meta={
                "original_channel_dim": "no_channel" if single else -1,
                "space": "RAS",
                "original_affine": source.affine.copy(),
                "spatial_shape": np.asarray(data.shape[1:]),
                "filename_or_obj": "image",
            },
        )
        if self.ensure_channel_first:
            image = EnsureChannelFirst()(image)
        try:
            out = Compose(self.transforms, map_items=False)({self.key: image})[self.key]
        except Exception as error:  # the bundle's own transforms: say which failed, in one line
            message = str(error).strip().splitlines()
            raise ValueError(
                f"The bundle's preprocessing failed on this image: {message[0] if message else type(error).__name__}"
            ) from error
        result = np.ascontiguousarray(out.detach().cpu().numpy(), dtype=np.float32)
        grid_affine = out.affine.detach().cpu().numpy() if isinstance(out, MetaTensor) else loaded_affine
        return ModelInput(result, Grid(result.shape[1:], grid_affine), source)


def load_bundle(folder: Path, *, trust: bool, device: torch.device) -> LoadedModel:
    """Load a MONAI bundle folder (see the module's docstring).

    Parameters
    ----------
    folder : pathlib.Path
        The bundle's root folder.
    trust : bool
        Must be True: parsing the config runs code from the bundle.
    device : torch.device

    Returns
    -------
    LoadedModel
    """
    config = _config_file(folder)
    if not trust:
        raise ArgumentError(
            "trust",
            f"{folder} is a MONAI bundle. Its config ({config.relative_to(folder)}) can run arbitrary Python code "
            "when it is loaded, so segshap loads bundles only from sources you trust: pass {argument} for one you "
            "trust.",
            spelling="trust=True",
        )
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    metadata = bundle_metadata(folder)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device({str(device)!r})"

    inferer = _parsed(parser, "inferer", folder, config)
    if not isinstance(inferer, SlidingWindowInferer):
        found = "no 'inferer'" if inferer is None else f"a {type(inferer).__name__}"
        raise ValueError(
            f"The bundle {folder} defines {found} in {config.name}; segshap explains sliding-window inference: "
            "its config needs an 'inferer' that is a monai.inferers.SlidingWindowInferer."
        )
    if inferer.padding_mode != "constant" or float(inferer.cval) != 0.0 or inferer.roi_weight_map is not None:
        raise ValueError(
            f"The bundle's inferer pads with {inferer.padding_mode!r} (cval {inferer.cval}) or sets a custom weight "
            "map; segshap reproduces the default zero padding and MONAI's importance maps only."
        )
    roi_size = tuple(int(r) for r in np.broadcast_to(inferer.roi_size, (3,)))
    if min(roi_size) < 1:
        raise ValueError(f"The bundle's inferer has roi_size {inferer.roi_size}; segshap needs a fixed window size.")

    weights = _weights_file(folder)
    if weights.suffix == ".ts":
        network = load_torchscript(weights, device=device)
    else:
        network = _parsed(parser, "network_def", folder, config)
        if network is None:
            raise ValueError(f"The bundle {folder} has models/model.pt but no 'network_def' in {config.name}.")
        try:
            network.load_state_dict(_state_dict(load_checkpoint(weights, device), weights))
        except RuntimeError as error:
            raise ValueError(f"{weights} does not fit the bundle's network_def: {error}") from error
        network = network.to(device).eval()

    preprocessing = _parsed(parser, "preprocessing", folder, config)
    transforms = [] if preprocessing is None else list(getattr(preprocessing, "transforms", [preprocessing]))
    key = _image_key(transforms)
    loaders = [t for t in transforms if type(t).__name__ in ("LoadImaged", "LoadImage")]
    transforms = [t for t in transforms if t not in loaders]
    in_channels = bundle_in_channels(metadata)
    channels = output_channels(network, in_channels, roi_size, device)
    classes = bundle_classes(metadata)
    if classes is None:
        classes = {i: ("background" if i == 0 else f"class {i}") for i in range(max(channels, 2))}
    check_classes(classes, channels, str(folder / "configs" / "metadata.json"))
    return LoadedModel(
        network=network,
        classes=classes,
        in_channels=in_channels,
        tiling_spec=TilingSpec(
            patch_size=roi_size,
            overlap=_setting(inferer.overlap),
            blend=str(inferer.mode.value if hasattr(inferer.mode, "value") else inferer.mode),
            sigma_scale=_setting(inferer.sigma_scale),
        ),
        preprocessing={"transforms": [type(t).__name__ for t in transforms]},
        path=folder,
        config={"config": str(config), "weights": str(weights), "metadata": metadata},
        format="monai_bundle",
        preprocessor=_BundlePreprocessor(transforms, key, loaders[0] if loaders else None),
    )
