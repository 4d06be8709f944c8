"""Small randomly initialised nnU-Net v2 trained-model folders, built with nnU-Net's own network code.

The folder has what ``nnUNetPredictor.initialize_from_trained_model_folder`` reads: ``dataset.json``, ``plans.json``
(a ``3d_fullres`` configuration in the format nnunetv2 2.x plans it) and ``fold_N/checkpoint_final.pth`` with the
keys ``nnUNetTrainer.save_checkpoint`` writes, including NumPy scalars in its log as real training leaves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONFIGURATION = "3d_fullres"
FOLDER_NAME = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
LABELS = {"background": 0, "gray_matter": 1, "white_matter": 2}


def plans(
    patch_size=(32, 32, 32),
    spacing=(2.0, 2.0, 2.0),
    transpose_forward=(0, 1, 2),
    reader="SimpleITKIO",
    normalization="ZScoreNormalization",
    features=(4, 8, 16, 32),
    data_order=3,
) -> dict:
    stages = len(features)
    configuration = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [2 * p for p in patch_size],
        "spacing": list(spacing),
        "normalization_schemes": [normalization],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": data_order, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                "n_conv_per_stage": [2] * stages,
                "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [2 * p for p in patch_size],
        "image_reader_writer": reader,
        "transpose_forward": list(transpose_forward),
        "transpose_backward": [int(i) for i in np.argsort(transpose_forward)],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 100.0,
                "mean": 40.0,
                "median": 38.0,
                "min": 0.0,
                "percentile_00_5": 1.0,
                "percentile_99_5": 95.0,
                "std": 20.0,
            }
        },
    }


def dataset_json() -> dict:
    return {"channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": 10, "file_ending": ".nii.gz"}


def build_network(plan: dict, dataset: dict) -> torch.nn.Module:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plan)
    configuration = manager.get_configuration(CONFIGURATION)
    heads = manager.get_label_manager(dataset).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(manager, configuration, 1, heads, enable_deep_supervision=True)


def make_model_folder(root: Path, folds=(0, 1), seed: int = 0, **plan_options) -> Path:
    """Write an nnU-Net model folder with random weights per fold under ``root / FOLDER_NAME``."""
    folder = Path(root) / FOLDER_NAME
    folder.mkdir(parents=True)
    plan, dataset = plans(**plan_options), dataset_json()
    (folder / "plans.json").write_text(json.dumps(plan, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    for fold in folds:
        torch.manual_seed(seed * 100 + fold)
        network = build_network(plan, dataset)
        with torch.no_grad():  # random biases and norm gains, so that the folds differ visibly
            for name, parameter in network.named_parameters():
                if name.endswith("bias"):
                    parameter.copy_(0.1 * torch.randn(parameter.shape))
                elif "norm" in name:
                    parameter.copy_(1 + 0.1 * torch.randn(parameter.shape))
        rng = np.random.default_rng(fold)
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99}]},
            "grad_scaler_state": None,
            "logging": {  # NumPy scalars, as nnU-Net's logger stores them
                "train_losses": [np.float32(-rng.random())],
                "ema_fg_dice": [np.float64(rng.random())],
            },
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {
                "plans": plan,
                "configuration": CONFIGURATION,
                "fold": fold,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
