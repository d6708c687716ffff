"""InfoGCN (Chu et al., CVPR 2022), channels-last, loadable from the official checkpoints.

Module names mirror the official PyTorch attributes (see layers.py) so torch_key below is
almost the identity. The information-bottleneck losses (z, z_prior) belong to training and
are not part of the backbone: it returns logits like every other backbone.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csre_jax.layouts import BUILTIN_LAYOUTS, Layout, load_layout
from csre_jax.models import graphs, torch_io
from csre_jax.models.layers import (
    MSTCN,
    Backbone,
    block_output,
    embed_joints,
    graph_conv_output,
    person_rows,
    torch_default_bias,
)

# InfoGCN's NTU tree is CTR-GCN's with this (spine middle -> spine shoulder) edge turned
# round: the spine middle is its root and keeps its absolute position.
_NTU_SPINE_EDGE = (1, 20)
# Glorot uniform with gain sqrt(2) (calculate_gain('relu')), as for fc, fc_mu and fc_logvar.
_xavier_relu = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")


def outward_binary(layout: Layout | str) -> np.ndarray:
    """The official A_outward_binary, (V, V) of 0/1.

    The `ntu` layout: A[child, parent] = 1 on the tree rooted at the spine middle. NW-UCLA:
    the official pair list is read the other way round, so A[parent, child] = 1. Every other
    layout follows the NW-UCLA rule on its (child, parent) edges: with k = 1 a joint becomes
    itself minus the sum of its children, and a leaf keeps its absolute position.
    """
    layout = load_layout(layout)
    pairs = graphs.inward_pairs(layout)
    v = layout.num_joints
    if layout == BUILTIN_LAYOUTS["ntu"]:
        pairs = [(j, i) if (i, j) == _NTU_SPINE_EDGE else (i, j) for i, j in pairs]
        return graphs.edge_matrix(pairs, v).T
    return graphs.edge_matrix(pairs, v)


def kth_mode_matrix(layout: Layout | str, k: int) -> np.ndarray:
    """A_vec = I - A_out^k, float32 (the official float64 only runs under apex AMP).

    k = 1 turns each NTU joint into its offset from its parent; k = 0 zeroes the input.
    """
    a = outward_binary(layout)
    return (np.eye(len(a)) - np.linalg.matrix_power(a, k)).astype(np.float32)


class SelfAttention(nn.Module):
    """Per-frame joint attention of each head: softmax over keys of q.k / sqrt(hidden)."""

    hidden: int
    num_heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=1e-5, name="ln")(x)
        qk = nn.Dense(
            2 * self.num_heads * self.hidden,
            kernel_init=nn.initializers.normal(1.0),
            bias_init=torch_default_bias(x.shape[-1]),
            name="to_qk",
        )(y)
        # torch chunks q | k, then splits each into (head, dim)
        qk = qk.reshape(*qk.shape[:-1], 2, self.num_heads, self.hidden)
        q, k = qk[..., 0, :, :], qk[..., 1, :, :]  # (B, T, V, H, D)
        dots = jnp.einsum("btuhd,btwhd->bthuw", q, k) * self.hidden**-0.5
        return jax.nn.softmax(dots, axis=-1)


class SAGC(nn.Module):
    """Self-attention graph conv: sum_h conv_d[h]((attn_h * topology_h) @ x), BN (scale init
    1e-6), plus a down-projection when the width changes, ReLU."""

    channels: int
    num_heads: int

    @nn.compact
    def __call__(self, x, train: bool):
        cin, v = x.shape[-1], x.shape[2]
        topology = self.param(
            "shared_topology", lambda key: jnp.tile(jnp.eye(v), (self.num_heads, 1, 1))
        )
        attn = SelfAttention(cin // 8, self.num_heads, name="attn")(x)
        z = jnp.einsum("bthuw,btwc->bthuc", attn * topology, x)
        # official conv_branch_init: Normal(0, sqrt(2 / (Cout * Cin * heads))), bias 0
        conv_d_std = math.sqrt(2.0 / (self.channels * cin * self.num_heads))
        conv_d_init = nn.initializers.normal(conv_d_std)
        y = sum(
            nn.Dense(self.channels, kernel_init=conv_d_init, name=f"conv_d_{h}")(z[:, :, h])
            for h in range(self.num_heads)
        )
        return graph_conv_output(y, x, train)


class EncodingBlock(nn.Module):
    """ReLU(MS-TCN(SA-GC(x)) + residual(x)); InfoGCN's MS-TCN ends with its own ReLU."""

    channels: int
    num_heads: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        y = SAGC(self.channels, self.num_heads, name="agcn")(x, train)
        y = MSTCN(
            self.channels,
            stride=self.stride,
            final_relu=True,
            torch_default_init=True,
            name="tcn",
        )(y, train)
        return block_output(y, x, self.stride, train)


def block_plan(base_channels: int) -> list[tuple[int, int]]:
    """(channels, stride) of blocks l1..l9."""
    c = base_channels
    return [(c, 1)] * 3 + [(2 * c, 2)] + [(2 * c, 1)] * 2 + [(4 * c, 2)] + [(4 * c, 1)] * 2


class InfoGCN(Backbone, kw_only=True):
    """InfoGCN on x (N, C, T, V, M); logits (N, num_classes), optionally with features.

    features: the l9 map as (N, M, T', V, C'), channels-last, for the CSRE head.
    k selects the k-th-mode input transform; noise_ratio scales the latent noise in training.
    """

    base_channels: int = 64
    num_heads: int = 3
    k: int = 1
    noise_ratio: float = 0.5

    def feature_rows(self, x: jax.Array, train: bool) -> jax.Array:
        self.check_input(x)
        n, _, t, v, m = x.shape
        x = jnp.einsum("uw,nmtwc->nmtuc", kth_mode_matrix(self.layout, self.k), person_rows(x))
        x = embed_joints(self, x, self.base_channels, train)
        x = x.reshape(n * m, t, v, self.base_channels)  # batch row n*M + m
        block_class = self.block_class(EncodingBlock)
        for i, (channels, stride) in enumerate(block_plan(self.base_channels)):
            x = block_class(channels, self.num_heads, stride, name=f"l{i + 1}")(x, train)
        return x

    def head(self, feats: jax.Array, train: bool) -> jax.Array:
        """Pool over (T', V) then persons; ReLU(fc), dropout, z from fc_mu (and fc_logvar when
        training), decoder. Eval uses z = mu."""
        pooled = feats.mean(axis=(2, 3)).mean(axis=1)
        width = pooled.shape[-1]

        def linear(name):
            return nn.Dense(
                width, kernel_init=_xavier_relu, bias_init=torch_default_bias(width), name=name
            )

        h = nn.relu(linear("fc")(pooled))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        z = linear("fc_mu")(h)
        logvar = linear("fc_logvar")(h)  # created in eval too: it is in the checkpoint
        if train:
            std = jnp.minimum(jnp.exp(self.noise_ratio * logvar), 100.0)
            z = z + std * jax.random.normal(self.make_rng("dropout"), z.shape, z.dtype)
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(math.sqrt(2.0 / self.num_classes)),
            bias_init=torch_default_bias(width),
            name="decoder",
        )(z)


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> InfoGCN:
    """Registry constructor: the k-th-mode transform comes from the layout (outward_binary)."""
    return InfoGCN(
        num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs
    )


# Official state_dict key and layout kind of each Flax variable: these modules are the
# official model's Linears, every other 2-d kernel a 1x1 Conv2d.
torch_key = torch_io.default_key_fn(
    "to_joint_embedding", "to_qk", "fc", "fc_mu", "fc_logvar", "decoder"
)
