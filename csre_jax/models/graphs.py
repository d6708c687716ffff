"""Skeleton graphs and the 'spatial' adjacency partition the GCN backbones start from.

The matrices are computed from the official pair lists rather than stored, so a reader can
check the edges against the papers; tests compare the result with the official constants.
"""

import numpy as np

# Directed (child, parent) pairs, 1-based as in the official graph files.
_NTU_BODY = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19),
)  # fmt: skip
# CTR-GCN and 2S-AGCN chain hand tip -> thumb -> hand; Hyperformer, CSRE and BlockGCN
# attach tip and thumb to the hand directly. Hop distances differ between the two.
_NTU_HANDS_CTRGCN = ((22, 23), (23, 8), (24, 25), (25, 12))
_NTU_HANDS_HYPERFORMER = ((22, 8), (23, 8), (24, 12), (25, 12))
_UCLA = (
    (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)  # fmt: skip

# name -> (number of joints, inward pairs, 1-based)
_GRAPHS = {
    "ntu": (25, _NTU_BODY + _NTU_HANDS_CTRGCN),
    "ntu_hyperformer": (25, _NTU_BODY + _NTU_HANDS_HYPERFORMER),
    "ucla": (20, _UCLA),
}
GRAPH_NAMES = tuple(_GRAPHS)


def _lookup(name: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    if name not in _GRAPHS:
        raise ValueError(f"unknown graph {name!r}; known graphs: {', '.join(GRAPH_NAMES)}")
    return _GRAPHS[name]


def num_joints(name: str) -> int:
    return _lookup(name)[0]


def inward_pairs(name: str) -> list[tuple[int, int]]:
    """0-based (i, j) pairs pointing towards the body centre."""
    return [(i - 1, j - 1) for i, j in _lookup(name)[1]]


def edge_matrix(pairs: list[tuple[int, int]], num_nodes: int) -> np.ndarray:
    """A[j, i] = 1 for each pair (i, j): column i lists where node i sends its features."""
    a = np.zeros((num_nodes, num_nodes), np.float64)
    for i, j in pairs:
        a[j, i] = 1.0
    return a


def normalize_digraph(a: np.ndarray) -> np.ndarray:
    """Divide each column by its sum; empty columns stay zero."""
    col = a.sum(axis=0)
    scale = np.divide(1.0, col, out=np.zeros_like(col), where=col > 0)
    return a * scale[None, :]


def spatial_partition(name: str) -> np.ndarray:
    """(3, V, V) float32: [identity, normalised inward, normalised outward]."""
    v = num_joints(name)
    inward = inward_pairs(name)
    outward = [(j, i) for i, j in inward]
    a = np.stack(
        [
            np.eye(v),
            normalize_digraph(edge_matrix(inward, v)),
            normalize_digraph(edge_matrix(outward, v)),
        ]
    )
    return a.astype(np.float32)


def hop_distance(name: str) -> np.ndarray:
    """(V, V) int32 shortest-path hop counts over the undirected skeleton (0 on the diagonal).

    Hyperformer and BlockGCN index their relative-position tables by it; the official code
    derives the same matrix from powers of the binarised adjacency.
    """
    v = num_joints(name)
    adjacency = edge_matrix(inward_pairs(name), v)
    adjacency = (adjacency + adjacency.T + np.eye(v)) > 0
    hops = np.full((v, v), -1, np.int32)
    reach = np.eye(v, dtype=bool)
    for distance in range(v):
        hops[(hops < 0) & reach] = distance
        if (hops >= 0).all():
            break
        reach = (reach.astype(np.int32) @ adjacency.astype(np.int32)) > 0
    return hops
