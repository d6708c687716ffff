"""Feeder transforms: bit-exact parity with the official test-time feeders, training
randomness, and the definitions of rotation, bones and motion."""

import json

import numpy as np
import pytest

from csre_jax.data import transforms as T
from csre_jax.data.ntu_splits import ntu_row_to_sample
from csre_jax.data.ucla import load_ucla_clip

NTU_DATA = ("NTU60_CV", "NTU120_CSub")
UCLA_FIXTURE_CLIPS = 16


@pytest.fixture(scope="module")
def official(shared_dir):
    return dict(np.load(shared_dir / "fixtures" / "feeders_test_mode.npz"))


@pytest.fixture(scope="module")
def ntu_test_splits(shared_dir):
    """data -> (samples (N, 3, T, 25, 2), labels) of the split file's test part."""
    splits = {}
    for data in NTU_DATA:
        with np.load(shared_dir / "fixtures" / "ntu_pipeline_noisy" / f"{data}.npz") as f:
            samples = np.stack([ntu_row_to_sample(row) for row in f["x_test"]])
            splits[data] = samples, f["y_test"].argmax(axis=1)
    return splits


@pytest.fixture(scope="module")
def ucla_val(shared_dir):
    """(clips, labels, names) of the first clips of the official NW-UCLA val list."""
    split = json.loads((shared_dir / "spec" / "nw_ucla_split.json").read_text())
    entries = split["val"][:UCLA_FIXTURE_CLIPS]
    folder = shared_dir / "data" / "NW-UCLA" / "all_sqe"
    clips = [load_ucla_clip(folder / f"{e['file_name']}.json") for e in entries]
    return clips, [e["label"] - 1 for e in entries], [e["file_name"] for e in entries]


@pytest.mark.parametrize("variant", T.VARIANTS)
@pytest.mark.parametrize("stream", T.STREAMS)
@pytest.mark.parametrize("data", NTU_DATA)
def test_ntu_test_transform_matches_official(official, ntu_test_splits, data, stream, variant):
    samples, _ = ntu_test_splits[data]
    transform = T.ntu_transform(train=False, stream=stream, variant=variant)
    out = np.stack([transform(x, None) for x in samples])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, official[f"{variant}_{data}_{stream}"])


@pytest.mark.parametrize("variant", T.VARIANTS)
@pytest.mark.parametrize("stream", T.STREAMS)
def test_ucla_test_transform_matches_official(official, ucla_val, stream, variant):
    clips, _, _ = ucla_val
    transform = T.ucla_transform(train=False, stream=stream, variant=variant)
    out = np.stack([transform(clip, None) for clip in clips])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, official[f"{variant}_ucla_val_{stream}"])


@pytest.mark.parametrize("variant", T.VARIANTS)
def test_fixture_labels_and_names(official, ntu_test_splits, ucla_val, variant):
    for data in NTU_DATA:
        np.testing.assert_array_equal(official[f"{variant}_{data}_label"], ntu_test_splits[data][1])
    _, labels, names = ucla_val
    np.testing.assert_array_equal(official[f"{variant}_ucla_val_label"], labels)
    np.testing.assert_array_equal(official[f"{variant}_ucla_val_names"], names)


def test_ntu_row_layout():
    row = np.arange(300 * 150, dtype=np.float32).reshape(300, 150)
    x = ntu_row_to_sample(row)
    assert x.shape == (3, 300, 25, 2)
    # column = person * 75 + joint * 3 + coordinate
    assert x[2, 7, 4, 1] == row[7, 75 + 4 * 3 + 2]


def _random_ntu_sample(rng, frames=300, valid=171, second_person=True):
    x = np.zeros((3, frames, 25, 2), np.float32)
    x[:, :valid, :, : 1 + second_person] = rng.normal(size=(3, valid, 25, 1 + second_person))
    return x


def test_valid_count_and_train_crop_stays_inside():
    x = np.zeros((3, 300, 25, 2), np.float32)
    x[:, :120] = np.arange(1, 121, dtype=np.float32)[None, :, None, None]
    assert T.valid_frame_count(x) == 120
    for seed in range(5):
        out = T.crop_resize(x, 120, 64, (0.5, 1.0), np.random.default_rng(seed))
        frames = out[0, :, 0, 0]
        assert out.shape == (3, 64, 25, 2)
        assert frames.min() >= 1 and frames.max() <= 120 and np.all(np.diff(frames) >= 0)
        assert frames.max() - frames.min() >= 62  # a crop of at least 64 frames
    short = T.crop_resize(x, 40, 64, (0.5, 1.0), np.random.default_rng(0))[0, :, 0, 0]
    assert short.min() == 1 and short.max() == 40  # fewer than 64 valid: all of them


def test_resize_to_same_length_is_identity():
    x = np.random.default_rng(0).normal(size=(3, 64, 25, 2)).astype(np.float32)
    np.testing.assert_array_equal(T.crop_resize(x, 64, 64, (1.0,), None), x)


@pytest.mark.parametrize("variant", T.VARIANTS)
@pytest.mark.parametrize("stream", T.STREAMS)
def test_train_transforms_shapes_and_seeds(ucla_val, stream, variant):
    ntu = _random_ntu_sample(np.random.default_rng(0))
    clip = ucla_val[0][3]
    cases = (
        (T.ntu_transform(train=True, stream=stream, variant=variant), ntu, (3, 64, 25, 2)),
        (T.ucla_transform(train=True, stream=stream, variant=variant), clip, (3, 52, 20, 1)),
    )
    for transform, sample, shape in cases:
        a = transform(sample, np.random.default_rng(1))
        b = transform(sample, np.random.default_rng(1))
        c = transform(sample, np.random.default_rng(2))
        assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_train_transform_needs_generator():
    sample = _random_ntu_sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        T.ntu_transform(train=True, stream="joint", variant="csre")(sample, None)
    with pytest.raises(ValueError, match="rotation"):
        T.ntu_transform(train=False, stream="joint", variant="csre", rotate=True)
    with pytest.raises(ValueError, match="stream"):
        T.ucla_transform(train=False, stream="motion", variant="csre")


def test_single_frame_ucla_clip(shared_dir):
    clip = load_ucla_clip(shared_dir / "data" / "NW-UCLA" / "all_sqe" / "a02_s09_e04_v03.json")
    assert clip.shape == (1, 20, 3)
    for train, rng in ((False, None), (True, np.random.default_rng(0))):
        out = T.ucla_transform(train=train, stream="joint", variant="csre")(clip, rng)
        assert out.shape == (3, 52, 20, 1) and np.all(np.isfinite(out))
        assert np.all(out == out[:, :1])  # every frame is the one frame


def _pairwise_distances(x):
    """(T, M, V, V) distances between the joints of each frame and person."""
    p = x.transpose(1, 3, 2, 0)
    return np.linalg.norm(p[:, :, :, None] - p[:, :, None], axis=-1)


def test_rotation_is_rigid_and_keeps_absent_persons_zero():
    x = _random_ntu_sample(np.random.default_rng(0), frames=64, valid=64, second_person=False)
    out = T.random_rotation(x, np.random.default_rng(3))
    assert not np.allclose(out, x)
    np.testing.assert_allclose(_pairwise_distances(out), _pairwise_distances(x), atol=1e-5)
    assert np.all(out[..., 1] == 0)


def test_rotation_matrix_convention():
    a = 0.2
    c, s = np.cos(a), np.sin(a)
    # Rx maps y to (0, cos, -sin); Ry maps x to (cos, 0, sin); Rz maps x to (cos, -sin, 0).
    np.testing.assert_allclose(T.rotation_matrix(a, 0, 0) @ [0, 1, 0], [0, c, -s])
    np.testing.assert_allclose(T.rotation_matrix(0, a, 0) @ [1, 0, 0], [c, 0, s])
    np.testing.assert_allclose(T.rotation_matrix(0, 0, a) @ [1, 0, 0], [c, -s, 0])
    rx, ry, rz = (T.rotation_matrix(*np.eye(3)[i] * a) for i in range(3))
    np.testing.assert_allclose(T.rotation_matrix(a, a, a), rz @ ry @ rx)


SKELETONS = {"ntu": (T.NTU_BONE_PAIRS, 21, 25), "ucla": (T.UCLA_BONE_PAIRS, 3, 20)}


@pytest.mark.parametrize("variant", T.VARIANTS)
@pytest.mark.parametrize("skeleton", SKELETONS)
def test_streams_follow_their_definitions(skeleton, variant):
    pairs, root, joints = SKELETONS[skeleton]
    x = np.random.default_rng(0).normal(size=(3, 10, joints, 2)).astype(np.float32)
    stream = {s: T.to_stream(x, s, skeleton=skeleton, variant=variant) for s in T.STREAMS}
    csre = variant == "csre"
    for v1, v2 in pairs:
        expected = x[:, :, root - 1] if csre and v1 == root else x[:, :, v1 - 1] - x[:, :, v2 - 1]
        np.testing.assert_array_equal(stream["bone"][:, :, v1 - 1], expected)
    joint = x - x[:, :, root - 1 : root] if csre else x.copy()
    joint[:, :, root - 1] = x[:, :, root - 1]
    np.testing.assert_array_equal(stream["joint"], joint)
    for name in ("joint", "bone"):
        motion = stream[f"{name}_motion"]
        np.testing.assert_array_equal(motion[:, :-1], stream[name][:, 1:] - stream[name][:, :-1])
        assert np.all(motion[:, -1] == 0)


def test_bad_ucla_json_names_the_file(tmp_path):
    cases = {
        "broken.json": '{"skeletons": [[[0, 0, 0]',
        "nokey.json": '{"file_name": "a01_s01_e00_v01"}',
        "shape.json": '{"skeletons": [[[0, 0]]]}',
        "ragged.json": '{"skeletons": [[[0, 0, 0]], [[0, 0]]]}',
        "list.json": "[1, 2]",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=name):
            load_ucla_clip(path)
