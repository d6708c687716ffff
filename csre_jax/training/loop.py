"""Training from a config: build everything once, then epochs of jitted steps.

Evaluation every `eval_every_epochs`, the latest state checkpointed every epoch (and every
`checkpoint_every_steps`), the best backbone kept for eval.py, and the best model's test
scores (and, with a held-out validation split, its validation scores) in the run folder
(csre_jax.workdir).
"""

import contextlib
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from csre_jax import compile_cache, models, selection, sharding
from csre_jax.config_checks import check_config
from csre_jax.csre import sampling
from csre_jax.csre.model import ContrastiveClassifier, load_torch_checkpoint
from csre_jax.csre.objective import bank_names, contrast_config, create_banks
from csre_jax.data.datasets import Dataset, load_dataset
from csre_jax.data.pipeline import Split, steps_per_epoch, train_dataset
from csre_jax.errors import Diverged
from csre_jax.evaluate.scoring import (
    EvalStep,
    SplitScores,
    compile_eval_step,
    score_dataset,
    score_metadata,
    write_score_files,
)
from csre_jax.fileio import atomic_write
from csre_jax.model_card import ModelCard
from csre_jax.models.build import build_backbone
from csre_jax.run_metrics import read_metrics
from csre_jax.training import optimizer
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.interrupts import Stopped, StopRequests
from csre_jax.training.metrics import MetricWriter
from csre_jax.training.run_record import check_resume, write_config
from csre_jax.training.state import TrainState, state_sharding
from csre_jax.training.step import make_train_step
from csre_jax.workdir import RunFolder, removed_unless_started


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config determines, built once."""

    config: ConfigDict
    dataset: Dataset
    card: ModelCard
    backbone: nn.Module
    model: ContrastiveClassifier
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    schedule: optax.Schedule
    tx: optax.GradientTransformationExtraArgs
    csre_sampling: sampling.Sampling | None  # CSRE's counts per anchor (None: CSRE off)

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch

    @property
    def compute_dtype(self) -> str:
        return self.config.get("compute_dtype", "float32")

    @property
    def selection_rule(self) -> str:
        """Which evaluation's model best/ keeps (csre_jax.selection)."""
        return selection.rule_of(self.config, self.dataset.val is not None)


def build(config: ConfigDict, dataset: Dataset | None = None) -> Experiment:
    """Builds the experiment; `dataset` replaces the config's data (benchmarks, tests).

    CSRE's positives and negatives per anchor are checked against the training labels, or
    resolved from them (csre/sampling.py), before anything compiles; the experiment's config
    (what the run records and the train step uses) holds the counts, the caller's keeps its own.
    """
    check_config(config)
    dataset = dataset or load_dataset(config.data)
    counts = None
    if bank_names(config.csre):
        counts = sampling.resolve(config.csre, dataset.train.labels)
        config = config.copy_and_resolve_references()
        config.csre.num_positives, config.csre.num_negatives = counts.positives, counts.negatives
    mesh = sharding.mesh_for_config(config)
    card = ModelCard.from_dataset(dataset, config.data)
    backbone = build_backbone(config, card)
    model = ContrastiveClassifier(
        backbone, bank_names(config.csre), config.csre.dim, config.csre.reduction
    )
    steps = steps_per_epoch(dataset.train, config.data.batch_size)
    schedule, tx = optimizer.from_config(config.optim, steps)
    return Experiment(config, dataset, card, backbone, model, mesh, steps, schedule, tx, counts)


def init_state(exp: Experiment) -> TrainState:
    """Fresh parameters (or model.init_checkpoint's official weights), empty banks (one slot
    per training sample, or queues of csre.bank_size rows), placed on the mesh, in float32
    (float64 when compute_dtype is float64)."""
    banks = create_banks(
        exp.config.csre,
        exp.dataset.train.labels,
        batch_size=exp.config.data.batch_size,
        pad_to_multiple=exp.mesh.size,
    )
    rng = jax.random.key(exp.config.seed)
    init_rng, state_rng = jax.random.split(rng)
    # lazy_init skips the forward pass's arithmetic (only shapes flow through it): the same
    # variables in half the time, most of which is compiling the initializers' random draws
    sample = {
        k: jax.ShapeDtypeStruct((1, *s), jnp.float32) for k, s in exp.card.input_shapes.items()
    }
    rngs = {"params": init_rng, "dropout": init_rng}
    variables = exp.model.lazy_init(rngs, **sample, train=False)
    if exp.config.model.get("init_checkpoint"):
        backbone_key = models.backbone_module(exp.config.model.name).torch_key
        variables = load_torch_checkpoint(variables, exp.config.model.init_checkpoint, backbone_key)
    # float32 for float32 and mixed-precision runs, float64 for a float64 run
    state_dtype = models.accumulation_dtype(exp.compute_dtype)
    variables, banks = models.cast_floats((variables, banks), state_dtype)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=exp.tx.init(variables["params"]),
        banks=banks,
        rng=state_rng,
    )
    return sharding.put(state, state_sharding(state, exp.mesh))


def compile_steps(exp: Experiment, state: TrainState) -> tuple[Callable, EvalStep]:
    """The jitted train step (state donated, banks kept row-sharded) and eval step."""
    shardings = state_sharding(state, exp.mesh)
    train_step = jax.jit(
        make_train_step(
            model=exp.model,
            tx=exp.tx,
            schedule=exp.schedule,
            contrast=contrast_config(exp.config.csre),
            contrast_weight=exp.config.csre.weight,
            label_smoothing=exp.config.loss.label_smoothing,
            compute_dtype=jnp.dtype(exp.compute_dtype),
        ),
        in_shardings=(shardings, sharding.batch_sharding(exp.mesh)),
        out_shardings=(shardings, sharding.replicated(exp.mesh)),
        donate_argnums=0,
    )
    return train_step, compile_eval_step(exp.backbone, exp.mesh, exp.compute_dtype)


def evaluate(
    exp: Experiment, eval_step: EvalStep, variables, split: str = "test", show_progress=False
) -> SplitScores:
    """Backbone variables on the test split, or on the held-out validation split ('val')."""
    return score_dataset(
        eval_step,
        variables,
        exp.dataset,
        split,
        batch_size=exp.config.data.eval_batch_size,
        mesh=exp.mesh,
        show_progress=show_progress,
    )


def _write_validation_split(exp: Experiment, run: RunFolder) -> None:
    """Records which training samples were held out, so ensembles can check it."""
    if jax.process_index() != 0 or exp.dataset.val is None:
        return
    data = exp.config.data
    record = {
        "dataset": data.name,
        "benchmark": data.get("benchmark", ""),
        "fraction": data.val_fraction,
        "seed": data.val_seed,
        "num_train_samples": exp.dataset.full_train_size,
        "indices": exp.dataset.val_ids.tolist(),
    }
    with atomic_write(run.validation_split) as tmp:
        tmp.write_text(json.dumps(record) + "\n")


def train_batches(exp: Experiment):
    """The run's endless training iterator (its position is part of every checkpoint)."""
    return iter(
        train_dataset(
            exp.dataset.train,
            global_batch_size=exp.config.data.batch_size,
            seed=exp.config.seed,
            transform=exp.dataset.train_transform,
        )
    )


def _is_time(count: int, every: int) -> bool:
    """Whether a periodic action (every `every` steps or epochs; 0: never) is due."""
    return bool(every) and count % every == 0


class _RunningMeans:
    """Sums of per-step metrics since a point (a log or an epoch start), fetched lazily so the
    host never waits on a step it just dispatched. Its state travels in checkpoints, so an
    epoch interrupted and resumed averages all of its steps. Non-finite values stop training
    with the first bad step and whether its batch's inputs were finite."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0):
        self.sums, self.count = dict(sums or {}), count
        self._pending: list[tuple[int, dict, np.ndarray]] = []

    def add(self, step: int, metrics: dict[str, jax.Array], indices: np.ndarray) -> None:
        self._pending.append((step, metrics, indices))

    def fold(self, split: Split) -> None:
        fetched = jax.device_get([metrics for _, metrics, _ in self._pending])
        for (step, _, indices), metrics in zip(self._pending, fetched, strict=True):
            bad = [name for name, value in metrics.items() if not np.isfinite(value)]
            if bad:
                raise Diverged(_divergence_message(step, bad, metrics, split, indices))
            for name, value in metrics.items():
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.count += 1
        self._pending = []

    def means(self, split: Split) -> dict[str, float]:
        self.fold(split)
        return {name: total / self.count for name, total in self.sums.items()}

    def state(self, split: Split) -> dict:
        self.fold(split)
        return {"sums": self.sums, "count": self.count}

    def absorb(self, other: "_RunningMeans", split: Split) -> None:
        other.fold(split)
        for name, total in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + total
        self.count += other.count


def _divergence_message(step, names, metrics, split: Split, indices: np.ndarray) -> str:
    shown = ", ".join(f"{name} {float(metrics[name])}" for name in names)
    nonfinite = [int(i) for i in indices if not np.isfinite(np.asarray(split.x[int(i)])).all()]
    if nonfinite:
        inputs = (
            f"the batch's inputs were not finite: training samples {nonfinite} (positions "
            "in the training split) hold NaN or infinite values; fix or drop them"
        )
    else:
        inputs = (
            "the batch's inputs were finite (training samples "
            f"{[int(i) for i in indices[:8]]}{', ...' if len(indices) > 8 else ''}), so the "
            "model diverged: lower optim.base_lr or set optim.clip_norm"
        )
    return f"training diverged at step {step}: {shown}; {inputs}"


@contextlib.contextmanager
def _phase(name: str, active: bool):
    """Prints what the run is doing before the first step, and how long it took."""
    start = time.perf_counter()
    if active:
        print(f"{name} ...", end=" ", flush=True)
    try:
        yield
    except BaseException:
        if active:
            print("failed", flush=True)
        raise
    if active:
        print(f"{time.perf_counter() - start:.1f} s", flush=True)


def _report_devices(config: ConfigDict) -> None:
    """Which devices the run found, and a warning when a cluster recipe meets only CPUs."""
    devices = jax.devices()
    platform, kinds = devices[0].platform, ", ".join(sorted({d.device_kind for d in devices}))
    print(f"devices: {len(devices)} x {platform} ({kinds}), jax {jax.__version__}")
    if platform == "cpu" and config.data.get("name") in ("ntu60", "ntu120"):
        print(
            "warning: an NTU recipe on CPU only: with a GPU or TPU at hand, install its jax "
            "(pip install -r requirements-gpu.txt or requirements-tpu.txt, docs/clusters.md)",
            file=sys.stderr,
        )


def _resume_command() -> str:
    return " ".join(shlex.quote(arg) for arg in [Path(sys.executable).name, *sys.argv])


def _compile_train_step(exp: Experiment, train_step, state: TrainState):
    """The train step compiled ahead of its first batch, so the progress bar's clock starts
    with training, not with compilation."""
    batch = sharding.batch_sharding(exp.mesh)
    size = exp.config.data.batch_size
    shapes = {
        k: jax.ShapeDtypeStruct((size, *s), jnp.float32, sharding=batch)
        for k, s in exp.card.input_shapes.items()
    }
    for key in ("label", "index"):
        shapes[key] = jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batch)
    return train_step.lower(state, shapes).compile()


def train_and_evaluate(config: ConfigDict, workdir: Path) -> dict:
    """Trains (resuming from workdir if it holds a checkpoint); returns the run's selection
    summary (csre_jax.selection.summarize: the rule, the selected model's numbers, and the
    validation-selected, last and best-test numbers).

    Every evaluation scores the test split and, with a held-out validation split, that too.
    The model the config's select_on rule keeps goes to best/ and its test (and validation)
    scores to the run folder, whenever an evaluation replaces the kept one. A resume checks its
    config against the saved one before writing anything (run_record). SIGINT or SIGTERM
    stops after the current step with a checkpoint and raises interrupts.Stopped.
    """
    compile_cache.enable()
    run = RunFolder(workdir)
    main = jax.process_index() == 0
    with (
        removed_unless_started(run.root) as discard,  # a failed check leaves no empty run
        StopRequests(_resume_command(), before_training_exit=discard) as stop,
    ):
        run.root.mkdir(parents=True, exist_ok=True)
        if main:
            _report_devices(config)
        with _phase("loading data", main):
            exp = build(config)
        if main and exp.csre_sampling is not None:
            print(exp.csre_sampling.line(), flush=True)
        with Checkpointer(run.root) as checkpointer:
            resume_step = checkpointer.latest_step()
            resuming = resume_step is not None
            changes = check_resume(exp.config, run, resuming=resuming)
            if resuming and resume_step >= exp.total_steps and not changes:
                return _finished_summary(exp, run, resume_step)
            if main:
                exp.card.save(run.model_card)
            _write_validation_split(exp, run)
            with _phase("building the model", main):
                state = init_state(exp)
                batches = train_batches(exp)
                progress = {}
                if resuming:
                    state, progress = checkpointer.restore(
                        state, state_sharding(state, exp.mesh), batches
                    )
            step = int(jax.device_get(state.step))
            if resuming and main:
                print(f"resuming from step {step} ({run.checkpoints / str(step)})", flush=True)
            with _phase("compiling the train step", main):
                train_step, eval_step = compile_steps(exp, state)
                train_step = _compile_train_step(exp, train_step, state)
            if main:  # the run has started with this config
                write_config(exp.config, run, resuming=resuming, changes=changes, step=step)
            loop = _Loop(exp, run, checkpointer, stop, batches, train_step, eval_step)
            summary = loop.run(state, step, progress)
    multihost_utils.sync_global_devices("train_and_evaluate done")
    return summary


def _finished_summary(exp: Experiment, run: RunFolder, step: int) -> dict:
    """The selection summary of a run that has trained all its steps, read from its metrics
    without building or compiling anything."""
    if jax.process_index() != 0:
        return {}
    print(f"{run.root}: finished, all {step} steps trained", flush=True)
    return selection.summarize(read_metrics(run.root, "epoch"), exp.selection_rule)


@dataclasses.dataclass
class _Loop:
    """The epochs of one train_and_evaluate call, from a (restored) state to the end."""

    exp: Experiment
    folder: RunFolder
    checkpointer: Checkpointer
    stop: StopRequests
    batches: Any
    train_step: Callable
    eval_step: EvalStep

    def run(self, state: TrainState, step: int, progress: dict) -> dict:
        exp, config, split = self.exp, self.exp.config, self.exp.dataset.train
        self.kept = self.checkpointer.best_metrics()
        self.window = _RunningMeans(**progress.get("window", {}))
        self.epoch = _RunningMeans(**progress.get("epoch", {}))
        main = jax.process_index() == 0
        bar = tqdm(total=exp.total_steps, initial=step, desc="train", disable=not main)
        in_flight = None  # the last dispatched step: the bar counts a step when it finishes
        tick = time.perf_counter()
        # from the step it starts at: records a stopped run logged after its checkpoint go
        with (
            bar,
            logging_redirect_tqdm(),
            MetricWriter(self.folder.root, resume_step=step) as writer,
        ):
            self.stop.begin_training()
            while step < exp.total_steps and not self.stop.received:
                batch = next(self.batches)
                state, metrics = self.train_step(state, sharding.global_batch(batch, exp.mesh))
                step += 1
                self.window.add(step, metrics, batch["index"])
                if in_flight is not None:
                    jax.block_until_ready(in_flight)
                    bar.update(1)
                in_flight = metrics
                epoch_end = step % exp.steps_per_epoch == 0
                if _is_time(step, config.log_every_steps) or epoch_end:
                    jax.block_until_ready(in_flight)
                    bar.update(1)
                    in_flight = None
                    values = self.window.means(split)
                    now = time.perf_counter()
                    rate = self.window.count * config.data.batch_size / (now - tick)
                    writer.write("train_step", step, values | {"samples_per_second": rate})
                    bar.set_postfix(loss=f"{values['loss']:.3f}", top1=f"{values['top1']:.2f}")
                    self.epoch.absorb(self.window, split)
                    self.window, tick = _RunningMeans(), now
                if not epoch_end:
                    if _is_time(step, config.checkpoint_every_steps):
                        self.checkpointer.save(state, self.batches, self._progress())
                    continue
                started = time.perf_counter()
                self._end_epoch(state, step, writer, bar)
                bar.start_t += time.perf_counter() - started  # the rate counts training only
                tick = time.perf_counter()
            if in_flight is not None:
                jax.block_until_ready(in_flight)
                bar.update(1)
            if self.stop.received:
                self._stop(state, step)
            summary = self._summary(writer, step)
        self.checkpointer.wait()
        return summary

    def _summary(self, writer: MetricWriter, step: int) -> dict:
        """The three labelled numbers of the finished run, recorded in metrics.jsonl."""
        if jax.process_index() != 0:
            return {}
        evaluations = read_metrics(self.folder.root, "epoch")
        summary = selection.summarize(evaluations, self.exp.selection_rule)
        if summary:
            writer.note("selection", step, summary)
        return summary

    def _progress(self) -> dict:
        split = self.exp.dataset.train
        return {"window": self.window.state(split), "epoch": self.epoch.state(split)}

    def _end_epoch(self, state: TrainState, step: int, writer: MetricWriter, bar: tqdm) -> None:
        exp = self.exp
        epoch = step // exp.steps_per_epoch
        values = self.epoch.means(exp.dataset.train) | {"epoch": epoch}
        self.epoch = _RunningMeans()
        if _is_time(epoch, exp.config.eval_every_epochs) or step == exp.total_steps:
            values |= self._evaluate(state, step, epoch, bar)
        writer.write("epoch", step, values)
        self.checkpointer.save(state, self.batches, self._progress())

    def _evaluate(self, state: TrainState, step: int, epoch: int, bar: tqdm) -> dict:
        """Test (and validation) scores of this epoch's model; the model goes to best/ and
        its scores to the run folder when the selection rule prefers it to the kept one."""
        exp, rule = self.exp, self.exp.selection_rule
        variables = state.backbone_variables()
        test = evaluate(exp, self.eval_step, variables, show_progress=not bar.disable)
        val = None if exp.dataset.val is None else evaluate(exp, self.eval_step, variables, "val")
        scores = {"test_top1": test.top1, "test_top5": test.top5}
        if val is not None:
            scores |= {"val_top1": val.top1, "val_top5": val.top5}
        if selection.improves(rule, scores, self.kept):
            self.kept = scores | {"epoch": epoch}
            self.checkpointer.save_best(step, variables, self.kept)
            metadata = score_metadata(exp.config, f"{self.folder.best} step {step}")
            write_score_files(self.folder.test_scores, metadata, exp.dataset, test, val)
        on_val = f", val top-1 {val.top1:.2f}%" if val is not None else ""
        bar.write(
            f"epoch {epoch}: test top-1 {test.top1:.2f}%{on_val} (kept: epoch "
            f"{self.kept['epoch']}, {selection.LABELS[rule]})"
        )
        return scores

    def _stop(self, state: TrainState, step: int) -> None:
        """Checkpoints the current step (unless its checkpoint exists) and says how to resume."""
        self.checkpointer.save_now(state, self.batches, self._progress())
        signal_name = self.stop.received
        raise Stopped(
            signal_name,
            f"{signal_name}: training stopped after step {step} of {self.exp.total_steps}; "
            f"checkpoint in {self.folder.checkpoints / str(step)}.\n"
            f"Resume with the same command:\n  {_resume_command()}",
        )
