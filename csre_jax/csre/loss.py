"""InfoNCE against a memory bank with hybrid hard/random sampling (the official ContrastLoss).

The official code loops over anchors and fully sorts the bank for each; this is the exact
vectorised equivalent: one (batch, slots) similarity matrix, masks, and top-k selections.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax.csre.bank import MemoryBank, store
from csre_jax.errors import UserError
from csre_jax.models import accumulation_dtype

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
                raise UserError(f"{field}={value!r}: choose one of {SAMPLING_MODES}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be positive, got {self.temperature}")


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
    features = features.astype(accumulation_dtype(features.dtype))
    # XLA:CPU rewrites x / sqrt(s) as x * rsqrt(s), and a division by an implicitly
    # broadcast column as a multiplication by its reciprocal; both are 1 ulp off torch.
    norm = jnp.broadcast_to(_l2_norm(features), features.shape)
    return features / jax.lax.optimization_barrier(norm)


def _slot_shards(scores: jax.Array) -> int:
    """Devices the slot axis (axis 1) is split over: the whole mesh the bank lives on, since
    its rows are sharded over every device (training/state.py: state_sharding); 1 off a mesh."""
    mesh = jax.typeof(scores).sharding.mesh
    return 1 if mesh.empty or scores.shape[1] % mesh.size else mesh.size


def _keep_slots_sharded(scores: jax.Array) -> jax.Array:
    """Pins axis 1 to the bank's row sharding: XLA otherwise gathers whole (batch, slots)
    similarities, or the whole bank in the backward pass, onto every device."""
    if _slot_shards(scores) == 1:
        return scores
    mesh = jax.typeof(scores).sharding.mesh
    spec = P(None, mesh.axis_names, *[None] * (scores.ndim - 2))
    return jax.lax.with_sharding_constraint(scores, NamedSharding(mesh, spec))


def _select(scores: jax.Array, mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Slot indices of the k largest scores among the masked slots, per row, and whether
    the row has k masked slots at all (the k-th value is then finite): the pool-size check
    comes free with the selection, with no count over (rows, slots).

    On a mesh each device takes the top k of its own slots and the best k of those
    candidates win: exact, ties still go to the lower slot, and no device holds whole rows.
    """
    scores = jnp.where(mask, scores, -jnp.inf)
    shards = _slot_shards(scores)
    if shards == 1:
        slots = jax.lax.top_k(scores, k)[1]
        # Read back by index, all k: slicing top_k's outputs (e.g. taking the k-th value)
        # breaks the pattern XLA:CPU maps to its fast top-k and every row gets fully sorted.
        chosen = jnp.take_along_axis(scores, slots, axis=1)
    else:
        rows, num_slots = scores.shape
        width = num_slots // shards
        values, local = jax.lax.top_k(
            _keep_slots_sharded(scores.reshape(rows, shards, width)), min(k, width)
        )
        candidates = (local + width * jnp.arange(shards)[:, None]).reshape(rows, -1)
        chosen, best = jax.lax.top_k(values.reshape(rows, -1), k)
        slots = jnp.take_along_axis(candidates, best, axis=1)
    return slots, jnp.all(chosen > -jnp.inf, axis=1)


# Odd multipliers (bijective modulo any power of two) of the keyed permutation's rounds.
_MULTIPLIERS = (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35)
# Candidates a random selection reads per anchor (at least 4k) before it reads the whole range.
_WINDOW = 4096


def _permuted(positions: jax.Array, keys: jax.Array, bits: int) -> jax.Array:
    """A keyed bijection of [0, 2**bits), one per row of keys: rounds of xor with a key,
    multiplication by an odd constant and a xor-shift (each invertible modulo 2**bits), then a
    last key, so every position's image is uniform over the range and rows are independent."""
    mask = jnp.uint32((1 << bits) - 1)
    shift = (bits + 1) // 2
    x = positions
    for i, multiplier in enumerate(_MULTIPLIERS):
        x = ((x ^ keys[:, i : i + 1]) * jnp.uint32(multiplier)) & mask
        x = x ^ (x >> shift)
    return x ^ (keys[:, -1:] & mask)


def _random_select(
    pool: jax.Array, rng: jax.Array, k: int, window: int = _WINDOW
) -> tuple[jax.Array, jax.Array]:
    """k slots per row drawn uniformly without replacement from the row's pool (a (rows,
    slots) mask), and whether the pool holds k.

    Each row walks its slots in a random order (a keyed permutation of [0, 2**bits) that
    covers them) and keeps the first k in its pool: a uniform k-subset, as a top-k of random
    keys over the whole bank would draw, but reading only the first `window` candidates, which
    hold k pool members whenever the pool is more than a few percent of the bank. Where some
    row's window holds fewer (a bank still filling, a small pool), every row reads the whole
    permuted range instead, with the same sets. Padding slots past the real ones are never
    in a pool and, for device counts that are powers of two, never change the range, so
    banks padded for any such count draw the same sets.
    """
    rows, num_slots = pool.shape
    bits = max(1, (num_slots - 1).bit_length())
    keys = jax.random.bits(rng, (rows, len(_MULTIPLIERS) + 1), jnp.uint32)

    def first_in_pool(width: int) -> tuple[jax.Array, jax.Array]:
        order = jnp.broadcast_to(jnp.arange(width, dtype=jnp.uint32), (rows, width))
        candidates = _permuted(order, keys, bits)
        real = candidates < num_slots
        slots = jnp.where(real, candidates, 0).astype(jnp.int32)
        member = real & jnp.take_along_axis(pool, slots, axis=1)
        # Earlier candidates rank higher; float32 ranks take XLA:CPU's fast top-k, and the
        # input is already in order, its cheapest case.
        rank = jnp.where(member, jnp.arange(width, 0, -1, dtype=jnp.float32), 0.0)
        picked = jax.lax.top_k(rank, k)[1]
        return jnp.take_along_axis(slots, picked, axis=1), member.sum(axis=1) >= k

    full = 1 << bits
    window = min(full, max(window, 4 * k))
    slots, found = first_in_pool(window)
    if window < full:  # over the whole range, `found` is whether the pool holds k
        slots, found = jax.lax.cond(
            jnp.all(found), lambda: (slots, found), lambda: first_in_pool(full)
        )
    return slots, found


def select_slots(
    ranking: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    rng: jax.Array,
    config: ContrastConfig,
    random_negative_slots: jax.Array | None = None,
) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
    """The positive and negative slot sets of every anchor, per the sampling modes.

    Hard positives are the least similar positives, hard negatives the most similar
    negatives; random sets are uniform draws without replacement from the same pools.
    Returns (positive sets of (N, num_positives), negative sets of (N, num_negatives),
    (N,) whether the anchor's pools hold that many slots: the official skip rule).
    """
    num_pos, num_neg = config.num_positives, config.num_negatives
    pos_rng, neg_rng = jax.random.split(rng)
    selections = {"positive": [], "negative": []}
    if "hard" in config.positive_sampling:
        selections["positive"].append(_select(-ranking, positives, num_pos))
    if "random" in config.positive_sampling:
        selections["positive"].append(_random_select(positives, pos_rng, num_pos))
    if "hard" in config.negative_sampling:
        selections["negative"].append(_select(ranking, negatives, num_neg))
    if "random" in config.negative_sampling:
        slots, enough = _random_select(negatives, neg_rng, num_neg)
        if random_negative_slots is not None:
            slots = jnp.maximum(random_negative_slots, 0)
        selections["negative"].append((slots, enough))
    enough = jnp.all(jnp.stack([e for sets in selections.values() for _, e in sets]), axis=0)
    positive_sets, negative_sets = ([s for s, _ in selections[k]] for k in selections)
    return positive_sets, negative_sets, enough


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
      features: (N, D) embeddings of the batch (any dtype; the loss runs in float32, or in
        float64 for float64 ones).
      labels: (N,) integer classes. indices: (N,) bank slots (dataset indices); a
        MemoryQueue ignores them and writes at its pointer.
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
        raise UserError(
            f"the bank has {bank.num_slots} slots but the loss asks "
            f"for {config.num_positives} positives and {config.num_negatives} negatives per "
            f"anchor: lower csre.num_positives / csre.num_negatives below the training-set size "
            "(or csre.bank_size)"
        )
    queries = normalize(features)
    bank = store(bank, indices, labels, queries)  # first: self and batch-mates join the pools
    similarity = jnp.dot(queries, bank.features.T, precision=jax.lax.Precision.HIGHEST)
    similarity = _keep_slots_sharded(similarity)  # each device scores its own bank rows

    same_class = labels[:, None] == bank.labels[None, :]
    positives = same_class & bank.filled[None, :]
    negatives = ~same_class & bank.filled[None, :]
    positive_sets, negative_sets, valid = select_slots(
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
