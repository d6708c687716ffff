"""Trained runs for the prediction tests, and the command-line scripts run on them as a user
runs them: HCN (the quickest backbone to compile) trained one epoch on a generated 2-D
COCO-17 file with keypoint scores."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pyskl_files

from csre_jax.training import loop
from csre_jax.workdir import RunFolder

REPO = Path(__file__).resolve().parents[1]


def coco_run(folder: Path, num_classes: int) -> RunFolder:
    """HCN trained one epoch on 36 random COCO samples (24 to train, 12 to test)."""
    path = pyskl_files.coco_file(folder, count=36, num_classes=num_classes)
    config = importlib.import_module("configs.hcn").get_config("custom,tiny")
    config.data.path, config.data.layout = str(path), "coco"
    config.num_devices, config.num_epochs = 1, 1
    run = RunFolder(folder / "run")
    loop.train_and_evaluate(config, run.root)
    return run


def script(run: RunFolder, command: list[str], *flags: str) -> subprocess.CompletedProcess:
    """`python <command> <flags>` from the repository, sharing the run's compilation cache."""
    env = {**os.environ, "CSRE_JAX_CACHE": str(run.root.parent / "xla"), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *command, *flags], cwd=REPO, env=env, capture_output=True, text=True
    )


def predict_cli(run: RunFolder, *flags: str) -> subprocess.CompletedProcess:
    """predict.py on the run."""
    return script(run, ["predict.py", f"--workdir={run.root}"], *flags)
