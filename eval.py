"""Scores a trained run on its test split, or ensembles score files.

  python eval.py --workdir=runs/synthetic                 # best checkpoint, config from the run
  python eval.py --workdir=runs/x --checkpoint=latest --output=scores/x_latest.npz
  python eval.py --ensemble=runs/j/scores/test_scores.npz,runs/b/scores/test_scores.npz \
      --weights=1,1

Scoring writes a per-sample score file (raw logits, labels, sample ids) and prints top-1/top-5.
An ensemble sums the files' logits with the given weights and prints every accuracy.
"""

import json
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from csre_jax.cli import parse_flags, start
from csre_jax.evaluate.scores import ensemble, load_scores, topk_accuracy
from csre_jax.training import loop
from csre_jax.training.checkpoint import restore_variables

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the run (default: the run's own config.json)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train.py.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which model to score.")
_OUTPUT = flags.DEFINE_string("output", None, "Score file (default <workdir>/scores/...).")
_ENSEMBLE = flags.DEFINE_list("ensemble", None, "Score files to ensemble.")
_WEIGHTS = flags.DEFINE_list("weights", None, "One weight per ensembled file (default all 1).")


def _run_config(workdir: Path) -> ConfigDict:
    if _CONFIG.value is not None:
        return _CONFIG.value
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; pass --config=<the run's config file>")
    return ConfigDict(json.loads(path.read_text()))


def score_run(workdir: Path) -> None:
    config = _run_config(workdir)
    exp = loop.build(config)
    state = loop.init_state(exp)
    _, eval_step = loop.compile_steps(exp, state)
    folder = workdir / ("best" if _CHECKPOINT.value == "best" else "checkpoints")
    variables, step = restore_variables(folder, state.backbone_variables())
    output = Path(_OUTPUT.value or workdir / "scores" / f"test_scores_{_CHECKPOINT.value}.npz")
    test = loop.evaluate(exp, eval_step, variables, show_progress=jax.process_index() == 0)
    loop.save_score_files(exp, eval_step, variables, test, output, f"{folder} step {step}")
    if jax.process_index() == 0:
        also = f" and {loop.val_scores_path(output)}" if exp.dataset.val is not None else ""
        print(
            f"{folder} (step {step}): top-1 {test.top1:.2f}%, top-5 {test.top5:.2f}% "
            f"on {len(exp.dataset.test)} test samples; scores written to {output}{also}"
        )


def score_ensemble(paths: list[str], weights: list[str] | None) -> None:
    weights = [float(w) for w in weights] if weights else [1.0] * len(paths)
    for path in paths:
        run = load_scores(path)
        print(f"{path}: top-1 {100 * topk_accuracy(run['logits'], run['labels']):.2f}%")
    fused = ensemble(paths, weights)
    top1 = 100 * topk_accuracy(fused["logits"], fused["labels"], 1)
    top5 = 100 * topk_accuracy(fused["logits"], fused["labels"], 5)
    print(f"ensemble (weights {weights}): top-1 {top1:.2f}%, top-5 {top5:.2f}%")


def main(argv):
    start(argv)
    if _ENSEMBLE.value:
        score_ensemble(_ENSEMBLE.value, _WEIGHTS.value)
    elif _WORKDIR.value:
        score_run(Path(_WORKDIR.value))
    else:
        raise app.UsageError("pass --workdir=<run> to score a run, or --ensemble=<files>")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
