"""Shared fixtures: small real MONAI networks with seeded weights, a real MRI (the MNI152 template nilearn ships),
and a reference implementation of the engine's contract built on MONAI's own ``sliding_window_inference``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet


def small_unet(in_channels: int = 1, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(3, in_channels, out_channels, (4, 8, 16), (2, 2), num_res_units=1).eval()


class PerSample(torch.nn.Module):
    """Runs a network one window at a time, so its numerics cannot depend on how windows are batched."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1]) for i in range(len(x))])


class CountingModel(torch.nn.Module):
    """Records the batch size of every call."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.net(x)


@pytest.fixture(scope="session")
def mni_t1() -> np.ndarray:
    """The MNI152 T1 template at 2 mm, z-scored inside the brain: a real MRI, shipped inside nilearn's wheel."""
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    brain = data > 0
    return ((data - data[brain].mean()) / data[brain].std()).astype(np.float32)


def grid_features(shape: tuple[int, ...], size: int) -> np.ndarray:
    """Cubes of ``size`` voxels numbered 1..N."""
    cells = [np.arange(s) // size for s in shape]
    counts = [c[-1] + 1 for c in cells]
    ids = (cells[0][:, None, None] * counts[1] + cells[1][None, :, None]) * counts[2] + cells[2][None, None, :]
    return ids.astype(np.int64) + 1


def perturbed(image: np.ndarray, features: np.ndarray, feature_ids: np.ndarray, coalition: np.ndarray, baseline):
    """The image with every feature the coalition leaves off replaced by the baseline."""
    image = image if image.ndim == 4 else image[None]
    off = np.isin(features, feature_ids[~coalition])
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float32), image.shape)
    return np.where(off[None], base, image).astype(np.float32)


def reference_values(model, image, roi, reference_masks, targets, value, patch_size, overlap, blend, batch_size=4):
    """The contract: full-volume MONAI inference, softmax (sigmoid for one channel), value on the ROI voxels."""
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(image)[None], patch_size, batch_size, model, overlap=overlap, mode=blend
        )[0]
    if logits.shape[0] == 1:
        fg = torch.sigmoid(logits)
        probabilities = torch.cat([1 - fg, fg]).numpy()
    else:
        probabilities = torch.softmax(logits, dim=0).numpy()
    label = probabilities.argmax(axis=0)[roi]
    out = []
    for t, mask in zip(targets, reference_masks):
        r = mask[roi]
        p = probabilities[t][roi].astype(np.float64)
        a = label == t
        out.append(
            {
                "soft_dice": 2 * (p * r).sum() / (p.sum() + r.sum()),
                "dice": 2 * (a & r).sum() / (a.sum() + r.sum()),
                "tp": (a & r).sum() / r.sum(),
                "fp": (a & ~r).sum() / roi.sum(),
                "mean_prob": (p * r).sum() / r.sum(),
            }[value]
        )
    return np.array(out)


@pytest.fixture(scope="session")
def mni_nifti(tmp_path_factory) -> tuple:
    """The raw MNI152 T1 2 mm template written as a NIfTI file: its path, voxels and affine."""
    import nibabel
    from nilearn.datasets import load_mni152_template

    image = load_mni152_template(resolution=2)
    path = tmp_path_factory.mktemp("images") / "mni_t1.nii.gz"
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    nibabel.save(nibabel.Nifti1Image(data, image.affine), str(path))
    return path, data, np.asarray(image.affine)


TEST_SIDECAR = {
    "format": "segshap-torchscript/1",
    "in_channels": 1,
    "classes": {"0": "background", "1": "tissue_a", "2": "tissue_b"},
    "patch_size": [32, 32, 32],
    "overlap": 0.25,
    "blend": "gaussian",
    "preprocessing": {"spacing": [2.0, 2.0, 2.0], "normalize": "zscore", "nonzero": True},
}


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """A small seeded MONAI UNet saved as TorchScript with its JSON sidecar (model.pt + model.json)."""
    import json

    folder = tmp_path_factory.mktemp("model")
    torch.jit.save(torch.jit.script(small_unet(1, 3)), str(folder / "model.pt"))
    (folder / "model.json").write_text(json.dumps(TEST_SIDECAR))
    return folder / "model.pt"


def reference_python() -> str:
    """The Python of the reference environment (``.venv-ref``: shap and shapiq, see ``scripts/reference_env.sh``).
    Skips the test when it is missing, or fails it when ``SEGSHAP_REQUIRE_REFERENCE`` is set (``scripts/test.sh``)."""
    python = os.environ.get("SEGSHAP_REFERENCE_PYTHON", str(Path(__file__).parents[1] / ".venv-ref/bin/python"))
    if not Path(python).exists():
        if os.environ.get("SEGSHAP_REQUIRE_REFERENCE"):
            pytest.fail(f"The reference environment is missing ({python}); run scripts/reference_env.sh.")
        pytest.skip("reference environment (shap, shapiq) not set up: `bash scripts/test.sh` makes .venv-ref")
    return python
