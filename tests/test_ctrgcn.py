"""CTR-GCN: graphs, init, training mode (exactness against the official model and the
official listings: test_backbone_parity.py)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from csre_jax.models import ctrgcn, graphs, layers


@pytest.fixture(scope="module")
def run(official_run):
    return official_run("ctrgcn")


def test_train_mode_uses_and_updates_batch_stats(run):
    model, variables, eval_logits, x = run.model, run.variables, run.logits, run.io["x"]
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))

    # The fixture's running statistics were calibrated on x with PyTorch's update (unbiased
    # variance), so one training pass over x leaves them where they are.
    def deep_var(batch_stats):
        return batch_stats["l10"]["tcn1"]["branches_3_1"]["var"]

    _, on_x = train(variables, x)
    deep_old = deep_var(variables["batch_stats"])
    np.testing.assert_allclose(deep_var(on_x["batch_stats"]), deep_old, rtol=1e-5)
    other = x + np.random.default_rng(0).normal(0, 0.5, x.shape).astype(np.float32)
    logits, updates = train(variables, other)
    assert logits.shape == (2, 60) and bool(jnp.isfinite(logits).all())
    assert not np.allclose(logits, eval_logits, atol=1e-3)
    # momentum 0.9 over channels m*V*C + v*C + c with statistics over (N, T)
    old, new = variables["batch_stats"]["data_bn"], updates["batch_stats"]["data_bn"]
    batch_mean = other.transpose(0, 2, 4, 3, 1).reshape(2 * 64, 150).mean(0)
    np.testing.assert_allclose(
        new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(deep_var(updates["batch_stats"]), deep_old)


@pytest.mark.parametrize(
    ("graph", "key"),
    [("ntu", "ctrgcn_ntu"), ("ntu_hyperformer", "hyperformer_ntu"), ("ucla", "ucla")],
)
def test_graph_matches_official_constants(shared_dir, graph, key):
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    assert graphs.inward_pairs(graph) == [tuple(p) for p in consts[f"{key}_inward_0based"]]
    a = graphs.spatial_partition(graph)
    assert a.shape == (3, graphs.num_joints(graph), graphs.num_joints(graph))
    np.testing.assert_array_equal(a, np.asarray(consts[f"{key}_A"], np.float32))


def test_normalize_digraph_leaves_empty_columns_zero():
    a = graphs.normalize_digraph(np.array([[0.0, 1.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(a, [[0.0, 0.5], [0.0, 0.5]])


@pytest.fixture(scope="module")
def block():
    """A strided block with both projections (like l5), initialised eagerly.

    A whole model is not initialised here: its ~800 random draws take a minute to compile.
    """
    module = ctrgcn.TCNGCN(32, "ntu", stride=2)
    x = jax.random.normal(jax.random.key(1), (2, 8, 25, 16))
    return module, module.init(jax.random.key(0), x, False), x


def test_initialisation_follows_the_official_code(block):
    params = block[1]["params"]
    gcn = params["gcn1"]
    np.testing.assert_array_equal(gcn["PA"], graphs.spatial_partition("ntu"))
    np.testing.assert_array_equal(gcn["alpha"], [0.0])
    np.testing.assert_array_equal(gcn["bn"]["scale"], np.full(32, 1e-6, np.float32))
    np.testing.assert_array_equal(gcn["down_1"]["scale"], np.ones(32))
    np.testing.assert_array_equal(params["residual"]["bn"]["scale"], np.ones(32))
    # kaiming normal, fan_out: std sqrt(2 / (C_out * k)); biases 0
    for conv in ("conv3", "conv4"):
        kernel = np.concatenate([gcn[f"convs_{s}"][conv]["kernel"] for s in range(3)])
        assert abs(kernel.std() - np.sqrt(2 / 32)) < 0.02
        np.testing.assert_array_equal(gcn["convs_0"][conv]["bias"], np.zeros(32))
    tconv = np.concatenate(
        [params["tcn1"][f"branches_{b}_3"]["conv"]["kernel"] for b in range(2)]
    )  # (5, 1, 8, 8) each
    assert abs(tconv.std() - np.sqrt(2 / (8 * 5))) < 0.02
    # every MS-TCN BatchNorm scale ~ Normal(1, 0.02)
    scales = np.concatenate(
        [
            leaf
            for path, leaf in traverse_util.flatten_dict(params["tcn1"]).items()
            if path[-1] == "scale"
        ]
    )
    assert abs(scales.mean() - 1) < 0.01 and 0.01 < scales.std() < 0.03


def test_block_gradients_are_finite(block):
    module, variables, x = block

    def loss(params, x):
        y, _ = module.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
        return (y**2).mean()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads[0]["gcn1"]["alpha"]).max()) > 0


def test_torch_default_initialisers_are_uniform_over_fan_in():
    bias = np.asarray(layers.torch_default_bias(64)(jax.random.key(0), (4096,)))
    kernel = np.asarray(layers.torch_default_kernel(jax.random.key(1), (5, 1, 16, 32)))
    for values, bound in ((bias, 1 / 8), (kernel, 1 / np.sqrt(5 * 16))):
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound


@pytest.mark.parametrize(("length", "stride"), [(8, 1), (8, 2), (13, 2)])
def test_temporal_max_pool_matches_reduce_window(length, stride):
    x = jax.random.normal(jax.random.key(0), (2, length, 3, 4))
    want = nn.max_pool(x, (3, 1), strides=(stride, 1), padding=((1, 1), (0, 0)))
    np.testing.assert_array_equal(layers.temporal_max_pool3(x, stride), want)
