"""Benchmark: evaluating KernelSHAP coalitions naively, with the paper's ROI + all-on cache, and with PatchEngine.

One run, the same coalitions for all three, on the 1 mm MNI152 T1 (shipped in nilearn's wheel) placed in a
256 x 256 x 192 volume, with MONAI ``UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)`` (seeded
weights), 64^3 windows, overlap 0.5, Gaussian blending, soft Dice on a white-matter segment of about 40^3 voxels.

* naive: build the perturbed volume and run MONAI ``sliding_window_inference`` on all of it, per coalition;
* roi_all_on: only windows whose output touches the ROI; a window none of whose features is off reuses its
  all-on output (the all-off output is kept too), everything else is run again for every coalition;
* engine: ``segshap.PatchEngine`` with its default cache.

Baselines are slow, so they run on the first ``--naive`` / ``--roi-all-on`` coalitions; per-coalition seconds are
compared, and their values are checked against the engine's on those coalitions. Usage::

    bash scripts/bench.sh --engine [--coalitions 256] [--naive 8] [--roi-all-on 64] [--device cuda]
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
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from scipy import ndimage

import segshap

SHAPE = (256, 256, 192)
TARGET_CORNER = (104, 104, 72)
PATCH = (64, 64, 64)
OVERLAP = 0.5


def load_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 T1 (z-scored in the head), its white-matter map, and the head mask, centred in SHAPE."""
    from nilearn.datasets import load_mni152_template, load_mni152_wm_template

    t1 = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    image = np.zeros(SHAPE, np.float32)
    white = np.zeros(SHAPE, np.float32)
    target = tuple(slice(max((s - t) // 2, 0), max((s - t) // 2, 0) + min(s, t)) for s, t in zip(SHAPE, t1.shape))
    source = tuple(slice(max((t - s) // 2, 0), max((t - s) // 2, 0) + min(s, t)) for s, t in zip(SHAPE, t1.shape))
    image[target] = t1[source]
    white[target] = wm[source]
    head = image > 0.05
    image[head] = (image[head] - image[head].mean()) / image[head].std()
    return image, white, head


def nearest_seed(mask: np.ndarray, seeds: np.ndarray, radius: float = np.inf) -> np.ndarray:
    """Label each voxel of ``mask`` within ``radius`` of a seed with its nearest seed (ids 1..N); 0 elsewhere."""
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    distance, nearest = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    labels = markers[tuple(nearest)]
    labels[~mask | (distance > radius)] = 0
    present = np.unique(labels[labels > 0])
    lookup = np.zeros(labels.max() + 1, np.int64)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def lattice(head: np.ndarray, n: int) -> np.ndarray:
    """About ``n`` seeds on a regular lattice over the head."""
    spacing = int(round((head.sum() / n) ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(spacing // 2, s, spacing) for s in head.shape], indexing="ij"), -1)
    seeds = grid.reshape(-1, 3)
    return seeds[head[tuple(seeds.T)]]


def _organ_seeds(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A 3 x 2 x 2 lattice of seeds over the volume, each moved by up to a fifth of its cell."""
    counts = (3, 2, 2)
    cell = np.array(shape) / np.array(counts)
    axes = [(np.arange(n) + 0.5) * c for n, c in zip(counts, cell)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    seeds = centres + np.random.default_rng(seed).uniform(-0.2, 0.2, centres.shape) * cell
    return np.clip(np.round(seeds), 0, np.array(shape) - 1).astype(int)


def organ_tiling(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """12 units of about 100^3 voxels tiling the whole volume: the Voronoi cells of the organ seeds."""
    return nearest_seed(np.ones(shape, bool), _organ_seeds(shape, seed))


def organs(shape: tuple[int, ...], target_centre: np.ndarray, seed: int = 0, radius: float = 40) -> np.ndarray:
    """12 compact organs with unlabelled tissue between them, as in an organ label map: the target's own organ,
    centred on the target, and 11 others on the organ seeds (the one nearest the target gives way to it); each
    organ is the voxels within ``radius`` of its seed that lie nearer to it than to any other seed."""
    seeds = _organ_seeds(shape, seed)
    seeds[np.argmin(np.linalg.norm(seeds - target_centre, axis=1))] = target_centre
    return nearest_seed(np.ones(shape, bool), seeds, radius)


def supervoxels(head: np.ndarray, n: int = 150) -> np.ndarray:
    """About ``n`` regular supervoxels: Voronoi cells of a regular lattice of seeds inside the head."""
    return nearest_seed(head, lattice(head, n))


def white_matter_segment(white: np.ndarray, corner: tuple[int, int, int]) -> np.ndarray:
    """White matter inside a 40^3 box at ``corner``: a real structure of about 40^3 voxels."""
    box = tuple(slice(c, c + 40) for c in corner)
    segment = np.zeros(white.shape, bool)
    segment[box] = white[box] > 0.5
    return segment


def window_features(engine, image, features, baseline) -> list[np.ndarray]:
    """For each window the engine runs, the ids of the features that change its input (worked out here)."""
    padded = engine.tiling.pad(features, 0)
    changed = engine.tiling.pad(image) != baseline
    out = []
    for w in engine.windows:
        box = tuple(slice(a, b) for a, b in engine.tiling.window_box(w))
        ids = np.unique(padded[box][changed[box]])
        out.append(ids[ids > 0])
    return out


def sample_coalitions(m: int, n: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct coalitions of ``m`` features.

    ``kernel``: as KernelSHAP draws them, the size from the Shapley kernel (``p(s) ∝ 1 / (s (m - s))``, sizes 1 to
    m - 1) and then a uniform subset of that size. ``uniform``: every feature on with probability 1/2.
    """
    sizes = np.arange(1, m)
    kernel = 1.0 / (sizes * (m - sizes))
    chosen: dict[bytes, np.ndarray] = {}
    while len(chosen) < min(n, 2**m - 2):
        if sampling == "kernel":
            row = np.zeros(m, bool)
            row[rng.choice(m, rng.choice(sizes, p=kernel / kernel.sum()), replace=False)] = True
        else:
            row = rng.random(m) < 0.5
        chosen.setdefault(np.packbits(row).tobytes(), row)
    return np.array(list(chosen.values()))


def perturb(image, features, feature_ids, coalition, baseline):
    off = np.isin(features, feature_ids[~coalition])
    return np.where(off, np.float32(baseline), image).astype(np.float32)


def naive_values(model, image, features, reference, engine, coalitions, baseline, batch_size, device, patch=PATCH):
    """Full-volume MONAI sliding-window inference per coalition (``patch``-sized windows), soft Dice on the
    engine's ROI."""
    roi = np.zeros(image.shape, bool)
    roi[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    values = []
    for coalition in coalitions:
        x = torch.from_numpy(perturb(image, features, engine.feature_ids, coalition, baseline))[None, None]
        with torch.inference_mode():
            logits = sliding_window_inference(x.to(device), patch, batch_size, model, overlap=OVERLAP, mode="gaussian")
        p = torch.softmax(logits, 1)[0, 1].cpu().numpy()[roi].astype(np.float64)
        r = reference[roi]
        values.append(2 * (p * r).sum() / (p.sum() + r.sum()))
    return np.array(values)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_feature_set(name, model, image, features, reference, coalitions, args) -> dict:
    print(f"\n== {name}: {features.max()} features in the volume", flush=True)
    options = dict(
        reference=reference,
        value="soft_dice",
        patch_size=PATCH,
        overlap=OVERLAP,
        blend="gaussian",
        baseline=args.baseline,
        batch_size=args.batch_size,
        device=args.device,
    )
    engine_options = dict(options, cache_bytes=int(args.cache_gib * 2**30))
    engine, setup = timed(lambda: segshap.PatchEngine(model, image, features, **engine_options))
    m = engine.n_players
    per_window = [ids.size for ids in window_features(engine, image, features, args.baseline)]
    print(
        f"   engine: {m} features can change the value, {engine.stats['windows']} of "
        f"{engine.tiling.n_windows} windows touch the ROI, {np.mean(per_window):.1f} features per window "
        f"(max {max(per_window)}); set-up {setup:.1f} s",
        flush=True,
    )
    chosen = coalitions(m)
    setup_forwards, setup_forward_s = engine.stats["patch_forwards"], engine.stats["forward_seconds"]
    values, evaluate = timed(lambda: engine.evaluate(chosen))
    stats = engine.stats
    columns = [
        np.flatnonzero(np.isin(engine.feature_ids, ids))
        for ids in window_features(engine, image, features, args.baseline)
    ]
    extremes = np.array([np.ones(m, bool), np.zeros(m, bool)])
    distinct = len({(i, tuple(row[c])) for i, c in enumerate(columns) for row in np.concatenate([extremes, chosen])})
    engine_total = setup + evaluate
    result = {
        "features": m,
        "features_per_window_mean": float(np.mean(per_window)),
        "features_per_window_max": max(per_window),
        "windows_run": stats["windows"],
        "windows_total": engine.tiling.n_windows,
        "coalitions": len(chosen),
        "engine_s_per_coalition": engine_total / len(chosen),
        "engine_setup_s": setup,
        "engine_evaluate_s": evaluate,
        "engine_patch_forwards": stats["patch_forwards"],
        "distinct_keys": distinct,
        "engine_forward_s": stats["forward_seconds"],
        "engine_outside_model_share": 1 - stats["forward_seconds"] / stats["total_seconds"],
        "engine_setup_forwards": setup_forwards,
        "engine_setup_forward_s": setup_forward_s,
        "cache_hits": stats["cache_hits"],
        "cache_bytes": stats["cache_bytes"],
        "cache_evictions": stats["cache_evictions"],
    }
    print(
        f"   engine: {result['engine_s_per_coalition']:.3f} s/coalition, {stats['patch_forwards']} forwards "
        f"({distinct} distinct keys, {stats['cache_evictions']} evictions, "
        f"{stats['cache_bytes'] / 2**30:.1f} GiB cached), "
        f"{100 * result['engine_outside_model_share']:.1f}% outside the model",
        flush=True,
    )

    # The paper's scheme: ROI windows, all-on (and all-off) outputs reused, nothing else remembered.
    k = min(args.roi_all_on, len(chosen))
    paper = segshap.PatchEngine(model, image, features, cache_bytes=0, **options)
    paper_values = []
    _, paper_eval = timed(lambda: paper_values.extend(paper.evaluate(c[None])[0] for c in chosen[:k]))
    result.update(
        {
            # Its set-up (all-on and all-off outputs of the ROI windows) is the engine's, amortised the same way.
            "roi_all_on_coalitions": k,
            "roi_all_on_s_per_coalition": setup / len(chosen) + paper_eval / k,
            "roi_all_on_forwards_per_coalition": (paper.stats["patch_forwards"] - setup_forwards) / k,
            "roi_all_on_max_abs_diff": float(np.abs(np.array(paper_values) - values[:k]).max()),
        }
    )
    print(
        f"   roi_all_on: {result['roi_all_on_s_per_coalition']:.3f} s/coalition over {k} coalitions, "
        f"{result['roi_all_on_forwards_per_coalition']:.1f} forwards/coalition, max |diff| "
        f"{result['roi_all_on_max_abs_diff']:.1e}",
        flush=True,
    )

    k = min(args.naive, len(chosen))
    naive, naive_s = timed(
        lambda: naive_values(
            model, image, features, reference, engine, chosen[:k], args.baseline, args.batch_size, args.device
        )
    )
    result.update(
        {
            "naive_coalitions": k,
            "naive_s_per_coalition": naive_s / k,
            "naive_forwards_per_coalition": engine.tiling.n_windows,
            "naive_max_abs_diff": float(np.abs(naive - values[:k]).max()),
        }
    )
    result["speedup_vs_naive"] = result["naive_s_per_coalition"] / result["engine_s_per_coalition"]
    result["speedup_vs_roi_all_on"] = result["roi_all_on_s_per_coalition"] / result["engine_s_per_coalition"]
    print(
        f"   naive: {result['naive_s_per_coalition']:.2f} s/coalition over {k} coalitions, max |diff| "
        f"{result['naive_max_abs_diff']:.1e}",
        flush=True,
    )
    print(
        f"   speed-up: {result['speedup_vs_naive']:.1f}x vs naive, "
        f"{result['speedup_vs_roi_all_on']:.1f}x vs roi_all_on",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coalitions", type=int, default=256)
    parser.add_argument("--naive", type=int, default=8, help="coalitions run by the naive baseline")
    parser.add_argument("--roi-all-on", type=int, default=64, help="coalitions run by the paper's scheme")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=0.0)
    parser.add_argument("--cache-gib", type=float, default=8.0, help="the engine's cache budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampling",
        choices=("kernel", "uniform"),
        default="kernel",
        help="how coalitions are drawn: as KernelSHAP does (default) or each feature on with p=1/2",
    )
    parser.add_argument(
        "--shift",
        type=int,
        default=0,
        help="move the target by this many voxels along every axis (0: its ROI touches 3 windows "
        "per axis; 16: 4 per axis, the most a 56-voxel ROI can touch)",
    )
    parser.add_argument(
        "--features",
        nargs="+",
        choices=("organs", "organ-tiling", "supervoxels"),
        default=["organs", "organ-tiling", "supervoxels"],
        help="the feature sets to run",
    )
    parser.add_argument("--device", default="cpu", help="where the model runs, for all three (cpu, cuda)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    print(f"machine: {machine_line(machine())}")
    print(f"settings: {vars(args)}")
    image, white, head = load_volume()
    reference = white_matter_segment(white, tuple(c + args.shift for c in TARGET_CORNER))
    print(
        f"volume {image.shape}, target segment of {reference.sum()} voxels "
        f"(bounding box {[int(s.stop - s.start) for s in ndimage.find_objects(reference.astype(int))[0]]})"
    )
    torch.manual_seed(args.seed)
    model = UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval().to(args.device)

    def coalitions(m: int) -> np.ndarray:
        return sample_coalitions(m, args.coalitions, args.sampling, np.random.default_rng(args.seed + m))

    centre = np.array([c + args.shift + 20 for c in TARGET_CORNER])
    feature_sets = {
        "organs": ("12 organs with unlabelled tissue between them", lambda: organs(image.shape, centre, args.seed)),
        "organ-tiling": ("12 organ-like units tiling the volume", lambda: organ_tiling(image.shape, args.seed)),
        "supervoxels": ("about 150 supervoxels", lambda: supervoxels(head)),
    }
    results = {"machine": machine(), "settings": vars(args)}
    for key in args.features:
        name, build = feature_sets[key]
        results[key] = run_feature_set(name, model, image, build(), reference, coalitions, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
