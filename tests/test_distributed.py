"""Multi-host training: two processes joined by jax.distributed on localhost (one CPU device
each, gloo collectives) train exactly like one process with two devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    """tests/multidevice_run.py on all devices of the run, with a checkpoint after step 2."""
    workdir.mkdir(exist_ok=True)
    env = (
        os.environ
        | env
        | {
            "PYTHONPATH": str(REPO),
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        }
    )
    return subprocess.Popen(
        [
            sys.executable,
            "tests/multidevice_run.py",
            f"--output={workdir / 'out.npz'}",
            f"--workdir={workdir}",
            "--runs=0:save",
            f"--steps={STEPS}",
            "--config.data.num_train=100",
            "--verbosity=-1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        _launch(
            root / "two_processes",
            {
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
            },
        )
        for index in range(2)
    ]
    processes.append(
        _launch(
            root / "one_process",
            {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"},
        )
    )
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    return root, {
        name: dict(np.load(root / name / "out.npz")) for name in ("two_processes", "one_process")
    }


def test_two_processes_train_like_one_process_with_two_devices(runs):
    _, results = runs
    multi, single = results["two_processes"], results["one_process"]
    assert int(multi["0:save/devices"]) == int(single["0:save/devices"]) == 2
    # Measured on an AMD EPYC (AVX-512): metrics and checksums equal to the last bit (the
    # same two-device program, split over processes); the tolerances only absorb a gloo
    # reduction order that another build could change.
    for name in ("loss", "ce", "loss_spatial", "loss_temporal", "valid_spatial"):
        np.testing.assert_allclose(
            multi[f"0:save/metrics/{name}"], single[f"0:save/metrics/{name}"], rtol=1e-5
        )
    checksums = [k for k in single if "state_checksum/" in k]  # at the start, steps 2 and 3
    assert any("banks" in k for k in checksums) and any("params" in k for k in checksums)
    for key in checksums:  # sum x and sum x * w: signed, and by position
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-6, err_msg=key)
    # each process holds its half of every bank: one device, half the rows
    for key in (k for k in multi if "/bank_rows/" in k):
        rows, *local = multi[key]
        assert local == [rows // 2], (key, multi[key])


def test_the_processes_write_one_checkpoint_together(runs):
    root, _ = runs
    steps = sorted(p.name for p in (root / "two_processes" / "run" / "checkpoints").iterdir())
    assert steps == ["2"]
    assert (root / "two_processes" / "train_step_0.hlo").is_file()  # process 0 wrote it
