"""Hyperformer (Zhou et al., 2022) as released with CSRE, channels-last, loadable from the
official checkpoints.

Each block is hypergraph self-attention over the joints of every frame, then the MS-TCN.
Module names mirror the official PyTorch attributes, so torch_key is the default mapping.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csre_jax.layouts import Layout, load_layout
from csre_jax.models import graphs, torch_io
from csre_jax.models.layers import (
    MSTCN,
    Backbone,
    GroupedPointwise,
    block_output,
    normalized_person_rows,
    torch_default_bias,
    torch_default_kernel,
)

# Joint groups (hyperedges) of the official configs: the built-in layouts' parts, named here
# for the configs. The NW-UCLA list is the joint/motion one; the bone configs use another
# (UCLA_BONE_JOINT_LABEL), passed as `joint_label`.
DEFAULT_JOINT_LABELS = {
    name: load_layout(name).joint_groups() for name in ("ntu_hyperformer", "ucla")
}
# NW-UCLA groups of the bone and bone-motion configs (an inconsistency of the release, kept).
UCLA_BONE_JOINT_LABEL = (0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 2, 2, 0, 2, 2, 2)
STRIDE_TWO_BLOCKS = (5, 8)


def torch_conv1x1(channels: int, name: str) -> nn.Dense:
    """A bias-free 1x1 Conv2d with PyTorch's default init (Hyperformer never re-initialises
    its convs), as a matmul over channels."""
    return nn.Dense(channels, use_bias=False, kernel_init=torch_default_kernel, name=name)


def group_matrices(joint_label: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(V, K) weights averaging each group's joints and the (K, V) one-hot that hands every
    joint its group's feature back."""
    label = np.asarray(joint_label)
    one_hot = np.eye(label.max() + 1, dtype=np.float32)[label]
    sizes = one_hot.sum(axis=0)
    if label.min() < 0 or not sizes.all():
        raise ValueError(f"joint_label must use every group 0..K-1, got {joint_label}")
    return one_hot / sizes, one_hot.T


class MHSA(nn.Module):
    """Hypergraph multi-head self-attention over the joints of each frame (official `attn`).

    Per head: logit[u, w] = q_u.(k_w + rpe[hops[u, w]] + e_w) + w1.e_w, all scaled by
    head_dim^-1/2; out = proj((alpha * softmax_w(logit) + outer) @ v). Heads and (batch, time)
    are batch axes of the matmuls.
    """

    num_heads: int
    head_dim: int
    proj_groups: int
    layout: Layout | str

    @nn.compact
    def __call__(self, x, e):
        h, d = self.num_heads, self.head_dim
        dim = h * d
        hops = graphs.hop_distance(self.layout)
        num_joints = hops.shape[0]
        rpe = self.param("rpe", nn.initializers.zeros, (int(hops.max()) + 1, dim))
        w1 = self.param("w1", nn.initializers.zeros, (h, d))
        outer = self.param(
            "outer", lambda key: jnp.broadcast_to(jnp.eye(num_joints), (h, num_joints, num_joints))
        )
        alpha = self.param("alpha", nn.initializers.zeros, (1,))

        def heads(y):  # channel h*d + j -> head h, dim j
            return y.reshape(*y.shape[:-1], h, d)

        kv = torch_conv1x1(2 * dim, "kv")(x)  # channels [K | V]
        k, v = heads(kv[..., :dim]), heads(kv[..., dim:])
        q = heads(torch_conv1x1(dim, "q")(x))
        e = heads(e)
        pos = heads(jnp.take(rpe, hops, axis=0))  # (U, W, H, d)
        # Matmuls batched over (b, t, h), not einsums: XLA compiles both alike, but ONNX's
        # Einsum ran several times slower in onnxruntime than Transpose + MatMul.
        b, t, u = q.shape[:3]
        q_heads = q.transpose(0, 1, 3, 2, 4)  # (B, T, H, U, d)
        logits = q_heads @ (k + e).transpose(0, 1, 3, 4, 2)  # (B, T, H, U, W)
        q_joints = q.transpose(2, 3, 0, 1, 4).reshape(u, h, b * t, d)
        pos_logits = (q_joints @ pos.transpose(0, 2, 3, 1)).reshape(u, h, b, t, u)
        logits = logits + pos_logits.transpose(2, 3, 1, 0, 4)
        logits = logits + jnp.sum(e * w1, axis=-1).transpose(0, 1, 3, 2)[:, :, :, None, :]
        attn = nn.softmax(logits * d**-0.5, axis=-1)
        out = (alpha * attn + outer) @ v.transpose(0, 1, 3, 2, 4)  # (B, T, H, U, d)
        out = out.transpose(0, 1, 3, 2, 4).reshape(b * t * u, dim)
        return GroupedPointwise(
            dim,
            self.proj_groups,
            kernel_init=torch_default_kernel,
            bias_init=torch_default_bias(dim // self.proj_groups),
            name="proj",
        )(out).reshape(b, t, u, dim)


class UnitViT(nn.Module):
    """skip(x) + MHSA(LayerNorm(x), e), where the hyperedge feature e comes from the raw x:
    each group's mean joint through the bias-free pe_proj, handed to every joint of the group.
    No FFN (the official one is commented out)."""

    num_heads: int
    head_dim: int
    proj_groups: int
    layout: Layout | str
    joint_label: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        dim = self.num_heads * self.head_dim
        group_mean, to_joints = group_matrices(self.joint_label)
        groups = jnp.einsum("btvc,vk->btkc", x, group_mean)
        e = jnp.einsum("btkc,kv->btvc", torch_conv1x1(dim, "pe_proj")(groups), to_joints)
        normed = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm1")(x)
        att = MHSA(self.num_heads, self.head_dim, self.proj_groups, self.layout, name="attn")(
            normed, e
        )
        skip = x if x.shape[-1] == dim else torch_conv1x1(dim, "skip_proj")(x)
        return skip + att


class TCNViT(nn.Module):
    """One block: ReLU(MS-TCN(ViT(x)) + residual(x)); the MS-TCN carries the stride."""

    num_heads: int
    head_dim: int
    proj_groups: int
    layout: Layout | str
    joint_label: tuple[int, ...]
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        dim = self.num_heads * self.head_dim
        y = UnitViT(
            self.num_heads,
            self.head_dim,
            self.proj_groups,
            self.layout,
            self.joint_label,
            name="vit1",
        )(x)
        y = MSTCN(dim, stride=self.stride, name="tcn1")(y, train)
        return block_output(y, x, self.stride, train)


class Hyperformer(Backbone, kw_only=True):
    """Hyperformer on x (N, C, T, V, M); logits (N, num_classes), optionally with features.

    features: l10's map as (N, M, T', V, D), channels-last, where CSRE's STFD head attaches.
    The hop distances come from graphs.hyperformer_layout (NTU: hand tip and thumb on the
    hand). joint_label None means the layout's groups (Layout.joint_groups).
    """

    num_heads: int = 9
    head_dim: int = 24
    proj_groups: int = 6
    joint_label: tuple[int, ...] | None = None

    def feature_rows(self, x: jax.Array, train: bool) -> jax.Array:
        self.check_input(x)
        num_joints = self.layout.num_joints
        joint_label = self.joint_label
        if joint_label is None:
            joint_label = self.layout.joint_groups()
        if len(joint_label) != num_joints:
            raise ValueError(f"joint_label has {len(joint_label)} entries for {num_joints} joints")
        x = normalized_person_rows(x, train)
        block_class = self.block_class(TCNViT)
        for i in range(1, 11):
            x = block_class(
                self.num_heads,
                self.head_dim,
                self.proj_groups,
                graphs.hyperformer_layout(self.layout),
                tuple(joint_label),
                stride=2 if i in STRIDE_TWO_BLOCKS else 1,
                name=f"l{i}",
            )(x, train)
        return x


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> Hyperformer:
    """Registry constructor; the `ntu` layout gets the Hyperformer hand edges."""
    return Hyperformer(
        num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs
    )


# Official state_dict key and layout kind of each Flax variable; fc is the only Linear.
torch_key = torch_io.default_key_fn("fc")
