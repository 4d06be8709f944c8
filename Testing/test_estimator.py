"""KernelSHAP estimator: exact enumeration, games with known values, accuracy against shap, honest errors."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.estimation import Recorder, enumerated_shapley
from helpers.games import additive, nonlinear, pairwise
from helpers.reference_env import reference_python

from segshap import kernel_shap


def brute_force_shapley(game, n_features: int) -> np.ndarray:
    """The textbook definition: weighted marginal contributions over all subsets without the feature."""
    phi = np.zeros(n_features)
    for i in range(n_features):
        others = [j for j in range(n_features) if j != i]
        for size in range(n_features):
            weight = math.factorial(size) * math.factorial(n_features - size - 1) / math.factorial(n_features)
            for subset in itertools.combinations(others, size):
                without = np.zeros((1, n_features), dtype=bool)
                without[0, list(subset)] = True
                with_i = without.copy()
                with_i[0, i] = True
                phi[i] += weight * (game(with_i)[0] - game(without)[0])
    return phi


def test_exact_enumeration_equals_brute_force():
    game, _ = nonlinear(6, seed=3)
    recorder = Recorder(game)
    result = kernel_shap(recorder, 6, 64, batch_size=10)
    assert result.exact and result.n_evaluations == 64
    np.testing.assert_allclose(result.values, brute_force_shapley(game, 6), atol=1e-12)
    assert np.all(result.stderr == 0)
    assert max(len(batch) for batch in recorder.batches) <= 10
    assert len(np.unique(np.packbits(recorder.coalitions, axis=1), axis=0)) == 64
    assert result.base_value == pytest.approx(game(np.zeros((1, 6), bool))[0])
    assert result.full_value == pytest.approx(game(np.ones((1, 6), bool))[0])


def test_multi_target_values_match_single_targets():
    first, _ = nonlinear(9, seed=1)
    second, _ = pairwise(9, seed=2)
    both = kernel_shap(lambda c: np.stack([first(c), second(c)], axis=1), 9, 120, seed=4)
    alone = kernel_shap(first, 9, 120, seed=4)
    assert both.values.shape == both.stderr.shape == (9, 2) and both.coalition_values.shape == (120, 2)
    np.testing.assert_allclose(both.values[:, 0], alone.values, atol=1e-12)
    np.testing.assert_allclose(both.stderr[:, 0], alone.stderr, atol=1e-12)
    np.testing.assert_allclose(both.values[:, 1], pairwise(9, seed=2)[1], atol=1e-9)


@pytest.mark.parametrize("make_game", [additive, pairwise], ids=["additive", "pairwise"])
@pytest.mark.parametrize("n_features, budget", [(10, 40), (15, 64), (40, 400)])
def test_known_games_are_recovered_from_a_small_budget(make_game, n_features, budget):
    game, truth = make_game(n_features, seed=n_features)
    result = kernel_shap(game, n_features, budget, seed=1)
    assert not result.exact and result.n_evaluations <= budget
    np.testing.assert_allclose(result.values, truth, atol=1e-9 * max(1.0, np.abs(truth).max()))


@pytest.mark.parametrize("n_features, budget", [(12, 96), (30, 500), pytest.param(200, 1000, marks=pytest.mark.slow)])
def test_efficiency_and_no_duplicate_evaluations(n_features, budget):
    game, _ = nonlinear(n_features, seed=5)
    recorder = Recorder(game)
    # Leverage SHAP spends the whole budget (auto takes the chains at 5M with 200 features, which use whole walks).
    result = kernel_shap(recorder, n_features, budget, seed=2, batch_size=64, design="leverage")
    evaluated = recorder.coalitions
    assert len(evaluated) == result.n_evaluations <= budget
    assert result.n_evaluations >= budget - 1
    assert len(np.unique(np.packbits(evaluated, axis=1), axis=0)) == len(evaluated)
    np.testing.assert_array_equal(result.coalitions, evaluated)
    np.testing.assert_allclose(result.coalition_values, game(evaluated))
    gap = result.values.sum() - (result.full_value - result.base_value)
    assert abs(gap) <= 1e-9 * max(abs(result.full_value - result.base_value), 1e-12)
    assert result.efficiency_error == pytest.approx(abs(gap), abs=1e-15)
    assert np.all(np.isfinite(result.stderr)) and np.all(result.stderr >= 0)


@pytest.mark.slow
def test_tolerance_stops_early_once_converged():
    game, _ = nonlinear(20, seed=7)
    calls = []
    result = kernel_shap(game, 20, 20_000, tolerance=0.05, batch_size=128, progress=lambda d, t: calls.append((d, t)))
    assert 4 * 20 <= result.n_evaluations < 20_000
    spread = result.values.max() - result.values.min()
    assert result.stderr.max() <= 0.05 * spread
    assert calls[-1][0] == calls[-1][1] == result.n_evaluations
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    # Without a tolerance the whole budget is spent, and progress counts towards it.
    calls.clear()
    full = kernel_shap(game, 20, 600, batch_size=128, progress=lambda d, t: calls.append((d, t)))
    assert full.n_evaluations == 600 and calls[-1] == (600, 600) and all(t == 600 for _, t in calls)


@pytest.mark.slow
@pytest.mark.parametrize("n_features", [12, 16])
def test_error_is_at_most_half_of_shap_at_budget_8m(n_features):
    budget, seeds = 8 * n_features, list(range(6))
    game, _ = nonlinear(n_features, seed=0)
    truth = enumerated_shapley(game, n_features)
    command = [
        reference_python(),
        str(Path(__file__).parent / "helpers" / "shap_reference.py"),
        "nonlinear",
        str(n_features),
    ]
    command += ["0", str(budget), *map(str, seeds)]
    shap_values = np.array(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
    shap_error = np.mean(np.linalg.norm(shap_values - truth, axis=1))
    ours = [kernel_shap(game, n_features, budget, seed=s).values for s in seeds]
    our_error = np.mean(np.linalg.norm(np.array(ours) - truth, axis=1))
    print(
        f"M={n_features}: mean L2 error ours {our_error:.4g}, shap {shap_error:.4g}, ratio {our_error / shap_error:.2f}"
    )
    assert our_error <= 0.5 * shap_error


def test_shap_never_enters_this_environment():
    # shap's dependency `slicer` would shadow slicer-core's: the reference lives in its own environment.
    assert "shap" not in sys.modules
    with pytest.raises(ImportError):
        __import__("shap")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_players": 0}, "n_players= must be a positive integer"),
        ({"budget": 1}, "budget= must be an integer >= 2"),
        ({"budget": 10.5}, "budget= must be an integer"),
        ({"batch_size": 1}, "batch_size= must be an integer >= 2"),
        ({"tolerance": 0}, "tolerance= must be a number in (0, 1)"),
        ({"tolerance": "0.01"}, "tolerance= must be a number in (0, 1)"),
    ],
)
def test_bad_arguments_are_refused(kwargs, fragment):
    game, _ = additive(5)
    arguments = {"n_players": 5, "budget": 20, **kwargs}
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        kernel_shap(game, arguments.pop("n_players"), arguments.pop("budget"), **arguments)


@pytest.mark.parametrize(
    "value_fn, fragment",
    [
        (lambda c: np.zeros(len(c) + 1), "value_fn must return shape"),
        (lambda c: np.zeros((len(c), 2, 2)), "value_fn must return shape"),
        (lambda c: np.full(len(c), np.nan), "NaN or infinite"),
    ],
)
def test_bad_value_functions_are_reported(value_fn, fragment):
    with pytest.raises(ValueError, match=fragment):
        kernel_shap(value_fn, 8, 40)
