"""2S-AGCN (Shi et al., CVPR 2019; lshiwjx/2s-AGCN), channels-last, loadable from the official
checkpoints.

Module names mirror the official PyTorch attributes (see layers.py) so torch_key below is
almost the identity.
"""

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.layouts import Layout, load_layout
from csre_jax.models import ctrgcn, graphs
from csre_jax.models.ctrgcn import CTRGCN
from csre_jax.models.layers import UnitTCN, graph_conv_output, kaiming_fan_out

NUM_SUBSETS = 3
TEMPORAL_KERNEL = 9


class Conv1x1Weights(nn.Module):
    """The kernel (Cin, Cout) and bias of one official 1x1 conv, returned rather than applied.

    The three subsets' convs keep their own official names (conv_d_0 is conv_d.0) while the
    unit stacks their weights and runs one matmul for all of them.
    """

    channels: int
    kernel_init: nn.initializers.Initializer = kaiming_fan_out

    @nn.compact
    def __call__(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", self.kernel_init, (in_channels, self.channels))
        bias = self.param("bias", nn.initializers.zeros, (self.channels,))
        return kernel, bias


def _stacked(convs: list[Conv1x1Weights], in_channels: int) -> tuple[jax.Array, jax.Array]:
    """Kernels concatenated along the output axis, biases likewise."""
    kernels, biases = zip(*(conv(in_channels) for conv in convs), strict=True)
    return jnp.concatenate(kernels, axis=1), jnp.concatenate(biases)


class UnitGCN(nn.Module):
    """Adaptive graph convolution: BN(sum_s conv_d[s](x . (C_s + A_s + PA_s))) + down(x), ReLU.

    C_s = softmax over the source joint v of (conv_a[s](x) . conv_b[s](x)) / (ic * T), with T
    this layer's length; aggregation is out[w] = sum_v x[v] * adj[v, w] (the transpose of
    CTR-GCN's convention).
    """

    channels: int
    layout: Layout | str

    @nn.compact
    def __call__(self, x, train: bool):
        n, t, v, cin = x.shape
        ic = self.channels // 4
        a_fixed = graphs.spatial_partition(self.layout)  # not a parameter in the official code
        pa = self.param("PA", nn.initializers.constant(1e-6), a_fixed.shape)
        embed = [
            Conv1x1Weights(ic, name=f"conv_{ab}_{s}") for ab in "ab" for s in range(NUM_SUBSETS)
        ]
        kernel, bias = _stacked(embed, cin)
        # 2-D and batched matmuls, not N-D @ 2-D or an einsum, which jax2onnx writes as ONNX's
        # Einsum (slow in onnxruntime): logits[n, s, v, w] = sum_(t, c) a[t, v, c] b[t, w, c]
        ab = (x.reshape(-1, cin) @ kernel + bias).reshape(n, t, v, 2, NUM_SUBSETS, ic)
        a, b = ab.transpose(3, 0, 4, 2, 1, 5).reshape(2, n, NUM_SUBSETS, v, t * ic)
        logits = a @ jnp.swapaxes(b, -1, -2) / (ic * t)
        adj = jax.nn.softmax(logits, axis=-2) + (a_fixed + pa)
        # conv_d[s] Normal(0, sqrt(2 / (Cout * Cin * 3))): conv_branch_init, fan over subsets
        branch_init = nn.initializers.normal(math.sqrt(2.0 / (self.channels * cin * NUM_SUBSETS)))
        project = [
            Conv1x1Weights(self.channels, branch_init, name=f"conv_d_{s}")
            for s in range(NUM_SUBSETS)
        ]
        kernel, bias = _stacked(project, cin)  # (Cin, S*Cout)
        kernel = kernel.reshape(cin * NUM_SUBSETS, self.channels)  # rows (c, s)
        # Aggregate before projecting, as the official code: it keeps conv_d's bias outside
        # the graph product (adj's columns do not sum to 1) and contracts over the narrower Cin.
        # The graph product as a matmul, not an einsum: XLA runs both alike, but ONNX's
        # Einsum ran slower in onnxruntime (the model 1.9x XLA's time, now 1.5x).
        x_rows = x.transpose(0, 1, 3, 2).reshape(n, t * cin, v)
        z = x_rows @ adj.transpose(0, 2, 1, 3).reshape(n, v, NUM_SUBSETS * v)  # (c, s, w)
        z = jnp.swapaxes(z.reshape(n * t, cin * NUM_SUBSETS, v), 1, 2)
        y = z.reshape(n * t * v, cin * NUM_SUBSETS) @ kernel  # 2-D, a Gemm in ONNX
        y = y.reshape(n, t, v, self.channels) + bias.reshape(NUM_SUBSETS, -1).sum(0)
        return graph_conv_output(y, x, train)


class TCNGCN(ctrgcn.TCNGCN):
    """One block: ReLU(unit_tcn9(GCN(x)) + residual(x)); the temporal unit carries the stride.

    CTR-GCN's block with the adaptive graph unit and a kernel-9 temporal unit.
    """

    def gcn_unit(self) -> nn.Module:
        return UnitGCN(self.channels, self.layout, name="gcn1")

    def tcn_unit(self) -> nn.Module:
        return UnitTCN(self.channels, TEMPORAL_KERNEL, stride=self.stride, name="tcn1")


class AGCN(CTRGCN):
    """2S-AGCN on x (N, C, T, V, M): CTR-GCN's network (data BN, ten blocks, pooling, fc) with
    adaptive graph units and kernel-9 temporal convs. The official model has no dropout;
    `dropout` (default 0) is the shared head's."""

    block: ClassVar[type[nn.Module]] = TCNGCN


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> AGCN:
    """Registry constructor: the graph is the layout's own (the `ntu` layout has 2s-AGCN's
    NTU edges, `ucla` the NW-UCLA ones)."""
    return AGCN(
        num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs
    )


# The same keys as CTR-GCN's: module names follow the torch attributes, fc is the only Linear.
torch_key = ctrgcn.torch_key
