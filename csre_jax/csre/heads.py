"""Training-only embedding heads on a backbone's last feature map: STFD, the spatiotemporal
feature decomposition of the CSRE paper (the `std` module of the CSRE release's
model/Hyperformer.py), and a global head for the paper's global-contrast comparison.

Every head takes the map channels-last as (N, M, T', V, C), whatever the backbone, and
returns one (N, dim) embedding per bank. Persons are averaged after the head, as the
official code does (the head is affine, so this equals averaging first).

The official init loop re-initialises Conv2d and Linear only: STFD's 1x1 Conv1d layers keep
PyTorch's default Uniform(+-1/sqrt(fan_in)) for kernel and bias; its Linears get kaiming
normal (fan_out) weights and zero bias.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.models.layers import kaiming_fan_out, pointwise


class _DecomposedBranch(nn.Module):
    """Pool one axis away, reduce channels by a 1x1 conv, flatten channel-major, project."""

    pooled_axis: int  # axis of the (N, M, T', V, C) map averaged away
    reduction: int
    dim: int

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        channels = feature_map.shape[-1]
        x = feature_map.mean(axis=self.pooled_axis)  # (N, M, L, C)
        x = pointwise(channels // self.reduction, "reduce", torch_default_fan_in=channels)(x)
        n, m, length, reduced = x.shape
        x = jnp.swapaxes(x, -1, -2).reshape(n, m, reduced * length)  # flat index c * L + l
        x = nn.Dense(self.dim, kernel_init=kaiming_fan_out, name="project")(x)
        return x.mean(axis=1)


class STFD(nn.Module):
    """Spatiotemporal feature decomposition: a spatial and a temporal embedding.

    Spatial: time averaged away, so it describes joints; temporal: joints averaged away.
    Purely affine: no norm, no activation, no attention (the official module has none).
    """

    dim: int = 256
    reduction: int = 8
    branches: tuple[str, ...] = ("spatial", "temporal")

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> dict[str, jax.Array]:
        pooled_axis = {"spatial": 2, "temporal": 3}
        return {
            branch: _DecomposedBranch(pooled_axis[branch], self.reduction, self.dim, name=branch)(
                feature_map
            )
            for branch in self.branches
        }


class GlobalHead(nn.Module):
    """The paper's 'global contrast' rows: pooled feature, then a Linear like STFD's."""

    dim: int = 256

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        pooled = feature_map.mean(axis=(1, 2, 3))
        return nn.Dense(self.dim, kernel_init=kaiming_fan_out, name="project")(pooled)
