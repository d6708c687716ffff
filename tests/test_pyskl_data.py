"""Custom data from pyskl annotation pickles: shapes, the deterministic test path shared with
inference, pyskl's preprocessing, augmentation, person selection, every refused input, the
warnings about leaks between the splits, and score files that name the samples."""

import numpy as np
import pytest

from configs import ctrgcn
from csre_jax.data import pyskl, pyskl_transform
from csre_jax.data.datasets import load_dataset
from csre_jax.data.pipeline import eval_batches, train_dataset
from csre_jax.evaluate import scoring
from csre_jax.evaluate.scores import ensemble, load_scores, save_scores
from csre_jax.layouts import BUILTIN_LAYOUTS, load_layout
from csre_jax.workdir import val_scores_path
from tests import pyskl_files as files


def custom_config(path, layout="coco", arg="custom"):
    config = ctrgcn.get_config(arg)
    config.data.path, config.data.layout = str(path), str(layout)
    return config


@pytest.fixture
def coco(tmp_path):
    return files.coco_file(tmp_path)


def test_2d_coco_file_with_scores_loads_and_batches(coco):
    config = custom_config(coco, arg="custom,bone")
    config.data.val_fraction = 0.25
    dataset = load_dataset(config.data)
    assert (config.data.coords, config.data.use_score) == (2, True)  # filled in from the file
    assert dataset.layout == BUILTIN_LAYOUTS["coco"] and dataset.class_names is None
    assert (len(dataset.train) + len(dataset.val), len(dataset.test)) == (8, 4)
    assert dataset.train.num_classes == 3
    assert dataset.input_shapes() == {"x": (3, 100, 17, 2)}
    batch = next(
        iter(
            train_dataset(
                dataset.train, global_batch_size=4, seed=0, transform=dataset.train_transform
            )
        )
    )
    assert batch["x"].shape == (4, 3, 100, 17, 2) and batch["x"].dtype == np.float32
    tested = next(eval_batches(dataset.test, batch_size=4, transform=dataset.test_transform))
    assert tested["x"].shape == (4, 3, 100, 17, 2) and np.isfinite(tested["x"]).all()


def test_inference_transform_is_the_deterministic_test_path(coco):
    config = custom_config(coco, arg="custom,joint_motion")
    dataset = load_dataset(config.data)
    infer = pyskl_transform.inference_transform(config.data)
    annotations = pyskl.read(coco)["annotations"]
    for position in range(len(dataset.test)):
        ann = annotations[8 + position]
        got = infer(ann["keypoint"], ann["keypoint_score"], ann["img_shape"])
        again = dataset.test_transform(dataset.test.x[position], None)
        np.testing.assert_array_equal(got, again)
        np.testing.assert_array_equal(
            got, infer(ann["keypoint"], ann["keypoint_score"], ann["img_shape"])
        )
    assert got.shape == pyskl_transform.input_spec(config.data).shape == (3, 100, 17, 2)
    with pytest.raises(ValueError, match="keypoint_score"):
        infer(ann["keypoint"], None, None)


def test_2d_coordinates_are_scaled_by_the_image_as_pyskl_does():
    spec = pyskl_transform.InputSpec(BUILTIN_LAYOUTS["coco"], 2, True, 10, 2, "joint")
    keypoint = np.zeros((1, 3, 17, 2))
    keypoint[0, :, 0] = [320, 0]  # the top centre of a 480 x 640 image
    packed = pyskl_transform.pack(keypoint, np.full((1, 3, 17), 0.5), (480, 640), spec)
    np.testing.assert_allclose(packed[:, 0, 0, 0], [0, -1, 0.5])  # (C', M, T, V)
    np.testing.assert_allclose(packed[:, 0, 0, 1], [-1, -1, 0.5])
    default = pyskl_transform.pack(keypoint, np.ones((1, 3, 17)), None, spec)  # pyskl's 1080 x 1920
    np.testing.assert_allclose(default[:2, 0, 0, 0], [320 / 960 - 1, -1])


def test_uniform_sampling_follows_pyskl():
    short = pyskl_transform.uniform_sample(7, 10, None)
    np.testing.assert_array_equal(short, [0, 1, 2, 3, 4, 5, 6, 0, 1, 2])  # looped
    middle = pyskl_transform.uniform_sample(15, 10, None)
    assert len(set(middle)) == 10 and np.all(np.diff(middle) >= 1) and middle.max() <= 14
    long = pyskl_transform.uniform_sample(100, 10, None)
    np.testing.assert_array_equal(long // 10, np.arange(10))  # one frame per segment
    np.testing.assert_array_equal(long, pyskl_transform.uniform_sample(100, 10, None))
    draws = {
        tuple(pyskl_transform.uniform_sample(100, 10, np.random.default_rng(s))) for s in range(5)
    }
    assert len(draws) > 1
    assert {
        pyskl_transform.uniform_sample(7, 10, np.random.default_rng(s))[0] for s in range(20)
    } != {0}


def test_3d_user_layout_is_centred_and_aligned(tmp_path):
    pkl, layout_path = files.torso_files(tmp_path)
    config = custom_config(pkl, layout_path)
    dataset = load_dataset(config.data)
    assert config.data.coords == 3 and not config.data.use_score
    assert dataset.layout == load_layout(str(layout_path))
    assert dataset.input_shapes() == {"x": (3, 100, 7, 2)}
    # A turned, moved torso of exactly one window: the test path keeps frame 0 first.
    turn = np.array([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]])
    keypoint = (files.TORSO_POSE @ turn.T + [1, 2, 3])[None, None].repeat(100, axis=1)
    x = pyskl_transform.inference_transform(config.data)(keypoint)
    first = x[:, 0, :, 0].T  # (V, 3)
    np.testing.assert_allclose(first[1], 0, atol=1e-6)  # the centre joint is the origin
    spine, shoulders = first[1] - first[0], first[4] - first[3]
    np.testing.assert_allclose(spine / np.linalg.norm(spine), [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(shoulders / np.linalg.norm(shoulders), [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(first, files.TORSO_POSE - files.TORSO_POSE[1], atol=1e-5)
    assert not x[..., 1].any()  # one person, zero-padded to two
    config.data.align = "none"
    unaligned = pyskl_transform.inference_transform(config.data)(keypoint)[:, 0, :, 0].T
    np.testing.assert_allclose(unaligned, (keypoint[0, 0] - keypoint[0, 0, 1]), atol=1e-5)


def test_3d_training_rotates_about_the_origin(tmp_path):
    pkl, layout_path = files.torso_files(tmp_path)
    config = custom_config(pkl, layout_path)
    dataset = load_dataset(config.data)
    config.data.augment = False
    unrotated = pyskl_transform.sample_transform(config.data, train=True)
    for s in range(3):
        x = dataset.train.x[s]
        rotated = dataset.train_transform(x, np.random.default_rng(s))
        plain = unrotated(x, np.random.default_rng(s))  # the same frames, not rotated
        assert not np.allclose(rotated, plain)
        # a rotation keeps each joint's distance to the origin, and absent persons at zero
        np.testing.assert_allclose(
            np.linalg.norm(rotated, axis=0), np.linalg.norm(plain, axis=0), rtol=1e-4, atol=1e-6
        )


def test_flip_swaps_left_and_right_joints_and_negates_x():
    layout = BUILTIN_LAYOUTS["coco"]
    clip = np.random.default_rng(0).normal(size=(3, 4, 17, 2)).astype(np.float32)
    flipped = pyskl_transform.flip_2d(clip, np.array(layout.flip_permutation()))
    left, right = 5, 6  # the shoulders
    np.testing.assert_array_equal(flipped[0, :, left], -clip[0, :, right])
    np.testing.assert_array_equal(flipped[1:, :, left], clip[1:, :, right])  # y and score
    np.testing.assert_array_equal(flipped[0, :, 0], -clip[0, :, 0])  # the nose stays
    np.testing.assert_array_equal(
        pyskl_transform.flip_2d(flipped, np.array(layout.flip_permutation())), clip
    )


def test_2d_training_flips_about_half_the_draws():
    config = ctrgcn.get_config("custom")
    config.data.coords = 2  # as load_dataset fills it in for a 2-D file
    transform = pyskl_transform.sample_transform(config.data, train=True)
    spec = pyskl_transform.input_spec(config.data)
    keypoint = np.zeros((1, 50, 17, 2))
    keypoint[..., 0] = 480  # x = 0.5 in [-1, 1]: about -0.5 when flipped
    keypoint[..., 1] = 240  # y = 0
    packed = pyskl_transform.pack(keypoint, np.ones((1, 50, 17)), (480, 640), spec)
    flipped = [
        transform(packed, np.random.default_rng(s))[0, :, :, 0].mean() < 0 for s in range(200)
    ]
    assert 0.35 < np.mean(flipped) < 0.65


def test_persons_beyond_num_person_are_dropped_by_score_or_motion():
    spec = pyskl_transform.InputSpec(BUILTIN_LAYOUTS["coco"], 2, True, 8, 2, "joint")
    keypoint = np.stack([np.full((8, 17, 2), 100.0 * (m + 1)) for m in range(3)])
    score = np.stack([np.full((8, 17), s) for s in (0.9, 0.1, 0.5)])
    config = ctrgcn.get_config("custom").data
    config.update(coords=2, num_frames=8)
    x = pyskl_transform.inference_transform(config)(keypoint, score, (480, 640))
    np.testing.assert_allclose(x[2, 0, 0], [0.9, 0.5])  # persons 0 and 2, in their order
    np.testing.assert_allclose(x[1, 0, 0], [100 / 240 - 1, 300 / 240 - 1], rtol=1e-6)
    assert pyskl_transform.pack(keypoint, score, (480, 640), spec).shape == (3, 3, 8, 17)
    # 3-D without scores: the largest motion energy (NTU's rule)
    config.update(coords=3, align="none")
    rng = np.random.default_rng(0)
    moving = [rng.normal(0, s, (8, 17, 3)) + 5 for s in (0.1, 1.0, 0.01, 0.5)]
    x = pyskl_transform.inference_transform(config)(np.stack(moving))
    kept = x.transpose(3, 1, 2, 0)  # (M, T, V, C) centred on person 1's first centre joint
    origin = moving[1][0, 0]
    np.testing.assert_allclose(kept[0], moving[1] - origin, atol=1e-5)  # the main one first
    np.testing.assert_allclose(kept[1], moving[3] - origin, atol=1e-5)


def test_custom_tiny_keeps_the_users_file_and_shrinks_the_rest(coco):
    config = custom_config(coco, arg="custom,tiny")
    assert (config.data.name, config.data.path, config.data.num_frames) == ("custom", str(coco), 16)
    assert (config.data.batch_size, config.data.eval_batch_size, config.num_epochs) == (8, 16, 2)
    assert load_dataset(config.data).input_shapes() == {"x": (3, 16, 17, 2)}


def test_class_names_come_from_a_text_file(coco, tmp_path):
    config = custom_config(coco)
    names = tmp_path / "classes.txt"
    names.write_text("wave\nclap\njump\n\n")
    config.data.class_names = str(names)
    assert load_dataset(config.data).class_names == ("wave", "clap", "jump")
    names.write_text("wave\nclap\n")
    with pytest.raises(ValueError, match="names 2 classes but the labels give 3"):
        load_dataset(config.data)


def _set(index, **fields):
    def edit(annotations, splits):
        annotations[index].update(fields)

    return edit


def _drop_split(annotations, splits):
    del splits["test"]


def _gap(annotations, splits):
    for ann in annotations:
        ann["label"] = 2 * (ann["label"] == 2)  # labels 0 and 2, none 1


def _nan_keypoint(annotations, splits):
    annotations[4]["keypoint"][0, 3, 2, 0] = np.nan


def _inf_score(annotations, splits):
    annotations[4]["keypoint_score"][0, 1, 1] = np.inf


def _empty_split(annotations, splits):
    splits["test"] = []


def _unknown_frame_dir(annotations, splits):
    splits["test"].append("clip999")


def _no_annotations(annotations, splits):
    annotations.clear()


def _sample(joints=17, coords=2, frames=20, dims=4):
    """Replacement fields for a sample with these keypoint sizes."""
    shape = (1, frames, joints, coords)[4 - dims :]
    return {
        "keypoint": np.zeros(shape, np.float32),
        "keypoint_score": np.zeros(shape[:-1], np.float32),
        "total_frames": frames,
    }


MISSING_TEST = "no split 'test' (config field data.test_split); the file has ['train']"
# case: (edit, the frame_dir named, the field named, a fragment of the problem)
BAD_INPUTS = {
    "joint count": (_set(4, **_sample(joints=15)), "clip004", "keypoint", "15 joints but layout"),
    "3-D among 2-D": (_set(4, **_sample(coords=3)), "clip004", "keypoint", "(annotation 0: 2)"),
    "4 channels": (_set(0, **_sample(coords=4)), "clip000", "keypoint", "4 coordinates"),
    "not 4-D": (_set(4, **_sample(dims=3)), "clip004", "keypoint", "not 4-D"),
    "label below 0": (_set(4, label=-1), "clip004", "label", "is -1"),
    "label not an int": (_set(4, label="wave"), "clip004", "label", "'wave'"),
    "label gap": (_gap, None, "label", "classes [1] have no sample"),
    "NaN keypoint": (_nan_keypoint, "clip004", "keypoint", "NaN or infinite"),
    "inf score": (_inf_score, "clip004", "keypoint_score", "NaN or infinite"),
    "total_frames": (_set(4, total_frames=3), "clip004", "total_frames", "is 3 but keypoint"),
    "score shape": (_set(4, keypoint_score=np.zeros(3)), "clip004", "keypoint_score", "(M, T, V)"),
    "missing split": (_drop_split, None, "split", MISSING_TEST),
    "empty split": (_empty_split, None, "split", "(config field data.test_split) is empty"),
    "unknown frame_dir": (_unknown_frame_dir, "clip999", "split", "that no annotation has"),
    "repeated frame_dir": (_set(5, frame_dir="clip004"), "clip004", "frame_dir", "annotation 4"),
    "no annotations": (_no_annotations, None, "annotations", "non-empty list"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_file_the_sample_and_the_field(tmp_path, case):
    edit, frame_dir, field, fragment = BAD_INPUTS[case]
    annotations = files.coco_annotations()
    splits = files.halves(annotations)
    edit(annotations, splits)
    path = files.write_pickle(tmp_path / "bad.pkl", annotations, splits)
    with pytest.raises(ValueError) as error:
        load_dataset(custom_config(path).data)
    message = str(error.value)
    assert str(path) in message and f"'{field}'" in message and fragment in message, message
    if frame_dir is not None:
        assert repr(frame_dir) in message, message


def test_missing_path_and_wrong_coords_are_named(coco):
    with pytest.raises(ValueError, match="data.path is empty"):
        load_dataset(ctrgcn.get_config("custom").data)
    config = custom_config(coco)
    config.data.coords = 3
    with pytest.raises(ValueError, match=r"2-D but data.coords=3; set --config.data.coords=2"):
        load_dataset(config.data)
    with pytest.raises(ValueError, match="data.coords=0"):
        pyskl_transform.inference_transform(ctrgcn.get_config("custom").data)


def test_a_sample_in_both_splits_is_refused(tmp_path):
    annotations = files.coco_annotations()
    splits = files.halves(annotations)
    splits["test"] += ["clip005", "clip002"]
    path = files.write_pickle(tmp_path / "leak.pkl", annotations, splits)
    with pytest.raises(ValueError) as error:
        load_dataset(custom_config(path).data)
    message = str(error.value)
    assert message.startswith(f"{path}: field 'split': 2 frame_dir(s) are in both"), message
    assert "split 'train' (data.train_split) and split 'test' (data.test_split)" in message
    assert "first 'clip002', 'clip005'; " in message and "in one split only" in message
    assert "\n" not in message


def test_copied_keypoints_and_classes_without_training_samples_are_warned(tmp_path, capsys):
    annotations = files.coco_annotations()
    load_dataset(custom_config(files.coco_file(tmp_path)).data)
    assert capsys.readouterr().err == ""
    for test, train in ((9, 1), (10, 2)):  # a copy, and one that differs in its last frame
        for field in ("keypoint", "keypoint_score", "total_frames"):
            annotations[test][field] = np.copy(annotations[train][field])
    annotations[10]["keypoint"][:, -1] += 1
    annotations[11]["label"] = 3  # only in the test split
    path = files.write_pickle(tmp_path / "copies.pkl", annotations, files.halves(annotations))
    load_dataset(custom_config(path).data)
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 2, warned
    copies, unseen = warned
    assert copies.startswith(f"warning: {path}: field 'keypoint': 1 sample(s) of split 'test'")
    assert "first 'clip009' = 'clip001';" in copies
    assert unseen.startswith(f"warning: {path}: field 'label': 1 class(es) of split 'test'")
    assert "no sample in split 'train', first [3];" in unseen


def test_score_files_of_custom_data_name_their_samples(coco, tmp_path):
    config = custom_config(coco)
    config.data.val_fraction = 0.25
    dataset = load_dataset(config.data)
    splits = pyskl.read(coco)["split"]

    def scores(split):
        logits = np.eye(3, dtype=np.float32)[split.labels]
        return scoring.SplitScores(logits, np.zeros((len(split), 4)), 100.0, 100.0)

    test_path = tmp_path / "test_scores.npz"
    val = scores(dataset.val)
    scoring.write_score_files(test_path, {}, dataset, scores(dataset.test), val)
    tested, validated = load_scores(test_path), load_scores(val_scores_path(test_path))
    np.testing.assert_array_equal(tested.sample_names, splits["test"])
    np.testing.assert_array_equal(tested.sample_ids, np.arange(len(dataset.test)))
    np.testing.assert_array_equal(
        validated.sample_names, np.array(splits["train"])[validated.sample_ids]
    )
    assert tested.sample_names.dtype.kind == "U"
    fused = ensemble([test_path, test_path], [1.0, 1.0])
    np.testing.assert_array_equal(fused.sample_names, splits["test"])
    old = tmp_path / "old_scores.npz"  # written before names were saved
    save_scores(old, val.logits, dataset.val.labels, {})
    assert load_scores(old).sample_names is None
