"""Only what can matter is computed, and each distinct window input is computed once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.contract import grid_features, perturbed, reference_values
from helpers.models import CountingModel, PerSample, small_unet
from monai.inferers import sliding_window_inference

import segshap

PATCH = (16, 16, 16)


@pytest.fixture()
def setting(mni_t1):
    image = mni_t1[::2, ::2, ::2][5:45, 8:50, 4:40]
    reference = np.zeros(image.shape, dtype=bool)
    reference[6:14, 5:12, 7:15] = True
    features = grid_features(image.shape, 6)
    return image, reference, features


def _window_columns(engine, image, features, baseline=0.0):
    """For each window the engine runs, the columns of the features that change its input (worked out here)."""
    padded = engine.tiling.pad(features, 0)
    changed = engine.tiling.pad(image) != baseline
    columns = {}
    for w in engine.windows:
        box = tuple(slice(a, b) for a, b in engine.tiling.window_box(w))
        inside = np.unique(padded[box][changed[box]])
        columns[int(w)] = np.flatnonzero(np.isin(engine.feature_ids, inside))
    return columns


def _distinct_keys(columns, coalitions):
    return {(w, tuple(row[cols])) for w, cols in columns.items() for row in coalitions}


def test_patch_forwards_equal_distinct_keys(setting):
    image, reference, features = setting
    model = CountingModel(small_unet())
    engine = segshap.PatchEngine(model, image, features, reference=reference, patch_size=PATCH, batch_size=4)
    columns = _window_columns(engine, image, features)
    m = engine.n_players
    extremes = np.array([np.ones(m, bool), np.zeros(m, bool)])
    assert engine.stats["patch_forwards"] == len(_distinct_keys(columns, extremes)) == sum(model.batches)

    rng = np.random.default_rng(0)
    seen = [extremes]
    for n, p in [(20, 0.5), (30, 0.9), (25, 0.2)]:
        coalitions = rng.random((n, m)) < p
        repeats = min(n // 3, len(seen[-1]))
        coalitions[:repeats] = seen[-1][:repeats]  # coalitions already evaluated come again
        calls_before, forwards_before = len(model.batches), engine.stats["patch_forwards"]
        engine.evaluate(coalitions)
        seen.append(coalitions)
        expected = len(_distinct_keys(columns, np.concatenate(seen)))
        assert engine.stats["patch_forwards"] == expected == sum(model.batches)
        # Distinct misses of all coalitions of a call are pooled and run batch_size at a time.
        new = engine.stats["patch_forwards"] - forwards_before
        assert len(model.batches) - calls_before == math.ceil(new / 4)
        assert max(model.batches) <= 4
    lookups = sum(len(c) for c in seen[1:]) * len(columns)
    forwards_for_coalitions = engine.stats["patch_forwards"] - len(_distinct_keys(columns, extremes))
    assert engine.stats["cache_hits"] == lookups - forwards_for_coalitions
    assert engine.stats["coalitions"] == 75


def test_seen_keys_are_never_run_again(setting):
    image, reference, features = setting
    engine = segshap.PatchEngine(small_unet(), image, features, reference=reference, patch_size=PATCH)
    coalitions = np.random.default_rng(1).random((16, engine.n_players)) < 0.5
    first = engine.evaluate(coalitions)
    forwards = engine.stats["patch_forwards"]
    again = engine.evaluate(coalitions[::-1])
    assert engine.stats["patch_forwards"] == forwards
    np.testing.assert_array_equal(again[::-1], first)
    extremes = np.array([np.ones(engine.n_players, bool), np.zeros(engine.n_players, bool)])
    engine.evaluate(extremes)
    assert engine.stats["patch_forwards"] == forwards


@pytest.mark.slow
def test_values_do_not_depend_on_batching_or_the_cache_budget(setting):
    image, reference, features = setting
    model = PerSample(small_unet())
    options = dict(reference=reference, patch_size=PATCH, value="soft_dice")
    together = segshap.PatchEngine(model, image, features, **options)
    coalitions = np.random.default_rng(2).random((12, together.n_players)) < 0.5
    all_at_once = together.evaluate(coalitions)
    one_by_one = segshap.PatchEngine(model, image, features, batch_size=1, **options)
    singles = np.concatenate([one_by_one.evaluate(c[None]) for c in coalitions])
    starved = segshap.PatchEngine(model, image, features, cache_bytes=0, **options)
    starved_values = np.concatenate([starved.evaluate(coalitions[:6]), starved.evaluate(coalitions[6:])])
    starved_values = np.concatenate([starved_values, starved.evaluate(coalitions)])
    # Window outputs are bitwise the same; only the float64 sums behind a value may round differently (torch
    # splits a reduction differently when it has fewer rows to reduce).
    np.testing.assert_allclose(singles, all_at_once, rtol=0, atol=1e-10)
    np.testing.assert_allclose(starved_values, np.concatenate([all_at_once, all_at_once]), rtol=0, atol=1e-10)
    assert starved.stats["cache_evictions"] > 0
    assert starved.stats["patch_forwards"] > together.stats["patch_forwards"]


def test_cached_outputs_reuse_their_memory_from_call_to_call(setting):
    image, reference, features = setting
    engine = segshap.PatchEngine(
        PerSample(small_unet()), image, features, reference=reference, patch_size=PATCH, cache_bytes=0
    )
    coalitions = np.random.default_rng(3).random((10, engine.n_players)) < 0.5
    first = engine.evaluate(coalitions)
    after_first = engine.stats
    for _ in range(3):  # every output is run again (no budget) into the slots the first call left free
        np.testing.assert_allclose(engine.evaluate(coalitions), first, rtol=0, atol=1e-10)
    stats = engine.stats
    assert stats["cache_reserved_bytes"] == after_first["cache_reserved_bytes"]
    assert stats["cache_bytes"] == after_first["cache_bytes"]  # the pinned all-on and all-off outputs only
    assert stats["patch_forwards"] > after_first["patch_forwards"] and stats["cache_evictions"] > 0


def test_only_windows_touching_the_roi_run_and_only_their_features_count(setting):
    image, reference, features = setting
    model = CountingModel(PerSample(small_unet()))
    roi = ((2, 10), (30, 40), (0, 6))
    engine = segshap.PatchEngine(
        model, image, features, reference=np.ones(image.shape, bool), roi=roi, patch_size=PATCH, overlap=0.5
    )
    roi_mask = np.zeros(image.shape, dtype=bool)
    roi_mask[tuple(slice(a, b) for a, b in roi)] = True
    padded_roi = engine.tiling.pad(roi_mask, False)
    touching = [
        w
        for w in range(engine.tiling.n_windows)
        if padded_roi[tuple(slice(a, b) for a, b in engine.tiling.window_box(w))].any()
    ]
    assert engine.windows.tolist() == touching
    assert len(touching) < engine.tiling.n_windows
    support = np.zeros(engine.tiling.padded_shape, dtype=bool)
    for w in touching:
        support[tuple(slice(a, b) for a, b in engine.tiling.window_box(w))] = True
    expected_ids = np.unique(engine.tiling.pad(features, 0)[support])
    np.testing.assert_array_equal(engine.feature_ids, expected_ids[expected_ids > 0])

    # A feature outside the support cannot change the value of full-volume inference.
    outside = np.setdiff1d(np.unique(features), engine.feature_ids)
    assert outside.size > 0
    everything = np.ones((1, engine.n_players), dtype=bool)
    x = perturbed(image, features, outside, np.zeros(outside.size, bool), 5.0)
    with torch.no_grad():
        full = sliding_window_inference(torch.from_numpy(x)[None], PATCH, 4, model, overlap=0.5, mode="gaussian")
    assert not torch.equal(
        full,
        sliding_window_inference(torch.from_numpy(image)[None, None], PATCH, 4, model, overlap=0.5, mode="gaussian"),
    )
    want = reference_values(model, x, roi_mask, [np.ones(image.shape, bool)], [1], "soft_dice", PATCH, 0.5, "gaussian")
    assert abs(engine.evaluate(everything)[0] - want[0]) <= 1e-5


def test_features_that_equal_the_baseline_change_nothing(setting):
    """Voxels already at the baseline (air at 0, say) do not change a window's input when switched off."""
    image, reference, features = setting
    image = image.copy()
    image[:, 20:, :] = 0.0
    model = CountingModel(PerSample(small_unet()))
    engine = segshap.PatchEngine(model, image, features, reference=reference, patch_size=PATCH, baseline=0.0)
    columns = _window_columns(engine, image, features)
    air_only = np.setdiff1d(np.unique(features[:, 20:, :]), np.unique(features[:, :20, :]))
    assert air_only.size and not np.isin(air_only, engine.feature_ids).any()
    assert any(
        c.size
        < np.unique(engine.tiling.pad(features, 0)[tuple(slice(a, b) for a, b in engine.tiling.window_box(w))]).size - 1
        for w, c in columns.items()
    )
    coalitions = np.random.default_rng(3).random((10, engine.n_players)) < 0.5
    values = engine.evaluate(coalitions)
    extremes = np.array([np.ones(engine.n_players, bool), np.zeros(engine.n_players, bool)])
    assert engine.stats["patch_forwards"] == len(_distinct_keys(columns, np.concatenate([extremes, coalitions])))
    roi = np.zeros(image.shape, dtype=bool)
    roi[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    for coalition, value in zip(coalitions, values):
        x = perturbed(image, features, engine.feature_ids, coalition, 0.0)
        want = reference_values(model, x, roi, [reference], [1], "soft_dice", PATCH, 0.5, "gaussian")
        assert abs(value - want[0]) <= 1e-5


def test_feature_windows_and_forward_cost_tell_what_evaluation_runs(setting):
    image, reference, features = setting
    engine = segshap.PatchEngine(small_unet(), image, features, reference=reference, patch_size=PATCH, batch_size=4)
    columns = _window_columns(engine, image, features)
    expected = [sorted(w for w, cols in columns.items() if j in cols) for j in range(engine.n_players)]
    assert [sorted(w.tolist()) for w in engine.feature_windows] == expected
    assert all(np.isin(w, engine.windows).all() for w in engine.feature_windows)

    rng = np.random.default_rng(3)
    batches = [rng.random((12, engine.n_players)) < p for p in (0.5, 0.9, 0.5)]
    batches[2][:6] = batches[1][:6]  # part of the third batch is cached by then
    for coalitions in batches:
        predicted = engine.forward_cost(coalitions)
        before = engine.stats["patch_forwards"]
        engine.evaluate(coalitions)
        assert engine.stats["patch_forwards"] - before == predicted > 0
        assert engine.forward_cost(coalitions) == 0


@pytest.mark.slow
def test_a_chain_step_runs_only_the_windows_of_the_feature_it_switches(setting):
    """Walking a permutation chain with retain=, a step reruns just the switched feature's windows, even with no
    cache budget at all: what the walk continues from is kept, everything else is forgotten."""
    image, reference, features = setting
    engine = segshap.PatchEngine(
        small_unet(), image, features, reference=reference, patch_size=PATCH, batch_size=4, cache_bytes=0
    )
    m = engine.n_players
    window_features = {}
    for j, windows in enumerate(engine.feature_windows):
        for w in windows.tolist():
            window_features.setdefault(w, []).append(j)
    order = np.random.default_rng(1).permutation(m)
    coalition = np.zeros(m, bool)
    for step, feature in enumerate(order):
        coalition = coalition.copy()
        coalition[feature] = True
        before = engine.stats["patch_forwards"]
        engine.evaluate(coalition[None], retain=np.array([True]))
        ran = engine.stats["patch_forwards"] - before
        # A window whose features are now all on has the all-on input, which is always cached.
        expected = sum(not coalition[window_features[w]].all() for w in engine.feature_windows[feature].tolist())
        assert ran == expected, (step, feature)
    assert ran == 0
    # Without retain and without a budget, the previous step is gone: a step reruns every window it touches.
    engine.evaluate(np.eye(m, dtype=bool)[:1], retain=np.array([False]))
    two = np.eye(m, dtype=bool)[:1].copy()
    two[0, order[0] if order[0] != 0 else order[1]] = True
    before = engine.stats["patch_forwards"]
    engine.evaluate(two)
    touched = set(engine.feature_windows[0].tolist()) | set(
        engine.feature_windows[int(np.flatnonzero(two[0])[-1])].tolist()
    )
    assert engine.stats["patch_forwards"] - before == len(touched)


def test_the_host_level_returns_evicted_outputs_with_the_same_values(setting):
    """With no device budget, outputs evicted from the device wait in the host level: asking again runs nothing
    and gives the same values, bit for bit; without the host level they run again."""
    image, reference, features = setting
    options = dict(reference=reference, patch_size=PATCH, cache_bytes=0)
    two_levels = segshap.PatchEngine(small_unet(), image, features, host_cache_bytes=2**30, **options)
    coalitions = np.random.default_rng(4).random((10, two_levels.n_players)) < 0.5
    set_up = two_levels.stats["patch_forwards"]
    first = two_levels.evaluate(coalitions)
    forwards = two_levels.stats["patch_forwards"]
    assert two_levels.stats["cache_evictions"] > 0 and two_levels.stats["cache_host_entries"] > 0
    again = two_levels.evaluate(coalitions[::-1])[::-1]
    assert two_levels.stats["patch_forwards"] == forwards and two_levels.stats["cache_host_hits"] > 0
    np.testing.assert_array_equal(again, first)
    one_level = segshap.PatchEngine(small_unet(), image, features, **options)
    np.testing.assert_array_equal(one_level.evaluate(coalitions), first)
    one_level.evaluate(coalitions)
    assert one_level.stats["patch_forwards"] - set_up == 2 * (forwards - set_up)
    assert one_level.stats["cache_host_hits"] == 0


@pytest.mark.slow
def test_chains_give_the_same_estimates_however_their_steps_are_batched(setting):
    """The chains walk side by side so that a forward batch fills; how many steps go to the engine per call and
    how many windows per forward change the order of evaluation only: the same seed gives the same estimates."""
    image, reference, features = setting
    model = PerSample(small_unet())  # window outputs that do not depend on what else is in the batch
    results = []
    for rows, windows in ((8, 1), (512, 16)):
        engine = segshap.PatchEngine(model, image, features, reference=reference, patch_size=PATCH, batch_size=windows)
        result = segshap.kernel_shap(
            engine.evaluate, engine.n_players, 4 * engine.n_players, seed=3, design="chains", batch_size=rows
        )
        results.append((result, engine.stats))
    (first, first_stats), *others = results
    for result, stats in others:
        assert result.n_evaluations == first.n_evaluations
        assert stats["patch_forwards"] == first_stats["patch_forwards"]
        # Values may differ in the last bits of their float64 sums (torch splits reductions by batch shape).
        np.testing.assert_allclose(result.values, first.values, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.stderr, first.stderr, rtol=1e-6, atol=1e-10)
    assert results[-1][1]["forward_batches"] < results[0][1]["forward_batches"]
