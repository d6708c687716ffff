"""End-to-end training on a tiny synthetic config: learning, exact resume, clear errors."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import synthetic
from csre_jax.run_metrics import read_metrics
from csre_jax.run_variables import restore_variables
from csre_jax.training import loop
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.run_record import ResumeRefused

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    config = synthetic.get_config()
    config.num_epochs = 3
    config.log_every_steps = 1
    config.data.num_train = 106  # 96 after the validation hold-out: 6 steps of 16
    config.data.num_test = 48
    config.data.num_frames = 16
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config.model.kwargs.base_channels = 8
    config.csre.num_positives = 4
    config.csre.num_negatives = 16
    config.optim.warmup_epochs = 1
    config.optim.milestones = (2,)
    config.update_from_flattened_dict(overrides)
    return config


def _latest_state(workdir: Path) -> dict:
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))

    def to_host(x):
        is_key = jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(x) if is_key else x)

    return jax.tree.map(to_host, restored.state)


RESUME_CONFIG = {"num_epochs": 2, "checkpoint_every_steps": 4}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 epochs of 6 steps, a checkpoint every 4: what the run-folder tests read, and the
    uninterrupted run that the interrupted ones must equal (straight_run)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    return workdir, loop.train_and_evaluate(tiny_config(**RESUME_CONFIG), workdir)


def test_tiny_run_learns_and_writes_everything(tiny_run):
    tmp_path, summary = tiny_run
    steps = read_metrics(tmp_path, "train_step")
    assert len(steps) == 2 * (96 // 16)
    first, last = steps[0], steps[-1]
    assert last["ce"] < first["ce"], (first["ce"], last["ce"])
    for key in (
        "loss",
        "ce",
        "loss_spatial",
        "loss_temporal",
        "valid_spatial",
        "top1",
        "lr",
        "samples_per_second",
    ):
        assert key in first
    # the banks fill up during the first epoch, so anchors become valid and the loss is used
    assert max(s["valid_spatial"] for s in steps) > 0
    assert max(s["loss_temporal"] for s in steps) > 0
    epochs = read_metrics(tmp_path, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert (tmp_path / "config.json").is_file()
    # the synthetic config holds a validation split out, so the model is selected on it
    assert summary["rule"] == "val"
    on_val = max(epochs, key=lambda e: (e["val_top1"], -e["epoch"]))
    assert summary["selected"]["epoch"] == on_val["epoch"]
    assert summary["selected"]["test_top1"] == on_val["test_top1"]
    assert summary["test"]["test_top1"] == max(e["test_top1"] for e in epochs)
    assert summary["last"]["epoch"] == 2
    assert [r for r in read_metrics(tmp_path, "selection")] == [
        {"kind": "selection", "step": 12} | summary
    ]
    # best/ holds the validation-selected model, and the score files are its scores
    assert [p.name for p in (tmp_path / "best").iterdir()] == [str(6 * int(on_val["epoch"]))]
    scores = np.load(tmp_path / "scores" / "test_scores.npz")
    assert scores["logits"].shape == (48, 10) and scores["features"].shape == (48, 32)
    top1 = 100 * np.mean(scores["logits"].argmax(1) == scores["labels"])
    np.testing.assert_allclose(top1, on_val["test_top1"], atol=1e-6)
    # the held-out samples are recorded and scored by the same best model
    split = json.loads((tmp_path / "validation_split.json").read_text())
    assert (split["num_train_samples"], split["fraction"], len(split["indices"])) == (106, 0.1, 10)
    val = np.load(tmp_path / "scores" / "val_scores.npz")
    assert val["logits"].shape == (10, 10) and val["sample_ids"].tolist() == split["indices"]
    assert json.loads(str(val["metadata"]))["split"] == "val"


@pytest.fixture(scope="module")
def straight_run(tiny_run) -> Path:
    """The uninterrupted run the interrupted ones must equal: 2 epochs of 6 steps."""
    return tiny_run[0]


def _records_without_timing(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = map(json.loads, lines)
    return [{k: v for k, v in r.items() if k != "samples_per_second"} for r in records]


def _assert_same_run(straight: Path, resumed: Path) -> None:
    """The same final state, and metrics.jsonl with each step once, equal record for record
    (epoch records averaging the whole epoch across the restart)."""
    a, b = _latest_state(straight), _latest_state(resumed)
    assert int(b["step"]) == int(a["step"]) == 12
    leaves = zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True)
    for (path, x), y in leaves:
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    want, got = _records_without_timing(straight), _records_without_timing(resumed)
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for x, y in zip(want, got, strict=True):
        assert y.keys() == x.keys(), (x, y)
        if x["kind"] == "selection":  # the summary: epochs and accuracies, exact
            assert y == x
            continue
        numbers = {k: v for k, v in x.items() if k != "kind"}
        assert {k: y[k] for k in numbers} == pytest.approx(numbers, rel=1e-6), (x, y)


def test_killed_run_resumes_exactly_like_an_uninterrupted_one(straight_run, tmp_path, monkeypatch):
    """A hard kill mid-epoch (no stop request, so no checkpoint of its own): the resume must
    restore the epoch's running sums, or epoch 2's record averages only the steps after it."""
    config = tiny_config(**RESUME_CONFIG)
    steps = {"n": 0}
    real_global_batch = loop.sharding.global_batch

    def killed_before_step_ten(local, mesh):
        if "index" in local:  # evaluation batches pass here too; only training ones have it
            steps["n"] += 1
            if steps["n"] == 10:
                raise KeyboardInterrupt
        return real_global_batch(local, mesh)

    monkeypatch.setattr(loop.sharding, "global_batch", killed_before_step_ten)
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(config, tmp_path)
    with Checkpointer(tmp_path) as checkpointer:
        resume_step = checkpointer.latest_step()
    # epochs are steps 1-6 and 7-12, checkpoints every 4 steps and at each epoch's end
    assert resume_step == 8, f"the kill should leave step 8's checkpoint, not {resume_step}"
    monkeypatch.setattr(loop.sharding, "global_batch", real_global_batch)
    loop.train_and_evaluate(config, tmp_path)
    _assert_same_run(straight_run, tmp_path)


def _train_flags(config) -> list[str]:
    """tiny_config as train.py flags on configs/synthetic.py."""
    overrides = {
        "num_epochs": config.num_epochs,
        "log_every_steps": config.log_every_steps,
        "checkpoint_every_steps": config.checkpoint_every_steps,
        "data.num_train": config.data.num_train,
        "data.num_test": config.data.num_test,
        "data.num_frames": config.data.num_frames,
        "data.batch_size": config.data.batch_size,
        "data.eval_batch_size": config.data.eval_batch_size,
        "model.kwargs.base_channels": config.model.kwargs.base_channels,
        "csre.num_positives": config.csre.num_positives,
        "csre.num_negatives": config.csre.num_negatives,
        "optim.warmup_epochs": config.optim.warmup_epochs,
        "optim.milestones": "(2,)",
    }
    return ["--config=configs/synthetic.py", *(f"--config.{k}={v}" for k, v in overrides.items())]


def test_a_signal_stops_with_a_checkpoint_and_the_run_resumes_exactly(straight_run, tmp_path):
    """SLURM's SIGTERM during a run (saves pending): a few lines ending with the step and the
    resume command, exit status 128 + signal, and a resume equal to the uninterrupted run.
    Ctrl-C takes the same path (tests/test_interrupts.py checks its handler)."""
    signal_name = "SIGTERM"
    config = tiny_config(**RESUME_CONFIG)
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    process = subprocess.Popen(
        [sys.executable, "train.py", *_train_flags(config), f"--workdir={tmp_path}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + getattr(signal, signal_name), stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) < 30, stderr
    assert re.match(rf"{signal_name}: training stopped after step \d+ of 12", lines[-3]), lines
    assert lines[-1].strip().endswith(f"--workdir={tmp_path}"), lines
    assert "Event loop is closed" not in stderr
    loop.train_and_evaluate(config, tmp_path)
    _assert_same_run(straight_run, tmp_path)


def test_resumes_record_only_what_they_started_with(straight_run, tmp_path, capsys, monkeypatch):
    """A refused resume, and an accepted one that fails before it starts, leave the run record
    as it was; a finished run run again prints its result without compiling; a resume says
    where it resumes from."""
    workdir = tmp_path / "run"
    shutil.copytree(straight_run, workdir)
    before = {p: p.read_bytes() for p in (workdir / "config.json", workdir / "metrics.jsonl")}
    changed = tiny_config(**RESUME_CONFIG, **{"model.kwargs.base_channels": 16})
    with pytest.raises(ResumeRefused, match=r"model\.kwargs\.base_channels: 8 -> 16"):
        loop.train_and_evaluate(changed, workdir)
    assert {p: p.read_bytes() for p in before} == before

    capsys.readouterr()
    again = loop.train_and_evaluate(tiny_config(**RESUME_CONFIG), workdir)
    out = capsys.readouterr().out
    assert f"{workdir}: finished, all 12 steps trained" in out and "compiling" not in out
    (recorded,) = read_metrics(straight_run, "selection")  # what the run said when it ended
    assert again == {k: v for k, v in recorded.items() if k not in ("kind", "step")}

    longer = tiny_config(**{**RESUME_CONFIG, "num_epochs": 3})  # a safe change: two more epochs
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_compile_train_step", _fail_to_compile)
        with pytest.raises(RuntimeError, match="compilation failed"):
            loop.train_and_evaluate(longer, workdir)
    assert not (workdir / "config_changes.jsonl").exists()
    assert {p: p.read_bytes() for p in before} == before

    capsys.readouterr()
    loop.train_and_evaluate(longer, workdir)
    assert f"resuming from step 12 ({workdir / 'checkpoints' / '12'})" in capsys.readouterr().out
    record = json.loads((workdir / "config_changes.jsonl").read_text())
    assert record == {"step": 12, "changes": {"num_epochs": [2, 3]}}
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3


def _fail_to_compile(*args):
    raise RuntimeError("compilation failed")


def test_eval_cli_rescores_the_best_checkpoint_from_the_run_config(tiny_run, tmp_path):
    workdir, summary = tiny_run
    best = {"top1": summary["selected"]["test_top1"]}
    output = tmp_path / "rescored.npz"
    result = _run("eval.py", f"--workdir={workdir}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"top-1 {best['top1']:.2f}%" in result.stdout
    rescored, during_training = np.load(output), np.load(workdir / "scores" / "test_scores.npz")
    np.testing.assert_allclose(rescored["logits"], during_training["logits"], rtol=1e-5, atol=1e-5)

    result = _run("eval.py", f"--runs={output},{output}", "--weights=1,0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"| ensemble of 2 runs | {best['top1']:.2f} |" in result.stdout


def test_a_checkpoint_of_another_model_is_refused_with_its_path(tiny_run):
    workdir, _ = tiny_run
    variables, step = restore_variables(workdir / "best", _backbone_template(8))
    assert step > 0 and variables["params"]
    with pytest.raises(ValueError, match=r"best/\d+: the checkpoint's parameters do not fit"):
        restore_variables(workdir / "best", _backbone_template(16))


def _backbone_template(width: int) -> dict:
    config = tiny_config()
    config.model.kwargs.base_channels = width
    exp = loop.build(config)
    inputs = {k: np.zeros((1, *s), np.float32) for k, s in exp.dataset.input_shapes().items()}
    return jax.eval_shape(exp.backbone.init, jax.random.key(0), **inputs)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs an entry point as a user would; it shares the session's compilation cache."""
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
