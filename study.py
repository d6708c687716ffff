"""Does CSRE help? Trains every (variant, seed) pair and reports the comparison honestly.

  python study.py --config=configs/ctrgcn.py:ucla,joint --variants=baseline,csre \
      --seeds=0,1,2,3,4 --workdir=studies/ucla_ctrgcn
  python study.py ... --streams=joint,bone      # each stream, and the 2-stream ensemble
  python study.py ... --dry_run                 # every run's train.py command
  python study.py ... --slurm                   # <workdir>/study.sbatch, one task per run
  python study.py ... --report                  # the report of what has finished

Each run is a train.py run folder under <workdir>/<variant>/seed<k>/ (and /<stream>/ with
--streams); running the study again reads the finished runs, resumes an interrupted one and
trains nothing twice. The report (study.md, study.json, PNG figures) gives, per variant and
model-selection rule, the runs' test top-1 with mean, standard deviation, 95% interval, min
and max; against the baseline, the paired differences per seed with their tests (paired t,
exact Wilcoxon signed-rank), a per-sample McNemar test and per-class differences. Overrides
such as --config.num_epochs=30 apply to every run.
"""

import shlex
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from csre_jax import cli
from csre_jax.cli import start
from csre_jax.study import StudyError, plan, report
from csre_jax.study.variants import parse_variants
from csre_jax.training.interrupts import Stopped
from csre_jax.training.run_record import ResumeRefused

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study folder.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["baseline", "csre"], "Variants to compare, the first is the baseline."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of every variant.")
_STREAMS = flags.DEFINE_list(
    "streams", None, "Streams to train (default: the config's); J+B and all four ensemble."
)
_SEARCH_WEIGHTS = flags.DEFINE_bool(
    "search_weights", False, "Ensemble weights searched on validation (default: published)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print every run's command and stop.")
_SLURM = flags.DEFINE_bool("slurm", False, "Write <workdir>/study.sbatch and stop.")
_TASK = flags.DEFINE_integer("task", None, "Train only run number N (a cluster array task).")
_REPORT = flags.DEFINE_bool("report", False, "Only write the report of the finished runs.")


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def _command(run: plan.Run, overrides: dict) -> str:
    """The train.py command that trains `run` alone."""
    config_flags_given = [a for a in sys.argv[1:] if a.startswith(("--config=", "--config."))]
    settings = overrides | {"seed": run.seed, "data.stream": run.stream}
    extra = [f"--config.{key}={value}" for key, value in settings.items()]
    return shlex.join(
        ["python", "train.py", *config_flags_given, *extra, f"--workdir={run.folder}"]
    )


def main(argv):
    start(argv, _CONFIG.value)
    config, root = _CONFIG.value, Path(_WORKDIR.value)
    try:
        variants = parse_variants(_VARIANTS.value, config)
        seeds, streams = plan.parse_seeds(_SEEDS.value), plan.parse_streams(_STREAMS.value)
        runs = plan.plan(config, variants, seeds, streams, root)
        if _DRY_RUN.value:
            overrides = {v.name: v.overrides for v in variants}
            for number, run in enumerate(runs):
                print(f"# run {number}: {run.variant}, seed {run.seed}, {run.stream}")
                print(_command(run, overrides[run.variant]))
            return
        plan.record_config(root, config)
        if _SLURM.value:
            path = plan.slurm_script(root, sys.argv, len(runs))
            print(f"{path}: submit with sbatch {path}; then: python study.py ... --report")
            return
        if _TASK.value is not None and not 0 <= _TASK.value < len(runs):
            raise StudyError(f"--task={_TASK.value}: the study has runs 0 to {len(runs) - 1}")
        if not _REPORT.value:
            plan.train(runs if _TASK.value is None else [runs[_TASK.value]])
            if _TASK.value is not None:
                return
        verdict = report.write_study_report(root, runs, variants, search=_SEARCH_WEIGHTS.value)
    except (StudyError, ResumeRefused) as error:
        _fail(str(error))
    except Stopped as stop:
        sys.stderr.write(f"\n{stop}\nRerun the study's command to continue it.\n")
        sys.exit(stop.exit_code)
    print(verdict)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
