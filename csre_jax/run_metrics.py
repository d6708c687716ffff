"""Reading a run's metrics.jsonl (csre_jax.workdir), for reports and studies as for the run
that resumes and rewrites it (training/metrics.py)."""

import json
from pathlib import Path

from csre_jax.errors import UserError
from csre_jax.workdir import RunFolder


def metric_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each record of a metrics.jsonl. A torn last line (the process was
    killed while writing it) is dropped; a damaged line before it is an error."""
    lines = [line for line in path.read_text().splitlines() if line]
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise UserError(
                f"{path}:{number}: not a JSON record ({error}); delete or repair that line"
            ) from error
    return parsed


def read_metrics(workdir: Path, kind: str | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl, of one kind ('train_step', 'epoch') or all."""
    records = [record for _, record in metric_lines(RunFolder(workdir).metrics)]
    return [r for r in records if kind is None or r["kind"] == kind]
