"""Score files, ensembles and the optimizer: hand-computed expectations."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csre_jax.evaluate.scores import ensemble, load_scores, save_scores, topk_accuracy
from csre_jax.training.optimizer import epoch_schedule, sgd


def _write(path, logits, labels):
    save_scores(path, np.asarray(logits, np.float32), np.asarray(labels), {"stream": path.stem})
    return path


def test_topk_accuracy_by_hand():
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    labels = np.array([1, 1, 0, 2])
    assert topk_accuracy(logits, labels, 1) == 0.25  # only the first row
    assert topk_accuracy(logits, labels, 2) == 0.5  # rows 0 and 1 (0.3 is second)
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_score_files_round_trip(tmp_path):
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    path = _write(tmp_path / "joint.npz", logits, [0, 1, 2, 3, 0])
    run = load_scores(path)
    np.testing.assert_array_equal(run.logits, logits)
    np.testing.assert_array_equal(run.labels, [0, 1, 2, 3, 0])
    np.testing.assert_array_equal(run.sample_ids, np.arange(5))
    assert run.metadata == {"stream": "joint"}
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed away"


def test_ensemble_of_known_scores_gives_the_hand_computed_accuracy(tmp_path):
    labels = [0, 1, 1, 0]
    # joint alone: rows 0, 1 right (50%); bone alone: rows 2, 3 right (50%)
    joint = _write(tmp_path / "joint.npz", [[2, 0], [0, 2], [1, 0], [0, 1]], labels)
    bone = _write(tmp_path / "bone.npz", [[0, 1], [1, 0], [0, 3], [3, 0]], labels)
    # 1:1 -> rows [2,1] [1,2] [1,3] [3,1]: all right. 1:0.2 -> [2,.2] [.2,2] [1,.6] [.6,1.2]
    fused = ensemble([joint, bone], [1.0, 1.0])
    assert topk_accuracy(fused.logits, fused.labels) == 1.0
    fused = ensemble([joint, bone], [1.0, 0.2])
    np.testing.assert_allclose(fused.logits[2], [1.0, 0.6])
    assert topk_accuracy(fused.logits, fused.labels) == 0.5


def test_ensemble_refuses_scores_of_another_test_set(tmp_path):
    a = _write(tmp_path / "a.npz", np.zeros((4, 2)), [0, 1, 1, 0])
    shorter = _write(tmp_path / "b.npz", np.zeros((3, 2)), [0, 1, 1])
    relabelled = _write(tmp_path / "c.npz", np.zeros((4, 2)), [1, 1, 1, 0])
    with pytest.raises(ValueError, match="not the same test set"):
        ensemble([a, shorter], [1, 1])
    with pytest.raises(ValueError, match="labels or sample order differ"):
        ensemble([a, relabelled], [1, 1])
    with pytest.raises(ValueError, match="2 score files but 1 weights"):
        ensemble([a, a], [1])


def test_epoch_schedule_follows_the_recipe():
    """CTR-GCN recipe: base 0.1, warm-up 5 epochs, x0.1 at epochs 35 and 55 (recipes.md)."""
    schedule = epoch_schedule(
        0.1, steps_per_epoch=10, warmup_epochs=5, milestones=(35, 55), decay=0.1
    )
    lr_of_epoch = {e: float(schedule(e * 10 + 3)) for e in (0, 1, 4, 5, 34, 35, 54, 55, 64)}
    expected = {0: 0.02, 1: 0.04, 4: 0.1, 5: 0.1, 34: 0.1, 35: 0.01, 54: 0.01, 55: 0.001,
                64: 0.001}  # fmt: skip
    for epoch, lr in expected.items():
        assert lr_of_epoch[epoch] == pytest.approx(lr), epoch
    assert float(schedule(9)) == pytest.approx(0.02)  # constant within an epoch


def test_sgd_matches_pytorch_nesterov_with_weight_decay():
    """torch: g' = g + wd*w; buf = m*buf + g'; w -= lr * (g' + m*buf)."""
    lr, momentum, wd = 0.1, 0.9, 0.01
    tx = sgd(optax.constant_schedule(lr), momentum=momentum, nesterov=True, weight_decay=wd)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    w_ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, 0.1], [-0.2, 0.3], [0.0, 1.0]):
        g = np.array(g)
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
        g_decayed = g + wd * w_ref
        buf = momentum * buf + g_decayed
        w_ref = w_ref - lr * (g_decayed + momentum * buf)
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)
