"""The explain pipeline on a real MRI and a real (small, seeded) network: wiring, exactness of the end points,
features only where they matter, outputs on disk, and errors."""

from __future__ import annotations

import dataclasses
import json
import warnings

import matplotlib
import numpy as np
import pytest
from helpers.contract import perturbed, reference_values
from helpers.models import small_unet

import segshap
from segshap.faithfulness import CURVE_POINTS
from segshap.io import read_image
from segshap.pipeline import FAITHFULNESS_SHARE
from segshap.reporting import summary

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
    first = report["features"][0]  # both rounded to 0.01: the RAS one may differ by its rounding
    assert first["centroid_ras_mm"] == pytest.approx([2 * c for c in first["centroid_voxel"]], abs=0.011)
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
def test_a_forward_budget_bounds_the_whole_run_and_is_reported(mni_t1, tmp_path):
    """max_forwards bounds the estimation and the faithfulness curves together, the curves taking at most their
    share; progress counts forwards; explanation.json says how it went."""
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
        max_forwards=300,
        progress=lambda done, total: reports.append((done, total)),
        **TILING,
    )
    stats = ex.stats
    assert stats["design"] == "chains" and stats["stop_reason"] == "max_forwards"
    assert 0 < stats["estimation_forwards"] <= 300 / (1 + FAITHFULNESS_SHARE) and stats["evaluations"] < 5000
    assert stats["forwards_per_coalition"] == pytest.approx(stats["estimation_forwards"] / stats["evaluations"])
    spent = stats["estimation_forwards"] + stats["faithfulness_forwards"]
    assert spent <= 300 and stats["faithfulness_forwards"] <= FAITHFULNESS_SHARE * stats["estimation_forwards"]
    assert (ex.faithfulness == ()) == (stats["faithfulness_skipped"] is not None)
    assert reports[-1] == (spent, spent) and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert all(total == 300 for _, total in reports[: stats["evaluations"] // 64])
    assert abs(ex.values.sum() - (ex.full_value - ex.base_value)) < 1e-9
    ex.save(tmp_path)
    report = json.loads((tmp_path / "explanation.json").read_text())
    assert report["settings"]["design"] == "chains" and report["settings"]["max_forwards"] == 300
    assert report["stats"]["stop_reason"] == "max_forwards" and "forwards_per_coalition" in report["stats"]


@pytest.mark.slow
def test_with_many_features_the_curves_take_steps_of_several_and_a_bounded_share(mni_t1):
    """64 features: 20 steps per curve, each switching about 3 features, at most a quarter of the estimation's
    forwards; a budget too small for even two steps skips the curves and says why."""
    net = small_unet(1, 3)
    options = dict(roi=ROI, features="grid", n_features=64, device="cpu", **TILING)
    ex = segshap.explain(net, mni_t1, target=1, nsamples=600, **options)
    (curves,) = ex.faithfulness
    m = ex.feature_ids.size
    assert m > CURVE_POINTS and curves.steps[0] == 0 and curves.steps[-1] == m
    assert curves.deletion.shape == curves.steps.shape and len(curves.steps) <= CURVE_POINTS + 1
    assert 0 < ex.stats["faithfulness_forwards"] <= FAITHFULNESS_SHARE * ex.stats["estimation_forwards"]
    assert curves.deletion[0] == pytest.approx(ex.full_value, abs=1e-9)
    assert curves.insertion[-1] == pytest.approx(ex.full_value, abs=1e-9)
    assert curves.deletion_auc == pytest.approx(np.trapezoid(curves.deletion, curves.steps / m))
    starved = segshap.explain(net, mni_t1, target=1, nsamples=600, max_forwards=30, **options)
    assert starved.faithfulness == () and "steps per curve" in starved.stats["faithfulness_skipped"]
    assert starved.stats["estimation_forwards"] + starved.stats["faithfulness_forwards"] <= 30


def test_faithfulness_curves_are_the_game_s_values_along_the_ranking(mni_t1, explained, tmp_path):
    """Every explanation carries deletion and insertion curves; their points are full-volume inference values."""
    net, ex = explained
    (curves,) = ex.faithfulness
    m, points = ex.feature_ids.size, curves.steps.size
    assert curves.deletion.shape == curves.insertion.shape == curves.random_deletion.shape == (points,)
    assert points <= min(m, CURVE_POINTS) + 1 and curves.steps[0] == 0 and curves.steps[-1] == m
    for start, end in ((curves.deletion, curves.insertion), (curves.random_deletion, curves.random_insertion)):
        assert start[0] == pytest.approx(ex.full_value, abs=1e-9) and start[-1] == pytest.approx(
            ex.base_value, abs=1e-9
        )
        assert end[0] == pytest.approx(ex.base_value, abs=1e-9) and end[-1] == pytest.approx(ex.full_value, abs=1e-9)
    roi = np.zeros(mni_t1.shape, bool)
    roi[tuple(slice(a, b) for a, b in ROI)] = True
    masks = [segshap.predict(net, mni_t1, device="cpu", **TILING) == 1]
    order, point = np.argsort(-ex.values, kind="stable"), points // 3
    taken = np.zeros(m, bool)
    taken[order[: curves.steps[point]]] = True
    for coalition, expected in ((~taken, curves.deletion[point]), (taken, curves.insertion[point])):
        image = perturbed(mni_t1, ex.feature_map, ex.feature_ids, coalition, float(mni_t1.mean()))
        assert reference_values(net, image, roi, masks, [1], "soft_dice", **TILING)[0] == pytest.approx(
            expected, abs=1e-5
        )
    assert ex.stats["faithfulness_forwards"] == curves.forwards > 0
    ex.save(tmp_path)
    entry = json.loads((tmp_path / "explanation.json").read_text())["faithfulness"]
    assert entry["deletion_auc"] == pytest.approx(curves.deletion_auc) and len(entry["random_insertion"]) == points


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


def test_values_whose_standard_errors_were_not_estimated_are_said_to_be_rough(explained, tmp_path):
    """A run stopped at the time limit with fewer samples than features has no standard errors: the summary line,
    the warnings and explanation.json say that the values are rough instead of showing them as exact."""
    _, ex = explained
    assert ex.warnings == [] and "rough" not in summary(ex)
    rough = dataclasses.replace(
        ex,
        stderr=np.full_like(ex.stderr, np.nan),
        stats={**ex.stats, "stop_reason": "max_seconds", "evaluations": 20},
        faithfulness=(),
    )
    (warning,) = rough.warnings
    assert "standard errors not estimated" in warning and "time limit" in warning and "rough" in warning
    line = summary(rough)
    assert f"stopped at the time limit after 20 of {ex.stats['budget']:,} samples" in line and warning in line
    assert "coalitions" not in line and "forwards" not in line
    unsettled = dataclasses.replace(
        ex, stats={**ex.stats, "stop_reason": "max_forwards"}, settings={**ex.settings, "tolerance": 1e-6}
    )
    assert any("before the values settled" in w for w in unsettled.warnings)
    rough.save(tmp_path)
    assert json.loads((tmp_path / "explanation.json").read_text())["warnings"] == [warning]
