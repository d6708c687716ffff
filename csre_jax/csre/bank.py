"""Memory banks of L2-normalised features: one slot per training sample with a fixed label
(the official bank), or a queue of the most recent features with their labels (MoCo-style,
for corpora too large for one slot per sample).

A bank is a plain pytree of device arrays, so it lives in the train state, is sharded by
rows like any other array and is checkpointed with everything else.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from csre_jax.errors import UserError


@struct.dataclass
class MemoryBank:
    """Per-sample feature table of the CSRE loss: slot k holds training sample k's latest feature.

    features: (slots, dim) float32, zero rows until written.
    labels: (slots,) int32, the class of each slot's training sample; -1 marks padding slots
        that exist only to make the row count divisible by the device count.
    filled: (slots,) bool, whether the slot has been written at least once.
    """

    features: jax.Array
    labels: jax.Array
    filled: jax.Array

    @property
    def num_slots(self) -> int:
        return self.labels.shape[0]


def create_bank(slot_labels: np.ndarray, dim: int, *, pad_to_multiple: int = 1) -> MemoryBank:
    """An empty bank whose slot k belongs to training sample k with label slot_labels[k]."""
    slot_labels = np.asarray(slot_labels, dtype=np.int32)
    if slot_labels.ndim != 1 or slot_labels.size == 0:
        raise ValueError(f"slot_labels must be a non-empty vector, got shape {slot_labels.shape}")
    padded = -(-slot_labels.size // pad_to_multiple) * pad_to_multiple
    labels = np.full((padded,), -1, dtype=np.int32)
    labels[: slot_labels.size] = slot_labels
    return MemoryBank(
        features=jnp.zeros((padded, dim), jnp.float32),
        labels=jnp.asarray(labels),
        filled=jnp.zeros((padded,), bool),
    )


def write(bank: MemoryBank, indices: jax.Array, normalized_features: jax.Array) -> MemoryBank:
    """Overwrites the slots of this batch (no momentum) and marks them filled.

    The features are stored detached: gradients only ever flow through the query side.
    """
    stored = jax.lax.stop_gradient(normalized_features).astype(bank.features.dtype)
    return bank.replace(
        features=bank.features.at[indices].set(stored),
        filled=bank.filled.at[indices].set(True),
    )


@struct.dataclass
class MemoryQueue(MemoryBank):
    """A ring buffer of the last `capacity` written features, with their labels.

    Each write overwrites the oldest rows at the pointer, so the masks the loss builds from
    labels and filled flags are the same as for a per-sample bank. Padding rows
    past `capacity` stay labelled -1, unfilled and unwritten.

    The anchor's own entry: bank_loss writes the batch before comparing, for a queue as for
    the per-sample bank, so the queue then holds this batch and the capacity - N most recent
    older entries. Each anchor sees its own detached feature as a positive of similarity ~1
    (which the least-similar hard positives practically never pick) and its batch-mates in
    the pools of their classes.

    pointer: (shards,) int32, the next row to write, one identical copy per row shard: every
        leaf of a bank is split by rows over the mesh (training.state.state_sharding), this
        one too.
    capacity: the number of real rows (csre.bank_size); the ring wraps modulo it.
    """

    pointer: jax.Array
    capacity: int = struct.field(pytree_node=False)

    @property
    def num_slots(self) -> int:
        return self.capacity


def create_queue(
    capacity: int, dim: int, *, batch_size: int, pad_to_multiple: int = 1
) -> MemoryQueue:
    """An empty queue of `capacity` rows; it must hold a whole global batch, or one write
    would land twice on the same row."""
    if capacity < batch_size:
        raise UserError(
            f"csre.bank_size={capacity}: a queue needs at least one global batch of rows "
            f"({batch_size}); 0 keeps the official bank of one slot per training sample"
        )
    padded = -(-capacity // pad_to_multiple) * pad_to_multiple
    return MemoryQueue(
        features=jnp.zeros((padded, dim), jnp.float32),
        labels=jnp.full((padded,), -1, jnp.int32),
        filled=jnp.zeros((padded,), bool),
        pointer=jnp.zeros((pad_to_multiple,), jnp.int32),
        capacity=capacity,
    )


def enqueue(queue: MemoryQueue, labels: jax.Array, normalized_features: jax.Array) -> MemoryQueue:
    """Writes the batch over the oldest rows (wrapping past the end) with its labels.

    Like `write`, the rows are stored detached and marked filled.
    """
    rows = (queue.pointer[0] + jnp.arange(labels.shape[0])) % queue.capacity
    stored = jax.lax.stop_gradient(normalized_features).astype(queue.features.dtype)
    return queue.replace(
        features=queue.features.at[rows].set(stored),
        labels=queue.labels.at[rows].set(labels.astype(queue.labels.dtype)),
        filled=queue.filled.at[rows].set(True),
        pointer=(queue.pointer + labels.shape[0]) % queue.capacity,
    )


def store(
    bank: MemoryBank, indices: jax.Array, labels: jax.Array, normalized_features: jax.Array
) -> MemoryBank:
    """The batch into either kind of bank: a per-sample bank at the dataset indices (its
    labels are fixed), a queue at its pointer with the batch's labels."""
    if isinstance(bank, MemoryQueue):
        return enqueue(bank, labels, normalized_features)
    return write(bank, indices, normalized_features)
