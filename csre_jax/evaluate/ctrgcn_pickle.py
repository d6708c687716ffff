"""Score files in the CTR-GCN / CSRE pickle format, which users of those codebases already hold.

Their training writes `epoch1_test_score.pkl`: a pickled dict {sample name: raw logits
(num_class,)} in test order, named "test_<i>" on NTU and by the integer i on NW-UCLA. It holds
no labels, so reading one takes them from elsewhere: one of our score files of the same test
set, an NTU split file (.npz, one-hot `y_test`) or NW-UCLA's `val_label.pkl` (1-based labels,
list order). Unpickling runs code from the file: read only pickles you trust.
"""

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError
from csre_jax.evaluate.scores import ScoreFile, load_scores
from csre_jax.fileio import atomic_write

_NTU_NAME = re.compile(r"test_(\d+)")


@dataclasses.dataclass(frozen=True)
class LabelSource:
    """A test set's labels in test order, with what their source says about the dataset."""

    labels: np.ndarray
    sample_ids: np.ndarray
    dataset: str
    benchmark: str = ""


def _sample_name(dataset: str, sample_id: int) -> str | int:
    return sample_id if dataset == "ucla" else f"test_{sample_id}"


def save_pickle_scores(path: Path, run: ScoreFile) -> None:
    """Exports a loaded score file as CTR-GCN's pickle, its samples named per its dataset."""
    dataset = run.metadata.get("dataset", "")
    scores = {
        _sample_name(dataset, int(i)): row
        for i, row in zip(run.sample_ids, run.logits.astype(np.float32), strict=True)
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(scores, f)


def load_labels(path: Path) -> LabelSource:
    """Test labels with their sample ids and what the source says about the dataset."""
    path = Path(path)
    fix = (
        "pass --labels=<one of our score files of the same test set (.npz), the NTU split "
        "file (.npz with y_test) or NW-UCLA's val_label.pkl>"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found; {fix}")
    if path.suffix == ".pkl":
        entries = _unpickle(path, fix)
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "label" in e for e in entries
        ):
            raise UserError(f"{path}: not NW-UCLA's val_label.pkl (a list of dicts with 'label')")
        labels = np.array([e["label"] - 1 for e in entries], np.int32)
        return LabelSource(labels, np.arange(len(labels)), "ucla")
    try:
        with np.load(path) as f:
            files = set(f.files)
            y_test = f["y_test"] if "y_test" in files and "logits" not in files else None
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable .npz ({error}); {fix}") from error
    if y_test is not None:
        labels = np.argmax(y_test, axis=1).astype(np.int32)
        dataset = {60: "ntu60", 120: "ntu120"}.get(y_test.shape[1], "")
        return LabelSource(labels, np.arange(len(labels)), dataset)
    if "labels" in files:
        run = load_scores(path)
        return LabelSource(
            run.labels,
            run.sample_ids,
            run.metadata.get("dataset", ""),
            run.metadata.get("benchmark", ""),
        )
    raise UserError(f"{path}: holds neither 'labels' nor 'y_test'; {fix}")


def _unpickle(path: Path, fix: str):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
        raise UserError(f"{path}: not a readable pickle ({error!r}); {fix}") from error


def _sample_id(name) -> int | None:
    if isinstance(name, int | np.integer):
        return int(name)
    match = _NTU_NAME.fullmatch(str(name))
    return int(match.group(1)) if match else None


def load_pickle_scores(path: Path, labels_path: Path, stream: str | None = None) -> ScoreFile:
    """A CTR-GCN pickle as a loaded score file, labelled from labels_path.

    The pickle's sample names must be exactly the label source's samples in its order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: score file not found")
    scores = _unpickle(path, "expected CTR-GCN's epoch1_test_score.pkl")
    if not isinstance(scores, dict) or not scores:
        raise UserError(
            f"{path}: expected a non-empty dict {{sample name: logits}} as CTR-GCN's "
            f"epoch1_test_score.pkl, found {type(scores).__name__}"
        )
    source = load_labels(labels_path)
    expected = source.sample_ids
    if len(scores) != len(expected):
        raise UserError(
            f"{path} holds {len(scores)} samples but {labels_path} labels {len(expected)}; "
            f"they are not the same test set"
        )
    names = list(scores)
    for row, (name, sample_id) in enumerate(zip(names, expected, strict=True)):
        if _sample_id(name) != sample_id:
            want = _sample_name(source.dataset, int(sample_id))
            raise UserError(
                f"{path}: sample names out of test order: position {row} is {name!r}, "
                f"{labels_path} expects {want!r} there; names must be test_<i> (NTU) or i "
                f"(NW-UCLA) in the order of the labels"
            )
    rows = [np.asarray(v, np.float32).reshape(-1) for v in scores.values()]
    if len({row.size for row in rows}) > 1:
        raise UserError(f"{path}: logits of different lengths {sorted({r.size for r in rows})}")
    logits = np.stack(rows)
    metadata = {
        "dataset": source.dataset,
        "benchmark": source.benchmark,
        "stream": stream,
        "format": "ctrgcn-pickle",
        "labels": str(labels_path),
    }
    return ScoreFile(
        logits=logits,
        labels=source.labels,
        sample_ids=np.asarray(expected, np.int64),
        path=str(path),
        metadata=metadata,
    )
