"""An exported backbone computes what evaluation computes: every backbone, written as StableHLO
and as ONNX, gives the eval step's logits at two batch sizes through docs/export.md's loaders;
those loaders run as documented in a Python without flax and csre_jax; export.py exports a
run and refuses a run without a best model and an unwritable --out in one line each."""

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import max_rel_err

from csre_jax import export
from csre_jax.evaluate.scoring import make_eval_step
from csre_jax.layouts import load_layout
from csre_jax.model_card import ModelCard
from csre_jax.models import MODEL_NAMES
from csre_jax.models.build import backbone_shapes, build_backbone

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 3)
TOLERANCE = 1e-5  # max abs difference / max abs logit
# Whose logits depend on the other samples of the batch (models/blockgcn.py says why).
BATCH_DEPENDENT = ("blockgcn",)
SKELETONS = {"ntu60": ("ntu", 25, 2), "ucla": ("ucla", 20, 1)}  # layout, joints, persons


def documented_loaders() -> str:
    """The Python blocks of docs/export.md that define the loaders, as they stand there."""
    page = (REPO / "docs" / "export.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    return "\n".join(block for block in blocks if "\ndef load_" in block)


def loaders() -> dict:
    namespace: dict = {}
    exec(documented_loaders(), namespace)  # noqa: S102 (the documented snippet under test)
    return {"stablehlo": namespace["load_stablehlo"], "onnx": namespace["load_onnx"]}


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """A tiny backbone with random variables, inputs and its eval-step logits per batch size."""

    config: object
    card: ModelCard
    backbone: object
    variables: dict
    inputs: dict[int, dict[str, np.ndarray]]
    logits: dict[int, np.ndarray]


def random_variables(shapes: dict, rng: np.random.Generator) -> dict:
    """Variables of the given shapes without compiling an init: kernels scaled by their fan
    in, running statistics off their initial 0 and 1 so that eval mode shows, the rest
    (biases, graph and attention parameters) small, so that activations keep their scale."""

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "scale":
            value = rng.uniform(0.5, 1.0, shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def sequences(rng: np.random.Generator, batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise around a pose of each sample's own, so that samples differ after pooling."""
    pose = rng.normal(size=(batch, shape[0], 1, shape[2], 1))
    return (pose + 0.3 * rng.normal(size=(batch, *shape))).astype(np.float32)


def tiny_model(name: str, dataset: str = "ntu60") -> TinyModel:
    """configs/<name>.py:<dataset>,tiny's backbone with random variables."""
    config = importlib.import_module(f"configs.{name}").get_config(f"{dataset},tiny")
    layout, joints, persons = SKELETONS[dataset]
    shape = (3, config.data.num_frames, joints, persons)
    names = ("x", "joint") if config.data.keep_joint else ("x",)
    classes = tuple(f"class {k}" for k in range(config.data.num_classes))
    card = ModelCard(load_layout(layout), dict.fromkeys(names, shape), classes)
    backbone = build_backbone(config, card)
    rng = np.random.default_rng(0)
    variables = random_variables(backbone_shapes(backbone, card), rng)
    largest = BATCH_SIZES[-1]
    samples = {k: sequences(rng, largest, shape) for k in names}
    inputs = {b: {k: v[:b] for k, v in samples.items()} for b in BATCH_SIZES}
    step = jax.jit(make_eval_step(backbone))  # what the predictor runs
    if name in BATCH_DEPENDENT:
        logits = {b: np.asarray(step(variables, inputs[b])[0]) for b in BATCH_SIZES}
    else:  # a sample's logits are its own: one compiled batch gives every size's
        full = np.asarray(step(variables, samples)[0])
        logits = {b: full[:b] for b in BATCH_SIZES}
    return TinyModel(config, card, backbone, variables, inputs, logits)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(name, fmt) -> (TinyModel, paths written), each model built and exported once."""
    folder = tmp_path_factory.mktemp("exported")
    models: dict[str, TinyModel] = {}
    written: dict[tuple[str, str], list[Path]] = {}

    def get(name: str, fmt: str) -> tuple[TinyModel, list[Path]]:
        if name not in models:
            models[name] = tiny_model(name)
        model = models[name]
        if (name, fmt) not in written:
            written[name, fmt] = export.EXPORTERS[fmt](
                model.backbone, model.variables, model.card, folder / f"{name}.{fmt}"
            )
        return model, written[name, fmt]

    return get


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_exported_backbone_gives_the_eval_logits(exported, name, fmt):
    model, paths = exported(name, fmt)
    predict = loaders()[fmt](str(paths[0]))
    for b in BATCH_SIZES:
        error = max_rel_err(predict(model.inputs[b]), model.logits[b])
        assert error < TOLERANCE, f"{name} {fmt} batch {b}: max relative error {error:.2e}"
    card = json.loads(paths[-1].read_text())
    assert ModelCard.load(paths[-1]) == model.card
    assert card["inputs"] == {k: ["B", *s] for k, s in model.card.input_shapes.items()}


LOADER_SCRIPT = """
import json, sys
sys.modules["flax"] = None  # importing either fails: the loaders must not need them
sys.modules["csre_jax"] = None
import numpy as np
exec(sys.argv[1])
stablehlo, onnx, io = sys.argv[2:]
io = np.load(io)
inputs = {k: io[k] for k in io if k != "logits"}
errors = {}
for fmt, load, path in (("stablehlo", load_stablehlo, stablehlo), ("onnx", load_onnx, onnx)):
    logits = load(path)(inputs)
    errors[fmt] = float(np.abs(logits - io["logits"]).max() / np.abs(io["logits"]).max())
print(json.dumps(errors))
"""


def test_documented_loaders_need_neither_flax_nor_csre_jax(exported, tmp_path):
    """BlockGCN: two inputs by name."""
    model, (stablehlo, *_) = exported("blockgcn", "stablehlo")
    _, (onnx, *_) = exported("blockgcn", "onnx")
    io = tmp_path / "io.npz"
    np.savez(io, logits=model.logits[BATCH_SIZES[-1]], **model.inputs[BATCH_SIZES[-1]])
    done = subprocess.run(
        [sys.executable, "-c", LOADER_SCRIPT, documented_loaders(), stablehlo, onnx, io],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnxruntime" not in done.stderr, done.stderr[-3000:]  # no warning on loading
    errors = json.loads(done.stdout.splitlines()[-1])
    assert max(errors.values()) < TOLERANCE, errors


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> tuple[Path, TinyModel]:
    """A run folder as train.py leaves it, its best/ written by training's own checkpointer,
    with HCN's tiny NW-UCLA model."""
    from csre_jax.training.checkpoint import Checkpointer
    from csre_jax.workdir import RunFolder

    model = tiny_model("hcn", "ucla")
    run = RunFolder(tmp_path_factory.mktemp("run"))
    run.config.write_text(model.config.to_json_best_effort())
    model.card.save(run.model_card)
    with Checkpointer(run.root) as checkpoints:
        checkpoints.save_best(7, model.variables, {"top1": 50.0})
    return run.root, model


def _export_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "export.py", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_py_exports_the_best_model(run_folder, tmp_path, fmt):
    workdir, model = run_folder
    out = tmp_path / "serving" / f"model.{fmt}"
    done = _export_py(f"--workdir={workdir}", f"--format={fmt}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout
    card = json.loads(export.sidecar(out, export.CARD_SUFFIX).read_text())
    assert card["test_transform"]["window"] == model.card.num_frames
    logits = loaders()[fmt](str(out))(model.inputs[BATCH_SIZES[-1]])
    assert max_rel_err(logits, model.logits[BATCH_SIZES[-1]]) < TOLERANCE


def _one_error_line(done: subprocess.CompletedProcess, code: int = 1) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_a_run_without_a_best_model_says_what_to_do(run_folder, tmp_path):
    workdir, _ = run_folder
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.json", "model_card.json"):
        (fresh / name).write_bytes((workdir / name).read_bytes())
    line = _one_error_line(
        _export_py(f"--workdir={fresh}", "--format=onnx", f"--out={tmp_path / 'm.onnx'}")
    )
    assert str(fresh / "best") in line and "--checkpoint=latest" in line


def test_an_unwritable_out_is_one_line_naming_it(run_folder, tmp_path):
    workdir, _ = run_folder
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out, words in ((blocker / "m.onnx", str(blocker)), (tmp_path, f"{tmp_path}: a folder")):
        line = _one_error_line(
            _export_py(f"--workdir={workdir}", "--format=stablehlo", f"--out={out}")
        )
        assert words in line, line


def test_an_unknown_format_names_the_formats(run_folder, tmp_path):
    workdir, _ = run_folder
    done = _export_py(f"--workdir={workdir}", "--format=tflite", f"--out={tmp_path / 'm'}")
    assert "--format=tflite: value should be one of <stablehlo|onnx>" in _one_error_line(done, 2)
