"""A hierarchy of features merged along their adjacency: regions for a coarse first look, a tree for Owen values.

:func:`merge_tree` merges touching features two at a time, always the touching pair whose union is smallest, so that
every region of the tree is connected (where the features are) and regions at one level are of similar size; it
returns the merges as a SciPy linkage matrix. :func:`regions` cuts that tree into a given number of regions: the
coarse level of live explanations (:mod:`segshap.coarse`). The whole tree is the hierarchy over which shap's
``PartitionExplainer`` computes Owen values (``benchmarks/suites/anytime.py``).
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["merge_tree", "regions"]


def merge_tree(n_players: int, pairs: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """The features merged two at a time along their adjacency, smallest union first.

    Parameters
    ----------
    n_players : int
        ``M``, the number of features.
    pairs : np.ndarray
        ``(P, 2)`` features that touch (:func:`segshap.surrogate.adjacent_pairs`).
    sizes : np.ndarray, optional
        ``(M,)`` the size of each feature (e.g. voxels); default 1 each, so that regions hold similar numbers of
        features.

    Returns
    -------
    np.ndarray
        ``(M - 1, 4)`` linkage matrix as :func:`scipy.cluster.hierarchy.linkage` returns it: row ``k`` merges
        clusters ``a`` and ``b`` (features are ``0 .. M-1``, the cluster made by row ``k`` is ``M + k``) at height
        ``d`` (the union's size, never decreasing) into ``n`` features. Features that no chain of touching features
        connects are merged last, smallest groups first.
    """
    sizes = np.ones(n_players) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (n_players,) or np.any(sizes <= 0):
        raise ValueError(f"sizes must hold {n_players} positive numbers, one per feature.")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    size = dict(enumerate(sizes.tolist()))
    count = dict.fromkeys(range(n_players), 1)
    neighbours: dict[int, set[int]] = {i: set() for i in range(n_players)}
    for a, b in pairs.tolist():
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    heap = [(size[a] + size[b], a, b) for a in neighbours for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    merges, height = [], 0.0

    def merge(a: int, b: int) -> int:
        nonlocal height
        new = n_players + len(merges)
        height = max(height, size[a] + size[b])
        merges.append((a, b, height, count[a] + count[b]))
        size[new], count[new] = size.pop(a) + size.pop(b), count.pop(a) + count.pop(b)
        neighbours[new] = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        for other in neighbours[new]:
            neighbours[other] -= {a, b}
            neighbours[other].add(new)
            heapq.heappush(heap, (size[new] + size[other], min(new, other), max(new, other)))
        return new

    while heap:
        _, a, b = heapq.heappop(heap)
        if a in size and b in size:  # both still clusters of their own, not merged since the pair was queued
            merge(a, b)
    apart = sorted(size, key=lambda cluster: (size[cluster], cluster))  # components no adjacency connects
    while len(apart) > 1:
        merged = merge(apart[0], apart[1])
        apart = sorted(apart[2:] + [merged], key=lambda cluster: (size[cluster], cluster))
    return np.array(merges, dtype=np.float64).reshape(-1, 4)


def regions(tree: np.ndarray, n_regions: int) -> np.ndarray:
    """``(M,)`` region index ``0 .. R-1`` of each feature: the tree of :func:`merge_tree` cut into ``R`` regions
    (its first ``M - R`` merges applied), numbered in the order of their smallest feature."""
    n_players = len(tree) + 1
    n_regions = max(1, min(int(n_regions), n_players))
    parent = np.arange(2 * n_players - 1)
    for k, (a, b) in enumerate(tree[: n_players - n_regions, :2].astype(np.int64)):
        parent[a] = parent[b] = n_players + k
    root = parent.copy()
    for _ in range(n_players):  # path halving until every feature points at its region's top cluster
        following = root[root]
        if np.array_equal(following, root):
            break
        root = following
    _, first, inverse = np.unique(root[:n_players], return_index=True, return_inverse=True)
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first)] = np.arange(len(first))
    return number[inverse]
