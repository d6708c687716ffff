"""Watching a run: TensorBoard event files beside metrics.jsonl, each step kept once after a
resume, and the report's training curves; records written through MetricWriter, no training."""

import json
import re
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from csre_jax.evaluate.ensembles import evaluate_runs
from csre_jax.evaluate.reports import write_report
from csre_jax.evaluate.runs import load_runs
from csre_jax.evaluate.scores import save_scores
from csre_jax.run_metrics import read_metrics
from csre_jax.training.metrics import MetricWriter
from csre_jax.workdir import RunFolder

PNG = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 4


def _event_files(folder: Path) -> list[Path]:
    """In the order TensorBoard reads them: by name."""
    return sorted(folder.glob("events.out.tfevents.*"))


def _events(path: Path) -> list[event_pb2.Event]:
    """The Event protos of a TFRecord file: length (8 bytes), its CRC (4), data, data CRC (4)."""
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows the folder: files in name order, and a
    SessionLog START at step s (tensorboardX's purge_step) hides the earlier events at steps
    >= s (TensorBoard's event_accumulator purge of orphaned data)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in _event_files(folder):
        for event in _events(path):
            if event.session_log.status == event_pb2.SessionLog.START:
                scalars = {tag: [p for p in v if p[0] < event.step] for tag, v in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _log(writer: MetricWriter, steps: range, offset: float = 0.0) -> None:
    """Step records at every step and an epoch record (with test top-1) at each epoch's end;
    values are step + offset, so a rerun's records tell apart from the first run's."""
    for step in steps:
        value = step + offset
        writer.write(
            "train_step",
            step,
            {"loss": value, "ce": value / 2, "loss_spatial": value / 4, "lr": 0.1},
        )
        if step % STEPS_PER_EPOCH == 0:
            epoch = step // STEPS_PER_EPOCH
            writer.write("epoch", step, {"loss": value, "epoch": epoch, "test_top1": 10.0 * epoch})


def test_tensorboard_event_files_hold_every_scalar(tmp_path):
    with MetricWriter(tmp_path) as writer:
        _log(writer, range(1, 9))
    (path,) = _event_files(tmp_path)
    scalars = _tensorboard_scalars(tmp_path)
    assert set(scalars) == {
        "train/loss",
        "train/ce",
        "train/loss_spatial",
        "train/lr",
        "epoch/loss",
        "epoch/epoch",
        "epoch/test_top1",
    }
    assert scalars["train/loss"] == [(s, float(s)) for s in range(1, 9)]
    assert scalars["train/ce"][2] == (3, 1.5)
    assert scalars["train/lr"][-1] == (8, pytest.approx(0.1))
    assert scalars["epoch/test_top1"] == [(4, 10.0), (8, 20.0)]
    # the JSON lines hold the same records
    assert [r["step"] for r in read_metrics(tmp_path, "epoch")] == [4, 8]
    assert len(read_metrics(tmp_path, "train_step")) == 8


def test_a_resume_keeps_each_step_once(tmp_path):
    # a run checkpointed at step 4 and stopped after logging step 6, then resumed at 4
    with MetricWriter(tmp_path, resume_step=0) as writer:
        _log(writer, range(1, 7))
    with MetricWriter(tmp_path, resume_step=4) as writer:
        _log(writer, range(5, 13), offset=100.0)

    records = read_metrics(tmp_path)
    steps = [r["step"] for r in records if r["kind"] == "train_step"]
    assert steps == list(range(1, 13))
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [4, 8, 12]
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train_step"}
    assert losses[4] == 4.0 and losses[5] == 105.0  # the first run up to 4, the rerun after

    _, resumed = _event_files(tmp_path)
    # TensorBoard hides the first run's events from step 5 on
    starts = [
        e.step for e in _events(resumed) if e.session_log.status == event_pb2.SessionLog.START
    ]
    assert starts == [5]
    scalars = _tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == sorted(losses.items())
    assert scalars["epoch/test_top1"] == [(4, 10.0), (8, 20.0), (12, 30.0)]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_fresh_start_clears_a_run_stopped_before_its_first_checkpoint(tmp_path):
    with MetricWriter(tmp_path) as writer:
        _log(writer, range(1, 4))
    with MetricWriter(tmp_path, resume_step=0) as writer:
        _log(writer, range(1, 3), offset=100.0)
    assert [r["loss"] for r in read_metrics(tmp_path)] == [101.0, 102.0]
    assert _tensorboard_scalars(tmp_path)["train/loss"] == [(1, 101.0), (2, 102.0)]


def test_a_line_torn_by_a_kill_is_dropped_and_a_damaged_one_named(tmp_path):
    with MetricWriter(tmp_path) as writer:
        _log(writer, range(1, 4))
    metrics = RunFolder(tmp_path).metrics
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"kind": "train_st')
    with MetricWriter(tmp_path, resume_step=3) as writer:
        _log(writer, range(4, 5))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 4]

    metrics.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{metrics}:2: not a JSON record")):
        MetricWriter(tmp_path, resume_step=3)


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with MetricWriter(tmp_path, resume_step=0) as writer:
        _log(writer, range(1, 3))
    assert list(tmp_path.iterdir()) == []


def _run_folder(root: Path, offset: float) -> None:
    """A run folder as train.py leaves it: metrics.jsonl (3 epochs) and the test scores."""
    with MetricWriter(root, resume_step=0) as writer:
        _log(writer, range(1, 13), offset)
    labels = np.repeat(np.arange(10), 3)
    logits = np.eye(10)[labels] + np.random.default_rng(0).normal(size=(30, 10))
    save_scores(RunFolder(root).test_scores, logits, labels, {"dataset": "synthetic"})


def test_the_report_draws_the_training_curves_of_run_folders(tmp_path):
    _run_folder(tmp_path / "csre", 0.0)
    _run_folder(tmp_path / "baseline", 1.0)
    evaluation = evaluate_runs(load_runs([str(tmp_path / "csre")])[0])
    baseline = evaluate_runs(load_runs([str(tmp_path / "baseline")])[0])
    report = write_report(tmp_path / "report", evaluation, baseline)

    curves = tmp_path / "report" / "curves.png"
    assert curves.read_bytes()[:8] == PNG and curves.stat().st_size > 10_000
    assert report["curves_of"] == [str(tmp_path / "csre"), str(tmp_path / "baseline")]
    assert "![curves](curves.png)" in (tmp_path / "report" / "report.md").read_text()
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report


def test_the_report_says_why_it_has_no_curves(tmp_path):
    # a score file beside a run's metrics but not in its scores/ folder: not that run's
    _run_folder(tmp_path, 0.0)
    exported = tmp_path / "exported" / "joint.npz"
    labels = np.repeat(np.arange(10), 3)
    save_scores(exported, np.eye(10)[labels], labels, {"dataset": "synthetic"})
    evaluation = evaluate_runs(load_runs([str(exported)])[0])
    report = write_report(tmp_path / "report", evaluation)
    assert "curves" not in report["figures"]
    assert not (tmp_path / "report" / "curves.png").exists()
    assert any("no training curves" in note for note in report["notes"])
