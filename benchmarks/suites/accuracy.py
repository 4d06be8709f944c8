"""Accuracy per evaluation: Shapley estimators against the exact values of real models' games.

The games are the exactly enumerated real-model games committed in ``benchmarks/results/games/``
(:mod:`real_games`: the demo model and a second trained model on the demo MRI, SLIC supervoxels, M = 11..14, two
targets each). Every estimator queries the same table of all ``2**M`` coalition values, at budgets of 4M ... 16M
coalitions, over several seeds:

* ours: ``segshap.kernel_shap`` with ``design="auto"`` (without a cost function it is Leverage SHAP with the tree
  adjustment), ``design="chains"``, and ``design="leverage"`` with the adjustment switched off (the plain Leverage
  SHAP regression, the paper's estimator with Leverage SHAP sampling);
* shap: ``shap.KernelExplainer(l1_reg=False)``; shapiq 1.8: ``RegressionMSR``, ``LeverageSHAP`` and
  ``PermutationSamplingSV`` (both in ``.venv-ref``, see ``shapiq_reference.py``);
* captum: ``captum.attr.KernelShap`` with one feature per input and all samples in one batch.

The error is ``||estimate - exact|| / ||exact||`` (relative L2) per target, averaged over targets, seeds and games.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from cases.real_games import load_games
from common import log, plain_estimates, pyplot, reference_available, run_reference, save_figure, table

import segshap

SETTINGS = {
    "quick": {"games": 2, "seeds": 3, "multipliers": (4, 8, 16)},
    "full": {"games": None, "seeds": 10, "multipliers": (4, 8, 12, 16)},
}
OURS = ("ours_auto", "ours_chains", "ours_leverage_plain")
SHAPIQ = ("regression_msr", "leverage_shap", "permutation")
LABELS = {
    "ours_auto": "ours (auto)",
    "ours_chains": "ours (chains)",
    "ours_leverage_plain": "Leverage SHAP, plain",
    "shap": "shap",
    "regression_msr": "shapiq RegressionMSR",
    "leverage_shap": "shapiq LeverageSHAP",
    "permutation": "shapiq permutation",
    "captum": "captum",
}


def _lookup(values: np.ndarray, coalitions: np.ndarray) -> np.ndarray:
    return values[coalitions.astype(np.int64) @ (1 << np.arange(coalitions.shape[1]))]


def ours(method: str, values: np.ndarray, budget: int, seed: int) -> tuple[np.ndarray, int]:
    m = int(np.log2(len(values)))
    design = {"ours_auto": "auto", "ours_chains": "chains", "ours_leverage_plain": "leverage"}[method]
    with plain_estimates() if method == "ours_leverage_plain" else contextlib.nullcontext():
        result = segshap.kernel_shap(lambda c: _lookup(values, c), m, budget, seed=seed, design=design)
    return result.values, result.n_evaluations


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


def _references(values: np.ndarray, exact: np.ndarray, budgets: list[int], seeds: list[int]) -> dict:
    """shap's and shapiq's errors and evaluations on one game, per method and budget."""
    m, t = exact.shape
    out: dict[str, dict] = {}
    per_target = [
        run_reference("shap_kernel.py", {"budgets": budgets, "seeds": seeds}, {"table": values[:, k]}) for k in range(t)
    ]
    out["shap"] = {}
    for budget in budgets:
        estimates = [
            np.stack([np.array(answer["estimates"][str(budget)][s]) for answer in per_target], 1)
            for s in range(len(seeds))
        ]
        out["shap"][budget] = {
            "errors": [relative_error(e, exact) for e in estimates],
            "evaluations": per_target[0]["evaluations"][str(budget)],
        }
    answer = run_reference(
        "shapiq_reference.py", {"budgets": budgets, "seeds": seeds, "methods": list(SHAPIQ)}, {"table": values}
    )
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


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    games = load_games()[: settings["games"]]
    seeds = list(range(settings["seeds"]))
    multipliers = list(settings["multipliers"])
    results = []
    versions = None
    for game in games:
        values, exact = game["values"], game["exact"]
        m = exact.shape[0]
        budgets = [k * m for k in multipliers]
        methods: dict[str, dict] = {}
        for name in OURS:
            methods[name] = {}
            for budget in budgets:
                runs = [ours(name, values, budget, seed) for seed in seeds]
                methods[name][budget] = {
                    "errors": [relative_error(e, exact) for e, _ in runs],
                    "evaluations": [int(n) for _, n in runs],
                }
        methods["captum"] = {}
        for budget in budgets:
            runs = [captum_kernel_shap(lambda c, values=values: _lookup(values, c), m, budget, seed) for seed in seeds]
            methods["captum"][budget] = {
                "errors": [relative_error(e, exact) for e, _ in runs],
                "evaluations": [int(n) for _, n in runs],
            }
        if reference_available():
            references = _references(values, exact, budgets, seeds)
            versions = references.pop("versions")
            methods.update(references)
        else:
            log("accuracy: .venv-ref is missing; run scripts/reference_env.sh to include shap and shapiq")
        log(
            f"accuracy/{game['name']}: "
            + ", ".join(
                f"{name} {np.mean(methods[name][8 * m]['errors']):.3f}" for name in methods if 8 * m in methods[name]
            )
        )
        results.append(
            {
                "name": game["name"],
                "features": m,
                "info": game["info"],
                "methods": {name: {str(b): entry for b, entry in per.items()} for name, per in methods.items()},
            }
        )
    return {
        "games": results,
        "multipliers": multipliers,
        "seeds": len(seeds),
        "reference_versions": versions,
        "methods": sorted(set().union(*(g["methods"] for g in results))),
    }


def mean_errors(result: dict) -> dict[str, list[float]]:
    """Per method, the relative error at each budget multiple, averaged over seeds and games."""
    out = {}
    for name in result["methods"]:
        rows = []
        for k in result["multipliers"]:
            per_game = [
                np.mean(g["methods"][name][str(k * g["features"])]["errors"])
                for g in result["games"]
                if name in g["methods"]
            ]
            rows.append(float(np.mean(per_game)))
        out[name] = rows
    return out


def markdown(result: dict, plot_path: str | None) -> str:
    errors = mean_errors(result)
    names = [n for n in LABELS if n in errors]
    best_shapiq = [
        min(errors[n][i] for n in SHAPIQ if n in errors) if any(n in errors for n in SHAPIQ) else None
        for i in range(len(result["multipliers"]))
    ]
    rows = []
    for i, k in enumerate(result["multipliers"]):
        row = [f"{k}M"] + [f"{errors[n][i]:.4f}" for n in names]
        if "shap" in errors:
            row.append(f"{errors['ours_auto'][i] / errors['shap'][i]:.2f}")
        if best_shapiq[i] is not None:
            row.append(f"{errors['ours_auto'][i] / best_shapiq[i]:.2f}")
        rows.append(row)
    header = ["budget"] + [LABELS[n] for n in names]
    header += ["auto / shap"] if "shap" in errors else []
    header += ["auto / best shapiq"] if any(b is not None for b in best_shapiq) else []
    games = ", ".join(f"`{g['name']}` (M = {g['features']})" for g in result["games"])
    per_game_rows = []
    middle = result["multipliers"][len(result["multipliers"]) // 2]
    for g in result["games"]:
        budget = str(middle * g["features"])
        per_game_rows.append(
            [g["name"]] + [f"{np.mean(g['methods'][n][budget]['errors']):.4f}" for n in names if n in g["methods"]]
        )
    text = [
        f"Games: {games}; each an exactly enumerated table of a real model's values on the demo MRI "
        "(`benchmarks/cases/real_games.py`), queried by every estimator. Relative L2 error against the exact values, "
        f"mean over both targets, {result['seeds']} seeds and the games; budgets in multiples of each game's M "
        "(coalitions, the empty and full ones included).",
        "",
        table(header, rows),
        "",
        f"Per game at {middle}M:",
        "",
        table(["game"] + [LABELS[n] for n in names], per_game_rows),
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
        text += ["", f"![Error against coalitions]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path) -> None:
    plt = pyplot()

    errors = mean_errors(result)
    styles = {
        "ours_auto": "o-",
        "ours_chains": "o--",
        "ours_leverage_plain": "o:",
        "shap": "s--",
        "regression_msr": "D-",
        "leverage_shap": "D:",
        "permutation": "D--",
        "captum": "^:",
    }
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for name, style in styles.items():
        if name in errors:
            axes.loglog(result["multipliers"], errors[name], style, label=LABELS[name])
    axes.set_xlabel("coalitions evaluated / M")
    axes.set_ylabel("relative L2 error vs exact")
    axes.set_title(f"Shapley estimators on {len(result['games'])} real-model games")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    save_figure(figure, path)
