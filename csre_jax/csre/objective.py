"""The CSRE training objective and its banks, built from config.csre.

loss = CE + weight x mean over banks of each bank's InfoNCE (the official weight is 1: the
mean of the spatial and temporal losses). A bank with no valid anchor contributes exactly 0,
so early in training, while the banks fill, the loss is the cross-entropy alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from csre_jax.csre.bank import MemoryBank, create_bank, create_queue
from csre_jax.csre.loss import ContrastConfig, bank_loss
from csre_jax.models import accumulation_dtype


def bank_names(csre: ConfigDict) -> tuple[str, ...]:
    """config.csre.banks is 'none' or names joined by '+', e.g. 'spatial+temporal'."""
    return () if csre.banks in ("", "none") else tuple(csre.banks.split("+"))


def contrast_config(csre: ConfigDict) -> ContrastConfig:
    return ContrastConfig(
        num_positives=csre.num_positives,
        num_negatives=csre.num_negatives,
        temperature=csre.temperature,
        positive_sampling=csre.positive_sampling,
        negative_sampling=csre.negative_sampling,
    )


def create_banks(
    csre: ConfigDict, slot_labels: np.ndarray, *, batch_size: int, pad_to_multiple: int
) -> dict[str, MemoryBank]:
    """Empty banks for config.csre.banks: one slot per training sample (slot i has the
    label of sample i), or queues of csre.bank_size rows; rows padded to the device count."""
    if csre.bank_size:
        return {
            name: create_queue(
                csre.bank_size, csre.dim, batch_size=batch_size, pad_to_multiple=pad_to_multiple
            )
            for name in bank_names(csre)
        }
    return {
        name: create_bank(slot_labels, csre.dim, pad_to_multiple=pad_to_multiple)
        for name in bank_names(csre)
    }


def objective(
    logits: jax.Array,
    embeddings: dict[str, jax.Array],
    batch: dict[str, jax.Array],
    banks: dict[str, MemoryBank],
    rng: jax.Array,
    *,
    contrast: ContrastConfig,
    weight: float,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, MemoryBank], dict[str, jax.Array]]:
    """(loss, updated banks, metrics) of one batch.

    label_smoothing spreads that much target mass uniformly over the classes (InfoGCN's
    0.1). A batch may carry random_negatives_<bank> (batch, num_negatives) slots, which that
    bank's loss then uses instead of drawing its own: how csre_jax.replay feeds the official
    draws; a training batch has none, and its step compiles without them.
    """
    labels, indices = batch["label"], batch["index"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    ce = optax.softmax_cross_entropy(logits.astype(accumulation_dtype(logits.dtype)), targets)
    ce = ce.mean()
    metrics, new_banks, bank_losses = {"ce": ce}, {}, []
    for i, (name, embedding) in enumerate(sorted(embeddings.items())):
        loss, new_banks[name], bank_metrics = bank_loss(
            embedding.astype(accumulation_dtype(embedding.dtype)),
            labels,
            indices,
            banks[name],
            jax.random.fold_in(rng, i),
            contrast,
            batch.get(f"random_negatives_{name}"),
        )
        bank_losses.append(loss)
        metrics[f"loss_{name}"] = loss
        metrics[f"valid_{name}"] = bank_metrics["valid_anchors"]
    total = ce
    if bank_losses:
        total = total + weight * jnp.mean(jnp.stack(bank_losses))
    metrics["loss"] = total
    metrics["top1"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    return total, new_banks, metrics
