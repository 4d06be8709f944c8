"""``shap.KernelExplainer(l1_reg=False)`` driving a model that lives in another process.

Runs in the shap environment (``.venv-ref``), started by ``benchmarks/speed.py``. shap cannot share a process
with slicer-core, and the model needs the project's torch, so each batch of coalitions shap wants evaluated is
written to stdout as one JSON line ``{"rows": [[0, 1, ...], ...]}`` and the values are read back from stdin as
``{"values": [...]}``. Arguments: the number of features, ``nsamples``, the seed. The last line written is
``{"done": true, "shap_values": [...], "seconds": ...}``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import shap


def main(m: int, nsamples: int, seed: int) -> None:
    def game(x: np.ndarray) -> np.ndarray:
        sys.stdout.write(json.dumps({"rows": (x > 0.5).astype(int).tolist()}) + "\n")
        sys.stdout.flush()
        return np.asarray(json.loads(sys.stdin.readline())["values"], dtype=np.float64)

    # With nsamples below the number of features shap warns that the regression is underdetermined; expected here,
    # where only the time per coalition is measured.
    warnings.filterwarnings("ignore", message="(?s).*num_features")
    started = time.perf_counter()
    np.random.seed(seed)
    # An all-zeros background and an all-ones input: shap's masked inputs are the coalitions themselves.
    explainer = shap.KernelExplainer(game, np.zeros((1, m)))
    values = explainer.shap_values(np.ones((1, m)), nsamples=nsamples, l1_reg=False, silent=True)
    sys.stdout.write(
        json.dumps(
            {
                "done": True,
                "shap_values": np.asarray(values).reshape(-1).tolist(),
                "seconds": time.perf_counter() - started,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
