"""Loading models: the TorchScript sidecar, preprocessing and class names, and refusals of bad model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.models import TEST_SIDECAR

import segshap

ROI = ((40, 52), (50, 62), (40, 52))


@pytest.mark.slow
def test_loaded_model_preprocesses_and_takes_class_names(mni_nifti, scripted_model):
    _, data, affine = mni_nifti
    model = segshap.load_model(scripted_model, device="cpu")
    assert model.classes == {0: "background", 1: "tissue_a", 2: "tissue_b"} and model.patch_size == (32, 32, 32)
    prepared = model.preprocess(data, affine)
    x = prepared.image
    brain = data > 0
    assert prepared.grid.same_as(prepared.source)  # the template is on the model's 2 mm RAS grid already
    assert abs(x[0][brain].mean()) < 1e-4 and abs(x[0][brain].std() - 1) < 1e-4
    by_name = segshap.explain(
        scripted_model,
        data,
        target=["tissue_a", "tissue_b"],
        roi=ROI,
        features="fcc",
        n_features=6,
        nsamples=40,
        device="cpu",
        affine=affine,
    )
    assert by_name.target_names == ("tissue_a", "tissue_b") and by_name.targets == (1, 2)
    assert by_name.values.shape == (by_name.feature_ids.size, 2) and not by_name.exact
    np.testing.assert_allclose(by_name.values.sum(0), by_name.full_value - by_name.base_value, atol=1e-9)
    assert by_name.stats["evaluations"] == 40


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c: c.pop("patch_size"), "misses patch_size"),
        (lambda c: c.update(classes={"0": "a", "1": "b"}), "lists 2 classes but the network outputs 3 channels"),
        (lambda c: c["preprocessing"].update(normalize="percentile"), "preprocessing.normalize must be one of"),
        (lambda c: c.update(format="other/2"), "has format 'other/2'"),
    ],
)
def test_bad_sidecars_are_refused(scripted_model, tmp_path, change, fragment):
    config = json.loads(json.dumps(TEST_SIDECAR))
    change(config)
    with pytest.raises(ValueError, match=fragment):
        segshap.load_model(scripted_model, config=config, device="cpu")


def test_missing_or_foreign_model_files_are_refused(tmp_path, scripted_model):
    with pytest.raises(FileNotFoundError, match="No such model"):
        segshap.load_model(tmp_path / "absent.pt")
    lone = tmp_path / "lone.pt"
    lone.write_bytes(scripted_model.read_bytes())
    with pytest.raises(ValueError, match="No JSON sidecar for"):
        segshap.load_model(lone)
    fake = tmp_path / "fake.pt"
    fake.write_text("not a model")
    (tmp_path / "fake.json").write_text(json.dumps(TEST_SIDECAR))
    with pytest.raises(ValueError, match="is not a TorchScript model"):
        segshap.load_model(fake)
