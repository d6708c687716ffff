"""The CSRE heads: sizes from the spec's table, person averaging, which banks are built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csre_jax.csre.heads import STFD, GlobalHead
from csre_jax.csre.model import ContrastiveClassifier
from csre_jax.models import create_model


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
    ("frames", "joints", "expected"),
    [(16, 25, 352_832), (13, 20, 287_296)],  # csre.md §2.4: CTR-GCN on NTU / NW-UCLA
)
def test_stfd_parameter_count_matches_the_official_head(frames, joints, expected):
    feature_map = jnp.zeros((2, 2, frames, joints, 256))
    params = STFD().init(jax.random.key(0), feature_map)["params"]
    assert _count(params) == expected
    # the 1x1 reductions are 256 -> 32 and the projections read channel-major flattenings
    assert params["spatial"]["project"]["kernel"].shape == (32 * joints, 256)
    assert params["temporal"]["project"]["kernel"].shape == (32 * frames, 256)


def test_heads_average_persons_after_an_affine_map():
    feature_map = jax.random.normal(jax.random.key(1), (3, 2, 4, 5, 16))
    stfd = STFD(dim=8, reduction=4)
    variables = stfd.init(jax.random.key(0), feature_map)
    both = stfd.apply(variables, feature_map)
    one_each = [stfd.apply(variables, feature_map[:, m : m + 1]) for m in range(2)]
    for name in ("spatial", "temporal"):
        assert both[name].shape == (3, 8)
        mean = (one_each[0][name] + one_each[1][name]) / 2
        np.testing.assert_allclose(both[name], mean, rtol=1e-5, atol=1e-6)
    pooled = GlobalHead(dim=8)
    out = pooled.apply(pooled.init(jax.random.key(0), feature_map), feature_map)
    assert out.shape == (3, 8)


@pytest.mark.parametrize(
    ("banks", "heads"),
    [
        ((), set()),
        (("spatial",), {"stfd"}),
        (("spatial", "temporal", "global"), {"stfd", "global_head"}),
        (("global",), {"global_head"}),
    ],
)
def test_classifier_builds_only_the_heads_of_its_banks(banks, heads):
    backbone = create_model("ctrgcn", num_classes=5, dataset="ucla", base_channels=8)
    model = ContrastiveClassifier(backbone, banks, dim=16)
    x = jnp.zeros((2, 3, 8, 20, 1))
    variables = model.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"backbone"} | heads
    logits, embeddings = model.apply(variables, x)
    assert logits.shape == (2, 5)
    assert set(embeddings) == set(banks)
    assert all(e.shape == (2, 16) for e in embeddings.values())
    # the logits are the backbone's alone: the heads never change them
    backbone_only = backbone.apply(
        {
            "params": variables["params"]["backbone"],
            "batch_stats": variables["batch_stats"]["backbone"],
        },
        x,
    )
    np.testing.assert_array_equal(logits, backbone_only)


def test_unknown_bank_is_refused():
    with pytest.raises(ValueError, match="unknown bank"):
        ContrastiveClassifier(create_model("ctrgcn", num_classes=5, dataset="ucla"), ("graph",))


@pytest.fixture(scope="module")
def csre_checkpoint(shared_dir):
    """The released Hyperformer + CSRE fixture loaded into the training model."""
    from csre_jax.csre.model import load_torch_checkpoint, torch_key_fn  # noqa: PLC0415
    from csre_jax.models import hyperformer  # noqa: PLC0415

    path = shared_dir / "fixtures" / "hyperformer_csre_ntu60.pt"
    io = np.load(shared_dir / "fixtures" / "hyperformer_csre_ntu60_io.npz")
    model = ContrastiveClassifier(create_model("hyperformer", num_classes=60, dataset="ntu"))
    fresh = jax.eval_shape(model.init, jax.random.key(0), io["x"])
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    variables = load_torch_checkpoint(fresh, path, hyperformer.torch_key)
    outputs = jax.jit(model.apply)(variables, io["x"])
    return path, io, variables, outputs, torch_key_fn(hyperformer.torch_key)


def test_released_csre_head_matches_official_outputs(csre_checkpoint):
    _, io, _, (logits, embeddings), _ = csre_checkpoint
    for got, want in [
        (logits, io["logits"]),
        (embeddings["spatial"], io["stfd_spatial"]),
        (embeddings["temporal"], io["stfd_temporal"]),
    ]:
        assert np.abs(np.asarray(got) - want).max() <= 1e-4 * np.abs(want).max()


def test_csre_checkpoint_exports_back_with_std_keys(csre_checkpoint):
    from csre_jax.models import torch_io  # noqa: PLC0415

    path, _, variables, _, key_fn = csre_checkpoint
    original = torch_io.load_state_dict(path)
    exported = torch_io.state_dict_from_variables(variables, key_fn)
    assert exported.keys() == original.keys()
    assert {k for k in original if k.startswith("std.")} == {
        f"std.{layer}.{leaf}"
        for layer in ("conv1", "convs", "conv2", "convt")
        for leaf in ("weight", "bias")
    }
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_backbone_only_checkpoint_keeps_the_heads(tmp_path, csre_checkpoint):
    """A backbone-only .pt (as saved here) fills the backbone; the heads keep their values."""
    from csre_jax.csre.model import load_torch_checkpoint  # noqa: PLC0415
    from csre_jax.models import hyperformer, torch_io  # noqa: PLC0415

    _, _, variables, _, _ = csre_checkpoint
    backbone = {c: variables[c]["backbone"] for c in variables}
    path = tmp_path / "backbone.pt"
    torch_io.save_state_dict(
        path, torch_io.state_dict_from_variables(backbone, hyperformer.torch_key)
    )
    heads = jax.tree.map(np.ones_like, variables["params"]["stfd"])
    zeros = jax.tree.map(np.zeros_like, variables)
    start = zeros | {"params": zeros["params"] | {"stfd": heads}}
    loaded = load_torch_checkpoint(start, path, hyperformer.torch_key)
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["backbone"], backbone["params"])
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["stfd"], heads)
    with pytest.raises(torch_io.TorchCheckpointError, match="backbone.pt: the state_dict does not"):
        load_torch_checkpoint(start, path, lambda c, p, n: ("renamed." + p[-1], "raw"))
