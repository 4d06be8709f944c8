"""nnU-Net v2 model folders: nnU-Net's preprocessing, tiling, float16 Gaussian fusion, mirroring and fold averaging.

Needs the ``nnunet`` extra; the tests skip with that reason where it is not installed (the project's test
environment installs it).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import nibabel
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed: install segshap's nnunet extra to run these")

from helpers.contract import perturbed  # noqa: E402
from helpers.nnunet_models import make_model_folder  # noqa: E402

import segshap  # noqa: E402
from segshap.io import read_image  # noqa: E402
from segshap.modelinfo import read_model_info  # noqa: E402


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("nnunet"), folds=(0, 1), transpose_forward=(2, 0, 1))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, mni_nifti):
    """The MNI template cut to a slab, stored LPS (x and y flipped), with zero planes nnU-Net crops away."""
    _, template, affine = mni_nifti
    data = np.zeros((56, 64, 48), np.float32)
    data[3:53, 2:62, :45] = template[22:72, 28:88, 25:70]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [55, 63, 0]
    path = tmp_path_factory.mktemp("nnunet_images") / "case_0000.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), affine @ flip), str(path))
    return path


def nnunet_predictor(model):
    """nnU-Net's own predictor, holding the same folds' weights."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = model.path
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    network = copy.deepcopy(model.network.networks[0])  # nnU-Net loads each fold's weights into it in turn
    parameters = [{k: v.clone() for k, v in net.state_dict().items()} for net in model.network.networks]
    predictor.manual_initialization(network, manager, configuration, parameters, dataset, "nnUNetTrainer", (0, 1, 2))
    return predictor, manager, configuration, dataset


def test_an_nnunet_folder_loads_with_its_folds_classes_and_tiling(model_folder):
    model = segshap.load_model(model_folder, device="cpu")
    assert model.format == "nnunet" and model.tiling == "nnunet" and model.folds == 2
    assert model.classes == {0: "background", 1: "gray_matter", 2: "white_matter"}
    assert model.patch_size == (32, 32, 32) and model.overlap == 0.5 and model.config["mirror_axes"] == (0, 1, 2)
    one = segshap.load_model(model_folder, config={"folds": [1], "use_mirroring": False}, device="cpu")
    assert one.folds == 1 and len(one.network.networks) == 1 and one.network.flips == []


def test_the_folders_files_give_classes_channels_and_window_without_loading(model_folder, tmp_path):
    info = read_model_info(model_folder)
    assert info.format == "nnunet" and not info.needs_trust and info.classes_reason is None
    assert info.classes == {0: "background", 1: "gray_matter", 2: "white_matter"}
    assert info.in_channels == 1 and info.patch_size == (32, 32, 32)
    folder = tmp_path / model_folder.name  # the two JSON files are all it reads
    folder.mkdir()
    plans = json.loads((model_folder / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "plans.json").write_text(json.dumps(plans))
    dataset = json.loads((model_folder / "dataset.json").read_text())
    dataset["labels"]["ignore"] = 3  # unannotated voxels: no output channel
    (folder / "dataset.json").write_text(json.dumps(dataset))
    info = read_model_info(folder, config={"configuration": "3d_cascade_fullres"})
    assert info.classes == {0: "background", 1: "gray_matter", 2: "white_matter"} and info.patch_size == (32, 32, 32)
    with pytest.raises(ValueError, match=r"Unknown nnU-Net option\(s\) \['fold'\]"):
        read_model_info(folder, config={"fold": 0})
    dataset["labels"] = {"background": 0, "tissue": [1, 2], "white_matter": 2}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"region-based nnU-Net model \(regions tissue"):
        read_model_info(folder)


def test_preprocessing_equals_nnunets_own_from_the_file(model_folder, image_file):
    """nnU-Net reading the file itself (SimpleITK) and preprocessing it gives exactly our model input."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    model = segshap.load_model(model_folder, device="cpu")
    _, manager, configuration, dataset = nnunet_predictor(model)
    data, properties = SimpleITKIO().read_images([str(image_file)])
    theirs, _, _ = configuration.preprocessor_class(verbose=False).run_case_npy(
        data, None, properties, manager, configuration, dataset
    )
    image, affine = read_image(image_file)
    ours = model.preprocess(image, affine)
    assert ours.image.shape == theirs.shape and ours.image.shape != (1, *image.shape)  # cropped and transposed
    np.testing.assert_allclose(ours.image, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_engine_values_equal_nnunets_own_prediction_on_perturbed_images(model_folder, image_file):
    model = segshap.load_model(model_folder, device="cpu")
    predictor, *_ = nnunet_predictor(model)
    image, affine = read_image(image_file)
    x = model.preprocess(image, affine).image
    spatial = x.shape[1:]
    features = segshap.features.grid(spatial, 9)
    reference = np.zeros(spatial, bool)
    reference[10:30, 5:25, 20:40] = True
    # The ROI reaches the image's border, where nnU-Net's float16 weights are tiny: exactness matters most there.
    roi = ((0, 34), (0, 30), (15, spatial[2]))
    engine = segshap.PatchEngine(
        model.network,
        x,
        features,
        reference=reference,
        target=1,
        roi=roi,
        baseline=0.0,
        device="cpu",
        batch_size=2,
        tiling=model.tiling_spec,
    )
    rng = np.random.default_rng(0)
    coalitions = np.vstack([np.ones(engine.n_players, bool), rng.random((1, engine.n_players)) < 0.5])
    values = engine.evaluate(coalitions)
    box = tuple(slice(a, b) for a, b in roi)
    for coalition, value in zip(coalitions, values):
        image_in = perturbed(x, features, engine.feature_ids, coalition, 0.0)
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image_in))
        probabilities = torch.softmax(logits.float(), 0).numpy()
        p, r = probabilities[1][box].astype(np.float64), reference[box]
        assert value == pytest.approx(2 * (p * r).sum() / (p.sum() + r.sum()), abs=2e-5)


@pytest.mark.slow
def test_predictions_map_back_onto_the_image_as_nnunet_exports_them(model_folder, image_file):
    """At the model's spacing nnU-Net's export is a pure crop/transpose inverse: ours must land voxel for voxel."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    model = segshap.load_model(model_folder, device="cpu")
    predictor, *_ = nnunet_predictor(model)
    data, properties = SimpleITKIO().read_images([str(image_file)])
    theirs = predictor.predict_single_npy_array(data, properties, None, None, False)  # (z, y, x) on the file's grid
    image, affine = read_image(image_file)
    ours = segshap.predict(model, image, affine=affine, device="cpu")
    assert ours.shape == image.shape
    agreement = (ours == np.asarray(theirs).transpose(2, 1, 0)).mean()
    assert agreement > 0.999


@pytest.mark.slow
def test_the_cli_explains_an_nnunet_folder_on_a_resampled_image(model_folder, mni_nifti, tmp_path):
    """An anisotropic image: nnU-Net resamples it; the outputs come back on the image's grid."""
    _, template, template_affine = mni_nifti
    data = np.ascontiguousarray(template[20:76, 25:89, 20:70:2])  # 2 x 2 x 4 mm
    affine = template_affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(data, affine), str(tmp_path / "aniso.nii.gz"))
    (tmp_path / "options.json").write_text(json.dumps({"folds": [0], "use_mirroring": False}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segshap.cli",
            "explain",
            "--image",
            str(tmp_path / "aniso.nii.gz"),
            "--model",
            str(model_folder),
            "--model-config",
            str(tmp_path / "options.json"),
            "--target",
            "gray_matter",
            "--roi",
            "20:36,20:44,8:16",
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
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    heat, heat_affine = read_image(tmp_path / "out" / "heatmap.nii.gz")
    assert heat.shape == data.shape and np.allclose(heat_affine, affine, atol=1e-4)
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert report["settings"]["model_format"] == "nnunet" and report["settings"]["tiling"] == "nnunet"
    # The features were built on nnU-Net's 2 mm grid: the 25 slices of 4 mm hold two features' slabs each.
    features, _ = read_image(tmp_path / "out" / "features.nii.gz")
    assert features.shape == data.shape and (features > 0).any()


@pytest.mark.parametrize(
    "transpose_forward, reader, flips",
    [
        ((0, 1, 2), "SimpleITKIO", (1, 1, 1)),
        ((2, 0, 1), "SimpleITKIO", (-1, -1, 1)),
        ((1, 2, 0), "NibabelIOWithReorient", (-1, -1, 1)),
    ],
)
def test_the_model_grid_affine_places_nnunets_resampled_voxels(tmp_path, transpose_forward, reader, flips):
    """A linear ramp through nnU-Net's own crop, transpose and (linear) resampling: each preprocessed voxel holds
    the ramp's value at the image position our model-grid affine gives it (a half-voxel error would show as >= 0.5)."""
    folder = make_model_folder(
        tmp_path,
        folds=(0,),
        transpose_forward=transpose_forward,
        reader=reader,
        normalization="NoNormalization",
        patch_size=(16, 16, 16),
        features=(2, 4),
        data_order=1,
    )
    model = segshap.load_model(folder, device="cpu")
    shape = (20, 24, 10)
    affine = np.diag([1.0 * flips[0], 1.5 * flips[1], 2.5 * flips[2], 1.0])
    affine[:3, 3] = (10, -20, 5)
    coefficients = np.array([1.0, 7.0, 31.0])
    image = (100 + np.tensordot(coefficients, np.indices(shape).astype(np.float64), 1)).astype(np.float32)
    image[:2] = 0  # zero slabs that nnU-Net crops away
    image[:, -3:] = 0
    prepared = model.preprocess(image, affine)
    assert prepared.image.shape[1:] != shape and np.allclose(prepared.grid.spacing, 2.0, rtol=0.1)
    to_image = np.linalg.solve(affine, prepared.grid.affine)
    positions = to_image[:3, :3] @ np.indices(prepared.image.shape[1:]).reshape(3, -1) + to_image[:3, 3:4]
    low, high = np.array([4, 2, 2])[:, None], np.array([shape[0] - 3, shape[1] - 6, shape[2] - 3])[:, None]
    interior = np.all((positions >= low) & (positions <= high), axis=0)
    assert interior.sum() > 100
    expected = 100 + coefficients @ positions[:, interior]
    np.testing.assert_allclose(prepared.image[0].reshape(-1)[interior], expected, atol=1e-3)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"folds": [0, 4]}, "has no fold_4/checkpoint_final.pth; its folds with that checkpoint are 0, 1"),
        ({"configuration": "2d"}, "has no configuration '2d'; it has 3d_fullres"),
        ({"tile_size": 3}, "Unknown nnU-Net option(s) ['tile_size']"),
    ],
)
def test_bad_nnunet_requests_name_the_fix(model_folder, options, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        segshap.load_model(model_folder, config=options, device="cpu")


def test_checkpoints_load_only_without_code(tmp_path):
    """NumPy scalars in a training log are fine; a pickled object that could run code is refused."""
    folder = make_model_folder(tmp_path / "a", folds=(0,))
    checkpoint = tmp_path / "a" / folder.name / "fold_0" / "checkpoint_final.pth"
    assert segshap.models.base.load_checkpoint(checkpoint)["_best_ema"] == 0.5
    torch.save({"network_weights": {}, "trainer": torch.nn.Linear(2, 2)}, checkpoint)
    with pytest.raises(ValueError, match="Cannot load the checkpoint .* safely"):
        segshap.load_model(folder, device="cpu")


@pytest.mark.parametrize("shape", [(32, 32, 32), (33, 70, 45), (100, 47, 64)])
@pytest.mark.parametrize("step", [0.5, 0.8])
def test_nnunet_tiling_places_windows_where_nnunet_does(shape, step):
    import itertools

    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    tiling = segshap.nnunet_tiling(shape, (32, 32, 32), step, folds=2)
    expected = itertools.product(*compute_steps_for_sliding_window(shape, (32, 32, 32), step))
    assert tiling.starts.tolist() == [list(start) for start in expected]
    gaussian = compute_gaussian(
        (32, 32, 32), sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16, device=torch.device("cpu")
    )
    assert torch.equal(tiling.importance_map("cpu"), gaussian.float()) and tiling.accumulation_dtype == torch.float16
    # Through make_tiling, a step stored as 1 - overlap comes back as written.
    again = segshap.tiling.make_tiling("nnunet", shape, 32, overlap=1 - step, folds=2)
    assert np.array_equal(again.starts, tiling.starts)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_on_cuda_values_follow_nnunets_cuda_predictor(model_folder, image_file):
    """On CUDA nnU-Net runs under float16 autocast; the engine does the same (float16 rounding apart)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model = segshap.load_model(model_folder, device="cuda")
    _, manager, configuration, dataset = nnunet_predictor(model)
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        perform_everything_on_device=True,
        device=torch.device("cuda"),
        verbose=False,
        allow_tqdm=False,
    )
    parameters = [{k: v.clone() for k, v in net.state_dict().items()} for net in model.network.networks]
    predictor.manual_initialization(
        copy.deepcopy(model.network.networks[0]),
        manager,
        configuration,
        parameters,
        dataset,
        "nnUNetTrainer",
        (0, 1, 2),
    )
    image, affine = read_image(image_file)
    x = model.preprocess(image, affine).image
    reference = np.zeros(x.shape[1:], bool)
    reference[10:30, 5:25, 20:40] = True
    roi = ((0, 34), (0, 30), (15, x.shape[3]))
    features = segshap.features.grid(x.shape[1:], 9)
    engine = segshap.PatchEngine(
        model.network,
        x,
        features,
        reference=reference,
        target=1,
        roi=roi,
        baseline=0.0,
        device="cuda",
        tiling=model.tiling_spec,
    )
    coalition = np.random.default_rng(1).random((1, engine.n_players)) < 0.5
    value = engine.evaluate(coalition)[0]
    image_in = perturbed(x, features, engine.feature_ids, coalition[0], 0.0)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(image_in))
    p = torch.softmax(logits.float(), 0).cpu().numpy()[1][tuple(slice(a, b) for a, b in roi)].astype(np.float64)
    r = reference[tuple(slice(a, b) for a, b in roi)]
    assert value == pytest.approx(2 * (p * r).sum() / (p.sum() + r.sum()), abs=1e-3)


def test_nnunet_needs_the_images_affine(model_folder, image_file):
    model = segshap.load_model(model_folder, config={"folds": [0]}, device="cpu")
    data, _ = read_image(image_file)
    with pytest.raises(ValueError, match="nnU-Net's preprocessing works from the image's geometry"):
        segshap.explain(model, data, target=1, device="cpu")
