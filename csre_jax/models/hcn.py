"""HCN (Li et al., IJCAI 2018) as in huguyuehuhu/HCN-pytorch, channels-last, loadable from its
checkpoints.

Each official nn.Sequential (conv1 .. conv6, fc7) is a `Stage` module of the same name whose
layer is called "0", so keys read `conv3.0.weight` and capture_intermediates taps the
Sequential's output; conv2/conv2m/fc8 are bare layers. No BatchNorm: variables are 'params'
only.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from csre_jax.errors import UserError
from csre_jax.layouts import Layout, load_layout
from csre_jax.models import torch_io
from csre_jax.models.layers import Backbone, person_rows

# Every Conv2d and Linear: Glorot-uniform over torch's fans (in/out x kernel area), bias 0.
glorot = nn.initializers.xavier_uniform()
# Four 2x2 max-pools in a row (conv3 .. conv6) need at least 16 frames.
MIN_FRAMES = 16


def motion_resize_matrix(num_frames: int) -> np.ndarray:
    """(T, T-1) matrix of the official F.upsample(bilinear, align_corners=False) from T-1
    frame differences back to T frames: half-pixel centres, source clamped at 0 and T-2."""
    t = np.arange(num_frames)
    src = np.maximum((t + 0.5) * (num_frames - 1) / num_frames - 0.5, 0.0)
    lower = np.floor(src).astype(int)
    upper = np.minimum(lower + 1, num_frames - 2)
    frac = src - lower
    matrix = np.zeros((num_frames, num_frames - 1))
    np.add.at(matrix, (t, lower), 1 - frac)
    np.add.at(matrix, (t, upper), frac)
    return matrix.astype(np.float32)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """MaxPool2d(2) on (B, H, W, C), flooring odd sizes, as a reshape and max.

    Exact for stride = kernel and no padding; its gradient avoids reduce_window's
    select_and_scatter, which XLA:CPU runs slowly. Tied maxima share the gradient where torch
    gives it all to the first; ties need equal values (ReLU zeros, whose gradient the ReLU
    drops, or the near-constant maps of an all-zero padded person).
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Stage(nn.Module):
    """One official Sequential: its layer "0", then ReLU, dropout, 2x2 max-pool where it has
    them. kernel_size None is a Linear or a 1x1 conv, both a matmul over channels.

    On maps the dropout is Dropout2d (whole channels of a sample); on vectors, element-wise.
    """

    channels: int
    kernel_size: tuple[int, int] | None = None
    relu: bool = False
    dropout: float = 0.0
    pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kernel_size is None:
            x = nn.Dense(self.channels, kernel_init=glorot, name="0")(x)
        else:
            pads = tuple((k // 2, k // 2) for k in self.kernel_size)
            layer = nn.Conv(
                self.channels, self.kernel_size, padding=pads, kernel_init=glorot, name="0"
            )
            x = layer(x)
        if self.relu:
            x = nn.relu(x)
        spatial_axes = (1, 2) if x.ndim == 4 else ()
        x = nn.Dropout(self.dropout, broadcast_dims=spatial_axes)(x, deterministic=not train)
        return max_pool_2x2(x) if self.pool else x


class HCN(Backbone, kw_only=True):
    """HCN on x (N, C, T, V, M); logits (N, num_classes), optionally with features.

    conv2 outputs T channels (the official window_size), so T must equal the checkpoint's
    window; after conv2 the joints become channels and (time, conv2 channel) the image.
    Persons share all weights (rows n*M + m of one batch) and are merged by an element-wise
    max after conv6, for any M >= 1 (the official code hard-codes M = 2).

    features, for the CSRE head: the per-person conv6 maps (N, M, T/16, T/16, 4*out_channels),
    exactly what the max merges and fc7 then flattens. Why this map: it is the last
    spatio-temporal one (fc7 destroys both axes), like the last block of the GCNs. Why per
    person: the heads average persons after their own pooling, as for the GCNs; the max-merged
    map would be a different, non-affine summary. What the STFD branches then mean: axis 2 is
    still time, but the joint axis was turned into conv3's channels, so axis 3, standing in for
    joints, is conv2's co-occurrence-feature axis; the 'spatial' branch describes those global
    co-occurrence features averaged over time, the 'temporal' branch their time course.
    """

    out_channels: int = 64
    hidden: int = 512
    dropout: float = 0.5

    def feature_rows(self, x: jax.Array, train: bool) -> jax.Array:
        self.check_input(x)
        n, c, t, v, m = x.shape
        if t < MIN_FRAMES:
            raise UserError(f"HCN needs T >= {MIN_FRAMES} frames (four 2x2 pools), got {t}")
        x = person_rows(x).reshape(n * m, t, v, c)  # batch row n*M + m
        motion = jnp.einsum("st,btvc->bsvc", motion_resize_matrix(t), x[:, 1:] - x[:, :-1])
        width = self.out_channels
        stage = self.block_class(Stage)
        conv3x3 = functools.partial(stage, kernel_size=(3, 3), pool=True)

        def stream(h, suffix):
            h = stage(width, relu=True, name=f"conv1{suffix}")(h, train)
            h = nn.Conv(
                t, (3, 1), padding=((1, 1), (0, 0)), kernel_init=glorot, name=f"conv2{suffix}"
            )(h)
            h = jnp.swapaxes(h, 2, 3)  # (B, T, window, V): joints become channels
            h = conv3x3(width // 2, name=f"conv3{suffix}")(h, train)
            return conv3x3(width, dropout=self.dropout, name=f"conv4{suffix}")(h, train)

        h = jnp.concatenate([stream(x, ""), stream(motion, "m")], axis=-1)
        h = conv3x3(2 * width, relu=True, dropout=self.dropout, name="conv5")(h, train)
        return conv3x3(4 * width, relu=True, dropout=self.dropout, name="conv6")(h, train)

    def head(self, feats: jax.Array, train: bool) -> jax.Array:
        """Persons merged by an element-wise max, flattened in torch's (C, H, W) order, fc7, fc8."""
        merged = jnp.transpose(feats.max(axis=1), (0, 3, 1, 2)).reshape(feats.shape[0], -1)
        h = Stage(self.hidden, relu=True, dropout=self.dropout, name="fc7")(merged, train)
        return nn.Dense(self.num_classes, kernel_init=glorot, name="fc8")(h)


def create(*, num_classes: int, layout: Layout | str, num_person: int, **kwargs) -> HCN:
    """Registry constructor: the layout fixes the joint count (conv3's input channels); HCN
    uses no edges."""
    return HCN(num_classes=num_classes, layout=load_layout(layout), num_person=num_person, **kwargs)


# Official state_dict key and layout kind of each Flax variable; fc7.0 and fc8 are the Linears.
torch_key = torch_io.default_key_fn("fc7", "fc8")
