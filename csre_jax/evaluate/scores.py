"""Per-sample score files, top-k accuracy and weighted multi-stream ensembles.

A score file is an .npz with 'logits' (N, num_classes) float32, 'labels' (N,) int32 and
'sample_ids' (N,) int64 (the sample's index in its split: the test split, or for validation
scores the full training split the samples were held out of), optionally 'features'
(N, C) float32 (the backbone's pooled features, for t-SNE) and 'sample_names' (N,) str (custom
data: each sample's frame_dir; a str array, so no pickle is needed to read it), plus JSON
metadata. Loaded, it is a ScoreFile. Two score files belong to the same evaluation set only
if their labels and sample ids agree.
"""

import dataclasses
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError
from csre_jax.fileio import atomic_write


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
    """Which held-out split a run's validation scores are, as its run folder recorded it."""

    fraction: float
    seed: int
    num_train_samples: int
    recorded_in: Path  # the run's validation_split.json


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreFile:
    """One loaded score file: ours (.npz), a CTR-GCN pickle, or a fused ensemble's scores.

    Row i of logits, labels, sample_ids (and features, sample_names) is one sample. metadata
    is what the file says about itself ('stream', 'split', 'dataset', 'model', ...; empty if
    nothing). sample_names are the samples' frame_dirs (custom data), None where the file has
    none (other datasets, files written before names were saved)."""

    logits: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    path: str  # where it was read from (an ensemble: its members' paths joined by " + ")
    metadata: dict = dataclasses.field(default_factory=dict)
    features: np.ndarray | None = None
    # Validation scores of a run folder that recorded its held-out split: that record.
    validation_split: ValidationSplit | None = None
    sample_names: np.ndarray | None = None

    def __post_init__(self):
        check_finite(
            self.logits,
            self.path,
            "rescore the run (eval.py --workdir=<run>) or leave this file out",
        )

    @property
    def stream(self) -> str | None:
        return self.metadata.get("stream")

    def with_stream(self, stream: str) -> "ScoreFile":
        """The same scores, their metadata naming `stream` (e.g. from --streams)."""
        return dataclasses.replace(self, metadata=self.metadata | {"stream": stream})


def check_finite(logits: np.ndarray, source: str, fix: str) -> None:
    """Refuses logits with a NaN or infinite value: argmax would read such a row as class 0
    and every accuracy from them would be wrong. The error names `source` and the rows."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(logits)).all(axis=-1))
    if len(bad):
        rows = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise UserError(
            f"{source}: the logits of {len(bad)} of {len(logits)} samples (rows {rows}) are "
            f"not finite; {fix}"
        )


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def save_scores(
    path: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    metadata: dict,
    *,
    sample_ids: np.ndarray | None = None,
    features: np.ndarray | None = None,
    sample_names: np.ndarray | None = None,
) -> None:
    """Writes atomically: a crash never leaves half a file. sample_ids default to 0..N-1."""
    arrays = {
        "logits": np.asarray(logits, np.float32),
        "labels": np.asarray(labels, np.int32),
        "sample_ids": np.arange(len(labels), dtype=np.int64)
        if sample_ids is None
        else np.asarray(sample_ids, np.int64),
        "metadata": np.array(json.dumps(metadata)),
    }
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)
    if sample_names is not None:
        arrays["sample_names"] = np.asarray(sample_names, str)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_scores(path: Path) -> ScoreFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: score file not found")
    try:
        archive = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz score file ({type(e).__name__}: {e})") from e
    with archive as f:
        missing = {"logits", "labels", "sample_ids"} - set(f.files)
        if missing:
            raise UserError(f"{path}: not a csre-jax score file (missing {sorted(missing)})")
        return ScoreFile(
            logits=f["logits"],
            labels=f["labels"],
            sample_ids=f["sample_ids"],
            path=str(path),
            metadata=json.loads(str(f["metadata"])) if "metadata" in f.files else {},
            features=f["features"] if "features" in f.files else None,
            sample_names=f["sample_names"] if "sample_names" in f.files else None,
        )


def check_same_samples(runs: Sequence[ScoreFile], what: str = "test set") -> None:
    """Refuses score files of different samples: fusing them would pair unrelated rows.

    The error names both files."""
    first = runs[0]
    for run in runs[1:]:
        pair = f"{run.path} and {first.path}"
        if run.logits.shape != first.logits.shape:
            raise UserError(
                f"{pair}: scores of shape {run.logits.shape} and {first.logits.shape} "
                f"(samples, classes); they are not the same {what}"
            )
        for field, holds in (("sample_ids", "holds sample"), ("labels", "is labelled")):
            ours, theirs = getattr(run, field), getattr(first, field)
            if not np.array_equal(ours, theirs):
                row = int(np.argmax(ours != theirs))
                raise UserError(
                    f"{pair}: labels or sample order differ (row {row} {holds} "
                    f"{ours[row]} in one, {theirs[row]} in the other); "
                    f"they are not the same {what} in the same order"
                )


def ensemble(runs: Sequence[ScoreFile | Path], weights: Sequence[float]) -> ScoreFile:
    """Weighted sum of raw logits (float64) over score files (paths or loaded) of the same
    test set; its metadata names the members and their weights."""
    if len(runs) != len(weights):
        raise UserError(f"{len(runs)} score files but {len(weights)} weights")
    runs = [run if isinstance(run, ScoreFile) else load_scores(run) for run in runs]
    check_same_samples(runs)
    fused = sum(w * run.logits.astype(np.float64) for w, run in zip(weights, runs, strict=True))
    return ScoreFile(
        logits=fused,
        labels=runs[0].labels,
        sample_ids=runs[0].sample_ids,
        sample_names=runs[0].sample_names,
        path=" + ".join(run.path for run in runs),
        metadata={"members": [run.path for run in runs], "weights": [float(w) for w in weights]},
    )
