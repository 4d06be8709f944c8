"""Benchmark: the engine's own work next to the model's, per window forward and per coalition.

On a GPU a window forward takes about 0.3 ms, so whatever the engine does around it (finding each window's
input, building it, caching the output, blending cells, computing statistics) sets the pace. This suite measures
that work on any machine: the time :class:`segshap.PatchEngine` spends outside the model's forward calls, divided
by its window forwards and by its coalitions, with two models:

* ``demo``: the embedded demo model (a small MONAI UNet), whose forwards dominate on a CPU;
* ``near_free``: an elementwise stand-in with the demo model's four classes (``x * k + 0.1 k``), whose forward
  costs about what a GPU forward costs, so the engine's own time is what remains.

Cases, on the embedded demo MRI and its ROI, targets white and gray matter:

* ``whole_structures``: the model's tissues as organ features, every coalition enumerated (``design="auto"``);
* ``demo_supervoxels``: the demo's default, about 100 SLIC supervoxels, ``design="auto"`` at 4M coalitions;
* ``efficiency``: the efficiency suite's game (165 SLIC supervoxels asked), the chains at 4M with the engine's cost
  and the adjacent pairs, as :mod:`suites.efficiency` runs them.

Usage::

    bash scripts/bench.sh --pace [--device cpu|cuda] [--batch-size 4] [--repeats 3] [--json out.json]

Each (case, model) runs ``--repeats`` times on a fresh game; the fastest run is reported (the least disturbed by
other processes), with all runs in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common
from common import DEMO_IMAGE, DEMO_MODEL, DEMO_ROI, machine, machine_line

import segshap
from segshap.io import read_image
from segshap.surrogate import adjacent_pairs

TARGETS = ("white_matter", "gray_matter")


class NearFree(torch.nn.Module):
    """Four class maps as affine functions of the input: a forward that costs almost nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * k + 0.1 * k for k in (-1.0, 0.5, 1.0, -0.5)], dim=1)


CASES = {
    "whole_structures": {"features": "organs", "multiple": None, "design": "auto"},
    "demo_supervoxels": {"features": "slic", "n_features": 100, "multiple": 4, "design": "auto"},
    "efficiency": {"features": "slic", "n_features": 165, "multiple": 4, "design": "chains"},
}


def run_case(case: dict, model, reference: np.ndarray, image, affine, args) -> dict:
    """One explanation on a fresh game; the engine's and the estimator's seconds, forwards and coalitions."""
    options = {key: case[key] for key in ("features", "n_features") if key in case}
    game = segshap.explanation_game(
        model,
        image,
        target=list(TARGETS),
        reference=reference,
        labelmap=reference,
        roi=DEMO_ROI,
        device=args.device,
        batch_size=args.batch_size,
        affine=affine,
        **options,
    )
    engine = game.engine
    m = engine.n_players
    before = engine.stats
    budget = 2**m if case["multiple"] is None else case["multiple"] * m
    started = time.perf_counter()
    result = segshap.kernel_shap(
        engine.evaluate,
        m,
        budget,
        seed=0,
        design=case["design"],
        forward_cost=engine.forward_cost,
        interactions=adjacent_pairs(game.feature_map, engine.feature_ids),
    )
    wall = time.perf_counter() - started
    after = engine.stats
    forwards = after["patch_forwards"] - before["patch_forwards"]
    engine_s = after["total_seconds"] - before["total_seconds"]
    model_s = after["forward_seconds"] - before["forward_seconds"]
    outside = engine_s - model_s
    return {
        "features": m,
        "windows": after["windows"],
        "coalitions": int(result.n_evaluations),
        "forwards": int(forwards),
        "design": result.design,
        "wall_s": wall,
        "engine_s": engine_s,
        "model_s": model_s,
        "outside_ms_per_forward": 1e3 * outside / max(forwards, 1),
        "outside_ms_per_coalition": 1e3 * outside / result.n_evaluations,
        "outside_share": outside / engine_s,
        "estimator_s": wall - engine_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"machine: {machine_line(machine())}", flush=True)
    print(f"settings: {vars(args)}", flush=True)
    image, affine = read_image(DEMO_IMAGE)
    demo = segshap.load_model(DEMO_MODEL, device=args.device)
    models = {"demo": demo, "near_free": dataclasses.replace(demo, network=NearFree())}
    # The near-free model's own prediction is meaningless: both models explain the demo model's segments.
    reference = np.asarray(segshap.predict(demo, image, device=args.device, affine=affine))
    results = {"machine": machine(), "settings": vars(args)}
    with torch.inference_mode():
        for name in args.cases:
            for model_name, model in models.items():
                runs = [run_case(CASES[name], model, reference, image, affine, args) for _ in range(args.repeats)]
                best = min(runs, key=lambda run: run["engine_s"])
                results[f"{name}/{model_name}"] = {**best, "runs": runs}
                print(
                    f"{name:17s} {model_name:9s} M={best['features']:3d} windows={best['windows']:2d} "
                    f"coalitions={best['coalitions']:5d} forwards={best['forwards']:5d} "
                    f"engine {best['engine_s']:.2f} s, model {best['model_s']:.2f} s: outside the model "
                    f"{best['outside_ms_per_forward']:.3f} ms/forward, {best['outside_ms_per_coalition']:.3f} "
                    f"ms/coalition, {100 * best['outside_share']:.1f} %; estimator {best['estimator_s']:.2f} s",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
