"""How fast a trained backbone predicts on CPU: the Predictor, the exported artefacts and the
official PyTorch code, side by side.

  python -m benchmarks.export_speed                          # about 20 min on 2 CPU cores
  python -m benchmarks.export_speed --torch-python=/path/to/torch/python --official-root=DIR
  python -m benchmarks.export_speed --quick                  # a smoke run: tiny widths

Each backbone at its official width on the NTU shape (3 x 64 frames x 25 joints x 2 persons,
120 classes, random weights), in its own process, at batch 1 and 16: the median seconds of
repeated calls after the first (which compiles), and sequences per second, of
  before     the Predictor as it was: every call padded to the run's evaluation batch (256 for
             NTU), so timed once and shown at both sizes
  predictor  Predictor.logits: a call runs in the smallest power-of-two batch holding it
  stablehlo  export_stablehlo's file loaded with jax alone, as docs/export.md's loader does
  onnx       export_onnx's file in onnxruntime (pip install --no-deps -r requirements-export.txt)
  official   the official model in eval mode under torch.no_grad: benchmarks.torch_reference
             --predict, run with --torch-python and --official-root (see its docstring)
All take the same model inputs and must give the Predictor's logits (the table shows the
largest difference, relative to the largest logit). The test-time transform of keypoints
(Predictor.inputs) comes before any of them; its time per sequence is printed on its own.
A path that cannot run here is printed as 'not measured' with the reason. The last table
holds the targets: the Predictor at least 20% faster than before, the StableHLO file
within 10% of the Predictor, onnxruntime within 1.5x of it.
"""

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from csre_jax import export, models
from csre_jax.layouts import load_layout
from csre_jax.model_card import ModelCard
from csre_jax.models.build import build_backbone
from csre_jax.predictor import Predictor

PATHS = ("before", "predictor", "stablehlo", "onnx", "official")
LABELS = {
    "before": "Predictor as it was (padded to the evaluation batch)",
    "predictor": "Predictor now (padded to a power of two)",
    "stablehlo": "StableHLO file, jax alone",
    "onnx": "ONNX file, onnxruntime",
    "official": "official PyTorch, eval mode",
}
RESULT_MARK = "@@export_speed@@"
RAW_FRAMES = 100  # the keypoints whose test-time transform is timed
NTU_CLASSES = 120


BEFORE = {"min_calls": 2, "min_s": 0.0, "max_calls": 2}  # a full evaluation batch a call


def sizes(quick: bool) -> dict:
    """Frames, batch sizes and how long each path is timed."""
    if quick:
        return {"frames": 16, "batches": (1, 2), "min_calls": 2, "min_s": 0.0, "max_calls": 2}
    return {"frames": 64, "batches": (1, 16), "min_calls": 5, "min_s": 5.0, "max_calls": 30}


def setup(model: str, quick: bool, frames: int):
    """(config, card, backbone, variables): the model's NTU120 config at the official width
    (tiny widths with --quick) and fresh random variables."""
    config = importlib.import_module(f"configs.{model}").get_config(
        "ntu120,xsub" + (",tiny" if quick else "")
    )
    config.num_devices = 1
    shape = (3, frames, 25, 2)
    names = ("x", *models.extra_inputs(models.create_model(model, num_classes=1, dataset="ntu")))
    classes = tuple(f"class {k}" for k in range(NTU_CLASSES))
    card = ModelCard(load_layout("ntu"), dict.fromkeys(names, shape), classes)
    backbone = build_backbone(config, card)
    sample = {name: jnp.zeros((1, *shape), jnp.float32) for name in names}
    variables = backbone.init(jax.random.key(0), **sample, train=False)
    return config, card, backbone, variables


def timed(call: Callable[[], np.ndarray], size: dict) -> tuple[dict, np.ndarray]:
    """The first call (compiles) and the median of at least min_calls further calls, more up
    to max_calls while they take under min_s in all; and the first call's output."""
    start = time.perf_counter()
    output = call()
    first = time.perf_counter() - start
    times = []
    while len(times) < size["min_calls"] or (
        sum(times) < size["min_s"] and len(times) < size["max_calls"]
    ):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(times), "calls": len(times)}, output


def padded_to_eval_batch(predictor: Predictor) -> Callable:
    """The Predictor as it was: any number of sequences padded to its batch_size, the run's
    evaluation batch, in one call of the step."""

    def logits(inputs: dict) -> np.ndarray:
        count = len(inputs["x"])
        pad = predictor.batch_size - count
        return predictor.logits(
            {k: np.concatenate([v, v[-1:].repeat(pad, 0)]) for k, v in inputs.items()}
        )[:count]

    return logits


def load_stablehlo(path: Path) -> Callable:
    """docs/export.md's loader: jax and numpy alone."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    variables = jax.device_put(dict(np.load(f"{path}.variables.npz")))
    run = jax.jit(exported.call)
    return lambda inputs: np.asarray(run(variables, inputs))


def load_onnx(path: Path) -> Callable:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(["logits"], inputs)[0]


def exported_paths(backbone, variables, card, folder: Path) -> tuple[dict, dict, dict]:
    """({path: predict}, {path: reason not measured}, {path: export seconds})."""
    loaders, skipped, export_s = {}, {}, {}
    for name, exporter, loader in (
        ("stablehlo", export.export_stablehlo, load_stablehlo),
        ("onnx", export.export_onnx, load_onnx),
    ):
        start = time.perf_counter()
        try:
            out = exporter(backbone, variables, card, folder / f"model.{name}")[0]
            export_s[name] = time.perf_counter() - start
            loaders[name] = loader(out)
        except ImportError as error:
            skipped[name] = f"not installed here ({error})"
        except Exception as error:  # noqa: BLE001 (one path failing leaves the others)
            skipped[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"
    return loaders, skipped, export_s


def transform_ms(config, card, backbone, variables, frames: int) -> float:
    """Milliseconds per sequence of Predictor.inputs on keypoints of 2 persons x `frames`."""
    predictor = Predictor(config, card, backbone, variables, batch_size=1)
    keypoints = np.random.default_rng(2).normal(size=(2, frames, 25, 3)).astype(np.float32)
    predictor.inputs(keypoints)
    start = time.perf_counter()
    for _ in range(20):
        predictor.inputs(keypoints)
    return (time.perf_counter() - start) / 20 * 1e3


def measure(model: str, quick: bool) -> dict:
    """Every JAX-side path of one backbone in this process."""
    size = sizes(quick)
    config, card, backbone, variables = setup(model, quick, size["frames"])
    rows = {name: {} for name in PATHS[:4]}
    predictor = Predictor(config, card, backbone, variables)  # the run's evaluation batch
    before = padded_to_eval_batch(predictor)
    with tempfile.TemporaryDirectory() as folder:
        loaders, skipped, export_s = exported_paths(backbone, variables, card, Path(folder))
        rng = np.random.default_rng(1)
        for batch in sorted(size["batches"], reverse=True):
            x = rng.normal(size=(batch, *card.input_shapes["x"])).astype(np.float32)
            inputs = dict.fromkeys(card.input_shapes, x)  # BlockGCN's joint: the clip itself
            calls = {"predictor": predictor.logits, **loaders}
            if not rows["before"]:  # one padded call whatever the batch: timed once
                calls["before"] = before
            outputs = {}
            for name, predict in calls.items():
                call = lambda p=predict, i=inputs: p(i)  # noqa: E731
                rows[name][str(batch)], outputs[name] = timed(
                    call, BEFORE if name == "before" else size
                )
                print(f"  {model} {name} batch {batch}: {rows[name][str(batch)]}", flush=True)
            scale = float(np.abs(outputs["predictor"]).max())
            for name, output in outputs.items():
                diff = float(np.abs(output - outputs["predictor"]).max()) / scale
                rows[name][str(batch)]["max_diff"] = diff
        for batch in size["batches"]:
            rows["before"].setdefault(str(batch), rows["before"][str(max(size["batches"]))])
    for name, reason in skipped.items():
        rows[name] = {"skipped": reason}
    # NTU sequences are cropped and resized to the window; the tiny (synthetic) runs take it
    frames = size["frames"] if quick else RAW_FRAMES
    return {
        "rows": rows,
        "export_s": export_s,
        "transform_ms": transform_ms(config, card, backbone, variables, frames),
        "raw_frames": frames,
    }


def official(args, model: str, batch: int, frames: int) -> dict:
    """benchmarks.torch_reference --predict for one backbone and batch, or why not."""
    if not args.torch_python or not args.official_root:
        return {"skipped": "no PyTorch given (--torch-python and --official-root)"}
    size = sizes(args.quick)
    steps = size["min_calls"] if batch > 1 or args.quick else 4 * size["min_calls"]
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "torch.json"
        done = subprocess.run(
            [
                args.torch_python,
                "-m",
                "benchmarks.torch_reference",
                "--predict",
                f"--official-root={args.official_root}",
                f"--models={model}",
                f"--batch={batch}",
                f"--frames={frames}",
                f"--classes={NTU_CLASSES}",
                f"--threads={os.cpu_count()}",
                f"--steps={steps}",
                f"--json={output}",
            ],
            capture_output=True,
            text=True,
        )
        result = json.loads(output.read_text()).get(model) if output.is_file() else None
    if result is None:
        lines = (done.stdout + done.stderr).strip().splitlines()
        return {"skipped": f"official code did not run: {lines[-1] if lines else '?'}"}
    return {"first_s": result["first_call_s"], "median_s": result["call_s"], "max_diff": None}


def run_child(args, model: str) -> dict:
    """`measure` in a fresh interpreter (its own memory and compilation), or the error."""
    command = [sys.executable, "-m", "benchmarks.export_speed", f"--child={model}"]
    done = subprocess.run(
        command + (["--quick"] if args.quick else []), stdout=subprocess.PIPE, text=True
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
        print(line, flush=True)
    return {"error": f"exit {done.returncode}"}


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(results: dict, batches: tuple[int, ...]) -> str:
    small, large = batches
    lines = [
        f"| backbone | path | batch {small} | sequences/s | batch {large} | sequences/s | "
        f"first call, batch {large} | logits vs Predictor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, result in results.items():
        if "error" in result:
            lines.append(f"| {model} | failed: {result['error']} | | | | | | |")
            continue
        for name in PATHS:
            row = result["rows"][name]
            if "skipped" in row:
                lines.append(
                    f"| {model} | {LABELS[name]} | not measured: {row['skipped']} | | | | | |"
                )
                continue
            cells = []
            for batch in batches:
                median = row[str(batch)]["median_s"]
                cells += [_time(median), f"{batch / median:.1f}"]
            diff = row[str(large)]["max_diff"]
            lines.append(
                f"| {model} | {LABELS[name]} | {' | '.join(cells)} | "
                f"{_time(row[str(large)]['first_s'])} | "
                f"{'-' if diff is None else f'{diff:.0e}'} |"
            )
    return "\n".join(lines)


def _ratio(rows: dict, name: str, reference: str, batch: int) -> float | None:
    if "skipped" in rows[name] or "skipped" in rows[reference]:
        return None
    return rows[name][str(batch)]["median_s"] / rows[reference][str(batch)]["median_s"]


def targets(results: dict, batches: tuple[int, ...]) -> str:
    """Each target as a ratio of medians and whether it is met."""
    small, large = batches

    def cell(ratio: float | None, limit: float) -> str:
        if ratio is None:
            return "not measured"
        shown = f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"
        return f"{shown} ({'met' if ratio <= limit else 'missed'})"

    lines = [
        f"| backbone | Predictor / before, batch {small} (at most 0.80) | batch {large} "
        f"| StableHLO / Predictor, batch {small} / {large} (at most 1.10) "
        f"| onnxruntime / Predictor, batch {small} / {large} (at most 1.5) "
        f"| official / Predictor, batch {small} / {large} |",
        "|---|---|---|---|---|---|",
    ]
    for model, result in results.items():
        if "error" in result:
            continue
        rows = result["rows"]
        cells = [cell(_ratio(rows, "predictor", "before", b), 0.8) for b in batches]
        for name, limit in (("stablehlo", 1.1), ("onnx", 1.5)):
            cells.append(
                " / ".join(cell(_ratio(rows, name, "predictor", b), limit) for b in batches)
            )
        ratios = [_ratio(rows, "official", "predictor", b) for b in batches]
        cells.append("not measured" if None in ratios else " / ".join(f"{r:.2f}" for r in ratios))
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES))
    parser.add_argument("--torch-python", help="a Python with PyTorch (never this project's)")
    parser.add_argument("--official-root", help="benchmarks.torch_reference's official clones")
    parser.add_argument("--quick", action="store_true", help="tiny widths, 16 frames, batch 2")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_MARK + json.dumps(measure(args.child, args.quick)), flush=True)
        return
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(models.MODEL_NAMES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(models.MODEL_NAMES)}")
    size = sizes(args.quick)
    print(
        f"jax {jax.__version__} on {os.cpu_count()} CPU cores; NTU shape, {size['frames']} "
        f"frames, {NTU_CLASSES} classes, batch {' and '.join(map(str, size['batches']))}"
        f"{', tiny widths' if args.quick else ', official widths'}",
        flush=True,
    )
    results = {}
    for model in names:
        results[model] = run_child(args, model)
        if "error" in results[model]:
            continue
        rows = {str(b): official(args, model, b, size["frames"]) for b in size["batches"]}
        reasons = [row["skipped"] for row in rows.values() if "skipped" in row]
        results[model]["rows"]["official"] = {"skipped": reasons[0]} if reasons else rows
    measured = {model: r for model, r in results.items() if "error" not in r}
    frames = next((r["raw_frames"] for r in measured.values()), RAW_FRAMES)
    transform = ", ".join(f"{m} {r['transform_ms']:.2f} ms" for m, r in measured.items())
    exports = ", ".join(
        f"{m} " + " / ".join(f"{k} {v:.0f} s" for k, v in r["export_s"].items())
        for m, r in measured.items()
    )
    print()
    print(table(results, size["batches"]))
    print()
    print(f"Test-time transform per sequence (Predictor.inputs, 2 persons x {frames} frames):")
    print(f"  {transform}")
    print(f"Export time: {exports}")
    skipped = [n for n in models.MODEL_NAMES if n not in names]
    if skipped:
        print(f"Backbones not measured in this run (--models): {', '.join(skipped)}")
    print()
    print(targets(results, size["batches"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
