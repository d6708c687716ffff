"""HCN: window handling, person symmetry, motion, pooling, dropout, init, the CSRE heads
(exactness against the official model and the official listings, window 32 included:
test_backbone_parity.py)."""

from functools import partial

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.csre.model import ContrastiveClassifier
from csre_jax.models import hcn


def _key(seed: int) -> jax.Array:
    """XLA:CPU compiles threefry draws slowly (most of an init's cost); RBG keys feed the same
    initialisers and dropout masks and compile several times faster."""
    return jax.random.key(seed, impl="rbg")


def _normal(shape) -> np.ndarray:
    return np.random.default_rng(1).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def run(official_run):
    return official_run("hcn")


def _tiny(dataset="ntu"):
    """A narrow HCN (conv widths 4..32, fc7 16) for fast tests."""
    return models.create_model("hcn", num_classes=10, dataset=dataset, out_channels=8, hidden=16)


def test_person_order_does_not_matter(run):
    """Persons share weights and meet only in the element-wise max."""
    (logits, _), _ = run.apply(run.variables, run.io["x"][..., ::-1])
    np.testing.assert_allclose(logits, run.logits, rtol=1e-5, atol=1e-5)


def test_input_length_must_be_the_checkpoint_window(run):
    x = jax.ShapeDtypeStruct((1, 3, 32, 25, 2), jnp.float32)
    with pytest.raises(flax.errors.ScopeParamShapeError, match="conv2"):
        jax.eval_shape(run.model.apply, run.variables, x)


def test_motion_resize_matrix_by_hand():
    """T = 4 from 3 differences: src = max(0, (t + 0.5) * 3/4 - 0.5) = 0, .625, 1.375, 2.125."""
    want = [[1, 0, 0], [0.375, 0.625, 0], [0, 0.625, 0.375], [0, 0, 1]]
    np.testing.assert_allclose(hcn.motion_resize_matrix(4), want, atol=1e-7)


@pytest.mark.parametrize("frames", [16, 52, 64])
def test_motion_resize_matrix_is_half_pixel_linear_upsampling(frames):
    """jax.image.resize (float32) renormalises at the borders where torch clamps; the two agree
    when upsampling."""
    want = jax.image.resize(jnp.eye(frames - 1), (frames, frames - 1), "linear")
    np.testing.assert_allclose(hcn.motion_resize_matrix(frames), want, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (2, 13, 7, 3)])
def test_max_pool_matches_reduce_window(shape):
    x = _normal(shape)

    def official(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    def value_and_grad(pool):
        return jax.jit(jax.value_and_grad(lambda x: (pool(x) ** 2).sum()))(x)

    np.testing.assert_array_equal(hcn.max_pool_2x2(x), official(x))
    np.testing.assert_array_equal(value_and_grad(hcn.max_pool_2x2)[1], value_and_grad(official)[1])


def test_train_mode_drops_whole_channels(run):
    model, variables, x = run.model, run.variables, run.io["x"]
    train = jax.jit(
        lambda v, x, key: model.apply(
            v,
            x,
            train=True,
            rngs={"dropout": key},
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    )
    logits, state = train(variables, x, _key(0))
    assert logits.shape == (2, 60) and bool(jnp.isfinite(logits).all())
    assert not np.allclose(logits, run.logits, atol=1e-3)
    np.testing.assert_array_equal(logits, train(variables, x, _key(0))[0])
    # conv1..conv3 are deterministic, so conv4 sees the eval input: Dropout2d zeroes whole
    # (sample, channel) maps and doubles the rest (it precedes the max-pool, which commutes).
    (got,) = state["intermediates"]["conv4"]["__call__"]
    want = run.tap("conv4")
    kept = np.asarray(jnp.abs(got).max(axis=(1, 2)) > 0)  # (N*M, C)
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(got, 2 * want * kept[:, None, None, :], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    """A narrow HCN (T = 16, so conv6 maps are 1x1) under the CSRE heads, initialised once."""
    x = _normal((2, 3, 16, 25, 2))
    backbone = _tiny()
    classifier = ContrastiveClassifier(backbone, ("spatial", "temporal"), dim=16)
    variables = jax.jit(classifier.init)(_key(0), x)
    return x, backbone, classifier, variables["params"]


def test_tiny_variant_trains_and_feeds_the_csre_heads(tiny):
    x, backbone, classifier, params = tiny
    _, feats = jax.eval_shape(
        partial(backbone.apply, return_features=True), {"params": params["backbone"]}, x
    )
    assert feats.shape == (2, 2, 1, 1, 32)

    def loss(params):
        logits, embeddings = classifier.apply(
            {"params": params}, x, train=True, rngs={"dropout": _key(3)}
        )
        assert logits.shape == (2, 10) and embeddings["spatial"].shape == (2, 16)
        return (logits**2).mean() + sum((e**2).mean() for e in embeddings.values())

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    for stream in ("conv1", "conv1m"):
        assert float(jnp.abs(grads["backbone"][stream]["0"]["kernel"]).max()) > 0


def test_initialisation_is_glorot_uniform_with_zero_bias(tiny):
    params = flax.traverse_util.flatten_dict(tiny[3]["backbone"])
    kernels = {path: leaf for path, leaf in params.items() if path[-1] == "kernel"}
    assert len(kernels) == 12
    for path, kernel in kernels.items():
        area = int(np.prod(kernel.shape[:-2]))  # 1 for the matmuls (1x1 conv1, fc7, fc8)
        bound = np.sqrt(6 / (area * (kernel.shape[-2] + kernel.shape[-1])))
        assert np.abs(kernel).max() <= bound, path
        if kernel.size >= 100:  # otherwise the largest draw may well stay below 0.9 bound
            assert np.abs(kernel).max() > 0.9 * bound, path
    biases = [leaf for path, leaf in params.items() if path[-1] == "bias"]
    assert len(biases) == 12 and not any(np.any(b) for b in biases)


def test_ucla_model_runs_one_person_and_52_frames():
    model = _tiny("ucla")
    x = _normal((2, 3, 52, 20, 1))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert shapes["params"]["fc7"]["0"]["kernel"].shape == (32 * 3 * 3, 16)
    rng = np.random.default_rng(0)  # random weights without compiling an init
    variables = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    logits, feats = jax.jit(partial(model.apply, return_features=True))(variables, x)
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert feats.shape == (2, 1, 3, 3, 32)  # 52 -> 26 -> 13 -> 6 -> 3, flooring
    np.testing.assert_array_equal(feats.max(axis=1), feats[:, 0])  # one person: max is identity
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, jnp.zeros((2, 3, 52, 25, 2)))
    with pytest.raises(ValueError, match="T >= 16"):
        jax.eval_shape(model.apply, variables, jnp.zeros((2, 3, 8, 20, 1)))
