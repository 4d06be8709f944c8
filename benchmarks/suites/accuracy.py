"""Accuracy per evaluation: Shapley estimators against the exact values of real models' games, per game family.

The games are the exactly enumerated real-model games committed in ``benchmarks/results/games/``
(:mod:`real_games`, M = 10..16), in families that the estimator was not tuned on besides the one it was: near-additive
soft Dice of the demo-trained models, thresholded values (hard Dice, false positives), small targets at a window
border with features straddling them, and a model the project did not train. Every estimator queries the same table
of all ``2**M`` coalition values. A fifth family, ``many_features`` (:mod:`large_games`, M = 30..60), is too large
to tabulate: its games are rebuilt and every estimator evaluates them through the engine (shap and shapiq ask this
process for values, ``references/remote.py``), and the exact values are replaced by a reference from a large
independent run of plain permutation sampling, whose own relative standard error is reported beside the errors
(it is part of them). Budgets are 4M ... 16M coalitions, over several seeds:

* ours: ``segshap.kernel_shap`` with ``design="auto"`` (without a cost function it is Leverage SHAP with its
  regression adjustments, except where the chains err less per coalition: with 60 features at 4M),
  ``design="chains"`` as it runs and unadjusted (no surrogate: antithetic permutation
  sampling mixed with the per-size estimate), and ``design="leverage"`` with the adjustments switched off (plain
  Leverage SHAP regression);
* shap: ``shap.KernelExplainer(l1_reg=False)``; shapiq: ``RegressionMSR`` (XGBoost and linear proxies),
  ``ProxySHAP`` (XGBoost, MSR adjustment), ``OddSHAP``, ``LeverageSHAP`` and ``PermutationSamplingSV`` (both in
  ``.venv-ref``, see ``shapiq_reference.py``);
* captum: ``captum.attr.KernelShap`` with one feature per input and all samples in one batch.

The error is ``||estimate - exact|| / ||exact||`` (relative L2) per target, averaged over targets, seeds and the
family's games. The coverage of our standard errors is the share of (feature, target, seed) whose error is within
1.645 standard errors (nominal 90 %; against a sampled reference, 1.645 times the root of both variances).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from cases import large_games
from cases.real_games import MODELS, load_games
from common import DEMO_IMAGE, log, plain_estimates, pyplot, reference_available, run_reference, save_figure, table

import segshap
from segshap.io import read_image

SETTINGS = {
    "quick": {"games_per_family": 1, "seeds": 2, "multipliers": (4, 8, 16)},
    "full": {"games_per_family": None, "seeds": 4, "multipliers": (4, 8, 16)},
}
OURS = ("ours_auto", "ours_chains", "ours_chains_unadjusted", "ours_leverage_plain")
SHAPIQ = ("regression_msr", "regression_msr_linear", "proxy_shap", "odd_shap", "leverage_shap", "permutation")
LABELS = {
    "ours_auto": "ours (auto)",
    "ours_chains": "ours (chains)",
    "ours_chains_unadjusted": "chains, unadjusted",
    "ours_leverage_plain": "Leverage SHAP, plain",
    "shap": "shap",
    "regression_msr": "shapiq RegressionMSR (XGBoost)",
    "regression_msr_linear": "shapiq RegressionMSR (linear)",
    "proxy_shap": "shapiq ProxySHAP",
    "odd_shap": "shapiq OddSHAP",
    "leverage_shap": "shapiq LeverageSHAP",
    "permutation": "shapiq permutation",
    "captum": "captum",
}
TARGETS = {"auto_vs_best_shapiq": 1.0, "auto_vs_shap_at_8m": 0.5, "chains_adjusted_vs_unadjusted_at_8m": 0.7}
COVERAGE = (0.85, 0.95)


def _lookup(values: np.ndarray, coalitions: np.ndarray) -> np.ndarray:
    return values[coalitions.astype(np.int64) @ (1 << np.arange(coalitions.shape[1]))]


def ours(method: str, evaluate, m: int, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Our estimate ``(M, T)`` of the game ``evaluate`` (``(n, M)`` bool coalitions to ``(n, T)`` values), its
    standard errors and the evaluations."""
    design = {"ours_auto": "auto", "ours_leverage_plain": "leverage"}.get(method, "chains")
    plain = {"ours_leverage_plain": plain_estimates(), "ours_chains_unadjusted": plain_estimates(surrogate=False)}
    with plain.get(method, contextlib.nullcontext()):
        result = segshap.kernel_shap(evaluate, m, budget, seed=seed, design=design)
    return result.values.reshape(m, -1), result.stderr.reshape(m, -1), result.n_evaluations


def coverage(
    estimate: np.ndarray, stderr: np.ndarray, exact: np.ndarray, exact_stderr: np.ndarray | None = None
) -> float:
    """Share of entries whose error is within 1.645 standard errors (NaN standard errors count as missed); against a
    sampled reference with standard errors ``exact_stderr``, within 1.645 times the root of both variances."""
    spread = stderr if exact_stderr is None else np.sqrt(stderr**2 + exact_stderr**2)
    with np.errstate(invalid="ignore"):
        return float(np.mean(np.abs(estimate - exact) <= 1.645 * spread))


def captum_kernel_shap(evaluate, m: int, budget: int, seed: int) -> tuple[np.ndarray, int]:
    """captum's ``KernelShap`` on a game given by ``evaluate`` (``(n, m)`` bool coalitions to ``(n, T)`` values), one
    target at a time with all ``budget`` samples in one batch; returns the ``(m, T)`` estimate and the evaluations
    of one target (they count once, as ours and shap's do, which evaluate every target from one call)."""
    from captum.attr import KernelShap

    evaluated = [0]

    def forward(x: torch.Tensor, target: int) -> torch.Tensor:
        evaluated[0] += len(x)
        coalitions = (x > 0.5).numpy()
        unique, back = np.unique(coalitions, axis=0, return_inverse=True)
        return torch.from_numpy(np.asarray(evaluate(unique)).reshape(len(unique), -1)[back.ravel(), target])

    torch.manual_seed(seed)
    t = np.asarray(evaluate(np.zeros((1, m), bool))).reshape(1, -1).shape[1]
    estimates = []
    for target in range(t):
        evaluated[0] = 0
        attribution = KernelShap(lambda x, target=target: forward(x, target)).attribute(
            torch.ones(1, m),
            baselines=torch.zeros(1, m),
            feature_mask=torch.arange(m)[None],
            n_samples=budget,
            perturbations_per_eval=budget,
        )
        estimates.append(attribution[0].double().numpy())
    return np.stack(estimates, 1), evaluated[0]


def relative_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    """``||estimate - exact|| / ||exact||`` per target, averaged over targets."""
    return float(np.mean(np.linalg.norm(estimate - exact, axis=0) / np.linalg.norm(exact, axis=0)))


def _references(game: dict, budgets: list[int], seeds: list[int]) -> dict:
    """shap's and shapiq's errors and evaluations on one game, per method and budget. A tabulated game goes to
    them as its table (shap one target at a time); a large one stays here and answers their questions."""
    exact = game["exact"]
    m, t = exact.shape
    payload = {"budgets": budgets, "seeds": seeds}
    if game["table"] is None:
        payload["players"] = m
        answer = run_reference("shap_kernel.py", payload, {}, game["evaluate"])
        shap_estimates = {b: [np.array(e).reshape(m, t) for e in answer["estimates"][str(b)]] for b in budgets}
        shap_evaluations = answer["evaluations"]
    else:
        per_target = [run_reference("shap_kernel.py", payload, {"table": game["table"][:, k]}) for k in range(t)]
        shap_estimates = {
            b: [np.stack([np.array(a["estimates"][str(b)][s]) for a in per_target], 1) for s in range(len(seeds))]
            for b in budgets
        }
        shap_evaluations = per_target[0]["evaluations"]
    out: dict[str, dict] = {"shap": {}}
    for budget in budgets:
        out["shap"][budget] = {
            "errors": [relative_error(e, exact) for e in shap_estimates[budget]],
            "evaluations": shap_evaluations[str(budget)],
        }
    payload = {**payload, "methods": list(SHAPIQ)}
    if game["table"] is None:
        answer = run_reference("shapiq_reference.py", payload, {}, game["evaluate"])
    else:
        answer = run_reference("shapiq_reference.py", payload, {"table": game["table"]})
    for method in SHAPIQ:
        out[method] = {}
        for budget in budgets:
            estimates = [np.array(e).reshape(m, t) for e in answer["estimates"][method][str(budget)]]
            out[method][budget] = {
                "errors": [relative_error(e, exact) for e in estimates],
                "evaluations": answer["evaluations"][method][str(budget)],
            }
    out["versions"] = answer["versions"]
    return out


def _tabulated(game: dict) -> dict:
    """A tabulated game as the suite runs it: its value function looks the table up; the exact values are known."""
    values = game["values"]
    return {
        **game,
        "evaluate": lambda coalitions: _lookup(values, coalitions),
        "table": values,
        "exact_stderr": None,
    }


def _sampled(entry: dict, models: dict, image: np.ndarray, affine: np.ndarray) -> dict:
    """A large game as the suite runs it: rebuilt, evaluated by the engine, scored against its sampled reference."""
    key = entry["info"]["model"]
    if key not in models:
        models[key] = segshap.load_model(MODELS[key], device="cpu")
    live = large_games.live_game(entry, models[key], image, affine)
    return {
        **entry,
        "evaluate": live.engine.evaluate,
        "table": None,
        "exact": entry["reference"],
        "exact_stderr": entry["reference_stderr"],
    }


def _chosen_games(games_per_family: int | None) -> list[dict]:
    """The tabulated games and the large games' committed references, at most ``games_per_family`` of each
    family."""
    chosen, seen = [], {}
    for game in load_games() + large_games.load_games():
        family = game["family"]
        seen[family] = seen.get(family, 0) + 1
        if games_per_family is None or seen[family] <= games_per_family:
            chosen.append(game)
    return chosen


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    seeds = list(range(settings["seeds"]))
    multipliers = list(settings["multipliers"])
    results = []
    versions = None
    models: dict = {}
    image = affine = None
    for chosen in _chosen_games(settings["games_per_family"]):
        if "values" in chosen:
            game = _tabulated(chosen)
        else:
            if image is None:
                image, affine = read_image(DEMO_IMAGE)
            game = _sampled(chosen, models, image, affine)
        exact, exact_stderr, evaluate = game["exact"], game["exact_stderr"], game["evaluate"]
        m = exact.shape[0]
        budgets = [k * m for k in multipliers]
        methods: dict[str, dict] = {}
        for name in OURS:
            methods[name] = {}
            for budget in budgets:
                runs = [ours(name, evaluate, m, budget, seed) for seed in seeds]
                methods[name][budget] = {
                    "errors": [relative_error(e, exact) for e, _, _ in runs],
                    "coverage": [coverage(e, se, exact, exact_stderr) for e, se, _ in runs],
                    "evaluations": [int(n) for _, _, n in runs],
                }
        methods["captum"] = {}
        for budget in budgets:
            runs = [captum_kernel_shap(evaluate, m, budget, seed) for seed in seeds]
            methods["captum"][budget] = {
                "errors": [relative_error(e, exact) for e, _ in runs],
                "evaluations": [int(n) for _, n in runs],
            }
        if reference_available():
            references = _references(game, budgets, seeds)
            versions = references.pop("versions")
            methods.update(references)
        else:
            log("accuracy: .venv-ref is missing; run scripts/reference_env.sh to include shap and shapiq")
        log(
            f"accuracy/{game['name']} ({game['family']}): "
            + ", ".join(
                f"{name} {np.mean(methods[name][8 * m]['errors']):.3f}" for name in methods if 8 * m in methods[name]
            )
        )
        entry = {
            "name": game["name"],
            "family": game["family"],
            "features": m,
            "info": game["info"],
            "methods": {name: {str(b): per_budget for b, per_budget in per.items()} for name, per in methods.items()},
        }
        if exact_stderr is not None:
            entry["reference"] = {
                "permutations": game["info"]["permutations"],
                "relative_se": float(np.mean(np.linalg.norm(exact_stderr, axis=0) / np.linalg.norm(exact, axis=0))),
            }
        results.append(entry)
    return {
        "games": results,
        "families": list(dict.fromkeys(g["family"] for g in results)),
        "multipliers": multipliers,
        "seeds": len(seeds),
        "reference_versions": versions,
        "methods": sorted(set().union(*(g["methods"] for g in results))),
    }


def mean_errors(result: dict, family: str | None = None, key: str = "errors") -> dict[str, list[float]]:
    """Per method, the mean of ``key`` (relative errors, or our coverage) at each budget multiple, over seeds and the
    games of ``family`` (all games by default)."""
    games = [g for g in result["games"] if family is None or g["family"] == family]
    out = {}
    for name in result["methods"]:
        rows = []
        for k in result["multipliers"]:
            per_game = [
                np.mean(g["methods"][name][str(k * g["features"])][key])
                for g in games
                if name in g["methods"] and key in g["methods"][name][str(k * g["features"])]
            ]
            if per_game:
                rows.append(float(np.mean(per_game)))
        if len(rows) == len(result["multipliers"]):
            out[name] = rows
    return out


def targets(result: dict) -> list[dict]:
    """Each family's targets of the accuracy suite at each budget, with the measured ratio and whether it is met."""
    checks = []
    multipliers = result["multipliers"]
    for family in result["families"]:
        errors = mean_errors(result, family)
        cover = mean_errors(result, family, "coverage")
        shapiq = [n for n in SHAPIQ if n in errors]
        for i, k in enumerate(multipliers):
            if shapiq:
                best = min(errors[n][i] for n in shapiq)
                ratio = errors["ours_auto"][i] / best
                checks.append(
                    {
                        "family": family,
                        "budget": k,
                        "target": "auto / best shapiq",
                        "value": ratio,
                        "met": ratio <= TARGETS["auto_vs_best_shapiq"],
                    }
                )
            if k == 8 and "shap" in errors:
                ratio = errors["ours_auto"][i] / errors["shap"][i]
                checks.append(
                    {
                        "family": family,
                        "budget": k,
                        "target": "auto / shap",
                        "value": ratio,
                        "met": ratio <= TARGETS["auto_vs_shap_at_8m"],
                    }
                )
            if k == 8:
                ratio = errors["ours_chains"][i] / errors["ours_chains_unadjusted"][i]
                checks.append(
                    {
                        "family": family,
                        "budget": k,
                        "target": "chains / unadjusted",
                        "value": ratio,
                        "met": ratio <= TARGETS["chains_adjusted_vs_unadjusted_at_8m"],
                    }
                )
            for name in ("ours_auto", "ours_chains"):
                value = cover[name][i]
                checks.append(
                    {
                        "family": family,
                        "budget": k,
                        "target": f"coverage {LABELS[name]}",
                        "value": value,
                        "met": COVERAGE[0] <= value <= COVERAGE[1],
                    }
                )
    return checks


def markdown(result: dict, plot_path: str | None) -> str:
    multipliers = result["multipliers"]
    text = [
        "Exactly enumerated tables of real models' values (`benchmarks/cases/real_games.py`), queried by every "
        "estimator, and games too large to tabulate (`many_features`, `benchmarks/cases/large_games.py`: M = 30-60, "
        "evaluated through the engine by every estimator, scored against plain permutation sampling); relative L2 "
        "error against the exact (or reference) values, mean over both targets, "
        f"{result['seeds']} seeds and the family's games; budgets in multiples of each game's M (coalitions, the "
        "empty and full ones included). Coverage: share of values within 1.645 of our standard errors (nominal 90 %).",
    ]
    for family in result["families"]:
        errors = mean_errors(result, family)
        cover = mean_errors(result, family, "coverage")
        names = [n for n in LABELS if n in errors]
        members = [g for g in result["games"] if g["family"] == family]
        games = ", ".join(f"`{g['name']}` (M = {g['features']})" for g in members)
        sampled = [g for g in members if "reference" in g]
        if sampled:
            games += (
                ". References: plain permutation sampling ("
                + "; ".join(
                    f"`{g['name']}`: {g['reference']['permutations']} permutations, relative standard error "
                    f"{g['reference']['relative_se']:.4f}"
                    for g in sampled
                )
                + "), part of every error shown: the exact values would score about that"
            )
        rows = []
        for i, k in enumerate(multipliers):
            row = [f"{k}M"] + [f"{errors[n][i]:.4f}" for n in names]
            row += [f"{cover['ours_auto'][i]:.2f}", f"{cover['ours_chains'][i]:.2f}"]
            rows.append(row)
        header = ["budget"] + [LABELS[n] for n in names] + ["coverage auto", "coverage chains"]
        text += ["", f"**{family}**: {games}.", "", table(header, rows)]
    checks = targets(result)
    if checks:
        rows = [
            [c["family"], f"{c['budget']}M", c["target"], f"{c['value']:.2f}", "met" if c["met"] else "**missed**"]
            for c in checks
        ]
        missed = sum(not c["met"] for c in checks)
        text += [
            "",
            f"Targets (auto at or below the best shapiq method at every budget, at most 0.5x shap at 8M, adjusted "
            f"chains at most 0.7x unadjusted at 8M, coverage {COVERAGE[0]:.2f}-{COVERAGE[1]:.2f}): "
            f"{len(checks) - missed} of {len(checks)} met.",
            "",
            table(["family", "budget", "target", "measured", ""], rows),
        ]
    if result.get("reference_versions"):
        text += [
            "",
            "Reference versions: " + ", ".join(f"{k} {v}" for k, v in result["reference_versions"].items()) + ".",
        ]
    else:
        text += [
            "",
            "shap and shapiq were not run: their environment (`.venv-ref`, `scripts/reference_env.sh`) is missing.",
        ]
    if plot_path:
        text += ["", f"![Error against coalitions, per family]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path) -> None:
    plt = pyplot()

    styles = {
        "ours_auto": "o-",
        "ours_chains": "o--",
        "ours_chains_unadjusted": "o:",
        "shap": "s--",
        "regression_msr": "D-",
        "regression_msr_linear": "D--",
        "proxy_shap": "v-",
        "odd_shap": "v--",
        "permutation": "D:",
    }
    families = result["families"]
    figure, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families), 3.8), squeeze=False)
    for axis, family in zip(axes[0], families):
        errors = mean_errors(result, family)
        for name, style in styles.items():
            if name in errors:
                axis.loglog(result["multipliers"], errors[name], style, label=LABELS[name])
        axis.set_xlabel("coalitions evaluated / M")
        axis.set_title(family)
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative L2 error vs exact")
    axes[0][-1].legend(fontsize=6)
    save_figure(figure, path)
