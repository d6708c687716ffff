"""study.py: a tiny study end to end, a killed one continued, its statistics by hand, and its
one-line errors."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from configs import synthetic
from csre_jax.run_metrics import read_metrics
from csre_jax.study import StudyError, plan, report, stats
from csre_jax.study.variants import NAMED, parse_variants
from csre_jax.training import loop

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1]


def tiny_config():
    config = synthetic.get_config()
    config.num_epochs = 2
    config.data.update(num_train=58, num_test=32, num_frames=16, batch_size=16)
    config.data.eval_batch_size = 32
    config.model.kwargs.base_channels = 8
    config.csre.num_positives = 4
    config.csre.num_negatives = 16
    return config


def _study(root: Path):
    config = tiny_config()
    variants = parse_variants(["baseline", "csre"], config)
    plan.record_config(root, config)
    return plan.plan(config, variants, SEEDS, None, root), variants


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """baseline and csre x 2 seeds, uninterrupted."""
    root = tmp_path_factory.mktemp("study")
    runs, variants = _study(root)
    trained = plan.train(runs, log=lambda _: None)
    report.write_study_report(root, runs, variants)
    return root, runs, trained, json.loads((root / "study.json").read_text())


def test_a_tiny_study_trains_every_pair_and_reports_every_rule(study):
    root, runs, trained, result = study
    assert trained == runs and [(r.variant, r.seed) for r in runs] == [
        ("baseline", 0),
        ("baseline", 1),
        ("csre", 0),
        ("csre", 1),
    ]
    assert runs[0].config.csre.banks == "none" and runs[2].config.csre.banks == "spatial+temporal"
    assert runs[1].folder == root / "baseline" / "seed1" and runs[1].config.seed == 1
    for row, variant in (("baseline", runs[:2]), ("csre", runs[2:])):
        for run in variant:
            epochs = read_metrics(run.folder, "epoch")
            on_val = max(epochs, key=lambda e: (e["val_top1"], -e["epoch"]))
            rows = result["rows"][row]
            # the validation-selected epoch's test accuracy is that epoch's in metrics.jsonl
            assert rows["val"]["runs"][str(run.seed)] == on_val["test_top1"]
            assert rows["last"]["runs"][str(run.seed)] == epochs[-1]["test_top1"]
            assert rows["test"]["runs"][str(run.seed)] == max(e["test_top1"] for e in epochs)
    comparison = result["comparisons"]["csre"]
    assert comparison["against"] == "baseline"
    for rule in ("val", "last", "test"):
        ours, theirs = (
            result["rows"]["csre"][rule]["runs"],
            result["rows"]["baseline"][rule]["runs"],
        )
        want = [ours[str(s)] - theirs[str(s)] for s in SEEDS]
        assert comparison["by_rule"][rule]["differences"] == pytest.approx(want)
    # McNemar counts the kept models' per-sample outcomes, pooled over seeds
    correct = {}
    for run in runs:
        scores = np.load(run.folder / "scores" / "test_scores.npz")
        correct[run.variant, run.seed] = scores["logits"].argmax(1) == scores["labels"]
    gained = sum(int(np.sum(correct["csre", s] & ~correct["baseline", s])) for s in SEEDS)
    lost = sum(int(np.sum(~correct["csre", s] & correct["baseline", s])) for s in SEEDS)
    assert (comparison["mcnemar"]["gained"], comparison["mcnemar"]["lost"]) == (gained, lost)
    assert len(comparison["per_class"]) == 10
    text = (root / "study.md").read_text()
    assert "| csre | val |" in text and "the best test epoch (picked on the test set" in text
    assert "With 2 seeds the exact Wilcoxon test cannot go below p = 0.5" in text
    for figure in ("seeds.png", "differences.png", "per_class_csre.png"):
        assert (root / figure).stat().st_size > 1000, figure


def test_a_killed_study_trains_no_finished_run_again_and_reports_the_same(
    study, tmp_path, monkeypatch
):
    """Killed in its third run, with the first two finished (copies of the uninterrupted
    study's), then run again: it resumes the third, trains the fourth, and nothing else."""
    root, _, _, uninterrupted = study
    runs, variants = _study(tmp_path)
    shutil.copytree(root / "baseline", tmp_path / "baseline")  # the baseline runs finished
    real_global_batch = loop.sharding.global_batch
    batches = {"n": 0}

    def killed_in_the_third_run(local, mesh):
        if "index" in local:  # training batches only
            batches["n"] += 1
            if batches["n"] == 5:  # in the first csre run's second epoch (3 steps each)
                raise KeyboardInterrupt
        return real_global_batch(local, mesh)

    monkeypatch.setattr(loop.sharding, "global_batch", killed_in_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        plan.train(runs, log=lambda _: None)
    monkeypatch.setattr(loop.sharding, "global_batch", real_global_batch)
    assert [run.finished for run in runs] == [True, True, False, False]
    finished = {run.folder: run.folder.joinpath("metrics.jsonl").read_bytes() for run in runs[:2]}
    assert plan.train(runs, log=lambda _: None) == runs[2:], "a finished run was trained again"
    assert {f: f.joinpath("metrics.jsonl").read_bytes() for f in finished} == finished
    report.write_study_report(tmp_path, runs, variants)
    continued = json.loads((tmp_path / "study.json").read_text())
    assert continued["rows"] == uninterrupted["rows"]
    assert continued["comparisons"] == uninterrupted["comparisons"]


def test_a_study_folder_of_another_config_is_refused_with_the_differing_keys(study):
    root, *_ = study
    other = tiny_config()
    other.csre.temperature = 0.5
    other.num_epochs = 3
    with pytest.raises(StudyError, match=r"\(csre.temperature: 0.8 -> 0.5; num_epochs: 2 -> 3\)"):
        plan.record_config(root, other)
    plan.record_config(root, tiny_config())  # the same config continues


def test_the_statistics_equal_a_hand_computation():
    variant, baseline = [85.5, 86.0, 83.0, 87.0, 87.5], [85.0, 85.0, 84.5, 85.0, 85.0]
    result = stats.paired(variant, baseline)
    differences = [0.5, 1.0, -1.5, 2.0, 2.5]
    assert result["differences"] == pytest.approx(differences)
    mean = sum(differences) / 5
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 4)
    half = 2.7764451051977987 * std / math.sqrt(5)  # t quantile 0.975, 4 degrees of freedom
    assert (result["mean"], result["std"]) == pytest.approx((mean, std))
    assert result["ci95"] == pytest.approx([mean - half, mean + half])
    t = mean / (std / math.sqrt(5))
    assert result["t_test_p"] == pytest.approx(2 * scipy_stats.t.sf(t, 4))
    assert result["t_test_p"] == pytest.approx(scipy_stats.ttest_rel(variant, baseline).pvalue)
    # ranks of |d| are 1..5 and only rank 3 is negative: W- = 3; of the 32 equally likely
    # sign patterns, 5 have a negative rank sum <= 3 ({}, {1}, {2}, {3}, {1, 2}): p = 2 x 5/32
    assert result["wilcoxon_p"] == pytest.approx(10 / 32)
    assert result["wilcoxon_smallest_p"] == 2 / 32 == stats.smallest_wilcoxon_p(5)
    # McNemar: 7 samples only the variant gets right, 2 only the baseline: 2 x P(X <= 2), X ~
    # Binomial(9, 1/2) = 2 x (1 + 9 + 36) / 512
    variant_right = np.array([1] * 7 + [0] * 2 + [1] * 5 + [0] * 3, bool)
    baseline_right = np.array([0] * 7 + [1] * 2 + [1] * 5 + [0] * 3, bool)
    assert stats.mcnemar(variant_right, baseline_right) == {
        "gained": 7,
        "lost": 2,
        "p": pytest.approx(92 / 512),
    }
    # power tables: a paired difference of one standard deviation needs 10 pairs
    assert stats.seeds_for(1.0, 1.0) == 10 and stats.seeds_for(0.5, 1.0) == 34


def test_variants_by_name_and_by_overrides():
    config = tiny_config()
    names = ["baseline", "spatial+temporal+global", "t0.5", "pos_random_neg_hard"]
    variants = parse_variants([*names, "mine:csre.weight=0.5", "csre.reduction=4"], config)
    assert [v.name for v in variants] == [*names, "mine"]
    assert variants[-1].overrides == {"csre.weight": 0.5, "csre.reduction": 4}
    assert variants[2].apply(config).csre.temperature == 0.5 == NAMED["t0.5"]["csre.temperature"]
    assert config.csre.temperature == 0.8  # a variant applies to a copy


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: parse_variants(["baseline", "csre2"], c), "unknown variant 'csre2'; name one"),
        (
            lambda c: parse_variants(["x:csre.temprature=0.5"], c),
            "x:csre.temprature: the config has no field 'csre.temprature'",
        ),
        (lambda c: parse_variants(["x:csre.weight=high"], c), "'high' is not a float"),
        (lambda c: plan.parse_seeds(["0", "one"]), "--seeds: 'one' is not an integer"),
        (lambda c: plan.parse_streams(["bone", "joint_motion"]), "add joint and bone"),
        (lambda c: plan.parse_streams(["joints"]), "'joints' is not one of joint, bone"),
    ],
)
def test_bad_input_names_the_flag(call, message):
    with pytest.raises(StudyError, match="^--") as error:
        call(tiny_config())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_command_line_says_one_line_and_prints_every_runs_command(tmp_path):
    def study(*flags):
        return subprocess.run(
            [sys.executable, "study.py", "--config=configs/synthetic.py", *flags],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = study(f"--workdir={tmp_path}", "--seeds=0,x")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --seeds: 'x' is not an integer; e.g. --seeds=0,1,2,3,4"
    ]
    dry = study(f"--workdir={tmp_path}", "--seeds=3", "--config.num_epochs=1", "--dry_run")
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if line.startswith("python train.py")]
    assert len(commands) == 2 and "--config.csre.banks=none" in commands[0]
    assert commands[1].endswith(
        f"--config.num_epochs=1 --config.seed=3 "
        f"--config.data.stream=joint --workdir={tmp_path}/csre/seed3"
    )
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_the_cluster_script_runs_one_task_per_run(tmp_path):
    argv = ["study.py", "--config=configs/synthetic.py", "--seeds=0,1", "--slurm",
            f"--workdir={tmp_path}"]  # fmt: skip
    script = plan.slurm_script(tmp_path, argv, 4).read_text().splitlines()
    assert script[0] == "#!/bin/bash" and "#SBATCH --array=0-3" in script
    assert script[-1] == (
        f"python study.py --config=configs/synthetic.py --seeds=0,1 --workdir={tmp_path} "
        "--task=$SLURM_ARRAY_TASK_ID"
    )
