"""shap's ``KernelExplainer(l1_reg=False)`` or ``PartitionExplainer`` driving a game that lives in another process.

Runs in the shap environment (``.venv-ref``), started by ``benchmarks/common.py`` (:func:`shap_kernel_explainer`,
:func:`shap_partition_explainer`). shap cannot share a process with slicer-core, and the game needs the project's
torch, so each batch of coalitions shap wants evaluated is written to stdout as one JSON line
``{"rows": [[0, 1, ...], ...]}`` and the values are read back from stdin as ``{"values": [...]}``. Arguments: the
number of features, ``nsamples`` (``max_evals`` for the partition explainer), the seed, and for the partition
explainer the path of a ``.npy`` SciPy linkage matrix over the features (the hierarchy of its Owen values). The last
line written is ``{"done": true, "shap_values": [...], "seconds": ...}`` (the protocol of ``remote.py``).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import shap
from remote import ask, finish, own_stdout


def main(m: int, nsamples: int, seed: int, linkage: str | None = None) -> None:
    own_stdout()

    def game(x: np.ndarray) -> np.ndarray:
        return ask(x > 0.5)

    # With nsamples below the number of features shap warns that the regression is underdetermined; expected here,
    # where only the time per coalition is measured.
    warnings.filterwarnings("ignore", message="(?s).*num_features")
    started = time.perf_counter()
    np.random.seed(seed)
    # An all-zeros background and an all-ones input: shap's masked inputs are the coalitions themselves.
    background, point = np.zeros((1, m)), np.ones((1, m))
    if linkage is None:
        explainer = shap.KernelExplainer(game, background)
        values = explainer.shap_values(point, nsamples=nsamples, l1_reg=False, silent=True)
    else:
        # A linkage matrix as the masker's clustering is the hierarchy PartitionExplainer recurses through
        # (shap.maskers.Partition takes an array in place of a distance metric's name).
        masker = shap.maskers.Partition(background, clustering=np.load(linkage))
        values = shap.PartitionExplainer(game, masker)(point, max_evals=nsamples, silent=True).values
    finish({"shap_values": np.asarray(values).reshape(-1).tolist(), "seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
