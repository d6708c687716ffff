"""Which formulation of the backbones' convolutions is fastest on this machine's XLA backend.

  python -m benchmarks.conv_forms            # a minute on 2 CPU cores
  python -m benchmarks.conv_forms --reps=10

XLA:CPU's 2-D convolution can be several times slower on these shapes than its 1-D
convolution and its matmuls, and the fastest form differs between processors, so the layers
choose by measurement (layers.TemporalConv runs the (k, 1) kernels as 1-D convolutions; HCN
keeps lax's 3x3 convolutions: as fast as im2col on an AVX-512 Xeon, 2.9x slower on AVX2 EPYC):
this prints each candidate's time and GFLOP/s for forward + backward (input and weight
gradients) on the shapes the backbones run:
  temporal: kernel (9, 1), 64 -> 64 channels on (N*M = 32, T = 64, V = 25), every GCN block;
  3x3:      kernel (3, 3), 32 -> 64 channels on (N*M = 32, 32, 32), HCN's conv3-conv6.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def conv_2d(x, w):
    """lax.conv_general_dilated on (B, H, W, C), the kernel as it is stored (kh, kw, in, out)."""
    kh, kw = w.shape[:2]
    pads = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_1d_over_columns(x, w):
    """A (k, 1) kernel as a 1-D convolution over the B * W columns: transpose, conv, transpose."""
    b, h, width, c = x.shape
    k = w.shape[0]
    columns = jnp.swapaxes(x, 1, 2).reshape(b * width, h, c)
    y = jax.lax.conv_general_dilated(
        columns, w[:, 0], (1,), ((k // 2, k // 2),), dimension_numbers=("NWC", "WIO", "NWC")
    )
    return jnp.swapaxes(y.reshape(b, width, h, -1), 1, 2)


def im2col(x, w):
    """The kh * kw shifted copies side by side on the channel axis, then one matmul."""
    kh, kw, cin, cout = w.shape
    _, h, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    patches = [padded[:, i : i + h, j : j + width] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(patches, axis=-1) @ w.reshape(kh * kw * cin, cout)


def matmul_then_shift(x, w):
    """One matmul to every tap's output channels, then the shifted sum of the taps."""
    kh, kw, cin, cout = w.shape
    b, h, width, _ = x.shape
    taps = (x @ jnp.transpose(w, (2, 0, 1, 3)).reshape(cin, -1)).reshape(b, h, width, kh, kw, cout)
    padded = jnp.pad(taps, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0), (0, 0), (0, 0)))
    return sum(padded[:, i : i + h, j : j + width, i, j] for i in range(kh) for j in range(kw))


FORMS = {
    "lax 2-D conv (NHWC)": conv_2d,
    "1-D conv over columns": conv_1d_over_columns,
    "im2col + matmul": im2col,
    "matmul, then shifted sum": matmul_then_shift,
}
SHAPES = {  # name: (input shape, kernel shape)
    "temporal (9, 1), 64 -> 64": ((32, 64, 25, 64), (9, 1, 64, 64)),
    "3x3, 32 -> 64": ((32, 32, 32, 32), (3, 3, 32, 64)),
}


def measure(form, x, w, reps: int) -> float:
    """Best seconds of forward + both gradients, compiled, over `reps` calls."""
    target = jnp.ones(form(x, w).shape)
    step = jax.jit(jax.grad(lambda x, w: (form(x, w) * target).sum(), argnums=(0, 1)))
    jax.block_until_ready(step(x, w))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(step(x, w))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; best of {args.reps}\n")
    print("| shape | form | ms | GFLOP/s |")
    print("|---|---|---|---|")
    for shape_name, (x_shape, w_shape) in SHAPES.items():
        x = jax.random.normal(jax.random.key(0), x_shape)
        w = jax.random.normal(jax.random.key(1), w_shape) * 0.05
        want = conv_2d(x, w)
        flops = 3 * 2 * np.prod(want.shape) * np.prod(w_shape[:3])  # forward + 2 gradients
        for form_name, form in FORMS.items():
            if form is conv_1d_over_columns and w_shape[1] != 1:
                continue
            np.testing.assert_allclose(form(x, w), want, rtol=1e-4, atol=1e-3)
            seconds = measure(form, x, w, args.reps)
            rate = flops / seconds / 1e9
            print(f"| {shape_name} | {form_name} | {1e3 * seconds:.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
