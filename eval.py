"""Scores a trained run, or evaluates runs and their multi-stream ensembles with reports.

  python eval.py --workdir=runs/j                          # rescore the best checkpoint
  python eval.py --workdir=runs/j --checkpoint=latest --output=scores/j_latest.npz
  python eval.py --runs=runs/j,runs/b,runs/jm,runs/bm      # streams, 2-stream and 4-stream
  python eval.py --runs=runs/j,runs/b,runs/jm,runs/bm --search_weights \
      --baseline=runs/j0,runs/b0,runs/jm0,runs/bm0 --report=reports/ntu120_xsub
  python eval.py --runs=j.pkl,b.pkl --streams=joint,bone --labels=NTU120_CSub.npz
  python eval.py --runs=runs/j --export_pickle=j_epoch1_test_score.pkl

A run is a folder written by train.py (its scores/test_scores.npz and, when it held out a
validation split, scores/val_scores.npz) or a score file: ours (.npz) or CTR-GCN's pickle
(.pkl, labelled with --labels). Ensembles take their weights from the published ensemble
scripts, from --weights (file order), or with --search_weights from a grid search on the
validation scores only, never on the test labels; each result says which. --report writes
report.json, report.md and PNG figures (per-class accuracy, difficulty levels, confusion
matrix, t-SNE, and with --baseline the classes that gained or lost most) and an animation of
the most confidently misclassified test samples (confused.gif).
"""

import functools
import json
import zipfile
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from csre_jax import cli, sharding
from csre_jax.cli import exit_if_bad, start
from csre_jax.data.datasets import load_dataset
from csre_jax.errors import UserError
from csre_jax.evaluate.ctrgcn_pickle import save_pickle_scores
from csre_jax.evaluate.ensembles import RunsEvaluation, evaluate_runs, weights_problem
from csre_jax.evaluate.reports import results_table, write_report
from csre_jax.evaluate.runs import load_runs
from csre_jax.evaluate.scoring import (
    compile_eval_step,
    score_dataset,
    score_metadata,
    write_score_files,
)
from csre_jax.model_card import ModelCard
from csre_jax.models.build import backbone_shapes, build_backbone
from csre_jax.run_variables import restore_variables
from csre_jax.workdir import RunFolder, val_scores_path

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the run (default: the run's own config.json)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train.py, to rescore.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which model to score.")
_OUTPUT = flags.DEFINE_string("output", None, "Score file (default <workdir>/scores/...).")
_RUNS = flags.DEFINE_list("runs", None, "Run folders or score files (.npz, or CTR-GCN .pkl).")
_VAL_RUNS = flags.DEFINE_list(
    "val_runs", None, "Validation score files of score-file --runs, in --runs order."
)
_STREAMS = flags.DEFINE_list(
    "streams", None, "Stream of each run in --runs order (default: from the score files)."
)
_LABELS = flags.DEFINE_string(
    "labels", None, "Labels of .pkl runs: our score file, the NTU split .npz or val_label.pkl."
)
_BASELINE = flags.DEFINE_list(
    "baseline", None, "Runs to compare against (e.g. without CSRE), evaluated the same way."
)
_BASELINE_VAL_RUNS = flags.DEFINE_list(
    "baseline_val_runs", None, "Validation score files of score-file --baseline runs."
)
_WEIGHTS = flags.DEFINE_list("weights", None, "One ensemble weight per run, in --runs order.")
_SEARCH_WEIGHTS = flags.DEFINE_bool(
    "search_weights", False, "Search ensemble weights on the runs' validation scores."
)
_REPORT = flags.DEFINE_string("report", None, "Folder for report.json, report.md and figures.")
_TOP_CLASSES = flags.DEFINE_integer(
    "top_classes", 10, "Classes listed as gained/lost/confused.", lower_bound=1
)
_EXPORT_PICKLE = flags.DEFINE_string(
    "export_pickle", None, "Write the one --runs entry's test scores as a CTR-GCN pickle."
)


def _existing_paths(paths: list[str] | str | None) -> bool:
    """Checks a path flag when it is parsed, so the error names the flag and the path: each
    must exist, and an .npz must be an archive (numpy's own error names no file)."""
    for path in map(Path, [paths] if isinstance(paths, str) else paths or []):
        if not path.exists():
            raise flags.ValidationError(f"{path} does not exist")
        if path.suffix == ".npz" and path.is_file() and not zipfile.is_zipfile(path):
            raise flags.ValidationError(
                f"{path} is not an .npz archive (truncated, or another format); pass a score "
                "file that eval.py --workdir or train.py wrote"
            )
    return True


def _numbers(values: list[str] | None) -> bool:
    for value in values or []:
        try:
            float(value)
        except ValueError:
            raise flags.ValidationError(
                f"{value!r} is not a number; give one weight per --runs entry, in its order, "
                "e.g. --weights=0.6,0.6,0.4,0.4"
            ) from None
    problem = weights_problem([float(v) for v in values]) if values else None
    if problem:
        raise flags.ValidationError(
            f"{problem}; give finite weights of 0 or more, not all 0, one per --runs entry "
            "(e.g. --weights=0.6,0.6,0.4,0.4)"
        )
    return True


for _flag in ("workdir", "runs", "val_runs", "labels", "baseline", "baseline_val_runs"):
    flags.register_validator(_flag, _existing_paths)
flags.register_validator("weights", _numbers)


def _run_config(run: RunFolder) -> ConfigDict:
    if _CONFIG.value is not None:
        return _CONFIG.value
    path = run.config
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; pass --config=<the run's config file>")
    try:
        config = ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: not a readable run config ({error}); pass --config=<the run's config file>"
        ) from error
    return exit_if_bad(config)


def score_run(workdir: Path) -> None:
    """Rescores a run's best or latest checkpoint: the backbone alone, no banks or optimizer."""
    run = RunFolder(workdir)
    config = _run_config(run)
    dataset = load_dataset(config.data)
    card = ModelCard.from_dataset(dataset, config.data)
    backbone = build_backbone(config, card)
    mesh = sharding.mesh_for_config(config)
    eval_step = compile_eval_step(backbone, mesh, config.get("compute_dtype", "float32"))
    folder = run.checkpoint_folder(_CHECKPOINT.value)
    variables, step = restore_variables(folder, backbone_shapes(backbone, card))
    output = Path(_OUTPUT.value or run.rescored_test_scores(_CHECKPOINT.value))
    score = functools.partial(
        score_dataset,
        eval_step,
        variables,
        dataset,
        batch_size=config.data.eval_batch_size,
        mesh=mesh,
    )
    test = score("test", show_progress=jax.process_index() == 0)
    val = score("val") if dataset.val is not None else None
    write_score_files(output, score_metadata(config, f"{folder} step {step}"), dataset, test, val)
    if jax.process_index() == 0:
        also = f" and {val_scores_path(output)}" if val is not None else ""
        print(
            f"{folder} (step {step}): top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}% "
            f"on {len(dataset.test)} test samples; scores written to {output}{also}"
        )


def _evaluate(specs: list[str], val_specs: list[str] | None, title: str) -> RunsEvaluation:
    tests, vals = load_runs(
        specs, val_specs=val_specs, labels=_LABELS.value, streams=_STREAMS.value
    )
    weights = [float(w) for w in _WEIGHTS.value] if _WEIGHTS.value else None
    evaluation = evaluate_runs(
        tests, weights=weights, val_runs=vals, search=_SEARCH_WEIGHTS.value, show_progress=True
    )
    summary = evaluation.summary()
    print(f"{title} ({len(evaluation.labels)} test samples)\n{results_table(summary)}")
    for note in summary["notes"]:
        print(f"note: {note}")
    return evaluation


def evaluate_and_report() -> None:
    if _EXPORT_PICKLE.value:
        if len(_RUNS.value) != 1:
            raise UserError(f"--export_pickle takes one run, got {len(_RUNS.value)} in --runs")
        (test,), _ = load_runs(_RUNS.value, labels=_LABELS.value, streams=_STREAMS.value)
        save_pickle_scores(Path(_EXPORT_PICKLE.value), test)
        print(f"{test.path}: test scores written to {_EXPORT_PICKLE.value} (CTR-GCN pickle)")
    evaluation = _evaluate(_RUNS.value, _VAL_RUNS.value, "runs")
    baseline = None
    if _BASELINE.value:
        baseline = _evaluate(_BASELINE.value, _BASELINE_VAL_RUNS.value, "baseline")
    if _REPORT.value:
        print("writing the report (a t-SNE of up to 2,000 test samples takes a minute or so)")
        report = write_report(Path(_REPORT.value), evaluation, baseline, top=_TOP_CLASSES.value)
        skipped = report["confused_animation"].get("skipped")
        if skipped:
            print(f"no animation of the most confused test samples: {skipped}")
        print(f"report written to {Path(_REPORT.value) / 'report.md'} (and report.json, PNGs)")


def main(argv):
    start(argv, _CONFIG.value)
    if not (_RUNS.value or _WORKDIR.value):
        raise app.UsageError("pass --runs=<runs or score files> to evaluate, or --workdir=<run>")
    if _RUNS.value:
        evaluate_and_report()
    else:
        score_run(Path(_WORKDIR.value))


if __name__ == "__main__":
    cli.run(main)
