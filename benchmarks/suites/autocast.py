"""How far bf16 autocast moves the engine's values, and how much time it saves, on the engine benchmark's case.

Usage::

    bash scripts/bench.sh --autocast [--coalitions 32] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, suites
from common import machine, machine_line
from monai.networks.nets import UNet

import segshap
from suites.engine import (
    OVERLAP,
    PATCH,
    TARGET_CORNER,
    load_volume,
    organ_tiling,
    sample_coalitions,
    supervoxels,
    white_matter_segment,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coalitions", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    args = parser.parse_args()
    print(f"machine: {machine_line(machine())}")
    image, white, head = load_volume()
    reference = white_matter_segment(white, TARGET_CORNER)
    torch.manual_seed(args.seed)
    model = UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
    for name, features in [("organ tiling", organ_tiling(image.shape, args.seed)), ("supervoxels", supervoxels(head))]:
        for value in ("soft_dice", "dice"):
            results = {}
            for dtype in (None, torch.bfloat16):
                engine = segshap.PatchEngine(
                    model,
                    image,
                    features,
                    reference=reference,
                    value=value,
                    patch_size=PATCH,
                    overlap=OVERLAP,
                    autocast_dtype=dtype,
                    device=args.device,
                )
                coalitions = sample_coalitions(
                    engine.n_players, args.coalitions, "kernel", np.random.default_rng(args.seed)
                )
                started = time.perf_counter()
                results[dtype] = engine.evaluate(coalitions), time.perf_counter() - started
            (exact, exact_s), (fast, fast_s) = results[None], results[torch.bfloat16]
            difference = np.abs(fast - exact)
            print(
                f"{name}, {value}: bf16 - fp32 max |diff| {difference.max():.2e}, mean {difference.mean():.2e} "
                f"(values {exact.min():.3f}..{exact.max():.3f}); time bf16/fp32 {fast_s / exact_s:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
