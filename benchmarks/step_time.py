"""Train-step time of every backbone with and without CSRE, on NTU-shaped batches.

  python -m benchmarks.step_time                         # all backbones, batch 16
  python -m benchmarks.step_time --models ctrgcn --batch 64

Each backbone runs in its own process (so its peak host memory is its own) at the official
width. Both variants are built and timed side by side in that process, on the same random
batches; 'with CSRE' includes STFD, both bank writes, similarities, selection and the loss.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from configs import common
from csre_jax import models
from csre_jax.data.datasets import Dataset
from csre_jax.data.pipeline import Split
from csre_jax.training import loop


def experiment(args, model: str, banks: str) -> loop.Experiment:
    config = common.base_config()
    config.model.name = model
    config.model.kwargs = ConfigDict()
    config.data.batch_size = args.batch
    config.data.eval_batch_size = args.batch
    config.csre.banks = banks
    config.num_devices = 1
    labels = np.arange(args.slots) % args.classes
    x = np.zeros((1, 3, args.frames, 25, 2), np.float32)
    backbone = models.create_model(model, num_classes=args.classes, dataset="ntu")
    extra = models.extra_inputs(backbone)

    def transform(sample, rng):
        return {"x": sample} | {name: sample for name in extra}

    # Only the slot labels and the input shapes matter: batches are made below.
    split = Split(np.broadcast_to(x, (args.slots, *x.shape[1:])), labels, args.classes)
    dataset = Dataset(split, split, "ntu", transform, transform)
    return loop.build(config, dataset=dataset)


def time_steps(exp: loop.Experiment, args) -> tuple[float, float]:
    """(median seconds per step, seconds of the first step including compilation)."""
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
    extra = models.extra_inputs(exp.backbone)

    def batch():
        x = rng.normal(size=(args.batch, 3, args.frames, 25, 2)).astype(np.float32)
        local = {
            "x": x,
            "label": rng.integers(0, args.classes, args.batch).astype(np.int32),
            "index": rng.choice(args.slots, args.batch, replace=False).astype(np.int32),
        }
        return loop.parallel.global_batch(local | {name: x for name in extra}, exp.mesh)

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


def measure(args, model: str) -> dict:
    """One backbone, both variants, in this process."""
    result = {"model": model}
    for label, banks in (("base", "none"), ("csre", "spatial+temporal")):
        result[label], result[f"{label}_compile"] = time_steps(experiment(args, model, banks), args)
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def parameter_count(model: str, dataset: str, num_classes: int) -> int:
    backbone = models.create_model(model, num_classes=num_classes, dataset=dataset)
    inputs = models.example_inputs(backbone, dataset)
    params = jax.eval_shape(backbone.init, jax.random.key(0), **inputs)["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--slots", type=int, default=63026, help="bank size (NTU120 X-sub)")
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.models.split(",")
    if args.child:
        print(json.dumps(measure(args, names[0])))
        return
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch}, "
        f"{args.frames} frames, 25 joints x 2 persons, {args.classes} classes, "
        f"{args.slots} bank slots; median of {args.steps} steps"
    )
    print("| backbone | parameters, NTU60 (60 classes) | parameters, NW-UCLA (10 classes) |")
    print("|---|---|---|")
    for name in names:
        counts = [parameter_count(name, d, c) for d, c in (("ntu", 60), ("ucla", 10))]
        print(f"| {name} | {counts[0]:,} | {counts[1]:,} |")
    print()
    print(
        "| backbone | without CSRE | with CSRE | CSRE overhead "
        "| first step (compile) without / with | peak host memory |"
    )
    print("|---|---|---|---|---|---|")
    flags = [f"--{k}={getattr(args, k)}" for k in ("batch", "frames", "slots", "classes", "steps")]
    for name in names:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.step_time", "--child", f"--models={name}", *flags],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {name} | {r['base']:.2f} s | {r['csre']:.2f} s | "
            f"{100 * (r['csre'] - r['base']) / r['base']:+.1f}% | "
            f"{r['base_compile']:.0f} s / {r['csre_compile']:.0f} s | {r['peak_gib']:.1f} GiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
