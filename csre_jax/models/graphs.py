"""The adjacency matrices the GCN backbones start from, computed from a skeleton `Layout`.

Every function takes a Layout or the name of a built-in one (csre_jax.layouts). The edges
live in the layouts as the official pair lists; tests compare the matrices built here with
the official constants.
"""

import numpy as np

from csre_jax.layouts import BUILTIN_LAYOUTS, Layout, load_layout


def num_joints(layout: Layout | str) -> int:
    return load_layout(layout).num_joints


def inward_pairs(layout: Layout | str) -> list[tuple[int, int]]:
    """0-based (child, parent) pairs pointing towards the body centre."""
    return list(load_layout(layout).edges)


def hyperformer_layout(layout: Layout | str) -> Layout:
    """The layout whose edges Hyperformer and BlockGCN build their graph from.

    Their official code (and CSRE's) attaches NTU's hand tip and thumb to the hand, where
    CTR-GCN chains tip -> thumb -> hand: the `ntu` layout becomes `ntu_hyperformer` (same
    joints, other hop distances); any other layout is used as it is.
    """
    layout = load_layout(layout)
    return BUILTIN_LAYOUTS["ntu_hyperformer"] if layout == BUILTIN_LAYOUTS["ntu"] else layout


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


def spatial_partition(layout: Layout | str) -> np.ndarray:
    """(3, V, V) float32: [identity, normalised inward, normalised outward]."""
    v = num_joints(layout)
    inward = inward_pairs(layout)
    outward = [(j, i) for i, j in inward]
    a = np.stack(
        [
            np.eye(v),
            normalize_digraph(edge_matrix(inward, v)),
            normalize_digraph(edge_matrix(outward, v)),
        ]
    )
    return a.astype(np.float32)


def hop_distance(layout: Layout | str) -> np.ndarray:
    """(V, V) int32 shortest-path hop counts over the undirected skeleton (0 on the diagonal).

    Hyperformer and BlockGCN index their relative-position tables by it; the official code
    derives the same matrix from powers of the binarised adjacency. A layout is connected
    (layouts.py checks it), so every entry is reached.
    """
    v = num_joints(layout)
    adjacency = edge_matrix(inward_pairs(layout), v)
    adjacency = (adjacency + adjacency.T + np.eye(v)) > 0
    hops = np.full((v, v), -1, np.int32)
    reach = np.eye(v, dtype=bool)
    for distance in range(v):
        hops[(hops < 0) & reach] = distance
        if (hops >= 0).all():
            break
        reach = (reach.astype(np.int32) @ adjacency.astype(np.int32)) > 0
    return hops
