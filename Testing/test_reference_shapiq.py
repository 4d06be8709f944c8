"""shapiq as a reference (``benchmarks/references/shapiq_reference.py``, run in ``.venv-ref``): its approximators
recover a game whose Shapley values are known in closed form, and shapiq never enters this environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.reference_env import reference_python

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "references" / "shapiq_reference.py"
M, PAIR, OFFSET = 6, (1, 4), 2.5


def closed_form_game(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``v(S) = c + sum_{i in S} a_i + b [both of PAIR in S]`` as the table of all coalitions (row k: feature i
    present iff bit i of k is set); ``phi = a``, plus ``b / 2`` for each of the pair. The offset ``c = v(empty)``
    is in the table and not in any Shapley value."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=M), 1.5 + rng.random()
    members = (np.arange(2**M)[:, None] >> np.arange(M)) & 1
    table = OFFSET + members @ a + b * members[:, PAIR[0]] * members[:, PAIR[1]]
    phi = a.copy()
    phi[list(PAIR)] += b / 2
    return table, phi, b


def shapiq_reference(tmp_path: Path, table: np.ndarray, budgets: list[int], seeds: list[int], methods: list[str]):
    """The benchmarks' protocol (``benchmarks/common.run_reference``): payload.json and arrays.npz in a folder."""
    np.savez(tmp_path / "arrays.npz", table=table)
    (tmp_path / "payload.json").write_text(json.dumps({"budgets": budgets, "seeds": seeds, "methods": methods}))
    done = subprocess.run([reference_python(), str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_shapiq_approximators_recover_a_known_game_at_full_budget(tmp_path):
    (first, phi, b), (second, phi_second, _) = closed_form_game(0), closed_form_game(1)
    seeds, full = [0, 1], 2**M
    methods = ["regression_msr", "leverage_shap", "kernel_shap", "permutation"]
    answer = shapiq_reference(tmp_path, np.stack([first, second], 1), [full], seeds, methods)
    assert answer["versions"]["shapiq"] and answer["versions"]["python"] >= "3.12"
    exact = np.stack([phi, phi_second], 1)
    for method in methods:
        estimates = np.array(answer["estimates"][method][str(full)])
        assert estimates.shape == (len(seeds), M, 2), method
        # Efficiency: every method's values add up to v(all) - v(empty), the offset left out. To about 1e-6 only:
        # RegressionMSR's XGBoost proxy predicts in float32, and shapiq's KernelSHAP holds v(empty) and v(all) by a
        # large regression weight, not exactly (Leverage SHAP and permutations: to 1e-15).
        tolerance = 1e-5 if method in ("regression_msr", "kernel_shap") else 1e-9
        np.testing.assert_allclose(estimates.sum(1), np.broadcast_to(exact.sum(0), (len(seeds), 2)), atol=tolerance)
        if method == "permutation":
            # Twelve random permutations (2 + 12 * (M - 1) evaluations of at most 64): not exact, but every
            # marginal contribution of a feature outside the pair is its weight, and each of the pair gets
            # between nothing and all of the interaction.
            outside = [i for i in range(M) if i not in PAIR]
            np.testing.assert_allclose(estimates[:, outside], np.broadcast_to(exact[outside], (2, 4, 2)), atol=1e-9)
            assert np.all(np.abs(estimates[:, list(PAIR), 0] - phi[list(PAIR)]) <= b / 2 + 1e-9)
            assert answer["evaluations"][method][str(full)] == [2 + 12 * (M - 1)] * len(seeds)
            assert all(d < full for d in answer["distinct"][method][str(full)])  # it re-evaluates coalitions
        else:
            # The regressions see every coalition once: exact (to the tolerance above; errors measured: below 3e-7).
            np.testing.assert_allclose(
                estimates, np.broadcast_to(exact, estimates.shape), atol=tolerance, err_msg=method
            )
            assert answer["evaluations"][method][str(full)] == answer["distinct"][method][str(full)] == [full] * 2


def test_a_single_target_gives_flat_values_and_the_budget_is_kept(tmp_path):
    table, phi, _ = closed_form_game(2)
    answer = shapiq_reference(tmp_path, table, [20], [3], ["leverage_shap", "regression_msr"])
    for method in ("leverage_shap", "regression_msr"):
        (values,) = answer["estimates"][method]["20"]
        assert np.shape(values) == (M,)
        assert answer["evaluations"][method]["20"] == answer["distinct"][method]["20"] == [20]
    # Paired sampling makes Leverage SHAP exact on games with at most pairwise interactions.
    np.testing.assert_allclose(answer["estimates"]["leverage_shap"]["20"][0], phi, atol=1e-9)


@pytest.mark.slow
def test_a_game_that_lives_in_this_process_gets_the_estimates_its_table_gets(tmp_path, monkeypatch):
    """Games too large to tabulate stay in the benchmark's process and answer the references' questions
    (``references/remote.py``): shapiq and shap must then estimate exactly what they estimate from the table."""
    monkeypatch.syspath_prepend(str(SCRIPT.parents[1]))
    import common

    monkeypatch.setattr(common, "REFERENCE_PYTHON", reference_python())
    table = np.stack([closed_form_game(4)[0], np.sin(closed_form_game(5)[0])], 1)
    bits = 1 << np.arange(M)
    asked = []

    def evaluate(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.astype(np.int64) @ bits)
        return table[asked[-1]]

    payload = {"budgets": [30], "seeds": [0, 1], "methods": ["leverage_shap", "regression_msr_linear", "permutation"]}
    tabulated = common.run_reference("shapiq_reference.py", payload, {"table": table})
    remote = common.run_reference("shapiq_reference.py", {**payload, "players": M}, {}, evaluate)
    for method in payload["methods"]:
        np.testing.assert_allclose(remote["estimates"][method]["30"], tabulated["estimates"][method]["30"], atol=1e-12)
        assert remote["evaluations"][method] == tabulated["evaluations"][method]
    every = np.concatenate(asked)
    assert len(every) == len(np.unique(every))  # each coalition asked for once, for both targets

    payload = {"budgets": [30], "seeds": [0]}
    per_target = [common.run_reference("shap_kernel.py", payload, {"table": table[:, k]}) for k in range(2)]
    remote = common.run_reference("shap_kernel.py", {**payload, "players": M}, {}, evaluate)
    expected = np.stack([np.array(answer["estimates"]["30"][0]) for answer in per_target], 1)
    np.testing.assert_allclose(np.array(remote["estimates"]["30"][0]).reshape(M, 2), expected, atol=1e-9)
    assert remote["evaluations"] == per_target[0]["evaluations"]


def test_shapiq_never_enters_this_environment():
    # Like shap (see test_estimator.py), shapiq lives in .venv-ref only: it needs Python >= 3.12 and brings its own
    # scientific stack; the engine never imports it.
    assert "shapiq" not in sys.modules
    with pytest.raises(ImportError):
        __import__("shapiq")
