"""benchmarks/device_check.py is for a GPU: these keep it runnable on the CPU meanwhile."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import device_check
from csre_jax.data import ucla
from csre_jax.data.ucla import load_ucla_clip

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_prints_every_item():
    # HCN alone: every backbone in both dtypes takes about 17 minutes on 2 CPU cores, and
    # the code path is the same for each.
    command = ["-m", "benchmarks.device_check", "--quick", "--models=hcn", "--ucla-model=hcn"]
    run = subprocess.run(
        [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert out.startswith("1. jax ")
    for slots in device_check.BANK_SIZES["quick"]:
        assert re.search(rf"^\| {slots:,} \| [\d,.]+ ms \|", out, re.M), out
    for dtype in device_check.DTYPES:
        for variant in ("without", "with"):
            row = rf"^\| hcn \| {dtype} \| {variant} CSRE \| [\d,.]+ ms \| [\d.]+ s \|"
            assert re.search(row, out, re.M), out
    steps = device_check.QUICK_UCLA_STEPS
    assert re.search(rf"reached epoch [\d.]+ of \d+ \({steps} steps\)", out), out
    assert "skipped" not in out, out


def test_packed_clips_unpack_to_the_same_clips(shared_dir, tmp_path):
    root = shared_dir / "data" / "NW-UCLA"
    train, val = (ucla.split_entries(split)[0] for split in ucla.SPLITS)
    stems = [train[0], train[500], val[0]]
    device_check.pack_ucla(root, tmp_path / "clips.npz", stems)
    unpacked = ucla.clip_dir(device_check.unpack_ucla(tmp_path / "clips.npz", tmp_path / "out"))
    assert sorted(path.stem for path in unpacked.iterdir()) == sorted(stems)
    for stem in stems:
        direct = load_ucla_clip(root / ucla.CLIP_FOLDER / f"{stem}.json").astype(np.float32)
        again = load_ucla_clip(unpacked / f"{stem}.json").astype(np.float32)
        np.testing.assert_array_equal(again, direct)
