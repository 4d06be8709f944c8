"""Benchmark: an explanation of a model of the size people use, with its peers' times from the same run.

MONAI ``SwinUNETR`` (feature size 48, seeded weights, 3 classes) on 96^3 windows, overlap 0.5, Gaussian blending,
over the 1 mm MNI152 T1 centred in a 256 x 256 x 192 volume (as :mod:`suites.engine`); soft Dice on its white
matter segment of about 40^3 voxels; about 100 supervoxels (Voronoi cells of a lattice in the head). Ours:
``segshap.kernel_shap(design="auto")`` with 1,000 coalitions (``--coalitions``) on a :class:`segshap.PatchEngine`,
set-up included. Peers, each timed on a few of the same kind of coalitions and scaled to the same count:

* ``paper``: the paper's scheme, ROI windows with the all-on and all-off outputs reused (``PatchEngine`` with
  ``cache_bytes=0``, one coalition per call), on ``--paper`` coalitions;
* ``naive``: MONAI ``sliding_window_inference`` of the whole perturbed volume, on ``--naive`` coalitions.

Usage (the mission's GPU row: at most 5 minutes for ours on one H100)::

    python benchmarks/suites/swin.py --device cuda --json swin.json
    python benchmarks/suites/swin.py --device cpu --small    # a check of the script: feature size 12, one 64^3
                                                             # window (a 64^3 crop), 20 coalitions
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, suites
from common import machine, machine_line
from monai.networks.nets import SwinUNETR

import segshap
from suites.engine import OVERLAP, load_volume, naive_values, sample_coalitions, supervoxels, white_matter_segment

CORNER = (104, 104, 72)
"""The white-matter segment's corner in the 256 x 256 x 192 volume (the engine suite's)."""


def case(small: bool):
    """The image, the reference segment, the features, the model and the window size."""
    image, white, head = load_volume()
    reference = white_matter_segment(white, CORNER)
    if small:
        crop = tuple(slice(c - 12, c + 52) for c in CORNER)
        image, white, head, reference = (a[crop] for a in (image, white, head, reference))
    feature_size, patch = (12, (64, 64, 64)) if small else (48, (96, 96, 96))
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=feature_size, spatial_dims=3).eval()
    return image, reference, supervoxels(head, 100), model, patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--coalitions", type=int, help="ours' budget (default 1000; 20 with --small)")
    parser.add_argument("--paper", type=int, default=8, help="coalitions the paper's scheme is timed on")
    parser.add_argument("--naive", type=int, default=2, help="coalitions naive inference is timed on")
    parser.add_argument("--small", action="store_true", help="a small case that runs in minutes on a CPU")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    coalitions = args.coalitions or (20 if args.small else 1000)
    print(f"machine: {machine_line(machine())}", flush=True)
    image, reference, features, model, patch = case(args.small)
    model = model.to(args.device)
    options = dict(
        reference=reference, value="soft_dice", patch_size=patch, overlap=OVERLAP, blend="gaussian", baseline=0.0
    )
    options.update(device=args.device, batch_size=args.batch_size)
    result = {"machine": machine(), "settings": {**vars(args), "coalitions": coalitions}, "shape": image.shape}

    with torch.inference_mode():
        started = time.perf_counter()
        engine = segshap.PatchEngine(model, image, features, **options)
        explained = segshap.kernel_shap(
            engine.evaluate, engine.n_players, coalitions, seed=0, design="auto", forward_cost=engine.forward_cost
        )
        ours = time.perf_counter() - started
        stats = engine.stats
        result["ours"] = {
            "seconds": ours,
            "features": engine.n_players,
            "windows_run": stats["windows"],
            "windows_total": engine.tiling.n_windows,
            "coalitions": int(explained.n_evaluations),
            "design": explained.design,
            "forwards": stats["patch_forwards"],
            "forward_batches": stats["forward_batches"],
            "model_s": stats["forward_seconds"],
            "outside_model_share": 1 - stats["forward_seconds"] / stats["total_seconds"],
        }
        print(
            f"ours: {ours:.1f} s for {explained.n_evaluations} coalitions ({explained.design}) over "
            f"{engine.n_players} features, {stats['windows']} of {engine.tiling.n_windows} windows, "
            f"{stats['patch_forwards']} forwards, "
            f"{100 * result['ours']['outside_model_share']:.1f} % outside the model",
            flush=True,
        )
        drawn = sample_coalitions(engine.n_players, max(args.paper, args.naive), "kernel", np.random.default_rng(0))

        paper = segshap.PatchEngine(model, image, features, cache_bytes=0, **options)
        started = time.perf_counter()
        paper_values = [paper.evaluate(c[None])[0] for c in drawn[: args.paper]]
        per_coalition = (time.perf_counter() - started) / args.paper
        result["paper"] = {"s_per_coalition": per_coalition, "seconds_for_budget": per_coalition * coalitions}

        started = time.perf_counter()
        naive = naive_values(
            model, image, features, reference, engine, drawn[: args.naive], 0.0, args.batch_size, args.device, patch
        )
        per_coalition = (time.perf_counter() - started) / args.naive
        result["naive"] = {"s_per_coalition": per_coalition, "seconds_for_budget": per_coalition * coalitions}
        checked = engine.evaluate(drawn[: args.naive])
        result["max_abs_diff_naive"] = float(np.abs(naive - checked).max())
        result["max_abs_diff_paper"] = float(
            np.abs(np.array(paper_values) - engine.evaluate(drawn[: args.paper])).max()
        )
    for name in ("paper", "naive"):
        print(
            f"{name}: {result[name]['s_per_coalition']:.2f} s per coalition, "
            f"{result[name]['seconds_for_budget']:.0f} s for {coalitions} coalitions "
            f"({result[name]['seconds_for_budget'] / ours:.1f}x ours)",
            flush=True,
        )
    print(
        f"values: ours against naive max |diff| {result['max_abs_diff_naive']:.1e}, against the paper's "
        f"{result['max_abs_diff_paper']:.1e}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
