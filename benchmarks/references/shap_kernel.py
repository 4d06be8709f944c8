"""``shap.KernelExplainer(l1_reg=False)`` on a game given as the table of all its coalition values.

Runs in the shap environment (``.venv-ref``), started by ``benchmarks/common.run_reference``: argument 1 is a
folder with ``payload.json`` (``budgets``, ``seeds``) and ``arrays.npz`` (``table``: the value of every coalition,
indexed by the coalition's bits, feature i = bit i). Prints ``{"estimates": {budget: [values per seed]},
"evaluations": {budget: [coalitions the explainer evaluated, per seed]}}``. Without a table the game lives in the
process that started this one: ``payload.json`` gives ``players`` (M), the values (of every target: then each
estimate is ``(M, T)``, flattened) are asked for with ``remote.py``'s protocol and the answer is its last line.
"""

from __future__ import annotations

import sys

import numpy as np
import shap
from remote import open_game


def main(folder: str) -> None:
    source = open_game(folder)
    payload, m = source.payload, source.n_players
    evaluated = [0]

    def game(x: np.ndarray) -> np.ndarray:
        evaluated[0] += len(x)
        values = source.values(x > 0.5)
        return values[:, 0] if source.single else values

    # With an all-zeros background and an all-ones input, shap's masked inputs are the coalitions themselves.
    explainer = shap.KernelExplainer(game, np.zeros((1, m)))
    estimates, evaluations = {}, {}
    for budget in payload["budgets"]:
        estimates[budget], evaluations[budget] = [], []
        for seed in payload["seeds"]:
            np.random.seed(seed)
            evaluated[0] = 0
            values = explainer.shap_values(np.ones((1, m)), nsamples=int(budget), l1_reg=False, silent=True)
            estimates[budget].append(np.asarray(values).reshape(-1).tolist())
            evaluations[budget].append(evaluated[0])
    source.reply({"estimates": estimates, "evaluations": evaluations})


if __name__ == "__main__":
    main(sys.argv[1])
