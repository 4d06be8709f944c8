"""MONAI bundles: loaded from their own config, preprocessed by their own transforms, run by their own inferer."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel
import numpy as np
import pytest
import torch
from helpers.contract import perturbed
from monai.networks.nets import UNet

import segshap
from segshap.io import read_image
from segshap.modelinfo import read_model_info

CONFIG = {
    "bundle_root": ".",
    "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [32, 32, 32],
        "sw_batch_size": 4,
        "overlap": 0.5,
        "mode": "gaussian",
    },
    "postprocessing": {"_target_": "Activationsd", "keys": "pred", "softmax": True},
}
METADATA = {
    "version": "0.1.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
        "outputs": {
            "pred": {
                "type": "image",
                "num_channels": 3,
                "channel_def": {"0": "background", "1": "gray_matter", "2": "white_matter"},
            }
        },
    },
}


def write_bundle(root, config=CONFIG, metadata=METADATA, seed=0):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(seed)
    network = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundles") / "gmwm_bundle")


@pytest.fixture(scope="module")
def lps_image(tmp_path_factory, mni_nifti):
    """The MNI template stored LPS at 1.5 x 2 x 2.5 mm: not the bundle's grid."""
    from scipy import ndimage

    _, template, template_affine = mni_nifti
    affine = np.array([[-1.5, 0, 0, 90.0], [0, -2.0, 0, 80.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]])
    shape = (110, 100, 62)
    indices = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ indices + affine[:3, 3:4]
    source = np.linalg.solve(template_affine[:3, :3], world - template_affine[:3, 3:4])
    data = ndimage.map_coordinates(template, source, order=1).reshape(shape).astype(np.float32)
    path = tmp_path_factory.mktemp("bundle_images") / "lps.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, affine), str(path))
    return path


def test_an_untrusted_bundle_is_refused_with_the_reason(bundle):
    with pytest.raises(ValueError, match="can run arbitrary Python code .* pass trust=True for one you trust"):
        segshap.load_model(bundle, device="cpu")


def test_a_bundle_loads_its_network_tiling_and_classes(bundle):
    model = segshap.load_model(bundle, trust=True, device="cpu")
    assert model.format == "monai_bundle" and model.tiling == "monai"
    assert model.patch_size == (32, 32, 32) and model.overlap == 0.5 and model.blend == "gaussian"
    assert model.classes == {0: "background", 1: "gray_matter", 2: "white_matter"} and model.in_channels == 1
    torch.manual_seed(0)
    expected = UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1).eval()
    window = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.network(window), expected(window))


def test_the_bundles_files_give_classes_channels_and_window_without_running_it(bundle, tmp_path):
    info = read_model_info(bundle)
    assert info.format == "monai_bundle" and info.needs_trust and info.classes_reason is None
    assert info.classes == {0: "background", 1: "gray_matter", 2: "white_matter"}
    assert info.in_channels == 1 and info.patch_size == (32, 32, 32)


def test_a_bundle_without_channel_def_has_classes_only_once_loaded(tmp_path):
    metadata = json.loads(json.dumps(METADATA))
    del metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    root = write_bundle(tmp_path / "unnamed", metadata=metadata)
    info = read_model_info(root)
    assert info.classes is None and info.in_channels == 1 and info.patch_size == (32, 32, 32)
    assert "names no classes" in info.classes_reason and "add a channel_def" in info.classes_reason
    assert segshap.load_model(root, trust=True, device="cpu").classes == {0: "background", 1: "class 1", 2: "class 2"}
    (root / "configs" / "inference.json").rename(root / "configs" / "inference.yaml")
    assert read_model_info(root).patch_size is None  # YAML is not read without its package


def canonical_loader(transforms):
    """The loader reorients and moves channels first itself; no Orientationd, no EnsureChannelFirstd."""
    transforms[0].update(ensure_channel_first=True, as_closest_canonical=True)
    del transforms[1:3]


def explicit_no_channel(transforms):
    transforms[1]["channel_dim"] = "no_channel"


@pytest.mark.parametrize("variant", [None, canonical_loader, explicit_no_channel])
def test_bundle_preprocessing_matches_the_bundles_own_pipeline(bundle, lps_image, tmp_path, variant):
    """Our call (image array + affine, loader replaced) equals the bundle's transforms loading the file itself."""
    from monai.bundle import ConfigParser

    if variant is not None:
        config = json.loads(json.dumps(CONFIG))
        variant(config["preprocessing"]["transforms"])
        bundle = write_bundle(tmp_path / "variant", config=config)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    theirs = parser.get_parsed_content("preprocessing")({"image": str(lps_image)})["image"]
    model = segshap.load_model(bundle, trust=True, device="cpu")
    data, affine = read_image(lps_image)
    ours = model.preprocess(data, affine)
    assert ours.image.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours.image, theirs.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.grid.affine, theirs.affine.numpy(), atol=1e-6)
    assert ours.grid.axcodes == ("R", "A", "S") and np.allclose(ours.grid.spacing, 2.0)


@pytest.mark.slow
def test_engine_values_equal_the_bundles_inferer_on_perturbed_images(bundle, lps_image):
    model = segshap.load_model(bundle, trust=True, device="cpu")
    data, affine = read_image(lps_image)
    x = model.preprocess(data, affine).image
    features = segshap.features.grid(x.shape[1:], 10)
    reference = np.zeros(x.shape[1:], bool)
    reference[40:55, 45:60, 30:45] = True
    roi = ((35, 60), (40, 65), (25, 50))
    engine = segshap.PatchEngine(
        model.network,
        x,
        features,
        reference=reference,
        target=2,
        roi=roi,
        baseline=float(x.mean()),
        device="cpu",
        tiling=model.tiling_spec,
    )
    rng = np.random.default_rng(3)
    coalitions = rng.random((4, engine.n_players)) < 0.5
    values = engine.evaluate(coalitions)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    inferer = parser.get_parsed_content("inferer")
    box = tuple(slice(a, b) for a, b in roi)
    for coalition, value in zip(coalitions, values):
        image = perturbed(x, features, engine.feature_ids, coalition, float(x.mean()))
        with torch.no_grad():
            probabilities = torch.softmax(inferer(torch.from_numpy(image)[None], model.network)[0], 0).numpy()
        p, r = probabilities[2][box].astype(np.float64), reference[box]
        assert value == pytest.approx(2 * (p * r).sum() / (p.sum() + r.sum()), abs=1e-5)


@pytest.mark.slow
def test_the_cli_explains_a_trusted_bundle_and_refuses_an_untrusted_one(bundle, lps_image, tmp_path):
    arguments = [
        sys.executable,
        "-m",
        "segshap.cli",
        "explain",
        "--image",
        str(lps_image),
        "--model",
        str(bundle),
        "--target",
        "white_matter",
        "--roi",
        "40:60,45:65,25:40",
        "--features",
        "grid",
        "--n-features",
        "8",
        "--nsamples",
        "20",
        "--no-faithfulness",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path / "out"),
    ]
    refused = subprocess.run(arguments, capture_output=True, text=True)
    assert refused.returncode == 2 and "--trust-model" in refused.stderr and not (tmp_path / "out").exists()
    done = subprocess.run(arguments + ["--trust-model"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    heat, heat_affine = read_image(tmp_path / "out" / "heatmap.nii.gz")
    data, affine = read_image(lps_image)
    assert heat.shape == data.shape and np.allclose(heat_affine, affine, atol=1e-4) and np.abs(heat).max() > 0
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert report["settings"]["model_format"] == "monai_bundle" and report["targets"][0]["name"] == "white_matter"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c, m, root: c.pop("inferer"), "defines no 'inferer'"),
        (lambda c, m, root: c.update(inferer={"_target_": "SimpleInferer"}), "defines a SimpleInferer"),
        (lambda c, m, root: c["inferer"].update(padding_mode="reflect"), "pads with 'reflect'"),
        (lambda c, m, root: c.pop("network_def"), "no 'network_def'"),
        (lambda c, m, root: (root / "models" / "model.pt").unlink(), "has no weights"),
        (
            lambda c, m, root: m["network_data_format"]["outputs"]["pred"].update(channel_def={"0": "a", "1": "b"}),
            "lists 2 classes but the network outputs 3 channels",
        ),
        (
            lambda c, m, root: torch.save(torch.nn.Linear(2, 2), root / "models" / "model.pt"),
            "Cannot load the checkpoint .* safely",
        ),
        (lambda c, m, root: c["network_def"].update(channels=[4, 8, 32]), "does not fit the bundle's network_def"),
    ],
)
def test_broken_bundles_are_refused_with_the_fix(tmp_path, change, fragment):
    config, metadata = json.loads(json.dumps(CONFIG)), json.loads(json.dumps(METADATA))
    root = write_bundle(tmp_path / "bundle")
    change(config, metadata, root)
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=fragment):
        segshap.load_model(root, trust=True, device="cpu")


def test_a_bundle_needs_the_images_affine(bundle, lps_image):
    model = segshap.load_model(bundle, trust=True, device="cpu")
    data, _ = read_image(lps_image)
    with pytest.raises(ValueError, match="works from the image's geometry .* pass the image's affine"):
        model.preprocess(data)
