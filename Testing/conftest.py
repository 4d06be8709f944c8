"""Shared fixtures: a real MRI (the MNI152 template nilearn ships), as an array and as a NIfTI file, and a small
TorchScript model with its sidecar. Shared code lives in ``helpers/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import TEST_SIDECAR, small_unet


@pytest.fixture(scope="session")
def mni_t1() -> np.ndarray:
    """The MNI152 T1 template at 2 mm, z-scored inside the brain: a real MRI, shipped inside nilearn's wheel."""
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    brain = data > 0
    return ((data - data[brain].mean()) / data[brain].std()).astype(np.float32)


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


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """A small seeded MONAI UNet saved as TorchScript with its JSON sidecar (model.pt + model.json)."""
    import json

    folder = tmp_path_factory.mktemp("model")
    torch.jit.save(torch.jit.script(small_unet(1, 3)), str(folder / "model.pt"))
    (folder / "model.json").write_text(json.dumps(TEST_SIDECAR))
    return folder / "model.pt"


@pytest.fixture(scope="session")
def oblique_t1() -> tuple[np.ndarray, np.ndarray]:
    """The demo MRI resampled (linearly) onto a rotated, anisotropic grid around the left centrum semiovale: its
    voxels and affine."""
    from helpers.slicer_scenes import oblique_demo_t1

    return oblique_demo_t1()
