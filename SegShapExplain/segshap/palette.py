"""How every picture shows an explanation: a feature's colour and its opacity over the anatomy, and the anatomical
letters and slice positions at the slices' edges and in their titles.

``overview.png`` (:mod:`segshap.figure`) and 3D Slicer's scene (``SegShapExplainLib.results``, hence ``slices.png``)
both paint a feature in the colour of its sign at :func:`feature_opacity` over the image, so a feature looks the
same in both. The opacity is proportional to the feature's share of the strongest |value|: the colour it adds to a
pixel, ``alpha * (colour - anatomy)``, grows as its value does, as the bars of the bar chart do, so a weak feature
looks weak (no floor or square root makes it look stronger than it is). Features under ``UNPAINTED_FRACTION`` of
the strongest are not painted at all: they would move a pixel less than 4 % of the way to their colour (under 10
grey levels of 255), too little to read as a colour, yet enough to veil the anatomy under the many weak features.
The strongest is drawn at ``STRONGEST_ALPHA``, so that even under it a quarter of the anatomy's contrast shows.

Standard library only: the Slicer side imports this module, in 3D Slicer's Python, where the engine's packages
(torch first) may not be installed yet (``Testing/test_packaging.py`` checks that the Slicer side loads without
them).
"""

from __future__ import annotations

__all__ = [
    "NEGATIVE_RGB",
    "POSITIVE_RGB",
    "NEUTRAL_RGB",
    "LETTER_RGB",
    "UNPAINTED_FRACTION",
    "STRONGEST_ALPHA",
    "FAINTEST_ALPHA",
    "feature_color",
    "feature_opacity",
    "direction_letter",
    "position_text",
    "edge_letters",
]

NEGATIVE_RGB = (0.23, 0.30, 0.75)
"""Blue: features that work against the segmentation (Moreland's cool-warm end points)."""
POSITIVE_RGB = (0.71, 0.02, 0.15)
"""Red: features that support the segmentation."""
NEUTRAL_RGB = (0.8, 0.8, 0.8)
"""Grey: a feature whose value is exactly 0 (its fill is transparent; it shows when all features are outlined)."""
LETTER_RGB = (1.0, 0.85, 0.0)
"""The orientation letters (L/R, A/P, S/I) at the edges of the slices: a yellow that neither the grey anatomy nor
the red and blue features have."""
UNPAINTED_FRACTION = 0.05
"""Features weaker than this fraction of the strongest |value| are not painted (opacity 0)."""
STRONGEST_ALPHA = 0.75
"""Opacity of the strongest feature."""
FAINTEST_ALPHA = STRONGEST_ALPHA * UNPAINTED_FRACTION
"""Opacity of the weakest painted feature (at ``UNPAINTED_FRACTION`` of the strongest)."""


def feature_color(value: float) -> tuple[float, float, float]:
    """A feature's RGB colour (0..1): its sign's, grey for exactly 0."""
    return NEGATIVE_RGB if value < 0 else POSITIVE_RGB if value > 0 else NEUTRAL_RGB


def feature_opacity(value: float, strongest: float) -> float:
    """A feature's opacity over the anatomy: ``STRONGEST_ALPHA * |value| / strongest``, and 0 under
    ``UNPAINTED_FRACTION`` of the strongest (and for every feature when ``strongest`` is 0).

    Parameters
    ----------
    value : float
        The feature's Shapley value (NaN is painted as 0).
    strongest : float
        The largest |value| of the explanation.
    """
    strength = min(abs(value) / strongest, 1.0) if strongest > 0 else 0.0
    # NaN fails every comparison: `strength >= UNPAINTED_FRACTION` is False for it.
    return STRONGEST_ALPHA * strength if strength >= UNPAINTED_FRACTION else 0.0


def direction_letter(ras_axis: int, sign: float) -> str:
    """The anatomical letter of a direction along a RAS axis (0: R, 1: A, 2: S): R/L, A/P or S/I by its sign."""
    return ("RAS" if sign > 0 else "LPI")[ras_axis]


def position_text(ras_axis: int, coordinate: float) -> str:
    """A slice's position along the RAS axis it is cut across, as 3D Slicer's RAS reads it: ``"S 12.0 mm"``,
    ``"I 12.0 mm"`` for -12, ``"L 3.5 mm"`` for R = -3.5."""
    return f"{direction_letter(ras_axis, 1.0 if coordinate >= 0 else -1.0)} {abs(coordinate):.1f} mm"


def edge_letters(ax, letters: dict[str, str]) -> None:
    """Write the anatomical direction at each edge of a 2D panel (``letters``: ``left``, ``right``, ``top``,
    ``bottom`` to R/L, A/P, S/I) in ``LETTER_RGB`` with a black rim, readable over any anatomy. Both figures draw their
    letters with it (matplotlib is imported here, when called: the module itself needs the standard library only)."""
    from matplotlib import patheffects

    rim = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for edge, (x, y, ha, va) in {
        "left": (0.015, 0.5, "left", "center"),
        "right": (0.985, 0.5, "right", "center"),
        "top": (0.5, 0.985, "center", "top"),
        "bottom": (0.5, 0.015, "center", "bottom"),
    }.items():
        ax.text(
            x,
            y,
            letters[edge],
            transform=ax.transAxes,
            ha=ha,
            va=va,
            color=LETTER_RGB,
            fontsize=11,
            fontweight="bold",
            path_effects=rim,
        )
