"""Training from a config: build everything once, then epochs of jitted steps.

Evaluation every `eval_every_epochs`, the latest state checkpointed every epoch (and every
`checkpoint_every_steps`), the best backbone kept for eval.py, and the best model's test
scores (and, with a held-out validation split, its validation scores) in workdir/scores/.
"""

import dataclasses
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from csre_jax import models
from csre_jax.csre.bank import create_bank, create_queue
from csre_jax.csre.loss import ContrastConfig
from csre_jax.csre.model import ContrastiveClassifier, load_torch_checkpoint
from csre_jax.data.datasets import Dataset, load_dataset
from csre_jax.data.pipeline import steps_per_epoch, train_dataset
from csre_jax.evaluate.predict import predict
from csre_jax.evaluate.scores import save_scores, topk_accuracy
from csre_jax.fileio import atomic_write
from csre_jax.training import optimizer, parallel
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.metrics import MetricWriter, mean_metrics
from csre_jax.training.state import TrainState
from csre_jax.training.step import make_eval_step, make_train_step


def bank_names(csre: ConfigDict) -> tuple[str, ...]:
    """config.csre.banks is 'none' or names joined by '+', e.g. 'spatial+temporal'."""
    return () if csre.banks in ("", "none") else tuple(csre.banks.split("+"))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config determines, built once."""

    config: ConfigDict
    dataset: Dataset
    backbone: nn.Module
    model: ContrastiveClassifier
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    schedule: optax.Schedule
    tx: optax.GradientTransformation

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch


def build(config: ConfigDict, dataset: Dataset | None = None) -> Experiment:
    """Builds the experiment; `dataset` replaces the config's data (benchmarks, tests)."""
    dataset = dataset or load_dataset(config.data)
    mesh = parallel.make_mesh(config.num_devices or None)
    for name in ("batch_size", "eval_batch_size"):
        if config.data[name] % mesh.size:
            raise ValueError(
                f"data.{name}={config.data[name]} is not divisible by the {mesh.size} devices"
            )
    backbone = models.create_model(
        config.model.name,
        num_classes=dataset.train.num_classes,
        dataset=dataset.skeleton,
        **config.model.kwargs,
    )
    missing = set(models.extra_inputs(backbone)) - set(dataset.input_shapes())
    if missing:
        raise ValueError(
            f"model.name={config.model.name!r} needs the input(s) {sorted(missing)}, which the "
            "data pipeline does not provide: set config.data.keep_joint=True"
        )
    model = ContrastiveClassifier(
        backbone, bank_names(config.csre), config.csre.dim, config.csre.reduction
    )
    steps = steps_per_epoch(dataset.train, config.data.batch_size)
    schedule, tx = optimizer.from_config(config.optim, steps)
    return Experiment(config, dataset, backbone, model, mesh, steps, schedule, tx)


def init_state(exp: Experiment) -> TrainState:
    """Fresh parameters (or model.init_checkpoint's official weights), empty banks (one slot
    per training sample, or queues of csre.bank_size rows), placed on the mesh."""
    slot_labels, csre = exp.dataset.train.labels, exp.config.csre
    banks = {
        name: create_queue(
            csre.bank_size,
            csre.dim,
            batch_size=exp.config.data.batch_size,
            pad_to_multiple=exp.mesh.size,
        )
        if csre.bank_size
        else create_bank(slot_labels, csre.dim, pad_to_multiple=exp.mesh.size)
        for name in exp.model.banks
    }
    rng = jax.random.key(exp.config.seed)
    init_rng, state_rng = jax.random.split(rng)
    sample = {k: jnp.zeros((1, *s), jnp.float32) for k, s in exp.dataset.input_shapes().items()}
    variables = exp.model.init({"params": init_rng, "dropout": init_rng}, **sample, train=False)
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
    return parallel.put(state, parallel.state_sharding(state, exp.mesh))


def _contrast_config(csre: ConfigDict) -> ContrastConfig:
    return ContrastConfig(
        num_positives=csre.num_positives,
        num_negatives=csre.num_negatives,
        temperature=csre.temperature,
        positive_sampling=csre.positive_sampling,
        negative_sampling=csre.negative_sampling,
    )


def compile_steps(exp: Experiment, state: TrainState):
    """The jitted train step (state donated, banks kept row-sharded) and eval step."""
    shardings = parallel.state_sharding(state, exp.mesh)
    train_step = jax.jit(
        make_train_step(
            exp.model,
            exp.tx,
            exp.schedule,
            _contrast_config(exp.config.csre),
            exp.config.csre.weight,
            exp.config.loss.label_smoothing,
            jnp.dtype(exp.config.get("compute_dtype", "float32")),
        ),
        in_shardings=(shardings, parallel.batch_sharding(exp.mesh)),
        out_shardings=(shardings, parallel.replicated(exp.mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(exp.backbone, jnp.dtype(exp.config.get("compute_dtype", "float32"))),
        in_shardings=(parallel.replicated(exp.mesh), parallel.batch_sharding(exp.mesh)),
        out_shardings=parallel.replicated(exp.mesh),
    )
    return train_step, eval_step


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A backbone's outputs on one split: per-sample logits and pooled features, accuracies."""

    logits: np.ndarray
    features: np.ndarray
    top1: float  # %
    top5: float  # %


def evaluate(
    exp: Experiment, eval_step, variables, split: str = "test", show_progress: bool = False
) -> Evaluation:
    """Backbone variables on the test split, or on the held-out validation split ('val')."""
    samples = exp.dataset.test if split == "test" else exp.dataset.val
    logits, features = predict(
        eval_step,
        variables,
        samples,
        batch_size=exp.config.data.eval_batch_size,
        mesh=exp.mesh,
        transform=exp.dataset.test_transform,
        show_progress=show_progress,
    )
    top1, top5 = (100 * topk_accuracy(logits, samples.labels, k) for k in (1, 5))
    return Evaluation(logits, features, top1, top5)


def _write_config(config: ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def _write_validation_split(exp: Experiment, workdir: Path) -> None:
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
    with atomic_write(workdir / "validation_split.json") as tmp:
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


def train_and_evaluate(config: ConfigDict, workdir: Path) -> dict[str, float]:
    """Trains (resuming from workdir if it holds a checkpoint); returns the best eval metrics.

    The best model's test scores (and validation scores, with a held-out split) are written
    to workdir/scores/ whenever an evaluation improves on the best so far.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exp = build(config)
    _write_config(config, workdir)
    _write_validation_split(exp, workdir)
    state = init_state(exp)
    train_step, eval_step = compile_steps(exp, state)
    batches = train_batches(exp)
    checkpointer = Checkpointer(workdir)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, parallel.state_sharding(state, exp.mesh), batches)
    writer = MetricWriter(workdir)
    best = checkpointer.best_metrics()
    step = int(jax.device_get(state.step))
    window, epoch_history, tick = [], [], time.perf_counter()
    with tqdm(
        total=exp.total_steps, initial=step, desc="train", disable=jax.process_index() != 0
    ) as bar:
        while step < exp.total_steps:
            state, metrics = train_step(state, parallel.global_batch(next(batches), exp.mesh))
            step += 1
            window.append(metrics)
            epoch_end = step % exp.steps_per_epoch == 0
            if step % config.log_every_steps == 0 or epoch_end:
                values = mean_metrics(window)
                now = time.perf_counter()
                values["samples_per_second"] = len(window) * config.data.batch_size / (now - tick)
                writer.write("train_step", step, values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", top1=f"{values['top1']:.2f}")
                epoch_history += window
                window, tick = [], now
            bar.update(1)
            if epoch_end:
                epoch = step // exp.steps_per_epoch
                values = mean_metrics(epoch_history) | {"epoch": epoch}
                epoch_history = []
                if epoch % config.eval_every_epochs == 0 or step == exp.total_steps:
                    variables = state.backbone_variables()
                    test = evaluate(exp, eval_step, variables)
                    scores = {"top1": test.top1, "top5": test.top5}
                    values |= {f"test_{k}": v for k, v in scores.items()}
                    if best is None or scores["top1"] > best["top1"]:
                        best = scores | {"epoch": epoch}
                        checkpointer.save_best(step, variables, best)
                        save_score_files(
                            exp,
                            eval_step,
                            variables,
                            test,
                            workdir / "scores" / "test_scores.npz",
                            f"{workdir / 'best'} step {step}",
                        )
                    bar.write(
                        f"epoch {epoch}: test top-1 {scores['top1']:.2f}% "
                        f"(best {best['top1']:.2f}% at epoch {best['epoch']})"
                    )
                writer.write("epoch", step, values)
                checkpointer.save(state, batches)
                tick = time.perf_counter()
            elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                checkpointer.save(state, batches)
    checkpointer.wait()
    checkpointer.close()
    multihost_utils.sync_global_devices("train_and_evaluate done")
    return best or {}


def val_scores_path(test_path: Path) -> Path:
    """scores/test_scores*.npz -> scores/val_scores*.npz (else <name>_val.npz)."""
    name = test_path.name
    if name.startswith("test_"):
        return test_path.with_name("val_" + name.removeprefix("test_"))
    return test_path.with_name(f"{test_path.stem}_val{test_path.suffix}")


def save_score_files(
    exp: Experiment, eval_step, variables, test: Evaluation, test_path: Path, source: str
) -> None:
    """The test score file of an evaluated model and, when the dataset holds out a
    validation split, that model's validation score file (val_scores_path); process 0
    writes them."""
    data = exp.config.data
    metadata = {
        "dataset": data.name,
        "benchmark": data.get("benchmark", ""),
        "stream": data.get("stream", "joint"),
        "model": exp.config.model.name,
        "checkpoint": source,
    }
    val = evaluate(exp, eval_step, variables, "val") if exp.dataset.val is not None else None
    if jax.process_index() != 0:
        return
    save_scores(
        test_path,
        test.logits,
        exp.dataset.test.labels,
        metadata | {"split": "test", "top1": test.top1},
        features=test.features,
    )
    if val is not None:
        save_scores(
            val_scores_path(test_path),
            val.logits,
            exp.dataset.val.labels,
            metadata | {"split": "val", "top1": val.top1},
            sample_ids=exp.dataset.val_ids,
        )
