"""Per-class reports on constructed logits, and the whole report for a small synthetic run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import hcn, synthetic
from csre_jax.errors import UserError
from csre_jax.evaluate import figures
from csre_jax.evaluate.class_names import class_names
from csre_jax.evaluate.ensembles import evaluate_runs
from csre_jax.evaluate.reports import (
    compare,
    confusion_matrix,
    difficulty_levels,
    level_table,
    most_confused,
    per_class_accuracy,
    write_report,
)
from csre_jax.evaluate.runs import load_runs
from csre_jax.evaluate.scores import ScoreFile, save_scores
from csre_jax.layouts import load_layout
from csre_jax.model_card import ModelCard
from csre_jax.training import loop
from csre_jax.workdir import RunFolder

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _logits_with_accuracy(right_per_class, samples_per_class=20, num_classes=4):
    """Logits where class c has right_per_class[c] of its samples right, the rest called c+1."""
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    predicted = labels.copy()
    for c, right in enumerate(right_per_class):
        predicted[c * samples_per_class + right : (c + 1) * samples_per_class] = (c + 1) % 4
    return np.eye(num_classes)[predicted], labels


def test_difficulty_levels_follow_the_paper_s_bounds():
    # 15/20 = 75% hard, 16/20 = 80% medium (bound included), 18/20 = 90% easy, 20/20 easy
    logits, labels = _logits_with_accuracy([15, 16, 18, 20])
    accuracy, counts = per_class_accuracy(logits, labels)
    np.testing.assert_allclose(accuracy, [75, 80, 90, 100])
    assert counts.tolist() == [20] * 4
    levels = difficulty_levels(accuracy)
    assert levels.tolist() == ["hard", "medium", "easy", "easy"]
    table = level_table(accuracy, levels)
    assert table["hard"] == {"classes": 1, "mean_accuracy": 75.0}
    assert table["easy"] == {"classes": 2, "mean_accuracy": 95.0}
    assert difficulty_levels(np.array([np.nan, 89.99])).tolist() == ["", "medium"]


def test_comparison_lists_gains_losses_and_level_moves():
    names = ["a", "b", "c", "d"]
    baseline = np.array([75.0, 80.0, 90.0, 100.0])  # hard, medium, easy, easy
    accuracy = np.array([95.0, 70.0, 90.0, 85.0])  # easy, hard, easy, medium
    result = compare(accuracy, baseline, names, top=10)
    assert [r["class"] for r in result["gained"]] == ["a"]
    assert [(r["class"], r["delta"]) for r in result["lost"]] == [("d", -15.0), ("b", -10.0)]
    by_level = result["levels_by_baseline"]
    hard = by_level["hard"]
    assert (hard["classes"], hard["baseline_mean_accuracy"], hard["mean_accuracy"]) == (1, 75, 95)
    assert by_level["easy"]["mean_accuracy"] == 87.5  # classes c and d, the baseline's easy
    assert result["level_transitions"]["hard"] == {"hard": 0, "medium": 0, "easy": 1}
    assert result["level_transitions"]["easy"] == {"hard": 0, "medium": 1, "easy": 1}
    assert result["mean_delta"] == pytest.approx(-1.25)
    assert [r["class"] for r in compare(accuracy, baseline, names, top=1)["lost"]] == ["d"]


def test_confusion_counts_and_most_confused_pairs():
    logits, labels = _logits_with_accuracy([15, 16, 18, 20])
    confusion = confusion_matrix(logits, labels)
    assert confusion[0].tolist() == [15, 5, 0, 0]  # class 0's misses go to class 1
    assert confusion.sum() == 80 and np.trace(confusion) == 69
    pairs = most_confused(confusion, ["a", "b", "c", "d"], top=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("a", "b", 5),
        ("b", "c", 4),
    ]
    assert pairs[0]["share_of_true_class"] == 25.0


def _constructed_runs(rng, strength):
    labels = np.repeat(np.arange(10), 6)
    runs = []
    for stream in ("joint", "bone"):
        logits = rng.normal(size=(60, 10)) + strength * np.eye(10)[labels]
        features = rng.normal(size=(60, 8)) + np.eye(10, 8)[labels]
        metadata = {"dataset": "synthetic", "stream": stream, "model": "ctrgcn"}
        runs.append(
            ScoreFile(
                logits=logits,
                labels=labels,
                sample_ids=np.arange(60),
                path=f"{stream}.npz",
                metadata=metadata,
                features=features,
            )
        )
    return runs


def test_report_files_from_constructed_scores(tmp_path):
    rng = np.random.default_rng(0)
    evaluation = evaluate_runs(_constructed_runs(rng, 2.0))
    baseline = evaluate_runs(_constructed_runs(rng, 1.0))
    report = write_report(tmp_path, evaluation, baseline, top=3, max_tsne_points=40)
    for name in ("confusion.png", "tsne.png", "per_class_delta.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["analysed"] == "2-stream (J+B)"
    assert report["tsne"] == {"features_of": "joint.npz", "points": 40}
    assert report["per_class"][0]["class"] == "wave right hand"
    assert len(report["comparison"]["gained"]) <= 3
    markdown = (tmp_path / "report.md").read_text()
    assert "| 2-stream (J+B) |" in markdown and "### Classes that gained most" in markdown
    assert "published default (CTR-GCN ensemble.py, J + 1.0·B)" in markdown
    assert not list(tmp_path.glob("*.tmp"))


def _custom_run(root: Path, stream: str, names: tuple[str, ...]) -> str:
    """A run folder of custom data: test scores with features, and the model card that
    training writes, naming the classes as data.class_names did."""
    rng = np.random.default_rng(len(stream))
    labels = np.repeat(np.arange(len(names)), 8)
    logits = rng.normal(size=(len(labels), len(names))) + 2 * np.eye(len(names))[labels]
    run = RunFolder(root)
    run.test_scores.parent.mkdir(parents=True)
    metadata = {"dataset": "custom", "stream": stream, "model": "hcn"}
    features = rng.normal(size=(len(labels), 4)) + np.eye(len(names), 4)[labels]
    save_scores(run.test_scores, logits, labels, metadata, features=features)
    ModelCard(load_layout("coco"), {"x": (3, 16, 17, 1)}, names).save(run.model_card)
    return str(root)


def _report_of(folder: Path, runs: list[str], monkeypatch) -> tuple[dict, dict]:
    """write_report of the runs, and each figure it drew (file name -> matplotlib Figure)."""
    drawn = {}
    monkeypatch.setattr(figures, "save_png", lambda figure, path: drawn.update({path.name: figure}))
    tests, _ = load_runs(runs)
    return write_report(folder, evaluate_runs(tests), max_tsne_points=24), drawn


def test_report_names_classes_as_the_run_folders_model_cards(tmp_path, monkeypatch):
    names = ("wave|hello", "clap", "jump")
    runs = [_custom_run(tmp_path / s, s, names) for s in ("joint", "bone")]
    report, drawn = _report_of(tmp_path, runs, monkeypatch)
    assert report["analysed"] == "2-stream (J+B)"
    assert [row["class"] for row in report["per_class"]] == list(names)
    assert report["confusion"]["classes"] == list(names)
    markdown = (tmp_path / "report.md").read_text()
    assert "| 0 | wave\\|hello | 8 |" in markdown and "| 2 | jump | 8 |" in markdown
    confusion = drawn["confusion.png"].axes[0]
    assert [t.get_text() for t in confusion.get_xticklabels()] == list(names)
    assert [t.get_text() for t in confusion.get_yticklabels()] == list(names)
    legend = drawn["tsne.png"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(names)

    # a card of numbered classes (custom data without data.class_names) names none
    numbered = tuple(class_names("custom", 3))
    assert numbered == ("class 0", "class 1", "class 2")
    runs[1] = _custom_run(tmp_path / "unnamed", "bone", numbered)
    report, _ = _report_of(tmp_path, runs, monkeypatch)
    assert report["confusion"]["classes"] == list(names)
    report, _ = _report_of(tmp_path, runs[1:], monkeypatch)
    assert report["confusion"]["classes"] == list(numbered)
    assert class_names("custom", 60)[0] == "class 0"  # not NTU's, though 60 classes

    # runs whose cards name the classes differently are not one report
    runs[1] = _custom_run(tmp_path / "other", "bone", ("wave|hello", "clap", "squat"))
    with pytest.raises(UserError, match=r"name the classes differently \(label 2: 'jump' vs"):
        _report_of(tmp_path, runs, monkeypatch)


def _train(workdir: Path, stream: str) -> None:
    """One epoch of a tiny synthetic run with a held-out validation split; HCN, whose step
    compiles in seconds where CTR-GCN's takes most of a minute on two cores."""
    config = synthetic.get_config(stream)
    config.num_epochs = 1
    config.data.update(num_train=106, num_test=48, num_frames=16, batch_size=16)
    config.data.eval_batch_size = 32
    config.model.name = "hcn"
    config.model.kwargs = hcn.get_config("tiny").model.kwargs
    config.csre.num_positives, config.csre.num_negatives = 4, 16
    config.optim.warmup_epochs, config.optim.milestones = 1, (2,)
    loop.train_and_evaluate(config, workdir)


def _eval_cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    command = [sys.executable, str(REPO / "eval.py"), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_report_of_a_trained_two_stream_synthetic_run(tmp_path):
    for stream in ("joint", "bone"):
        _train(tmp_path / stream, stream)
    joint, bone, report = (str(tmp_path / name) for name in ("joint", "bone", "report"))
    result = _eval_cli(
        f"--runs={joint},{bone}", "--search_weights", f"--baseline={joint}", f"--report={report}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 2-stream (J+B) |" in result.stdout
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    (two,) = written["ensembles"]
    assert two["weights_source"].startswith("searched on the held-out validation split (10 ")
    assert "fraction 0.1 seed 0 as recorded in validation_split.json" in two["weights_source"]
    assert written["baseline"]["analysed"] == "joint"
    assert len(written["per_class"]) == 10 and written["tsne"]["points"] == 48
    for name in ("report.md", "confusion.png", "tsne.png", "per_class_delta.png", "curves.png"):
        assert (tmp_path / "report" / name).is_file(), name

    # the same runs against scores of a shorter test set: refused, both files named
    tests, _ = load_runs([joint])
    short = tmp_path / "short.npz"
    save_scores(short, tests[0].logits[:40], tests[0].labels[:40], {"stream": "bone"})
    result = _eval_cli(f"--runs={joint},{short}")
    assert result.returncode == 1
    assert f"{short} and {joint}/scores/test_scores.npz" in result.stderr
    assert "not the same test set" in result.stderr
