"""Hyperformer (CSRE release): graph constants, joint groups, init, training mode (exactness
against the official model and the official listings, NW-UCLA's included:
test_backbone_parity.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.models import graphs, hyperformer, layers

# NW-UCLA bone / bone-motion configs (recipes.md §2): another grouping than the default.
UCLA_BONE_LABEL = (0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 2, 2, 0, 2, 2, 2)
TINY = {"num_heads": 2, "head_dim": 6}  # D = 12: divisible by the 4 MS-TCN branches and 6


@pytest.fixture(scope="module")
def run(official_run):
    return official_run("hyperformer")


def test_trained_attention_is_active(run):
    """The fixture exercises every attention term: alpha, rpe and w1 are all trained."""
    attn = run.variables["params"]["l3"]["vit1"]["attn"]
    assert abs(float(attn["alpha"][0])) > 1e-3
    assert float(jnp.abs(attn["rpe"]).max()) > 1e-3 and float(jnp.abs(attn["w1"]).max()) > 1e-3


@pytest.mark.parametrize(
    ("graph", "hops_key", "label_key", "rpe_rows"),
    [
        ("ntu_hyperformer", "hops_hyperformer_blockgcn_ntu", "ntu_joint_label_hyperformer", 12),
        ("ucla", "hops_ucla", "ucla_joint_label_hyperformer", 11),
    ],
)
def test_graph_constants_match_official(shared_dir, graph, hops_key, label_key, rpe_rows):
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    hops = graphs.hop_distance(graph)
    np.testing.assert_array_equal(hops, np.asarray(consts[hops_key]))
    assert hops.max() + 1 == rpe_rows
    assert hyperformer.DEFAULT_JOINT_LABELS[graph] == tuple(consts[label_key])


def test_group_matrices_average_and_scatter():
    group_mean, to_joints = hyperformer.group_matrices(UCLA_BONE_LABEL)
    assert group_mean.shape == (20, 3) and to_joints.shape == (3, 20)
    x = np.arange(20.0)
    members = [j for j, g in enumerate(UCLA_BONE_LABEL) if g == 0]
    np.testing.assert_allclose((x @ group_mean)[0], x[members].mean(), rtol=1e-6)
    np.testing.assert_allclose(
        x @ group_mean @ to_joints,
        [x[np.equal(UCLA_BONE_LABEL, g)].mean() for g in UCLA_BONE_LABEL],
    )
    with pytest.raises(ValueError, match="every group"):
        hyperformer.group_matrices((0, 2, 2))


@pytest.fixture(scope="module")
def vit():
    """l1's ViT unit (3 -> 216 channels, so with skip_proj); a jitted init compiles faster
    than its random draws run one by one."""
    module = hyperformer.UnitViT(
        9, 24, 6, "ntu_hyperformer", hyperformer.DEFAULT_JOINT_LABELS["ntu_hyperformer"]
    )
    x = jax.random.normal(jax.random.key(1), (2, 4, 25, 3))
    return module, jax.jit(module.init)(jax.random.key(0), x)["params"], x


def test_initialisation_follows_the_official_code(vit):
    params = vit[1]
    attn = params["attn"]
    np.testing.assert_array_equal(attn["rpe"], np.zeros((12, 216)))
    np.testing.assert_array_equal(attn["w1"], np.zeros((9, 24)))
    np.testing.assert_array_equal(attn["alpha"], [0.0])
    np.testing.assert_array_equal(attn["outer"], np.broadcast_to(np.eye(25), (9, 25, 25)))
    np.testing.assert_array_equal(params["norm1"]["scale"], np.ones(3))
    np.testing.assert_array_equal(params["norm1"]["bias"], np.zeros(3))
    # PyTorch's default conv init U(+-1/sqrt(fan_in)), fan_in = Cin (3) or D/6 (proj)
    for values, fan_in in (
        (attn["kv"]["kernel"], 3),
        (attn["q"]["kernel"], 3),
        (params["pe_proj"]["kernel"], 3),
        (params["skip_proj"]["kernel"], 3),
        (attn["proj"]["kernel"], 36),
        (attn["proj"]["bias"], 36),
    ):
        bound = 1 / np.sqrt(fan_in)
        assert bound * 0.9 < np.abs(values).max() <= bound
    assert "bias" not in attn["kv"] and "bias" not in attn["q"] and "bias" not in params["pe_proj"]


def test_attention_is_off_at_initialisation(vit):
    """alpha = 0 and outer = I: the unit is skip_proj(x) + proj(v) of the normalised input."""
    module, params, x = vit
    normed = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    v = (normed @ params["attn"]["kv"]["kernel"])[..., 216:]
    proj = layers.GroupedPointwise(216, 6).apply({"params": params["attn"]["proj"]}, v)
    want = x @ params["skip_proj"]["kernel"] + proj
    got = jax.jit(module.apply)({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_ucla():
    """A tiny-width NW-UCLA model (D = 12) with the bone-config joint groups and dropout.

    Its variables are random draws shaped by eval_shape: compiling model.init (hundreds of
    random draws) costs more than everything else here. alpha != 0, so attention is live.
    """
    model = models.create_model(
        "hyperformer",
        num_classes=10,
        dataset="ucla",
        joint_label=UCLA_BONE_LABEL,
        dropout=0.5,
        **TINY,
    )
    x = jax.random.normal(jax.random.key(2), (2, 3, 52, 20, 1))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes["params"]
    )
    stats = jax.tree_util.tree_map_with_path(
        lambda path, s: np.full(s.shape, path[-1].key == "var", np.float32), shapes["batch_stats"]
    )
    return model, {"params": params, "batch_stats": stats}, x


def test_tiny_ucla_train_step(tiny_ucla):
    """A whole NW-UCLA-shaped model in train mode: dropout from the 'dropout' rng, finite
    gradients reaching the attention of every stage, BatchNorm statistics updated with
    PyTorch's momentum. (One jitted step: the model's backward is the slowest compile here.)"""
    model, variables, x = tiny_ucla

    def loss(params, key):
        (logits, feats), updates = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            return_features=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        return (logits**2).mean(), (logits, feats, updates)

    step = jax.jit(jax.grad(loss, has_aux=True))
    grads, (logits, feats, updates) = step(variables["params"], jax.random.key(3))
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert feats.shape == (2, 1, 13, 20, 12)  # T 52 -> 26 -> 13
    assert not np.allclose(step(variables["params"], jax.random.key(4))[1][0], logits)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    for block in ("l1", "l5", "l10"):
        attn = grads[block]["vit1"]["attn"]
        for name in ("rpe", "w1", "alpha", "outer", "q", "kv", "proj"):
            assert float(jnp.abs(jax.tree.leaves(attn[name])[0]).max()) > 0, (block, name)
        assert float(jnp.abs(grads[block]["vit1"]["pe_proj"]["kernel"]).max()) > 0, block
    # data BN: channels m*V*C + v*C + c, statistics over (N, T), old mean 0
    batch_mean = x.transpose(0, 2, 4, 3, 1).reshape(2 * 52, 60).mean(0)
    np.testing.assert_allclose(
        updates["batch_stats"]["data_bn"]["mean"], 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    for block, bn in (("l5", ("residual", "bn")), ("l10", ("tcn1", "branches_3_1"))):
        new_var = updates["batch_stats"][block][bn[0]][bn[1]]["var"]
        assert not np.allclose(new_var, 1.0), block


def test_ucla_shapes_and_wrong_input(tiny_ucla):
    model, variables, _ = tiny_ucla
    full = models.create_model("hyperformer", num_classes=10, dataset="ucla")
    x = jax.ShapeDtypeStruct((2, 3, 52, 20, 1), jnp.float32)
    shapes = jax.eval_shape(full.init, jax.random.key(0), x)
    logits, feats = jax.eval_shape(lambda v, x: full.apply(v, x, return_features=True), shapes, x)
    assert logits.shape == (2, 10) and feats.shape == (2, 1, 13, 20, 216)
    assert shapes["params"]["l1"]["vit1"]["attn"]["rpe"].shape == (11, 216)
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 3, 52, 25, 2), jnp.float32))


def test_joint_label_must_fit_the_graph():
    model = models.create_model(
        "hyperformer", num_classes=10, dataset="ucla", joint_label=(0, 1, 2), **TINY
    )
    with pytest.raises(ValueError, match="3 entries for 20 joints"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 8, 20, 1)))
