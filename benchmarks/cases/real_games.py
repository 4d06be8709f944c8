"""Exactly enumerated games of real models: ground truth for the accuracy of Shapley estimators.

Each game is a real segmentation model on the demo MRI (``Resources/Demo/mni152_t1_2mm.nii.gz``), explained over
SLIC supervoxels inside a 3D box (ROI), with two targets (white matter and gray matter, both predicted inside the
ROI). The game is built with :func:`segshap.explanation_game` and every one of its ``2**M`` coalitions
(``M`` = 11..14 features that can change a value) is evaluated through the real :class:`segshap.PatchEngine`;
the exact Shapley values come from that table (:func:`segshap.estimator.shapley_from_enumeration`).

The games (:data:`GAMES`): the demo model (``Resources/Models/demo_gmwm.pt``) and the second trained model of the
faithfulness suite (``benchmarks/cases/models/gmwm_seed1.pt``, the same recipe with seed 1), on the demo ROI, on
boxes of the same size elsewhere in the brain and on a smaller box that gives more features; soft Dice inside the ROI
(one game with the mean probability instead); removed voxels become the image mean.

The tables are committed in ``benchmarks/results/games/``: one ``<name>.npz`` per game holding ``values``
(``(2**M, T)`` float64; row ``k`` is the coalition that keeps feature ``i`` iff bit ``i`` of ``k`` is set),
``exact`` (``(M, T)`` float64) and ``info`` (a JSON string: model, ROI, SLIC segments asked for, M, value,
targets, enumeration seconds, window forwards, engine windows, machine...), plus ``index.json`` listing them.
:func:`load_games` reads them; nothing is recomputed.

Rebuild them (about 5 minutes on 2 idle CPU cores, far longer when other processes share them: run it in the
background)::

    .venv/bin/python benchmarks/cases/real_games.py            # all games
    .venv/bin/python benchmarks/cases/real_games.py NAME ...   # only these (the others' files are kept)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common
from common import DEMO_IMAGE, DEMO_MODEL, DEMO_ROI  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GAMES_DIR = ROOT / "benchmarks" / "results" / "games"
INDEX = GAMES_DIR / "index.json"
MODELS = {
    "demo": DEMO_MODEL,
    "seed1": HERE / "models" / "gmwm_seed1.pt",
}
TARGETS = ("white_matter", "gray_matter")
M_RANGE = (11, 14)

INFERIOR_ROI = ((36, 56), (56, 76), (30, 50))  # the demo ROI moved 16 voxels (32 mm) down (the image is RAS)
LEFT_POSTERIOR_ROI = ((22, 42), (36, 56), (46, 66))  # 14 voxels to the left and 20 back
SMALL_ROI = ((34, 46), (54, 66), (44, 56))  # a 12^3 box inside the demo ROI's windows: more, smaller supervoxels
GAMES: list[dict] = [
    # name, model key, ROI (image voxels, half-open), SLIC segments to start the search from, value.
    # Features are built in the support of the windows that cover the ROI (whole 32^3 windows), so M jumps with
    # the segments asked for (on the 20^3 boxes: 11 or 12, then 15 to 25); the 12^3 box gives 14.
    {"name": "demo_gmwm-demo_roi", "model": "demo", "roi": DEMO_ROI, "n_features": 16, "value": "soft_dice"},
    {"name": "demo_gmwm-inferior", "model": "demo", "roi": INFERIOR_ROI, "n_features": 20, "value": "soft_dice"},
    {"name": "demo_gmwm-small_box", "model": "demo", "roi": SMALL_ROI, "n_features": 12, "value": "soft_dice"},
    {"name": "gmwm_seed1-demo_roi", "model": "seed1", "roi": DEMO_ROI, "n_features": 16, "value": "soft_dice"},
    {"name": "gmwm_seed1-small_box", "model": "seed1", "roi": SMALL_ROI, "n_features": 12, "value": "soft_dice"},
    {
        "name": "gmwm_seed1-left_posterior-mean_prob",
        "model": "seed1",
        "roi": LEFT_POSTERIOR_ROI,
        "n_features": 19,
        "value": "mean_prob",
    },
]


def coalition_table(m: int) -> np.ndarray:
    """All ``2**m`` coalitions; row ``k`` keeps feature ``i`` where bit ``i`` of ``k`` is set."""
    index = np.arange(2**m, dtype=np.int64)
    return ((index[:, None] >> np.arange(m)) & 1).astype(bool)


def load_games(folder: str | Path = GAMES_DIR) -> list[dict]:
    """The committed games, in the order of ``index.json``: dicts with ``name``, ``values`` ``(2**M, T)``,
    ``exact`` ``(M, T)`` (both float64) and ``info`` (how the game was made)."""
    folder = Path(folder)
    index = folder / "index.json"
    if not index.exists():
        raise FileNotFoundError(
            f"No game index at {index}; build the games with `.venv/bin/python benchmarks/cases/real_games.py`."
        )
    games = []
    for entry in json.loads(index.read_text())["games"]:
        with np.load(folder / entry["file"], allow_pickle=False) as data:
            values = data["values"].astype(np.float64)
            exact = data["exact"].astype(np.float64)
            info = json.loads(str(data["info"]))
        m = exact.shape[0]
        if values.shape != (2**m, exact.shape[1]):
            raise ValueError(f"{entry['file']}: values {values.shape} do not match exact {exact.shape}.")
        games.append({"name": entry["name"], "values": values, "exact": exact, "info": info})
    return games


# ---------------------------------------------------------------------------------------------- building


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _find_game(model, image, affine, spec: dict):
    """The game whose SLIC segment count, searched from ``spec['n_features']`` down then up, gives M in range."""
    import segshap

    low, high = M_RANGE
    start = spec["n_features"]
    tried = {}
    for n in list(range(start, 1, -1)) + list(range(start + 1, 4 * start)):
        game = segshap.explanation_game(
            model,
            image,
            target=list(TARGETS),
            roi=spec["roi"],
            features="slic",
            n_features=n,
            value=spec["value"],
            baseline="mean",
            device="cpu",
            affine=affine,
            **spec.get("engine", {}),
        )
        tried[n] = game.n_players
        if low <= game.n_players <= high:
            return game, n, tried
        if n < start and game.n_players < low:
            # Below the range going down: fewer segments will not help; search upward.
            break
    raise RuntimeError(f"{spec['name']}: no SLIC segment count gives M in {M_RANGE} (tried {tried}).")


def build(spec: dict, model, image, affine) -> dict:
    import segshap
    from segshap.estimator import shapley_from_enumeration

    game, asked, tried = _find_game(model, image, affine, spec)
    engine = game.engine
    m = game.n_players
    in_roi = [int((mask & game.roi).sum()) for mask in game.masks]
    if min(in_roi) == 0:
        raise RuntimeError(f"{spec['name']}: a target has no voxel in the ROI ({dict(zip(TARGETS, in_roi))}).")
    forwards_before = engine.stats["patch_forwards"]
    coalitions = coalition_table(m)
    _log(
        f"{spec['name']}: M = {m} ({asked} SLIC segments asked), {2**m} coalitions, "
        f"{engine.stats['windows']} windows; enumerating..."
    )
    started = time.perf_counter()
    values = np.asarray(engine.evaluate(coalitions), dtype=np.float64)
    seconds = time.perf_counter() - started
    exact = shapley_from_enumeration(coalitions, values)
    stats = engine.stats
    info = {
        "model": str(MODELS[spec["model"]].relative_to(ROOT)),
        "model_key": spec["model"],
        "image": str(DEMO_IMAGE.relative_to(ROOT)),
        "roi": [list(axis) for axis in spec["roi"]],
        "features": "slic",
        "n_features_asked": asked,
        "n_features_tried": {str(k): v for k, v in tried.items()},
        "M": m,
        "feature_ids": engine.feature_ids.tolist(),
        "value": spec["value"],
        "baseline": "mean",
        "targets": list(TARGETS),
        "target_voxels_in_roi": in_roi,
        "coalitions": 2**m,
        "enumeration_s": round(seconds, 2),
        # Window forwards run by the enumeration (not counting the engine's set-up: all-on and all-off states).
        "window_forwards": int(stats["patch_forwards"] - forwards_before),
        "engine_windows": int(stats["windows"]),
        "cache_hits": int(stats["cache_hits"]),
        "cache_evictions": int(stats["cache_evictions"]),
        "v_empty": values[0].tolist(),
        "v_full": values[-1].tolist(),
        "segshap": segshap.__version__,
    }
    _log(f"{spec['name']}: {seconds:.1f} s, {info['window_forwards']} window forwards")
    return {"name": spec["name"], "values": values, "exact": exact, "info": info}


def check(game: dict) -> dict:
    """Efficiency and non-degeneracy of one game: returns the numbers, raises if efficiency fails."""
    values, exact = game["values"], game["exact"]
    gap = exact.sum(axis=0) - (values[-1] - values[0])
    if not np.allclose(gap, 0.0, atol=1e-9):
        raise AssertionError(f"{game['name']}: efficiency fails by {gap}.")
    norm = np.linalg.norm(exact, axis=0)
    return {
        "efficiency_gap": float(np.abs(gap).max()),
        "phi_min": exact.min(axis=0).tolist(),
        "phi_max": exact.max(axis=0).tolist(),
        "phi_norm": norm.tolist(),
        # Spread of the values relative to their scale: 0 would mean every feature gets the same value.
        "relative_spread": (exact.std(axis=0) / np.abs(exact).mean(axis=0)).tolist(),
        "value_range": (values.max(axis=0) - values.min(axis=0)).tolist(),
    }


def _machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write(game: dict, folder: Path = GAMES_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{game['name']}.npz"
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        temporary, values=game["values"], exact=game["exact"], info=np.array(json.dumps(game["info"], sort_keys=True))
    )
    temporary.replace(path)
    return path


def write_index(folder: Path = GAMES_DIR) -> None:
    """``index.json``: the games of :data:`GAMES` whose file exists, in that order."""
    entries = []
    for spec in GAMES:
        path = folder / f"{spec['name']}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
            entries.append(
                {
                    "name": spec["name"],
                    "file": path.name,
                    "M": info["M"],
                    "targets": info["targets"],
                    "model": info["model"],
                    "roi": info["roi"],
                    "value": info["value"],
                    "enumeration_s": info["enumeration_s"],
                    "window_forwards": info["window_forwards"],
                }
            )
    INDEX.write_text(json.dumps({"format": "segshap-real-games/1", "games": entries}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    import torch

    import segshap
    from segshap.io import read_image

    names = sys.argv[1:] if argv is None else argv
    known = {spec["name"] for spec in GAMES}
    unknown = sorted(set(names) - known)
    if unknown:
        raise SystemExit(f"Unknown game(s) {unknown}; known: {sorted(known)}")
    torch.manual_seed(0)
    image, affine = read_image(DEMO_IMAGE)
    models = {}
    machine = _machine()
    for spec in GAMES:
        if names and spec["name"] not in names:
            continue
        if spec["model"] not in models:
            models[spec["model"]] = segshap.load_model(MODELS[spec["model"]], device="cpu")
        game = build(spec, models[spec["model"]], image, affine)
        game["info"]["machine"] = machine
        # Other processes may share the CPUs: the 1-minute load average after the enumeration puts the seconds
        # in context.
        game["info"]["load_average_1min"] = round(__import__("os").getloadavg()[0], 2)
        numbers = check(game)
        game["info"]["check"] = numbers
        path = write(game)
        write_index()
        _log(
            f"{spec['name']}: wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB); "
            f"phi range {numbers['phi_min']} .. {numbers['phi_max']}, efficiency gap {numbers['efficiency_gap']:.1e}"
        )
    total = sum(p.stat().st_size for p in GAMES_DIR.glob("*"))
    _log(f"games folder: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
