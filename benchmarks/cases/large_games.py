"""Real models' games too large to enumerate (M = 30..60), with references from plain permutation sampling.

The accuracy suite's ``many_features`` family. Each game is a real segmentation model on the demo MRI explained
inside a 12^3 box that one sliding window alone covers (the box lies where no other window overlaps it, so the
blend there is that window's output and a coalition costs one window forward), over 30-60 SLIC supervoxels of that
window's input, with two targets (white and gray matter). ``2**M`` coalitions cannot be tabulated, so the game is
rebuilt and evaluated through the real :class:`segshap.PatchEngine` whenever the suite runs, and the estimators
are scored against a reference: the mean of many independent permutations of plain permutation sampling
(``benchmarks/references/permutation.py``), which shares no code with the estimators under test. Its standard
errors are kept with it, so the suite can say how much of a measured error is the reference's own.

The references are committed in ``benchmarks/results/games/many_features/``: one ``<name>.npz`` per game holding
``reference`` and ``reference_stderr`` (``(M, T)`` float64) and ``info`` (a JSON string: the spec, M, the feature
ids, the permutations, seconds, window forwards, ``v_empty`` and ``v_full``, the machine), plus ``index.json``.
:func:`load_games` reads them; :func:`live_game` rebuilds a game and checks that it has the committed features.

Rebuild the references (about 6 minutes per game on 2 idle CPU cores; run it in the background)::

    .venv/bin/python benchmarks/cases/large_games.py            # all games
    .venv/bin/python benchmarks/cases/large_games.py NAME ...   # only these
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, references
from common import DEMO_IMAGE  # noqa: E402
from references.permutation import permutation_shapley  # noqa: E402

from cases.real_games import GAMES_DIR, MODELS, ROOT, TARGETS, find_game, machine, spec_game  # noqa: E402

FAMILY = "many_features"
M_RANGE = (30, 60)
FOLDER = GAMES_DIR / FAMILY
INDEX = FOLDER / "index.json"
# The demo MRI's 32^3 windows (overlap 0.25) start at x 0, 24, 48, 67; y 0, 24, 48, 72, 85; z 0, 24, 48, 63. Only
# one window covers x in [32, 48) or [56, 67), y in [32, 48) or [56, 72), z in [32, 48): boxes there are one window's.
LEFT_BOX = ((34, 46), (58, 70), (34, 46))
RIGHT_BOX = ((56, 67), (58, 70), (34, 46))

GAMES: list[dict] = [
    {
        "name": "demo_gmwm-one_window_left",
        "model": "demo",
        "roi": LEFT_BOX,
        "n_features": 36,
        "value": "soft_dice",
        "permutations": 3000,
    },
    {
        "name": "gmwm_seed1-one_window_right-dice",
        "model": "seed1",
        "roi": RIGHT_BOX,
        "n_features": 45,
        "value": "dice",
        "permutations": 3000,
    },
]
SEED = 20261207
"""The permutations' seed (the estimators under test use seeds 0, 1, ...)."""


def _spec(name: str) -> dict:
    for spec in GAMES:
        if spec["name"] == name:
            return spec
    raise KeyError(f"Unknown large game {name!r}; known: {[s['name'] for s in GAMES]}")


def build(spec: dict, model, image, affine) -> dict:
    """Find the game (M in range), run the permutation reference, and describe both."""
    import segshap

    game, asked, tried = find_game(
        lambda n: spec_game(spec, n, model, image, affine), spec["n_features"], M_RANGE, spec["name"]
    )
    engine = game.engine
    m = game.n_players
    print(
        f"{spec['name']}: M = {m} ({asked} SLIC segments asked), {engine.stats['windows']} window(s); "
        f"{spec['permutations']} permutations...",
        file=sys.stderr,
        flush=True,
    )
    ends = np.asarray(engine.evaluate(np.array([np.zeros(m, bool), np.ones(m, bool)])), dtype=np.float64)
    before = engine.stats["patch_forwards"]
    started = time.perf_counter()
    reference, stderr = permutation_shapley(engine.evaluate, m, spec["permutations"], SEED)
    seconds = time.perf_counter() - started
    gap = reference.sum(axis=0) - (ends[1] - ends[0])
    if not np.allclose(gap, 0.0, atol=1e-9):  # every permutation's contributions sum to v(full) - v(empty)
        raise AssertionError(f"{spec['name']}: the reference misses efficiency by {gap}.")
    relative_se = np.linalg.norm(stderr, axis=0) / np.linalg.norm(reference, axis=0)
    info = {
        "family": FAMILY,
        **{key: spec[key] for key in ("model", "value", "permutations")},
        "model_file": str(MODELS[spec["model"]].relative_to(ROOT)),
        "image": str(DEMO_IMAGE.relative_to(ROOT)),
        "roi": [list(axis) for axis in spec["roi"]],
        "features": "slic",
        "n_features_asked": asked,
        "n_features_tried": {str(k): v for k, v in tried.items()},
        "M": m,
        "feature_ids": engine.feature_ids.tolist(),
        "baseline": "mean",
        "targets": list(TARGETS),
        "engine_windows": int(engine.stats["windows"]),
        "seed": SEED,
        "seconds": round(seconds, 1),
        "window_forwards": int(engine.stats["patch_forwards"] - before),
        "relative_se": relative_se.tolist(),
        "v_empty": ends[0].tolist(),
        "v_full": ends[1].tolist(),
        "machine": machine(),
        "segshap": segshap.__version__,
    }
    print(
        f"{spec['name']}: {seconds:.0f} s, {info['window_forwards']} window forwards, relative standard error "
        f"{np.round(relative_se, 4).tolist()}",
        file=sys.stderr,
        flush=True,
    )
    return {"name": spec["name"], "reference": reference, "reference_stderr": stderr, "info": info}


def write(game: dict) -> Path:
    FOLDER.mkdir(parents=True, exist_ok=True)
    path = FOLDER / f"{game['name']}.npz"
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        temporary,
        reference=game["reference"],
        reference_stderr=game["reference_stderr"],
        info=np.array(json.dumps(game["info"], sort_keys=True)),
    )
    temporary.replace(path)
    entries = [
        {"name": spec["name"], "file": f"{spec['name']}.npz"}
        for spec in GAMES
        if (FOLDER / f"{spec['name']}.npz").exists()
    ]
    INDEX.write_text(json.dumps({"format": "segshap-large-games/1", "games": entries}, indent=1) + "\n")
    return path


def load_games(folder: str | Path = FOLDER) -> list[dict]:
    """The committed references, in the order of ``index.json`` (none if there is no index): dicts with ``name``,
    ``family``, ``reference`` and ``reference_stderr`` ``(M, T)`` and ``info``."""
    index = Path(folder) / "index.json"
    if not index.exists():
        return []
    games = []
    for entry in json.loads(index.read_text())["games"]:
        with np.load(Path(folder) / entry["file"], allow_pickle=False) as data:
            games.append(
                {
                    "name": entry["name"],
                    "family": FAMILY,
                    "reference": data["reference"].astype(np.float64),
                    "reference_stderr": data["reference_stderr"].astype(np.float64),
                    "info": json.loads(str(data["info"])),
                }
            )
    return games


def live_game(entry: dict, model, image, affine):
    """The game of a committed reference, rebuilt; raises if its features are not the committed ones (then the
    reference belongs to another game: rebuild it) or its empty and full coalitions' values differ (another model)."""
    spec = {**_spec(entry["name"]), **{key: entry["info"][key] for key in ("roi", "value")}}
    game = spec_game(spec, entry["info"]["n_features_asked"], model, image, affine)
    rebuild = f"rebuild the reference with `.venv/bin/python benchmarks/cases/large_games.py {entry['name']}`"
    if game.engine.feature_ids.tolist() != entry["info"]["feature_ids"]:
        raise RuntimeError(
            f"{entry['name']}: the rebuilt game has other features than its committed reference (M = "
            f"{game.n_players}, not {entry['info']['M']}); {rebuild}."
        )
    m = game.n_players
    ends = np.asarray(game.engine.evaluate(np.array([np.zeros(m, bool), np.ones(m, bool)])), dtype=np.float64)
    if not np.allclose(ends, [entry["info"]["v_empty"], entry["info"]["v_full"]], rtol=1e-5, atol=1e-7):
        raise RuntimeError(
            f"{entry['name']}: the rebuilt game's values of the empty and full coalitions differ from the committed "
            f"reference's (the model or image changed?); {rebuild}."
        )
    return game


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Compute the large games' references (see the docstring).")
    parser.add_argument("names", nargs="*", help="only these games (default: all)")
    args = parser.parse_args(argv)
    for name in args.names:
        _spec(name)

    import torch

    import segshap
    from segshap.io import read_image

    torch.manual_seed(0)
    image, affine = read_image(DEMO_IMAGE)
    models = {}
    for spec in GAMES:
        if args.names and spec["name"] not in args.names:
            continue
        if spec["model"] not in models:
            models[spec["model"]] = segshap.load_model(MODELS[spec["model"]], device="cpu")
        path = write(build(spec, models[spec["model"]], image, affine))
        print(f"{spec['name']}: wrote {path.relative_to(ROOT)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
