"""Coalition designs: permutation chains with a regression-adjusted estimate, the choice between designs, limits
in cost and time, the surrogate, and features by the thousand."""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers.estimation import Recorder, enumerated_shapley
from helpers.games import additive, nonlinear, pairwise

import segshap.chains
import segshap.leverage
from segshap import kernel_shap
from segshap.chains import loop_coalitions
from segshap.estimator import shapley_from_enumeration
from segshap.surrogate import adjacent_pairs, fit_boosted_trees, fit_surrogate


def test_a_loop_walks_one_feature_at_a_time_through_every_size():
    permutation = np.random.default_rng(0).permutation(9)
    loop = loop_coalitions(permutation)
    walk = np.concatenate([np.zeros((1, 9), bool), loop[:8], np.ones((1, 9), bool), loop[8:], np.zeros((1, 9), bool)])
    assert np.all(np.sum(walk[1:] != walk[:-1], axis=1) == 1)
    assert sorted(loop.sum(axis=1).tolist()) == sorted(2 * list(range(1, 9)))
    np.testing.assert_array_equal(loop[8:], ~loop[:8])  # the second half holds the complements of the prefixes


@pytest.mark.parametrize("make_game", [additive, pairwise])
def test_chains_recover_second_order_games_exactly(make_game):
    """The surrogate has main effects and every pair here, so its exact Shapley values are the game's."""
    game, truth = make_game(10, seed=4)
    result = kernel_shap(game, 10, 200, seed=0, design="chains")
    assert result.design == "chains" and not result.exact
    np.testing.assert_allclose(result.values, truth, atol=1e-6 * np.abs(truth).max())


def test_chain_estimates_are_unbiased(monkeypatch):
    """The mean over seeds of a nonlinear game's cross-fitted chain estimates meets the exact values within the
    spread of that mean (cross-fitting keeps each chain's residual independent of the surrogate it is taken
    against). The boosted-tree adjustment, which may trade a little bias for variance, is switched off here."""
    monkeypatch.setattr(segshap.chains, "_ADJUST_UNITS", 10**9)
    n_features, seeds = 10, 120
    game, _ = nonlinear(n_features, seed=2)
    truth = enumerated_shapley(game, n_features)
    estimates = np.array([kernel_shap(game, n_features, 80, seed=s, design="chains").values for s in range(seeds)])
    mean_error = estimates.mean(axis=0) - truth
    spread = estimates.std(axis=0, ddof=1) / np.sqrt(seeds)
    assert np.all(np.abs(mean_error) <= 4 * spread + 1e-12), np.abs(mean_error / spread).max()
    # And the bias is small against the error of one run: it does not dominate what a user sees.
    assert np.linalg.norm(mean_error) < 0.25 * np.mean(np.linalg.norm(estimates - truth, axis=1))


@pytest.mark.parametrize("n_features, budget", [(12, 96), (30, 700), (60, 1000)])
def test_chains_evaluate_no_coalition_twice_and_keep_efficiency(n_features, budget):
    game, _ = nonlinear(n_features, seed=5)
    recorder = Recorder(game)
    result = kernel_shap(recorder, n_features, budget, seed=2, batch_size=64, design="chains")
    evaluated = recorder.coalitions
    assert result.design == "chains" and len(evaluated) == result.n_evaluations <= budget
    assert len(np.unique(np.packbits(evaluated, axis=1), axis=0)) == len(evaluated)
    np.testing.assert_allclose(result.coalition_values, game(evaluated))
    assert result.efficiency_error <= 1e-9 * max(abs(result.full_value - result.base_value), 1e-12)
    assert np.all(np.isfinite(result.stderr)) and np.all(result.stderr >= 0)


def test_chain_walks_tell_the_value_function_what_to_retain():
    game, _ = nonlinear(20, seed=1)
    calls = []

    def value_fn(coalitions, retain):
        calls.append((coalitions.copy(), retain.copy()))
        return game(coalitions)

    kernel_shap(value_fn, 20, 400, seed=0, batch_size=16, design="chains")
    walked = [(c, r) for c, r in calls if len(c) > 2]
    assert walked and all(r.dtype == bool and r.shape == (len(c),) for c, r in walked)
    # A batch retains nothing only where every walk in it ends (the last batch of a round).
    assert np.mean([r.any() for _, r in walked]) >= 0.75
    # Each retained row is where a walk continues: the next batch mostly holds a coalition one feature away from it
    # (more where the walk passes the full coalition, or ones evaluated before, which are not evaluated again).
    nearest = []
    for (rows, retain), (following, _) in zip(walked, walked[1:]):
        distance = (rows[retain][:, None, :] != following[None, :, :]).sum(axis=2)
        nearest.extend(distance.min(axis=1).tolist())
    assert np.mean(np.array(nearest) == 1) >= 0.75


def _local_cost(coalitions: np.ndarray) -> float:
    """What an engine with walk-friendly caching charges, roughly: a row one feature away from a row before it (or
    from the empty or full coalition) costs 1, any other row 10."""
    m = coalitions.shape[1]
    seen = np.array([np.zeros(m, bool), np.ones(m, bool)])
    total = 0.0
    for row in coalitions:
        total += 1.0 if (seen != row).sum(axis=1).min() <= 1 else 10.0
        seen = np.vstack([seen, row])
    return total


@pytest.mark.slow
def test_auto_picks_chains_when_they_fit_and_their_coalitions_are_cheap(monkeypatch):
    # The choice comes before any sampling; the regression adjustments after it only cost time here.
    monkeypatch.setattr(segshap.leverage, "ADJUST_CELLS", 0)
    monkeypatch.setattr(segshap.chains, "ADJUST_CELLS", 0)
    game, _ = nonlinear(20, seed=3)
    assert kernel_shap(game, 20, 400, design="auto").design == "leverage"  # every coalition costs the same ...
    assert kernel_shap(game, 20, 40, design="auto").design == "chains"  # ... and at 2M Leverage SHAP is unstable
    assert kernel_shap(game, 20, 400, design="auto", forward_cost=_local_cost).design == "chains"
    assert kernel_shap(game, 20, 39, design="auto", forward_cost=_local_cost).design == "leverage"  # no chain fits

    # The chains' error per coalition grows with the budget in multiples of M: the same 3x cheaper coalitions
    # win at 4M and lose at 16M ...
    def cheaper(factor):  # a walk's coalitions cost 1, any others `factor`
        return lambda c: len(c) * (1.0 if _local_cost(c) <= 2 * len(c) else factor)

    assert kernel_shap(game, 20, 80, design="auto", forward_cost=cheaper(3.0)).design == "chains"
    assert kernel_shap(game, 20, 320, design="auto", forward_cost=cheaper(3.0)).design == "leverage"
    # ... and falls with M: at 16M, the same 3x cheaper coalitions win with 135 features.
    wide, _ = nonlinear(135, seed=3)
    assert kernel_shap(wide, 135, 16 * 135, design="auto", forward_cost=cheaper(3.0)).design == "chains"
    assert kernel_shap(nonlinear(6)[0], 6, 64, design="chains").design == "exact"
    with pytest.raises(ValueError, match="design='chains' needs a budget of at least 40"):
        kernel_shap(game, 20, 30, design="chains")


@pytest.mark.parametrize("design", ["chains", "leverage"])
def test_a_forward_limit_stops_before_it_is_exceeded(design):
    game, _ = nonlinear(16, seed=2)
    result = kernel_shap(
        game, 16, 5000, design=design, batch_size=32, forward_cost=lambda c: 3.0 * len(c), max_forwards=900
    )
    assert result.stop_reason == "max_forwards" and result.forwards <= 900 and result.n_evaluations <= 300
    assert result.n_evaluations >= 300 - 32  # it stopped at the last batch that fitted
    assert result.efficiency_error <= 1e-9
    with pytest.raises(ValueError, match="max_forwards needs forward_cost"):
        kernel_shap(game, 16, 500, max_forwards=10)


@pytest.mark.slow
def test_a_time_limit_stops_at_the_pace_so_far():
    game, _ = nonlinear(40, seed=2)

    def slow(coalitions):
        time.sleep(0.05)
        return game(coalitions)

    started = time.perf_counter()
    result = kernel_shap(slow, 40, 100_000, batch_size=32, max_seconds=1.0)
    assert result.stop_reason == "max_seconds" and 2 + 2 * 32 <= result.n_evaluations < 100_000
    assert result.efficiency_error <= 1e-9
    assert time.perf_counter() - started < 60  # it did stop: the budget alone would take minutes


def test_surrogate_recovers_a_pairwise_game_and_its_shapley_values():
    game, truth = pairwise(8, seed=6)
    coalitions = np.random.default_rng(0).random((200, 8)) < 0.5
    pairs = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)])
    surrogate = fit_surrogate(coalitions, game(coalitions)[:, None], pairs)
    np.testing.assert_allclose(surrogate(coalitions)[:, 0], game(coalitions), atol=1e-3)
    np.testing.assert_allclose(surrogate.shapley_values()[:, 0], truth, atol=1e-3)


def test_adjacent_pairs_are_the_features_that_touch():
    feature_map = np.zeros((4, 4, 2), dtype=np.int64)
    feature_map[:2, :2] = 5
    feature_map[2:, :2] = 7
    feature_map[:2, 2:] = 9  # touches 5 only; 0 never counts
    pairs = adjacent_pairs(feature_map, np.array([5, 7, 9]))
    assert pairs.tolist() == [[0, 1], [0, 2]]


@pytest.mark.slow
def test_thousands_of_features_take_less_memory_than_one_m_by_m_matrix():
    """Fewer evaluated rows than features: the solver works on the rows, not on M x M matrices (its peak here is
    about 0.7 of one M x M float64 matrix: the rows and their copies)."""
    n_features = 3000
    game, truth = additive(n_features, seed=0)
    tracemalloc.start()
    result = kernel_shap(game, n_features, 1000, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n_features**2 * 8, peak / 2**20
    assert result.design == "leverage" and result.n_evaluations == 1000
    assert result.efficiency_error <= 1e-9 * np.abs(truth.sum())
    assert np.all(np.isnan(result.stderr))  # no residual is left to estimate errors from


def test_boosted_trees_shapley_values_are_exact_for_the_trees():
    rng = np.random.default_rng(0)
    m = 8
    coalitions = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)
    values = np.stack(
        [
            np.sin(coalitions @ rng.normal(size=m)) * coalitions[:, 0],
            (coalitions[:, 1] & coalitions[:, 2] & ~coalitions[:, 3]).astype(float),
        ],
        axis=1,
    )
    trees = fit_boosted_trees(coalitions[::3], values[::3], seed=1)
    predicted = trees(coalitions)
    np.testing.assert_allclose(trees.shapley_values(), shapley_from_enumeration(coalitions, predicted), atol=1e-12)
    np.testing.assert_allclose(trees.shapley_values().sum(axis=0), predicted[-1] - predicted[0], atol=1e-12)


def _real_game(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from cases.real_games import load_games

    game = next(g for g in load_games() if g["name"] == name)
    m = game["exact"].shape[0]
    return (lambda c: game["values"][c.astype(np.int64) @ (1 << np.arange(m))]), m, game["exact"]


@pytest.mark.parametrize("design, multiple, most", [("leverage", 8, 0.6), ("chains", 16, 0.8)])
@pytest.mark.slow
def test_the_tree_adjustment_lowers_the_error_on_a_real_models_game(monkeypatch, design, multiple, most):
    """On an exactly enumerated game of the demo model (benchmarks/cases/real_games.py), where high-order interactions
    matter, the boosted-tree adjustment cuts the error at equal coalitions; switched off, the estimate is the
    design's plain one."""
    game, m, exact = _real_game("demo_gmwm-inferior")

    def mean_error():
        runs = [kernel_shap(game, m, multiple * m, seed=s, design=design) for s in range(5)]
        errors = [np.linalg.norm(r.values - exact, axis=0) / np.linalg.norm(exact, axis=0) for r in runs]
        return float(np.mean(errors)), sum(r.adjusted for r in runs)

    adjusted_error, adjusted_runs = mean_error()
    monkeypatch.setattr(segshap.leverage, "ADJUST_CELLS", 0)
    monkeypatch.setattr(segshap.chains, "ADJUST_CELLS", 0)
    plain_error, plain_runs = mean_error()
    assert adjusted_runs >= 3 and plain_runs == 0
    assert adjusted_error <= most * plain_error, (adjusted_error, plain_error)


def test_interactions_given_as_a_function_are_asked_for_only_when_a_surrogate_is_fitted():
    game, _ = nonlinear(12, seed=1)
    pairs = np.array([[0, 1], [2, 3]])
    asked = []

    def lazy():
        asked.append(True)
        return pairs

    given = kernel_shap(game, 12, 200, seed=2, design="chains", interactions=pairs)
    lazily = kernel_shap(game, 12, 200, seed=2, design="chains", interactions=lazy)
    np.testing.assert_array_equal(lazily.values, given.values)
    assert asked == [True]
    kernel_shap(game, 12, 2**12, seed=2, design="leverage", interactions=lazy)  # exact: no surrogate
    assert asked == [True]
    kernel_shap(game, 12, 200, seed=2, design="leverage", interactions=lazy)  # the MSR adjustment's, once
    assert asked == [True, True]
