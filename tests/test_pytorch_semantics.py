"""PyTorch training semantics the train step reproduces: BatchNorm's running statistics and
optimizers that leave a parameter without a gradient untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csre_jax.csre.model import parameters_in_loss
from csre_jax.models.layers import BatchNorm
from csre_jax.training.optimizer import sgd, skip_absent_gradients


def test_batch_norm_training_follows_pytorch_by_hand():
    """Normalise with the biased batch variance; keep the unbiased one, n / (n - 1), in the
    running variance with PyTorch's momentum 0.1 (torch.nn.BatchNorm2d)."""
    rng = np.random.default_rng(0)
    x = (3.0 + rng.normal(size=(4, 5, 6, 3)) * [0.1, 1.0, 2.0]).astype(np.float32)
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), x)
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, -1.0, 3.0])}
    old = {"mean": jnp.array([0.5, 0.0, -1.0]), "var": jnp.array([2.0, 1.0, 0.5])}
    y, updates = bn.apply({"params": params, "batch_stats": old}, x, mutable=["batch_stats"])

    flat = x.reshape(-1, 3).astype(np.float64)
    n = flat.shape[0]
    mean, biased = flat.mean(0), flat.var(0)
    expected = (x - mean) / np.sqrt(biased + 1e-5) * np.asarray(params["scale"])
    np.testing.assert_allclose(y, expected + np.asarray(params["bias"]), rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.9 * old["mean"] + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(
        stats["var"], 0.9 * old["var"] + 0.1 * biased * n / (n - 1), rtol=1e-6
    )
    # eval mode normalises with the running statistics; init keeps PyTorch's 0 and 1
    assert variables["batch_stats"]["mean"].tolist() == [0, 0, 0]
    assert variables["batch_stats"]["var"].tolist() == [1, 1, 1]
    out = BatchNorm(use_running_average=True).apply({"params": params, "batch_stats": old}, x)
    manual = (x - old["mean"]) / jnp.sqrt(old["var"] + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(out, manual, rtol=1e-6, atol=1e-6)


def test_batch_norm_refuses_one_value_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(use_running_average=False).init(jax.random.key(0), jnp.ones((1, 3)))


def test_an_absent_parameter_keeps_its_value_and_momentum():
    """torch.optim.SGD skips a parameter whose .grad is None: no weight decay, no momentum
    step, its buffer kept; the others step as usual."""
    tx = skip_absent_gradients(
        sgd(optax.constant_schedule(0.1), momentum=0.9, nesterov=True, weight_decay=0.01)
    )
    params = {"backbone": jnp.array([1.0, -2.0]), "head": jnp.array([0.5])}
    state = tx.init(params)
    grads = {"backbone": jnp.array([0.5, 0.1]), "head": jnp.array([0.2])}
    updates, state = tx.update(grads, state, params, present={"backbone": True, "head": True})
    params = optax.apply_updates(params, updates)
    head, head_trace = params["head"], optax.tree_utils.tree_get(state, "trace")["head"]

    absent = {"backbone": True, "head": False}
    zero_grads = {"backbone": jnp.array([0.0, 1.0]), "head": jnp.zeros(1)}
    updates, new_state = tx.update(zero_grads, state, params, present=absent)
    assert float(updates["head"][0]) == 0.0
    assert optax.tree_utils.tree_get(new_state, "trace")["head"] == head_trace
    # the backbone steps exactly as without the wrapper
    inner = sgd(optax.constant_schedule(0.1), momentum=0.9, nesterov=True, weight_decay=0.01)
    expected, _ = inner.update(zero_grads, state, params)
    np.testing.assert_array_equal(updates["backbone"], expected["backbone"])
    assert optax.apply_updates(params, updates)["head"] == head


def test_a_bank_without_valid_anchors_leaves_its_head_out_of_the_loss():
    params = {
        "backbone": {"fc": {"kernel": 1.0}},
        "stfd": {"spatial": {"project": {"kernel": 1.0}}, "temporal": {"reduce": {"bias": 1.0}}},
        "global_head": {"project": {"bias": 1.0}},
    }
    present = parameters_in_loss(params, {"spatial": True, "temporal": False, "global": False})
    assert present == {
        "backbone": {"fc": {"kernel": True}},
        "stfd": {"spatial": {"project": {"kernel": True}}, "temporal": {"reduce": {"bias": False}}},
        "global_head": {"project": {"bias": False}},
    }
