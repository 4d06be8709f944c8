"""The explain pipeline on a real MRI and a real (small, seeded) network: wiring, exactness of the end points,
features only where they matter, outputs on disk, and errors."""

from __future__ import annotations

import json
import warnings

import matplotlib
import numpy as np
import pytest
from helpers.contract import perturbed, reference_values
from helpers.models import small_unet

import segshap
from segshap.io import read_image

ROI = ((40, 52), (50, 62), (40, 52))
TILING = {"patch_size": (32, 32, 32), "overlap": 0.25, "blend": "gaussian"}


@pytest.fixture(scope="module")
def explained(mni_t1):
    net = small_unet(1, 3)
    explanation = segshap.explain(
        net,
        mni_t1,
        target=1,
        roi=ROI,
        features="grid",
        n_features=8,
        nsamples=200,
        device="cpu",
        affine=np.diag([2, 2, 2, 1.0]),
        **TILING,
    )
    return net, explanation


@pytest.mark.slow
def test_values_are_exact_and_the_end_points_are_full_inference(mni_t1, explained):
    net, ex = explained
    assert ex.values.shape == ex.stderr.shape == ex.feature_ids.shape and ex.feature_ids.size > 8
    assert abs(ex.values.sum() - (ex.full_value - ex.base_value)) < 1e-9
    roi = np.zeros(mni_t1.shape, bool)
    roi[tuple(slice(a, b) for a, b in ROI)] = True
    prediction = segshap.predict(net, mni_t1, device="cpu", **TILING)
    masks = [prediction == 1]
    baseline = float(mni_t1.mean())
    for coalition, expected in (
        (np.ones(ex.feature_ids.size, bool), ex.full_value),
        (np.zeros(ex.feature_ids.size, bool), ex.base_value),
    ):
        image = perturbed(mni_t1, ex.feature_map, ex.feature_ids, coalition, baseline)
        value = reference_values(net, image, roi, masks, [1], "soft_dice", **TILING)[0]
        assert value == pytest.approx(expected, abs=1e-5)


def test_features_exist_only_inside_the_support(mni_t1, explained):
    _, ex = explained
    support = tuple(slice(a, b) for a, b in ex.settings["support_box"])
    outside = ex.feature_map.copy()
    outside[support] = 0
    assert not outside.any() and ex.feature_map[support].any()
    # The support is the union of the inputs of the windows that cover the ROI: wider than the ROI, not the image.
    assert all(a <= r0 and r1 <= b for (a, b), (r0, r1) in zip(ex.settings["support_box"], ROI))
    assert np.prod([b - a for a, b in ex.settings["support_box"]]) < mni_t1.size / 4
    heat = ex.heatmap
    for feature, value in zip(ex.feature_ids, ex.values):
        assert np.all(heat[ex.feature_map == feature] == np.float32(value))
    assert np.all(heat[ex.feature_map == 0] == 0)


def test_save_writes_all_outputs_with_the_geometry(tmp_path, explained):
    _, ex = explained
    keep = tmp_path / "out" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # as a notebook has its own: drawing overview.png leaves it alone
    try:
        outputs = ex.save(tmp_path / "out")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert set(outputs) == {"heatmap", "features", "report", "overview"}
    assert keep.read_text() == "mine"
    heat, affine = read_image(outputs["heatmap"])
    np.testing.assert_allclose(heat, ex.heatmap)
    np.testing.assert_allclose(affine, np.diag([2, 2, 2, 1.0]))
    features, _ = read_image(outputs["features"])
    np.testing.assert_array_equal(features, ex.feature_map)
    report = json.loads(outputs["report"].read_text())
    assert [row["id"] for row in report["features"]] == ex.feature_ids.tolist()
    np.testing.assert_allclose([row["value"] for row in report["features"]], ex.values)
    assert report["efficiency_error"] < 1e-9 and report["exact"] is False
    assert report["stats"]["evaluations"] == 200
    assert {"segshap", "torch", "monai"} <= set(report["versions"])
    assert sum(row["voxels"] for row in report["features"]) == int((ex.feature_map > 0).sum())
    assert report["features"][0]["centroid_ras_mm"] == [2 * c for c in report["features"][0]["centroid_voxel"]]
    assert outputs["overview"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_a_failed_save_leaves_the_folder_as_it_was(tmp_path, explained, monkeypatch):
    _, ex = explained
    out = tmp_path / "out"
    out.mkdir()
    (out / "heatmap.nii.gz").write_text("previous run")
    import segshap.figure

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(segshap.figure, "overview_figure", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["heatmap.nii.gz"]
    assert (out / "heatmap.nii.gz").read_text() == "previous run"
    # A destination whose parents are missing: none of them is created by a failed save.
    with pytest.raises(RuntimeError, match="disk full"):
        ex.save(tmp_path / "new" / "nested" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_organ_features_carry_their_labels(mni_t1):
    labelmap = np.zeros(mni_t1.shape, np.int16)
    labelmap[30:50] = 3
    labelmap[50:70] = 7
    ex = segshap.explain(
        small_unet(1, 3),
        mni_t1,
        target=1,
        roi=((44, 56), (50, 62), (40, 52)),
        features="organs",
        labelmap=labelmap,
        device="cpu",
        **TILING,
    )
    assert ex.exact and sorted(ex.organ_labels.tolist()) == [3, 7]
    for feature, label in zip(ex.feature_ids, ex.organ_labels):
        assert set(np.unique(labelmap[ex.feature_map == feature])) == {label}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"features": "voronoi"}, "features= must be one of"),
        ({"n_features": 0}, "n_features= must be a positive integer"),
        ({"nsamples": "many"}, "nsamples= must be 'auto' or an integer >= 2"),
        ({"nsamples": 1}, "nsamples= must be 'auto' or an integer >= 2"),
        ({"baseline": "median"}, "baseline= must be one of mean, min, zero"),
        ({"target": "liver"}, "Targets by name need a model with class names"),
        ({"reference": "empty"}, "reference of target 1 is empty"),
    ],
)
def test_bad_arguments_are_refused(mni_t1, kwargs, fragment):
    arguments = {"target": 1, "roi": ROI, "device": "cpu", **TILING, **kwargs}
    if arguments.get("reference") == "empty":
        arguments["reference"] = np.zeros(mni_t1.shape, bool)
    with pytest.raises(ValueError, match=fragment):
        segshap.explain(small_unet(1, 3), mni_t1, **arguments)


def test_a_target_the_model_does_not_predict_is_refused(mni_nifti, scripted_model, tmp_path):
    _, data, affine = mni_nifti
    with pytest.raises(ValueError, match="Unknown target 'liver'; the model's classes are 0 \\(background\\)"):
        segshap.explain(scripted_model, data, target="liver", device="cpu", affine=affine)


@pytest.mark.slow
def test_the_explanation_game_is_the_game_explain_estimates(mni_t1):
    """Enumerating every coalition of ``explanation_game``'s engine gives the values ``explain`` computes exactly."""
    import itertools
    import math

    net = small_unet(1, 3)
    options = dict(target=1, roi=ROI, features="grid", n_features=2, device="cpu", **TILING)
    game = segshap.explanation_game(net, mni_t1, **options)
    m = game.n_players
    assert 2 <= m <= 10
    coalitions = np.array(list(itertools.product([False, True], repeat=m)))
    table = dict(zip(map(tuple, coalitions), game.engine.evaluate(coalitions)[:, 0]))
    shapley = np.zeros(m)
    for coalition, value in table.items():
        for i in range(m):
            if coalition[i]:
                without = coalition[:i] + (False,) + coalition[i + 1 :]
                size = sum(coalition) - 1
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                shapley[i] += weight * (value - table[without])
    explained = segshap.explain(net, mni_t1, nsamples=2**m, **options)
    assert explained.exact
    np.testing.assert_array_equal(explained.feature_ids, game.engine.feature_ids)
    np.testing.assert_allclose(explained.values, shapley, atol=1e-9)


@pytest.mark.slow
def test_a_forward_budget_and_the_design_are_kept_and_reported(mni_t1, tmp_path):
    """max_forwards bounds what the estimation runs; progress counts forwards; explanation.json says how it went."""
    net = small_unet(1, 3)
    reports = []
    ex = segshap.explain(
        net,
        mni_t1,
        target=1,
        roi=ROI,
        features="grid",
        n_features=27,
        nsamples=5000,
        device="cpu",
        design="chains",
        max_forwards=150,
        progress=lambda done, total: reports.append((done, total)),
        **TILING,
    )
    stats = ex.stats
    assert stats["design"] == "chains" and stats["stop_reason"] == "max_forwards"
    assert 0 < stats["estimation_forwards"] <= 150 and stats["evaluations"] < 5000
    assert stats["forwards_per_coalition"] == pytest.approx(stats["estimation_forwards"] / stats["evaluations"])
    assert reports[-1] == (stats["estimation_forwards"], stats["estimation_forwards"])
    assert all(total == 150 for _, total in reports[:-1]) and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert abs(ex.values.sum() - (ex.full_value - ex.base_value)) < 1e-9
    ex.save(tmp_path)
    report = json.loads((tmp_path / "explanation.json").read_text())
    assert report["settings"]["design"] == "chains" and report["settings"]["max_forwards"] == 150
    assert report["stats"]["stop_reason"] == "max_forwards" and "forwards_per_coalition" in report["stats"]


def test_faithfulness_curves_are_the_game_s_values_along_the_ranking(mni_t1, explained, tmp_path):
    """Every explanation carries deletion and insertion curves; their points are full-volume inference values."""
    net, ex = explained
    (curves,) = ex.faithfulness
    m = ex.feature_ids.size
    assert curves.deletion.shape == curves.insertion.shape == curves.random_deletion.shape == (m + 1,)
    for start, end in ((curves.deletion, curves.insertion), (curves.random_deletion, curves.random_insertion)):
        assert start[0] == pytest.approx(ex.full_value, abs=1e-9) and start[-1] == pytest.approx(
            ex.base_value, abs=1e-9
        )
        assert end[0] == pytest.approx(ex.base_value, abs=1e-9) and end[-1] == pytest.approx(ex.full_value, abs=1e-9)
    roi = np.zeros(mni_t1.shape, bool)
    roi[tuple(slice(a, b) for a, b in ROI)] = True
    masks = [segshap.predict(net, mni_t1, device="cpu", **TILING) == 1]
    order, k = np.argsort(-ex.values, kind="stable"), m // 3
    taken = np.zeros(m, bool)
    taken[order[:k]] = True
    for coalition, expected in ((~taken, curves.deletion[k]), (taken, curves.insertion[k])):
        image = perturbed(mni_t1, ex.feature_map, ex.feature_ids, coalition, float(mni_t1.mean()))
        assert reference_values(net, image, roi, masks, [1], "soft_dice", **TILING)[0] == pytest.approx(
            expected, abs=1e-5
        )
    assert ex.stats["faithfulness_forwards"] == curves.forwards > 0
    ex.save(tmp_path)
    entry = json.loads((tmp_path / "explanation.json").read_text())["faithfulness"]
    assert entry["deletion_auc"] == pytest.approx(curves.deletion_auc) and len(entry["random_insertion"]) == m + 1


def test_faithfulness_can_be_turned_off_and_follows_each_target(mni_t1):
    net = small_unet(1, 3)
    options = dict(roi=ROI, features="grid", n_features=2, nsamples=16, device="cpu", **TILING)
    off = segshap.explain(net, mni_t1, target=1, faithfulness=False, **options)
    assert off.faithfulness == () and off.stats["faithfulness_forwards"] == 0
    assert off.to_dict()["faithfulness"] is None and off.settings["faithfulness"] is False
    both = segshap.explain(net, mni_t1, target=[1, 2], **options)
    entries = both.to_dict()["faithfulness"]
    assert isinstance(entries, list) and len(entries) == 2
    for column, curves in enumerate(both.faithfulness):
        assert curves.deletion[0] == pytest.approx(both.full_value[column], abs=1e-9)
        assert curves.insertion[0] == pytest.approx(both.base_value[column], abs=1e-9)
    with pytest.raises(ValueError, match="faithfulness= must be True or False"):
        segshap.explain(net, mni_t1, target=1, faithfulness="no", **options)


@pytest.mark.slow
def test_save_renders_the_views_as_slicer_shows_them_when_asked(tmp_path, explained, monkeypatch, caplog):
    import matplotlib.image

    import segshap.figure

    _, ex = explained
    outputs = ex.save(tmp_path / "out", slices=True)
    picture = matplotlib.image.imread(outputs["slices"])
    assert outputs["slices"].name == "slices.png" and picture.shape[1] > 3 * picture.shape[0] > 600
    red = (picture[..., 0] > 0.5) & (picture[..., 1] < 0.35) & (picture[..., 2] < 0.45)
    assert red.sum() > 100  # the features, in the colour of their sign
    # Where slicer-core is missing: asked for, it fails and writes nothing; "when possible", it is left out.
    monkeypatch.setattr(segshap.figure, "slicer_views_available", lambda: False)
    with pytest.raises(RuntimeError, match="slicer-core"):
        ex.save(tmp_path / "none", slices=True)
    assert not (tmp_path / "none").exists()
    assert "slices" not in ex.save(tmp_path / "optional", slices=None)
    assert "slices.png not made" in caplog.text


def test_a_single_slice_is_refused_at_once(mni_t1):
    with pytest.raises(ValueError, match="single slice"):
        segshap.explain(small_unet(1, 3), mni_t1[:, :, 50:51], target=1, device="cpu", **TILING)


def test_intensities_near_the_float32_limit_give_no_overflow_warning(mni_t1, mni_nifti, scripted_model):
    _, data, affine = mni_nifti
    model = segshap.load_model(scripted_model, device="cpu")
    huge = (mni_t1 / np.abs(mni_t1).max() * np.float32(3e38)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        # The sidecar's z-scoring makes an image scaled by 1e30 the image it was scaled from.
        scaled = model.preprocess(data * np.float32(1e30), affine).image
        # The mean baseline of an image whose sum exceeds float32.
        game = segshap.explanation_game(
            small_unet(1, 3),
            huge,
            target=1,
            reference=mni_t1 > 1,
            roi=ROI,
            features="grid",
            n_features=8,
            device="cpu",
            **TILING,
        )
    np.testing.assert_allclose(scaled, model.preprocess(data, affine).image, atol=1e-4)
    assert game.baseline == pytest.approx(float(huge.mean(dtype=np.float64)), rel=1e-6)
