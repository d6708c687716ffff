"""Memory banks: one L2-normalised feature slot per training sample, with a fixed label.

A bank is a plain pytree of device arrays, so it lives in the train state, is sharded by
rows like any other array and is checkpointed with everything else.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class MemoryBank:
    """Per-sample feature table of the CSRE loss (csre.md §3).

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
