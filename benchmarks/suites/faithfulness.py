"""Faithfulness: do the features an attribution ranks first matter most to the model?

Games (each through the real engine, so every curve point is exact full-inference): the demo model on the demo
MRI, soft Dice of its white matter inside the demo ROI, over SLIC supervoxels; and, where present, a second
trained model (``benchmarks/cases/models/``). Two baselines: the image mean and zero. Rankings:

* KernelSHAP (ours): ``segshap.kernel_shap`` with ``2 M + 512`` coalitions;
* occlusion: ``v(all) - v(all without i)``, one supervoxel off at a time;
* gradient x input: ``(x - baseline) * dv/dx`` summed over each supervoxel, the gradient taken through MONAI
  ``sliding_window_inference`` of the whole image (checked to give the engine's ``v(all)``);
* random: a random order (mean of 5).

Metrics, with values divided by ``v(all)``: deletion AUC (remove features best-first from all-on; lower is
better), insertion AUC (add them best-first to all-off; higher is better), AOPC (mean drop over the first fifth of
deletions; higher is better) and faithfulness correlation (Pearson correlation, over 128 random subsets of a fifth
of the features, between the subset's attribution sum and the drop when it is removed; higher is better).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from common import DEMO_IMAGE, DEMO_MODEL, DEMO_ROI, ROOT, log, pyplot, save_figure, table
from monai.inferers import sliding_window_inference

import segshap
from segshap.faithfulness import ranking_curves
from segshap.io import read_image

SETTINGS = {
    "quick": {"n_features": 24, "baselines": ("mean",)},
    "full": {"n_features": 64, "baselines": ("mean", "zero")},
}
SECOND_MODEL = ROOT / "benchmarks" / "cases" / "models" / "gmwm_seed1.pt"
METHODS = ("kernelshap", "occlusion", "grad_x_input", "random")


def models() -> dict[str, Path]:
    found = {"demo": DEMO_MODEL}
    if SECOND_MODEL.exists():
        found["second"] = SECOND_MODEL
    return found


def gradient_x_input(game) -> tuple[np.ndarray, float]:
    """Per feature ``sum (x - b) * dv/dx``, and ``v(all)`` from the same differentiable pass."""
    engine, spec = game.engine, game.tiling_spec
    x = torch.from_numpy(np.ascontiguousarray(game.prepared.image))[None].requires_grad_(True)
    network = game.model.network if hasattr(game.model, "network") else game.model
    logits = sliding_window_inference(
        x, spec.patch_size, 4, network, overlap=spec.overlap, mode=spec.blend, sigma_scale=spec.sigma_scale
    )
    roi = torch.from_numpy(game.roi)
    p = torch.softmax(logits[0].double(), 0)[game.targets[0]][roi]
    r = torch.from_numpy(game.masks[0][game.roi]).double()
    value = 2 * (p * r).sum() / (p.sum() + r.sum())
    value.backward()
    baseline = np.broadcast_to(game.baseline, x.shape[1:])
    contribution = ((x.detach()[0].numpy() - baseline) * x.grad[0].numpy()).sum(0)
    per_feature = np.array([contribution[game.feature_map == f].sum() for f in engine.feature_ids])
    return per_feature, value.item()


def metrics(game, scores: np.ndarray, subsets: np.ndarray, subset_drops: np.ndarray, full: float) -> dict:
    deletion, insertion = ranking_curves(game.engine.evaluate, np.argsort(-scores, kind="stable"))
    m = game.n_players
    fifth = max(1, math.ceil(m / 5))
    deletion, insertion = deletion / full, insertion / full
    sums = (subsets * scores).sum(1)
    correlation = float(np.corrcoef(sums, subset_drops)[0, 1]) if np.std(sums) > 0 else 0.0
    return {
        "deletion_auc": float(np.trapezoid(deletion, dx=1 / m)),
        "insertion_auc": float(np.trapezoid(insertion, dx=1 / m)),
        "aopc": float(np.mean(1 - deletion[: fifth + 1])),
        "faithfulness_correlation": correlation,
        "deletion_curve": deletion.tolist(),
        "insertion_curve": insertion.tolist(),
    }


def run_game(model_path: Path, baseline: str, n_features: int) -> dict:
    image, affine = read_image(DEMO_IMAGE)
    model = segshap.load_model(model_path, device="cpu")
    game = segshap.explanation_game(
        model,
        image,
        target="white_matter",
        roi=DEMO_ROI,
        features="slic",
        n_features=n_features,
        baseline=baseline,
        device="cpu",
        affine=affine,
    )
    m = game.n_players
    full = float(np.ravel(game.engine.evaluate(np.ones((1, m), bool)))[0])
    rng = np.random.default_rng(0)
    subsets = np.zeros((128, m), bool)
    for row in subsets:
        row[rng.choice(m, max(1, round(m / 5)), replace=False)] = True
    removed = np.ravel(game.engine.evaluate(~subsets))
    drops = full - removed

    shapley = segshap.kernel_shap(game.engine.evaluate, m, 2 * m + 512, seed=0).values
    shapley = shapley[:, 0] if shapley.ndim == 2 else shapley
    without_one = np.ravel(game.engine.evaluate(~np.eye(m, dtype=bool)))
    occlusion = full - without_one
    gradient, differentiable_full = gradient_x_input(game)
    if abs(differentiable_full - full) > 1e-4:
        raise RuntimeError(f"the gradient pass computes another game: v(all) {differentiable_full} vs {full}")
    rankings = {"kernelshap": shapley, "occlusion": occlusion, "grad_x_input": gradient}
    result = {
        "features": m,
        "full_value": full,
        "methods": {name: metrics(game, scores, subsets, drops, full) for name, scores in rankings.items()},
    }
    random_runs = [metrics(game, rng.random(m), subsets, drops, full) for _ in range(5)]
    result["methods"]["random"] = {
        key: (
            np.mean([r[key] for r in random_runs], 0).tolist()
            if isinstance(random_runs[0][key], list)
            else float(np.mean([r[key] for r in random_runs]))
        )
        for key in random_runs[0]
    }
    log(
        f"faithfulness: {model_path.name}, baseline {baseline}: {m} features, "
        + ", ".join(
            f"{name} del {r['deletion_auc']:.3f} ins {r['insertion_auc']:.3f}" for name, r in result["methods"].items()
        )
    )
    return result


def run(mode: str) -> dict:
    settings = SETTINGS[mode]
    games = {}
    for name, path in models().items():
        for baseline in settings["baselines"]:
            games[f"{name}/{baseline}"] = run_game(path, baseline, settings["n_features"])
    return {"games": games, "n_features": settings["n_features"]}


def markdown(result: dict, plot_path: str | None) -> str:
    rows = []
    for game_name, game in result["games"].items():
        for method in METHODS:
            r = game["methods"][method]
            rows.append(
                [
                    game_name if method == METHODS[0] else "",
                    method,
                    f"{r['deletion_auc']:.3f}",
                    f"{r['insertion_auc']:.3f}",
                    f"{r['aopc']:.3f}",
                    f"{r['faithfulness_correlation']:.2f}",
                ]
            )
    counts = ", ".join(f"{name}: {game['features']} features" for name, game in result["games"].items())
    text = [
        f"Soft Dice of the white matter inside the demo ROI over SLIC supervoxels ({counts}); values divided by "
        "v(all). Deletion AUC: lower is better; insertion AUC, AOPC and faithfulness correlation: higher is better.",
        "",
        table(
            ["model / baseline", "ranking", "deletion AUC ↓", "insertion AUC ↑", "AOPC ↑", "faithfulness corr. ↑"], rows
        ),
    ]
    if "second" not in {k.split("/")[0] for k in result["games"]}:
        text += ["", f"Only the demo model was run: the second model ({SECOND_MODEL.relative_to(ROOT)}) is missing."]
    if plot_path:
        text += ["", f"![Deletion and insertion curves]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path) -> None:
    plt = pyplot()

    name = next(iter(result["games"]))
    game = result["games"][name]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in METHODS:
        for axis, key in zip(axes, ("deletion_curve", "insertion_curve")):
            curve = np.array(game["methods"][method][key])
            axis.plot(np.linspace(0, 1, len(curve)), curve, label=method)
    for axis, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)")):
        axis.set_title(f"{title}: {name}")
        axis.set_xlabel("fraction of features removed" if "deletion" in title else "fraction of features added")
        axis.set_ylabel("v / v(all)")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(figure, path)
