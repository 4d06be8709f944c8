"""Deletion and insertion curves (segshap.faithfulness) on games whose curves are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from segshap.faithfulness import Faithfulness, curve_steps, faithfulness_curves, ranking_curves


def _additive(weights: np.ndarray, calls: list):
    def evaluate(coalitions: np.ndarray) -> np.ndarray:
        calls.append(len(coalitions))
        return coalitions.astype(np.float64) @ weights

    return evaluate


def test_curves_of_an_additive_game_are_its_partial_sums():
    weights = np.array([0.5, -0.25, 2.0, 0.0, 1.0])
    calls: list = []
    curves = faithfulness_curves(_additive(weights, calls), weights, seed=3, batch_size=4)
    ranked = np.sort(weights)[::-1]
    np.testing.assert_allclose(curves.deletion, weights.sum() - np.r_[0, np.cumsum(ranked)])
    np.testing.assert_allclose(curves.insertion, np.r_[0, np.cumsum(ranked)])
    # The random ranking's curves walk the same ends by another order.
    assert curves.random_deletion[0] == curves.deletion[0] and curves.random_insertion[-1] == curves.insertion[-1]
    assert sum(calls) == 4 * (weights.size + 1) and max(calls) <= 4
    # By value, deletion falls fastest and insertion rises fastest: no order does better on an additive game.
    assert curves.deletion_auc <= curves.random_deletion_auc and curves.insertion_auc >= curves.random_insertion_auc
    assert curves.deletion_auc == pytest.approx(np.trapezoid(curves.deletion, dx=1 / weights.size))


def test_several_targets_read_their_own_column():
    weights = np.array([[1.0, -1.0], [2.0, 3.0], [0.0, 1.0]])
    evaluate = lambda coalitions: coalitions.astype(np.float64) @ weights  # noqa: E731
    deletion, insertion = ranking_curves(evaluate, np.array([2, 0, 1]), column=1)
    np.testing.assert_allclose(insertion, [0.0, 1.0, 0.0, 3.0])
    np.testing.assert_allclose(deletion, [3.0, 2.0, 3.0, 0.0])


def test_the_report_entry_round_trips():
    curves = faithfulness_curves(_additive(np.array([1.0, 2.0, 3.0]), []), np.array([1.0, 2.0, 3.0]))
    back = Faithfulness.from_dict(curves.to_dict())
    np.testing.assert_array_equal(back.deletion, curves.deletion)
    assert back.insertion_auc == curves.insertion_auc and "random order" in back.summary()


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1, -1], [1, 2, 3]])
def test_an_order_that_is_not_a_permutation_is_refused(order):
    with pytest.raises(ValueError, match="permutation"):
        ranking_curves(_additive(np.ones(3), []), np.array(order))


def test_with_more_features_than_points_each_step_takes_several():
    steps = curve_steps(50, 20)
    assert steps[0] == 0 and steps[-1] == 50 and steps.size == 21 and set(np.diff(steps)) == {2, 3}
    np.testing.assert_array_equal(curve_steps(7, 20), np.arange(8))
    weights = np.linspace(-1.0, 2.0, 50)
    calls: list = []
    curves = faithfulness_curves(_additive(weights, calls), weights, steps=steps, seed=1)
    ranked = np.sort(weights)[::-1]
    np.testing.assert_allclose(curves.insertion, np.r_[0, np.cumsum(ranked)][steps])
    assert sum(calls) == 4 * steps.size
    assert curves.insertion_auc == pytest.approx(np.trapezoid(curves.insertion, steps / 50))
    back = Faithfulness.from_dict(curves.to_dict())
    np.testing.assert_array_equal(back.steps, steps)
    assert back.deletion_auc == curves.deletion_auc
    with pytest.raises(ValueError, match="at least one feature"):
        curve_steps(0)
