"""The official CSRE training run replayed step by step through our compiled train step
(csre_jax.replay): losses, learning rates, weights, BatchNorm statistics, momentum buffers,
banks and the final eval logits against the recording.

The gate is the float64 recording, replayed in float64: the official code reproduces it
exactly and a 1e-12 perturbation moves no tensor by more than 1e-6 of its tolerance, so a
bound of 0.01 x the plain tolerances holds on any CPU (measured worst: 1.6e-5). The float32
recording is checked only where a step is well-conditioned whatever the CPU (the forward
quantities); its weights and momentum are a measurement, in RESULTS.
"""

import numpy as np
import pytest

from csre_jax import replay

# Measured worst ratio 1.6e-5 (momentum); 0.01 leaves the margin of rounding on any CPU.
FLOAT64_BOUND = 0.01
# What a float32 step computes before its gradients: measured worst 0.048 (the float32
# learning rate, IEEE arithmetic, the same on every CPU) and 0.015 for the rest, against 1.
FORWARD_KINDS = ("loss", "lr", "batch_stats", "banks", "filled", "eval_logits")


@pytest.fixture(scope="module")
def float64_report(shared_dir):
    return replay.replay(shared_dir / "fixtures" / "train_steps_f64.npz", log=lambda _: None)


@pytest.fixture(scope="module")
def float32_report(shared_dir):
    return replay.replay(
        shared_dir / "fixtures" / "train_steps.npz", perturbations=0, log=lambda _: None
    )


def test_every_float64_step_equals_the_official_one_far_within_the_plain_tolerances(
    float64_report,
):
    report = float64_report
    assert report.float64
    assert {c.step for c in report.checks} == {0, 1, 2, 3, 4, 5, "eval"}
    kinds = {(c.step, c.kind) for c in report.checks}
    every = ("loss", "lr", "params", "batch_stats", "momentum", "banks", "filled")
    assert {(k, kind) for k in range(6) for kind in every} <= kinds
    assert not report.failures(strict=True), report.format()
    over = [c for c in report.checks if c.ratio > FLOAT64_BOUND]
    assert not over, f"over {FLOAT64_BOUND} of the plain tolerances:\n{report.format()}"
    assert all(ratio <= FLOAT64_BOUND for ratio in report.worst().values())


def test_the_float32_replay_keeps_the_forward_quantities_within_the_plain_tolerances(
    float32_report,
):
    forward = [c for c in float32_report.checks if c.kind in FORWARD_KINDS]
    assert {c.step for c in forward} == {0, 1, 2, 3, 4, 5, "eval"}
    over = [c for c in forward if c.ratio > 1]
    assert not over, float32_report.format()


def test_the_report_prints_one_line_per_step_and_kind_and_each_steps_worst(
    float64_report, float32_report
):
    text = float64_report.format()
    assert "(float64)" in text and "widened" not in text and "strict: all within" in text
    assert len(text.splitlines()) == 2 + len(float64_report.checks) + 2
    worst = text.splitlines()[-2]
    assert worst.startswith("worst error/tol per step: 0: ") and "eval: " in worst
    text = float32_report.format()
    assert "(float32)" in text and "error/tol  widened" in text
    assert len(text.splitlines()) == 2 + len(float32_report.checks) + 3


def _recording(path, dtype, *, float64: bool, drop: str = "", mixed: str = ""):
    """A one-step recording of zeros with every key the loader asks for, in `dtype`; `drop`
    leaves a key out, `mixed` stores one key in the other precision."""
    other = np.float32 if dtype == np.float64 else np.float64
    arrays = {
        "x_train": np.zeros((2, 3, 4, 25, 2), dtype),
        "x_test": np.zeros((1, 3, 4, 25, 2), dtype),
        "eval_logits": np.zeros((1, 4), dtype),
        "bank_labels": np.zeros(2, np.int64),
        **{name: np.int64(1) for name in replay.SCALARS},
        **{name: np.zeros(1) for name in replay.PER_STEP},
        **{f"random_slots_{bank}": np.zeros((1, 2, 1), np.int64) for bank in replay.BANKS},
    }
    for k in (0, 1):
        arrays[f"state{k}/filled"] = np.zeros(2, dtype)
        arrays[f"state{k}/model/fc.weight"] = np.zeros((4, 3), dtype)
        for bank in replay.BANKS:
            arrays[f"state{k}/bank_{bank}"] = np.zeros((2, 8), dtype)
    if float64:
        arrays["float64"] = np.int64(1)
    if mixed:
        arrays[mixed] = arrays[mixed].astype(other)
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("float64", [False, True], ids=["float32", "float64"])
def test_a_recording_without_a_key_is_named_in_one_line(tmp_path, capsys, float64):
    dtype = np.float64 if float64 else np.float32
    path = _recording(tmp_path / "partial.npz", dtype, float64=float64, drop="state1/bank_spatial")
    assert replay.main([str(path)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert str(path) in error and "missing key(s) state1/bank_spatial;" in error


@pytest.mark.parametrize(
    ("float64", "key", "said"),
    [
        (False, "state1/model/fc.weight", "float32 (no float64=1) but state1/model/fc.weight "),
        (True, "x_train", "float64 (float64=1) but x_train (float32)"),
        (True, "state0/bank_temporal", "state0/bank_temporal (float32) is not"),
    ],
)
def test_a_recording_of_mixed_precision_is_named_in_one_line(tmp_path, capsys, float64, key, said):
    dtype = np.float64 if float64 else np.float32
    path = _recording(tmp_path / "mixed.npz", dtype, float64=float64, mixed=key)
    assert replay.main([str(path)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert str(path) in error and "mixed precision" in error and said in error


def test_a_float64_recording_takes_no_perturbed_runs(tmp_path, capsys):
    path = _recording(tmp_path / "f64.npz", np.float64, float64=True)
    assert replay.main([str(path), "--perturbations=2"]) == 2
    assert "judged at the plain tolerances" in capsys.readouterr().err
