"""A backbone's scores on a split, and the score files a run writes.

Evaluation runs the backbone alone, in eval mode: the CSRE heads and banks play no part.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm import tqdm

from csre_jax import sharding
from csre_jax.data.datasets import Dataset
from csre_jax.data.pipeline import Split, Transform, eval_batches
from csre_jax.evaluate.scores import check_finite, save_scores, topk_accuracy
from csre_jax.models import accumulation_dtype, cast_floats, model_inputs
from csre_jax.workdir import val_scores_path

EvalStep = Callable[[dict, dict], tuple[jax.Array, jax.Array]]


def make_eval_step(backbone: nn.Module, compute_dtype: jnp.dtype = jnp.float32) -> EvalStep:
    """(variables, batch) -> (logits, pooled features): the last feature map averaged over
    everything but its channels, which the reports' t-SNE shows."""

    def eval_step(variables, batch):
        x, extras = cast_floats(model_inputs(backbone, batch), compute_dtype)
        variables = {**variables, "params": cast_floats(variables["params"], compute_dtype)}
        logits, feature_map = backbone.apply(
            variables, x, **extras, train=False, return_features=True
        )
        pooled = feature_map.mean(axis=tuple(range(1, feature_map.ndim - 1)))
        wide = accumulation_dtype(logits.dtype)
        return logits.astype(wide), pooled.astype(wide)

    return eval_step


def compile_eval_step(backbone: nn.Module, mesh: Mesh, compute_dtype: str) -> EvalStep:
    """make_eval_step jitted on the mesh: variables replicated, batches split."""
    return jax.jit(
        make_eval_step(backbone, jnp.dtype(compute_dtype)),
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


@dataclasses.dataclass(frozen=True)
class SplitScores:
    """A backbone's outputs on one split: per-sample logits and pooled features, accuracies."""

    logits: np.ndarray
    pooled_features: np.ndarray
    top1: float  # %
    top5: float  # %


def score_split(
    eval_step: EvalStep,
    variables: dict,
    split: Split,
    *,
    batch_size: int,
    mesh: Mesh,
    transform: Transform | None = None,
    show_progress: bool = False,
) -> SplitScores:
    """The split in order through eval_step; the variables should already be on the mesh
    (replicated) so each batch moves only its inputs."""
    outputs = []
    batches = eval_batches(split, batch_size=batch_size, transform=transform)
    total = -(-len(split) // batch_size)
    for local in tqdm(batches, total=total, desc="eval", disable=not show_progress, leave=False):
        real = local.pop("valid")  # the last batch is padded
        inputs = {k: v for k, v in local.items() if k not in ("label", "index")}
        results = eval_step(variables, sharding.global_batch(inputs, mesh))
        gathered = multihost_utils.process_allgather(results, tiled=True)
        all_real = np.asarray(multihost_utils.process_allgather(real, tiled=True))
        outputs.append([np.asarray(a)[all_real] for a in gathered])
    logits, pooled = (np.concatenate(parts)[: len(split)] for parts in zip(*outputs, strict=True))
    check_finite(
        logits,
        "the model's outputs",
        "its weights hold NaN or infinite values (a diverged run): resume from an earlier "
        "checkpoint with a lower optim.base_lr",
    )
    top1, top5 = (100 * topk_accuracy(logits, split.labels, k) for k in (1, 5))
    return SplitScores(logits, pooled, top1, top5)


def score_metadata(config: ConfigDict, checkpoint: str) -> dict:
    """What a score file records about the run that wrote it."""
    data = config.data
    return {
        "dataset": data.name,
        "benchmark": data.get("benchmark", ""),
        "stream": data.get("stream", "joint"),
        "model": config.model.name,
        "checkpoint": checkpoint,
    }


def score_dataset(
    eval_step: EvalStep,
    variables: dict,
    dataset: Dataset,
    split: str = "test",
    *,
    batch_size: int,
    mesh: Mesh,
    show_progress: bool = False,
) -> SplitScores:
    """A dataset's test split, or its held-out validation split ('val'), with its test-time
    transform."""
    return score_split(
        eval_step,
        variables,
        dataset.test if split == "test" else dataset.val,
        batch_size=batch_size,
        mesh=mesh,
        transform=dataset.test_transform,
        show_progress=show_progress,
    )


def write_score_files(
    test_path: Path,
    metadata: dict,
    dataset: Dataset,
    test: SplitScores,
    val: SplitScores | None = None,
) -> None:
    """The test score file and, for a held-out validation split, its validation score file
    beside it (workdir.val_scores_path), with the samples' names where the dataset has them
    (custom data); process 0 writes."""
    if jax.process_index() != 0:
        return
    save_scores(
        test_path,
        test.logits,
        dataset.test.labels,
        metadata | {"split": "test", "top1": test.top1},
        features=test.pooled_features,
        sample_names=dataset.sample_names("test"),
    )
    if val is not None:
        save_scores(
            val_scores_path(test_path),
            val.logits,
            dataset.val.labels,
            metadata | {"split": "val", "top1": val.top1},
            sample_ids=dataset.val_ids,
            sample_names=dataset.sample_names("val"),
        )
