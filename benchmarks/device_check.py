"""A GPU check, ready to run: what one accelerator does with every backbone and CSRE.

On a GPU machine that reaches no package registry but whose python3 holds jax 0.11.2 with
the CUDA 13 plugin, our other pins travel as wheels. On a machine with the registry, once:
  echo /.whl/ >> .git/info/exclude
  python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl flax==0.12.8 \
      optax==0.2.8 orbax-checkpoint==0.12.8 ml-collections==1.1.0 grain==0.2.18 \
      array-record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5
  python -m benchmarks.device_check --pack-ucla=../shared/data/NW-UCLA \
      --out=benchmarks/nw_ucla_packed.npz
then copy the checkout with .whl/ and benchmarks/nw_ucla_packed.npz (19 MiB) to the GPU
machine and run there, within 9 minutes ($OUT: a folder for the log):
  set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 \
      python3 -m benchmarks.device_check 2>&1 | tee $OUT/device_check.log

  python -m benchmarks.device_check               # all that fits in --budget-s (420 s)
  python -m benchmarks.device_check --quick --budget-s=1500  # tiny sizes: 17 min on 2 cores
  python -m benchmarks.device_check --quick --models=hcn --ucla-model=hcn  # 1 min: the test's
  python -m benchmarks.device_check --pack-ucla=DIR --out=FILE  # NW-UCLA's clips in one .npz

It prints as it goes, so a timeout still leaves numbers, and starts an item only if the
budget still holds what a like item took (else it says what it skipped):
 1. the devices and the versions;
 2. the CSRE part alone (both banks, batch 64) at 63,026 and 1,000,000 slots;
 3. every backbone's train step without and with CSRE at batch 64, NTU shape (3 x 64 frames
    x 25 joints x 2 persons, 120 classes), float32 for all, then bfloat16 for all: median
    step time, compile time, peak memory and the step's XLA memory plan;
 4. NW-UCLA CTR-GCN + CSRE on its recipe (configs/ctrgcn.py:ucla) from the packed clips, as
    many epochs as the rest of the budget holds: test top-1 after each, and the best.
Each (backbone, dtype) runs in its own process so that its peak memory (the device
allocator's peak_bytes_in_use, or host RSS where the device keeps no count) is its own; a
peak that did not grow during an item only bounds it from above (shown as <=).
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import jax
import numpy as np

from benchmarks import speed
from csre_jax import models, sharding
from csre_jax.data import ucla
from csre_jax.data.ucla import load_ucla_clip
from csre_jax.training import loop

FULL = {"batch": 64, "frames": 64, "slots": speed.NTU120_XSUB_SLOTS, "steps": 5}
# The official sampling (128 positives, 512 negatives) needs banks of at least 640 slots.
QUICK = {"batch": 4, "frames": 16, "slots": 1000, "steps": 2}
BANK_SIZES = {"full": (speed.NTU120_XSUB_SLOTS, 1_000_000), "quick": (1000, 2000)}
DTYPES = ("float32", "bfloat16")
CLASSES = 120
# Unpacking, loading, compiling and one epoch with its evaluation: a guess until a GPU run
# measures it; the NW-UCLA item starts only with this much budget left.
UCLA_MIN_S = 60.0
QUICK_UCLA_STEPS = 3  # --quick trains this many steps, then evaluates
QUICK_UCLA_FRAMES = 8


def memory_text(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class Budget:
    """The seconds left of --budget-s, shared with the child processes as a wall-clock
    deadline; an item starts only if its estimate (what a like item took) still fits."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, what: str, need: float) -> bool:
        if need <= self.left():
            return True
        print(
            f"skipped {what}: needs about {need:.0f} s, {max(self.left(), 0):.0f} s of the "
            "budget left",
            flush=True,
        )
        return False


class PeakMemory:
    """The process's peak memory after each item, and whether the item raised it (a peak
    that did not grow only bounds the item's own from above)."""

    def __init__(self):
        self.previous = 0

    def after_item(self) -> str:
        stats = jax.local_devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peak, where = stats["peak_bytes_in_use"], "device"
        else:
            peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"
        bound = "<= " if peak <= self.previous else ""
        self.previous = peak
        return f"{bound}{memory_text(peak)} {where}"


def plan_bytes(arguments: int, outputs: int, aliased: int, temps: int) -> int:
    """What a compiled call holds on its device at once, by XLA's buffer assignment."""
    return arguments + outputs - aliased + temps


def sizes(args) -> types.SimpleNamespace:
    """The shapes of the step and CSRE items (what benchmarks.speed's helpers read)."""
    return types.SimpleNamespace(**(QUICK if args.quick else FULL), classes=CLASSES)


def tiny_widths(model: str) -> dict:
    """The knobs that configs/<model>.py's tiny scale changes, for --quick."""
    module = importlib.import_module(f"configs.{model}")
    full = module.get_config("ntu120").model.kwargs
    tiny = module.get_config("ntu120,tiny").model.kwargs
    return {key: value for key, value in tiny.items() if full[key] != value}


def experiment(size, model: str, banks: str, dtype: str, quick: bool) -> loop.Experiment:
    """benchmarks.speed's NTU-shaped experiment in `dtype` (tiny widths with --quick)."""
    base = speed.experiment(size, model, banks)
    config = base.config.copy_and_resolve_references()
    config.compute_dtype = dtype
    if quick:
        config.model.kwargs.update(tiny_widths(model))
    return loop.build(config, dataset=base.dataset)


def time_step(size, model: str, banks: str, dtype: str, quick: bool, peak: PeakMemory) -> dict:
    """Compile seconds, median step seconds after a warm-up step, memory of one variant."""
    exp = experiment(size, model, banks, dtype, quick)
    state = speed.filled_state(exp)
    train_step, _ = loop.compile_steps(exp, state)
    batches = speed.random_batches(exp, size)
    start = time.perf_counter()
    compiled = train_step.lower(state, next(batches)).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    plan = memory and plan_bytes(
        memory.argument_size_in_bytes,
        memory.output_size_in_bytes,
        memory.alias_size_in_bytes,
        memory.temp_size_in_bytes,
    )
    times = []
    for _ in range(size.steps + 1):  # the first step warms up
        batch = jax.block_until_ready(next(batches))
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return {
        "compile_s": compile_s,
        "step_ms": 1000 * float(np.median(times[1:])),
        "plan_bytes": plan,
        "peak": peak.after_item(),
    }


def run_child(args) -> None:
    """One backbone in one dtype, without then with CSRE: a JSON line per variant."""
    model, dtype = args.child.split(":")
    size, budget, peak = sizes(args), Budget(args.deadline), PeakMemory()
    took = 0.0  # the variant without CSRE estimates the one with it
    for variant, banks in speed.VARIANTS.items():
        row = {"model": model, "dtype": dtype, "variant": variant}
        if not budget.fits(f"{model} {dtype} {variant}", took):
            print(json.dumps(row | {"skipped": True}), flush=True)
            continue
        start = time.time()
        row |= time_step(size, model, banks, dtype, args.quick, peak)
        took = time.time() - start
        print(json.dumps(row), flush=True)


def step_row(r: dict) -> str:
    name = f"| {r['model']} | {r['dtype']} | {'with' if r['variant'] == 'csre' else 'without'}"
    if r.get("skipped"):
        return f"{name} CSRE | skipped: out of budget | | | |"
    plan = "n/a" if r["plan_bytes"] is None else memory_text(r["plan_bytes"])
    return f"{name} CSRE | {r['step_ms']:,.1f} ms | {r['compile_s']:.1f} s | {r['peak']} | {plan} |"


def backbone_steps(args, budget: Budget) -> int:
    """Section 3, a child process per (backbone, dtype), each estimated by the same
    backbone's other dtype or else by the last child; returns how many failed."""
    size = sizes(args)
    print(
        f"\n3. Train step at batch {size.batch}, {size.frames} frames, {CLASSES} classes, banks "
        f"of {size.slots:,} slots (pre-filled); median of {size.steps} steps after a warm-up step\n"
    )
    print("| backbone | dtype | variant | step | compile | peak memory | XLA memory plan |")
    print("|---|---|---|---|---|---|---|", flush=True)
    failures, took, last = 0, {}, 0.0
    for dtype in DTYPES:
        for model in args.models.split(","):
            if not budget.fits(f"{model} {dtype} (both variants)", took.get(model, last)):
                continue
            start = time.time()
            command = [
                sys.executable,
                "-m",
                "benchmarks.device_check",
                f"--child={model}:{dtype}",
                f"--deadline={budget.deadline}",
                *(["--quick"] if args.quick else []),
            ]
            with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
                for line in child.stdout:
                    row = step_row(json.loads(line)) if line.startswith("{") else line.rstrip()
                    print(row, flush=True)
            if child.returncode:
                failures += 1
                print(f"| {model} | {dtype} | failed: exit {child.returncode} (stderr above) |")
            took[model] = last = time.time() - start
    return failures


def csre_part(args, budget: Budget) -> None:
    """Section 2: benchmarks.speed's CSRE-part measurement at each bank size."""
    size, peak = sizes(args), PeakMemory()
    print(f"\n2. CSRE part alone (both banks, batch {size.batch}, {CLASSES} classes)\n")
    print("| slots | per call | compile | peak memory | XLA memory plan | bank memory |")
    print("|---|---|---|---|---|---|", flush=True)
    took = 0.0
    for slots in BANK_SIZES["quick" if args.quick else "full"]:
        if not budget.fits(f"CSRE part at {slots:,} slots", took):
            continue
        start = time.time()
        r = speed.csre_part(size.batch, slots, CLASSES, calls=size.steps)
        took = time.time() - start
        keys = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes")
        plan = None if r["temp_bytes"] is None else plan_bytes(*(r[key] for key in keys))
        print(
            f"| {slots:,} | {r['ms']:,.1f} ms | {r['compile_s']:.1f} s | {peak.after_item()} | "
            f"{'n/a' if plan is None else memory_text(plan)} | {memory_text(r['bank_bytes'])} |",
            flush=True,
        )


def write_packed(out: Path, names, clips: list[np.ndarray]) -> int:
    """Clips (F, 20, 3) as one compressed float32 array with their lengths and names."""
    np.savez_compressed(
        out,
        skeletons=np.concatenate(clips).astype(np.float32),
        lengths=np.array([len(c) for c in clips], np.int32),
        names=np.array(names),
    )
    return out.stat().st_size


def pack_ucla(root: Path, out: Path, stems=None) -> int:
    """NW-UCLA's clips (every clip of the official split by default) into `out`; its bytes.

    A copy of the dataset: .gitignore keeps it out of the repository. float32 holds every
    value of the JSON files (6 decimals) exactly as loading them does."""
    stems = stems or [s for split in ucla.SPLITS for s in ucla.split_entries(split)[0]]
    folder = ucla.clip_dir(root)
    clips = [load_ucla_clip(folder / f"{stem}.json").astype(np.float32) for stem in stems]
    return write_packed(out, stems, clips)


def unpack_ucla(packed: Path, root: Path) -> Path:
    """The packed clips as CTR-GCN's root/all_sqe/<name>.json files, which is what
    config.data.root points NW-UCLA training at; returns root."""
    with np.load(packed) as data:
        skeletons, lengths, names = data["skeletons"], data["lengths"], data["names"]
    folder = root / ucla.CLIP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, clip in zip(names, np.split(skeletons, np.cumsum(lengths)[:-1]), strict=True):
        text = json.dumps({"file_name": str(name), "skeletons": clip.tolist()})
        (folder / f"{name}.json").write_text(text, encoding="utf-8")
    return root


def synthetic_ucla(out: Path) -> None:
    """Random clips under every name of the official split, for --quick."""
    stems = [s for split in ucla.SPLITS for s in ucla.split_entries(split)[0]]
    rng = np.random.default_rng(0)
    write_packed(out, stems, [rng.normal(size=(QUICK_UCLA_FRAMES, 20, 3)) for _ in stems])


def ucla_config(model: str, root: Path, quick: bool):
    """configs/<model>.py:ucla on the unpacked clips (the tiny scale's widths with --quick)."""
    module = importlib.import_module(f"configs.{model}")
    config = module.get_config("ucla")
    config.data.root = str(root)
    if quick:
        tiny = module.get_config("ucla,tiny")
        config.model.kwargs, config.csre = tiny.model.kwargs, tiny.csre
        config.data.batch_size, config.data.eval_batch_size = 4, tiny.data.eval_batch_size
    return config


def train_ucla(args, budget: Budget) -> None:
    """Section 4: the recipe's epochs until the budget ends, test top-1 after each; a
    stopped epoch is evaluated too, in the time the last evaluation took."""
    model = args.ucla_model
    print(f"\n4. NW-UCLA, {model} + CSRE, configs/{model}.py:ucla", flush=True)
    packed = Path(args.ucla_npz)
    if not args.quick and not packed.is_file():
        print(f"skipped: no packed clips at {packed} (make them with --pack-ucla)", flush=True)
        return
    if not budget.fits("NW-UCLA training", 0.0 if args.quick else UCLA_MIN_S):
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        if args.quick:
            packed = Path(tmp) / "synthetic.npz"
            synthetic_ucla(packed)
        root = unpack_ucla(packed, Path(tmp) / "NW-UCLA")
        exp = loop.build(ucla_config(model, root, args.quick))
        state = loop.init_state(exp)
        train_step, eval_step = loop.compile_steps(exp, state)
        batches = loop.train_batches(exp)
        print(
            f"   {len(exp.dataset.train.labels):,} training entries, {exp.steps_per_epoch} steps "
            f"per epoch of batch {exp.config.data.batch_size}, {exp.config.num_epochs} epochs "
            f"in the recipe; unpacked and built in {time.time() - start:.1f} s",
            flush=True,
        )
        total = QUICK_UCLA_STEPS if args.quick else exp.total_steps
        best, best_epoch, step, eval_s, train_start = 0.0, 0.0, 0, 0.0, time.time()
        while step < total and budget.left() > eval_s:
            state, metrics = train_step(state, sharding.global_batch(next(batches), exp.mesh))
            step += 1
            if step == 1:
                jax.block_until_ready(metrics)
                print(f"   first step (compiles) {time.time() - train_start:.1f} s", flush=True)
            if step % exp.steps_per_epoch and step < total and budget.left() > eval_s:
                continue
            evaluated = time.time()
            top1 = loop.evaluate(exp, eval_step, state.backbone_variables()).top1
            eval_s = time.time() - evaluated
            epoch = step / exp.steps_per_epoch
            if top1 > best:
                best, best_epoch = top1, epoch
            print(
                f"   epoch {epoch:.2f} ({step:,} steps): loss {float(metrics['loss']):.3f}, "
                f"test top-1 {top1:.2f}% (best {best:.2f}% at epoch {best_epoch:.2f}); "
                f"{time.time() - train_start:.0f} s training, evaluation {eval_s:.1f} s",
                flush=True,
            )
        print(
            f"   reached epoch {step / exp.steps_per_epoch:.2f} of {exp.config.num_epochs} "
            f"({step:,} steps) in {time.time() - train_start:.0f} s; best test top-1 "
            f"{best:.2f}% at epoch {best_epoch:.2f}",
            flush=True,
        )


def versions() -> str:
    names = ("jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all items")
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES), help="section 3's")
    parser.add_argument("--ucla-model", default="ctrgcn", help="section 4's backbone")
    parser.add_argument("--ucla-npz", default="benchmarks/nw_ucla_packed.npz")
    parser.add_argument("--pack-ucla", help="NW-UCLA folder (holding all_sqe/) to pack")
    parser.add_argument("--out", default="benchmarks/nw_ucla_packed.npz")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_ucla:
        size = pack_ucla(Path(args.pack_ucla), Path(args.out))
        print(f"{args.out}: {size / 2**20:.1f} MiB")
        return
    # Without preallocation each process takes only what it uses: the children share the
    # device with this process, and the allocator's peak is then what the item needed.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.child:
        run_child(args)
        return
    budget = Budget(time.time() + args.budget_s)
    devices = jax.devices()
    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    print(
        f"1. jax {jax.__version__} ({versions()}); {len(devices)} x {devices[0].device_kind} "
        f"({devices[0].platform}){f', {memory_text(limit)} usable each' if limit else ''}; "
        f"budget {args.budget_s:.0f} s{' (--quick)' if args.quick else ''}",
        flush=True,
    )
    failures = 0
    for item in (csre_part, backbone_steps, train_ucla):
        try:
            failures += item(args, budget) or 0
        except Exception as error:  # noqa: BLE001 (a failed item must not cost the others)
            failures += 1
            traceback.print_exc()
            print(f"{item.__name__} failed: {type(error).__name__}: {error}", flush=True)
    print(f"\ndone: {failures} failed, {max(budget.left(), 0):.0f} s of the budget left")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
