"""Error per model forward: each design's error against the window forwards and the seconds it spent.

The case: the demo model on the demo MRI, soft Dice of white and gray matter inside the demo ROI, over SLIC
supervoxels (about 150 of them can change a value in full mode). Every run builds the game afresh
(:func:`segshap.explanation_game`, so no run inherits another's cached windows) and estimates with
:func:`segshap.kernel_shap` as :func:`segshap.explain` does (the engine's ``forward_cost``, the pairs of touching
supervoxels). Window forwards are counted by the engine, set-up (all-on and all-off) excluded.

Methods:

* ours: ``design="auto"``, ``"chains"`` and ``"leverage"`` (both with the tree adjustment), each on a fresh game
  (auto's run, with the same seed, also stands for the design it chose);
* the paper's scheme (ROI + all-on cache) with Leverage SHAP sampling: plain Leverage SHAP (the adjustment switched
  off) on ours' Leverage coalitions (same seed, so the same draws), its forwards counted by its rule, a window
  rerun for every coalition that holds some but not all of the window's features; with shap's sampling: shap's
  estimate from the coalitions shap asked for, forwards counted the same way. Their seconds are their forwards
  times the engine's seconds per forward on the same coalitions (the model's time dominates);
* shap ``KernelExplainer(l1_reg=False)`` and captum ``KernelShap`` over full-volume inference: their estimates from
  the engine's values (identical to full-volume inference), one full-volume inference per coalition (all the
  volume's windows) and its seconds timed with :func:`segshap.predict`, times the coalitions.

Reference values: plain permutation sampling with many permutations (``benchmarks/references/permutation.py``), an
estimator that shares no code with the designs under test; its standard error (relative L2) is reported next to the
smallest error plotted. They are kept in ``benchmarks/results/efficiency_reference.json`` with a fingerprint of
the game (model, image, features, targets, permutations), and recomputed when the game changes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time

import numpy as np
from common import (
    DEMO_IMAGE,
    DEMO_MODEL,
    DEMO_ROI,
    ROOT,
    log,
    plain_estimates,
    pyplot,
    reference_available,
    save_figure,
    shap_kernel_explainer,
    table,
)
from references.permutation import permutation_shapley

import segshap
from segshap.io import read_image
from segshap.surrogate import adjacent_pairs
from suites.accuracy import captum_kernel_shap

SETTINGS = {
    "quick": {
        "n_features": 45,
        "multipliers": (2, 4, 8),
        "ours_multipliers": (2, 4, 8, 16),
        "seeds": 2,
        "reference_permutations": 300,
    },
    "full": {
        "n_features": 165,
        "multipliers": (2, 4, 8),
        "ours_multipliers": (2, 4, 8, 16),
        "seeds": 2,
        "reference_permutations": 500,
    },
}
"""``multipliers``: budgets (in coalitions, multiples of M) of every method; ``ours_multipliers``: those of ours'
``auto`` and ``chains``, whose forwards at 16M still fall among the paper's scheme's; ``reference_permutations``: the
reference's permutations."""
TARGETS = ("white_matter", "gray_matter")
METHODS = ("ours_auto", "ours_chains", "ours_leverage", "paper_leverage", "paper_shap", "shap", "captum")
LABELS = {
    "ours_auto": "ours (auto)",
    "ours_chains": "ours (chains)",
    "ours_leverage": "ours (leverage)",
    "paper_leverage": "paper's scheme, Leverage SHAP",
    "paper_shap": "paper's scheme, shap's sampling",
    "shap": "shap, full-volume inference",
    "captum": "captum, full-volume inference",
}
REFERENCE_FILE = ROOT / "benchmarks" / "results" / "efficiency_reference.json"
SEED = 20261207
"""The reference permutations' seed (the runs under test use seeds 0, 1, ...)."""


def _game(inputs: dict, n_features: int):
    return segshap.explanation_game(
        inputs["model"],
        inputs["image"],
        target=list(TARGETS),
        roi=DEMO_ROI,
        features="slic",
        n_features=n_features,
        device="cpu",
        affine=inputs["affine"],
    )


def _estimate(inputs: dict, n_features: int, budget: int, seed: int, design: str):
    """One run on a fresh game: the result, the window forwards of the estimation, its seconds, the game."""
    game = _game(inputs, n_features)
    engine = game.engine
    pairs = adjacent_pairs(game.feature_map, engine.feature_ids)
    before = engine.stats["patch_forwards"]
    started = time.perf_counter()
    result = segshap.kernel_shap(
        engine.evaluate,
        engine.n_players,
        budget,
        seed=seed,
        design=design,
        forward_cost=engine.forward_cost,
        interactions=pairs,
    )
    seconds = time.perf_counter() - started
    return result, engine.stats["patch_forwards"] - before, seconds, game


def _paper_forwards(game, coalitions: np.ndarray) -> int:
    """Forwards of the paper's ROI + all-on scheme: per window, the coalitions holding some but not all of its
    features (all on and all off reuse the set-up's outputs)."""
    engine = game.engine
    columns: dict[int, list[int]] = {}
    for feature, windows in enumerate(engine.feature_windows):
        for window in windows.tolist():
            columns.setdefault(window, []).append(feature)
    return int(sum((coalitions[:, c].any(1) & ~coalitions[:, c].all(1)).sum() for c in columns.values()))


def _distinct_inner(coalitions: np.ndarray) -> np.ndarray:
    """The distinct coalitions other than the empty and the full one (those two are every scheme's set-up)."""
    unique = np.unique(coalitions, axis=0)
    return unique[unique.any(1) & ~unique.all(1)]


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(estimate - reference, axis=0) / np.linalg.norm(reference, axis=0)))


def _fingerprint(game, settings: dict) -> str:
    digest = hashlib.sha256()
    for path in (DEMO_MODEL, DEMO_IMAGE):
        digest.update(path.read_bytes())
    digest.update(np.ascontiguousarray(game.feature_map).tobytes())
    digest.update(json.dumps([TARGETS, DEMO_ROI, "permutation", settings["reference_permutations"]]).encode())
    return digest.hexdigest()


def reference(inputs: dict, settings: dict, mode: str, probe) -> dict:
    """The reference values (the committed ones when the game's fingerprint matches, else computed and stored)."""
    fingerprint = _fingerprint(probe, settings)
    stored = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
    if stored.get(mode, {}).get("fingerprint") == fingerprint:
        log(f"efficiency: reference values from {REFERENCE_FILE.name} (fingerprint matches)")
        return stored[mode]
    game = _game(inputs, settings["n_features"])
    before = game.engine.stats["patch_forwards"]
    started = time.perf_counter()
    mean, se = permutation_shapley(game.engine.evaluate, game.n_players, settings["reference_permutations"], SEED)
    seconds = time.perf_counter() - started
    forwards = game.engine.stats["patch_forwards"] - before
    log(f"efficiency: reference, {settings['reference_permutations']} permutations: {forwards} fw, {seconds:.0f} s")
    stored[mode] = {
        "fingerprint": fingerprint,
        "method": "plain permutation sampling",
        "permutations": settings["reference_permutations"],
        "seed": SEED,
        "seconds": round(seconds, 1),
        "forwards": int(forwards),
        "relative_se": float(np.mean(np.linalg.norm(se, axis=0) / np.linalg.norm(mean, axis=0))),
        "values": mean.tolist(),
        "made_by": "benchmarks/suites/efficiency.py reference()",
        "date": datetime.date.today().isoformat(),
    }
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_FILE.write_text(json.dumps(stored, indent=1))
    return stored[mode]


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    image, affine = read_image(DEMO_IMAGE)
    inputs = {"model": segshap.load_model(DEMO_MODEL, device="cpu"), "image": image, "affine": affine}
    n = settings["n_features"]
    shared = _game(inputs, n)  # evaluates the coalitions of methods whose forwards are counted, not run
    m, windows = shared.n_players, len(shared.engine.windows)
    full_windows = shared.engine.tiling.n_windows
    per_feature = float(np.mean([len(w) for w in shared.engine.feature_windows]))
    log(
        f"efficiency: M = {m} features ({n} SLIC segments asked), {windows} of the volume's {full_windows} windows "
        f"touch the ROI, a feature changes {per_feature:.1f} of them on average"
    )
    started = time.perf_counter()
    for _ in range(2):
        segshap.predict(inputs["model"], image, device="cpu", affine=affine)
    full_inference = (time.perf_counter() - started) / 2
    log(f"efficiency: one full-volume inference takes {full_inference:.2f} s")
    ref = reference(inputs, settings, mode, shared)
    reference_values = np.array(ref["values"])

    runs: dict[str, list[dict]] = {name: [] for name in METHODS}

    def record(name, multiple, seed, estimate, forwards, seconds, coalitions, **extra):
        runs[name].append(
            {
                "multiple": multiple,
                "seed": seed,
                "coalitions": int(coalitions),
                "forwards": int(forwards),
                "seconds": float(seconds),
                "error": relative_error(estimate, reference_values),
                **extra,
            }
        )

    for multiple in settings["ours_multipliers"]:
        budget = multiple * m
        for seed in range(settings["seeds"]):
            designs = ["chains"] + (["leverage"] if multiple in settings["multipliers"] else [])
            # With the same seed, auto's run is the run of the design it chose: that design is not run again.
            auto = _estimate(inputs, n, budget, seed, "auto")
            done = {auto[0].design: auto}
            for design in designs:
                if design not in done:
                    done[design] = _estimate(inputs, n, budget, seed, design)
            for name, (result, forwards, seconds, _) in [("ours_auto", auto)] + [
                (f"ours_{d}", done[d]) for d in designs
            ]:
                record(
                    name,
                    multiple,
                    seed,
                    result.values,
                    forwards,
                    seconds,
                    result.n_evaluations,
                    design=result.design,
                    adjusted=result.adjusted,
                )
            if "leverage" not in designs:
                continue
            result, _, _, game = done["leverage"]
            # The paper's scheme: the plain estimate from the same draws, looked up from what ours evaluated.
            known = {row.tobytes(): value for row, value in zip(result.coalitions, result.coalition_values)}
            with plain_estimates():
                plain = segshap.kernel_shap(
                    lambda c, known=known: np.array([known[row.tobytes()] for row in c]),
                    m,
                    budget,
                    seed=seed,
                    design="leverage",
                )
            per_forward = game.engine.stats["total_seconds"] / max(game.engine.stats["patch_forwards"], 1)
            paper = _paper_forwards(game, _distinct_inner(plain.coalitions))
            record("paper_leverage", multiple, seed, plain.values, paper, paper * per_forward, plain.n_evaluations)
            if reference_available():
                estimate, asked, _, _ = shap_kernel_explainer(m, budget, seed, shared.engine.evaluate)
                inner = _distinct_inner(asked)
                paper = _paper_forwards(shared, inner)
                record("paper_shap", multiple, seed, estimate, paper, paper * per_forward, len(inner) + 2)
                record(
                    "shap",
                    multiple,
                    seed,
                    estimate,
                    full_windows * (len(inner) + 2),
                    full_inference * (len(inner) + 2),
                    len(inner) + 2,
                )
            estimate, evaluated = captum_kernel_shap(shared.engine.evaluate, m, budget, seed)
            record("captum", multiple, seed, estimate, full_windows * evaluated, full_inference * evaluated, evaluated)
            log(
                f"efficiency: {multiple}M seed {seed}: "
                + ", ".join(
                    f"{name} {rows[-1]['error']:.3f} ({rows[-1]['forwards']} fw)" for name, rows in runs.items() if rows
                )
            )
    return {
        "features": m,
        "n_features_asked": n,
        "windows": windows,
        "windows_total": full_windows,
        "windows_per_feature": per_feature,
        "full_inference_s": full_inference,
        "targets": list(TARGETS),
        "reference": {key: ref[key] for key in ("method", "permutations", "relative_se", "values")},
        "multipliers": sorted(set(settings["multipliers"]) | set(settings["ours_multipliers"])),
        "seeds": settings["seeds"],
        "runs": {name: rows for name, rows in runs.items() if rows},
    }


def curves(result: dict) -> dict[str, dict[str, list[float]]]:
    """Per method, the budget multiples it ran and, per multiple, mean forwards, seconds and error over seeds."""
    out = {}
    for name, rows in result["runs"].items():
        multiples = sorted({r["multiple"] for r in rows})
        out[name] = {
            "multiples": multiples,
            **{
                key: [float(np.mean([r[key] for r in rows if r["multiple"] == k])) for k in multiples]
                for key in ("forwards", "seconds", "error")
            },
        }
    return out


def _at(x: list[float], y: list[float], where: float) -> float | None:
    """``y`` at ``where`` by log-log interpolation along ``x`` (None outside its range)."""
    if not min(x) <= where <= max(x):
        return None
    return float(np.exp(np.interp(np.log(where), np.log(x), np.log(y))))


def cost_to_reach(cost: list[float], error: list[float], goal: float) -> tuple[float, str]:
    """The cost at which a curve first reaches ``goal``: interpolated log-log between the budgets around the
    crossing (qualifier ""), the first budget when it is already below (qualifier "≤"), or extrapolated from the
    last budget with the error falling as one over the square root of the cost (qualifier "≈")."""
    if error[0] <= goal:
        return cost[0], "≤"
    for i in range(1, len(cost)):
        if error[i] <= goal:
            fraction = np.log(error[i - 1] / goal) / np.log(error[i - 1] / error[i])
            return float(np.exp(np.log(cost[i - 1]) + fraction * np.log(cost[i] / cost[i - 1]))), ""
    return cost[-1] * (error[-1] / goal) ** 2, "≈"


GOAL = 0.10
"""The error whose cost in seconds the suite compares (the issue's "10 % relative L2 error")."""


def markdown(result: dict, plot_path: str | None) -> str:
    data = curves(result)
    methods = [name for name in METHODS if name in data]
    rows = []
    for k in result["multipliers"]:
        row = [f"{k}M"]
        for name in methods:
            if k in data[name]["multiples"]:
                i = data[name]["multiples"].index(k)
                row.append(
                    f"{data[name]['error'][i]:.4f} ({data[name]['forwards'][i]:.0f} fw, "
                    f"{data[name]['seconds'][i]:.0f} s)"
                )
            else:
                row.append("—")
        rows.append(row)
    ours, paper = data["ours_auto"], data["paper_leverage"]
    ratios = []
    for forwards, error in zip(ours["forwards"], ours["error"]):
        at = _at(paper["forwards"], paper["error"], forwards)
        if at is not None:
            ratios.append(f"{error / at:.2f} at {forwards:.0f} forwards")
    designs = sorted({r["design"] for r in result["runs"]["ours_auto"]})
    reach = {name: cost_to_reach(data[name]["seconds"], data[name]["error"], GOAL) for name in methods}
    reach_forwards = {name: cost_to_reach(data[name]["forwards"], data[name]["error"], GOAL) for name in methods}
    ours_s, ours_bound = reach["ours_auto"]
    # Where ours' time is only an upper bound (already below the goal at its first budget), ratios are lower bounds.
    at_least = "≥" if ours_bound == "≤" else ""
    reach_text = "; ".join(
        f"{LABELS[name]} {reach[name][1]}{reach[name][0]:.1f} s ({reach_forwards[name][1]}"
        f"{reach_forwards[name][0]:.0f} forwards)"
        + ("" if name == "ours_auto" else f", {at_least}{reach[name][0] / ours_s:.1f}× ours")
        for name in methods
    )
    text = [
        f"Case: the demo model on the demo MRI, soft Dice of {' and '.join(result['targets'])} inside the demo ROI, "
        f"over {result['features']} SLIC supervoxels that can change a value ({result['n_features_asked']} asked); "
        f"{result['windows']} of the volume's {result['windows_total']} windows touch the ROI and a supervoxel "
        f"changes {result['windows_per_feature']:.1f} of them on average; one full-volume inference took "
        f"{result['full_inference_s']:.2f} s. Each of ours' runs builds the game afresh. Reference: plain "
        f"permutation sampling over {result['reference']['permutations']} permutations (independent of the designs "
        f"under test), relative standard error {result['reference']['relative_se']:.4f}. Cells: relative L2 error "
        f"against the reference (mean over both targets and {result['seeds']} seeds), the window forwards of the "
        "estimation and its seconds (for the paper's scheme, shap and captum: counted and timed as the module's "
        "docstring says).",
        "",
        table(["budget"] + [LABELS[n] for n in methods], rows),
        "",
        f'`design="auto"` chose {", ".join(designs)}. Ours (auto) over the paper\'s scheme (Leverage SHAP) at equal '
        f"forwards (interpolated along the paper's curve): {'; '.join(ratios) if ratios else 'outside its range'}.",
        "",
        f"Seconds to reach {GOAL:.0%} error (interpolated between budgets; ≤: already at the first budget; ≈: "
        f"extrapolated from the last budget with the error falling as one over the square root of the cost): "
        f"{reach_text}.",
    ]
    if plot_path:
        text += ["", f"![Error against forwards and seconds]({plot_path})"]
    return "\n".join(text)


STYLES = {
    "ours_auto": "o-",
    "ours_chains": "o--",
    "ours_leverage": "o:",
    "paper_leverage": "s-",
    "paper_shap": "s--",
    "shap": "^-",
    "captum": "v-",
}


def plot(result: dict, path) -> None:
    plt = pyplot()

    data = curves(result)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((axes[0], "forwards", "window forwards"), (axes[1], "seconds", "seconds (2 cores)")):
        for name, style in STYLES.items():
            if name in data:
                axis.loglog(data[name][key], data[name]["error"], style, label=LABELS[name])
        axis.axhline(result["reference"]["relative_se"], color="grey", lw=0.8, ls=":", label="reference s.e.")
        axis.axhline(GOAL, color="black", lw=0.6, ls="--")
        axis.set_xlabel(label)
        axis.set_ylabel("relative L2 error vs reference")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Error per forward, demo MRI, {result['features']} supervoxels")
    save_figure(figure, path)
