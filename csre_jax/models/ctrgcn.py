"""CTR-GCN (Chen et al., ICCV 2021), channels-last, loadable from the official checkpoints.

Module names mirror the official PyTorch attributes (see layers.py) so torch_key below is
almost the identity.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from csre_jax.models import graphs, torch_io
from csre_jax.models.layers import (
    MSTCN,
    block_output,
    check_input,
    classify,
    graph_conv_output,
    normalized_person_rows,
    pointwise,
)

NUM_SUBSETS = 3


class CTRGC(nn.Module):
    """Channel-wise topology refinement for one adjacency subset.

    out[t, u, c] = sum_w (alpha * conv4(tanh(q_u - k_w))[c] + PA[u, w]) * conv3(x)[t, w, c],
    with q, k the time-averaged conv1/conv2 projections.
    """

    features: int
    rel_features: int

    @nn.compact
    def __call__(self, x, x_mean, pa, alpha):
        # conv1/conv2 are affine, so projecting the time mean equals the mean of projections.
        q = pointwise(self.rel_features, "conv1")(x_mean)  # (B, V, R)
        k = pointwise(self.rel_features, "conv2")(x_mean)
        v = pointwise(self.features, "conv3")(x)  # (B, T, V, C)
        rel = jnp.tanh(q[:, :, None, :] - k[:, None, :, :])  # (B, U, W, R)
        adj = pointwise(self.features, "conv4")(rel) * alpha + pa[None, :, :, None]
        return jnp.einsum("buwc,btwc->btuc", adj, v)


class UnitGCN(nn.Module):
    """Sum of the three CTRGC subsets, BN (scale init 1e-6), plus a down-projection, ReLU."""

    features: int
    graph: str

    @nn.compact
    def __call__(self, x, train: bool):
        cin = x.shape[-1]
        rel_features = 8 if cin in (3, 9) else cin // 8
        pa = self.param("PA", lambda key: jnp.asarray(graphs.spatial_partition(self.graph)))
        alpha = self.param("alpha", nn.initializers.zeros, (1,))
        x_mean = x.mean(axis=1)
        y = sum(
            CTRGC(self.features, rel_features, name=f"convs_{s}")(x, x_mean, pa[s], alpha)
            for s in range(NUM_SUBSETS)
        )
        return graph_conv_output(y, x, train)


class TCNGCN(nn.Module):
    """One block: ReLU(MS-TCN(GCN(x)) + residual(x)); the MS-TCN carries the stride."""

    features: int
    graph: str
    stride: int = 1
    residual: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        y = UnitGCN(self.features, self.graph, name="gcn1")(x, train)
        y = MSTCN(self.features, stride=self.stride, name="tcn1")(y, train)
        if not self.residual:
            return nn.relu(y)
        return block_output(y, x, self.stride, train)


def block_plan(base_channels: int) -> list[tuple[int, int]]:
    """(features, stride) of blocks l1..l10."""
    c = base_channels
    return [(c, 1)] * 4 + [(2 * c, 2)] + [(2 * c, 1)] * 2 + [(4 * c, 2)] + [(4 * c, 1)] * 2


class CTRGCN(nn.Module):
    """CTR-GCN on x (N, C, T, V, M); logits (N, num_classes), optionally with features.

    features: the last block's map as (N, M, T', V, C'), channels-last, for the CSRE head.
    `block` is the class of l1..l10: 2S-AGCN is this network with its own blocks.
    """

    block: ClassVar[type[nn.Module]] = TCNGCN
    num_classes: int
    graph: str
    num_person: int
    in_channels: int = 3
    base_channels: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(self, x, graphs.num_joints(self.graph), self.num_person)
        n, m = x.shape[0], x.shape[-1]
        x = normalized_person_rows(x, train)
        for i, (features, stride) in enumerate(block_plan(self.base_channels)):
            block = self.block(features, self.graph, stride, residual=i > 0, name=f"l{i + 1}")
            x = block(x, train)
        feats = x.reshape(n, m, *x.shape[1:])
        logits = classify(feats, self.num_classes, self.dropout, train)
        return (logits, feats) if return_features else logits


def create(*, num_classes: int, dataset: str, num_person: int, **kwargs) -> CTRGCN:
    """Registry constructor: CTR-GCN's graphs are named after the datasets."""
    return CTRGCN(num_classes=num_classes, graph=dataset, num_person=num_person, **kwargs)


def torch_key(collection: str, path: tuple[str, ...], ndim: int) -> tuple[str, str]:
    """Official state_dict key and layout kind of one Flax variable; fc is the only Linear."""
    kind = "linear" if path == ("fc", "kernel") else torch_io.default_kind(path, ndim)
    return torch_io.default_torch_key(collection, path), kind
