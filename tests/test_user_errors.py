"""Every mistake a user can make at the command line, run as the user types it: a non-zero
exit and at most three lines on stderr that name the file or flag and the fix, with no
traceback unless --verbose asks for one; nothing half-made left behind. Also the signals
and the full disk that meet a run from outside."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from tests import pyskl_files as files

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)
# What tqdm's progress bars leave on stderr (lines split at their carriage returns): not
# messages, and a user at a terminal sees them redrawn in one line.
PROGRESS = re.compile(r"^(\x1b\[A)?\s*((train|eval):.*|\s*(\x1b\[A)?)$")
# The smallest real run: a few seconds of loading, a compile long enough to be interrupted.
TINY_RUN = ("--config=configs/ctrgcn.py:ucla,tiny", "--config.num_epochs=2")


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _user_error(result: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    """The one error line, after checking the exit code, the length and the words."""
    lines = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
    assert result.returncode == code, result.stderr[-3000:]
    assert 1 <= len(lines) <= 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = next(line for line in lines if line.startswith("error: "))
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return error


def _custom(tmp_path: Path, data: Path, *overrides: str) -> tuple[str, ...]:
    return (
        "train.py",
        "--config=configs/ctrgcn.py:custom,tiny",
        f"--config.data.path={data}",
        *overrides,
        f"--workdir={tmp_path / 'run'}",
    )


def test_a_missing_data_file_names_the_field_and_leaves_no_run_folder(tmp_path):
    result = _run(*_custom(tmp_path, tmp_path / "mine.pkl"))
    _user_error(result, f"{tmp_path / 'mine.pkl'}", "data.path", "does not exist")
    assert not (tmp_path / "run").exists()


def test_a_bad_pickle_is_one_line_and_verbose_adds_the_traceback(tmp_path):
    bad = tmp_path / "mine.pkl"
    bad.write_bytes(pickle.dumps(["not", "pyskl"]))
    quiet = _run(*_custom(tmp_path, bad))
    _user_error(quiet, f"{bad}: expected a dict with fields 'split' and 'annotations'")
    loud = _run(*_custom(tmp_path, bad), "--verbose")
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_an_existing_run_folder_is_left_as_it_was(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    _user_error(_run(*_custom(tmp_path, tmp_path / "mine.pkl")), "does not exist")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_a_sample_in_two_splits_is_refused(tmp_path):
    annotations = files.coco_annotations(count=6, num_classes=2)
    splits = {"train": ["clip000", "clip001", "clip002", "clip003"], "test": ["clip003", "clip004"]}
    data = files.write_pickle(tmp_path / "mine.pkl", annotations, splits)
    _user_error(_run(*_custom(tmp_path, data)), f"{data}", "'clip003'", "one split")


def test_a_layout_whose_joint_has_two_parents_is_refused(tmp_path):
    data, layout = files.torso_files(tmp_path)
    spec = json.loads(layout.read_text())
    spec["edges"].append(["left_shoulder", "left_hand"])  # its second parent, below it
    layout.write_text(json.dumps(spec))
    result = _run(*_custom(tmp_path, data, f"--config.data.layout={layout}"))
    _user_error(result, f"{layout}", "'edges'", "two parents")


def test_a_truncated_nw_ucla_clip_is_named(tmp_path):
    clips = SHARED / "data" / "NW-UCLA" / "all_sqe"
    if not clips.is_dir():
        pytest.skip(f"{clips} is not here")
    (tmp_path / "all_sqe").mkdir()
    for clip in clips.glob("*.json"):
        (tmp_path / "all_sqe" / clip.name).symlink_to(clip)
    bad = tmp_path / "all_sqe" / "a01_s01_e00_v01.json"
    bad.unlink()
    bad.write_text('{"skeletons": [[[0.1, 0.2')
    result = _run("train.py", "--config=configs/ctrgcn.py:ucla", f"--config.data.root={tmp_path}",
                  f"--workdir={tmp_path / 'run'}")  # fmt: skip
    _user_error(result, f'{bad}: not a clip with a numeric "skeletons" array')
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "taken").write_text("")
    result = _run("train.py", TINY_RUN[0], f"--workdir={tmp_path / 'taken' / 'run'}")
    _user_error(result, f"{tmp_path / 'taken'}", "a file stands where a folder is needed")


def test_eval_refuses_a_score_file_with_a_nan_logit(tmp_path):
    logits = np.zeros((4, 3), np.float32)
    logits[2, 1] = np.nan
    paths = []
    for name in ("j", "b"):
        path = tmp_path / f"{name}.npz"
        np.savez(path, logits=logits, labels=np.arange(4) % 3, sample_ids=np.arange(4))
        paths.append(str(path))
        logits = np.ones_like(logits)
    result = _run("eval.py", f"--runs={','.join(paths)}", "--weights=1,1")
    _user_error(result, paths[0], "(rows 2) are not finite", "rescore the run")


def test_eval_refuses_weights_that_are_not_finite(tmp_path):
    runs = ",".join(str(tmp_path / f"{n}.npz") for n in "jb")
    result = _run("eval.py", f"--runs={runs}", "--weights=1,nan")
    _user_error(result, "--weights", "a weight is not finite", "give finite weights", code=2)


def test_predict_names_a_workdir_that_holds_no_run(tmp_path):
    """(tests/test_predict_cli.py gives a trained run bad inputs: an empty .npy, a wrong
    shape, missing scores, an unknown split.)"""
    (tmp_path / "run").mkdir()
    np.save(tmp_path / "clip.npy", np.zeros((1, 20, 17, 3), np.float32))
    result = _run("predict.py", f"--workdir={tmp_path / 'run'}", f"--input={tmp_path}/clip.npy")
    _user_error(result, f"{tmp_path / 'run' / 'config.json'}: not found", "train.py workdir")


def test_ntu_prepare_names_a_missing_raw_folder(tmp_path):
    result = _run(
        "-m", "csre_jax.data.ntu_prepare", "ntu60", f"--raw={tmp_path}/nowhere",
        f"--out={tmp_path}/out",
    )  # fmt: skip
    _user_error(result, f"--raw={tmp_path}/nowhere: no such folder")


def test_convert_names_the_bad_row_of_a_label_table(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 17, 2), np.float32))
    (tmp_path / "labels.csv").write_text("a.npy,jump\n")
    result = _run(
        "-m", "csre_jax.data.convert", "npy", str(tmp_path), f"--labels={tmp_path}/labels.csv",
        f"--out={tmp_path}/out.pkl",
    )  # fmt: skip
    _user_error(result, f"{tmp_path}/labels.csv row 1", "0-based integer label")


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """The process's stdout up to and including `text`."""
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, seen
        char = process.stdout.read(1)
        assert char, f"the process ended before printing {text!r}: {seen}"
        seen += char
    return seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_compiling_ends_the_run_at_once(tmp_path, signum):
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "train.py", *TINY_RUN, f"--workdir={workdir}"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for(process, "compiling the train step ...")
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 5, "the signal waited for the compilation"
    assert process.returncode == 128 + signum.value, stderr
    assert stderr.strip().splitlines() == [
        f"{signum.name}: stopped before training began; nothing to save"
    ]
    assert not workdir.exists()  # the folder it had created, with nothing in it


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (resized by the test). Skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _resize(disk: Path, kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_the_run_resumes(small_disk):
    """One epoch trains; the disk then shrinks to what it holds plus 1 MiB, less than the
    second epoch's checkpoint; after the refusal the disk grows and the run resumes."""
    workdir = small_disk / "run"
    first = _run("train.py", TINY_RUN[0], "--config.num_epochs=1", f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-3000:]
    used_kib = shutil.disk_usage(small_disk).used // 1024
    _resize(small_disk, used_kib + 1024)
    full = _run("train.py", *TINY_RUN, f"--workdir={workdir}")
    error = _user_error(full, f"{workdir}", "no space left", "to save step 16")
    assert error.endswith(
        f"the last intact checkpoint is step 8 ({workdir / 'checkpoints' / '8'}). Free space "
        "there and run the same command again to resume."
    )
    _resize(small_disk, 64 * 1024)
    resumed = _run("train.py", *TINY_RUN, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step 8 ({workdir / 'checkpoints' / '8'})" in resumed.stdout
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["16", "8"]
