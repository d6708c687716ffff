"""model.kwargs.remat: every backbone recomputes its blocks in the backward pass, with the
same variables, the same loss and the same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import csre_jax.models as models
from tests.test_layout_backbones import TINY

# jax.checkpoint's primitive: "remat2" in jax 0.10, "checkpoint" in some releases.
CHECKPOINT_PRIMITIVES = ("remat2", "checkpoint")
# Blocks each backbone wraps: ten GCN / transformer blocks (InfoGCN has nine), HCN's eight
# convolution stages (three per stream, conv5, conv6).
BLOCKS = {"ctrgcn": 10, "agcn": 10, "hyperformer": 10, "blockgcn": 10, "infogcn": 9, "hcn": 8}


def _train_loss(model, inputs):
    """loss(params, batch_stats) of a training forward."""

    def loss(params, batch_stats):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            **inputs,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(1)},
        )
        labels = jnp.arange(logits.shape[0]) % logits.shape[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def _model_and_inputs(name: str, remat: bool):
    model = models.create_model(name, num_classes=5, dataset="ntu", remat=remat, **TINY[name])
    shapes = models.example_inputs(model, batch=4, num_frames=16)
    rng = np.random.default_rng(0)
    inputs = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in shapes.items()}
    return model, inputs


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_remat_wraps_every_block_and_keeps_the_variables(name):
    """Traced only (no compile): one checkpoint per block, and the variable tree unchanged, so
    checkpoints and official weights load with remat on or off."""
    trees, counts = {}, {}
    for remat in (False, True):
        model, inputs = _model_and_inputs(name, remat)
        variables = jax.eval_shape(model.init, jax.random.key(0), **inputs)
        trees[remat] = jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), variables)
        jaxpr = jax.make_jaxpr(_train_loss(model, inputs))(
            variables["params"], variables.get("batch_stats", {})
        )
        counts[remat] = sum(eqn.primitive.name in CHECKPOINT_PRIMITIVES for eqn in jaxpr.jaxpr.eqns)
    assert trees[True] == trees[False]
    assert counts == {False: 0, True: BLOCKS[name]}


def test_remat_gives_the_same_loss_and_gradients():
    """HCN (the fastest to compile): dropout draws, batch statistics and gradients are those
    of the plain model; only rounding may differ, since XLA fuses the recomputation anew."""
    results = {}
    for remat in (False, True):
        model, inputs = _model_and_inputs("hcn", remat)
        variables = jax.jit(model.init)(jax.random.key(0), **inputs)
        loss = jax.value_and_grad(_train_loss(model, inputs))
        results[remat] = jax.jit(loss)(variables["params"], variables.get("batch_stats", {}))
    (loss, grads), (remat_loss, remat_grads) = results[False], results[True]
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
    jax.tree.map(
        lambda plain, recomputed: np.testing.assert_allclose(
            recomputed, plain, rtol=1e-5, atol=1e-6 * scale
        ),
        grads,
        remat_grads,
    )
