"""Data parallelism on 8 emulated CPU devices (tests/multidevice_run.py in a fresh process):
the same numbers as one device, banks split by rows and never gathered whole, and a
checkpoint written on 8 devices resumes on 2."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 100  # bank slots: 104 rows on 8 devices (13 each), 100 on 1 or 2
SAVE_AFTER, STEPS = 2, 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multidevice")
    env = os.environ | {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
    }
    result = subprocess.run(
        [
            sys.executable,
            "tests/multidevice_run.py",
            f"--output={workdir / 'out.npz'}",
            f"--workdir={workdir}",
            "--runs=1,8:save,2:resume",
            "--check_loss",
            f"--steps={STEPS}",
            f"--save_after={SAVE_AFTER}",
            f"--config.data.num_train={SAMPLES}",
            "--verbosity=-1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, dict(np.load(workdir / "out.npz"))


def _states(results: dict, run: str, prefix: str) -> dict[str, np.ndarray]:
    head = f"{run}/{prefix}/"
    return {k[len(head) :]: v for k, v in results.items() if k.startswith(head)}


def _relative_errors(a: dict, b: dict) -> dict[str, float]:
    """|a - b| / |b| over each part of the state (params, batch_stats, opt_state, each bank
    array), banks on their real slots: their padding depends on the device count and must
    be empty."""
    assert a.keys() == b.keys()
    parts = {}
    for key in a:
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        if key.startswith(".banks"):
            assert (x[SAMPLES:] <= 0).all() and (y[SAMPLES:] <= 0).all(), key
            x, y = x[:SAMPLES], y[:SAMPLES]
        part = key if key.startswith(".banks") else key.split("[")[0]
        sums = parts.setdefault(part, [0.0, 0.0])
        sums[0] += np.sum((x - y) ** 2)
        sums[1] += np.sum(y**2)
    return {part: float(np.sqrt(d / max(n, 1e-30))) for part, (d, n) in parts.items()}


def test_eight_devices_train_like_one(runs):
    _, results = runs
    assert int(results["1/devices"]) == 1 and int(results["8:save/devices"]) == 8
    for name in ("loss", "ce", "loss_spatial", "loss_temporal", "valid_spatial", "top1"):
        one, eight = results[f"1/metrics/{name}"], results[f"8:save/metrics/{name}"]
        np.testing.assert_allclose(one[:SAVE_AFTER], eight[:SAVE_AFTER], rtol=1e-4, err_msg=name)
    assert results["8:save/metrics/valid_spatial"][SAVE_AFTER - 1] > 0  # the banks took part
    # after two steps (the second with the contrastive loss): params, optimizer, BN, banks
    # compared part by part: CTR-GCN's graph BatchNorms (scale initialised to 1e-6) turn
    # float32 rounding of the batch statistics into ~1e-4 gradient differences per step, which
    # the momentum accumulates; the contrastive loss alone agrees exactly (test below)
    one, eight = (_states(results, r, "saved_state") for r in ("1", "8:save"))
    assert np.asarray(eight[".banks['spatial'].filled"]).sum() == 2 * 8
    errors = _relative_errors(one, eight)
    assert errors.pop(".opt_state") < 5e-2, errors
    assert max(errors.values()) < 1e-3, errors


def test_the_contrastive_loss_is_the_same_split_over_eight_devices(runs):
    """Similarities split by slots, top-k per shard then merged: exact, gradient included."""
    _, results = runs
    assert results["check_loss/1/loss"] == results["check_loss/8/loss"] > 0
    np.testing.assert_allclose(
        results["check_loss/8/grad"], results["check_loss/1/grad"], rtol=0, atol=1e-7
    )


def test_banks_are_split_by_rows_over_the_devices(runs):
    _, results = runs
    for leaf in ("features", "labels", "filled"):
        eight = results[f"8:save/bank_rows/['spatial'].{leaf}"]
        assert list(eight) == [104] + [13] * 8, (leaf, eight)
        two = results[f"2:resume/bank_rows/['temporal'].{leaf}"]
        assert list(two) == [100, 50, 50], (leaf, two)


def test_the_train_step_never_gathers_a_whole_bank(runs):
    workdir, _ = runs
    hlo = (workdir / "train_step_8.hlo").read_text()
    collectives = re.findall(
        r"= (\S+) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
        r"(?:-start)?\(",
        hlo,
    )
    assert any(op == "all-gather" for _, op in collectives)  # the pattern does match
    whole = [(shape, op) for shape, op in collectives if re.search(r"[\[,]104[\],]", shape)]
    assert not whole, whole  # neither a bank nor a (batch, slots) similarity, any direction
    assert re.search(r"f32\[13,32\]", hlo)  # each device works on its 13 rows of a bank


def test_a_checkpoint_of_eight_devices_resumes_on_two(runs):
    _, results = runs
    assert int(results["2:resume/devices"]) == 2
    # restored exactly, banks re-padded from 104 to 100 rows
    saved, restored = (_states(results, r, "saved_state") for r in ("8:save", "2:resume"))
    assert restored[".banks['spatial'].features"].shape == (SAMPLES, 32)
    assert max(_relative_errors(saved, restored).values()) == 0
    # and it continues like the uninterrupted 8-device run
    for name in ("loss", "ce", "loss_spatial", "loss_temporal"):
        straight = results[f"8:save/metrics/{name}"][SAVE_AFTER:]
        resumed = results[f"2:resume/metrics/{name}"]
        np.testing.assert_allclose(resumed, straight, rtol=1e-3, err_msg=name)
