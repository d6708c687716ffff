"""BlockGCN: the topology descriptor, graphs, init, training mode (exactness against the
official model and the official listing: test_backbone_parity.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import csre_jax.models as models
from csre_jax.models import blockgcn, graphs

# one compile per input shape instead of op-by-op dispatch
descriptor = jax.jit(blockgcn.topology_descriptor)
deaths_of = jax.jit(blockgcn.persistence_deaths)


@pytest.fixture(scope="module")
def run(official_run):
    """The official checkpoint on the fixture's batch of 3: the logits depend on the batch."""
    return official_run("blockgcn")


def test_topology_rows_are_tiled_like_the_official_concat(run):
    """Feature row r = n*M + m gets a[r mod N]: rows r and r + N agree, samples differ."""
    pl = run.variables["params"]["topo"]["pl"]
    want = descriptor(run.io["joint"], pl["centres"], pl["sharpness"])
    np.testing.assert_allclose(run.tap("topo"), want, rtol=1e-6)
    t0 = run.tap("t0")  # (N*M, C) = (6, 128)
    np.testing.assert_array_equal(t0[:3], t0[3:])
    assert not np.allclose(t0[0], t0[1]) and not np.allclose(t0[1], t0[2])


@pytest.mark.parametrize(
    ("graph", "key"), [("ntu_hyperformer", "hops_hyperformer_blockgcn_ntu"), ("ucla", "hops_ucla")]
)
def test_hops_match_official_constants(shared_dir, graph, key):
    consts = json.loads((shared_dir / "spec" / "backbone_graph_constants.json").read_text())
    np.testing.assert_array_equal(graphs.hop_distance(graph), np.asarray(consts[key]))


@pytest.mark.parametrize(("dataset", "rpe_size"), [("ntu", 12), ("ucla", 11)])
def test_rpe_has_one_entry_per_hop_distance(dataset, rpe_size):
    model = models.create_model("blockgcn", num_classes=10, dataset=dataset)
    shapes = jax.eval_shape(model.init, jax.random.key(0), **models.example_inputs(model, dataset))
    assert shapes["params"]["l1"]["gcn1"]["rpe"].shape == (3, 8, rpe_size)


def test_inputs_of_the_wrong_shape_are_refused():
    model = models.create_model("blockgcn", num_classes=60, dataset="ntu")
    inputs = models.example_inputs(model, "ntu")
    variables = jax.eval_shape(model.init, jax.random.key(0), **inputs)
    with pytest.raises(ValueError, match="expects joint"):
        jax.eval_shape(model.apply, variables, inputs["x"], inputs["joint"][:, :, :32])
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(model.apply, variables, inputs["x"][..., :1], inputs["joint"][..., :1])


# --- the topology descriptor -----------------------------------------------------------------


def _kruskal(points: np.ndarray) -> np.ndarray:
    """Brute-force MST edge lengths (sorted) by Kruskal's algorithm with union-find."""
    num = len(points)
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    parent = list(range(num))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    edges = [(i, j) for i in range(num) for j in range(i + 1, num)]
    lengths = []
    for i, j in sorted(edges, key=lambda e: dist[e]):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[ri] = rj
            lengths.append(dist[i, j])
    return np.asarray(lengths)


def _prim_one_sample(points: jax.Array) -> jax.Array:
    """Prim's algorithm on one sample (P, D), the lengths in the order the tree grows."""
    dist = jnp.sqrt(jnp.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1))
    num = points.shape[0]

    def add_nearest(i, carry):
        in_tree, nearest, lengths = carry
        j = jnp.argmin(jnp.where(in_tree, jnp.inf, nearest))
        lengths = lengths.at[i].set(nearest[j])
        return in_tree.at[j].set(True), jnp.minimum(nearest, dist[j]), lengths

    in_tree = jnp.arange(num) == 0
    lengths = jnp.zeros(num - 1, dist.dtype)
    return jax.lax.fori_loop(0, num - 1, add_nearest, (in_tree, dist[0], lengths))[2]


mst_lengths = jax.jit(blockgcn.mst_edge_lengths)


@pytest.mark.parametrize(("batch", "ties"), [(1, False), (3, True), (16, False), (16, True)])
def test_batched_mst_grows_every_tree_like_prim_on_one_sample(batch, ties):
    """Same lengths in the same order as Prim's algorithm on each sample alone, the multiset of
    Kruskal's, also where ties (small integer coordinates, coinciding points, a sample of one
    point repeated) leave the choice of the next joint to argmin's first index."""
    rng = np.random.default_rng(batch)
    if ties:
        points = rng.integers(0, 3, size=(batch, 25, 4)).astype(np.float32)
        points[-1] = points[-1, :1]
    else:
        points = rng.uniform(size=(batch, 25, 25)).astype(np.float32)
    got = np.asarray(mst_lengths(points))
    np.testing.assert_array_equal(got, jax.jit(jax.vmap(_prim_one_sample))(points))
    for sample, lengths in zip(points, got, strict=True):
        np.testing.assert_allclose(np.sort(lengths), _kruskal(sample.astype(np.float64)), rtol=1e-5)


def _joint(seed: int, n: int = 3, v: int = 25, m: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 6, v, m)).astype(np.float32)


def _elements(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(64, 2)).astype(np.float32), rng.uniform(1, 3, (64, 2)).astype(
        np.float32
    )


def test_duplicate_joints_drop_edges_and_pad_with_ones():
    joint = _joint(1)
    joint[0, :, :, 3] = joint[0, :, :, 2]  # sample 0: two coinciding joints, one zero edge
    joint[1, :, :, 5:8] = joint[1, :, :, 4:5]  # sample 1: four coinciding joints, three
    deaths, valid = deaths_of(joint)
    np.testing.assert_array_equal(valid.sum(axis=1), [23, 21, 24])
    np.testing.assert_array_equal(np.asarray(deaths)[~np.asarray(valid)], 0.0)
    centres, sharpness = _elements()
    a = np.asarray(descriptor(joint, centres, sharpness))
    sq = sharpness.astype(np.float64) ** 2
    for n, padding in enumerate([1, 3, 0]):
        ell = np.asarray(deaths[n])[np.asarray(valid[n])].astype(np.float64)
        energy = sq[:, 0] * centres[:, 0] ** 2 + sq[:, 1] * (centres[:, 1] - ell[:, None]) ** 2
        np.testing.assert_allclose(a[n], np.exp(-energy).sum(0) + padding, rtol=1e-5)


def test_scaling_is_batch_global():
    joint = _joint(2)
    centres, sharpness = _elements()
    a = descriptor(joint, centres, sharpness)
    # min-max scaling: scaling every clip by one factor changes nothing
    np.testing.assert_allclose(descriptor(2.5 * joint, centres, sharpness), a, rtol=1e-4)
    # but scaling one clip changes the others' vectors, and so does dropping them
    other = joint.copy()
    other[2] *= 3.0
    changed = descriptor(other, centres, sharpness)
    assert not np.allclose(changed[0], a[0], rtol=1e-3)
    alone = descriptor(joint[:1], centres, sharpness)
    assert not np.allclose(alone[0], a[0], rtol=1e-3)
    deaths, _ = deaths_of(joint)
    assert float(deaths.max()) <= np.sqrt(25)  # rows of a [0, 1]-scaled matrix


def test_descriptor_gradients_reach_only_the_elements():
    joint = _joint(3)
    joint[0, :, :, 1] = joint[0, :, :, 0]  # a dropped edge must not poison the gradient
    centres, sharpness = _elements()
    grads = jax.jit(
        jax.grad(lambda j, c, s: blockgcn.topology_descriptor(j, c, s).sum(), argnums=(0, 1, 2))
    )(joint, centres, sharpness)
    np.testing.assert_array_equal(grads[0], 0.0)
    for g in grads[1:]:
        assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0


# --- initialisation and training -------------------------------------------------------------


def test_initialisation_follows_the_official_code():
    """An l5-like BlockGC (with down-projection), a TopoTrans and the Topo; the MS-TCN and
    unit_tcn are the shared layers tested with CTR-GCN.

    A whole model is not initialised here: its random draws take minutes to compile on CPU.
    """
    gcn = blockgcn.BlockGC(32, "ntu_hyperformer", num_heads=8)
    x = jax.random.normal(jax.random.key(1), (2, 4, 25, 16))
    gcn = jax.jit(gcn.init, static_argnums=2)(jax.random.key(0), x, False)["params"]
    np.testing.assert_array_equal(gcn["fc1"], np.broadcast_to(np.eye(25), (3, 8, 25, 25)))
    np.testing.assert_array_equal(gcn["rpe"], np.zeros((3, 8, 12)))
    for bn in (gcn["bn"], gcn["down_1"]):
        np.testing.assert_array_equal(bn["scale"], np.ones(32))  # gcn bn: 1, not 1e-6
    # grouped 1x1 conv: kernel (Cin/8, Cout), kaiming normal fan_out = Cout, bias 0
    fc2 = np.concatenate([gcn[f"fc2_{s}"]["kernel"] for s in range(3)])
    assert fc2.shape == (6, 32) and abs(fc2.std() - np.sqrt(2 / 32)) < 0.05
    np.testing.assert_array_equal(gcn["fc2_0"]["bias"], np.zeros(32))

    topo = jax.jit(blockgcn.Topo().init)(jax.random.key(2), _joint(4))["params"]["pl"]
    assert topo["centres"].shape == (64, 2)
    assert float(topo["centres"].min()) >= 0 and float(topo["centres"].max()) < 1
    np.testing.assert_array_equal(topo["sharpness"], np.full((64, 2), 3.0))
    trans = blockgcn.TopoTrans(128).init(jax.random.key(3), jnp.ones((4, 64)), False)
    kernel = np.asarray(trans["params"]["mlp"]["kernel"])  # PyTorch default U(+-1/sqrt(64))
    assert np.abs(kernel).max() <= 1 / 8 and np.abs(kernel).max() > 0.95 / 8
    np.testing.assert_array_equal(trans["params"]["bn"]["scale"], np.ones(128))


def _tiny_variables(shapes, seed: int = 0) -> dict:
    """Variables for a tiny model without model.init (minutes of compiling on CPU): the
    official constants (identity fc1, zero rpe, unit BN, sharpness 3) and random weights."""
    rng = np.random.default_rng(seed)

    def value(path, spec):
        name, shape = path[-1], spec.shape
        if name == "fc1":
            return np.broadcast_to(np.eye(shape[-1]), shape)
        if name in ("scale", "var"):
            return np.ones(shape)
        if name in ("bias", "mean", "rpe"):
            return np.zeros(shape)
        if name == "sharpness":
            return np.full(shape, 3.0)
        if name == "centres":
            return rng.uniform(size=shape)
        return rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))

    flat = traverse_util.flatten_dict(shapes)
    return traverse_util.unflatten_dict(
        {path: jnp.asarray(value(path, spec), jnp.float32) for path, spec in flat.items()}
    )


def test_tiny_ucla_model_trains():
    """NW-UCLA shapes (V = 20, M = 1) at a tiny width: train-mode logits, BatchNorm updates and
    gradients for every parameter, zero-initialised rpe included."""
    model = models.create_model(
        "blockgcn", num_classes=10, dataset="ucla", base_channels=8, num_heads=2
    )
    x, joint = (jnp.asarray(_joint(seed, n=2, v=20, m=1)) for seed in (5, 6))
    variables = _tiny_variables(jax.eval_shape(model.init, jax.random.key(0), x, joint))

    def loss(params):
        (logits, feats), updates = model.apply(
            {**variables, "params": params},
            x,
            joint,
            train=True,
            return_features=True,
            mutable=["batch_stats"],
        )
        return (logits**2).mean(), (logits, feats, updates["batch_stats"])

    # The step is compile-bound: without LLVM optimisations it compiles in half the time.
    step = jax.jit(
        jax.value_and_grad(loss, has_aux=True),
        compiler_options={"xla_backend_optimization_level": 0},
    )
    (_, (logits, feats, stats)), grads = step(variables["params"])
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert feats.shape == (2, 1, 2, 20, 16)  # T 6 -> 3 -> 2
    old = variables["batch_stats"]
    for path in (("data_bn",), ("t0", "bn"), ("l10", "tcn1", "branches_3_1")):
        new_mean = traverse_util.flatten_dict(stats)[(*path, "mean")]
        assert not np.allclose(new_mean, traverse_util.flatten_dict(old)[(*path, "mean")])
    flat_grads = traverse_util.flatten_dict(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in flat_grads.values())
    for path in (("l1", "gcn1", "rpe"), ("topo", "pl", "centres"), ("t9", "mlp", "kernel")):
        assert float(jnp.abs(flat_grads[path]).max()) > 0, path
