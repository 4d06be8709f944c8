"""Anytime explanations: how soon the live estimate shows what the final one will, and what live updates cost.

Each case's numbers come from one :func:`segshap.explain` call with ``on_update`` (``update_every=5``), which keeps
every update the callback is given (its values, seconds since the call, coalitions, forwards, level) and compares each
with the final values: when the current top 10 (by ``|value|``, per target) first equals the final top 10 as a set,
and when the Spearman rank correlation of all values with the final ones first reaches 0.9; and the relative L2 error
against reference values at each update. Cases (the demo model on the demo MRI):

* ``whole``: gray matter, the whole structure, every option at its default (as ``segshap explain --target
  gray_matter`` runs it); reference: the run's own final values;
* ``efficiency``: the efficiency suite's case (white and gray matter inside the demo ROI, SLIC supervoxels); reference:
  the efficiency suite's reference values (:func:`suites.efficiency.reference`: read from
  ``benchmarks/results/efficiency_reference.json`` when the game's fingerprint matches, else computed and stored);
* ``many``: gray matter, the whole structure, 5,000 SLIC supervoxels asked; over 500 features the first updates come
  from regions (:mod:`segshap.coarse`); reference: the run's own final values.

The cost of live updates: the ``whole`` case without and with ``on_update``, in pairs run in the order without, with,
with, without (so that a machine that slows down or speeds up during the run weighs on both alike), wall and CPU
seconds of the whole call; and the seconds the sampling thread spent making updates
(:meth:`segshap.anytime.LiveUpdates.checkpoint`, timed around each call), a direct measure that does not rest on
the difference of two totals each as noisy as the machine.

The peer: shap's ``PartitionExplainer`` (Owen values over a hierarchy of the features, what image users pick), run in
shap's environment over the engine's values (:func:`common.shap_partition_explainer`) with the hierarchy of
:func:`segshap.hierarchy.merge_tree` (the features merged along their adjacency), at shap's default ``max_evals``
(500) and at a budget equal to our first update's coalitions. Its window forwards are counted by a fresh engine
evaluating the coalitions it asked for (set-up excluded); deletion and insertion AUCs of every ranking are measured
on one game with :func:`segshap.faithfulness.faithfulness_curves` (21 points, values in the value's units, mean over
targets).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
from common import (
    DEMO_IMAGE,
    DEMO_MODEL,
    DEMO_ROI,
    log,
    pyplot,
    reference_available,
    save_figure,
    shap_partition_explainer,
    table,
)
from scipy.stats import spearmanr

import segshap
from segshap.anytime import LiveUpdates, top_features
from segshap.engine import PatchEngine
from segshap.faithfulness import curve_steps, faithfulness_curves
from segshap.hierarchy import merge_tree
from segshap.io import read_image
from segshap.surrogate import adjacent_pairs
from suites import efficiency

UPDATE_EVERY = 5.0
SPEARMAN_GOAL = 0.9
SETTINGS = {
    "quick": {
        "whole": {"target": "gray_matter", "n_features": 20, "nsamples": 200},
        "efficiency": {"n_features": efficiency.SETTINGS["quick"]["n_features"], "nsamples": 300},
        "many": {"target": "gray_matter", "n_features": 650, "nsamples": 1300},
        "pairs": 1,
        "partition_evals": 60,
    },
    "full": {
        "whole": {"target": "gray_matter"},
        "efficiency": {"n_features": efficiency.SETTINGS["full"]["n_features"]},
        "many": {"target": "gray_matter", "n_features": 5000},
        "pairs": 2,
        "partition_evals": 500,
    },
}
"""Per mode, each case's options for :func:`segshap.explain` (the ``efficiency`` case adds the efficiency suite's
targets, ROI and features), the pairs of runs without and with updates, and ``max_evals`` of shap's
``PartitionExplainer`` at its default (500, full mode)."""
CASES = ("whole", "efficiency", "many")
TARGETS = {
    "first_update_s": {"whole": 15.0, "many": 30.0},
    "top10_fraction": {"whole": 0.25, "efficiency": 0.25},
    "overhead": 0.05,
}
"""The issue's targets: seconds to the first update, the share of the run's time until the final top 10 shows, and
the extra time live updates may cost."""


def _label(name: str, case: dict) -> str:
    """A case's name in the section, from its options (quick mode's cases are smaller)."""
    if name == "whole":
        return "whole structure, defaults" + (" but fewer coalitions" if "nsamples" in case["options"] else "")
    if name == "efficiency":
        return "efficiency case (demo ROI)"
    return f"{case['options']['n_features']:,} supervoxels asked"


def _options(mode: str, case: str) -> dict:
    """The keywords of :func:`segshap.explain` (and :func:`segshap.explanation_game`) of a case."""
    options = dict(SETTINGS[mode][case])
    if case == "efficiency":
        options.update(target=list(efficiency.TARGETS), roi=DEMO_ROI, features="slic", device="cpu")
    return options


@contextlib.contextmanager
def _update_seconds() -> Iterator[list[float]]:
    """Inside the block, the seconds spent in :meth:`LiveUpdates.checkpoint` (where the sampling thread makes the
    updates' estimates) add up in the list yielded, ``[seconds]``."""
    spent = [0.0]
    original = LiveUpdates.checkpoint

    def timed(self, milestone: bool = False) -> None:
        started = time.perf_counter()
        try:
            original(self, milestone)
        finally:
            spent[0] += time.perf_counter() - started

    LiveUpdates.checkpoint = timed
    try:
        yield spent
    finally:
        LiveUpdates.checkpoint = original


def _explain(inputs: dict, options: dict, live: bool) -> tuple[segshap.Explanation, list[dict], dict]:
    """One explanation, with or without updates: the result, each update as the callback got it (its values copied:
    the callback runs on the engine's courier thread), and wall, CPU and update-making seconds."""
    updates: list[dict] = []

    def on_update(update: segshap.Update) -> None:
        updates.append(
            {
                "number": update.number,
                "seconds": update.seconds,
                "coalitions": update.coalitions,
                "forwards": update.forwards,
                "level": update.level,
                "regions": update.regions,
                "top_changed": update.top_changed,
                "stable_updates": update.stable_updates,
                "adjusted": update.adjusted,
                "final": update.final,
                "values": np.array(update.values, dtype=np.float64).reshape(len(update.values), -1),
            }
        )

    wall, cpu = time.perf_counter(), time.process_time()
    with _update_seconds() as spent:
        result = segshap.explain(
            inputs["model"],
            inputs["image"],
            affine=inputs["affine"],
            on_update=on_update if live else None,
            update_every=UPDATE_EVERY,
            **options,
        )
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "update_s": spent[0]}
    return result, updates, timing


def _first(updates: list[dict], key: str) -> dict | None:
    """The first update for which ``key`` holds."""
    return next((u for u in updates if u[key]), None)


def _settled(updates: list[dict], key: str) -> dict | None:
    """The update from which ``key`` holds for every later one."""
    settled = None
    for update in updates:
        settled = (settled or update) if update[key] else None
    return settled


def _rank_correlation(values: np.ndarray, final: np.ndarray) -> float:
    """The smallest over targets of the Spearman correlation (NaN, never reaching a goal, for constant values)."""
    return float(min(spearmanr(values[:, t], final[:, t]).statistic for t in range(final.shape[1])))


def _same_top(values: np.ndarray, final: np.ndarray) -> bool:
    return all(
        set(top_features(values[:, t]).tolist()) == set(top_features(final[:, t]).tolist())
        for t in range(final.shape[1])
    )


def _case_record(result: segshap.Explanation, updates: list[dict], timing: dict, reference: np.ndarray) -> dict:
    """What a case reports: its run, each update compared with the final values and the reference, and when the
    top 10 and the rank correlation first (and for good) reached the final ones'."""
    final = np.asarray(result.values, dtype=np.float64).reshape(len(result.values), -1)
    stderr = np.asarray(result.stderr, dtype=np.float64).reshape(final.shape)
    total = result.stats["seconds"]
    rows = []
    for update in updates:
        values = update.pop("values")
        spearman = _rank_correlation(values, final)
        rows.append(
            {
                **update,
                "fraction": update["seconds"] / total,
                "same_top": _same_top(values, final),
                "spearman": spearman,
                "spearman_reached": bool(spearman >= SPEARMAN_GOAL),
                "error": efficiency.relative_error(values, reference),
            }
        )
    record = {
        "features": int(final.shape[0]),
        "targets": list(result.target_names),
        "total_s": total,
        "wall_s": timing["wall_s"],
        "cpu_s": timing["cpu_s"],
        "update_s": timing["update_s"],
        "estimation_s": result.stats["estimation_seconds"],
        "design": result.stats["design"],
        "coalitions": result.stats["evaluations"],
        "forwards": result.stats["estimation_forwards"],
        "stop_reason": result.stats["stop_reason"],
        # How far the final values themselves may be from the exact ones: their standard errors against their size
        # (None where the run could not estimate them).
        "final_relative_se": None
        if np.isnan(stderr).any()
        else float(np.mean(np.linalg.norm(stderr, axis=0) / np.linalg.norm(final, axis=0))),
        "updates": rows,
    }
    for name, key in (("top10", "same_top"), ("spearman", "spearman_reached")):
        first, settled = _first(rows, key), _settled(rows, key)
        record[f"{name}_s"] = None if first is None else first["seconds"]
        record[f"{name}_settled_s"] = None if settled is None else settled["seconds"]
    record["first_update_s"] = rows[0]["seconds"] if rows else None
    return record


def _aucs(engine: PatchEngine, values: np.ndarray) -> dict:
    """Deletion and insertion AUCs of a ranking (mean over targets) and of a random one, on ``engine``'s game."""
    values = np.asarray(values, dtype=np.float64).reshape(engine.n_players, -1)
    steps = curve_steps(engine.n_players)
    curves = [faithfulness_curves(engine.evaluate, values[:, t], steps=steps, column=t) for t in range(values.shape[1])]
    return {
        key: float(np.mean([getattr(c, key) for c in curves]))
        for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
    }


def _peer(
    inputs: dict,
    options: dict,
    record: dict,
    result: segshap.Explanation,
    first: np.ndarray,
    reference: np.ndarray,
    evals: int,
) -> dict:
    """shap's ``PartitionExplainer`` at ``evals`` and at our first update's coalitions, beside ours at the first
    update and at the end: coalitions, window forwards, AUCs, error against the reference."""
    fresh = segshap.explanation_game(inputs["model"], inputs["image"], affine=inputs["affine"], **options)
    engine = fresh.engine
    if not np.array_equal(engine.feature_ids, result.feature_ids):
        raise RuntimeError("the game rebuilt for the peer has other features than the explanation's")
    m = engine.n_players
    tree = merge_tree(m, adjacent_pairs(fresh.feature_map, engine.feature_ids))
    final = np.asarray(result.values, dtype=np.float64).reshape(m, -1)
    rows = {
        "ours_first": {
            "values": first,
            "coalitions": record["updates"][0]["coalitions"],
            "forwards": record["updates"][0]["forwards"],
            "seconds": record["updates"][0]["seconds"],
        },
        "ours_final": {
            "values": final,
            "coalitions": record["coalitions"],
            "forwards": record["forwards"],
            "seconds": record["total_s"],
        },
    }
    for name, budget in (("partition_default", evals), ("partition_first", record["updates"][0]["coalitions"])):
        started = time.perf_counter()
        game = segshap.explanation_game(inputs["model"], inputs["image"], affine=inputs["affine"], **options)
        set_up = time.perf_counter() - started
        before, evaluating = game.engine.stats["patch_forwards"], [0.0]

        def evaluate(
            coalitions: np.ndarray, engine: PatchEngine = game.engine, evaluating: list[float] = evaluating
        ) -> np.ndarray:
            started = time.perf_counter()
            values = engine.evaluate(coalitions)
            evaluating[0] += time.perf_counter() - started
            return values

        estimate, asked, _, bridge = shap_partition_explainer(m, budget, 0, tree, evaluate)
        rows[name] = {
            "values": estimate,
            "max_evals": budget,
            "coalitions": len(asked),
            "forwards": game.engine.stats["patch_forwards"] - before,
            # Set-up and the engine's evaluations, as ours' seconds count them; shap's start-up in its own process
            # (imports, numba) is left out, its own bookkeeping is in the bridge's seconds.
            "seconds": set_up + evaluating[0],
            "bridge_s": bridge,
        }
        log(f"anytime: PartitionExplainer max_evals={budget}: {len(asked)} coalitions, {rows[name]['seconds']:.0f} s")
    for row in rows.values():
        values = row.pop("values")
        row.update(_aucs(engine, values), error=efficiency.relative_error(values, reference))
    return {"windows_total": engine.tiling.n_windows, "rows": rows}


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    load_before = os.getloadavg()
    image, affine = read_image(DEMO_IMAGE)
    inputs = {"model": segshap.load_model(DEMO_MODEL, device="cpu"), "image": image, "affine": affine}
    # The first explanation in a process pays one-time costs (imports, thread pools); not the cases'.
    segshap.explain(
        inputs["model"], image, affine=affine, target="gray_matter", roi=DEMO_ROI, n_features=20, nsamples=32,
        faithfulness=False,
    )  # fmt: skip
    cases, peers = {}, {}
    overhead = {"case": "whole", "pairs": []}
    for case in CASES:
        options = _options(mode, case)
        if case == "whole":
            # Pairs in the order without, with, with, without...: drifts of the machine's speed weigh on both.
            runs = {}
            for i in range(settings["pairs"]):
                for live in (False, True) if i % 2 == 0 else (True, False):
                    runs.setdefault(live, []).append(_explain(inputs, options, live))
                    log(f"anytime: whole, live={live}: {runs[live][-1][2]['wall_s']:.0f} s")
            overhead["pairs"] = [
                {"without": without[2], "with": with_[2]} for without, with_ in zip(runs[False], runs[True])
            ]
            result, updates, timing = runs[True][0]
        else:
            result, updates, timing = _explain(inputs, options, live=True)
        final = np.asarray(result.values, dtype=np.float64).reshape(len(result.values), -1)
        if case == "efficiency":
            ref = efficiency.reference(
                inputs, efficiency.SETTINGS[mode], mode, efficiency._game(inputs, options["n_features"])
            )
            reference = np.array(ref["values"])
            if reference.shape != final.shape:
                raise RuntimeError(f"the efficiency reference holds {reference.shape} values, the run {final.shape}")
            source = {"kind": "efficiency", "permutations": ref["permutations"], "se": ref["relative_se"]}
        else:
            reference, source = final, {"kind": "final"}
        first = updates[0]["values"] if updates else None
        cases[case] = {
            **_case_record(result, updates, timing, reference),
            "reference": source,
            "options": options,
            "load": list(os.getloadavg()),
        }
        log(
            f"anytime: {case}: M = {cases[case]['features']}, {cases[case]['total_s']:.0f} s, first update "
            f"{cases[case]['first_update_s']:.1f} s, top 10 at {cases[case]['top10_s']} s"
        )
        if case in ("whole", "efficiency") and reference_available() and first is not None:
            peers[case] = _peer(inputs, options, cases[case], result, first, reference, settings["partition_evals"])
    return {
        "cases": cases,
        "overhead": overhead,
        "peers": peers,
        "update_every": UPDATE_EVERY,
        "load_before": list(load_before),
        "cores": len(os.sched_getaffinity(0)),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }


def _seconds(value: float | None, total: float) -> str:
    return "never" if value is None else f"{value:.1f} s ({value / total:.0%})"


def _verdict(met: bool) -> str:
    return "met" if met else "**MISSED**"


def markdown(result: dict, plot_path: str | None) -> str:
    cases = result["cases"]
    labels = {name: _label(name, case) for name, case in cases.items()}
    rows = []
    for name, case in cases.items():
        total = case["total_s"]
        first = case["updates"][0] if case["updates"] else None
        level = "" if first is None or first["level"] == "features" else f", {first['regions']} regions"
        rows.append(
            [
                labels[name],
                case["features"],
                f"{total:.0f} s ({case['design']}, {case['coalitions']} coalitions)",
                len(case["updates"]),
                "none" if first is None else f"{first['seconds']:.1f} s ({first['coalitions']} coalitions{level})",
                _seconds(case["top10_s"], total),
                _seconds(case["top10_settled_s"], total),
                _seconds(case["spearman_s"], total),
                "—" if first is None else f"{first['error']:.3f}",
                f"{case['update_s']:.1f} s ({case['update_s'] / total:.1%})",
                "the run's final values"
                if case["reference"]["kind"] == "final"
                else f"efficiency reference (s.e. {case['reference']['se']:.4f})",
            ]
        )
    own = ", ".join(
        f"{labels[n]} {'not estimated' if c['final_relative_se'] is None else format(c['final_relative_se'], '.3f')}"
        for n, c in cases.items()
        if c["reference"]["kind"] == "final"
    )
    loads = ", ".join(f"{c['load'][0]:.1f} after {labels[n]}" for n, c in cases.items())
    # This run keeps about one runnable thread per core; a load above that at a case's end means other work beside it.
    busy = any(c["load"][0] > result["cores"] + 0.5 for c in cases.values())
    text = [
        "Each case is one `segshap.explain` call with `on_update` (updates every "
        f"{result['update_every']:.0f} s); seconds are since the call, set-up included, and percentages are of the "
        "call's total (faithfulness curves included, so the final update, at the end of sampling, comes before "
        "100 %). Top 10: the first update whose top 10 by |value| (each target's) equals the final top 10 as a set, "
        "and the update from which every later one does; Spearman: the first update whose rank correlation of all "
        f"values with the final ones (the lower over targets) reaches {SPEARMAN_GOAL}. Error: relative L2 error "
        "against the reference (mean over targets). **Only the efficiency case has an independent reference; the "
        "others' errors are against the run's own final values**: they say how far an update is from where the "
        f"run ends, not from the exact values (the final values' own relative standard error: {own}). Making "
        "updates: the seconds the sampling thread spent making the live estimates (their share of the run).",
        "",
        f"The machine ({result['cores']} cores): 1-minute load average {result['load_before'][0]:.1f} before the "
        f"run, {loads}; this run alone accounts for about {result['cores']}, so "
        + (
            "**it was busy**: other work ran beside this run"
            if busy
            else "no other work showed beside it at the cases' ends"
        )
        + f". GOMP_SPINCOUNT={result['gomp_spincount']}.",
        "",
        table(
            [
                "case",
                "M",
                "run",
                "updates",
                "first update",
                "top 10 first",
                "top 10 for good",
                f"Spearman ≥ {SPEARMAN_GOAL}",
                "error at first update",
                "making updates",
                "reference",
            ],
            rows,
        ),
        "",
        "Targets of the issue:",
        "",
    ]
    for name, goal in TARGETS["first_update_s"].items():
        if name in cases:
            seconds = cases[name]["first_update_s"]
            met = seconds is not None and seconds <= goal
            text.append(
                f"- first update within {goal:.0f} s, {labels[name]}: {_seconds(seconds, cases[name]['total_s'])}, "
                f"{_verdict(met)}"
            )
    for name, goal in TARGETS["top10_fraction"].items():
        if name in cases:
            seconds, total = cases[name]["top10_s"], cases[name]["total_s"]
            met = seconds is not None and seconds / total <= goal
            text.append(
                f"- final top 10 within {goal:.0%} of the run's time, {labels[name]}: {_seconds(seconds, total)}, "
                f"{_verdict(met)}"
            )
    pairs = result["overhead"]["pairs"]
    if pairs:
        ratio = sum(p["with"]["wall_s"] for p in pairs) / sum(p["without"]["wall_s"] for p in pairs) - 1
        cpu = sum(p["with"]["cpu_s"] for p in pairs) / sum(p["without"]["cpu_s"] for p in pairs) - 1
        making = sum(p["with"]["update_s"] for p in pairs) / sum(p["without"]["wall_s"] for p in pairs)
        met = ratio <= TARGETS["overhead"]
        text.append(
            f"- live updates cost at most {TARGETS['overhead']:.0%} more time ({labels[result['overhead']['case']]}): "
            f"{ratio:+.1%} wall, {cpu:+.1%} CPU over {len(pairs)} pair(s) of runs, {_verdict(met)} (wall); making "
            f"the updates took {making:.1%} of the runs' time without them"
        )
        text += [
            "",
            table(
                ["pair", "without: wall / CPU s", "with: wall / CPU s", "with / without (wall)", "making updates"],
                [
                    [
                        i + 1,
                        f"{p['without']['wall_s']:.1f} / {p['without']['cpu_s']:.1f}",
                        f"{p['with']['wall_s']:.1f} / {p['with']['cpu_s']:.1f}",
                        f"{p['with']['wall_s'] / p['without']['wall_s']:.3f}",
                        f"{p['with']['update_s']:.2f} s",
                    ]
                    for i, p in enumerate(pairs)
                ],
            ),
        ]
    for name, peer in result["peers"].items():
        rows_of = peer["rows"]
        methods = {
            "ours_first": "ours, first update",
            "ours_final": "ours, final",
            "partition_default": f"shap PartitionExplainer, max_evals={rows_of['partition_default']['max_evals']}",
            "partition_first": f"shap PartitionExplainer, max_evals={rows_of['partition_first']['max_evals']} "
            "(our first update's coalitions)",
        }
        reference = "the run's final values" if cases[name]["reference"]["kind"] == "final" else "the reference"
        random = rows_of["ours_final"]
        text += [
            "",
            f"Against shap's PartitionExplainer, {labels[name]}: Owen values over the features merged along their "
            "adjacency, through the engine (window forwards counted by it; shap over full-volume inference would run "
            f"{peer['windows_total']} windows per coalition). Seconds: ours since the call; shap's the set-up and the "
            "engine's evaluations of its coalitions, its own start-up left out. A random ranking's AUCs: deletion "
            f"{random['random_deletion_auc']:.3f}, insertion {random['random_insertion_auc']:.3f}.",
            "",
            table(
                [
                    "method",
                    "coalitions",
                    "window forwards",
                    "seconds",
                    "deletion AUC ↓",
                    "insertion AUC ↑",
                    f"error vs {reference}",
                ],
                [
                    [
                        methods[key],
                        row["coalitions"],
                        f"{row['forwards']:.0f}",
                        f"{row['seconds']:.1f}",
                        f"{row['deletion_auc']:.3f}",
                        f"{row['insertion_auc']:.3f}",
                        f"{row['error']:.3f}",
                    ]
                    for key, row in rows_of.items()
                ],
            ),  # fmt: skip
        ]
    if not result["peers"]:
        text += ["", "shap's environment (`.venv-ref`) was missing: PartitionExplainer was not run."]
    if plot_path:
        text += ["", f"![Error of each live update against seconds]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path: str | os.PathLike) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 5.0))
    for name, case in result["cases"].items():
        # Against the run's own final values the final update's error is 0, which a log axis cannot show.
        shown = [u for u in case["updates"] if u["error"] > 0]
        if not shown:
            continue
        against = "final values" if case["reference"]["kind"] == "final" else "efficiency reference"
        (line,) = axis.loglog(
            [u["seconds"] for u in shown],
            [u["error"] for u in shown],
            "-",
            label=f"{_label(name, case)}, M = {case['features']} (vs {against})",
        )
        for level, marker in (("features", "o"), ("regions", "s")):
            points = [u for u in shown if u["level"] == level]
            axis.loglog(
                [u["seconds"] for u in points],
                [u["error"] for u in points],
                marker,
                color=line.get_color(),
                markerfacecolor="none" if level == "regions" else line.get_color(),
                markersize=4,
            )
        axis.axvline(case["total_s"], color=line.get_color(), lw=0.6, ls=":")
    axis.set_xlabel("seconds since the explain call (2 cores); dotted: the call's end")
    axis.set_ylabel("relative L2 error of the update")
    axis.set_title("Live updates: error against seconds (hollow squares: region level)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: no line hidden
    save_figure(figure, path)
