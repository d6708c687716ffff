"""InfoNCE against a memory bank with hybrid hard/random sampling (csre.md §4, §8.1).

The official code loops over anchors and fully sorts the bank for each; this is the exact
vectorised equivalent: one (batch, slots) similarity matrix, masks, and top-k selections.
"""

import dataclasses

import jax
import jax.numpy as jnp

from csre_jax.csre.bank import MemoryBank, write

SAMPLING_MODES = ("hard", "random", "hard+random")


@dataclasses.dataclass(frozen=True)
class ContrastConfig:
    """Hyper-parameters of one bank's loss; the defaults are the official ones."""

    num_positives: int = 128
    num_negatives: int = 512
    temperature: float = 0.8
    positive_sampling: str = "hard"
    negative_sampling: str = "hard+random"

    def __post_init__(self):
        for field in ("positive_sampling", "negative_sampling"):
            value = getattr(self, field)
            if value not in SAMPLING_MODES:
                raise ValueError(f"{field}={value!r}: choose one of {SAMPLING_MODES}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


_LANES = 8  # width of the float32 vector register PyTorch's CPU reduction accumulates in


def _l2_norm(features: jax.Array) -> jax.Array:
    """Row norms summed in PyTorch's CPU order: one 8-lane accumulator, then lane by lane.

    Any order is equally accurate; this one makes the stored bank rows bit-identical to the
    official code's, so parity tests can demand exact equality. Costs N * D adds.
    """
    squares = jnp.square(features)
    dim = features.shape[-1]
    body = dim - dim % _LANES
    total = jnp.zeros(features.shape[:-1], features.dtype)
    if body:
        lanes = squares[..., :_LANES]
        for start in range(_LANES, body, _LANES):
            lanes = lanes + squares[..., start : start + _LANES]
        for lane in range(_LANES):
            total = total + lanes[..., lane]
    for column in range(body, dim):
        total = total + squares[..., column]
    return jnp.sqrt(total)[..., None]


def normalize(features: jax.Array) -> jax.Array:
    """Row-wise L2 normalisation without epsilon, as the official loss does it."""
    features = features.astype(jnp.float32)
    # XLA:CPU rewrites x / sqrt(s) as x * rsqrt(s), and a division by an implicitly
    # broadcast column as a multiplication by its reciprocal; both are 1 ulp off torch.
    norm = jnp.broadcast_to(_l2_norm(features), features.shape)
    return features / jax.lax.optimization_barrier(norm)


def _select(scores: jax.Array, mask: jax.Array, k: int) -> jax.Array:
    """Slot indices of the k largest scores among the masked slots, per row."""
    return jax.lax.top_k(jnp.where(mask, scores, -jnp.inf), k)[1]


def _random_keys(rng: jax.Array, shape) -> jax.Array:
    # Top-k of i.i.d. uniform keys is a uniform draw without replacement.
    return jax.random.uniform(rng, shape)


def select_slots(
    ranking: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    rng: jax.Array,
    config: ContrastConfig,
    random_negative_slots: jax.Array | None = None,
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The positive and negative slot sets of every anchor, per the sampling modes.

    Hard positives are the least similar positives, hard negatives the most similar
    negatives; random sets are uniform draws without replacement from the same pools.
    Returns (positive sets of (N, num_positives), negative sets of (N, num_negatives)).
    """
    num_pos, num_neg = config.num_positives, config.num_negatives
    pos_rng, neg_rng = jax.random.split(rng)
    positive_sets, negative_sets = [], []
    if "hard" in config.positive_sampling:
        positive_sets.append(_select(-ranking, positives, num_pos))
    if "random" in config.positive_sampling:
        positive_sets.append(_select(_random_keys(pos_rng, ranking.shape), positives, num_pos))
    if "hard" in config.negative_sampling:
        negative_sets.append(_select(ranking, negatives, num_neg))
    if "random" in config.negative_sampling:
        if random_negative_slots is None:
            keys = _random_keys(neg_rng, ranking.shape)
            negative_sets.append(_select(keys, negatives, num_neg))
        else:
            negative_sets.append(jnp.maximum(random_negative_slots, 0))
    return positive_sets, negative_sets


def info_nce(
    similarity: jax.Array,
    positive_sets: list[jax.Array],
    negative_sets: list[jax.Array],
    temperature: float,
) -> jax.Array:
    """Per-anchor mean over rows [positive, negatives of one set] of CE with target 0.

    There is one row per (positive set, positive, negative set); the official hybrid keeps
    hard and random negatives in separate rows rather than one wider softmax. Rows of one
    negative set share its log-sum-exp, so each row costs O(1) after it.
    """
    inv_t = 1.0 / temperature
    row_losses = []
    for pos_slots in positive_sets:
        pos_logits = jnp.take_along_axis(similarity, pos_slots, axis=1) * inv_t
        for neg_slots in negative_sets:
            neg_logits = jnp.take_along_axis(similarity, neg_slots, axis=1) * inv_t
            neg_lse = jax.nn.logsumexp(neg_logits, axis=1, keepdims=True)
            row_losses.append(jnp.logaddexp(pos_logits, neg_lse) - pos_logits)
    return jnp.concatenate(row_losses, axis=1).mean(axis=1)


def bank_loss(
    features: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    bank: MemoryBank,
    rng: jax.Array,
    config: ContrastConfig = ContrastConfig(),
    random_negative_slots: jax.Array | None = None,
) -> tuple[jax.Array, MemoryBank, dict[str, jax.Array]]:
    """Writes the batch into the bank, then contrasts every anchor against the updated bank.

    Args:
      features: (N, D) embeddings of the batch (any dtype; the loss runs in float32).
      labels: (N,) integer classes. indices: (N,) bank slots (dataset indices).
      rng: key for the random selections.
      random_negative_slots: optional (N, num_negatives) slots to use as the random negatives
        instead of drawing them (to replay a recorded official call); ignored for skipped
        anchors, where they may be -1.

    Returns:
      (loss, updated bank, metrics). The loss is the mean over rows of all valid anchors
      and exactly 0 when no anchor is valid (then it has no gradient).
    """
    largest = max(config.num_positives, config.num_negatives)
    if bank.num_slots < largest:
        raise ValueError(
            f"the bank has {bank.num_slots} slots (one per training sample) but the loss asks "
            f"for {config.num_positives} positives and {config.num_negatives} negatives per "
            f"anchor: lower csre.num_positives / csre.num_negatives below the training-set size"
        )
    queries = normalize(features)
    bank = write(bank, indices, queries)  # write first: self and batch-mates are in the pools
    similarity = jnp.dot(queries, bank.features.T, precision=jax.lax.Precision.HIGHEST)

    same_class = labels[:, None] == bank.labels[None, :]
    positives = same_class & bank.filled[None, :]
    negatives = ~same_class & bank.filled[None, :]
    valid = (positives.sum(axis=1) >= config.num_positives) & (
        negatives.sum(axis=1) >= config.num_negatives
    )
    positive_sets, negative_sets = select_slots(
        jax.lax.stop_gradient(similarity),
        positives,
        negatives,
        rng,
        config,
        random_negative_slots,
    )
    per_anchor = info_nce(similarity, positive_sets, negative_sets, config.temperature)

    num_valid = valid.sum()
    loss = jnp.where(valid, per_anchor, 0.0).sum() / jnp.maximum(num_valid, 1)
    metrics = {"valid_anchors": num_valid, "filled_slots": bank.filled.sum()}
    return loss, bank, metrics
