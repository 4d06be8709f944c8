"""The benchmark harness's pure parts. The harness itself is a benchmark, so it runs outside the suite: its quick
mode end to end in `.ci/run`, with --check (every method computes the engine's values, ours the fewest forwards)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cases.real_games import coalition_table  # noqa: E402
from common import write_section  # noqa: E402
from references.permutation import permutation_shapley  # noqa: E402
from suites.cohort import simulate  # noqa: E402

from segshap.estimator import shapley_from_enumeration  # noqa: E402


def test_exact_shapley_values_from_a_value_table_in_the_games_bit_order():
    rng = np.random.default_rng(0)
    m = 5
    weights, pairs = rng.normal(size=m), rng.normal(size=(m, m))
    coalitions = coalition_table(m)
    values = coalitions @ weights + np.einsum("ni,ij,nj->n", coalitions, np.triu(pairs, 1), coalitions)
    expected = weights + (np.triu(pairs, 1) + np.triu(pairs, 1).T).sum(1) / 2  # each pair split evenly
    np.testing.assert_allclose(shapley_from_enumeration(coalitions, values), expected, atol=1e-12)
    # and the definition, term by term, on a non-linear game
    values = np.sin(coalitions @ weights) * coalitions.sum(1)
    by_definition = np.zeros(m)
    for i, rest in itertools.product(range(m), range(2**m)):
        if not (rest >> i) & 1:
            s = bin(rest).count("1")
            by_definition[i] += (
                math.factorial(s)
                * math.factorial(m - s - 1)
                / math.factorial(m)
                * (values[rest | 1 << i] - values[rest])
            )
    np.testing.assert_allclose(shapley_from_enumeration(coalitions, values), by_definition, atol=1e-12)


def test_the_permutation_reference_is_efficient_unbiased_within_its_errors_and_blind_to_batching():
    """The large games' independent reference (plain permutation sampling) on an enumerated non-additive game."""
    rng = np.random.default_rng(3)
    m = 7
    weights, pairs = rng.normal(size=m), np.triu(rng.normal(size=(m, m)), 1)
    coalitions = coalition_table(m)
    values = np.stack(
        [np.tanh(coalitions @ weights), np.einsum("ni,ij,nj->n", coalitions, pairs, coalitions) + 0.3], axis=1
    )
    exact = shapley_from_enumeration(coalitions, values)
    bits = 1 << np.arange(m)
    asked = []

    def game(rows: np.ndarray) -> np.ndarray:
        asked.append(len(rows))
        return values[rows.astype(np.int64) @ bits]

    estimate, stderr = permutation_shapley(game, m, 400, seed=5, batch=8)
    assert estimate.shape == stderr.shape == (m, 2) and sum(asked) == 400 * (m + 1) and max(asked) == 8 * (m + 1)
    # Each permutation's contributions add up to v(all) - v(empty).
    np.testing.assert_allclose(estimate.sum(0), values[-1] - values[0], atol=1e-12)
    # Unbiased with honest errors: 14 entries all within 4.5 standard errors (a miss has odds below 1e-4).
    assert np.all(np.abs(estimate - exact) <= 4.5 * stderr), (estimate - exact) / stderr
    assert np.all(stderr > 0) and np.all(stderr < 0.1 * np.abs(values).max())
    # The permutations depend on the seed only: another batching evaluates the same ones.
    again, again_stderr = permutation_shapley(game, m, 400, seed=5, batch=3)
    np.testing.assert_allclose(again, estimate, atol=1e-12)
    np.testing.assert_allclose(again_stderr, stderr, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        permutation_shapley(game, m, 1, seed=0)


def test_the_cohort_simulation_gives_each_case_to_the_first_free_gpu():
    assert simulate(np.array([3600.0]), cases=8, gpus=4, seed=0) == pytest.approx(2.0)  # 2 rounds of 1 h
    assert simulate(np.array([3600.0]), cases=9, gpus=4, seed=0) == pytest.approx(3.0)  # one case left over
    uneven = simulate(np.array([600.0, 6000.0]), cases=100, gpus=8, seed=0)
    total = simulate(np.array([600.0, 6000.0]), cases=100, gpus=1, seed=0)
    assert total / 8 <= uneven <= total / 8 + 6000.0 / 3600.0  # list scheduling: at most one long case over


def test_sections_are_replaced_in_place(tmp_path):
    markdown = tmp_path / "B.md"
    markdown.write_text("# Benchmarks\n\nHand-written intro.\n")
    write_section(markdown, "speed", "first")
    write_section(markdown, "accuracy", "other")
    write_section(markdown, "speed", "second")
    text = markdown.read_text()
    assert text.count("bench:speed:begin") == 1 and "second" in text and "first" not in text
    assert text.index("Hand-written") < text.index("second") < text.index("other")


def test_the_runs_check_names_each_broken_invariant():
    from run import check

    def case(ours, other, diff):
        return {
            "methods": {
                "ours": {"forwards": ours, "max_abs_diff": 0.0},
                "captum": {"forwards": other, "max_abs_diff": diff},
            }
        }

    accuracy = {"methods": ["captum", "ours_auto", "permutation", "regression_msr", "shap"]}
    assert check({"speed": {"cases": {"organs": case(10, 50, 1e-9)}}, "accuracy": accuracy}) == []
    problems = check(
        {
            "speed": {"cases": {"organs": case(10, 5, 1e-9), "slic": case(10, 50, 3e-3)}},
            "accuracy": {"methods": ["ours_auto"]},
        }
    )
    assert len(problems) == 3
    assert "organs: captum ran 5 forwards" in problems[0] and "slic: captum's values differ" in problems[1]
    assert "captum" in problems[2]
    efficiency = {"runs": {name: [] for name in ("ours_auto", "paper_leverage", "captum", "shap", "paper_shap")}}
    assert check({"efficiency": efficiency}) == []
    del efficiency["runs"]["captum"]
    assert check({"efficiency": efficiency}) == ["efficiency: methods missing: ['captum']"]


def test_cost_to_reach_an_error_interpolates_bounds_or_extrapolates_and_says_which():
    from suites.efficiency import cost_to_reach

    # Crossing between the 2nd and 3rd budget: log-log interpolation (0.2 -> 0.05 over 2 -> 4 halves at 2 sqrt 2).
    cost, how = cost_to_reach([1, 2, 4], [0.3, 0.2, 0.05], 0.1)
    assert math.isclose(cost, math.sqrt(8)) and how == ""
    # Non-monotone curves cross at the first budget below the goal.
    cost, how = cost_to_reach([1, 2, 4, 8], [0.5, 3.0, 0.1, 0.01], 0.1)
    assert math.isclose(cost, 4) and how == ""
    # Already below at the first budget: only a bound.
    assert cost_to_reach([1, 2], [0.05, 0.02], 0.1) == (1, "≤")
    # Never below: the error falling as 1/sqrt(cost) from the last budget, 0.2 -> 0.1 at four times its cost.
    assert cost_to_reach([1, 2], [0.3, 0.2], 0.1) == (8.0, "≈")


def test_the_check_names_each_method_that_computes_another_game_or_runs_fewer_forwards_than_ours():
    from run import check

    methods = {
        "ours": {"forwards": 100, "max_abs_diff": 0.0},
        "roi_all_on": {"forwards": 400, "max_abs_diff": 1e-9},
        "captum": {"forwards": 90, "max_abs_diff": 0.0},
        "naive": {"forwards": 900, "max_abs_diff": 1e-3},
    }
    problems = check({"speed": {"cases": {"organs": {"methods": methods}}}, "accuracy": {"methods": {}}})
    assert problems[:2] == [
        "speed/organs: captum ran 90 forwards, ours 100",
        "speed/organs: naive's values differ from ours by 1.0e-03",
    ]
    assert len(problems) == 3 and problems[2].startswith("accuracy: methods missing: ['captum', 'ours_auto'")
    methods["captum"]["forwards"], methods["naive"]["max_abs_diff"] = 101, 0.0
    assert check({"speed": {"cases": {"organs": {"methods": methods}}}}) == []
