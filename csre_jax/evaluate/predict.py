"""Logits and pooled features of a backbone over a whole split, on the device mesh."""

from collections.abc import Callable

import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from csre_jax.data.pipeline import Split, Transform, eval_batches
from csre_jax.training import parallel


def predict(
    eval_step: Callable,
    variables: dict,
    split: Split,
    *,
    batch_size: int,
    mesh: Mesh,
    transform: Transform | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(len(split), num_classes) logits and (len(split), C) features, float32, split order.

    eval_step is a jitted (variables, inputs) -> (logits, features), inputs being the
    batch's model inputs ('x' and any extra); the variables should already be on the mesh
    (replicated) so each batch moves only its inputs.
    """
    outputs = []
    batches = eval_batches(split, batch_size=batch_size, transform=transform)
    total = -(-len(split) // batch_size)
    for local in tqdm(batches, total=total, desc="eval", disable=not show_progress, leave=False):
        valid = local.pop("valid")
        inputs = {k: v for k, v in local.items() if k not in ("label", "index")}
        results = eval_step(variables, parallel.global_batch(inputs, mesh))
        gathered = multihost_utils.process_allgather(results, tiled=True)
        all_valid = np.asarray(multihost_utils.process_allgather(valid, tiled=True))
        outputs.append([np.asarray(a)[all_valid] for a in gathered])
    logits, features = (np.concatenate(parts)[: len(split)] for parts in zip(*outputs, strict=True))
    return logits, features
