"""Features: the units of a volume a Shapley explanation switches on and off.

A feature map is an integer map of the image's spatial shape ``(X, Y, Z)``: voxels with id ``i`` in ``1..N`` form
feature ``i``, voxels with id ``0`` belong to no feature and are never perturbed. Every function here returns such a
map as int32, with the ids ``1..N`` contiguous (each present at least once) and numbered deterministically, so that
the same input gives the same map.

The kinds, from coarse to fine, each a module of this package:

* :func:`organs` -- whole organs: one feature per label of a label map (:mod:`.organs`).
* :func:`organ_aware` -- organ-aware hybrids: SLIC supervoxels inside every region of a label map, never across a
  label boundary, so every feature belongs to exactly one organ (:mod:`.organ_aware`; :func:`feature_organs`).
* :func:`fcc` -- regular supervoxels: Voronoi cells of a face-centred cubic lattice (:mod:`.fcc`).
* :func:`grid` -- regular blocks (:mod:`.grid`).
* :func:`slic` -- image-driven supervoxels: scikit-image's SLIC in 3D (:mod:`.slic`).

Every function takes a ``support``: the box ``((x0, x1), (y0, y1), (z0, z1))`` (half-open voxel ranges) the features
are built in. Everything outside it is 0 and no work is done there: the inputs are cropped to the support, the
features are computed on the crop and pasted back. The engine only perturbs voxels that can change the region of
interest (the union of the input windows whose outputs cover it), so passing that box as the support builds the
features only where they can matter. :func:`grid` and :func:`fcc` are anchored at the volume origin, so a voxel falls
in the same cell whatever the support (only the numbering of the cells depends on it); cells cut by the support keep
their inside part.

A new kind is a module with the kind's function and a ``build(image, labelmap, support, n_features, mask)`` that
makes about ``n_features`` features of it inside the bool ``mask`` (none outside it; ``None``: everywhere),
registered in :data:`FEATURE_KINDS`'s table below.
"""

from __future__ import annotations

import numpy as np

from ..inputs import checked_choice, checked_integer
from ..tiling import Box
from .fcc import build as _build_fcc
from .fcc import fcc
from .grid import build as _build_grid
from .grid import grid
from .organ_aware import build as _build_organ_aware
from .organ_aware import organ_aware
from .organs import build as _build_organs
from .organs import feature_organs, organs
from .slic import DEFAULT_COMPACTNESS, slic
from .slic import build as _build_slic

__all__ = [
    "FEATURE_KINDS",
    "FEATURE_WORDS",
    "ORGAN_FEATURES",
    "DEFAULT_COMPACTNESS",
    "build_features",
    "grid",
    "fcc",
    "slic",
    "organs",
    "organ_aware",
    "feature_organs",
]

_BUILDERS = {
    "slic": _build_slic,
    "fcc": _build_fcc,
    "grid": _build_grid,
    "organs": _build_organs,
    "organ_aware": _build_organ_aware,
}

FEATURE_KINDS = tuple(_BUILDERS)
"""The kinds of features :func:`build_features` makes (the ``features`` option)."""

ORGAN_FEATURES = ("organs", "organ_aware")
"""The kinds made from an organ label map."""

FEATURE_WORDS = {
    "slic": "supervoxels",
    "fcc": "regular supervoxels",
    "grid": "cubes",
    "organs": "organs",
    "organ_aware": "organ-aware supervoxels",
}
"""Each kind as messages name it to users."""


def build_features(
    kind: str,
    image: np.ndarray,
    labelmap: np.ndarray | None,
    support: Box,
    n_features: int,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A feature map of ``kind`` with about ``n_features`` features inside ``support``.

    Parameters
    ----------
    kind : str
        One of :data:`FEATURE_KINDS`.
    image : np.ndarray
        ``(C, X, Y, Z)``: the network's input, whose edges image-driven kinds follow.
    labelmap : np.ndarray or None
        ``(X, Y, Z)`` organ label map, needed by :data:`ORGAN_FEATURES`.
    support : box
        Where features are built.
    n_features : int
        About how many (per the kind's own rule; whole organs take as many as there are), inside ``mask``.
    mask : np.ndarray, optional
        Bool ``(X, Y, Z)``: features only here (the image's foreground, :mod:`segshap.foreground`); voxels outside
        belong to no feature.

    Raises
    ------
    ValueError
        When ``mask`` has no voxel inside the support.
    """
    checked_choice(kind, "features", FEATURE_KINDS)
    checked_integer(n_features, "n_features")
    if kind in ORGAN_FEATURES and labelmap is None:
        raise ValueError(f"features={kind!r} needs an organ label map.")
    if mask is not None and not mask[tuple(slice(a, b) for a, b in support)].any():
        raise ValueError(
            "The foreground mask has no voxel where features could change the value; give a mask that covers the "
            "target's surroundings, or foreground='none'."
        )
    return _BUILDERS[kind](image, labelmap, support, n_features, mask)
