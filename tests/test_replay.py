"""The official CSRE training run replayed step by step through our compiled train step
(csre_jax.replay): losses, learning rates, weights, BatchNorm statistics, momentum buffers,
banks and the final eval logits against the recording."""

import numpy as np
import pytest

from csre_jax import replay

STRICT_KINDS = ("loss", "lr", "batch_stats", "banks", "filled", "eval_logits")


@pytest.fixture(scope="module")
def report(shared_dir):
    return replay.replay(
        shared_dir / "fixtures" / "train_steps.npz", perturbations=3, log=lambda _: None
    )


def test_every_recorded_step_matches_the_official_one(report):
    steps = {c.step for c in report.checks}
    assert steps == {0, 1, 2, 3, 4, 5, "eval"}
    assert not report.failures(), report.format()
    # the well-conditioned quantities meet the plain tolerances, no widening needed
    strict = [c for c in report.checks if c.kind in STRICT_KINDS and c.ratio > 1]
    assert not strict, report.format()
    # the contrastive loss took part from step 1 on, so the loss formation is pinned
    kinds = {(c.step, c.kind) for c in report.checks}
    assert {(k, kind) for k in range(6) for kind in STRICT_KINDS[:5]} <= kinds


def test_the_report_prints_one_line_per_step_and_kind(report):
    text = report.format()
    assert "step  kind" in text and "widened: all within" in text
    assert len(text.splitlines()) == 2 + len(report.checks) + 2


def test_a_recording_without_a_key_is_named(tmp_path, capsys):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 3, 4, 25, 2), np.float32), num_steps=np.int64(1))
    assert replay.main([str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "bank_labels, x_test" in error and "in all)" in error
