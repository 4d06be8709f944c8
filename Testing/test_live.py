"""Live estimates while the sampling goes on (segshap.anytime, segshap.coarse, segshap.hierarchy, segshap.live): when
updates come, what they hold, stopping with the estimate shown, the coarse first look, and the worker's events."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.estimation import enumerated_shapley
from helpers.games import nonlinear
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import segshap
from segshap import kernel_shap
from segshap.anytime import TOP_COUNT, Stop, Update
from segshap.coarse import COARSE_FROM
from segshap.hierarchy import merge_tree, regions
from segshap.inputs import ArgumentError
from segshap.io import read_image
from segshap.live import stop_when_stable
from segshap.request import UsageError, read_request
from segshap.terminal import ProgressBar


def _paced(game, seconds_per_call: float):
    """The game, taking ``seconds_per_call`` per call (sleeping, so a busy machine does not change the pace)."""

    def value_fn(coalitions: np.ndarray) -> np.ndarray:
        time.sleep(seconds_per_call)
        return game(coalitions)

    return value_fn


def _lattice_pairs(shape: tuple[int, int, int]) -> np.ndarray:
    """Neighbouring cells of a grid of features, numbered in C order."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    pairs = [
        np.stack([np.take(index, range(n - 1), axis), np.take(index, range(1, n), axis)], -1).reshape(-1, 2)
        for axis, n in enumerate(shape)
    ]
    return np.concatenate(pairs)


def test_updates_come_at_the_interval_and_settle_on_the_final_values():
    n_features = 12
    game, _ = nonlinear(n_features, seed=3)
    truth = enumerated_shapley(game, n_features)
    updates: list[Update] = []
    every = 0.25
    result = kernel_shap(
        _paced(game, 0.03), n_features, 40 * n_features, seed=1, batch_size=8, design="chains",
        on_update=updates.append, update_every=every,
    )  # fmt: skip
    assert len(updates) >= 3 and [u.number for u in updates] == list(range(1, len(updates) + 1))
    assert updates[-1].final and not any(u.final for u in updates[:-1])
    np.testing.assert_array_equal(updates[-1].values, result.values)
    np.testing.assert_array_equal(updates[-1].stderr, result.stderr)
    # Updates come no sooner than the interval after the one before (the first as soon as there are two chains).
    assert any(np.all(np.isfinite(u.stderr)) for u in updates[:-1])
    gaps = np.diff([u.seconds for u in updates[:-1]])
    assert np.all(gaps >= every * 0.99), gaps
    assert [u.coalitions for u in updates] == sorted(u.coalitions for u in updates)
    for update in updates:  # each estimate as a result holds one: efficient, with standard errors
        assert update.values.shape == (n_features,) and update.level == "features"
        np.testing.assert_allclose(update.values.sum(), result.full_value - result.base_value, atol=1e-9)
    distance = [np.linalg.norm(u.values - result.values) for u in updates]
    assert distance[-2] < distance[0]
    assert np.linalg.norm(result.values - truth) < np.linalg.norm(updates[0].values - truth)
    assert [r["number"] for r in result.updates] == [u.number for u in updates]


def test_top_changed_counts_the_new_members_of_the_top_ten():
    game, _ = nonlinear(30, seed=0)
    updates: list[Update] = []
    kernel_shap(_paced(game, 0.02), 30, 600, seed=0, batch_size=16, on_update=updates.append, update_every=0.1)
    assert updates[0].top_changed == TOP_COUNT and updates[0].stable_updates == 0
    for before, after in zip(updates, updates[1:]):
        assert after.top_changed == len(set(after.top()) - set(before.top()))
        assert after.stable_updates == (before.stable_updates + 1 if after.top_changed == 0 else 0)


@pytest.mark.parametrize("design", ["chains", "leverage"])
def test_returning_false_stops_and_keeps_that_estimate(design):
    game, _ = nonlinear(20, seed=2)
    seen: list[Update] = []

    def on_update(update: Update) -> bool:
        seen.append(update)
        return update.number < 2

    result = kernel_shap(
        _paced(game, 0.02), 20, 4000, seed=0, batch_size=16, design=design, on_update=on_update, update_every=0.2
    )
    assert result.stop_reason == "user"
    assert len(seen) == 3 and seen[-1].final and seen[1].number == 2
    np.testing.assert_array_equal(result.values, seen[1].values)
    np.testing.assert_array_equal(result.stderr, seen[1].stderr)
    np.testing.assert_array_equal(seen[-1].values, seen[1].values)
    assert result.n_evaluations < 4000


def test_a_stop_set_from_another_thread_keeps_the_last_update_given():
    game, _ = nonlinear(20, seed=4)
    stop = threading.Event()
    given: list[Update] = []

    def on_update(update: Update) -> None:
        given.append(update)
        if update.number == 2:
            threading.Timer(0.05, stop.set).start()

    result = kernel_shap(
        _paced(game, 0.02), 20, 4000, seed=0, batch_size=16, on_update=on_update, update_every=0.2, stop=stop
    )
    assert result.stop_reason == "user" and given[-1].final
    np.testing.assert_array_equal(result.values, given[-2].values)
    np.testing.assert_array_equal(given[-1].values, given[-2].values)


def test_a_slow_callback_does_not_hold_up_the_sampling():
    game, _ = nonlinear(20, seed=1)
    calls_while_blocked = threading.Event()
    calls = []
    blocked_at: list[int] = []

    def value_fn(coalitions: np.ndarray) -> np.ndarray:
        calls.append(len(coalitions))
        if blocked_at and len(calls) >= blocked_at[0] + 5:
            calls_while_blocked.set()
        return game(coalitions)

    def on_update(update: Update) -> bool:
        if blocked_at:
            return False  # enough: stop (the budget would last long)
        blocked_at.append(len(calls))
        # Released only once the engine has evaluated five more batches: it would wait forever if the engine waited
        # for the callback (the timeout only ends the test's wait).
        assert calls_while_blocked.wait(timeout=120)
        return True

    result = kernel_shap(
        value_fn, 20, 10**5, seed=0, batch_size=8, design="chains", on_update=on_update, update_every=0.01
    )
    assert calls_while_blocked.is_set() and result.stop_reason == "user"


def test_an_error_in_the_callback_ends_the_run_with_it():
    game, _ = nonlinear(12, seed=0)

    def on_update(update: Update) -> None:
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        kernel_shap(_paced(game, 0.01), 12, 1000, seed=0, batch_size=8, design="chains", on_update=on_update)


def test_the_regions_tile_the_features_and_each_is_connected():
    shape = (12, 10, 8)
    pairs = _lattice_pairs(shape)
    n_features = int(np.prod(shape))
    tree = merge_tree(n_features, pairs)
    assert tree.shape == (n_features - 1, 4) and np.all(np.diff(tree[:, 2]) >= 0)
    assert tree[-1, 3] == n_features
    labels = regions(tree, 32)
    assert labels.shape == (n_features,) and set(labels.tolist()) == set(range(32))
    sizes = np.bincount(labels)
    assert sizes.max() <= 4 * sizes.min()
    for region in range(32):
        members = np.flatnonzero(labels == region)
        inside = pairs[np.isin(pairs, members).all(axis=1)]
        local = np.searchsorted(members, inside)
        graph = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(len(members),) * 2)
        assert connected_components(graph, directed=False)[0] == 1


def test_features_no_adjacency_connects_are_merged_last():
    pairs = np.array([[0, 1], [2, 3]])
    tree = merge_tree(5, pairs)
    assert {frozenset(map(int, row[:2])) for row in tree[:2]} == {frozenset({0, 1}), frozenset({2, 3})}
    np.testing.assert_array_equal(regions(tree, 3), [0, 0, 1, 1, 2])


def test_many_features_start_from_regions_and_end_on_their_own_values():
    shape = (10, 8, 8)
    n_features = int(np.prod(shape))
    assert n_features > COARSE_FROM
    weights = np.random.default_rng(0).normal(size=n_features)

    def game(coalitions: np.ndarray) -> np.ndarray:
        z = coalitions.astype(np.float64)
        return np.tanh(z @ weights / 20)

    updates: list[Update] = []
    result = kernel_shap(
        _paced(game, 0.01), n_features, 2 * n_features + 2048, seed=0, design="chains", batch_size=64,
        interactions=_lattice_pairs(shape), on_update=updates.append, update_every=0.5,
    )  # fmt: skip
    first = updates[0]
    assert first.level == "regions" and first.regions == 32
    labels = regions(merge_tree(n_features, _lattice_pairs(shape)), 32)
    for region in range(32):  # a region's value shared equally among its features
        assert np.ptp(first.values[labels == region]) < 1e-12
    np.testing.assert_allclose(first.values.sum(), result.full_value - result.base_value, atol=1e-9)
    assert updates[-1].final and updates[-1].level == "features" and result.regions is None
    assert result.values.shape == (n_features,) and np.ptp(result.values[labels == 0]) > 0
    records = [r["level"] for r in result.updates]
    assert records[0] == "regions" and records[-1] == "features"


def test_the_terminal_lists_the_top_five_under_the_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = ProgressBar(stream)
    bar(10, 100)
    values = np.array([0.1, -0.5, 0.02, 0.3, 0.0, 0.2, -0.01])
    update = Update(
        values=values, stderr=np.full(7, 0.01), coalitions=40, forwards=None, seconds=2.0, fraction=0.1,
        top_changed=2, stable_updates=0, number=2, feature_ids=np.arange(1, 8),
    )  # fmt: skip
    bar.show_update(update)
    shown = stream.getvalue()
    lines = [line.replace("\x1b[K", "") for line in shown.split("\n") if "feature" in line]
    assert [line.split(":")[0].strip() for line in lines] == [
        "1. feature 2",
        "2. feature 4",
        "3. feature 6",
        "4. feature 1",
        "5. feature 3",
    ]
    assert "-0.5000 ± 0.0100" in lines[0] and "top 10: 2 new since the last update" in shown
    bar.message("segshap: writing")
    assert stream.getvalue().endswith(f"\x1b[{len(bar.bar)}C") and "segshap: writing\n" in stream.getvalue()
    plain = io.StringIO()
    ProgressBar(plain).show_update(update)
    assert plain.getvalue() == ""


@pytest.mark.slow
def test_the_worker_streams_estimates_and_a_stop_request_keeps_the_last(mni_nifti, scripted_model, tmp_path):
    image, _, _ = mni_nifti
    stop_file = tmp_path / "stop"
    request = {
        "image": str(image),
        "model": str(scripted_model),
        "target": "tissue_b",
        "roi": [[36, 56], [46, 66], [36, 56]],
        "out": str(tmp_path / "out"),
        "options": {"features": "grid", "n_features": 40, "nsamples": 40000, "design": "chains", "device": "cpu"},
        "update_every": 0.2,
        "live_folder": str(tmp_path / "live"),
        "stop_file": str(stop_file),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    worker = subprocess.Popen(
        [sys.executable, "-m", "segshap.cli", "worker", "--request", str(tmp_path / "request.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    events = []
    for line in worker.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "estimate" and not stop_file.exists():
            first = events[-1]
            heat, affine = read_image(first["heatmap"])
            stop_file.touch()  # the user pressed "Stop and keep" on seeing the first estimate
    assert worker.wait(timeout=600) == 0
    assert events[-1]["event"] == "done"
    estimates = [e for e in events if e["event"] == "estimate"]
    assert estimates[-1]["final"] and not any(e["final"] for e in estimates[:-1])
    assert {"update", "level", "values", "stderr", "top", "heatmap", "text", "fraction"} <= set(first)
    assert len(first["top"]) == 10 and first["top"][0]["feature"] in first["feature_ids"]
    ids = np.array(first["feature_ids"])
    assert heat.shape == read_image(str(image))[0].shape
    np.testing.assert_allclose(
        np.unique(heat[heat != 0]), np.unique(np.float32(first["values"])[np.float32(first["values"]) != 0])
    )
    report = json.loads(Path(events[-1]["outputs"]["report"]).read_text())
    assert report["stats"]["stop_reason"] == "user"
    kept = {row["id"]: row["value"] for row in report["features"]}
    last_shown = estimates[-2]
    np.testing.assert_allclose([kept[i] for i in ids], last_shown["values"])
    np.testing.assert_allclose(estimates[-1]["values"], last_shown["values"])
    assert set(events[-1]["outputs"]) == {"heatmap", "features", "report", "overview"}
    assert "stopped by the user" in events[-1]["summary"]
    assert len(report["stats"]["updates"]) == len(estimates)
    final_heat, _ = read_image(estimates[-1]["heatmap"])
    np.testing.assert_allclose(final_heat, read_image(events[-1]["outputs"]["heatmap"])[0], atol=1e-6)
    assert np.allclose(affine, read_image(events[-1]["outputs"]["heatmap"])[1])


def test_stop_when_stable_stops_once_the_top_ten_held_still_for_n_updates():
    shown: list[int] = []

    def update(number: int, stable: int) -> Update:
        return Update(
            values=np.zeros(3), stderr=np.zeros(3), coalitions=10 * number, forwards=None, seconds=float(number),
            fraction=0.1, top_changed=0 if stable else 3, stable_updates=stable, number=number,
        )  # fmt: skip

    relay = stop_when_stable(lambda u: shown.append(u.number), 2)
    answers = [relay(update(n, stable)) for n, stable in enumerate([0, 1, 0, 1, 2], 1)]
    assert answers == [None, None, None, None, False] and shown == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"update_every": 2.0}, "names no live_folder"),
        ({"update_every": 0, "live_folder": "live"}, "update_every"),
        ({"stop_when_stable": 0}, "stop_when_stable"),
        ({"task": "segment", "stop_file": "stop"}, "an explanation's"),
    ],
)
def test_a_request_with_bad_live_keys_is_refused_before_anything_loads(tmp_path, extra, fragment):
    request = {"image": "image.nii.gz", "model": "model.pt", "target": 1, "out": str(tmp_path / "out"), **extra}
    if request.get("task") == "segment":
        request.pop("target")
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    with pytest.raises((UsageError, ArgumentError), match=fragment):
        read_request(path)


def test_explain_hands_updates_on_the_image_grid(mni_nifti, scripted_model):
    _, voxels, affine = mni_nifti
    updates: list[Update] = []
    explanation = segshap.explain(
        str(scripted_model), voxels, target="tissue_b", roi=((40, 52), (50, 62), (40, 52)), affine=affine,
        features="grid", n_features=27, nsamples=400, design="chains", faithfulness=False, device="cpu",
        on_update=updates.append, update_every=0.05,
    )  # fmt: skip
    last = updates[-1]
    assert last.final and len(updates) >= 2
    np.testing.assert_array_equal(last.values, explanation.values)
    np.testing.assert_array_equal(last.feature_ids, explanation.feature_ids)
    np.testing.assert_array_equal(last.heatmap(), explanation.heatmap)
    np.testing.assert_allclose(last.affine, affine)
    assert updates[0].heatmap().shape == voxels.shape
    # Seconds since the call, the set-up included, as the report lists them.
    recorded = [record["seconds"] for record in explanation.stats["updates"]]
    np.testing.assert_allclose(recorded, [u.seconds for u in updates], atol=2e-3)
    assert 0 < updates[0].seconds <= explanation.stats["seconds"]


def test_a_stop_may_name_the_update_to_keep():
    game, _ = nonlinear(20, seed=6)
    stop = Stop()
    given: list[Update] = []

    def on_update(update: Update) -> None:
        given.append(update)
        if update.number == 3:  # a viewer still shows update 2 when the user presses stop
            stop.request(keep=2)

    result = kernel_shap(
        _paced(game, 0.02), 20, 4000, seed=0, batch_size=16, on_update=on_update, update_every=0.2, stop=stop
    )
    assert result.stop_reason == "user" and given[-1].final
    np.testing.assert_array_equal(result.values, given[1].values)
    assert not np.array_equal(given[2].values, given[1].values)
