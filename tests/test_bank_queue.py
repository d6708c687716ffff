"""The queue bank (config.csre.bank_size > 0): ring-buffer writes, the shared loss, training."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ctrgcn
from csre_jax import sharding
from csre_jax.csre.bank import MemoryBank, create_queue, enqueue
from csre_jax.csre.loss import ContrastConfig, bank_loss, normalize
from csre_jax.training import loop

REPO = Path(__file__).resolve().parents[1]


def _rows(seed, n, dim=8):
    return normalize(jnp.asarray(np.random.default_rng(seed).normal(size=(n, dim)), jnp.float32))


def test_writes_go_round_the_ring_with_their_labels():
    queue = create_queue(10, 8, batch_size=4, pad_to_multiple=4)
    assert queue.features.shape == (12, 8) and queue.num_slots == 10
    batches = [(_rows(i, 4), jnp.arange(4) + 10 * i) for i in range(3)]
    write = jax.jit(enqueue)
    queue = write(queue, batches[0][1], batches[0][0])
    np.testing.assert_array_equal(np.asarray(queue.filled), [1] * 4 + [0] * 8)
    np.testing.assert_array_equal(np.asarray(queue.pointer), [4] * 4)
    queue = write(queue, batches[1][1], batches[1][0])
    queue = write(queue, batches[2][1], batches[2][0])  # rows 8, 9, then wraps to 0, 1
    expected_rows = [(2, 2), (2, 3), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    features, labels = np.asarray(queue.features), np.asarray(queue.labels)
    for row, (batch, position) in enumerate(expected_rows):
        np.testing.assert_array_equal(features[row], np.asarray(batches[batch][0][position]))
        assert labels[row] == 10 * batch + position
    np.testing.assert_array_equal(np.asarray(queue.pointer), [2] * 4)
    # padding rows: never written, never filled, labelled -1
    assert np.asarray(queue.filled).tolist() == [True] * 10 + [False] * 2
    np.testing.assert_array_equal(labels[10:], -1)
    np.testing.assert_array_equal(features[10:], 0.0)
    # stored detached
    grad = jax.grad(lambda r: enqueue(queue, batches[0][1], r).features.sum())(batches[0][0])
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def _queue_mid_ring(seed=0, capacity=30, batch=6, writes=4, classes=3):
    """A queue whose pointer sits near the end, so the next batch wraps around."""
    rng = np.random.default_rng(seed)
    queue = create_queue(capacity, 8, batch_size=batch, pad_to_multiple=4)
    for i in range(writes):
        queue = enqueue(queue, jnp.asarray(rng.integers(0, classes, batch)), _rows(100 + i, batch))
    return queue


def test_loss_on_a_queue_equals_the_loss_on_the_same_per_sample_bank():
    """Same rows, labels and flags: the queue adds no loss code of its own."""
    queue = _queue_mid_ring()
    queue = enqueue(queue, jnp.array([0, 1, 2]), _rows(7, 3))  # 27 rows: the next batch wraps
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    features = jnp.asarray(np.random.default_rng(3).normal(size=(6, 8)), jnp.float32)
    slots = (27 + np.arange(6)) % 30
    np.testing.assert_array_equal(slots, [27, 28, 29, 0, 1, 2])
    bank = MemoryBank(
        features=queue.features,
        labels=queue.labels.at[slots].set(labels),  # a per-sample bank's labels are fixed
        filled=queue.filled,
    )
    config = ContrastConfig(
        num_positives=3, num_negatives=5, positive_sampling="hard+random", temperature=0.5
    )

    @jax.jit
    def loss(f, b, idx):
        return bank_loss(f, labels, idx, b, jax.random.key(4), config)

    unused = jnp.full((6,), -1, jnp.int32)  # the queue writes at its pointer, not at indices
    q_loss, q_after, q_metrics = loss(features, queue, unused)
    b_loss, b_after, b_metrics = loss(features, bank, jnp.asarray(slots, jnp.int32))
    assert int(q_metrics["valid_anchors"]) == 6 and float(q_loss) > 0
    assert float(q_loss) == float(b_loss)
    for name in ("features", "labels", "filled"):
        np.testing.assert_array_equal(getattr(q_after, name), getattr(b_after, name))
    grad = jax.jit(jax.grad(lambda f, b, idx: loss(f, b, idx)[0]))
    q_grad = grad(features, queue, unused)
    b_grad = grad(features, bank, jnp.asarray(slots, jnp.int32))
    np.testing.assert_array_equal(np.asarray(q_grad), np.asarray(b_grad))


def test_jitted_loss_and_gradient_on_a_queue_are_finite():
    queue = _queue_mid_ring(seed=1)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    features = jnp.asarray(np.random.default_rng(5).normal(size=(6, 8)), jnp.float32)
    config = ContrastConfig(num_positives=3, num_negatives=5)

    @jax.jit
    def step(f, q):
        return jax.value_and_grad(
            lambda f: bank_loss(f, labels, labels, q, jax.random.key(0), config)[:2], has_aux=True
        )(f)

    (value, after), grad = step(features, queue)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).sum() > 0
    assert int(after.pointer[0]) == (int(queue.pointer[0]) + 6) % 30
    np.testing.assert_array_equal(np.asarray(after.labels[24:30]), labels)


def test_a_queue_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match=r"csre.bank_size=4: .* one global batch of rows \(8\)"):
        create_queue(4, 8, batch_size=8)
    with pytest.raises(ValueError, match=r"csre.bank_size=-1"):
        create_queue(-1, 8, batch_size=8)


def test_a_bad_bank_size_fails_before_the_model_is_built():
    config = ctrgcn.get_config("tiny")
    config.csre.bank_size = -1
    with pytest.raises(ValueError, match="csre.bank_size=-1"):
        loop.init_state(loop.build(config))


def test_tiny_config_trains_with_a_queue():
    config = ctrgcn.get_config("tiny")
    config.num_devices = 1
    config.csre.bank_size = 64
    exp = loop.build(config)
    state = loop.init_state(exp)
    queue = state.banks["spatial"]
    assert queue.features.shape == (64, config.csre.dim) and not bool(queue.filled.any())
    train_step, _ = loop.compile_steps(exp, state)
    split, batch_size = exp.dataset.train, config.data.batch_size
    rows = np.arange(batch_size)
    batch = {"x": split.x[rows], "label": split.labels[rows], "index": rows.astype(np.int32)}
    losses = []
    for step in range(8):  # the same batch: its anchors need the second copy to be valid
        state, metrics = train_step(state, sharding.global_batch(batch, exp.mesh))
        metrics = jax.device_get(metrics)
        assert np.isfinite(metrics["loss"]), metrics
        assert (metrics["valid_spatial"] > 0) == (step >= 1), (step, metrics)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[1], losses
    queue = state.banks["temporal"]
    np.testing.assert_array_equal(np.asarray(queue.pointer), [0])  # 8 writes of 8 rows
    np.testing.assert_array_equal(np.asarray(queue.labels), np.tile(split.labels[:8], 8))
    np.testing.assert_allclose(np.linalg.norm(queue.features, axis=1), 1.0, rtol=1e-5)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from csre_jax.csre.bank import create_queue
from csre_jax.csre.loss import ContrastConfig, bank_loss
from jax.sharding import NamedSharding, PartitionSpec
from csre_jax import sharding

def run(mesh):
    queue = create_queue(18, 8, batch_size=8, pad_to_multiple=4)  # 20 rows, 2 of padding
    if mesh is not None:
        queue = jax.device_put(queue, NamedSharding(mesh, PartitionSpec("data")))
        assert all(s.data.shape[0] == 5 for s in queue.features.addressable_shards)
    config = ContrastConfig(num_positives=2, num_negatives=4)
    step = jax.jit(lambda f, y, q, k: bank_loss(f, y, y, q, k, config)[:2])
    rng, losses = np.random.default_rng(0), []
    for i in range(4):  # 32 rows through 18: wraps
        f = jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
        loss, queue = step(f, jnp.asarray(rng.integers(0, 2, 8)), queue, jax.random.key(i))
        losses.append(float(loss))
    return losses, jax.tree.map(np.asarray, queue)

(l1, q1), (l4, q4) = run(None), run(sharding.make_mesh(4))
np.testing.assert_allclose(l1, l4, rtol=1e-6)
assert l1[-1] > 0
for a, b in zip(jax.tree.leaves(q1), jax.tree.leaves(q4)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
print("ok", q4.pointer)
"""


def test_row_sharded_queue_matches_one_device():
    """Four emulated devices, five rows each (the last two are padding): same writes, same loss."""
    devices = "--xla_force_host_platform_device_count=4"
    env = os.environ | {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} {devices}"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok [14 14 14 14]" in result.stdout  # 32 % 18


def test_queue_checkpoint_round_trip_keeps_rows_pointer_and_capacity(tmp_path):
    queue = _queue_mid_ring()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "queue", {"banks": {"spatial": queue}})
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), queue)
        restored = checkpointer.restore(tmp_path / "queue", {"banks": {"spatial": target}})
    restored = restored["banks"]["spatial"]
    assert type(restored) is type(queue) and restored.capacity == 30
    for a, b in zip(jax.tree.leaves(queue), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
