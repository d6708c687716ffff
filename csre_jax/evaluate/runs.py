"""What eval.py's --runs name: a run folder written by train.py, or a score file (ours or a
CTR-GCN pickle), loaded with its validation scores when it has them."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csre_jax.evaluate.ctrgcn_pickle import load_pickle_scores
from csre_jax.evaluate.scores import load_scores


def _attach_split_record(val: dict, workdir: Path) -> None:
    """Checks the validation scores against the split the data pipeline recorded."""
    path = workdir / "validation_split.json"
    if not path.is_file():
        return
    record = json.loads(path.read_text())
    if not np.array_equal(np.asarray(record["indices"]), val["sample_ids"]):
        raise ValueError(
            f"{val['path']}: its samples are not the held-out split recorded in {path}; "
            f"rescore the run (python eval.py --workdir={workdir})"
        )
    val["validation_split"] = {k: record[k] for k in ("fraction", "seed", "num_train_samples")}


def _load_workdir(workdir: Path) -> tuple[dict, dict | None]:
    test_path = workdir / "scores" / "test_scores.npz"
    if not test_path.is_file():
        raise FileNotFoundError(
            f"{workdir}: no scores/test_scores.npz; train the run to the end of an evaluated "
            f"epoch, or score its checkpoint with python eval.py --workdir={workdir} "
            f"--output={test_path}"
        )
    val_path = workdir / "scores" / "val_scores.npz"
    val = load_scores(val_path) if val_path.is_file() else None
    if val is not None:
        _attach_split_record(val, workdir)
    return load_scores(test_path), val


def load_run(
    spec: str, *, val_spec: str | None = None, labels: str | None = None, stream: str | None = None
) -> tuple[dict, dict | None]:
    """(test scores, validation scores or None) of a run folder or a score file.

    A run folder's are scores/test_scores.npz and scores/val_scores.npz; a score file's
    validation scores are val_spec. A .pkl is CTR-GCN's format and takes its labels from
    `labels`. `stream` overrides the stream the files' metadata name (pickles name none)."""
    path = Path(spec)
    if path.is_dir():
        test, val = _load_workdir(path)
    elif path.suffix == ".pkl":
        if labels is None:
            raise ValueError(
                f"{path}: a CTR-GCN pickle holds no labels; pass --labels=<one of our score "
                f"files of the same test set, the NTU split .npz, or NW-UCLA's val_label.pkl>"
            )
        test, val = load_pickle_scores(path, Path(labels), stream), None
    else:
        test, val = load_scores(path), None
    if val_spec:
        val = load_scores(Path(val_spec))
    for scores in (test, val):
        if scores is not None and stream:
            scores["metadata"]["stream"] = stream
    return test, val


def load_runs(
    specs: Sequence[str],
    *,
    val_specs: Sequence[str] | None = None,
    labels: str | None = None,
    streams: Sequence[str] | None = None,
) -> tuple[list[dict], list[dict | None]]:
    """load_run over parallel lists: test score files and their validation ones."""
    for name, values in (("--val_runs", val_specs), ("--streams", streams)):
        if values and len(values) != len(specs):
            raise ValueError(f"{len(specs)} runs but {len(values)} entries in {name}")
    loaded = [
        load_run(
            spec,
            val_spec=val_specs[i] if val_specs else None,
            labels=labels,
            stream=streams[i] if streams else None,
        )
        for i, spec in enumerate(specs)
    ]
    return [test for test, _ in loaded], [val for _, val in loaded]
