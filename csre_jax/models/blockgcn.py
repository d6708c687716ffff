"""BlockGCN (Zhou et al., CVPR 2024), channels-last, loadable from the official checkpoints.

Module names mirror the official PyTorch attributes (see layers.py) so torch_key below is
almost the identity. The persistent-homology descriptor of the official topology branch
(torch-topological) is computed in JAX: 0-dimensional Vietoris-Rips deaths are the edge
lengths of a minimum spanning tree.
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
    BatchNorm,
    block_output,
    embed_joints,
    graph_conv_output,
    kaiming_fan_out,
    person_rows,
    pointwise,
)

NUM_SUBSETS = 3
NUM_TOPO_ELEMENTS = 64  # StructureElementLayer(n_elements=64); TopoTrans maps 64 -> C


def mst_edge_lengths(points: jax.Array) -> jax.Array:
    """(N, P, D) points -> (N, P - 1) edge lengths of each sample's Euclidean minimum spanning tree.

    Prim's algorithm, one fori_loop over the whole batch: jax2onnx exports a loop but not a
    vmapped one, and it takes values the body closes over for constants, so dist is carried.
    Only the multiset of lengths is meaningful. Distances are plain differences, as torch.cdist
    computes them for up to 25 points (for more, torch.cdist switches to a matmul form that
    differs in rounding only).
    """
    dist = jnp.sqrt(jnp.sum((points[:, :, None, :] - points[:, None, :, :]) ** 2, axis=-1))
    num = points.shape[1]

    def add_nearest(i, carry):
        dist, in_tree, nearest, lengths = carry
        outside = jnp.where(in_tree, jnp.inf, nearest)
        j = jnp.argmin(outside, axis=1, keepdims=True)  # (N, 1)
        lengths = jnp.where(jnp.arange(num - 1) == i, outside.min(axis=1, keepdims=True), lengths)
        row = jnp.take_along_axis(dist, j[:, :, None], axis=1)[:, 0]  # dist[n, j_n]
        return dist, in_tree | (jnp.arange(num) == j), jnp.minimum(nearest, row), lengths

    in_tree = jnp.broadcast_to(jnp.arange(num) == 0, dist.shape[:2])
    lengths = jnp.zeros((dist.shape[0], num - 1), dist.dtype)
    carry = (dist, in_tree, dist[:, 0], lengths)
    return jax.lax.fori_loop(0, num - 1, add_nearest, carry)[3]


def persistence_deaths(joint: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Finite 0-dim VR deaths of each sample of joint (N, C, T, V, M): ((N, V-1), valid mask).

    Joints are averaged over persons and time, their pairwise distances (N, V, V) are min-max
    scaled with the min and max of the whole batch, and the V rows of each sample's matrix are
    taken as points in R^V. Births are 0 and the deaths are the MST edge lengths; zero-length
    edges (duplicate points) give no pair, so they are marked invalid.
    """
    centre = joint.mean(axis=(2, 4))  # (N, C, V)
    dist = jnp.sqrt(jnp.sum((centre[:, :, :, None] - centre[:, :, None, :]) ** 2, axis=1))
    dist = (dist - dist.min()) / (dist.max() - dist.min())
    deaths = mst_edge_lengths(dist)
    return deaths, deaths > 0


def topology_descriptor(joint: jax.Array, centres: jax.Array, sharpness: jax.Array) -> jax.Array:
    """BlockGCN's Topo: structure-element encoding (N, E) of the persistence deaths.

    a[n, e] = sum over sample n's deaths l of exp(-(s[e,0]^2 c[e,0]^2 + s[e,1]^2 (c[e,1] - l)^2))
    + (Lmax - |L_n|): torch-topological pads every diagram to the batch's longest (Lmax) with
    NaN rows, and each padding row contributes exp(-nansum(NaN...)) = 1. Depends on the whole
    batch (scaling and Lmax). joint is data, so it is cut from the gradient (the persistence
    step has no useful one); centres and sharpness get theirs. A batch without any spread
    (all joints equal, e.g. zeros) cannot be scaled: every edge is then invalid and a = 0.
    """
    deaths, valid = persistence_deaths(jax.lax.stop_gradient(joint))
    deaths = jnp.where(valid, deaths, 0.0)  # keep dropped edges out of the gradient too
    count = valid.sum(axis=1).astype(centres.dtype)
    sq = sharpness**2
    energy = sq[:, 0] * centres[:, 0] ** 2 + sq[:, 1] * (centres[:, 1] - deaths[..., None]) ** 2
    kept = jnp.where(valid[..., None], jnp.exp(-energy), 0.0).sum(axis=1)  # (N, E)
    return kept + (count.max() - count)[:, None]


class StructureElements(nn.Module):
    """torch-topological's StructureElementLayer parameters: centres U[0, 1), sharpness 3."""

    num_elements: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        shape = (self.num_elements, 2)
        centres = self.param("centres", nn.initializers.uniform(1.0), shape)
        sharpness = self.param("sharpness", nn.initializers.constant(3.0), shape)
        return centres, sharpness


class Topo(nn.Module):
    """The topology vector a (N, 64) of the absolute joints, see topology_descriptor."""

    @nn.compact
    def __call__(self, joint):
        return topology_descriptor(joint, *StructureElements(NUM_TOPO_ELEMENTS, name="pl")())


class TopoTrans(nn.Module):
    """ReLU(BN1d(Linear(a))) per feature row, added to the map before a block."""

    channels: int

    @nn.compact
    def __call__(self, a_rows, train: bool):
        h = pointwise(self.channels, "mlp", torch_default_fan_in=a_rows.shape[-1])(a_rows)
        return nn.relu(BatchNorm(use_running_average=not train, name="bn")(h))


def _column_normalised(w: jax.Array) -> jax.Array:
    """w / (L2 norm over the source-joint axis -2 + 1e-4).

    The norm has torch.norm's zero gradient at 0 (the zero-initialised rpe), not NaN.
    """
    sq = jnp.sum(w * w, axis=-2, keepdims=True)
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return w / (norm + 1e-4)


class BlockGC(nn.Module):
    """Block graph convolution: per subset s and head g (contiguous channel group),
    z[t, w] = sum_v x[t, v] W[s, g, v, w], then a grouped 1x1 conv; BN of the sum over
    subsets, down-projection residual, ReLU.

    W[s, g] = fc1[s, g] and the hop embedding rpe[s, g, hops] each column-normalised over v.
    The official code uses 8 heads, or 1 for Cin <= 8, which no BlockGCN layer has; num_heads
    must divide the widths.
    """

    channels: int
    layout: Layout | str
    num_heads: int = 8

    @nn.compact
    def __call__(self, x, train: bool):
        b, t, v, cin = x.shape
        heads = self.num_heads
        hops = graphs.hop_distance(self.layout)
        fc1 = self.param(
            "fc1", lambda key: jnp.tile(jnp.eye(v), (NUM_SUBSETS, heads, 1, 1))
        )  # identity per (subset, head)
        rpe = self.param("rpe", nn.initializers.zeros, (NUM_SUBSETS, heads, int(hops.max()) + 1))
        weights = _column_normalised(fc1) + _column_normalised(rpe[:, :, hops])  # (S, H, V, W)
        ch, out = cin // heads, self.channels // heads
        fc2 = [
            _GroupedPointwiseVariables(self.channels, name=f"fc2_{s}")(ch)
            for s in range(NUM_SUBSETS)
        ]
        # Two matmuls batched over heads (then subsets), not einsums: onnxruntime runs ONNX's
        # Einsum several times slower, and XLA moved the einsums' axes anyway. The layouts keep
        # onnxruntime's Transposes to the input and the output: z[h, s, w, bt, c].
        rows = x.reshape(b * t, v, heads, ch).transpose(2, 1, 0, 3).reshape(heads, v, -1)
        graph = weights.transpose(1, 0, 3, 2).reshape(heads, NUM_SUBSETS * v, v)  # (h, s, w, v)
        z = (graph @ rows).reshape(heads * NUM_SUBSETS, v * b * t, ch)
        kernel = jnp.stack([k.reshape(ch, heads, out) for k, _ in fc2])  # (S, Cin/H, H, O/H)
        kernel = kernel.transpose(2, 0, 1, 3).reshape(heads * NUM_SUBSETS, ch, out)
        y = (z @ kernel.astype(z.dtype)).reshape(heads, NUM_SUBSETS, v, b * t, out).sum(1)
        y = y.transpose(2, 1, 0, 3).reshape(b, t, v, self.channels)
        y = y + sum(bias for _, bias in fc2).astype(z.dtype)
        return graph_conv_output(y, x, train, bn_scale=1.0)


class _GroupedPointwiseVariables(nn.Module):
    """The variables of a GroupedPointwise (kernel (Cin/groups, Cout), bias), with its init,
    for BlockGC's product that fuses the subsets."""

    channels: int

    @nn.compact
    def __call__(self, cin_per_group: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", kaiming_fan_out, (cin_per_group, self.channels))
        return kernel, self.param("bias", nn.initializers.zeros, (self.channels,))


class TCNGCN(nn.Module):
    """One block: ReLU(MS-TCN(BlockGC(x)) + residual(x)); the MS-TCN carries the stride."""

    channels: int
    layout: Layout | str
    num_heads: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        y = BlockGC(self.channels, self.layout, self.num_heads, name="gcn1")(x, train)
        y = MSTCN(self.channels, stride=self.stride, name="tcn1")(y, train)
        return block_output(y, x, self.stride, train)


def block_plan(base_channels: int) -> list[tuple[int, int]]:
    """(channels, stride) of blocks l1..l10; l8 strides too, but keeps the width."""
    c = base_channels
    return [(c, 1)] * 4 + [(2 * c, 2)] + [(2 * c, 1)] * 2 + [(2 * c, 2)] + [(2 * c, 1)] * 2


class BlockGCN(Backbone, kw_only=True):
    """BlockGCN on x (N, C, T, V, M) and the absolute joints joint (N, C, T, V, M).

    joint has x's in_channels: it is the skeleton the stream x was computed from, as the
    data pipeline hands it over, and the topology takes every channel as a coordinate (for
    x, y, score inputs the score too). The hop distances come from graphs.hyperformer_layout
    (NTU: hand tip and thumb on the hand).

    Returns logits (N, num_classes), optionally with features: the l10 map as
    (N, M, T', V, C'), channels-last, rows n*M + m, for the CSRE head.

    Batch-dependent quirks of the official model, reproduced on purpose:
    * the topology vector a of a sample depends on the other samples: the distance scaling
      uses the batch's min and max, and shorter persistence diagrams are padded to the
      batch's longest, each padding row adding 1;
    * TopoTrans tiles a (N, 64) M times along the batch, so feature row r = n*M + m gets
      a[r mod N], the vector of sample (n*M + m) mod N, not its own (the official
      concat([a, a]) for M = 2). With M = 1 (NW-UCLA) tiling is the identity and each sample
      gets its own vector.
    So logits change with batch composition and size; compare with PyTorch on equal batches.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ("joint",)

    base_channels: int = 128
    num_heads: int = 8

    @nn.compact
    def __call__(self, x, joint, train: bool = False, return_features: bool = False):
        self.check_input(x)
        n, c, t, v, m = x.shape
        if joint.shape != x.shape:
            raise ValueError(f"BlockGCN expects joint {x.shape} like x, got {joint.shape}")
        a_rows = jnp.tile(Topo(name="topo")(joint), (m, 1))  # row r gets a[r mod N]
        x = embed_joints(self, person_rows(x), self.base_channels, train)
        x = x.reshape(n * m, t, v, self.base_channels)  # batch row n*M + m
        graph = graphs.hyperformer_layout(self.layout)
        block_class = self.block_class(TCNGCN)
        for i, (channels, stride) in enumerate(block_plan(self.base_channels)):
            topo = TopoTrans(x.shape[-1], name=f"t{i}")(a_rows, train)
            block = block_class(channels, graph, self.num_heads, stride, name=f"l{i + 1}")
            x = block(x + topo[:, None, None, :], train)
        return self.outputs(x, train, return_features)


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> BlockGCN:
    """Registry constructor; the `ntu` layout gets the Hyperformer hand edges (hop table)."""
    return BlockGCN(
        num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs
    )


# Official state_dict key and layout kind of each Flax variable: these modules are the
# official model's Linears, every other 2-d kernel a 1x1 Conv2d.
torch_key = torch_io.default_key_fn("to_joint_embedding", "mlp", "fc")
