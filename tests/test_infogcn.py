"""InfoGCN: graph constants, init, training mode (exactness against the official model and
the official listings, NW-UCLA's included: test_backbone_parity.py)."""

import json
import math

import jax
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.models import graphs, infogcn


@pytest.mark.parametrize("graph", ["ntu", "ucla"])
def test_kth_mode_matrices_match_official_constants(shared_dir, graph):
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    outward = infogcn.outward_binary(graph)
    np.testing.assert_array_equal(outward, consts[f"infogcn_{graph}_A_outward_binary"])
    for k in (1, 2):
        a_vec = infogcn.kth_mode_matrix(graph, k)
        assert a_vec.dtype == np.float32
        np.testing.assert_array_equal(a_vec, consts[f"infogcn_{graph}_A_vector_k{k}"])
    np.testing.assert_array_equal(infogcn.kth_mode_matrix(graph, 0), 0.0)


def test_ntu_tree_has_the_ctrgcn_edges_rooted_at_the_spine_middle(shared_dir):
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    official = {frozenset(p) for p in consts["infogcn_ntu_inward_0based"]}
    assert official == {frozenset(p) for p in graphs.inward_pairs("ntu")}
    a_vec = infogcn.kth_mode_matrix("ntu", 1)
    np.testing.assert_array_equal(a_vec[1], np.eye(25)[1])  # the root keeps its position
    assert (a_vec.sum(axis=1)[np.arange(25) != 1] == 0).all()  # the others: child - parent


def _random_variables(shapes, seed: int = 0):
    """Random weights and unit BN statistics in place of model.init, whose ~600 random draws
    take a minute or more to compile on two cores."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("mean", "var", "scale"):
            return np.full(leaf.shape, name != "mean", leaf.dtype)
        std = 1 / math.sqrt(leaf.shape[-2]) if len(leaf.shape) > 1 else 0.1
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny_training():
    """A tiny NW-UCLA-shaped model (V = 20, M = 1) in train mode: logits, updated statistics,
    captured fc_mu / fc_logvar and parameter gradients for two dropout keys.

    num_classes equals the latent width and the decoder is the identity, so logits are z.
    """
    model = models.create_model("infogcn", num_classes=32, dataset="ucla", base_channels=8)
    x = jax.random.normal(jax.random.key(1), (4, 3, 12, 20, 1))
    variables = _random_variables(jax.eval_shape(model.init, jax.random.key(0), x))
    variables["params"]["decoder"] = {
        "kernel": np.eye(32, dtype=np.float32),
        "bias": np.zeros(32, np.float32),
    }

    def loss(params, rng):
        logits, state = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={"dropout": rng},
            capture_intermediates=lambda mdl, _: mdl.name in ("fc_mu", "fc_logvar"),
            mutable=["batch_stats", "intermediates"],
        )
        return (logits**2).mean(), (logits, state)

    step = jax.jit(jax.grad(loss, has_aux=True))
    runs = [step(variables["params"], jax.random.key(seed)) for seed in (0, 1)]
    return variables, runs


def test_train_mode_updates_batch_stats_and_has_finite_gradients(tiny_training):
    variables, runs = tiny_training
    grads, (logits, state) = runs[0]
    assert logits.shape == (4, 32) and np.isfinite(logits).all()
    for path in (("data_bn",), ("l9", "tcn", "branches_3_1"), ("l4", "agcn", "down_1")):
        old, new = variables["batch_stats"], state["batch_stats"]
        for name in path:
            old, new = old[name], new[name]
        assert not np.allclose(old["mean"], new["mean"]), path
    grads = jax.tree.map(np.asarray, grads)  # checked in numpy: eager jnp compiles per shape
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for name in ("shared_topology", "attn", "conv_d_2"):
        assert max(np.abs(g).max() for g in jax.tree.leaves(grads["l1"]["agcn"][name])) > 0
    assert np.abs(grads["fc_logvar"]["kernel"]).max() > 0  # the noise scale trains


def test_train_mode_samples_z_around_mu(tiny_training):
    """z = mu + eps * min(exp(0.5 * logvar), 100), eps standard normal from the dropout key."""
    noises = []
    for _, (z, state) in tiny_training[1]:
        (mu,) = state["intermediates"]["fc_mu"]["__call__"]
        (logvar,) = state["intermediates"]["fc_logvar"]["__call__"]
        noises.append((z - mu) / np.minimum(np.exp(0.5 * np.asarray(logvar)), 100.0))
    eps = np.concatenate(noises)
    assert np.isfinite(eps).all() and abs(eps.mean()) < 0.25 and 0.75 < eps.std() < 1.25
    assert not np.allclose(noises[0], noises[1])


def test_initialisation_follows_the_official_code():
    """One strided block with both projections (like l4)."""
    block = infogcn.EncodingBlock(32, 3, stride=2)
    x = jax.random.normal(jax.random.key(1), (2, 8, 25, 16))
    params = jax.jit(block.init, static_argnums=2)(jax.random.key(0), x, False)["params"]
    params = jax.tree.map(np.asarray, params)
    agcn = params["agcn"]
    np.testing.assert_array_equal(agcn["shared_topology"], np.stack([np.eye(25)] * 3))
    np.testing.assert_array_equal(agcn["bn"]["scale"], np.full(32, 1e-6, np.float32))
    np.testing.assert_array_equal(agcn["down_1"]["scale"], np.ones(32))
    np.testing.assert_array_equal(params["residual"]["bn"]["scale"], np.ones(32))
    conv_d = np.concatenate([agcn[f"conv_d_{h}"]["kernel"] for h in range(3)])  # (16, 32) each
    assert abs(conv_d.std() - math.sqrt(2 / (32 * 16 * 3))) < 0.004
    np.testing.assert_array_equal(agcn["conv_d_0"]["bias"], np.zeros(32))
    attn = agcn["attn"]
    assert attn["to_qk"]["kernel"].shape == (16, 2 * 3 * 2)  # r = 16 // 8 per head
    assert abs(attn["to_qk"]["kernel"].std() - 1.0) < 0.15
    assert np.abs(attn["to_qk"]["bias"]).max() <= 1 / 4  # PyTorch default, 1/sqrt(16)
    np.testing.assert_array_equal(attn["ln"]["scale"], np.ones(16))
    bound = math.sqrt(2) * math.sqrt(6 / (256 + 256))  # xavier_uniform, gain sqrt(2)
    head = np.asarray(infogcn._xavier_relu(jax.random.key(2), (256, 256)))
    assert np.abs(head).max() <= bound and np.abs(head).max() > 0.99 * bound
    # InfoGCN's MS-TCN keeps PyTorch's defaults: unit BN scales, U(+-1/sqrt(fan_in)) biases
    tcn = params["tcn"]
    np.testing.assert_array_equal(tcn["branches_0_1"]["scale"], np.ones(8))
    np.testing.assert_array_equal(tcn["branches_1_3"]["bn"]["scale"], np.ones(8))
    pointwise_bias = tcn["branches_0_0"]["bias"]  # fan_in 32
    assert 0 < np.abs(pointwise_bias).max() <= 1 / math.sqrt(32)
    temporal_bias = tcn["branches_0_3"]["conv"]["bias"]  # fan_in 8 * 5
    assert 0 < np.abs(temporal_bias).max() <= 1 / math.sqrt(40)
    assert np.abs(tcn["branches_0_0"]["kernel"]).max() <= 1 / math.sqrt(32)
