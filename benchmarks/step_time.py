"""Train-step time of CTR-GCN with and without CSRE, on NTU-shaped batches.

  python -m benchmarks.step_time                       # official sizes: batch 64, 64 frames
  python -m benchmarks.step_time --batch 16 --slots 63026 --base-channels 64

Both variants are built and timed side by side in one process, on the same random batches.
The 'with CSRE' step includes STFD, both bank writes, similarities, selection and the loss.
"""

import argparse
import resource
import time

import jax
import numpy as np

from configs import common
from csre_jax.data.datasets import Dataset
from csre_jax.data.pipeline import Split
from csre_jax.training import loop


def experiment(args, banks: str) -> loop.Experiment:
    config = common.base_config()
    config.data.batch_size = args.batch
    config.data.eval_batch_size = args.batch
    config.model.kwargs.base_channels = args.base_channels
    config.csre.banks = banks
    config.num_devices = 1
    labels = np.arange(args.slots) % args.classes
    x = np.zeros((1, 3, args.frames, 25, 2), np.float32)
    # Only the slot labels and the input shape matter: batches are made below.
    split = Split(np.broadcast_to(x, (args.slots, *x.shape[1:])), labels, args.classes)
    dataset = Dataset(train=split, test=split, skeleton="ntu")
    return loop.build(config, dataset=dataset)


def time_steps(exp: loop.Experiment, args) -> tuple[float, float]:
    state = loop.init_state(exp)
    # Fill the banks so every anchor is valid, as after the first epoch of a real run.
    state = state.replace(
        banks={
            name: bank.replace(
                features=jax.random.normal(jax.random.key(1), bank.features.shape)
                / np.sqrt(bank.features.shape[1]),
                filled=bank.labels >= 0,
            )
            for name, bank in state.banks.items()
        }
    )
    train_step, _ = loop.compile_steps(exp, state)
    rng = np.random.default_rng(0)

    def batch():
        local = {
            "x": rng.normal(size=(args.batch, 3, args.frames, 25, 2)).astype(np.float32),
            "label": rng.integers(0, args.classes, args.batch).astype(np.int32),
            "index": rng.choice(args.slots, args.batch, replace=False).astype(np.int32),
        }
        return loop.parallel.global_batch(local, exp.mesh)

    start = time.perf_counter()
    state, metrics = train_step(state, batch())
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        b = batch()
        start = time.perf_counter()
        state, metrics = train_step(state, b)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--slots", type=int, default=63026, help="bank size (NTU120 X-sub)")
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s); "
        f"batch {args.batch}, {args.frames} frames, {args.slots} slots, "
        f"width {args.base_channels}"
    )
    results = {}
    for label, banks in (("without CSRE", "none"), ("with CSRE", "spatial+temporal")):
        results[label] = time_steps(experiment(args, banks), args)
        step, compile_s = results[label]
        print(
            f"{label:>13}: {step * 1000:8.1f} ms/step (median of {args.steps}), "
            f"first step incl. compile {compile_s:.1f} s"
        )
    base, csre = results["without CSRE"][0], results["with CSRE"][0]
    print(f"CSRE overhead: {100 * (csre - base) / base:+.1f}%")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak host memory of the process: {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
