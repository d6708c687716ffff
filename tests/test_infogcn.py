"""InfoGCN: exactness against the official PyTorch model, graph constants, init, training."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.models import graphs, infogcn, torch_io


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _max_rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _shapes(model, dataset):
    return jax.eval_shape(model.init, jax.random.key(0), **models.example_inputs(model, dataset))


@pytest.fixture(scope="module")
def fixture_run(shared_dir):
    """Official checkpoint (k = 1) loaded through the registry and run once (eval, jitted)."""
    ckpt = shared_dir / "fixtures" / "infogcn_ntu60_k1.pt"
    io = np.load(shared_dir / "fixtures" / "infogcn_ntu60_k1_io.npz")
    model, variables = models.from_torch_checkpoint(
        "infogcn", ckpt, num_classes=60, dataset="ntu", k=1
    )
    apply = jax.jit(
        lambda v, x: model.apply(
            v, x, return_features=True, capture_intermediates=True, mutable=["intermediates"]
        )
    )
    (logits, feats), state = apply(variables, io["x"])
    return ckpt, io, variables, logits, feats, state["intermediates"]


def test_logits_match_official(fixture_run):
    _, io, _, logits, _, _ = fixture_run
    assert logits.dtype == jnp.float32
    assert _max_rel_err(logits, io["logits"]) <= 1e-4


@pytest.mark.parametrize("block", ["l1", "l9"])
def test_block_taps_match_official(fixture_run, block):
    _, io, _, _, _, intermediates = fixture_run
    (tap,) = intermediates[block]["__call__"]  # (N*M, T, V, C) channels-last
    assert _max_rel_err(jnp.transpose(tap, (0, 3, 1, 2)), io[f"tap_{block}"]) <= 1e-4


def test_features_are_what_the_head_pools(fixture_run):
    _, _, variables, logits, feats, intermediates = fixture_run
    assert feats.shape == (2, 2, 16, 25, 256)  # (N, M, T', V, C'), rows n*M + m of l9
    (l9,) = intermediates["l9"]["__call__"]
    np.testing.assert_array_equal(feats.reshape(4, 16, 25, 256), l9)
    p = variables["params"]
    h = feats.mean(axis=(1, 2, 3))
    h = np.maximum(h @ p["fc"]["kernel"] + p["fc"]["bias"], 0)
    mu = h @ p["fc_mu"]["kernel"] + p["fc_mu"]["bias"]  # eval uses z = mu
    want = mu @ p["decoder"]["kernel"] + p["decoder"]["bias"]
    np.testing.assert_allclose(want, logits, rtol=1e-5, atol=1e-5)


def test_export_gives_back_the_checkpoint(fixture_run):
    ckpt, _, variables, _, _, _ = fixture_run
    original = torch_io.load_state_dict(ckpt)
    exported = torch_io.state_dict_from_variables(variables, infogcn.torch_key)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_checkpoint_for_another_dataset_is_refused(fixture_run):
    ckpt = fixture_run[0]
    with pytest.raises(torch_io.TorchCheckpointError, match="different dataset"):
        models.from_torch_checkpoint("infogcn", ckpt, num_classes=60, dataset="ucla")


@pytest.mark.parametrize(
    ("dataset", "num_classes", "listing", "expected"),
    [("ntu", 60, "infogcn_ntu60", 1_556_807), ("ucla", 10, "infogcn_ucla", 1_533_722)],
)
def test_variables_are_the_official_state_dict(shared_dir, dataset, num_classes, listing, expected):
    """Parameter count, and every variable maps onto the official key with its shape."""
    model = models.create_model("infogcn", num_classes=num_classes, dataset=dataset)
    shapes = _shapes(model, dataset)
    assert _count(shapes["params"]) == expected
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    exported = torch_io.state_dict_from_variables(zeros, infogcn.torch_key)
    official = json.loads((shared_dir / "spec" / "state_dicts" / f"{listing}.json").read_text())
    assert {k: v.shape for k, v in exported.items()} == {k: tuple(s) for k, s in official}


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


def test_ucla_model_gives_ucla_shapes():
    model = models.create_model("infogcn", num_classes=10, dataset="ucla")
    x = jax.ShapeDtypeStruct((2, 3, 52, 20, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x
    )
    assert logits.shape == (2, 10)
    assert feats.shape == (2, 1, 13, 20, 256)  # T 52 -> 26 -> 13
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 3, 52, 25, 2), jnp.float32))


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
