"""The kernels behind the CPU gap to the official code: each operation as our step runs it
(XLA:CPU) and as the official PyTorch code runs it, on the same shapes, side by side.

  python -m benchmarks.kernels                                  # ours only, a minute
  python -m benchmarks.kernels --torch-python=/path/to/torch/python --threads=2

With --torch-python this file also runs as a script under that Python (which needs only
PyTorch) and prints both columns. Shapes are those of a batch-16 NTU step (32 person rows,
64 frames, 25 joints) and of the CSRE part (batch 64, 63,026 slots, dimension 256); each time
is the best of --reps calls, forward and backward where the step takes a gradient:
  top-k:      the loss's selections, the k largest of each of 64 rows of 63,026 scores
              (k = 128 hard positives, k = 512 hard or random negatives);
  CTRGC:      CTR-GCN's channel-wise aggregation, out[t, u, c] = sum_w A[u, w, c] x[t, w, c]
              per (row, channel), 64 channels: ours channels-last, the official channels-first;
  temporal:   a (9, 1) convolution, 64 -> 64 channels, every GCN block's; ours a 1-D
              convolution over the joints' columns;
  3x3:        HCN's conv3-conv6 shape, 32 -> 64 channels on 32 x 32;
  similarity: a bank's (64, 256) x (256, 63,026) scores and their gradient to the queries.
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

ROWS, FRAMES, JOINTS, CHANNELS = 32, 64, 25, 64
BATCH, SLOTS, DIM = 64, 63026, 256
MARK = "@@kernels@@"


def best_ms(call, reps: int) -> float:
    call()  # compile / warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def jax_times(reps: int) -> dict[str, float]:
    """Our side: the operations written as csre_jax writes them, jitted."""
    import jax
    import jax.numpy as jnp

    from benchmarks.conv_forms import conv_1d_over_columns, conv_2d, measure

    key = iter(jax.random.split(jax.random.key(0), 16))

    def normal(*shape):
        return jax.random.normal(next(key), shape)

    def fwd_bwd_ms(form, x, w):
        """conv_forms' measurement (forward and both gradients, best of reps), in ms."""
        return 1000 * measure(form, x, w, reps)

    scores = normal(BATCH, SLOTS)
    times = {}
    for k in (128, 512):
        top_k = jax.jit(lambda s, k=k: jax.lax.top_k(s, k))
        times[f"top-k {k}"] = best_ms(lambda f=top_k: jax.block_until_ready(f(scores)), reps)
    aggregate = lambda a, x: jnp.einsum("buwc,btwc->btuc", a, x)  # noqa: E731
    adjacency = normal(ROWS, JOINTS, JOINTS, CHANNELS)
    times["CTRGC"] = fwd_bwd_ms(aggregate, adjacency, normal(ROWS, FRAMES, JOINTS, CHANNELS))
    x = normal(ROWS, FRAMES, JOINTS, CHANNELS)
    times["temporal"] = fwd_bwd_ms(conv_1d_over_columns, x, normal(9, 1, 64, 64))
    times["3x3"] = fwd_bwd_ms(conv_2d, normal(ROWS, 32, 32, 32), normal(3, 3, 32, 64))
    similarity = lambda q, bank: jnp.dot(q, bank.T, precision="highest")  # noqa: E731
    bank = normal(SLOTS, DIM)
    grad = jax.jit(jax.grad(lambda q: jnp.sum(similarity(q, bank) ** 2)))
    query = normal(BATCH, DIM)
    times["similarity"] = best_ms(lambda: jax.block_until_ready(grad(query)), reps)
    return times


def torch_times(reps: int, threads: int) -> dict[str, float]:
    """The official side: the same operations as the official PyTorch code writes them."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def fwd_bwd(f, *shapes):
        args = [torch.randn(*s, requires_grad=True) for s in shapes]

        def call():
            (f(*args) ** 2).sum().backward()

        return call

    scores = torch.randn(BATCH, SLOTS)
    times = {}
    for k in (128, 512):
        times[f"top-k {k}"] = best_ms(lambda k=k: torch.topk(scores, k, dim=1), reps)
    aggregate = lambda a, x: torch.einsum("ncuv,nctv->nctu", a, x)  # noqa: E731
    times["CTRGC"] = best_ms(
        fwd_bwd(aggregate, (ROWS, CHANNELS, JOINTS, JOINTS), (ROWS, CHANNELS, FRAMES, JOINTS)),
        reps,
    )
    temporal = lambda x, w: torch.nn.functional.conv2d(x, w, padding=(4, 0))  # noqa: E731
    times["temporal"] = best_ms(
        fwd_bwd(temporal, (ROWS, CHANNELS, FRAMES, JOINTS), (64, 64, 9, 1)), reps
    )
    conv3x3 = lambda x, w: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    times["3x3"] = best_ms(fwd_bwd(conv3x3, (ROWS, 32, 32, 32), (64, 32, 3, 3)), reps)
    bank = torch.randn(SLOTS, DIM)
    query = torch.randn(BATCH, DIM, requires_grad=True)
    times["similarity"] = best_ms(lambda: (query @ bank.T).pow(2).sum().backward(), reps)
    return times | {"torch_version": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--torch-python", help="a Python with PyTorch: time the official side")
    parser.add_argument("--side", choices=("jax", "torch"), default="jax", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "torch":
        print(MARK + json.dumps(torch_times(args.reps, args.threads)))
        return
    official = {}
    if args.torch_python:
        command = [args.torch_python, str(Path(__file__)), "--side=torch", f"--reps={args.reps}"]
        out = subprocess.run(
            [*command, f"--threads={args.threads}"], capture_output=True, text=True, check=True
        )
        official = json.loads(out.stdout.split(MARK)[-1])
        print(f"PyTorch {official.pop('torch_version')}, {official.pop('threads')} threads")
    ours = jax_times(args.reps)
    print("| kernel | ours (XLA:CPU) ms | official (PyTorch) ms | ours / official |")
    print("|---|---|---|---|")
    for name, ms in ours.items():
        other = official.get(name)
        ratio = f"{ms / other:.2f}" if other else "n/a"
        other_text = f"{other:.1f}" if other else "not measured"
        print(f"| {name} | {ms:.1f} | {other_text} | {ratio} |")


if __name__ == "__main__":
    main()
