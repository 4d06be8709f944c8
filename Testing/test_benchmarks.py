"""The benchmark harness: its pure parts, and the quick mode end to end (what CI runs; times are not asserted)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import coalition_table, exact_shapley  # noqa: E402
from common import write_section  # noqa: E402


def test_exact_shapley_from_a_value_table():
    rng = np.random.default_rng(0)
    m = 5
    weights, pairs = rng.normal(size=m), rng.normal(size=(m, m))
    coalitions = coalition_table(m)
    values = coalitions @ weights + np.einsum("ni,ij,nj->n", coalitions, np.triu(pairs, 1), coalitions)
    expected = weights + (np.triu(pairs, 1) + np.triu(pairs, 1).T).sum(1) / 2  # each pair split evenly
    np.testing.assert_allclose(exact_shapley(values[:, None])[:, 0], expected, atol=1e-12)
    # and the definition, term by term, on a non-linear game
    values = np.sin(coalitions @ weights) * coalitions.sum(1)
    by_definition = np.zeros(m)
    for i, rest in itertools.product(range(m), range(2**m)):
        if not (rest >> i) & 1:
            s = bin(rest).count("1")
            by_definition[i] += (math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
                                 * (values[rest | 1 << i] - values[rest]))
    np.testing.assert_allclose(exact_shapley(values[:, None])[:, 0], by_definition, atol=1e-12)


def test_sections_are_replaced_in_place(tmp_path):
    markdown = tmp_path / "B.md"
    markdown.write_text("# Benchmarks\n\nHand-written intro.\n")
    write_section(markdown, "speed", "first")
    write_section(markdown, "accuracy", "other")
    write_section(markdown, "speed", "second")
    text = markdown.read_text()
    assert text.count("bench:speed:begin") == 1 and "second" in text and "first" not in text
    assert text.index("Hand-written") < text.index("second") < text.index("other")


@pytest.mark.slow
def test_quick_mode_completes_and_ours_runs_the_fewest_model_forwards(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--mode", "quick", "--markdown", str(tmp_path / "B.md"),
         "--docs", str(tmp_path), "--json", str(tmp_path / "quick.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "quick.json").read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"]
    for name, case in result["speed"]["cases"].items():
        methods = case["methods"]
        ours = methods["ours"]["forwards"]
        for method, row in methods.items():
            assert row["max_abs_diff"] < 1e-6, (name, method)  # every method computes the same game
            if method != "ours":
                assert ours < row["forwards"], (name, method)
    expected = {"ours", "captum"} | ({"shap"} if os.environ.get("SEGSHAP_REQUIRE_REFERENCE") else set())
    assert expected <= set(result["speed"]["cases"]["organs"]["methods"])
    assert expected <= set(result["accuracy"]["methods"])
    text = (tmp_path / "B.md").read_text()
    assert "bench:speed:begin" in text and "bench:accuracy:begin" in text
    assert (tmp_path / "bench_speed.png").stat().st_size > 0 and (tmp_path / "bench_accuracy.png").stat().st_size > 0
