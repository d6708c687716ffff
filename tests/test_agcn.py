"""2S-AGCN: the adaptive graph convolution, init, shapes, training (exactness against the
official model and the official listings: test_backbone_parity.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import max_rel_err
from flax import traverse_util

import csre_jax.models as models
from csre_jax.models import agcn, graphs


@pytest.fixture(scope="module")
def graph_constants(shared_dir) -> dict:
    return json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())


# 2s-AGCN's NTU graph has CTR-GCN's edges (backbones.md §1.4), hence ctrgcn_ntu_A; 2s-AGCN ships
# no NW-UCLA graph, and the NW-UCLA edges are the same in every repo: ucla_A (CTR-GCN's).
OFFICIAL_A = [("ntu", "ctrgcn_ntu_A"), ("ucla", "ucla_A")]


@pytest.mark.parametrize(("dataset", "key"), OFFICIAL_A)
def test_fixed_adjacency_is_the_official_graph(graph_constants, monkeypatch, dataset, key):
    """Every unit of the registry's model builds the official spatial A (identity, inward,
    outward), not e.g. the Hyperformer hands; the unit test below checks how A is used."""
    built, build = [], graphs.spatial_partition

    def spy(name):
        built.append(build(name))
        return built[-1]

    monkeypatch.setattr(graphs, "spatial_partition", spy)
    model = models.create_model("agcn", num_classes=10, dataset=dataset)
    inputs = models.example_inputs(model, dataset)
    jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
    assert len(built) == 10  # one fixed A per block
    for a in built:
        np.testing.assert_array_equal(a, np.asarray(graph_constants[key], np.float32))


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


@pytest.mark.parametrize(("graph", "key"), OFFICIAL_A)
def test_adaptive_gcn_follows_the_official_formula(graph_constants, graph, key):
    """Random PA, BN affine and statistics, so every term counts; A from the official constants."""
    v = graphs.num_joints(graph)
    unit = agcn.UnitGCN(8, graph)
    x = jax.random.normal(jax.random.key(1), (2, 6, v, 4))
    variables = _random_variables(unit, x, False)
    got = jax.jit(unit.apply, static_argnums=2)(variables, x, False)
    want = _official_unit_gcn(
        np.asarray(x, np.float64).transpose(0, 3, 1, 2),
        jax.tree.map(np.float64, variables["params"]),
        jax.tree.map(np.float64, variables["batch_stats"]),
        np.asarray(graph_constants[key]),
    )
    assert max_rel_err(np.transpose(got, (0, 3, 1, 2)), want) <= 1e-5


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
