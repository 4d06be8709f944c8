"""Whole organs: one feature per label of a label map, and the organ each feature of any map belongs to.

Few features, directly meaningful ("how much does the liver matter to the segmentation of the kidney"), but blind
to what happens inside an organ.
"""

from __future__ import annotations

import numpy as np

from ..inputs import as_features
from ..tiling import Box, box_slices
from .base import as_labelmap, as_support, distinct, paste, restricted


def build(
    image: np.ndarray, labelmap: np.ndarray | None, support: Box, n_features: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """Every organ of ``labelmap`` inside ``support``, cut to ``mask`` (``n_features`` does not apply)."""
    return restricted(organs(labelmap, support=support), mask)


_DENSE_COUNTS = 2**26
"""Largest ``features x labels`` count table :func:`feature_organs` builds; beyond it, it sorts instead."""


def organs(labelmap, *, support: Box | None = None) -> np.ndarray:
    """Whole organs: one feature per distinct label > 0.

    Parameters
    ----------
    labelmap : np.ndarray
        Integer ``(X, Y, Z)`` label map, 0 for background.
    support : box, optional
        ``((x0, x1), (y0, y1), (z0, z1))``: features only inside this box, 0 outside. ``None``: the whole volume.

    Returns
    -------
    np.ndarray
        int32 map; the labels present inside the support, in increasing order, become ids ``1..N``; label 0 stays 0.
    """
    labels = as_labelmap(labelmap)
    box = as_support(support, labels.shape)
    values, ids = distinct(labels[box_slices(box)])
    if values[-1] == 0:
        raise ValueError("labelmap has no label > 0 inside the support: there is no organ to make a feature of.")
    if values[0] > 0:
        ids += 1
    return paste(ids, box, labels.shape)


def feature_organs(feature_map, labelmap) -> np.ndarray:
    """The organ label of every feature: the label most of its voxels carry.

    Parameters
    ----------
    feature_map : np.ndarray
        Integer ``(X, Y, Z)`` feature map with ids ``1..N`` (0: no feature).
    labelmap : np.ndarray
        Integer ``(X, Y, Z)`` label map of the same shape.

    Returns
    -------
    np.ndarray
        ``(N + 1,)`` int64 labels: entry ``i`` is the majority label of feature ``i`` (ties go to the smaller
        label); entry 0 is unused and 0.
    """
    labels = as_labelmap(labelmap)
    features = np.asarray(feature_map)
    if features.shape != labels.shape:
        raise ValueError(f"feature_map has shape {features.shape} but labelmap has shape {labels.shape}.")
    features = as_features(features, labels.shape)
    n = int(features.max())
    values, inverse = distinct(labels)
    inside = features > 0
    f, lab = features[inside], inverse[inside]
    out = np.zeros(n + 1, dtype=np.int64)
    if n == 0:
        return out
    if (n + 1) * len(values) <= _DENSE_COUNTS:
        counts = np.bincount(f * len(values) + lab, minlength=(n + 1) * len(values)).reshape(n + 1, len(values))
        out[1:] = values[np.argmax(counts[1:], axis=1)]
        return out
    # Many features and labels: count the (feature, label) pairs that occur, by sorting.
    pairs, counts = np.unique(f * len(values) + lab, return_counts=True)
    feature_of, label_of = np.divmod(pairs, len(values))
    # Within each feature, the largest count first, the smaller label among equal counts.
    order = np.lexsort((label_of, -counts, feature_of))
    first = np.ones(len(order), dtype=bool)
    first[1:] = feature_of[order][1:] != feature_of[order][:-1]
    best = order[first]
    out[feature_of[best]] = values[label_of[best]]
    return out
