"""Metrics as JSON lines (one record per logging step and per epoch); process 0 writes."""

import json
import math
from pathlib import Path

import jax
import numpy as np

from csre_jax.workdir import RunFolder


class MetricWriter:
    """Appends {'kind': ..., 'step': ..., **values} records to workdir/metrics.jsonl."""

    def __init__(self, workdir: Path):
        self._path = RunFolder(workdir).metrics
        self._active = jax.process_index() == 0

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"{name} is {value} at step {step}: training diverged")
        if self._active:
            record = {"kind": kind, "step": int(step)} | {k: float(v) for k, v in values.items()}
            with self._path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Averages a list of per-step metric dicts (fetched from the devices in one go)."""
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def read_metrics(workdir: Path, kind: str | None = None) -> list[dict]:
    path = RunFolder(workdir).metrics
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if kind is None or r["kind"] == kind]
