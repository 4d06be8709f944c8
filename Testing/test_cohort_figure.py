"""cohort.png as pixels: the target x organ matrix in a diverging colour map centred at 0."""

from __future__ import annotations

import warnings

import numpy as np
import pandas
import pytest
from PIL import Image

from segshap.cohort import COHORT_COLUMNS
from segshap.cohort.figure import cohort_figure

DEEP_RED = np.array([103, 0, 31])  # the ends of matplotlib's RdBu_r
DEEP_BLUE = np.array([5, 48, 97])


def _table(air: float) -> pandas.DataFrame:
    """Three cases, two targets, three organs; ``air`` is every case's normalised attribution of the organ "air"."""
    rng = np.random.default_rng(0)
    rows = []
    for case in ("a", "b", "c"):
        for target in ("gray_matter", "white_matter"):
            for organ, mean in (("gray_matter", 0.1), ("white_matter", 0.1), ("air", air)):
                value = mean + rng.normal(0, 0.01)
                rows.append((case, target, 1, organ, value, 0.01, 100, value))
    return pandas.DataFrame(rows, columns=list(COHORT_COLUMNS))


def _pixels_near(path, colour) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - colour).sum(axis=-1) < 30).sum())


@pytest.mark.parametrize("sign", [1, -1])
def test_the_matrix_paints_an_organ_that_helps_red_and_one_that_hurts_blue(tmp_path, sign):
    full = {case: {"gray_matter": 0.9, "white_matter": 0.8} for case in "abc"}
    cohort_figure(_table(0.9 * sign), full, tmp_path / "cohort.png")
    red, blue = _pixels_near(tmp_path / "cohort.png", DEEP_RED), _pixels_near(tmp_path / "cohort.png", DEEP_BLUE)
    # Two matrix cells (one per target) in the organ's colour dwarf the ends of the colour bar.
    assert (red > 20 * blue) if sign > 0 else (blue > 20 * red), (red, blue)


def test_supervoxel_features_get_each_cases_value_instead_of_a_matrix(tmp_path):
    table = _table(0.5).assign(organ="")
    cohort_figure(table, {case: {"gray_matter": 0.9, "white_matter": 0.8} for case in "abc"}, tmp_path / "c.png")
    assert _pixels_near(tmp_path / "c.png", DEEP_RED) == 0 and Image.open(tmp_path / "c.png").size[0] > 400


def test_a_cohort_without_a_complete_case_still_gets_its_picture(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about an empty plot
        cohort_figure(_table(0.5).iloc[:0], {}, tmp_path / "none.png")
    assert Image.open(tmp_path / "none.png").size == (660, 220)  # the note, not an empty plot


def test_mixed_features_and_values_that_cannot_be_normalised_are_drawn(tmp_path):
    """Cases left by a run with other features (a target with supervoxels only) and cases whose full and base
    values are equal (no normalised value) do not break the picture."""
    table = _table(0.5)
    extra = table[table["target"] == "white_matter"].assign(target="csf", organ="")
    blank = table.assign(case_id="d", normalised=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort_figure(pandas.concat([table, extra]), {}, tmp_path / "mixed.png")
        cohort_figure(blank, {}, tmp_path / "blank.png")
    assert _pixels_near(tmp_path / "mixed.png", DEEP_RED) > 1000
