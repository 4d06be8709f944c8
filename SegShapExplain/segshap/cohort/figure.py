"""The picture of a cohort (``cohort.png``): which organs each target's segmentation rests on, across cases."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["cohort_figure", "TOP_ORGANS"]

TOP_ORGANS = 8
"""Organs shown per target in the bar charts."""


def cohort_figure(table, full_values: dict[str, dict[str, float]], path: str | os.PathLike) -> None:
    """Save the PNG of a cohort (``cohort.png``).

    With organ features: the target x organ matrix of the mean normalised attribution across cases, in a diverging
    colour map centred at 0 (red: the organ supports the target's segmentation, blue: it works against it), each
    cell labelled with its mean and the number of cases; beside it, for each target, its organs with the largest
    mean absolute attribution and error bars of one standard deviation across cases. Other features (supervoxels
    differ from case to case) get, per target, each case's value of the full image instead.

    Parameters
    ----------
    table : pandas.DataFrame
        The cohort's table (:data:`segshap.cohort.COHORT_COLUMNS`).
    full_values : dict
        Case id to target to the case's value of the full image.
    path : str or path-like
        Where to write the PNG.
    """
    # A Figure of its own, not pyplot's: drawing it leaves the caller's plotting backend (a notebook's) alone.
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    organs = table[table["organ"] != ""]
    targets = sorted(table["target"].unique())
    cases = sorted(full_values)
    if table.empty:
        figure = Figure(figsize=(6.0, 2.0))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(0.5, 0.5, "No complete case yet (failed.csv says why)", ha="center", va="center")
        figure.savefig(path, dpi=110)
        return
    if organs.empty:
        figure = Figure(figsize=(max(6.0, 0.5 * len(cases) + 3), 4.5), layout="constrained")
        axis = figure.subplots()
        for offset, target in enumerate(targets):
            shown = [full_values[case].get(target, np.nan) for case in cases]
            axis.plot(np.arange(len(cases)) + 0.1 * offset, shown, "o", label=target)
        axis.set_xticks(range(len(cases)), cases, rotation=60, ha="right")
        axis.set(ylabel="value of the full image", title=f"{len(cases)} case(s): organ features compare across cases")
        axis.legend(fontsize="small")
        figure.savefig(path, dpi=110)
        return
    grouped = organs.groupby(["target", "organ"])["normalised"]
    mean, sd, count = (grouped.agg(statistic).unstack("organ") for statistic in ("mean", "std", "count"))
    # Organs that are also targets first, on the diagonal, then the others by their largest absolute mean.
    by_size = mean.abs().max().sort_values(ascending=False).index
    order = [target for target in targets if target in by_size] + [o for o in by_size if o not in targets]
    mean, sd, count = (frame.reindex(index=targets, columns=order) for frame in (mean, sd, count))
    width = max(5.0, 0.9 * len(order) + 2.5)
    figure = Figure(figsize=(width + 5.0, max(3.5, 1.1 * len(targets) + 2.5, 2.2 * len(targets))), layout="constrained")
    axes = figure.subplots(len(targets), 2, gridspec_kw={"width_ratios": [width, 5.0]}, squeeze=False)
    grid = axes[0, 0].get_gridspec()
    for axis in axes[:, 0]:
        axis.remove()
    matrix_axis = figure.add_subplot(grid[:, 0])
    finite = np.abs(mean.to_numpy())[np.isfinite(mean.to_numpy())]
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    shown = matrix_axis.imshow(
        mean.to_numpy(), cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto", interpolation="nearest"
    )
    for (row, column), value in np.ndenumerate(mean.to_numpy()):
        n = count.iat[row, column]
        if np.isfinite(value):
            colour = "white" if abs(value) > 0.6 * limit else "black"
            matrix_axis.text(column, row, f"{value:.2f}\nn={n:.0f}", ha="center", va="center", fontsize=8, color=colour)
    matrix_axis.set_xticks(range(len(order)), order, rotation=45, ha="right")
    matrix_axis.set_yticks(range(len(targets)), targets)
    matrix_axis.set(xlabel="input organ", ylabel="target class")
    matrix_axis.set_title(f"Mean normalised attribution over {len(cases)} case(s)")
    figure.colorbar(shown, ax=matrix_axis, shrink=0.8, label="value / (full - base)")
    for axis, target in zip(axes[:, 1], targets):
        top = mean.loc[target].dropna()
        top = top.reindex(top.abs().sort_values(ascending=False).index[:TOP_ORGANS])[::-1]
        errors = sd.loc[target, top.index].fillna(0.0)
        axis.barh(
            range(len(top)),
            top.to_numpy(),
            xerr=errors.to_numpy(),
            color=np.where(top.to_numpy() >= 0, "#c0392b", "#2e86c1"),
            capsize=3,
        )
        axis.set_yticks(range(len(top)), [f"{organ} (n={count.at[target, organ]:.0f})" for organ in top.index])
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_title(f"{target}: top organs, \u00b11 sd across cases", fontsize=9)
    axes[-1, 1].set_xlabel("normalised attribution")
    figure.savefig(path, dpi=110)
