"""CTR-GCN (Chen et al., ICCV 2021), channels-last, loadable from the official checkpoints.

Module names mirror the official PyTorch attributes (see layers.py) so torch_key below is
almost the identity.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.layouts import Layout, load_layout
from csre_jax.models import graphs, torch_io
from csre_jax.models.layers import (
    MSTCN,
    Backbone,
    block_output,
    graph_conv_output,
    normalized_person_rows,
    pointwise,
)

NUM_SUBSETS = 3


class CTRGC(nn.Module):
    """Channel-wise topology refinement for one adjacency subset, channels first:

    out[c, t, u] = sum_w conv3(x)[t, w, c] * (alpha * conv4(tanh(q_u - k_w))[c] + PA[u, w]),
    with q, k the time-averaged conv1/conv2 projections. The product is a matmul batched over
    (sample, channel): XLA compiles it as it compiles the einsum, while the einsum would
    become ONNX's Einsum, which onnxruntime ran 2x slower than Transpose + MatMul.
    """

    channels: int
    rel_channels: int

    @nn.compact
    def __call__(self, x, x_mean, pa, alpha):
        # conv1/conv2 are affine, so projecting the time mean equals the mean of projections.
        q = pointwise(self.rel_channels, "conv1")(x_mean)  # (B, V, R)
        k = pointwise(self.rel_channels, "conv2")(x_mean)
        v = pointwise(self.channels, "conv3")(x)  # (B, T, V, C)
        rel = jnp.tanh(q[:, :, None, :] - k[:, None, :, :])  # (B, U, W, R)
        adj = pointwise(self.channels, "conv4")(rel) * alpha + pa[None, :, :, None]
        return v.transpose(0, 3, 1, 2) @ adj.transpose(0, 3, 2, 1)  # (B, C, T, U)


class UnitGCN(nn.Module):
    """Sum of the three CTRGC subsets, BN (scale init 1e-6), plus a down-projection, ReLU.

    The official relation width is 8 for 3 or 9 input channels, else cin // 8; that would be
    0 for a 2D input (x, y), which gets 8 too.
    """

    channels: int
    layout: Layout | str

    @nn.compact
    def __call__(self, x, train: bool):
        cin = x.shape[-1]
        rel_channels = 8 if cin in (3, 9) or cin < 8 else cin // 8
        pa = self.param("PA", lambda key: jnp.asarray(graphs.spatial_partition(self.layout)))
        alpha = self.param("alpha", nn.initializers.zeros, (1,))
        x_mean = x.mean(axis=1)
        y = sum(
            CTRGC(self.channels, rel_channels, name=f"convs_{s}")(x, x_mean, pa[s], alpha)
            for s in range(NUM_SUBSETS)
        )  # summed channels first, one transpose back
        return graph_conv_output(y.transpose(0, 2, 3, 1), x, train)


class TCNGCN(nn.Module):
    """One block: ReLU(MS-TCN(GCN(x)) + residual(x)); the MS-TCN carries the stride.

    `gcn_unit` and `tcn_unit` make the two units: 2S-AGCN's block replaces both.
    """

    channels: int
    layout: Layout | str
    stride: int = 1
    residual: bool = True

    def gcn_unit(self) -> nn.Module:
        return UnitGCN(self.channels, self.layout, name="gcn1")

    def tcn_unit(self) -> nn.Module:
        return MSTCN(self.channels, stride=self.stride, name="tcn1")

    @nn.compact
    def __call__(self, x, train: bool):
        y = self.gcn_unit()(x, train)
        y = self.tcn_unit()(y, train)
        if not self.residual:
            return nn.relu(y)
        return block_output(y, x, self.stride, train)


def block_plan(base_channels: int) -> list[tuple[int, int]]:
    """(channels, stride) of blocks l1..l10."""
    c = base_channels
    return [(c, 1)] * 4 + [(2 * c, 2)] + [(2 * c, 1)] * 2 + [(4 * c, 2)] + [(4 * c, 1)] * 2


class CTRGCN(Backbone, kw_only=True):
    """CTR-GCN on x (N, C, T, V, M); logits (N, num_classes), optionally with features.

    features: the last block's map as (N, M, T', V, C'), channels-last, for the CSRE head.
    `block` is the class of l1..l10: 2S-AGCN is this network with its own blocks.
    """

    block: ClassVar[type[nn.Module]] = TCNGCN
    base_channels: int = 64

    def feature_rows(self, x: jax.Array, train: bool) -> jax.Array:
        self.check_input(x)
        x = normalized_person_rows(x, train)
        block_class = self.block_class(self.block)
        for i, (channels, stride) in enumerate(block_plan(self.base_channels)):
            block = block_class(channels, self.layout, stride, residual=i > 0, name=f"l{i + 1}")
            x = block(x, train)
        return x


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> CTRGCN:
    """Registry constructor: the graph is the layout's own (for NTU, CTR-GCN's hand chain)."""
    return CTRGCN(
        num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs
    )


# Official state_dict key and layout kind of each Flax variable; fc is the only Linear.
torch_key = torch_io.default_key_fn("fc")
