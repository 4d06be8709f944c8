"""Speed per explanation: naive KernelSHAP (shap, captum) over full-volume sliding-window inference, the paper's
ROI + all-on cache, and ours, on the same model and volume in one run.

Case: the engine benchmark's (``bench_engine.py``): the 1 mm MNI152 T1 in a 256 x 256 x 192 volume (quick mode:
a 192^3 crop around the target, 60 supervoxels), MONAI
``UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)`` with seeded weights, 64^3 windows, overlap 0.5,
Gaussian blending, soft Dice of a white-matter segment inside its ROI, baseline 0; features: 12 organs, or about
150 supervoxels. An explanation is ``budget`` coalitions.

* ours: ``segshap.kernel_shap`` driving ``PatchEngine.evaluate`` for the whole budget;
* roi_all_on (the paper's scheme): ``PatchEngine`` without its cache, one coalition at a time, on coalitions
  spread evenly over those ours drew; timed per coalition and extrapolated to the budget;
* shap: ``shap.KernelExplainer(l1_reg=False)`` (in ``.venv-ref``) asking this process for MONAI
  ``sliding_window_inference`` of each perturbed full volume; a few coalitions timed, then extrapolated;
* captum: ``captum.attr.KernelShap`` perturbing the full volume with a feature mask (voxels of no feature form
  one extra feature whose baseline is the image itself, so switching it changes nothing), batches of
  ``perturbations_per_eval`` volumes through ``sliding_window_inference``; a few coalitions timed, extrapolated.

The cost of a full-volume inference does not depend on the coalition, so shap's and captum's own coalitions time
the same work as ours; their values are checked against the engine's on the same coalitions.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from common import log, pyplot, reference_available, save_figure, shap_kernel_explainer, table
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

import segshap
from segshap.surrogate import adjacent_pairs
from suites.engine import (
    OVERLAP,
    PATCH,
    TARGET_CORNER,
    load_volume,
    naive_values,
    organs,
    supervoxels,
    white_matter_segment,
    window_features,
)

SETTINGS = {
    "quick": {
        "crop": 192,
        "budget": 160,
        "supervoxels": 60,
        "timed": 3,
        "roi_all_on": 16,
        "cache_gib": 8,
        "cases": ("organs", "supervoxels"),
    },
    # 4 GiB: the cache fills and evicts with 150 supervoxels, so the run shows memory staying near its budget.
    "full": {
        "crop": None,
        "budget": 512,
        "supervoxels": 150,
        "timed": 6,
        "roi_all_on": 64,
        "cache_gib": 4,
        "cases": ("organs", "supervoxels"),
        "swinunetr": True,
    },
}
BATCH_SIZE = 4
BASELINE = 0.0


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 20 ms), in GiB."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._running = _rss(), True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**30


def build_case(name: str, crop: int | None, n_supervoxels: int) -> dict:
    image, white, head = load_volume()
    corner = np.array(TARGET_CORNER)
    if crop:
        start = np.clip(corner + 20 - crop // 2, 0, np.array(image.shape) - crop)
        box = tuple(slice(s, s + crop) for s in start)
        image, white, head = image[box], white[box], head[box]
        corner = corner - start
    reference = white_matter_segment(white, tuple(int(c) for c in corner))
    features = organs(image.shape, corner + 20) if name == "organs" else supervoxels(head, n_supervoxels)
    torch.manual_seed(0)
    model = UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
    return {"image": image, "reference": reference, "features": features, "model": model}


def run_case(name: str, settings: dict) -> dict:
    case = build_case(name, settings["crop"], settings["supervoxels"])
    image, features, reference, model = case["image"], case["features"], case["reference"], case["model"]
    budget = settings["budget"]
    log(f"speed/{name}: volume {image.shape}, {features.max()} features in the volume")
    options = dict(
        reference=reference,
        value="soft_dice",
        patch_size=PATCH,
        overlap=OVERLAP,
        blend="gaussian",
        baseline=BASELINE,
        batch_size=BATCH_SIZE,
    )

    # Ours: the whole explanation.
    with PeakMemory() as memory:
        started = time.perf_counter()
        engine = segshap.PatchEngine(model, image, features, cache_bytes=int(settings["cache_gib"] * 2**30), **options)
        result = segshap.kernel_shap(
            engine.evaluate,
            engine.n_players,
            budget,
            seed=0,
            batch_size=64,
            forward_cost=engine.forward_cost,
            interactions=lambda: adjacent_pairs(features, engine.feature_ids),
        )
        ours_s = time.perf_counter() - started
    m, windows = engine.n_players, engine.tiling.n_windows
    outside = 1 - engine.stats["forward_seconds"] / ours_s
    rows = {
        "ours": {
            "s_per_coalition": ours_s / result.n_evaluations,
            "timed": result.n_evaluations,
            "explanation_s": ours_s,
            "forwards": engine.stats["patch_forwards"],
            "extrapolated": False,
            "peak_gib": memory.peak,
            "max_abs_diff": 0.0,
            "design": result.design,
            "outside_model": outside,
            "cache_evictions": engine.stats["cache_evictions"],
        }
    }
    log(
        f"speed/{name}: ours ({result.design}) {ours_s:.1f} s for {result.n_evaluations} coalitions of {m} "
        f"features, {engine.stats['patch_forwards']} window forwards, {outside:.0%} of the time outside the model"
    )
    chosen = result.coalitions

    # The paper's scheme, on coalitions spread evenly over those ours drew (the sampler's order is by size).
    k = min(settings["roi_all_on"], len(chosen))
    spread = np.unique(np.linspace(0, len(chosen) - 1, k).round().astype(int))
    k = len(spread)
    with PeakMemory() as memory:
        started = time.perf_counter()
        paper = segshap.PatchEngine(model, image, features, cache_bytes=0, **options)
        setup_s, setup_forwards = time.perf_counter() - started, paper.stats["patch_forwards"]
        paper_values = np.array([paper.evaluate(c[None])[0] for c in chosen[spread]])
        per = (time.perf_counter() - started - setup_s) / k
    # Its forwards over the whole budget are counted exactly, not extrapolated: a window runs again whenever some
    # but not all of its features are off (all on and all off reuse the set-up's outputs).
    columns = [
        np.flatnonzero(np.isin(engine.feature_ids, ids)) for ids in window_features(engine, image, features, BASELINE)
    ]
    reruns = sum(int((chosen[:, c].any(1) & ~chosen[:, c].all(1)).sum()) for c in columns if c.size)
    timed_reruns = paper.stats["patch_forwards"] - setup_forwards
    expected_timed = sum(
        int((chosen[spread][:, c].any(1) & ~chosen[spread][:, c].all(1)).sum()) for c in columns if c.size
    )
    if timed_reruns != expected_timed:
        raise RuntimeError(f"roi_all_on ran {timed_reruns} forwards where {expected_timed} were counted")
    rows["roi_all_on"] = {
        "s_per_coalition": per,
        "timed": k,
        "explanation_s": setup_s + per * len(chosen),
        "forwards": setup_forwards + reruns,
        "extrapolated": k < len(chosen),
        "peak_gib": memory.peak,
        "max_abs_diff": float(np.abs(paper_values - result.coalition_values[spread]).max()),
    }

    # shap over full-volume inference.
    if reference_available():
        with PeakMemory() as memory:
            _, coalitions, values, shap_s = shap_kernel_explainer(
                m,
                settings["timed"],
                0,
                lambda c: naive_values(model, image, features, reference, engine, c, BASELINE, BATCH_SIZE, "cpu"),
            )
        rows["shap"] = {
            "s_per_coalition": shap_s / len(coalitions),
            "timed": len(coalitions),
            "explanation_s": shap_s / len(coalitions) * len(chosen),
            "forwards": windows * len(chosen),
            "extrapolated": True,
            "peak_gib": memory.peak,
            "max_abs_diff": float(np.abs(values - engine.evaluate(coalitions)).max()),
        }

    # captum over full-volume inference.
    with PeakMemory() as memory:
        captum_coalitions, captum_values, captum_s = _captum_naive(
            model, image, features, reference, engine, settings["timed"]
        )
    rows["captum"] = {
        "s_per_coalition": captum_s / len(captum_coalitions),
        "timed": len(captum_coalitions),
        "explanation_s": captum_s / len(captum_coalitions) * len(chosen),
        "forwards": windows * len(chosen),
        "extrapolated": True,
        "peak_gib": memory.peak,
        "max_abs_diff": float(np.abs(captum_values - engine.evaluate(captum_coalitions)).max()),
    }
    for method, row in rows.items():
        row["vs_ours"] = row["explanation_s"] / rows["ours"]["explanation_s"]
        log(
            f"speed/{name}: {method}: {row['s_per_coalition']:.3f} s/coalition over {row['timed']}, "
            f"explanation {row['explanation_s']:.0f} s ({row['vs_ours']:.1f}x ours), max |diff| "
            f"{row['max_abs_diff']:.1e}"
        )
    return {
        "volume": list(image.shape),
        "features": m,
        "windows_total": windows,
        "windows_roi": engine.stats["windows"],
        "budget": len(chosen),
        "methods": rows,
    }


def _captum_naive(model, image, features, reference, engine, n_samples: int):
    """captum's KernelShap on the full volume; returns the coalitions it evaluated (over engine.feature_ids), their
    values and the wall time."""
    from captum.attr import KernelShap

    roi = torch.zeros(image.shape, dtype=torch.bool)
    roi[tuple(slice(a, b) for a, b in engine.roi_box)] = True
    target = torch.from_numpy(reference)[roi].double()
    mask = np.zeros(image.shape, np.int64)  # 0: voxels of no feature (a dummy feature: its baseline is the image)
    probes = []  # per feature, one voxel where the image differs from the baseline: tells whether it was kept
    for column, feature in enumerate(engine.feature_ids, start=1):
        inside = features == feature
        mask[inside] = column
        probes.append(np.flatnonzero(inside & (image != BASELINE))[0])
    x = torch.from_numpy(image)[None, None]
    baseline = torch.where(torch.from_numpy(mask == 0)[None, None], x, torch.tensor(BASELINE))
    evaluated: list[tuple[np.ndarray, float]] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = sliding_window_inference(batch, PATCH, BATCH_SIZE, model, overlap=OVERLAP, mode="gaussian")
        out = []
        for item, volume in zip(logits, batch):
            p = torch.softmax(item, 0)[1][roi].double()
            value = 2 * (p * target).sum() / (p.sum() + target.sum())
            kept = volume.reshape(-1)[probes].numpy() == image.reshape(-1)[probes]
            evaluated.append((kept, float(value)))
            out.append(value)
        return torch.stack(out)

    started = time.perf_counter()
    KernelShap(forward).attribute(
        x,
        baselines=baseline,
        feature_mask=torch.from_numpy(mask)[None, None],
        n_samples=n_samples,
        perturbations_per_eval=2,
    )
    seconds = time.perf_counter() - started
    return np.array([k for k, _ in evaluated]), np.array([v for _, v in evaluated]), seconds


SWIN = {"shape": (512, 512, 192), "patch": (96, 96, 96), "coalitions": 12, "roi_all_on": 2, "timed_windows": 4}
"""The SwinUNETR case: a CT-sized grid, MONAI ``SwinUNETR(feature_size=48)`` with 96^3 windows. On CPU its window
forward takes seconds, so ours runs only ``coalitions`` (the quick count), the paper's scheme ``roi_all_on`` of
them, and a full-volume inference is not run at all: its time is the windows' count times the measured forward."""


def run_swin_case() -> dict:
    from monai.networks.nets import SwinUNETR

    image, white, _ = load_volume()
    # The organs are laid out over the head (the engine benchmark's volume) before it is padded to the CT-sized
    # grid: laid out over the padded grid, all but the target's own would lie in the empty padding.
    head_organs = organs(image.shape, np.array(TARGET_CORNER) + 20)
    pad = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(image.shape, SWIN["shape"])]
    image, white, features = np.pad(image, pad), np.pad(white, pad), np.pad(head_organs, pad)
    corner = np.array(TARGET_CORNER) + [p[0] for p in pad]
    reference = white_matter_segment(white, tuple(int(c) for c in corner))
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=48, spatial_dims=3).eval()
    options = dict(
        reference=reference,
        value="soft_dice",
        patch_size=SWIN["patch"],
        overlap=OVERLAP,
        blend="gaussian",
        baseline=BASELINE,
        batch_size=2,
    )
    log(f"speed/swinunetr: volume {image.shape}, SwinUNETR feature_size 48, {SWIN['patch']} windows")

    with PeakMemory() as memory:
        started = time.perf_counter()
        engine = segshap.PatchEngine(model, image, features, **options)
        result = segshap.kernel_shap(engine.evaluate, engine.n_players, SWIN["coalitions"], seed=0, batch_size=64)
        ours_s = time.perf_counter() - started
    n = result.n_evaluations
    rows = {
        "ours": {
            "s_per_coalition": ours_s / n,
            "timed": n,
            "explanation_s": ours_s,
            "forwards": engine.stats["patch_forwards"],
            "extrapolated": False,
            "peak_gib": memory.peak,
            "max_abs_diff": 0.0,
            "cache_evictions": engine.stats["cache_evictions"],
        }
    }
    log(f"speed/swinunetr: ours {ours_s:.0f} s for {n} coalitions, {engine.stats['patch_forwards']} forwards")

    chosen = result.coalitions
    spread = np.unique(np.linspace(0, n - 1, SWIN["roi_all_on"]).round().astype(int))
    with PeakMemory() as memory:
        started = time.perf_counter()
        paper = segshap.PatchEngine(model, image, features, cache_bytes=0, **options)
        setup_s, setup_forwards = time.perf_counter() - started, paper.stats["patch_forwards"]
        paper_values = np.array([paper.evaluate(c[None])[0] for c in chosen[spread]])
        per = (time.perf_counter() - started - setup_s) / len(spread)
    columns = [
        np.flatnonzero(np.isin(engine.feature_ids, ids)) for ids in window_features(engine, image, features, BASELINE)
    ]
    reruns = sum(int((chosen[:, c].any(1) & ~chosen[:, c].all(1)).sum()) for c in columns if c.size)
    rows["roi_all_on"] = {
        "s_per_coalition": per,
        "timed": len(spread),
        "explanation_s": setup_s + per * n,
        "forwards": setup_forwards + reruns,
        "extrapolated": True,
        "peak_gib": memory.peak,
        "max_abs_diff": float(np.abs(paper_values - result.coalition_values[spread]).max()),
    }

    # A full-volume inference: every window once; timed on a few windows of the volume, not run.
    x = torch.from_numpy(image)[None, None]
    starts = engine.tiling.window_box(engine.windows[0])
    batch = torch.cat([x[(0, 0, *[slice(a, b) for a, b in starts])][None, None]] * SWIN["timed_windows"])
    with torch.inference_mode():
        started = time.perf_counter()
        model(batch)
        per_window = (time.perf_counter() - started) / SWIN["timed_windows"]
    windows = engine.tiling.n_windows
    for method in ("shap", "captum"):
        rows[method] = {
            "s_per_coalition": per_window * windows,
            "timed": 0,
            "explanation_s": per_window * windows * n,
            "forwards": windows * n,
            "extrapolated": True,
            "peak_gib": float("nan"),
            "max_abs_diff": float("nan"),
        }
    for row in rows.values():
        row["vs_ours"] = row["explanation_s"] / rows["ours"]["explanation_s"]
    return {
        "volume": list(image.shape),
        "features": engine.n_players,
        "windows_total": windows,
        "windows_roi": engine.stats["windows"],
        "budget": n,
        "methods": rows,
        "note": f"SwinUNETR: full-volume inference not run; {windows} windows × {per_window:.2f} s per window "
        f"(timed on {SWIN['timed_windows']}), per coalition, for shap and captum alike",
    }


CASES = ("organs", "supervoxels", "swinunetr")


def run(mode: str, cases: tuple[str, ...] = CASES) -> dict:
    """The speed suite in ``mode``: those of ``cases`` the mode includes (the SwinUNETR case only in full mode)."""
    settings = SETTINGS[mode]
    results = {name: run_case(name, settings) for name in settings["cases"] if name in cases}
    if settings.get("swinunetr") and "swinunetr" in cases:
        results["swinunetr"] = run_swin_case()
    return {"settings": {k: v for k, v in settings.items() if k != "cases"}, "cases": results}


LABELS = {
    "ours": "**ours** (PatchEngine)",
    "roi_all_on": "roi_all_on (paper)",
    "shap": "shap KernelExplainer",
    "captum": "captum KernelShap",
}


def _measured(value: float, form: str) -> str:
    """A measured quantity for the table, or "not run" where the method was only extrapolated (NaN)."""
    return "not run" if np.isnan(value) else form.format(value)


def markdown(result: dict, plot_path: str | None) -> str:
    text = [
        f"An explanation is a budget of {result['settings']['budget']} coalitions (or all 2^M when fewer; the "
        "chains walk whole chains, so ours may run fewer, and every method is then counted at ours' number); "
        "times are wall seconds. Rows marked ≈ timed that many coalitions and extrapolated linearly (a full-volume "
        "inference costs the same for every coalition; the paper's scheme was timed on coalitions spread over "
        "ours). Window "
        f"forwards per explanation: counted for ours (cache budget {result['settings']['cache_gib']} GiB) and, "
        "over every coalition of the budget, for the paper's scheme; all windows × budget for shap and captum. "
        "Max |Δ|: largest difference between the method's values and the engine's on the coalitions it ran. "
        "Peak: resident memory of the benchmark process while the method ran; the methods run in the order "
        "listed, in one process, which keeps memory it has freed, so after the first row a peak is only an "
        "upper bound of that method's own.",
    ]
    for name, case in result["cases"].items():
        note = f" {case['note']}." if case.get("note") else ""
        text += [
            "",
            f"**{name}**: volume {'×'.join(map(str, case['volume']))}, {case['features']} features can "
            f"change the value, {case['windows_roi']} of {case['windows_total']} windows touch the ROI; "
            f"{case['budget']} coalitions per explanation"
            f"{' (all of them: the values are exact)' if case['budget'] == 2 ** case['features'] else ''}."
            f"{note}",
            "",
        ]
        rows = []
        for method, row in case["methods"].items():
            approx = "≈ " if row["extrapolated"] else ""
            timed = f"({row['timed']})" if row["timed"] else "(from window forwards)"
            rows.append(
                [
                    LABELS[method],
                    f"{row['s_per_coalition']:.3f} {timed}",
                    f"{approx}{row['explanation_s']:.0f}",
                    f"{approx}{row['forwards']:.0f}",
                    f"{row['vs_ours']:.1f}×",
                    _measured(row["peak_gib"], "{:.2f} GiB"),
                    _measured(row["max_abs_diff"], "{:.1e}"),
                ]
            )
        text.append(
            table(
                ["method", "s / coalition (timed)", "s / explanation", "window forwards", "vs ours", "peak", "max |Δ|"],
                rows,
            )
        )
        ours = case["methods"]["ours"]
        if "outside_model" in ours:
            how = (
                "evaluated every coalition (exact)"
                if ours["design"] == "exact"
                else f'sampled with `design="{ours["design"]}"` (its cost function is the engine\'s, as in `explain`)'
            )
            text += ["", f"Ours {how} and spent {ours['outside_model']:.0%} of its time outside the model's forwards."]
    if plot_path:
        text += ["", f"![Seconds per explanation]({plot_path})"]
    return "\n".join(text)


def plot(result: dict, path) -> None:
    plt = pyplot()

    cases = list(result["cases"])
    methods = list(LABELS)
    figure, axes = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        heights = [result["cases"][c]["methods"].get(method, {}).get("explanation_s", np.nan) for c in cases]
        axes.bar(np.arange(len(cases)) + i * width, heights, width, label=LABELS[method].replace("*", ""))
    labels = [f"{c}\n({result['cases'][c]['budget']} coalitions)" for c in cases]
    axes.set_xticks(np.arange(len(cases)) + width * (len(methods) - 1) / 2, labels)
    axes.set_yscale("log")
    axes.set_ylabel("seconds per explanation")
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", which="both", alpha=0.3)
    save_figure(figure, path)
