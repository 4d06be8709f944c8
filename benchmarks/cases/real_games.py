"""Exactly enumerated games of real models: ground truth for the accuracy of Shapley estimators.

Each game is a real segmentation model on the demo MRI (``Resources/Demo/mni152_t1_2mm.nii.gz``), explained over
features inside the windows that cover a 3D box (ROI), with two targets (white matter and gray matter, both present
inside the ROI). The game is built with :func:`segshap.explanation_game` and every one of its ``2**M`` coalitions
(``M`` = 11..14 features that can change a value) is evaluated through the real :class:`segshap.PatchEngine`;
the exact Shapley values come from that table (:func:`segshap.estimator.shapley_from_enumeration`). Removed voxels
become the image mean.

The games (:data:`GAMES`) come in families, so that an estimator is scored on games it was not tuned on:

``near_additive``
    The demo model (``Resources/Models/demo_gmwm.pt``) and the second trained model of the faithfulness suite
    (``benchmarks/cases/models/gmwm_seed1.pt``, the same recipe with seed 1), on the demo ROI, on boxes of the
    same size elsewhere in the brain and on a smaller box that gives more features; SLIC supervoxels; soft Dice
    inside the ROI (one game with the mean probability instead). Smooth values: the games are close to additive.
``thresholded``
    The same models and ROIs with hard values: ``dice`` (of the argmax prediction) and ``fp`` (false positives:
    voxels of the ROI predicted as the target outside the reference, over the ROI's voxels). The reference is the
    model's own unperturbed prediction, so ``fp`` is 0 for the full coalition; on these ROIs it is 0 for the empty
    one too (the mean image predicts neither class) and positive in between. The argmax makes values piecewise
    constant: strong interactions.
``border``
    Small targets at a border between sliding windows: the reference is the model's prediction cut to a ball of
    a few voxels centred on a corner where windows start or end (both classes, outside the ball background), the
    ROI a small box around it that several windows blend, and the features regular supervoxels (``grid`` or
    ``fcc``) that ignore anatomy and cut across the target's boundary: coarse ones in the windows' support (the
    target falls mostly in one cell), or small ones only in a box around the corner (several cells cut it).
``unseen_model``
    A model the estimator was not tuned on (``benchmarks/cases/models/segresnet_csf_gmwm.pt``, see
    ``train_unseen.py`` beside it): a MONAI SegResNet at 1.5 mm with four classes (CSF added); the engine resamples
    the 2 mm demo MRI onto its grid. SLIC supervoxels, soft and hard Dice.

The tables are committed in ``benchmarks/results/games/``: one ``<name>.npz`` per game holding ``values``
(``(2**M, T)`` float64; row ``k`` is the coalition that keeps feature ``i`` iff bit ``i`` of ``k`` is set),
``exact`` (``(M, T)`` float64) and ``info`` (a JSON string: family, model, ROI, features and how many were asked
for, reference, M, value, targets, enumeration seconds, window forwards, engine windows, machine...), plus
``index.json`` listing them with their family. :func:`load_games` reads them; nothing is recomputed. (The six
``near_additive`` files were made before families existed, their ``info`` has no ``family``, the index gives it;
and before features were confined to the image's foreground (``foreground="auto"``), so rebuilding them now gives
other features and another M.)

Rebuild them (a few minutes per family on 2 idle CPU cores, far longer when other processes share them: run it in
the background)::

    .venv/bin/python benchmarks/cases/real_games.py                      # all games
    .venv/bin/python benchmarks/cases/real_games.py NAME ...             # only these (the others' files are kept)
    .venv/bin/python benchmarks/cases/real_games.py --family border      # only one family
    .venv/bin/python benchmarks/cases/real_games.py --index              # only rewrite index.json from the files
"""

from __future__ import annotations

import json
import os
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
    "segresnet": HERE / "models" / "segresnet_csf_gmwm.pt",
}
TARGETS = ("white_matter", "gray_matter")
M_RANGE = (11, 14)
FAMILIES = ("near_additive", "thresholded", "border", "unseen_model")
DEFAULT_FAMILY = "near_additive"
"""The family of a game whose file and index entry say none (those made before families existed)."""

INFERIOR_ROI = ((36, 56), (56, 76), (30, 50))  # the demo ROI moved 16 voxels (32 mm) down (the image is RAS)
LEFT_POSTERIOR_ROI = ((22, 42), (36, 56), (46, 66))  # 14 voxels to the left and 20 back
SMALL_ROI = ((34, 46), (54, 66), (44, 56))  # a 12^3 box inside the demo ROI's windows: more, smaller supervoxels
LEFT_POSTERIOR_SMALL_ROI = ((26, 38), (40, 52), (50, 62))  # a 12^3 box inside the left posterior one
# The demo MRI (99 x 117 x 95 voxels at 2 mm) is tiled by 32^3 windows with overlap 0.25: they start at
# x 0, 24, 48, 67; y 0, 24, 48, 72, 85; z 0, 24, 48, 63 (and end 32 voxels later). Corners where windows start or
# end, with about as much predicted white as gray matter within 4 voxels (demo model):
BORDER_A = (32, 72, 63)  # x: the first window ends; y, z: windows start
BORDER_B = (67, 48, 56)  # x: the last window starts (it ends at the image's edge); y: windows start; z: end


def _box(centre: tuple[int, int, int], half: int) -> tuple[tuple[int, int], ...]:
    return tuple((c - half, c + half) for c in centre)


def _ball(centre: tuple[int, int, int], radius: int) -> dict:
    """A border game's reference: the model's prediction cut to this ball (image voxels)."""
    return {"kind": "prediction_in_ball", "centre": list(centre), "radius": radius}


GAMES: list[dict] = [
    # name, family, model key, ROI (image voxels, half-open), features (default SLIC) and how many to start the
    # search from, value; optionally the reference (default: the model's prediction).
    # Features are built in the support of the windows that cover the ROI (whole 32^3 windows), so M jumps with
    # the segments asked for (on the 20^3 boxes: 11 or 12, then 15 to 25); the 12^3 box gives 14.
    {
        "family": "near_additive",
        "name": "demo_gmwm-demo_roi",
        "model": "demo",
        "roi": DEMO_ROI,
        "n_features": 16,
        "value": "soft_dice",
    },
    {
        "family": "near_additive",
        "name": "demo_gmwm-inferior",
        "model": "demo",
        "roi": INFERIOR_ROI,
        "n_features": 20,
        "value": "soft_dice",
    },
    {
        "family": "near_additive",
        "name": "demo_gmwm-small_box",
        "model": "demo",
        "roi": SMALL_ROI,
        "n_features": 12,
        "value": "soft_dice",
    },
    {
        "family": "near_additive",
        "name": "gmwm_seed1-demo_roi",
        "model": "seed1",
        "roi": DEMO_ROI,
        "n_features": 16,
        "value": "soft_dice",
    },
    {
        "family": "near_additive",
        "name": "gmwm_seed1-small_box",
        "model": "seed1",
        "roi": SMALL_ROI,
        "n_features": 12,
        "value": "soft_dice",
    },
    {
        "family": "near_additive",
        "name": "gmwm_seed1-left_posterior-mean_prob",
        "model": "seed1",
        "roi": LEFT_POSTERIOR_ROI,
        "n_features": 19,
        "value": "mean_prob",
    },
    # Thresholded: hard Dice and false positives of the argmax prediction, same models and boxes.
    {
        "family": "thresholded",
        "name": "demo_gmwm-demo_roi-dice",
        "model": "demo",
        "roi": DEMO_ROI,
        "n_features": 16,
        "value": "dice",
    },
    {
        "family": "thresholded",
        "name": "demo_gmwm-small_box-dice",
        "model": "demo",
        "roi": SMALL_ROI,
        "n_features": 12,
        "value": "dice",
    },
    {
        "family": "thresholded",
        "name": "gmwm_seed1-demo_roi-fp",
        "model": "seed1",
        "roi": DEMO_ROI,
        "n_features": 12,
        "value": "fp",
    },
    {
        "family": "thresholded",
        "name": "gmwm_seed1-inferior-fp",
        "model": "seed1",
        "roi": INFERIOR_ROI,
        "n_features": 14,
        "value": "fp",
    },
    # Border: a ball of radius 4 of the prediction at a corner of windows, a 10^3 box around it, regular features
    # (cells about 23 voxels wide in the windows' support: the target falls mostly in one).
    {
        "family": "border",
        "name": "demo_gmwm-border_a-grid",
        "model": "demo",
        "roi": _box(BORDER_A, 5),
        "reference": _ball(BORDER_A, 4),
        "features": "grid",
        "n_features": 12,
        "value": "soft_dice",
    },
    {
        "family": "border",
        "name": "demo_gmwm-border_a-fcc-dice",
        "model": "demo",
        "roi": _box(BORDER_A, 5),
        "reference": _ball(BORDER_A, 4),
        "features": "fcc",
        "n_features": 4,
        "value": "dice",
    },
    # The same, with features only in a 12^3 box around the corner (the image's foreground elsewhere is left
    # alone): small cells, several of which cut the target (8 of the grid's, 5 of the lattice's).
    {
        "family": "border",
        "name": "gmwm_seed1-border_b-fine_grid",
        "model": "seed1",
        "roi": _box(BORDER_B, 5),
        "reference": _ball(BORDER_B, 4),
        "features": "grid",
        "feature_box": _box(BORDER_B, 6),
        "n_features": 400,
        "value": "soft_dice",
    },
    {
        "family": "border",
        "name": "demo_gmwm-border_b-fine_fcc-dice",
        "model": "demo",
        "roi": _box(BORDER_B, 5),
        "reference": _ball(BORDER_B, 4),
        "features": "fcc",
        "feature_box": _box(BORDER_B, 6),
        "n_features": 200,
        "value": "dice",
    },
    # Unseen model: SegResNet at 1.5 mm, four classes; the ROIs are in the demo MRI's voxels (2 mm). Its windows
    # cost about 6 times the demo UNet's, so small boxes (8 windows of its grid each).
    {
        "family": "unseen_model",
        "name": "segresnet-small_box",
        "model": "segresnet",
        "roi": SMALL_ROI,
        "n_features": 12,
        "value": "soft_dice",
    },
    {
        "family": "unseen_model",
        "name": "segresnet-small_box-dice",
        "model": "segresnet",
        "roi": SMALL_ROI,
        "n_features": 12,
        "value": "dice",
    },
    {
        "family": "unseen_model",
        "name": "segresnet-left_posterior_small",
        "model": "segresnet",
        "roi": LEFT_POSTERIOR_SMALL_ROI,
        "n_features": 12,
        "value": "soft_dice",
    },
]
for _spec in GAMES:
    assert _spec["family"] in FAMILIES, _spec["name"]


def coalition_table(m: int) -> np.ndarray:
    """All ``2**m`` coalitions; row ``k`` keeps feature ``i`` where bit ``i`` of ``k`` is set."""
    index = np.arange(2**m, dtype=np.int64)
    return ((index[:, None] >> np.arange(m)) & 1).astype(bool)


def load_games(folder: str | Path = GAMES_DIR) -> list[dict]:
    """The committed games, in the order of ``index.json``: dicts with ``name``, ``family`` (one of
    :data:`FAMILIES`), ``values`` ``(2**M, T)``, ``exact`` ``(M, T)`` (both float64) and ``info`` (how the game was
    made)."""
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
        family = entry.get("family") or info.get("family") or DEFAULT_FAMILY
        games.append({"name": entry["name"], "family": family, "values": values, "exact": exact, "info": info})
    return games


# ---------------------------------------------------------------------------------------------- building


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reference(spec: dict, model, image, affine) -> np.ndarray | None:
    """The reference segmentation a spec asks for, on the image's grid (``None``: the model's prediction)."""
    recipe = spec.get("reference")
    if recipe is None:
        return None
    import segshap

    if recipe["kind"] != "prediction_in_ball":
        raise ValueError(f"{spec['name']}: unknown reference {recipe!r}.")
    labels = np.asarray(segshap.predict(model, image, device="cpu", affine=affine))
    grid = np.indices(labels.shape)
    centre = np.asarray(recipe["centre"]).reshape(3, 1, 1, 1)
    ball = ((grid - centre) ** 2).sum(axis=0) <= recipe["radius"] ** 2
    return np.where(ball, labels, 0).astype(labels.dtype)


def _box_mask(box, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in box)] = True
    return mask


def find_game(make, start: int, m_range: tuple[int, int], name: str):
    """The game ``make(n)`` whose feature count ``n``, searched from ``start`` down then up, gives M in
    ``m_range``; returns it, that ``n`` and every M tried."""
    low, high = m_range
    tried = {}
    for candidates in (range(start, 1, -1), range(start + 1, 4 * start)):
        for n in candidates:
            game = make(n)
            tried[n] = game.n_players
            if low <= game.n_players <= high:
                return game, n, tried
            if n <= start and game.n_players < low:
                break  # below the range going down: fewer features will not help; search upward
            if n > start and game.n_players > high:
                break  # above the range going up
    raise RuntimeError(f"{name}: no feature count gives M in {m_range} (tried {tried}).")


def spec_game(spec: dict, n_features: int, model, image, affine, reference: np.ndarray | None = None):
    """The game a spec describes (model, ROI, features and their optional box, value) with ``n_features`` asked:
    both targets, the image mean as baseline, on the CPU."""
    import segshap

    return segshap.explanation_game(
        model,
        image,
        target=list(TARGETS),
        reference=reference,
        **({"foreground": _box_mask(spec["feature_box"], image.shape)} if "feature_box" in spec else {}),
        roi=spec["roi"],
        features=spec.get("features", "slic"),
        n_features=n_features,
        value=spec["value"],
        baseline="mean",
        device="cpu",
        affine=affine,
        **spec.get("engine", {}),
    )


def build(spec: dict, model, image, affine) -> dict:
    import segshap
    from segshap.estimator import shapley_from_enumeration

    reference = _reference(spec, model, image, affine)
    game, asked, tried = find_game(
        lambda n: spec_game(spec, n, model, image, affine, reference), spec["n_features"], M_RANGE, spec["name"]
    )
    engine = game.engine
    m = game.n_players
    in_roi = [int((mask & game.roi).sum()) for mask in game.masks]
    if min(in_roi) == 0:
        raise RuntimeError(f"{spec['name']}: a target has no voxel in the ROI ({dict(zip(TARGETS, in_roi))}).")
    forwards_before = engine.stats["patch_forwards"]
    coalitions = coalition_table(m)
    _log(
        f"{spec['name']} ({spec['family']}): M = {m} ({asked} {spec.get('features', 'slic')} features asked), "
        f"{2**m} coalitions, "
        f"{engine.stats['windows']} windows; enumerating..."
    )
    started = time.perf_counter()
    values = np.asarray(engine.evaluate(coalitions), dtype=np.float64)
    seconds = time.perf_counter() - started
    exact = shapley_from_enumeration(coalitions, values)
    stats = engine.stats
    info = {
        "family": spec["family"],
        "model": str(MODELS[spec["model"]].relative_to(ROOT)),
        "model_key": spec["model"],
        "image": str(DEMO_IMAGE.relative_to(ROOT)),
        "roi": [list(axis) for axis in spec["roi"]],
        "features": spec.get("features", "slic"),
        # Features only inside this box (image voxels, half-open; passed as the foreground); else the image's own.
        "feature_box": [list(axis) for axis in spec["feature_box"]] if "feature_box" in spec else None,
        "n_features_asked": asked,
        "n_features_tried": {str(k): v for k, v in tried.items()},
        "M": m,
        "feature_ids": engine.feature_ids.tolist(),
        "value": spec["value"],
        "baseline": "mean",
        "reference": _describe_reference(spec),
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


def _describe_reference(spec: dict) -> str:
    recipe = spec.get("reference")
    if recipe is None:
        text = "the model's own prediction of the unperturbed image"
        if spec["value"] == "fp":
            text += " (fp: voxels predicted as the target outside it, over the ROI's voxels; 0 for the full coalition)"
        return text
    return (
        f"the model's prediction of the unperturbed image inside a ball of radius {recipe['radius']} image voxels "
        f"centred on voxel {recipe['centre']} (background elsewhere)"
    )


def check(game: dict) -> dict:
    """Efficiency and non-degeneracy of one game: returns the numbers, raises if efficiency fails or a target's
    exact values are all about 0 (a value that never changes, e.g. a hard value piecewise constant over the
    coalitions)."""
    values, exact = game["values"], game["exact"]
    gap = exact.sum(axis=0) - (values[-1] - values[0])
    if not np.allclose(gap, 0.0, atol=1e-9):
        raise AssertionError(f"{game['name']}: efficiency fails by {gap}.")
    scale = np.abs(values).max(axis=0)
    flat = np.abs(exact).max(axis=0) <= 1e-6 * np.maximum(scale, 1e-12)
    if flat.any():
        raise AssertionError(f"{game['name']}: the exact values of target(s) {np.flatnonzero(flat)} are all ~0.")
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


def machine() -> dict:
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
    """``index.json``: the games of :data:`GAMES` whose file exists, in that order, each with its family (the
    spec's; a file's own ``info`` says it too, except for the games made before families existed)."""
    entries = []
    for spec in GAMES:
        path = folder / f"{spec['name']}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
            entries.append(
                {
                    "name": spec["name"],
                    "family": info.get("family", spec["family"]),
                    "file": path.name,
                    "M": info["M"],
                    "targets": info["targets"],
                    "model": info["model"],
                    "roi": info["roi"],
                    "features": info.get("features", "slic"),
                    "value": info["value"],
                    "enumeration_s": info["enumeration_s"],
                    "window_forwards": info["window_forwards"],
                }
            )
    (folder / INDEX.name).write_text(json.dumps({"format": "segshap-real-games/1", "games": entries}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Enumerate the real games (see the module's docstring).")
    parser.add_argument("names", nargs="*", help="only these games (default: all, or those of --family)")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only the games of this family")
    parser.add_argument("--index", action="store_true", help="only rewrite index.json from the files present")
    args = parser.parse_args(argv)
    if args.index:
        write_index()
        return

    import torch

    import segshap
    from segshap.io import read_image

    known = {spec["name"] for spec in GAMES}
    unknown = sorted(set(args.names) - known)
    if unknown:
        raise SystemExit(f"Unknown game(s) {unknown}; known: {sorted(known)}")
    chosen = [
        spec
        for spec in GAMES
        if (not args.names or spec["name"] in args.names) and (not args.family or spec["family"] in args.family)
    ]
    torch.manual_seed(0)
    image, affine = read_image(DEMO_IMAGE)
    models = {}
    machine_record = machine()
    failed = []
    for spec in chosen:
        if spec["model"] not in models:
            models[spec["model"]] = segshap.load_model(MODELS[spec["model"]], device="cpu")
        try:
            game = build(spec, models[spec["model"]], image, affine)
            # Other processes may share the CPUs: the 1-minute load average after the enumeration puts the
            # seconds in context.
            game["info"]["load_average_1min"] = round(os.getloadavg()[0], 2)
            numbers = check(game)
        except (RuntimeError, AssertionError) as error:  # no M in range, or a degenerate game: not written
            _log(f"{spec['name']}: FAILED, not written: {error}")
            failed.append(spec["name"])
            continue
        game["info"]["machine"] = machine_record
        game["info"]["check"] = numbers
        path = write(game)
        write_index()
        _log(
            f"{spec['name']}: wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB); "
            f"M = {game['info']['M']}, value range {numbers['value_range']}, phi range {numbers['phi_min']} .. "
            f"{numbers['phi_max']}, relative spread {numbers['relative_spread']}, "
            f"efficiency gap {numbers['efficiency_gap']:.1e}"
        )
    total = sum(p.stat().st_size for p in GAMES_DIR.glob("*"))
    _log(f"games folder: {total / 1024:.0f} KiB")
    if failed:
        raise SystemExit(f"{len(failed)} game(s) failed: {failed}")


if __name__ == "__main__":
    main()
