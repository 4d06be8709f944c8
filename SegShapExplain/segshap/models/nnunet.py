"""nnU-Net v2 trained-model folders, run as nnU-Net's own predictor runs them.

A folder such as ``Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres`` holds ``dataset.json``,
``plans.json`` and ``fold_N/checkpoint_final.pth``. :func:`load_nnunet` builds the configuration's network with
nnU-Net's own code (``nnunetv2``, the ``nnunet`` extra), loads every requested fold's weights with
``torch.load(weights_only=True)``, and reproduces the predictor:

* preprocessing is nnU-Net's (``DefaultPreprocessor.run_case_npy``: transpose, crop to the non-zero box,
  normalise, resample), fed the way its image readers feed it (axes reversed, as SimpleITK and nibabel readers
  give them; reoriented to RAS first for ``NibabelIOWithReorient``); the preprocessed grid's affine is composed
  from those steps so outputs map back onto the image by nearest neighbour;
* each window runs through every fold with nnU-Net's mirroring (the mean over the identity and all flips of the
  allowed axes), and the folds' logits are fused separately with nnU-Net's Gaussian, summed in float16, and
  averaged after fusion (see :func:`segshap.tiling.nnunet_tiling`), so values equal those computed from
  ``nnUNetPredictor.predict_logits_from_preprocessed_data`` on the perturbed preprocessed image.

Options (``config=`` of :func:`segshap.load_model`, a dict or a JSON file): ``folds`` (list of fold numbers or
``"all"``: every ``fold_N`` with the checkpoint, the default), ``checkpoint`` (``"checkpoint_final.pth"``),
``configuration`` (default from the folder name ``Trainer__Plans__configuration``), ``use_mirroring`` (True) and
``tile_step_size`` (0.5), with nnU-Net's defaults.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch

from ..geometry import Grid, ModelInput, reorient
from ..inputs import ArgumentError
from ..modelinfo import NNUNET_OPTIONS, nnunet_classes, nnunet_default_configuration, nnunet_options, read_json
from ..tiling import TilingSpec
from .base import LoadedModel, check_classes, image_grid, load_checkpoint

__all__ = ["load_nnunet", "NNUNET_OPTIONS"]

_READERS_REVERSING_AXES = ("SimpleITKIO", "NibabelIO")
_READERS_REORIENTING = ("NibabelIOWithReorient",)


def _import_nnunet():
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # otherwise importing runs `hostname` to pick a default
    try:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as error:
        raise ValueError(
            "This is an nnU-Net v2 model folder, which needs nnunetv2: install segshap's nnunet extra "
            "(see the README, 'Bring your own model')."
        ) from error
    return nnUNetTrainer, determine_num_input_channels, PlansManager


def _configuration(folder: Path, plans: dict, requested: str | None) -> str:
    available = sorted(plans.get("configurations", {}))
    if requested is None:
        requested = nnunet_default_configuration(folder, plans)
    if requested not in available:
        raise ArgumentError(
            "config",
            f"{folder / 'plans.json'} has no configuration {requested!r}; it has {', '.join(available)}. Name the one "
            'the model was trained with in {argument}, e.g. {"configuration": "3d_fullres"}.',
        )
    return requested


def _fold_checkpoints(folder: Path, folds, checkpoint: str) -> dict[str, Path]:
    present = sorted(p.parent.name[len("fold_") :] for p in folder.glob(f"fold_*/{checkpoint}"))
    if folds == "all":
        if not present:
            raise ValueError(f"{folder} has no fold_N/{checkpoint}; train or copy at least one fold.")
        folds = present
    wanted = [str(f) for f in folds]
    missing = [f for f in wanted if f not in present]
    if missing:
        raise ArgumentError(
            "config",
            f"{folder} has no fold_{missing[0]}/{checkpoint}; its folds with that checkpoint are "
            f'{", ".join(present) or "none"}. Pass folds from those in {{argument}}, e.g. {{"folds": [0]}}.',
        )
    return {f: folder / f"fold_{f}" / checkpoint for f in wanted}


class FoldEnsemble(torch.nn.Module):
    """Every fold's logits for a batch of windows, concatenated along channels, each averaged over mirrorings.

    The mirrored average is nnU-Net's: the identity, then every combination of the allowed axes in
    ``itertools.combinations`` order, summed in that order and divided by their number. On CUDA the networks run
    under float16 autocast, as nnU-Net's predictor runs them there.
    """

    def __init__(self, networks: list[torch.nn.Module], mirror_axes: tuple[int, ...] | None) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        axes = [a + 2 for a in (mirror_axes or ())]
        self.flips = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nnU-Net's predictor runs the network under float16 autocast on CUDA (and without it elsewhere).
        with torch.autocast("cuda", enabled=x.is_cuda):
            return torch.cat([self._mirrored(network, x) for network in self.networks], dim=1)

    def _mirrored(self, network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        prediction = network(x)
        if self.flips:
            for axes in self.flips:
                prediction += torch.flip(network(torch.flip(x, axes)), axes)
            prediction /= len(self.flips) + 1
        return prediction


class NnUNetPreprocessor:
    """nnU-Net's preprocessing of an image with its affine, and the affine of the grid it ends on."""

    def __init__(self, plans_manager, configuration_manager, dataset_json: dict, reader: str) -> None:
        self.plans_manager, self.configuration_manager = plans_manager, configuration_manager
        self.dataset_json, self.reader = dataset_json, reader

    def __call__(self, data: np.ndarray, affine: np.ndarray | None) -> ModelInput:
        source = image_grid(data, affine, "nnU-Net's preprocessing")
        grid_affine = source.affine
        if self.reader in _READERS_REORIENTING:
            data, grid_affine = reorient(data, grid_affine, "RAS")
        # nnU-Net's readers hand over (C, z, y, x) with the spacing reversed.
        reversed_data = np.ascontiguousarray(data.transpose(0, 3, 2, 1), dtype=np.float32)
        spacing = list(Grid(data.shape[1:], grid_affine).spacing)[::-1]
        properties = {"spacing": spacing}
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        array, _, properties = preprocessor.run_case_npy(
            reversed_data, None, properties, self.plans_manager, self.configuration_manager, self.dataset_json
        )
        array = np.ascontiguousarray(array, dtype=np.float32)
        model_to_image = _voxel_map(array.shape[1:], properties, self.plans_manager.transpose_forward)
        return ModelInput(array, Grid(array.shape[1:], grid_affine @ model_to_image), source)


def _voxel_map(shape: tuple[int, ...], properties: dict, transpose_forward) -> np.ndarray:
    """``4 x 4`` map from preprocessed voxels to the (reoriented) image's voxels.

    Undoes, in reverse order: the resampling (edge-aligned, as skimage's ``resize`` maps ``o -> (o + 0.5) * in /
    out - 0.5``), the crop to the non-zero box, ``transpose_forward`` and the readers' axis reversal.
    """
    cropped = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    scale = cropped / np.asarray(shape, dtype=np.float64)
    resampling = np.eye(4)
    resampling[:3, :3] = np.diag(scale)
    resampling[:3, 3] = 0.5 * scale - 0.5
    crop = np.eye(4)
    crop[:3, 3] = [low for low, _ in properties["bbox_used_for_cropping"]]
    transpose = np.zeros((4, 4))
    transpose[3, 3] = 1
    for axis, source_axis in enumerate(transpose_forward):
        transpose[source_axis, axis] = 1
    reverse = np.zeros((4, 4))
    reverse[3, 3] = 1
    for axis in range(3):
        reverse[2 - axis, axis] = 1
    return reverse @ transpose @ crop @ resampling


def load_nnunet(folder: Path, *, options=None, device: torch.device) -> LoadedModel:
    """Load an nnU-Net v2 trained-model folder (see the module's docstring).

    Parameters
    ----------
    folder : pathlib.Path
        The folder holding ``dataset.json``, ``plans.json`` and ``fold_N/``.
    options : dict or path, optional
        :data:`NNUNET_OPTIONS` to change.
    device : torch.device

    Returns
    -------
    LoadedModel
    """
    nnUNetTrainer, determine_num_input_channels, PlansManager = _import_nnunet()
    settings = nnunet_options(options)
    plans = read_json(folder / "plans.json", "nnU-Net plans file")
    dataset_json = read_json(folder / "dataset.json", "nnU-Net dataset file")
    configuration = _configuration(folder, plans, settings["configuration"])
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    if len(configuration_manager.patch_size) != 3:
        raise ValueError(f"The configuration {configuration!r} is 2D; segshap explains 3D models (use 3d_fullres).")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in _READERS_REVERSING_AXES + _READERS_REORIENTING:
        raise ValueError(
            f"{folder / 'plans.json'} reads images with {reader}; segshap reproduces SimpleITKIO, NibabelIO and "
            "NibabelIOWithReorient."
        )
    classes = nnunet_classes(dataset_json, str(folder / "dataset.json"))  # refuses region-based models
    label_manager = plans_manager.get_label_manager(dataset_json)
    in_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    checkpoints = _fold_checkpoints(folder, settings["folds"], settings["checkpoint"])
    networks, mirror_axes = [], None
    for path in checkpoints.values():
        checkpoint = load_checkpoint(path, "cpu")
        if "network_weights" not in checkpoint:
            raise ValueError(f"{path} has no network_weights: it is not an nnU-Net checkpoint.")
        network = nnUNetTrainer.build_network_architecture(
            plans_manager,
            configuration_manager,
            in_channels,
            label_manager.num_segmentation_heads,
            enable_deep_supervision=False,
        )
        try:
            network.load_state_dict(checkpoint["network_weights"])
        except RuntimeError as error:
            trainer = checkpoint.get("trainer_name", "nnUNetTrainer")
            raise ValueError(
                f"{path} does not fit the network {folder / 'plans.json'} describes ({error}). segshap builds the "
                f"network as nnUNetTrainer does; the checkpoint was trained by {trainer}, which may build another."
            ) from error
        networks.append(network.to(device).eval())
        if not networks[1:]:  # nnU-Net takes the mirroring axes from the first fold's checkpoint
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    if not settings["use_mirroring"]:
        mirror_axes = None
    check_classes(classes, label_manager.num_segmentation_heads, str(folder / "dataset.json"))
    step = float(settings["tile_step_size"])
    return LoadedModel(
        network=FoldEnsemble(networks, None if mirror_axes is None else tuple(mirror_axes)).eval(),
        classes=classes,
        in_channels=in_channels,
        tiling_spec=TilingSpec(
            patch_size=tuple(int(p) for p in configuration_manager.patch_size),
            overlap=1.0 - step,
            blend="nnunet",
            scheme="nnunet",
            folds=len(networks),
        ),
        preprocessing={
            "reader": reader,
            "spacing": list(configuration_manager.spacing),
            "normalization": list(configuration_manager.normalization_schemes),
            "transpose_forward": list(plans_manager.transpose_forward),
        },
        path=folder,
        config={**settings, "configuration": configuration, "folds": list(checkpoints), "mirror_axes": mirror_axes},
        format="nnunet",
        preprocessor=NnUNetPreprocessor(plans_manager, configuration_manager, dataset_json, reader),
    )
