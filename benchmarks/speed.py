"""How fast csre-jax trains on this machine: every speed number, in one run.

  python -m benchmarks.speed                                   # about 35 min on 2 CPU cores
  python -m benchmarks.speed --torch-python=/path/to/torch/python --official-root=DIR
  python -m benchmarks.speed --torch-json=torch_reference.json # official times measured before
  python -m benchmarks.speed --quick                           # a smoke run of every table

The official PyTorch numbers come from benchmarks/torch_reference.py, run with a Python that
has PyTorch (the project does not depend on it): given --torch-python and --official-root this
run starts it first, on the same machine, so both sides share the run; --torch-json reads the
output of an earlier one. The last table holds the speed targets side by side: the
backbone step at batch 16 against the official step (target 1: at most 1.0x), its peak memory
against the official one (2), the CSRE part against the official loss (3: at least 15x faster)
with each backbone's CSRE overhead (3: at most 3%), and compile times (4: at most 20 s).

Tables (NTU shape: 3 x 64 frames x 25 joints x 2 persons, 120 classes, banks of 63,026 slots =
NTU120 X-sub, pre-filled so every anchor is valid, float32):
 1. The CSRE part alone: both banks' write, similarities, selections, InfoNCE and its gradient,
    jitted as in the train step (banks donated), at batch 64.
 2. Every backbone's train step without and with CSRE, side by side: both variants compiled in
    one process and their steps interleaved (A B A B ...), so machine noise hits both alike.
    CTR-GCN at batch 64 (the NTU120 recipe's scale), the others at batch 16: at batch 64 the
    larger ones need more than this machine's 24 GB. Also compile time and peak host memory.
 3. The backbone step at batch 16 against the official PyTorch step on the same machine.
 4. The training input pipeline (grain, NTU feeder with crop/resize and rotation, the threads a
    run uses) in samples per second, next to what the CTR-GCN + CSRE step consumes.
 5. A cost model: step time against batch size and frames (CTR-GCN), the CSRE part against the
    bank size, and what they predict for NTU120 on 8 GPUs.
Each backbone runs in its own process, so peak memory is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from benchmarks import bank_scaling
from configs import common
from csre_jax import models, sharding
from csre_jax.data.datasets import Dataset
from csre_jax.data.ntu_splits import ntu_row_to_sample
from csre_jax.data.pipeline import Split, train_dataset
from csre_jax.data.transforms import ntu_transform
from csre_jax.layouts import BUILTIN_LAYOUTS
from csre_jax.training import loop
from csre_jax.training.state import state_sharding

NTU120_XSUB_SLOTS = 63026
NTU120_XSUB_TEST = 50919


def experiment(args, model: str, banks: str) -> loop.Experiment:
    """A run of `model` at the official width on NTU-shaped inputs; only slot labels and input
    shapes come from the dataset (batches are made by `random_batches`)."""
    config = common.base_config()
    config.model.name = model
    config.model.kwargs = ConfigDict({"remat": getattr(args, "remat", False)})
    config.data.batch_size = args.batch
    config.data.eval_batch_size = args.batch
    config.csre.banks = banks
    # the paper's counts, or what a small (--quick) bank can hold of every class
    config.csre.num_positives = min(config.csre.num_positives, args.slots // args.classes)
    config.num_devices = 1
    labels = np.arange(args.slots) % args.classes
    x = np.zeros((1, 3, args.frames, 25, 2), np.float32)
    backbone = models.create_model(model, num_classes=args.classes, dataset="ntu")
    extra = models.extra_inputs(backbone)

    def transform(sample, rng):
        return {"x": sample} | {name: sample for name in extra}

    split = Split(np.broadcast_to(x, (args.slots, *x.shape[1:])), labels, args.classes)
    return loop.build(
        config, dataset=Dataset(split, split, BUILTIN_LAYOUTS["ntu"], transform, transform)
    )


def filled_state(exp: loop.Experiment):
    """Fresh parameters and banks full of unit rows, as after the first epoch of a real run."""
    state = loop.init_state(exp)
    banks = {
        name: bank.replace(
            features=jax.random.normal(jax.random.key(1), bank.features.shape)
            / np.sqrt(bank.features.shape[1]),
            filled=bank.labels >= 0,
        )
        for name, bank in state.banks.items()
    }
    state = state.replace(banks=banks)
    return sharding.put(state, state_sharding(state, exp.mesh))


def random_batches(exp: loop.Experiment, args):
    rng = np.random.default_rng(0)
    extra = models.extra_inputs(exp.backbone)
    while True:
        x = rng.normal(size=(args.batch, 3, args.frames, 25, 2)).astype(np.float32)
        local = {
            "x": x,
            "label": rng.integers(0, args.classes, args.batch).astype(np.int32),
            "index": rng.choice(args.slots, args.batch, replace=False).astype(np.int32),
        }
        yield sharding.global_batch(local | {name: x for name in extra}, exp.mesh)


def side_by_side(args, model: str, variants: dict[str, str]) -> dict:
    """Median step seconds and first-step (compile) seconds of each variant, steps interleaved."""
    runs, result = {}, {"model": model, "batch": args.batch, "frames": args.frames}
    for name, banks in variants.items():
        exp = experiment(args, model, banks)
        state = filled_state(exp)
        train_step, _ = loop.compile_steps(exp, state)
        batches = random_batches(exp, args)
        cost = train_step.lower(state, next(batches)).cost_analysis()
        result[f"{name}_gflop"] = cost["flops"] / 1e9 if cost and "flops" in cost else None
        start = time.perf_counter()
        state, metrics = train_step(state, next(batches))
        jax.block_until_ready(metrics)
        result[f"{name}_compile_s"] = time.perf_counter() - start
        state, metrics = train_step(state, next(batches))  # untimed: warm caches
        jax.block_until_ready(metrics)
        runs[name] = [train_step, state, batches, []]
    for _ in range(args.steps):
        for run in runs.values():
            train_step, state, batches, times = run
            batch = next(batches)
            start = time.perf_counter()
            state, metrics = train_step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            run[1] = state
    for name, (_, _, _, times) in runs.items():
        result[f"{name}_s"] = float(np.median(times))
        result[f"{name}_times_s"] = times
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def csre_part(batch: int, slots: int, classes: int, calls: int) -> dict:
    """Milliseconds per call of both banks' CSRE work (write, loss, gradient), banks donated,
    on one device: benchmarks.bank_scaling's measurement at this size."""
    args = types.SimpleNamespace(classes=classes, dim=256, batch=batch, reps=calls)
    return bank_scaling.measure("per-sample", slots, args, sharding.make_mesh(1))


def pipeline_throughput(batch: int, seconds: float) -> float:
    """Samples per second of the NTU training feeder on split-file-shaped rows (300 frames,
    about 70% of them valid), with the grain threads a training run uses."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(512, 300, 150)).astype(np.float32)
    rows[:, 210:] = 0  # zero padding after the sample's frames, as in the split files
    split = Split(rows, np.arange(512, dtype=np.int32) % 120, 120)
    sample_transform = ntu_transform(train=True, stream="joint", variant="ctrgcn")
    iterator = iter(
        train_dataset(
            split,
            global_batch_size=batch,
            seed=0,
            transform=lambda row, r: sample_transform(ntu_row_to_sample(row), r),
        )
    )
    next(iterator)  # threads started, buffers filled
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(next(iterator)["label"])
    return count / (time.perf_counter() - start)


def parameter_count(model: str, num_classes: int, frames: int) -> int:
    """At the run's window: HCN's fc7 grows with the frames."""
    backbone = models.create_model(model, num_classes=num_classes, dataset="ntu")
    inputs = models.example_inputs(backbone, "ntu", num_frames=frames)
    params = jax.eval_shape(backbone.init, jax.random.key(0), **inputs)["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def child(args, model: str, batch: int, frames: int, variants: str) -> dict:
    """Runs side_by_side in a fresh process (its own peak memory), returns its numbers."""
    flags = [f"--slots={args.slots}", f"--classes={args.classes}", f"--steps={args.steps}"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.speed",
            f"--child={model}:{batch}:{frames}:{variants}",
            *flags,
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{model} at batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


VARIANTS = {"base": "none", "csre": "spatial+temporal"}


def run_child_mode(args) -> None:
    model, batch, frames, variants = args.child.split(":")
    sub = types.SimpleNamespace(**vars(args), batch=int(batch), frames=int(frames))
    chosen = {k: VARIANTS[k] for k in variants.split("+")}
    print(json.dumps(side_by_side(sub, model, chosen)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES))
    parser.add_argument("--slots", type=int, default=NTU120_XSUB_SLOTS)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--torch-json", help="benchmarks.torch_reference --json output")
    parser.add_argument("--torch-python", help="a Python with PyTorch: run torch_reference first")
    parser.add_argument("--official-root", help="torch_reference's folder of official clones")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks every table")
    parser.add_argument(
        "--gpu-tflops", type=float, default=20.0, help="sustained float32 TFLOP/s per GPU"
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="model.kwargs.remat for every step (blocks recomputed in the backward pass)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child_mode(args)
        return
    names = args.models.split(",")
    big_batch, small_batch, frames = (4, 2, 16) if args.quick else (64, 16, 64)
    if args.quick:
        args.slots, args.steps = 4000, 1
    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind} ({jax.device_count()} device), "
        f"{args.classes} classes, {args.slots:,} bank slots, {frames} frames; "
        f"medians of {args.steps} steps\n"
    )

    # 1. the CSRE part alone
    part = csre_part(big_batch, args.slots, args.classes, calls=5)
    print(
        f"1. CSRE part alone at batch {big_batch} (both banks): {part['ms']:.0f} ms per step, "
        f"compiled in {part['compile_s']:.1f} s (target: at most 200 ms)\n"
    )

    # 2. overhead side by side, and 3. against PyTorch
    torch_ref = official_numbers(args, small_batch, frames, big_batch)
    print(
        "2./3. Train step without and with CSRE, steps interleaved (targets: overhead at most "
        f"3% for CTR-GCN, 5% for the others); the backbone at batch {small_batch} against "
        "the official PyTorch step (target: ratio at most 1)\n"
    )
    print(
        "| backbone | parameters (120 classes) | batch | without CSRE | with CSRE | CSRE "
        "overhead | compile without / with | peak host memory | official PyTorch, batch "
        f"{small_batch} | ours / official |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name in names:
        batch = big_batch if name == "ctrgcn" else small_batch
        r = results[name] = child(args, name, batch, frames, "base+csre")
        # the backbone alone in its own process: its step, compile time and peak memory
        r["small"] = child(args, name, small_batch, frames, "base")
        base_small = r["small"]["base_s"]
        official = torch_ref.get(name, {}).get("step_s")
        ratio = f"{base_small / official:.2f}" if official else "not measured"
        official_text = f"{official:.2f} s" if official else "not measured"
        small_note = f" ({base_small:.2f} s at batch {small_batch})" if batch != small_batch else ""
        print(
            f"| {name} | {parameter_count(name, args.classes, frames):,} | {batch} | "
            f"{r['base_s']:.2f} s{small_note} | {r['csre_s']:.2f} s | "
            f"{100 * (r['csre_s'] - r['base_s']) / r['base_s']:+.1f}% "
            f"(CSRE part alone: {100 * part['ms'] / 1000 / r['base_s'] * batch / big_batch:.1f}%)"
            f" | {r['base_compile_s']:.0f} s / {r['csre_compile_s']:.0f} s | "
            f"{r['peak_gib']:.1f} GiB | {official_text} | {ratio} |",
            flush=True,
        )

    # 4. input pipeline
    feed = pipeline_throughput(small_batch, seconds=5 if args.quick else 20)
    if "ctrgcn" in results:
        consumed = big_batch / results["ctrgcn"]["csre_s"]
        print(
            f"\n4. Input pipeline: {feed:.0f} samples/s (NTU feeder, crop/resize + rotation, "
            f"2 grain threads); CTR-GCN + CSRE consumes {consumed:.1f} samples/s: "
            f"{feed / consumed:.0f}x headroom\n"
        )

    # 5. cost model
    if "ctrgcn" in results:
        cost_model(args, results["ctrgcn"], part, big_batch, small_batch, frames)

    targets(results, part, torch_ref, big_batch, small_batch)


def official_numbers(args, batch: int, frames: int, loss_batch: int) -> dict:
    """benchmarks.torch_reference's numbers at this batch and window: run now (--torch-python),
    read (--torch-json), or none."""
    if args.torch_python:
        if not args.official_root:
            raise SystemExit("--torch-python needs --official-root (see torch_reference.py)")
        with tempfile.TemporaryDirectory() as folder:
            output = Path(folder) / "torch_reference.json"
            command = [
                args.torch_python,
                "-m",
                "benchmarks.torch_reference",
                f"--official-root={args.official_root}",
                f"--models={args.models},csre_loss",
                f"--batch={batch}",
                f"--frames={frames}",
                f"--classes={args.classes}",
                f"--steps={args.steps}",
                f"--loss-batch={loss_batch}",
                # enough slots for every anchor to have its 128 positives (quick runs)
                f"--loss-slots={max(args.slots, 128 * args.classes)}",
                f"--json={output}",
            ]
            subprocess.run(command, check=False, cwd=Path(__file__).resolve().parents[1])
            print()
            return json.loads(output.read_text()) if output.is_file() else {}
    return json.loads(Path(args.torch_json).read_text()) if args.torch_json else {}


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**missed**")


def targets(results: dict, part: dict, torch_ref: dict, big_batch: int, small_batch: int):
    """The speed targets, ours against the official code's numbers of this run."""
    official_loss = torch_ref.get("csre_loss", {}).get("call_s")
    speedup = official_loss * 1000 / part["ms"] if official_loss else None
    official_slots = torch_ref.get("csre_loss", {}).get("slots", 0)
    loss_text = (
        f"ours {part['ms']:.0f} ms, official {1000 * official_loss:.0f} ms "
        f"({official_slots:,} slots): {speedup:.1f}x faster"
        if speedup
        else f"ours {part['ms']:.0f} ms, official not measured"
    )
    print(
        f"\nTargets, float32, backbone alone at batch {small_batch}. 3. CSRE part "
        f"(both banks, batch {big_batch}): {loss_text} (target: at least 15x): "
        f"{_verdict(speedup and speedup >= 15)}\n"
    )
    print(
        "| backbone | 1. step ours / official (at most 1.0) | 2. peak memory ours / official "
        "| 3. CSRE overhead (at most 3%) | 4. compile (at most 20 s) |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        small, official = r["small"], torch_ref.get(name, {})
        ratio = small["base_s"] / official["step_s"] if "step_s" in official else None
        memory = small["peak_gib"] / official["peak_rss_gib"] if official else None
        overhead = 100 * (r["csre_s"] - r["base_s"]) / r["base_s"]
        compile_s = max(small["base_compile_s"], r["csre_compile_s"])
        ratio_text = f"{ratio:.2f}" if ratio else "-"
        memory_text = (
            f"{small['peak_gib']:.1f} / {official['peak_rss_gib']:.1f} GiB" if official else "-"
        )
        print(
            f"| {name} | {ratio_text}: {_verdict(ratio and ratio <= 1.0)} | {memory_text}: "
            f"{_verdict(memory and memory <= 1.0)} | {overhead:+.1f}% at batch {r['batch']}: "
            f"{_verdict(overhead <= 3)} | {compile_s:.0f} s: {_verdict(compile_s <= 20)} |"
        )


def cost_model(args, ctrgcn: dict, part: dict, big_batch: int, small_batch: int, frames: int):
    """Linear fits of the measurements, and what they predict for NTU120 on 8 GPUs."""
    half_frames = child(args, "ctrgcn", small_batch, frames // 2, "base")
    small = ctrgcn["small"]
    per_sample = (ctrgcn["base_s"] - small["base_s"]) / (big_batch - small_batch)
    fixed = small["base_s"] - per_sample * small_batch
    memory_per_sample = (ctrgcn["peak_gib"] - small["peak_gib"]) / (big_batch - small_batch)
    slot_points = [args.slots // 4, args.slots, args.slots * 4]
    parts = [csre_part(big_batch, s, args.classes, calls=3)["ms"] for s in slot_points]
    per_slot, constant = np.polyfit(slot_points, parts, 1)
    print("5. Cost model (CTR-GCN, this CPU, float32):\n")
    print("| quantity | fit | points |")
    print("|---|---|---|")
    print(
        f"| step time vs batch ({frames} frames) | {fixed:.2f} s + {per_sample:.3f} s x batch "
        f"| batch {small_batch}: {small['base_s']:.2f} s, {big_batch}: {ctrgcn['base_s']:.2f} s |"
    )
    print(
        f"| step time vs frames (batch {small_batch}) "
        f"| x{half_frames['base_s'] / small['base_s']:.2f} for half the frames "
        f"| {frames // 2}: {half_frames['base_s']:.2f} s, "
        f"{frames}: {small['base_s']:.2f} s |"
    )
    print(
        f"| peak host memory vs batch | {memory_per_sample:.3f} GiB per sample "
        f"| batch {small_batch}: {small['peak_gib']:.1f} GiB, {big_batch}: "
        f"{ctrgcn['peak_gib']:.1f} GiB (both variants live) |"
    )
    points = ", ".join(f"{n:,}: {ms:.0f} ms" for n, ms in zip(slot_points, parts, strict=True))
    print(
        f"| CSRE part vs slots (batch {big_batch}) | {constant:.0f} ms + "
        f"{1e3 * per_slot:.2f} ms per 1,000 slots | {points} |"
    )
    gflop = ctrgcn.get("base_gflop")
    if not gflop:
        return
    epoch_steps = NTU120_XSUB_SLOTS // big_batch
    epoch_pflop = gflop * epoch_steps / 1e6
    csre_gflop = 2 * 4 * big_batch * args.slots * 256 / 1e9  # 2 banks x (scores + gradient)
    print(
        f"| train-step work (XLA cost analysis) | {gflop / big_batch:.1f} GFLOP per sample; "
        f"CSRE part {csre_gflop:.1f} GFLOP per step ({100 * csre_gflop / gflop:.1f}%) "
        f"| {epoch_pflop:.2f} PFLOP per NTU120 X-sub epoch ({epoch_steps} steps) |"
    )
    gpu_s = epoch_pflop * 1e3 / (8 * args.gpu_tflops)
    # The paper's Table 8: official CTR-GCN, 4 x RTX 3090, 19.9 min per NTU120 epoch.
    paper_tflops = epoch_pflop * 1e3 / (19.9 * 60) / 4
    print(
        f"\n   8 GPUs on NTU120 X-sub, global batch {big_batch} ({big_batch // 8} per GPU, each "
        f"bank 8 x {-(-args.slots // 8):,} rows): backbone and CSRE both split 8 ways, so "
        "the CSRE share stays the one-device one plus a few kilobytes of top-k candidates "
        f"and gradients per step. At a sustained {args.gpu_tflops:g} TFLOP/s per GPU "
        f"(--gpu-tflops) the arithmetic of an epoch takes {gpu_s:.0f} s, which needs "
        f"{NTU120_XSUB_SLOTS / gpu_s:,.0f} samples/s from the input pipeline (section 4 "
        f"measures the feeder on this machine's 2 cores). The paper's official run "
        f"(19.9 min per epoch on 4 RTX 3090) sustained {paper_tflops:.2f} TFLOP/s per GPU."
    )


if __name__ == "__main__":
    main()
