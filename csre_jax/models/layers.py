"""PyTorch-compatible building blocks shared by the skeleton backbones.

Everything is channels-last: feature maps are (N*M, T, V, C). Parity with the official
PyTorch code lives here (BatchNorm defaults, symmetric explicit temporal padding, -inf
max-pool padding, PyTorch initialisers), so each backbone gets it by construction.

Flax module names follow the PyTorch attribute names, with a Sequential index `i` written as
`_i` (`branches_0_3` is `branches.0.3`); torch_io relies on that to map checkpoint keys.
"""

import contextlib
import contextvars
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.layouts import Layout
from csre_jax.models import accumulation_dtype

# Conv2d/Linear weights in the official GCN code: kaiming normal, mode fan_out (not truncated).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv/Linear bias init, U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_around(mean: float, stddev: float) -> nn.initializers.Initializer:
    """Normal(mean, stddev), e.g. the Normal(1, 0.02) BN scales of the MS-TCN."""

    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


class BatchNorm(nn.Module):
    """PyTorch's BatchNorm over the last axis, running statistics included.

    Training normalises with the batch mean and the biased batch variance, both computed in
    float32 (float64 for float64 inputs) in two passes (the one-pass E[x^2] - E[x]^2 loses
    digits where a channel's mean is large against its spread, as in the input BatchNorm);
    the running variance takes the unbiased one, var * n / (n - 1), as PyTorch does, so
    trained statistics and exported checkpoints carry PyTorch's numbers. momentum is
    PyTorch's (the new batch's weight).
    Variables are Flax's: params scale/bias, batch_stats mean/var.
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", self.bias_init, (channels,), jnp.float32)
        stats_dtype = accumulation_dtype(x.dtype)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes, dtype=stats_dtype)
            var = jnp.mean(jnp.square(x.astype(stats_dtype) - mean), axes)
            count = x.size // channels
            if count < 2:
                raise ValueError(
                    f"BatchNorm in training needs more than one value per channel, got input "
                    f"{x.shape}: use a batch of at least 2"
                )
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (count / (count - 1))
        y = (x.astype(stats_dtype) - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(jnp.result_type(x.dtype, scale.dtype))


def data_batch_norm(bn: BatchNorm, x: jax.Array) -> jax.Array:
    """The input BatchNorm1d of the GCN backbones on x (N, M, T, V, C).

    PyTorch normalises M*V*C channels with index m*V*C + v*C + c and statistics over (N, T);
    flattening (M, V, C) in that order reproduces both.
    """
    n, m, t, v, c = x.shape
    h = jnp.transpose(x, (0, 2, 1, 3, 4)).reshape(n, t, m * v * c)
    h = bn(h)
    return jnp.transpose(h.reshape(n, t, m, v, c), (0, 2, 1, 3, 4))


def embed_joints(module: nn.Module, x: jax.Array, channels: int, train: bool) -> jax.Array:
    """Per-joint Linear embedding, learned joint positions, then the data BN (BlockGCN, InfoGCN).

    x is (N, M, T, V, C); the Linear, `pos_embedding` and `data_bn` are created in `module`'s
    scope under their official names.
    """
    fan_in = x.shape[-1]
    h = pointwise(channels, "to_joint_embedding", torch_default_fan_in=fan_in)(x)
    pos = module.param("pos_embedding", nn.initializers.normal(1.0), (1, x.shape[3], channels))
    h = h + pos[0]
    return data_batch_norm(BatchNorm(use_running_average=not train, name="data_bn"), h)


def graph_conv_output(y: jax.Array, x: jax.Array, train: bool, bn_scale: float = 1e-6) -> jax.Array:
    """The end of every GCN unit: ReLU(BN(y) + down(x)), down a 1x1 conv + BN where the width
    changes (identity otherwise). Official code initialises that BN's scale to 1e-6 (BlockGCN
    to 1), so a fresh unit starts close to its shortcut. Creates `bn`, `down_0`, `down_1`."""
    channels = y.shape[-1]
    y = BatchNorm(
        use_running_average=not train, scale_init=nn.initializers.constant(bn_scale), name="bn"
    )(y)
    if x.shape[-1] != channels:
        x = pointwise(channels, "down_0")(x)
        x = BatchNorm(use_running_average=not train, name="down_1")(x)
    return nn.relu(y + x)


def block_output(y: jax.Array, x: jax.Array, stride: int, train: bool) -> jax.Array:
    """The end of every block: ReLU(y + residual(x)), the residual an identity, or a strided
    unit_tcn(k=1) (`residual`) where the width or the frame rate changes."""
    if x.shape[-1] == y.shape[-1] and stride == 1:
        return nn.relu(y + x)
    return nn.relu(y + UnitTCN(y.shape[-1], 1, stride=stride, name="residual")(x, train))


def person_rows(x: jax.Array) -> jax.Array:
    """(N, C, T, V, M) -> (N, M, T, V, C): the one layout change; rows flatten as n*M + m."""
    return jnp.transpose(x, (0, 4, 2, 3, 1))


def normalized_person_rows(x: jax.Array, train: bool) -> jax.Array:
    """x (N, C, T, V, M) through the data BN (`data_bn`) to (N*M, T, V, C) rows n*M + m."""
    n, c, t, v, m = x.shape
    h = data_batch_norm(BatchNorm(use_running_average=not train, name="data_bn"), person_rows(x))
    return h.reshape(n * m, t, v, c)


def classify(
    feats: jax.Array, num_classes: int, dropout: float, train: bool, name: str = "fc"
) -> jax.Array:
    """The GCN backbones' head on the last map (N, M, T', V, C): mean over (T', V), then over
    persons with equal weight (zero-padded persons included), dropout, Linear.

    The Linear has the official Normal(0, sqrt(2/classes)) weights and PyTorch's default bias;
    call it inside a compact method so it is created as the backbone's `fc`.
    """
    pooled = feats.mean(axis=(2, 3)).mean(axis=1)
    pooled = nn.Dropout(dropout)(pooled, deterministic=not train)
    return nn.Dense(
        num_classes,
        kernel_init=nn.initializers.normal(math.sqrt(2.0 / num_classes)),
        bias_init=torch_default_bias(pooled.shape[-1]),
        name=name,
    )(pooled)


class Backbone(nn.Module, kw_only=True):
    """What every backbone shares: its common fields, the input check, the head and the outputs.

    A backbone maps x (N, C, T, V, M) to logits (N, num_classes); with return_features it
    returns (logits, features), features its last spatio-temporal map (N, M, T', V', C'),
    channels-last, where CSRE's heads attach. A subclass computes that map as rows n*M + m,
    (N*M, T', V', C'), in `feature_rows`; `head` turns the map into logits, by default with
    the GCN head `classify`. Fields are keyword-only (the registry passes keywords), so each
    subclass adds its own after these. `layout` is the skeleton: V and every graph-dependent
    constant come from it; C is in_channels (3 for x, y, z or x, y, score; 2 for x, y).
    `remat` trades compute for memory (`block_class`).
    """

    num_classes: int
    num_person: int
    layout: Layout
    in_channels: int = 3
    dropout: float = 0.0
    remat: bool = False

    def block_class(self, module_class: type[nn.Module]) -> type[nn.Module]:
        """The class of the backbone's blocks; with `remat`, blocks that keep only their input
        for the backward pass and recompute the rest there (`nn.remat`): activation memory of
        one block instead of all, for about one more forward pass. Same variables and names,
        so checkpoints load either way. The block's call must be (x, train)."""
        return nn.remat(module_class, static_argnums=(2,)) if self.remat else module_class

    def check_input(self, x: jax.Array) -> None:
        """Refuse an input whose (C, V, M) do not fit the model, naming what was expected."""
        expected = (self.in_channels, self.layout.num_joints, self.num_person)
        if x.ndim != 5 or (x.shape[1], x.shape[3], x.shape[4]) != expected:
            joints = ""
            if x.ndim == 5 and x.shape[3] != expected[1]:
                joints = (
                    f": the layout {self.layout.name!r} has {expected[1]} joints, "
                    f"the input {x.shape[3]}"
                )
            raise ValueError(
                f"{type(self).__name__} expects x (N, C, T, V, M) with (C, V, M) = {expected}, "
                f"got {x.shape}{joints}"
            )

    def feature_rows(self, x: jax.Array, train: bool) -> jax.Array:
        """The last map of x as rows n*M + m, (N*M, T', V', C'); each backbone defines it."""
        raise NotImplementedError

    def head(self, feats: jax.Array, train: bool) -> jax.Array:
        """Logits of the map (N, M, T', V', C'): `classify`, whose Linear is `fc`."""
        return classify(feats, self.num_classes, self.dropout, train)

    def outputs(self, rows: jax.Array, train: bool, return_features: bool):
        """Logits of the rows (N*M, T', V', C'), with the map (N, M, ...) if return_features."""
        feats = rows.reshape(-1, self.num_person, *rows.shape[1:])
        logits = self.head(feats, train)
        return (logits, feats) if return_features else logits

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        return self.outputs(self.feature_rows(x, train), train, return_features)


# Whether TemporalConv traces as a 2-D convolution (for ONNX) instead of the 1-D one.
_TEMPORAL_CONV_2D = contextvars.ContextVar("temporal_conv_2d", default=False)


@contextlib.contextmanager
def temporal_conv_2d():
    """Within it, TemporalConv traces as one 2-D convolution over (T, V), same variables and
    results. onnxruntime runs the 1-D form (B * V sequences of a few frames) as as many
    small matrix products, 1.9x XLA's time for 2S-AGCN at batch 16; the exporter to ONNX
    traces in this form."""
    token = _TEMPORAL_CONV_2D.set(True)
    try:
        yield
    finally:
        _TEMPORAL_CONV_2D.reset(token)


class TemporalConv(nn.Module):
    """Conv over T with kernel (k, 1) on (B, T, V, C), PyTorch's symmetric padding.

    The variables are nn.Conv's (kernel (k, 1, Cin, Cout), bias), but it runs as a 1-D
    convolution over the B * V joint sequences: XLA:CPU's 2-D convolution path is up to
    20x slower on these shapes than its 1-D one, which matches oneDNN. Kaiming init, or
    PyTorch's default given the fan-in (Cin * k). Never "SAME": for even T and stride 2 it
    pads asymmetrically and shifts every window.
    """

    channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    torch_default_fan_in: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, v, cin = x.shape
        kernel_init, bias_init = kaiming_fan_out, nn.initializers.zeros
        if self.torch_default_fan_in:
            kernel_init = torch_default_kernel
            bias_init = torch_default_bias(self.torch_default_fan_in)
        kernel = self.param("kernel", kernel_init, (self.kernel_size, 1, cin, self.channels))
        bias = self.param("bias", bias_init, (self.channels,))
        pad = (self.kernel_size - 1) * self.dilation // 2
        if _TEMPORAL_CONV_2D.get():
            y = jax.lax.conv_general_dilated(
                x,
                kernel.astype(x.dtype),
                window_strides=(self.stride, 1),
                padding=((pad, pad), (0, 0)),
                rhs_dilation=(self.dilation, 1),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            return y + bias.astype(y.dtype)
        sequences = jnp.swapaxes(x, 1, 2).reshape(b * v, t, cin)
        y = jax.lax.conv_general_dilated(
            sequences,
            kernel[:, 0].astype(x.dtype),
            window_strides=(self.stride,),
            padding=((pad, pad),),
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        y = jnp.swapaxes(y.reshape(b, v, -1, self.channels), 1, 2)
        return y + bias.astype(y.dtype)


def temporal_max_pool3(x: jax.Array, stride: int) -> jax.Array:
    """MaxPool kernel (3, 1), padding (1, 0) with -inf, stride (s, 1), on (B, T, V, C).

    Written as the max of three shifted copies: XLA:CPU runs the gradient of reduce_window
    (select_and_scatter) about 10x slower. Tied maxima share the gradient instead of the first
    one taking it all; after a ReLU the ties are zeros, whose gradient the ReLU drops anyway.
    """
    pad = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)), constant_values=-jnp.inf)
    y = jnp.maximum(jnp.maximum(pad[:, :-2], pad[:, 1:-1]), pad[:, 2:])
    return y[:, ::stride]


def pointwise(channels: int, name: str, torch_default_fan_in: int | None = None) -> nn.Dense:
    """A 1x1 convolution (or a per-position Linear) of the official code as a matmul over
    channels, `channels` outputs.

    Initialised as the GCN repos re-initialise convs (kaiming fan_out, bias 0), or, given the
    layer's fan-in, with PyTorch's defaults where a repo keeps them.
    """
    if torch_default_fan_in:
        return nn.Dense(
            channels,
            kernel_init=torch_default_kernel,
            bias_init=torch_default_bias(torch_default_fan_in),
            name=name,
        )
    return nn.Dense(channels, kernel_init=kaiming_fan_out, name=name)


class GroupedPointwise(nn.Module):
    """A 1x1 Conv2d with `groups` contiguous channel groups, as one matmul batched over the
    groups, moved first.

    XLA:CPU runs grouped convolutions several times slower than dense ones; a dot over
    reshaped groups is fast on every backend. Equal batch dimensions on both sides keep it an
    ONNX MatMul: jax2onnx writes a broadcasting product as ONNX's Einsum, which onnxruntime
    ran slowly (a third of Hyperformer's time). The kernel is (Cin/groups, Cout), the PyTorch
    weight (Cout, Cin/groups, 1, 1) transposed, so checkpoints map like any 1x1 conv.
    """

    channels: int
    groups: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = kaiming_fan_out
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin, g = x.shape[-1], self.groups
        if cin % g or self.channels % g:
            raise ValueError(f"{cin} -> {self.channels} channels do not split into {g} groups")
        kernel = self.param("kernel", self.kernel_init, (cin // g, self.channels))
        kernel = kernel.reshape(cin // g, g, -1).transpose(1, 0, 2).astype(x.dtype)
        rows = x.reshape(-1, g, cin // g).transpose(1, 0, 2)  # (G, N, Cin/G)
        y = (rows @ kernel).transpose(1, 0, 2).reshape(*x.shape[:-1], self.channels)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.channels,)).astype(x.dtype)
        return y


class UnitTCN(nn.Module):
    """unit_tcn / TemporalConv: temporal conv then BatchNorm, no activation."""

    channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    bn_scale_init: nn.initializers.Initializer = nn.initializers.ones
    torch_default_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = TemporalConv(
            self.channels,
            self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            torch_default_fan_in=x.shape[-1] * self.kernel_size
            if self.torch_default_init
            else None,
            name="conv",
        )(x)
        return BatchNorm(use_running_average=not train, scale_init=self.bn_scale_init, name="bn")(x)


class MSTCN(nn.Module):
    """Multi-scale temporal conv (CTR-GCN, Hyperformer, BlockGCN, InfoGCN).

    Branches, concatenated in this order along channels, each with an equal share of them:
    one per dilation (1x1 + BN + ReLU, then a strided dilated temporal conv + BN), a max-pool
    branch (1x1 + BN + ReLU, max-pool (3, 1) with -inf padding, BN), and a strided 1x1 + BN.
    InfoGCN's copy ends with a ReLU (final_relu) and keeps PyTorch's default initialisation
    (torch_default_init); the others have no activation there and are re-initialised
    (kaiming convs, BN scales from Normal(1, 0.02)).
    """

    channels: int
    kernel_size: int = 5
    stride: int = 1
    dilations: tuple[int, ...] = (1, 2)
    final_relu: bool = False
    torch_default_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        num_branches = len(self.dilations) + 2
        if self.channels % num_branches:
            raise ValueError(f"MSTCN channels {self.channels} not divisible by {num_branches}")
        width = self.channels // num_branches

        default = self.torch_default_init
        bn_scale_init = nn.initializers.ones if default else normal_around(1.0, 0.02)

        def bn(name):
            return BatchNorm(use_running_average=not train, scale_init=bn_scale_init, name=name)

        def reduce(h, b):
            h = pointwise(width, f"branches_{b}_0", h.shape[-1] if default else None)(h)
            return bn(f"branches_{b}_1")(h)

        outs = []
        for b, dilation in enumerate(self.dilations):
            h = nn.relu(reduce(x, b))
            tcn = UnitTCN(
                width,
                self.kernel_size,
                stride=self.stride,
                dilation=dilation,
                bn_scale_init=bn_scale_init,
                torch_default_init=default,
                name=f"branches_{b}_3",
            )
            outs.append(tcn(h, train))
        b = len(self.dilations)
        h = nn.relu(reduce(x, b))
        h = temporal_max_pool3(h, self.stride)
        outs.append(bn(f"branches_{b}_4")(h))
        outs.append(reduce(x[:, :: self.stride], b + 1))
        y = jnp.concatenate(outs, axis=-1)
        return nn.relu(y) if self.final_relu else y
