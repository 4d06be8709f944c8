"""Accuracy per evaluation: KernelSHAP estimators against exact Shapley values of a real model's game.

The game: the demo model (``Resources/Models/demo_gmwm.pt``) on the demo MRI, soft Dice of its white-matter and
gray-matter segmentations inside the demo ROI, over SLIC supervoxels: few enough (M <= 14) that every one of the
2**M coalitions is evaluated through the real engine. The exact Shapley values come from that table; then every
estimator queries the same table, at budgets of 2M ... 32M coalitions, over several seeds:

* ours: ``segshap.kernel_shap`` (paired sampling without replacement, the Shapley kernel's size allocation);
* shap: ``shap.KernelExplainer(l1_reg=False)`` (run in ``.venv-ref``);
* captum: ``captum.attr.KernelShap`` with one feature per input and all samples in one batch.

The error is ``||estimate - exact|| / ||exact||`` (relative L2) per target, averaged over seeds and targets.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

import segshap
from common import DEMO_IMAGE, DEMO_MODEL, DEMO_ROI, log, reference_available, run_reference, table
from segshap.io import read_image

SETTINGS = {
    "quick": {"n_features": 12, "max_features": 10, "seeds": 5, "multipliers": (2, 4, 8, 16, 32)},
    "full": {"n_features": 24, "max_features": 14, "seeds": 20, "multipliers": (2, 4, 8, 16, 32)},
}
TARGETS = ("white_matter", "gray_matter")


def coalition_table(m: int) -> np.ndarray:
    """All ``2**m`` coalitions; row ``k`` has feature ``i`` on where bit ``i`` of ``k`` is set."""
    index = np.arange(2**m)
    return ((index[:, None] >> np.arange(m)) & 1).astype(bool)


def demo_game(n_features: int, max_features: int) -> tuple[np.ndarray, dict]:
    """The value table ``(2**M, targets)`` of the demo game, with the fewest SLIC segments asked for that give at
    most ``max_features`` features that can change a value."""
    image, affine = read_image(DEMO_IMAGE)
    model = segshap.load_model(DEMO_MODEL, device="cpu")
    for n in range(n_features, 1, -1):
        game = segshap.explanation_game(model, image, target=list(TARGETS), roi=DEMO_ROI, features="slic",
                                        n_features=n, device="cpu", affine=affine)
        if game.n_features <= max_features:
            break
    m = game.n_features
    started = time.perf_counter()
    values = game.engine.evaluate(coalition_table(m))
    info = {"n_features_asked": n, "features": m, "coalitions": 2**m, "enumeration_s": time.perf_counter() - started,
            "patch_forwards": game.engine.stats["patch_forwards"], "windows": game.engine.stats["windows"]}
    log(f"accuracy: enumerated {2**m} coalitions of {m} features in {info['enumeration_s']:.1f} s "
        f"({info['patch_forwards']} window forwards)")
    return values, info


def exact_shapley(values: np.ndarray) -> np.ndarray:
    """Shapley values ``(M, T)`` from the table of all coalition values ``(2**M, T)``."""
    m = int(np.log2(len(values)))
    index = np.arange(2**m)
    sizes = np.array([bin(k).count("1") for k in index])
    weights = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) if s < m else 0.0
                        for s in range(m + 1)])
    out = np.zeros((m,) + values.shape[1:])
    for i in range(m):
        without = index[(index >> i) & 1 == 0]
        out[i] = (weights[sizes[without]][:, None] * (values[without | (1 << i)] - values[without])).sum(0)
    return out


def _lookup(values: np.ndarray, coalitions: np.ndarray) -> np.ndarray:
    return values[coalitions.astype(np.int64) @ (1 << np.arange(coalitions.shape[1]))]


def ours(values: np.ndarray, budget: int, seed: int) -> tuple[np.ndarray, int]:
    m = int(np.log2(len(values)))
    result = segshap.kernel_shap(lambda c: _lookup(values, c), m, budget, seed=seed)
    return result.values, result.n_evaluations


def captum_kernel_shap(values: np.ndarray, budget: int, seed: int) -> tuple[np.ndarray, int]:
    from captum.attr import KernelShap

    m = int(np.log2(len(values)))
    evaluated = [0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        evaluated[0] += len(x)
        return torch.from_numpy(_lookup(values, (x > 0.5).numpy()))

    torch.manual_seed(seed)
    estimates = []
    for t in range(values.shape[1]):
        # One target at a time (captum attributes one output); its evaluations count once, as ours and shap's.
        evaluated[0] = 0
        attribution = KernelShap(lambda x, t=t: forward(x)[:, t]).attribute(
            torch.ones(1, m), baselines=torch.zeros(1, m), feature_mask=torch.arange(m)[None],
            n_samples=budget, perturbations_per_eval=budget,
        )
        estimates.append(attribution[0].double().numpy())
    return np.stack(estimates, 1), evaluated[0]


def relative_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    """``||estimate - exact|| / ||exact||`` per target, averaged over targets."""
    return float(np.mean(np.linalg.norm(estimate - exact, axis=0) / np.linalg.norm(exact, axis=0)))


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    values, info = demo_game(settings["n_features"], settings["max_features"])
    exact = exact_shapley(values)
    m = info["features"]
    budgets = [k * m for k in settings["multipliers"] if k * m < 2**m]
    seeds = list(range(settings["seeds"]))
    methods: dict[str, dict] = {"ours": {}, "captum": {}}
    for budget in budgets:
        for name, estimator in (("ours", ours), ("captum", captum_kernel_shap)):
            runs = [estimator(values, budget, seed) for seed in seeds]
            methods[name][budget] = {
                "errors": [relative_error(estimate, exact) for estimate, _ in runs],
                "evaluations": [int(n) for _, n in runs],
            }
    if reference_available():
        answer = run_reference("shap_kernel.py", {"budgets": budgets, "seeds": seeds}, {"table": values[:, 0]})
        answer_gm = run_reference("shap_kernel.py", {"budgets": budgets, "seeds": seeds}, {"table": values[:, 1]})
        methods["shap"] = {}
        for budget in budgets:
            key = str(budget)
            estimates = [np.stack([np.array(a), np.array(b)], 1)
                         for a, b in zip(answer["estimates"][key], answer_gm["estimates"][key])]
            methods["shap"][budget] = {
                "errors": [relative_error(estimate, exact) for estimate in estimates],
                "evaluations": answer["evaluations"][key],
            }
    else:
        log("accuracy: .venv-ref (shap) is missing; run scripts/reference_env.sh to include shap")
    return {"game": info, "targets": list(TARGETS), "exact": exact.tolist(), "budgets": budgets, "seeds": len(seeds),
            "methods": methods}


def _entries(result: dict, name: str) -> list[dict]:
    """A method's entries in budget order (JSON turned the budgets into strings)."""
    entries = {int(budget): entry for budget, entry in result["methods"][name].items()}
    return [entries[budget] for budget in result["budgets"]]


def markdown(result: dict, plot_path: str | None) -> str:
    game = result["game"]
    names = [name for name in ("ours", "shap", "captum") if name in result["methods"]]
    rows = []
    for index, budget in enumerate(result["budgets"]):
        row = [f"{budget} ({budget // game['features']}M)"]
        for name in names:
            entry = _entries(result, name)[index]
            row.append(f"{np.mean(entry['errors']):.3f} ± {np.std(entry['errors']):.3f} "
                       f"({np.mean(entry['evaluations']):.0f})")
        rows.append(row)
    text = [
        f"Game: the demo model on the demo MRI, soft Dice of {' and '.join(result['targets'])} inside the demo ROI, "
        f"over {game['features']} SLIC supervoxels (all that can change a value when {game['n_features_asked']} "
        f"are asked for); all {game['coalitions']} coalitions evaluated through the engine "
        f"({game['patch_forwards']} window forwards, {game['enumeration_s']:.1f} s) give the exact values, and "
        f"every estimator queries that table. Relative L2 error against the exact values, mean ± standard "
        f"deviation over {result['seeds']} seeds and both targets; in brackets the coalitions each evaluated.",
        "",
        table(["budget"] + names, rows),
    ]
    if "shap" not in result["methods"]:
        text += ["", "shap was not run: its environment (`.venv-ref`, `scripts/reference_env.sh`) is missing."]
    if plot_path:
        text += ["", f"![Error against evaluations]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name, style in (("ours", "o-"), ("shap", "s--"), ("captum", "^:")):
        if name not in result["methods"]:
            continue
        entries = _entries(result, name)
        evaluations = [np.mean(e["evaluations"]) for e in entries]
        errors = [np.mean(e["errors"]) for e in entries]
        axes.loglog(evaluations, errors, style, label=name)
    axes.set_xlabel("coalitions evaluated")
    axes.set_ylabel("relative L2 error vs exact")
    axes.set_title(f"KernelSHAP accuracy, demo game (M = {result['game']['features']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
