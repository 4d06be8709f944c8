"""shapiq's Shapley value approximators on a game given as the table of all its coalition values.

Runs in the reference environment (``.venv-ref``, Python >= 3.12, see ``scripts/reference_env.sh``), started by
``benchmarks/common.run_reference`` like ``shap_kernel.py``: argument 1 is a folder with ``payload.json`` and
``arrays.npz``.

- ``arrays.npz``: ``table``, shape ``(2**M,)`` or ``(2**M, T)``: row ``k`` is the value of the coalition that holds
  feature ``i`` iff bit ``i`` of ``k`` is set (the raw value: nothing is subtracted, the empty coalition's
  included). Without a table the game lives in the process that started this one (games too large to tabulate):
  ``payload.json`` then gives ``players`` (M, at most 62), values are asked for with ``remote.py``'s protocol, each
  coalition once for all targets, and the answer is that protocol's last line.
- ``payload.json``: ``budgets`` (ints), ``seeds`` (ints), optionally ``methods`` (default: the first three):

  - ``regression_msr``: ``shapiq.RegressionMSR`` (regression-adjusted Monte Carlo, Witter, Liu and Musco 2025)
    with its default proxy, ``xgboost.XGBRegressor`` with default settings, on one thread (built here: without
    xgboost shapiq would fall back, with only a warning, to LightGBM or a single decision tree);
  - ``regression_msr_linear``: the same with shapiq's ``"linear"`` proxy (its sampler is then Leverage SHAP's);
  - ``proxy_shap``: ``shapiq.ProxySHAP`` for first-order Shapley values with the XGBoost proxy and its MSR residual
    adjustment (``adjustment=True``);
  - ``odd_shap``: ``shapiq.OddSHAP`` (Fumagalli et al. 2026), default settings (its budget floor is 10);
  - ``leverage_shap``: ``shapiq.LeverageSHAP`` (Musco and Witter 2025; paired, per-size counts fixed);
  - ``permutation``: ``shapiq.PermutationSamplingSV`` (ApproShapley);
  - ``kernel_shap``: ``shapiq.KernelSHAP`` (Lundberg and Lee 2017; shapiq's sampler), not run unless asked.

Each (method, budget, seed) runs one approximator with ``random_state=seed`` per target (shapiq games are
scalar-valued) on a ``shapiq.Game`` with ``normalize=False`` whose value function looks coalitions up in the
table (or asks for them). The Shapley values are read as the first-order entries ``(i,)`` of the returned
``InteractionValues`` (its ``()`` entry is the baseline ``v(empty)``, not a Shapley value).

Prints JSON ``{"estimates": {method: {str(budget): [per seed: M values, or M lists of T]}}, "evaluations":
{...: [rows the approximator passed to the game, per seed]}, "distinct": {...: [distinct coalitions among them]},
"reported": {...: [shapiq's own ``estimation_budget``]}, "versions": {...}}``. Which coalitions are drawn depends
on the seed only, never on the values, so with several targets the coalitions are those of one target (checked);
if they ever differed, every target's rows would be counted.

How shapiq 1.8 spends a budget B (read ``evaluations``, not B): the regressions draw distinct coalitions, at most
``min(B, 2**M)`` (Leverage SHAP rounds an odd B down); permutation sampling evaluates v(empty), v(all) and M - 1
coalitions per permutation, ``2 + (M - 1) * floor((B - 2) / (M - 1))`` rows with repeats (``distinct`` is lower),
more than 2**M rows if B is, and below ``B = M + 1`` no permutation at all: every estimate 0.
"""

from __future__ import annotations

import platform
import sys
import warnings

import numpy as np
import shapiq
from remote import open_game


def _regression_msr(m: int, seed: int) -> shapiq.RegressionMSR:
    # shapiq's default proxy (its "xgboost" tag builds XGBRegressor(random_state=seed)), made here to run on one
    # thread: on a busy 2-core machine XGBoost's OpenMP threads on a few hundred rows spin for seconds per fit.
    from xgboost import XGBRegressor

    return shapiq.RegressionMSR(m, "SV", proxy_model=XGBRegressor(random_state=seed, n_jobs=1), random_state=seed)


def _proxy_shap(m: int, seed: int) -> shapiq.ProxySHAP:
    from xgboost import XGBRegressor

    return shapiq.ProxySHAP(
        m,
        max_order=1,
        index="SV",
        proxy_model=XGBRegressor(random_state=seed, n_jobs=1),
        adjustment=True,
        random_state=seed,
    )


METHODS = {
    "regression_msr": _regression_msr,
    "regression_msr_linear": lambda m, seed: shapiq.RegressionMSR(m, "SV", proxy_model="linear", random_state=seed),
    "proxy_shap": _proxy_shap,
    "odd_shap": lambda m, seed: shapiq.OddSHAP(m, random_state=seed),
    "leverage_shap": lambda m, seed: shapiq.LeverageSHAP(m, random_state=seed),
    "permutation": lambda m, seed: shapiq.PermutationSamplingSV(m, random_state=seed),
    "kernel_shap": lambda m, seed: shapiq.KernelSHAP(m, random_state=seed),
}
DEFAULT_METHODS = ["regression_msr", "leverage_shap", "permutation"]


class RecordingGame(shapiq.Game):
    """One target of a game whose values come from ``values`` (``(n, M)`` bool coalitions to ``(n, T)``); records
    every coalition asked for, as its index (bit ``i`` set iff feature ``i`` is kept)."""

    def __init__(self, n_players: int, values, target: int) -> None:
        self.values, self.target = values, target
        self.bits = 1 << np.arange(n_players, dtype=np.int64)
        self.rows: list[np.ndarray] = []
        # normalize=False: shapiq would otherwise subtract v(empty) from every value (it does not change Shapley
        # values, which are differences, but the game must stay the raw one).
        super().__init__(n_players=n_players, normalize=False)

    def value_function(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool).reshape(-1, len(self.bits))
        self.rows.append(coalitions.astype(np.int64) @ self.bits)
        return self.values(coalitions)[:, self.target]


def estimate(method: str, values, m: int, t: int, budget: int, seed: int) -> tuple[np.ndarray, int, int, int]:
    """Shapley values ``(M, T)``, rows evaluated, distinct coalitions among them, shapiq's reported budget."""
    estimates, rows, reported = [], [], []
    for target in range(t):
        game = RecordingGame(m, values, target)
        with warnings.catch_warnings():
            # The sampler warns when the budget reaches the number of coalitions; that is expected here.
            warnings.filterwarnings("ignore", message="Not all budget is required")
            warnings.filterwarnings("ignore", message="Sampling might be inefficient")
            result = METHODS[method](m, seed).approximate(int(budget), game)
        estimates.append([result[(i,)] for i in range(m)])
        rows.append(np.concatenate(game.rows) if game.rows else np.zeros(0, np.int64))
        reported.append(int(result.estimation_budget))
    if all(np.array_equal(r, rows[0]) for r in rows):
        rows, reported = rows[:1], reported[:1]
    every = np.concatenate(rows)
    return np.array(estimates).T, len(every), len(np.unique(every)), max(reported)


def main(folder: str) -> None:
    game = open_game(folder)
    payload, m, values = game.payload, game.n_players, game.values
    t = values(np.zeros((1, m), bool)).shape[1]
    methods = payload.get("methods") or DEFAULT_METHODS
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    answer = {key: {method: {} for method in methods} for key in ("estimates", "evaluations", "distinct", "reported")}
    for method in methods:
        for budget in payload["budgets"]:
            key = str(budget)
            for name in answer:
                answer[name][method][key] = []
            for seed in payload["seeds"]:
                phi, evaluations, distinct, reported = estimate(method, values, m, t, int(budget), int(seed))
                answer["estimates"][method][key].append((phi[:, 0] if game.single else phi).tolist())
                answer["evaluations"][method][key].append(evaluations)
                answer["distinct"][method][key].append(distinct)
                answer["reported"][method][key].append(reported)
    answer["versions"] = {"shapiq": shapiq.__version__, "python": platform.python_version()}
    if any(method in methods for method in ("regression_msr", "proxy_shap")):
        import xgboost

        answer["versions"]["xgboost"] = xgboost.__version__
    game.reply(answer)


if __name__ == "__main__":
    main(sys.argv[1])
