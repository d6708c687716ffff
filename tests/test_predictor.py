"""Predictions get exactly the inputs evaluation gets: raw keypoints, an NTU `.skeleton` file
or an NW-UCLA clip become the official feeders' test-time samples, and a sequence the run
cannot take is refused with the shape it takes.

The predictors here are untrained (no checkpoint): preprocessing and input checks come
before any computation. tests/test_custom_data.py predicts from trained runs.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pyskl_files
import pytest

from csre_jax.data import ntu_splits, transforms, ucla
from csre_jax.layouts import load_layout
from csre_jax.model_card import ModelCard
from csre_jax.models.build import build_backbone
from csre_jax.predictor import Predictor, keypoints_from_skeleton_file


def _predictor(config, card: ModelCard) -> Predictor:
    config.num_devices = 1
    return Predictor(config, card, build_backbone(config, card), variables={})


@pytest.fixture(scope="module")
def coco_predictor(tmp_path_factory) -> Predictor:
    config = importlib.import_module("configs.ctrgcn").get_config("custom,tiny")
    config.data.path = str(pyskl_files.coco_file(tmp_path_factory.mktemp("coco")))
    config.data.coords = 2  # what loading the file fills in
    return _predictor(config, ModelCard(load_layout("coco"), {"x": (3, 16, 17, 2)}, ("a", "b")))


@pytest.fixture(scope="module")
def ntu_predictor() -> Predictor:
    config = importlib.import_module("configs.ctrgcn").get_config("ntu60,xview")
    card = ModelCard(load_layout("ntu"), {"x": (3, 64, 25, 2)}, tuple(map(str, range(60))))
    return _predictor(config, card)


@pytest.mark.parametrize(
    ("keypoints", "message"),
    [
        (np.zeros((2, 30, 25, 2)), r"keypoints of shape \(2, 30, 25, 2\): this run takes "),
        (np.zeros((2, 30, 17, 3)), r"\(persons, frames, 17, 2\) for its layout 'coco'"),
        (np.zeros((30, 17)), r"shape \(30, 17\)"),
        (np.full((1, 30, 17, 2), np.nan), "NaN or infinite"),
        (np.zeros((1, 30, 17, 2)), r"give keypoint_score of shape \(1, 30, 17\)"),
        ([], "no sequences"),
    ],
)
def test_input_the_run_cannot_take_is_refused(coco_predictor, keypoints, message):
    with pytest.raises(ValueError, match=message):
        coco_predictor.predict(keypoints)


def test_custom_keypoints_take_the_test_split_path(coco_predictor):
    """The same keypoints with and without the person axis, alone or in a list."""
    rng = np.random.default_rng(0)
    keypoint = rng.uniform(0, 1, (1, 40, 17, 2)) * [640, 480]  # x, y pixels of a 480 x 640 image
    score = rng.uniform(0, 1, (1, 40, 17))
    x = coco_predictor.inputs(keypoint, score, (480, 640))["x"]
    assert x.shape == (3, 16, 17, 2) and np.abs(x[:2]).max() <= 1
    np.testing.assert_array_equal(coco_predictor.inputs(keypoint[0], score, (480, 640))["x"], x)


def test_ntu_skeleton_file_becomes_the_official_test_sample(ntu_predictor, shared_dir):
    """Camera 1's four raw files through the predictor equal the official preparation's
    NTU60 X-view test rows through the CTR-GCN test feeder."""
    raw = sorted((shared_dir / "data" / "ntu" / "raw_samples").glob("S*C001*.skeleton"))
    ours = [ntu_predictor.inputs(keypoints_from_skeleton_file(path))["x"] for path in raw]
    rows = np.load(shared_dir / "fixtures" / "ntu_pipeline" / "NTU60_CV.npz")["x_test"]
    feeder = transforms.ntu_transform(train=False, stream="joint", variant="ctrgcn")
    official = [feeder(ntu_splits.ntu_row_to_sample(row), None) for row in rows]
    assert len(ours) == len(official) == 4
    matches = [min(range(4), key=lambda j, x=x: np.abs(x - official[j]).max()) for x in ours]
    assert sorted(matches) == [0, 1, 2, 3]
    for x, j in zip(ours, matches, strict=True):
        np.testing.assert_allclose(x, official[j], atol=1e-5)


def test_ntu_keypoints_anywhere_in_camera_space_are_centred(ntu_predictor, shared_dir):
    """The predictor centres NTU keypoints itself, as the preparation does: a user's own Kinect
    capture is in metres from the camera, not centred like `keypoints_from_skeleton_file`'s."""
    path = shared_dir / "data" / "ntu" / "raw_samples" / "S001C001P001R001A001.skeleton"
    centred = keypoints_from_skeleton_file(path)
    present = (centred != 0).any(axis=(2, 3), keepdims=True)  # absent frames stay 0
    camera = np.where(present, centred + [0.23, 0.43, 3.71], 0)  # spine mid in camera space
    np.testing.assert_allclose(
        ntu_predictor.inputs(camera)["x"],
        ntu_predictor.inputs(centred)["x"],
        atol=1e-5,
        err_msg="the predictor skipped the centring: keypoints away from the origin give "
        "another sample than the same keypoints centred",
    )


def test_ucla_clip_becomes_the_official_test_sample(shared_dir):
    """NW-UCLA clips through the predictor equal the official test feeder's outputs."""
    config = importlib.import_module("configs.ctrgcn").get_config("ucla,bone")
    predictor = _predictor(
        config, ModelCard(load_layout("ucla"), {"x": (3, 52, 20, 1)}, tuple(map(str, range(10))))
    )
    fixture = np.load(shared_dir / "fixtures" / "feeders_test_mode.npz")
    clips = shared_dir / "data" / "NW-UCLA" / "all_sqe"
    names, samples = fixture["ctrgcn_ucla_val_names"], fixture["ctrgcn_ucla_val_bone"]
    for name, official in list(zip(names, samples, strict=True))[:4]:
        clip = ucla.load_ucla_clip(clips / f"{name}.json")
        np.testing.assert_allclose(predictor.inputs(clip[None])["x"], official, atol=1e-5)


def test_a_custom_run_predicts_without_its_layout_file(tmp_path):
    """The model card's copy of the layout serves: the JSON file the run named may be gone."""
    config = importlib.import_module("configs.ctrgcn").get_config("custom,tiny")
    config.data.coords, config.data.layout = 2, str(tmp_path / "moved.json")
    card = ModelCard(load_layout("coco"), {"x": (3, 16, 17, 2)}, ("a", "b"))
    keypoint = np.full((1, 20, 17, 2), 100.0)
    x = _predictor(config, card).inputs(keypoint, np.ones((1, 20, 17)))["x"]
    assert x.shape == (3, 16, 17, 2)


def test_few_sequences_run_in_a_small_batch_with_the_same_logits(tmp_path):
    """One sequence runs as a batch of one, not padded to the evaluation batch, and a
    sequence's logits do not depend on the batch it ran in."""
    config = importlib.import_module("configs.ctrgcn").get_config("custom,tiny")
    config.data.path = str(pyskl_files.coco_file(tmp_path))
    config.data.coords, config.num_devices = 2, 1
    card = ModelCard(load_layout("coco"), {"x": (3, 16, 17, 2)}, ("a", "b"))
    backbone = build_backbone(config, card)
    variables = backbone.init(jax.random.key(0), jnp.zeros((1, 3, 16, 17, 2)), train=False)
    predictor = Predictor(config, card, backbone, variables, batch_size=8)
    assert [predictor.padded_size(n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    shapes, step = [], predictor._eval_step
    predictor._eval_step = lambda v, batch: shapes.append(len(batch["x"])) or step(v, batch)
    x = np.random.default_rng(0).normal(size=(10, 3, 16, 17, 2)).astype(np.float32)
    together = predictor.logits({"x": x})
    alone = np.concatenate([predictor.logits({"x": x[i : i + 1]}) for i in range(10)])
    assert shapes == [8, 8] + [1] * 10  # a long list: one shape, the last batch padded
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
