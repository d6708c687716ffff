"""What eval.py's --runs name: a run folder written by train.py, or a score file (ours or a
CTR-GCN pickle), loaded with its validation scores when it has them."""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError
from csre_jax.evaluate.ctrgcn_pickle import load_pickle_scores
from csre_jax.evaluate.scores import ScoreFile, ValidationSplit, load_scores
from csre_jax.workdir import RunFolder


def _with_split_record(val: ScoreFile, run: RunFolder) -> ScoreFile:
    """The validation scores with the split the data pipeline recorded, checked against it."""
    path = run.validation_split
    if not path.is_file():
        return val
    record = json.loads(path.read_text())
    if not np.array_equal(np.asarray(record["indices"]), val.sample_ids):
        raise UserError(
            f"{val.path}: its samples are not the held-out split recorded in {path}; "
            f"rescore the run (python eval.py --workdir={run.root})"
        )
    split = ValidationSplit(
        record["fraction"], record["seed"], record["num_train_samples"], recorded_in=path
    )
    return dataclasses.replace(val, validation_split=split)


def _load_run_folder(root: Path) -> tuple[ScoreFile, ScoreFile | None]:
    run = RunFolder(root)
    if not run.test_scores.is_file():
        raise FileNotFoundError(
            f"{root}: no {run.test_scores.relative_to(root)}; train the run to the end of an "
            f"evaluated epoch, or score its checkpoint with python eval.py --workdir={root} "
            f"--output={run.test_scores}"
        )
    val = None
    if run.val_scores.is_file():
        val = _with_split_record(load_scores(run.val_scores), run)
    return load_scores(run.test_scores), val


def load_run(
    spec: str, *, val_spec: str | None = None, labels: str | None = None, stream: str | None = None
) -> tuple[ScoreFile, ScoreFile | None]:
    """(test scores, validation scores or None) of a run folder or a score file.

    A run folder's are its RunFolder test_scores and val_scores; a score file's validation
    scores are val_spec. A .pkl is CTR-GCN's format and takes its labels from `labels`.
    `stream` overrides the stream the files' metadata name (pickles name none)."""
    path = Path(spec)
    if path.is_dir():
        test, val = _load_run_folder(path)
    elif path.suffix == ".pkl":
        if labels is None:
            raise UserError(
                f"{path}: a CTR-GCN pickle holds no labels; pass --labels=<one of our score "
                f"files of the same test set, the NTU split .npz, or NW-UCLA's val_label.pkl>"
            )
        test, val = load_pickle_scores(path, Path(labels), stream), None
    else:
        test, val = load_scores(path), None
    if val_spec:
        val = load_scores(Path(val_spec))
    if stream:
        test = test.with_stream(stream)
        val = None if val is None else val.with_stream(stream)
    return test, val


def load_runs(
    specs: Sequence[str],
    *,
    val_specs: Sequence[str] | None = None,
    labels: str | None = None,
    streams: Sequence[str] | None = None,
) -> tuple[list[ScoreFile], list[ScoreFile | None]]:
    """load_run over parallel lists: test score files and their validation ones."""
    for name, values in (("--val_runs", val_specs), ("--streams", streams)):
        if values and len(values) != len(specs):
            raise UserError(f"{len(specs)} runs but {len(values)} entries in {name}")
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
