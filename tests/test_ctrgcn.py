"""CTR-GCN: exactness against the official PyTorch model, graphs, init, shapes, errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import csre_jax.models as models
from csre_jax.models import ctrgcn, graphs, layers, torch_io


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _max_rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def fixture_run(shared_dir):
    """Official checkpoint loaded through the registry and run once (eval mode, jitted)."""
    ckpt = shared_dir / "fixtures" / "ctrgcn_ntu60.pt"
    io = np.load(shared_dir / "fixtures" / "ctrgcn_ntu60_io.npz")
    model, variables = models.from_torch_checkpoint("ctrgcn", ckpt, num_classes=60, dataset="ntu")
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


def test_train_mode_uses_and_updates_batch_stats(fixture_run):
    _, io, model, variables, eval_logits, _, _ = fixture_run
    x = io["x"]
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train(variables, x)
    assert logits.shape == (2, 60) and bool(jnp.isfinite(logits).all())
    assert not np.allclose(logits, eval_logits, atol=1e-3)
    # momentum 0.9 over channels m*V*C + v*C + c with statistics over (N, T)
    old, new = variables["batch_stats"]["data_bn"], updates["batch_stats"]["data_bn"]
    batch_mean = x.transpose(0, 2, 4, 3, 1).reshape(2 * 64, 150).mean(0)
    np.testing.assert_allclose(
        new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    deep_old = variables["batch_stats"]["l10"]["tcn1"]["branches_3_1"]["var"]
    deep_new = updates["batch_stats"]["l10"]["tcn1"]["branches_3_1"]["var"]
    assert not np.allclose(deep_old, deep_new)


def test_export_gives_back_the_checkpoint(fixture_run):
    ckpt, _, _, variables, _, _, _ = fixture_run
    original = torch_io.load_state_dict(ckpt)
    exported = torch_io.state_dict_from_variables(variables, ctrgcn.torch_key)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_checkpoint_for_another_dataset_is_refused(fixture_run):
    ckpt = fixture_run[0]
    with pytest.raises(torch_io.TorchCheckpointError) as err:
        models.from_torch_checkpoint("ctrgcn", ckpt, num_classes=60, dataset="ucla")
    msg = str(err.value)
    assert str(ckpt) in msg and "but the model expects" in msg and "different dataset" in msg


def test_non_torch_file_is_refused(tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(torch_io.TorchCheckpointError, match="weights.pt: not a zip"):
        models.from_torch_checkpoint("ctrgcn", bogus, num_classes=60, dataset="ntu")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="ctrgcn"):
        models.create_model("resnet", num_classes=60, dataset="ntu")
    with pytest.raises(ValueError, match="ntu, ucla"):
        models.create_model("ctrgcn", num_classes=60, dataset="kinetics")


@pytest.mark.parametrize(
    ("dataset", "num_classes", "expected"), [("ntu", 60, 1_446_672), ("ucla", 10, 1_426_892)]
)
def test_parameter_count_matches_official(dataset, num_classes, expected):
    model = models.create_model("ctrgcn", num_classes=num_classes, dataset=dataset)
    shapes = jax.eval_shape(model.init, jax.random.key(0), **models.example_inputs(model, dataset))
    assert _count(shapes["params"]) == expected


def test_exported_keys_are_the_official_listing(shared_dir):
    """Every variable maps onto the official UCLA state_dict, key for key, shape for shape."""
    model = models.create_model("ctrgcn", num_classes=10, dataset="ucla")
    shapes = jax.eval_shape(model.init, jax.random.key(0), **models.example_inputs(model, "ucla"))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    exported = torch_io.state_dict_from_variables(zeros, ctrgcn.torch_key)
    listing = json.loads((shared_dir / "spec" / "state_dicts" / "ctrgcn_ucla.json").read_text())
    assert {k: v.shape for k, v in exported.items()} == {k: tuple(s) for k, s in listing}


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


def test_ucla_model_gives_ucla_shapes():
    model = models.create_model("ctrgcn", num_classes=10, dataset="ucla")
    x = jax.ShapeDtypeStruct((2, 3, 52, 20, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x
    )
    assert logits.shape == (2, 10)
    assert feats.shape == (2, 1, 13, 20, 256)  # T 52 -> 26 -> 13
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 3, 52, 25, 2), jnp.float32))


@pytest.mark.parametrize(("length", "stride"), [(8, 1), (8, 2), (13, 2)])
def test_temporal_max_pool_matches_reduce_window(length, stride):
    x = jax.random.normal(jax.random.key(0), (2, length, 3, 4))
    want = nn.max_pool(x, (3, 1), strides=(stride, 1), padding=((1, 1), (0, 0)))
    np.testing.assert_array_equal(layers.temporal_max_pool3(x, stride), want)
