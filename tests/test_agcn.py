"""2S-AGCN: exactness against the official PyTorch model, graphs, init, shapes, training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import csre_jax.models as models
from csre_jax.models import agcn, graphs, torch_io


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _max_rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def fixture_run(shared_dir):
    """Official checkpoint loaded through the registry and run once (eval mode, jitted)."""
    ckpt = shared_dir / "fixtures" / "agcn_ntu60.pt"
    io = np.load(shared_dir / "fixtures" / "agcn_ntu60_io.npz")
    model, variables = models.from_torch_checkpoint("agcn", ckpt, num_classes=60, dataset="ntu")
    apply = jax.jit(
        lambda v, x: model.apply(
            v, x, return_features=True, capture_intermediates=True, mutable=["intermediates"]
        )
    )
    (logits, feats), state = apply(variables, io["x"])
    return ckpt, io, model, variables, logits, feats, state["intermediates"]


def test_logits_match_official(fixture_run):
    _, io, _, _, logits, _, _ = fixture_run
    assert logits.dtype == jnp.float32
    assert _max_rel_err(logits, io["logits"]) <= 1e-4


@pytest.mark.parametrize("block", ["l1", "l10"])
def test_block_taps_match_official(fixture_run, block):
    _, io, _, _, _, _, intermediates = fixture_run
    (tap,) = intermediates[block]["__call__"]  # (N*M, T, V, C) channels-last
    assert _max_rel_err(jnp.transpose(tap, (0, 3, 1, 2)), io[f"tap_{block}"]) <= 1e-4


def test_features_are_what_the_logits_pool(fixture_run):
    _, _, _, variables, logits, feats, intermediates = fixture_run
    assert feats.shape == (2, 2, 16, 25, 256)  # (N, M, T', V, C'), rows n*M + m of l10
    (l10,) = intermediates["l10"]["__call__"]
    np.testing.assert_array_equal(feats.reshape(4, 16, 25, 256), l10)
    fc = variables["params"]["fc"]
    pooled = feats.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(pooled @ fc["kernel"] + fc["bias"], logits, rtol=1e-5, atol=1e-5)


def test_export_gives_back_the_checkpoint(fixture_run):
    ckpt, _, _, variables, _, _, _ = fixture_run
    original = torch_io.load_state_dict(ckpt)
    exported = torch_io.state_dict_from_variables(variables, agcn.torch_key)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_checkpoint_for_another_dataset_is_refused(fixture_run):
    ckpt = fixture_run[0]
    with pytest.raises(torch_io.TorchCheckpointError) as err:
        models.from_torch_checkpoint("agcn", ckpt, num_classes=60, dataset="ucla")
    msg = str(err.value)
    assert str(ckpt) in msg and "but the model expects" in msg and "different dataset" in msg


def test_parameter_count_and_keys_are_the_official_listing(shared_dir):
    """Every variable maps onto the official NTU60 state_dict, key for key, shape for shape."""
    summary = json.loads((shared_dir / "spec" / "state_dicts" / "_summary.json").read_text())
    model = models.create_model("agcn", num_classes=60, dataset="ntu")
    shapes = jax.eval_shape(model.init, jax.random.key(0), **models.example_inputs(model, "ntu"))
    assert _count(shapes["params"]) == summary["agcn_ntu60"]["trainable_params"] == 3_469_510
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    exported = torch_io.state_dict_from_variables(zeros, agcn.torch_key)
    listing = json.loads((shared_dir / "spec" / "state_dicts" / "agcn_ntu60.json").read_text())
    assert len(exported) == summary["agcn_ntu60"]["n_keys"]
    assert {k: v.shape for k, v in exported.items()} == {k: tuple(s) for k, s in listing}


@pytest.mark.parametrize(("graph", "key"), [("ntu", "ctrgcn_ntu"), ("ucla", "ucla")])
def test_fixed_adjacency_is_the_official_constant(shared_dir, graph, key):
    """2S-AGCN rebuilds A from the graph; NTU uses the CTR-GCN/2s-AGCN hand edges."""
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    assert graphs.inward_pairs(graph) == [tuple(p) for p in consts[f"{key}_inward_0based"]]
    np.testing.assert_array_equal(
        graphs.spatial_partition(graph), np.asarray(consts[f"{key}_A"], np.float32)
    )
    assert agcn.create(num_classes=10, dataset=graph, num_person=1).graph == graph


def _random_variables(module, *args):
    """Random variables without module.init, whose random draws compile slowly on XLA:CPU."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args), jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, s):
        if path[-1].key == "var":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return rng.normal(0.0, 0.3, s.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _official_unit_gcn(x, params, stats, a_fixed):
    """NumPy transcription of the official unit_gcn.forward (eval) in the torch layout.

    x is (N, C, T, V); kernels are the Flax (Cin, Cout) ones.
    """

    def conv(h, name):
        return (
            np.einsum("nctv,co->notv", h, params[name]["kernel"])
            + params[name]["bias"][None, :, None, None]
        )

    def bn(h, name):
        p, s = params[name], stats[name]
        inv = p["scale"] / np.sqrt(s["var"] + 1e-5)
        return (h - s["mean"][None, :, None, None]) * inv[None, :, None, None] + p["bias"][
            None, :, None, None
        ]

    n, c, t, v = x.shape
    a = a_fixed + params["PA"]
    y = 0.0
    for i in range(3):
        a1 = conv(x, f"conv_a_{i}")
        ic = a1.shape[1]
        a1 = a1.transpose(0, 3, 1, 2).reshape(n, v, ic * t)
        a2 = conv(x, f"conv_b_{i}").reshape(n, ic * t, v)
        s = a1 @ a2 / (ic * t)
        s = np.exp(s - s.max(axis=-2, keepdims=True))
        s = s / s.sum(axis=-2, keepdims=True) + a[i]  # softmax over dim -2
        y = y + conv((x.reshape(n, c * t, v) @ s).reshape(n, c, t, v), f"conv_d_{i}")
    return np.maximum(bn(y, "bn") + bn(conv(x, "down_0"), "down_1"), 0.0)


@pytest.mark.parametrize(("graph", "key"), [("ntu", "ctrgcn_ntu"), ("ucla", "ucla")])
def test_adaptive_gcn_follows_the_official_formula(shared_dir, graph, key):
    """Random PA, BN affine and statistics, so every term counts; A from the official constants."""
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    v = graphs.num_joints(graph)
    unit = agcn.UnitGCN(8, graph)
    x = jax.random.normal(jax.random.key(1), (2, 6, v, 4))
    variables = _random_variables(unit, x, False)
    got = jax.jit(unit.apply, static_argnums=2)(variables, x, False)
    want = _official_unit_gcn(
        np.asarray(x, np.float64).transpose(0, 3, 1, 2),
        jax.tree.map(np.float64, variables["params"]),
        jax.tree.map(np.float64, variables["batch_stats"]),
        np.asarray(consts[f"{key}_A"]),
    )
    assert _max_rel_err(np.transpose(got, (0, 3, 1, 2)), want) <= 1e-5


@pytest.fixture(scope="module")
def block():
    """A strided block with both projections (like l5), initialised under jit.

    A whole model is not initialised here: its random draws take over ten seconds to compile.
    """
    module = agcn.TCNGCN(32, "ntu", stride=2)
    x = jax.random.normal(jax.random.key(1), (2, 8, 25, 16))
    return module, jax.jit(module.init, static_argnums=2)(jax.random.key(0), x, False), x


def test_initialisation_follows_the_official_code(block):
    params = block[1]["params"]
    gcn = params["gcn1"]
    np.testing.assert_array_equal(gcn["PA"], np.full((3, 25, 25), 1e-6, np.float32))
    np.testing.assert_array_equal(gcn["bn"]["scale"], np.full(32, 1e-6, np.float32))
    for bn in (gcn["down_1"], params["tcn1"]["bn"], params["residual"]["bn"]):
        np.testing.assert_array_equal(bn["scale"], np.ones(32))
    biases = [
        leaf for path, leaf in traverse_util.flatten_dict(params).items() if path[-1] == "bias"
    ]
    assert len(biases) == 16 and not np.concatenate(biases).any()

    def std(prefix):
        return np.concatenate([gcn[f"{prefix}_{s}"]["kernel"] for s in range(3)]).std()

    # kaiming normal, fan_out: std sqrt(2 / (C_out * k)); conv_d: sqrt(2 / (C_out * C_in * 3))
    assert abs(std("conv_a") / np.sqrt(2 / 8) - 1) < 0.15
    assert abs(std("conv_b") / np.sqrt(2 / 8) - 1) < 0.15
    assert abs(std("conv_d") / np.sqrt(2 / (32 * 16 * 3)) - 1) < 0.1
    assert params["tcn1"]["conv"]["kernel"].shape == (9, 1, 32, 32)
    assert abs(params["tcn1"]["conv"]["kernel"].std() / np.sqrt(2 / (32 * 9)) - 1) < 0.1


@pytest.fixture(scope="module")
def tiny_ucla():
    """base_channels 8 on NW-UCLA shapes (V = 20, M = 1, T = 52); dropout used in training."""
    model = models.create_model(
        "agcn", num_classes=10, dataset="ucla", base_channels=8, dropout=0.5
    )
    x = jax.random.normal(jax.random.key(2), (2, 3, 52, 20, 1))
    variables = _random_variables(model, x)
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
    return model, variables, x, logits, feats


def test_tiny_ucla_forward(tiny_ucla):
    model, variables, _, logits, feats = tiny_ucla
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert feats.shape == (2, 1, 13, 20, 32)  # T 52 -> 26 -> 13, 4 * base_channels
    assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-3  # depends on the input
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 3, 52, 25, 2), jnp.float32))


def test_tiny_train_step_has_finite_gradients(tiny_ucla):
    model, variables, x, eval_logits, _ = tiny_ucla

    def loss(params, x):
        logits, updates = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(3)},
        )
        return (logits**2).mean(), (logits, updates)

    grads, (logits, updates) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"], x)
    assert bool(jnp.isfinite(logits).all())
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    # the adaptive parts learn: PA, and conv_a through the softmax
    assert float(jnp.abs(grads["l3"]["gcn1"]["PA"]).max()) > 0
    assert float(jnp.abs(grads["l3"]["gcn1"]["conv_a_1"]["kernel"]).max()) > 0
    old = traverse_util.flatten_dict(variables["batch_stats"])
    new = traverse_util.flatten_dict(updates["batch_stats"])
    for path in [("l10", "gcn1", "bn", "var"), ("l8", "residual", "bn", "var")]:
        assert not np.allclose(old[path], new[path]), path
    # momentum 0.9 over channels m*V*C + v*C + c with statistics over (N, T)
    batch_mean = np.asarray(x).transpose(0, 2, 4, 3, 1).reshape(2 * 52, 60).mean(0)
    np.testing.assert_allclose(
        new[("data_bn", "mean")],
        0.9 * old[("data_bn", "mean")] + 0.1 * batch_mean,
        rtol=1e-5,
        atol=1e-6,
    )
    assert not np.allclose(logits, eval_logits, atol=1e-3)  # batch statistics, dropout
