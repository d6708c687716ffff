"""Training from a config: build everything once, then epochs of jitted steps.

Evaluation every `eval_every_epochs`, the latest state checkpointed every epoch (and every
`checkpoint_every_steps`), the best backbone kept for eval.py, and the best model's test
scores (and, with a held-out validation split, its validation scores) in the run folder
(csre_jax.workdir).
"""

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from csre_jax import models, sharding
from csre_jax.csre.model import ContrastiveClassifier, load_torch_checkpoint
from csre_jax.csre.objective import bank_names, contrast_config, create_banks
from csre_jax.data.datasets import Dataset, load_dataset
from csre_jax.data.pipeline import steps_per_epoch, train_dataset
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
from csre_jax.training import optimizer
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.metrics import MetricWriter, mean_metrics
from csre_jax.training.state import TrainState, state_sharding
from csre_jax.training.step import make_train_step
from csre_jax.workdir import RunFolder


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

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch

    @property
    def compute_dtype(self) -> str:
        return self.config.get("compute_dtype", "float32")


def build_backbone(config: ConfigDict, card: ModelCard) -> nn.Module:
    """The configured backbone for the card's skeleton, input shape and classes."""
    backbone = models.create_model(
        config.model.name,
        num_classes=card.num_classes,
        layout=card.layout,
        num_person=card.num_person,
        in_channels=card.channels,
        **config.model.kwargs,
    )
    missing = set(models.extra_inputs(backbone)) - set(card.input_shapes)
    if missing:
        raise ValueError(
            f"model.name={config.model.name!r} needs the input(s) {sorted(missing)}, which the "
            "data pipeline does not provide: set config.data.keep_joint=True"
        )
    return backbone


def make_mesh(config: ConfigDict) -> jax.sharding.Mesh:
    """The mesh of config.num_devices devices (0: all), which must split every batch."""
    mesh = sharding.make_mesh(config.num_devices or None)
    for name in ("batch_size", "eval_batch_size"):
        if config.data[name] % mesh.size:
            raise ValueError(
                f"data.{name}={config.data[name]} is not divisible by the {mesh.size} devices"
            )
    return mesh


def build(config: ConfigDict, dataset: Dataset | None = None) -> Experiment:
    """Builds the experiment; `dataset` replaces the config's data (benchmarks, tests)."""
    dataset = dataset or load_dataset(config.data)
    mesh = make_mesh(config)
    card = ModelCard.from_dataset(dataset, config.data)
    backbone = build_backbone(config, card)
    model = ContrastiveClassifier(
        backbone, bank_names(config.csre), config.csre.dim, config.csre.reduction
    )
    steps = steps_per_epoch(dataset.train, config.data.batch_size)
    schedule, tx = optimizer.from_config(config.optim, steps)
    return Experiment(config, dataset, card, backbone, model, mesh, steps, schedule, tx)


def init_state(exp: Experiment) -> TrainState:
    """Fresh parameters (or model.init_checkpoint's official weights), empty banks (one slot
    per training sample, or queues of csre.bank_size rows), placed on the mesh."""
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


def backbone_shapes(backbone: nn.Module, card: ModelCard) -> dict:
    """The backbone's variables as shapes, without computing them: what a checkpoint of it
    is checked against."""
    sample = {k: jnp.zeros((1, *s), jnp.float32) for k, s in card.input_shapes.items()}
    return jax.eval_shape(lambda: backbone.init(jax.random.key(0), **sample, train=False))


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


def save_score_files(
    exp: Experiment, eval_step: EvalStep, variables, test: SplitScores, path: Path, source: str
) -> None:
    """The test score file of an evaluated model and, with a held-out validation split, that
    model's validation score file beside it."""
    val = evaluate(exp, eval_step, variables, "val") if exp.dataset.val is not None else None
    write_score_files(path, score_metadata(exp.config, source), exp.dataset, test, val)


def _write_config(exp: Experiment, run: RunFolder) -> None:
    """The run's config and model card (what predict.py rebuilds the backbone from)."""
    if jax.process_index() == 0:
        run.config.write_text(exp.config.to_json_best_effort(indent=2) + "\n")
        exp.card.save(run.model_card)


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


def train_and_evaluate(config: ConfigDict, workdir: Path) -> dict[str, float]:
    """Trains (resuming from workdir if it holds a checkpoint); returns the best eval metrics.

    The best model's test scores (and validation scores, with a held-out split) are written
    to the run folder whenever an evaluation improves on the best so far.
    """
    run = RunFolder(workdir)
    run.root.mkdir(parents=True, exist_ok=True)
    exp = build(config)
    _write_config(exp, run)
    _write_validation_split(exp, run)
    state = init_state(exp)
    train_step, eval_step = compile_steps(exp, state)
    batches = train_batches(exp)
    checkpointer = Checkpointer(run.root)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, state_sharding(state, exp.mesh), batches)
    writer = MetricWriter(run.root)
    best = checkpointer.best_metrics()
    step = int(jax.device_get(state.step))
    window, epoch_history, tick = [], [], time.perf_counter()
    with tqdm(
        total=exp.total_steps, initial=step, desc="train", disable=jax.process_index() != 0
    ) as bar:
        while step < exp.total_steps:
            state, metrics = train_step(state, sharding.global_batch(next(batches), exp.mesh))
            step += 1
            bar.update(1)
            window.append(metrics)
            epoch_end = step % exp.steps_per_epoch == 0

            if _is_time(step, config.log_every_steps) or epoch_end:
                values = mean_metrics(window)
                now = time.perf_counter()
                values["samples_per_second"] = len(window) * config.data.batch_size / (now - tick)
                writer.write("train_step", step, values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", top1=f"{values['top1']:.2f}")
                epoch_history += window
                window, tick = [], now

            if not epoch_end:
                if _is_time(step, config.checkpoint_every_steps):
                    checkpointer.save(state, batches)
                continue

            epoch = step // exp.steps_per_epoch
            values = mean_metrics(epoch_history) | {"epoch": epoch}
            epoch_history = []
            if _is_time(epoch, config.eval_every_epochs) or step == exp.total_steps:
                variables = state.backbone_variables()
                test = evaluate(exp, eval_step, variables)
                scores = {"top1": test.top1, "top5": test.top5}
                values |= {f"test_{k}": v for k, v in scores.items()}
                if best is None or scores["top1"] > best["top1"]:
                    best = scores | {"epoch": epoch}
                    checkpointer.save_best(step, variables, best)
                    source = f"{run.best} step {step}"
                    save_score_files(exp, eval_step, variables, test, run.test_scores, source)
                bar.write(
                    f"epoch {epoch}: test top-1 {scores['top1']:.2f}% "
                    f"(best {best['top1']:.2f}% at epoch {best['epoch']})"
                )
            writer.write("epoch", step, values)
            checkpointer.save(state, batches)
            tick = time.perf_counter()
    checkpointer.wait()
    checkpointer.close()
    multihost_utils.sync_global_devices("train_and_evaluate done")
    return best or {}
