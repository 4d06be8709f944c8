"""Run ``shap.KernelExplainer`` on a game of ``Testing/helpers/games.py`` and print its Shapley values as JSON.

shap depends on a PyPI package named ``slicer`` that overwrites slicer-core's ``slicer``, so it never enters the
project's environment: this script runs in a separate one (``.venv-ref``, made by ``scripts/reference_env.sh``)
and the tests call it as a subprocess. Usage: ``python shap_reference.py GAME N_FEATURES GAME_SEED BUDGET SEED...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import shap

sys.path.insert(0, str(Path(__file__).parent))
from games import GAMES  # noqa: E402


def main(argv: list[str]) -> None:
    name, n_features, game_seed, budget, *seeds = argv
    game, _ = GAMES[name](int(n_features), int(game_seed))
    # With an all-zeros background and an all-ones input, shap's masked inputs are the coalitions themselves.
    explainer = shap.KernelExplainer(lambda x: game(x > 0.5), np.zeros((1, int(n_features))))
    results = []
    for seed in seeds:
        np.random.seed(int(seed))
        values = explainer.shap_values(np.ones((1, int(n_features))), nsamples=int(budget), l1_reg=False, silent=True)
        results.append(np.asarray(values).reshape(-1).tolist())
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
