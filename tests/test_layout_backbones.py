"""Every backbone on skeletons other than NTU and NW-UCLA: built from a Layout (built-in or a
user's JSON file), with 2D (x, y) or (x, y, score) inputs and any number of persons."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.layouts import load_layout
from csre_jax.models import hcn, torch_io

# Tiny widths: every block still runs, at a fraction of the compile and run time.
TINY = {
    "ctrgcn": {"base_channels": 8},
    "agcn": {"base_channels": 8},
    "hyperformer": {"num_heads": 2, "head_dim": 6},
    "blockgcn": {"base_channels": 8, "num_heads": 2},
    "hcn": {"out_channels": 8, "hidden": 16},
    "infogcn": {"base_channels": 8},
}
FRAMES = 16  # HCN's minimum (four 2x2 pools)
# A user skeleton with a cycle (hip - left knee - right knee - hip is closed by a brace).
USER_LAYOUT = {
    "name": "tripod",
    "joints": ["hip", "left_knee", "right_knee", "head", "left_foot", "right_foot"],
    "edges": [
        ["left_knee", "hip"],
        ["right_knee", "hip"],
        ["right_knee", "left_knee"],
        ["head", "hip"],
        ["left_foot", "left_knee"],
        ["right_foot", "right_knee"],
    ],
    "centre": "hip",
}
# (layout, channels, persons): the user's skeleton with a cycle, in plain 2D (x, y). COCO
# keypoints with scores and a 3-D JSON layout train end to end in tests/test_custom_data.py
# (three backbones on each).
CASES = [("user", 2, 1)]


def _key(seed: int) -> jax.Array:
    """RBG keys compile several times faster than threefry on XLA:CPU (init is draw-bound)."""
    return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def user_layout_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("layouts") / "tripod.json"
    path.write_text(json.dumps(USER_LAYOUT))
    return path


def _random_inputs(model, seed: int = 0, batch: int = 2, frames: int = FRAMES) -> dict:
    shapes = models.example_inputs(model, batch=batch, num_frames=frames)
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in shapes.items()}


def _random_variables(model, inputs: dict) -> dict:
    """Variables shaped by an abstract init (model.init's hundreds of random draws take half a
    minute to compile per model on two cores): random weights, positive variances."""
    shapes = jax.eval_shape(model.init, _key(0), **inputs)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if path[-1].key == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize(("layout", "channels", "persons"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_backbone_runs_on_the_layout(user_layout_path, name, layout, channels, persons):
    """Init (abstract) and one eval forward: logits for the batch, finite."""
    layout = str(user_layout_path) if layout == "user" else layout  # a name or a JSON file
    model = models.create_model(
        name,
        num_classes=5,
        layout=layout,
        num_person=persons,
        in_channels=channels,
        **TINY[name],
    )
    inputs = _random_inputs(model)
    joints = load_layout(layout).num_joints
    assert inputs["x"].shape == (2, channels, FRAMES, joints, persons)
    # The forward is compile-bound: without LLVM optimisations it compiles in half the time.
    apply = jax.jit(model.apply, compiler_options={"xla_backend_optimization_level": 0})
    logits = apply(_random_variables(model, inputs), **inputs)
    assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())


def test_hcn_of_another_window_round_trips_through_torch_export(tmp_path):
    """HCN's conv2 has one output channel per frame: a window-32 export loads back given
    num_frames=32 and gives the same logits; the default window (64) refuses it."""
    kwargs = {"num_classes": 5, "layout": "coco", "num_person": 2, **TINY["hcn"]}
    model = models.create_model("hcn", **kwargs)
    x = _random_inputs(model, seed=1, frames=32)["x"]
    logits, variables = jax.jit(model.init_with_output)(_key(1), x)
    path = tmp_path / "hcn_window32.pt"
    torch_io.save_state_dict(path, torch_io.state_dict_from_variables(variables, hcn.torch_key))

    loaded, loaded_variables = models.from_torch_checkpoint("hcn", path, num_frames=32, **kwargs)
    np.testing.assert_array_equal(jax.jit(loaded.apply)(loaded_variables, x), logits)
    with pytest.raises(
        torch_io.TorchCheckpointError,
        match=r"'conv2\.bias' has shape \(32,\) but the model expects \(64,\)",
    ):
        models.from_torch_checkpoint("hcn", path, **kwargs)


def test_joint_count_mismatch_names_the_layout():
    model = models.create_model("ctrgcn", num_classes=5, layout="coco", num_person=2)
    x = jax.ShapeDtypeStruct((2, 3, FRAMES, 25, 2), jnp.float32)
    with pytest.raises(ValueError, match="the layout 'coco' has 17 joints, the input 25"):
        jax.eval_shape(model.init, jax.random.key(0), x)


def test_disconnected_layout_is_refused(tmp_path):
    spec = {**USER_LAYOUT, "edges": USER_LAYOUT["edges"][:3]}  # head and feet hang loose
    path = tmp_path / "loose.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"edges.*do not connect \['head', 'left_foot'"):
        models.create_model("ctrgcn", num_classes=5, layout=str(path), num_person=1)


def test_layout_needs_the_persons():
    with pytest.raises(ValueError, match="num_person"):
        models.create_model("ctrgcn", num_classes=5, layout="coco")
