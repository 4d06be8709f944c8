"""overview.png as 3D Slicer would show it: screen directions on phantoms of known anatomy, in several voxel
orientations; the aspect of thick slices; organ names; standard errors that were not estimated; the palette."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread

from segshap.explanation import Explanation
from segshap.figure import SCREEN_DIRECTIONS, draw_overview, overview_figure
from segshap.palette import (
    FAINTEST_ALPHA,
    STRONGEST_ALPHA,
    UNPAINTED_FRACTION,
    feature_opacity,
    position_text,
)

LEFT, ANTERIOR, SUPERIOR = 1000.0, 600.0, 300.0
"""Grey values of the phantom's markers (the rest of it is 100): white, mid grey and dark grey once windowed."""


def _explanation(image, feature_map, values, affine, **fields) -> Explanation:
    """An explanation of one target whose features ``1..M`` have ``values``; the target is feature 1's voxels."""
    values = np.asarray(values, dtype=np.float64)
    defaults = {
        "stderr": np.full(values.shape, 0.01),
        "base_value": 0.0,
        "full_value": float(values.sum()),
        "stats": {},
        "targets": (1,),
        "target_names": ("target",),
        "settings": {"value": "soft_dice", "baseline": "mean"},
        "reference": (feature_map == 1)[None],
        "roi": np.ones(image.shape, bool),
    }
    return Explanation(
        values=values,
        feature_ids=np.arange(1, values.size + 1),
        feature_map=feature_map.astype(np.int32),
        image=image.astype(np.float32),
        affine=affine,
        **{**defaults, **fields},
    )


def _world(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``(X, Y, Z, 3)`` RAS millimetres of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _phantom(affine: np.ndarray, shape: tuple[int, int, int]) -> Explanation:
    """A 38 x 38 x 22 mm box (RAS centred on 0) with a marker on the patient's left (R < -8 mm), one anterior
    (A > 8 mm) and one superior (S > 6 mm); feature 1, the strongest and the target, is a block at the centre,
    feature 2 (1 % of it: not painted) the rest."""
    r, a, s = np.moveaxis(_world(affine, shape), -1, 0)
    image = np.full(shape, 100.0)
    image[(r < -8) & (abs(a) < 4)] = LEFT
    image[(a > 8) & (abs(r) < 4)] = ANTERIOR
    image[(s > 6) & (abs(r) < 4) & (abs(a) < 4)] = SUPERIOR
    features = np.where((abs(r) < 4) & (abs(a) < 4) & (abs(s) < 4), 1, 2)
    return _explanation(image, features, [1.0, 0.01], affine)


def _axis_affine(columns: list[tuple[int, float]], spacing: float, shape: tuple[int, int, int]) -> np.ndarray:
    """The affine whose voxel axis i points along RAS axis ``columns[i][0]`` with sign ``columns[i][1]``, the grid
    centred on RAS 0."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel, (ras, sign) in enumerate(columns):
        affine[ras, voxel] = sign * spacing
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


ORIENTATIONS = {
    "RAS": [(0, 1.0), (1, 1.0), (2, 1.0)],
    "LPS": [(0, -1.0), (1, -1.0), (2, 1.0)],
    "SLA": [(2, 1.0), (0, -1.0), (1, 1.0)],  # voxel axes permuted, as a sagittally acquired series may be
    "LPS oblique": [(0, -1.0), (1, -1.0), (2, 1.0)],  # turned 15 degrees about S: read along the nearest axes
}


def _panel_pixels(figure, png: np.ndarray, name: str) -> tuple[np.ndarray, object]:
    """The pixels of the slice panel whose title starts with ``name``, cut out of the saved PNG, and its axes."""
    ax = next(ax for ax in figure.axes if ax.get_title().startswith(name))
    (x0, y0), (x1, y1) = ax.transData.transform([(ax.get_xlim()[0], ax.get_ylim()[0]), (ax.get_xlim()[1], 0.0)])
    height = png.shape[0]
    rows = slice(int(round(height - y1)) + 1, int(round(height - y0)) - 1)
    columns = slice(int(round(x0)) + 1, int(round(x1)) - 1)
    return png[rows, columns, :3], ax


def _window(value: float) -> float:
    """The grey (0..1) a phantom value is drawn in: the image's 1-99 % window is 100 to ``LEFT``."""
    return (value - 100.0) / (LEFT - 100.0)


def _where(pixels: np.ndarray, value: float, tolerance: float = 0.04) -> np.ndarray:
    """Mean (row, column) of the grey pixels of ``value`` (0..1), as fractions of the panel's height and width."""
    grey = (np.ptp(pixels, axis=-1) < 0.02) & (np.abs(pixels.mean(axis=-1) - value) < tolerance)
    assert grey.sum() > 20, f"no pixel of grey {value:.2f}"
    return np.argwhere(grey).mean(axis=0) / np.array(pixels.shape[:2])


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_slices_show_the_phantom_as_3d_slicer_does(orientation, tmp_path):
    shape = tuple({0: 20, 1: 20, 2: 12}[ras] for ras, _ in ORIENTATIONS[orientation])  # 2 mm voxels
    affine = _axis_affine(ORIENTATIONS[orientation], 2.0, shape)
    if "oblique" in orientation:
        turn = np.radians(15)
        affine[:2] = [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]] @ affine[:2]
    figure = draw_overview(_phantom(affine, shape))
    figure.savefig(tmp_path / "overview.png")
    png = imread(tmp_path / "overview.png")

    axial, ax = _panel_pixels(figure, png, "axial")
    row, column = _where(axial, _window(LEFT))
    assert column > 0.6, f"{orientation}: the patient's left is not on the screen's right in the axial view"
    row, column = _where(axial, _window(ANTERIOR))
    assert row < 0.4, f"{orientation}: anterior is not up in the axial view"
    assert {t.get_position(): t.get_text() for t in ax.texts}[(0.985, 0.5)] == "L"

    sagittal, ax = _panel_pixels(figure, png, "sagittal")
    row, column = _where(sagittal, _window(ANTERIOR))
    assert column < 0.4, f"{orientation}: anterior is not on the screen's left in the sagittal view"
    row, column = _where(sagittal, _window(SUPERIOR))
    assert row < 0.4, f"{orientation}: superior is not up in the sagittal view"
    assert {t.get_position(): t.get_text() for t in ax.texts}[(0.985, 0.5)] == "P"

    coronal, ax = _panel_pixels(figure, png, "coronal")
    row, column = _where(coronal, _window(LEFT))
    assert column > 0.6, f"{orientation}: the patient's left is not on the screen's right in the coronal view"
    row, column = _where(coronal, _window(SUPERIOR))
    assert row < 0.4, f"{orientation}: superior is not up in the coronal view"
    letters = {t.get_position(): t.get_text() for t in ax.texts}
    assert [letters[p] for p in ((0.015, 0.5), (0.985, 0.5), (0.5, 0.985), (0.5, 0.015))] == ["R", "L", "S", "I"]


def test_titles_give_the_slice_position_in_ras_millimetres():
    shape = (20, 20, 12)
    affine = _axis_affine(ORIENTATIONS["LPS"], 2.0, shape)
    affine[:3, 3] += (10.0, -20.0, 30.0)  # the phantom's centre moves to R 10, A -20, S 30
    titles = [ax.get_title() for ax in draw_overview(_phantom(affine, shape)).axes[:3]]
    # The centre voxel of the target block is the one at RAS (+-1, +-1, +-1) mm from the centre.
    assert titles[0].startswith("axial, S ") and abs(float(titles[0].split()[2]) - 30) <= 1, titles
    assert titles[1].startswith("sagittal, R ") and abs(float(titles[1].split()[2]) - 10) <= 1, titles
    assert titles[2].startswith("coronal, P ") and abs(float(titles[2].split()[2]) - 20) <= 1, titles
    assert position_text(2, -12.04) == "I 12.0 mm" and position_text(0, 3.5) == "R 3.5 mm"


def test_thick_slices_keep_their_millimetre_aspect(tmp_path):
    shape = (30, 30, 8)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])  # 1 x 1 x 5 mm voxels
    image = np.full(shape, 100.0)
    image[10:20, 10:20, 2:6] = 1000.0  # 10 x 10 x 20 mm
    features = np.ones(shape, int)
    features[0, 0, 0] = 2  # the strongest feature, out of the way: feature 1 (1 %) is not painted
    explanation = _explanation(image, features, [0.01, 1.0], affine, reference=(features == 1)[None])
    figure = draw_overview(explanation)
    figure.savefig(tmp_path / "overview.png")
    coronal, _ = _panel_pixels(figure, imread(tmp_path / "overview.png"), "coronal")
    rows, columns = np.nonzero(coronal.min(axis=-1) > 0.95)
    ratio = (np.ptp(columns) + 1) / (np.ptp(rows) + 1)
    assert ratio == pytest.approx(10 / 20, rel=0.1), f"width/height {ratio:.2f}: squashed (4 x 10 voxels drawn)"


def test_organs_are_named_and_unestimated_errors_are_said_so(tmp_path):
    shape = (12, 12, 12)
    features = np.ones(shape, int)
    features[6:] = 2
    features[:, 6:] += 2  # four organs
    explanation = _explanation(
        np.random.default_rng(0).normal(size=shape),
        features,
        [0.4, -0.3, 0.2, 0.1],
        np.eye(4),
        stderr=np.full(4, np.nan),
        organ_labels=np.array([5, 7, 9, 11]),
        class_names={5: "liver", 7: "spleen", 9: "left kidney"},
    )
    figure = draw_overview(explanation)
    bars = next(ax for ax in figure.axes if ax.containers)
    assert [t.get_text() for t in bars.get_xticklabels()] == ["liver", "spleen", "left kidney", "label 11"]
    assert "standard errors not estimated: too few samples" in bars.get_title()
    assert bars.containers[0].errorbar is None  # no bar of +-0
    explanation.stderr = np.array([0.01, np.nan, 0.02, 0.03])
    bars = next(ax for ax in draw_overview(explanation).axes if ax.containers)
    assert "standard errors of 1 of 4 features not estimated" in bars.get_title()
    overview_figure(explanation, tmp_path / "overview.png")
    assert (tmp_path / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_screen_directions_are_3d_slicer_s_presets():
    slicer = pytest.importorskip("slicer")
    import vtk

    for name, ((right, right_sign), (up, up_sign)) in SCREEN_DIRECTIONS.items():
        matrix = vtk.vtkMatrix3x3()
        getattr(slicer.vtkMRMLSliceNode, f"Get{name.capitalize()}SliceToRASMatrix")(matrix)
        slice_to_ras = np.array([[matrix.GetElement(i, j) for j in range(3)] for i in range(3)])
        expected = np.zeros((3, 2))
        expected[right, 0], expected[up, 1] = right_sign, up_sign
        np.testing.assert_array_equal(slice_to_ras[:, :2], expected, err_msg=name)


def test_opacity_is_proportional_to_strength_and_none_for_weak_features():
    assert feature_opacity(-2.0, 2.0) == STRONGEST_ALPHA
    assert feature_opacity(0.5, 2.0) == pytest.approx(STRONGEST_ALPHA / 4)
    assert feature_opacity(UNPAINTED_FRACTION * 2.0, 2.0) == pytest.approx(FAINTEST_ALPHA)
    assert feature_opacity(0.99 * UNPAINTED_FRACTION * 2.0, 2.0) == 0.0
    assert feature_opacity(0.0, 2.0) == feature_opacity(1.0, 0.0) == feature_opacity(math.nan, 2.0) == 0.0
