"""A study's runs: every (variant, seed, stream) as a config and a run folder, and the study
folder's record of the config they share.

<study>/study_config.json                the study's config (before variants, seeds, streams)
<study>/<variant>/seed<k>/               one run folder (train.py's layout), with one stream
<study>/<variant>/seed<k>/<stream>/      one per stream, with --streams
<study>/study.md, study.json, *.png      the report
<study>/study.sbatch                     the cluster array script (--slurm)
"""

import dataclasses
import json
import shlex
from pathlib import Path

from ml_collections import ConfigDict

from csre_jax.data.transforms import STREAMS
from csre_jax.evaluate.ensembles import TWO_STREAM
from csre_jax.fileio import atomic_write
from csre_jax.run_metrics import read_metrics
from csre_jax.study import StudyError
from csre_jax.study.variants import Variant
from csre_jax.training.loop import train_and_evaluate
from csre_jax.training.run_record import config_changes
from csre_jax.workdir import RunFolder


class StudyRefused(StudyError):
    """The study folder holds runs of another config; the message lists the differing keys."""


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    stream: str
    folder: Path
    config: ConfigDict

    @property
    def finished(self) -> bool:
        """Whether training reached its end: a finished run records its model selection."""
        return RunFolder(self.folder).metrics.is_file() and bool(
            read_metrics(self.folder, "selection")
        )


def parse_seeds(values: list[str]) -> list[int]:
    """--seeds as integers, each once."""
    try:
        seeds = [int(value) for value in values]
    except ValueError:
        bad = next(v for v in values if not v.strip().lstrip("-").isdigit())
        raise StudyError(f"--seeds: {bad!r} is not an integer; e.g. --seeds=0,1,2,3,4") from None
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds={','.join(values)}: a seed is named twice")
    return seeds


def parse_streams(values: list[str] | None) -> list[str] | None:
    """--streams in the standard order; several must include joint and bone, the runs that
    eval.py's 2-stream ensemble needs (all four make the 4-stream one)."""
    if values is None:
        return None
    unknown = [v for v in values if v not in STREAMS]
    if unknown:
        raise StudyError(f"--streams: {unknown[0]!r} is not one of {', '.join(STREAMS)}")
    if len(set(values)) != len(values):
        raise StudyError(f"--streams={','.join(values)}: a stream is named twice")
    streams = [s for s in STREAMS if s in values]
    if len(streams) > 1 and not set(TWO_STREAM) <= set(streams):
        raise StudyError(
            f"--streams={','.join(values)}: eval.py ensembles joint+bone (2-stream) and all "
            "four streams (4-stream); add joint and bone, or give one stream"
        )
    return streams


def plan(
    config: ConfigDict,
    variants: list[Variant],
    seeds: list[int],
    streams: list[str] | None,
    root: Path,
) -> list[Run]:
    """Every run of the study, variant by variant, seed by seed, stream by stream."""
    runs = []
    for variant in variants:
        for seed in seeds:
            for stream in streams or [config.data.stream]:
                run_config = variant.apply(config)
                run_config.seed = seed
                run_config.data.stream = stream
                folder = Path(root) / variant.name / f"seed{seed}"
                runs.append(
                    Run(
                        variant.name,
                        seed,
                        stream,
                        folder / stream if streams else folder,
                        run_config,
                    )
                )
    return runs


def train(runs: list[Run], log=print) -> list[Run]:
    """Trains the runs that have not finished (an interrupted one resumes); returns them.
    interrupts.Stopped passes through: the study's command continues it."""
    trained = []
    for run in runs:
        if run.finished:
            log(f"{run.folder}: finished, read as it is")
            continue
        log(f"{run.folder}: training ({run.variant}, seed {run.seed}, {run.stream})")
        train_and_evaluate(run.config, run.folder)
        trained.append(run)
    return trained


def record_config(root: Path, config: ConfigDict) -> None:
    """Writes the study's config, or refuses when the folder already holds another one."""
    path = Path(root) / "study_config.json"
    if path.is_file():
        changes = config_changes(json.loads(path.read_text()), config)
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise StudyRefused(
                f"{root} holds a study of another config ({listed}); runs of different configs "
                f"cannot be compared: give these the saved values ({path}) or another --workdir"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(config.to_json_best_effort(indent=2) + "\n")


def slurm_script(root: Path, argv: list[str], num_runs: int) -> Path:
    """<study>/study.sbatch: a job array of one task per run, each `study.py ... --task=N`;
    `study.py ... --report` then aggregates what finished."""
    flags = [a for a in argv[1:] if not a.startswith(("--slurm", "--task", "--dry_run"))]
    command = shlex.join(["python", "study.py", *flags]) + " --task=$SLURM_ARRAY_TASK_ID"
    path = Path(root) / "study.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=csre-study",
        f"#SBATCH --array=0-{num_runs - 1}",
        "#SBATCH --gres=gpu:1  # a run may take several GPUs: raise this, jax uses them all",
        f"#SBATCH --output={root}/slurm-%A_%a.out",
        "# Every task trains one (variant, seed, stream) run; a task that is requeued resumes.",
        command,
        "",
    ]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
