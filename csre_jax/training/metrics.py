"""Metrics as JSON lines (one record per logging step and per epoch) and as TensorBoard event
files beside them, so a run can be watched with `tensorboard --logdir=<runs>`; process 0
writes. A resumed run first drops what was logged after its checkpoint, so each step is kept
once in both. Readers of a run use csre_jax.run_metrics, which needs none of training."""

import json
import math
from pathlib import Path

import jax
from tensorboardX import SummaryWriter

from csre_jax.errors import Diverged
from csre_jax.fileio import atomic_write
from csre_jax.run_metrics import metric_lines
from csre_jax.workdir import RunFolder

# TensorBoard tags are '<kind>/<metric>'; step records read as 'train/loss', 'train/lr'.
_TAG_PREFIX = {"train_step": "train"}
# Records that summarise a finished run (note()), dropped when a resume continues it.
SUMMARY_KINDS = ("selection",)
# How often the event writer's thread flushes to disk: TensorBoard shows a step this late.
_FLUSH_SECONDS = 5


class MetricWriter:
    """Appends {'kind': ..., 'step': ..., **values} records to workdir/metrics.jsonl and one
    TensorBoard scalar per value to the workdir's event files.

    `resume_step`: the step training (re)starts from (0 for a fresh start). Records after it,
    left by a run that was stopped after its last checkpoint, are removed from metrics.jsonl
    (atomically) and hidden from TensorBoard (tensorboardX's purge_step), so the steps logged
    again are kept once. None keeps whatever is there. Call close() (or use `with`) to flush
    the event file.
    """

    def __init__(self, workdir: Path, resume_step: int | None = None):
        self._path = RunFolder(workdir).metrics
        self._active = jax.process_index() == 0
        self._events = None
        if not self._active:
            return
        if resume_step is not None and self._path.is_file():
            # a finished run's summary no longer holds once the run continues
            kept = [
                line
                for line, r in metric_lines(self._path)
                if r["step"] <= resume_step and r["kind"] not in SUMMARY_KINDS
            ]
            with atomic_write(self._path) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in kept))
        # One event file per (re)start; TensorBoard reads them in name order, the time in
        # seconds first, then this suffix, so a resume's purge follows what it purges.
        self._events = SummaryWriter(
            str(self._path.parent),
            purge_step=None if resume_step is None else resume_step + 1,
            flush_secs=_FLUSH_SECONDS,
            filename_suffix=f".step{resume_step or 0:010d}",
        )

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                raise Diverged(f"{name} is {value} at step {step}: training diverged")
        if self._active:
            record = {"kind": kind, "step": int(step)} | {k: float(v) for k, v in values.items()}
            with self._path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            prefix = _TAG_PREFIX.get(kind, kind)
            for name, value in values.items():
                self._events.add_scalar(f"{prefix}/{name}", float(value), int(step))

    def note(self, kind: str, step: int, record: dict) -> None:
        """A summary of the finished run that is not a set of scalars (one of SUMMARY_KINDS,
        e.g. its model selection), in metrics.jsonl only."""
        if self._active:
            with self._path.open("a") as f:
                f.write(json.dumps({"kind": kind, "step": int(step)} | record) + "\n")

    def close(self) -> None:
        """Writes the pending TensorBoard events and closes the event file."""
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
