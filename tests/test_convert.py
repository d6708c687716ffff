"""pyskl pickles written by `python -m csre_jax.data.convert`: each source round-trips and
loads as a custom dataset."""

import numpy as np
import pytest

from configs import ctrgcn
from csre_jax.data import convert, pyskl, ucla
from csre_jax.data.datasets import load_dataset
from csre_jax.data.ntu_splits import ntu_row_to_sample
from csre_jax.data.ucla import load_ucla_clip
from tests import pyskl_files as files


def custom_data(path, layout):
    config = ctrgcn.get_config("custom,tiny")
    config.data.path, config.data.layout = str(path), str(layout)
    return config.data


def test_npy_folder_and_label_table(tmp_path, capsys):
    annotations = files.coco_annotations(count=6)
    for ann in annotations:
        packed = np.concatenate([ann["keypoint"], ann["keypoint_score"][..., None]], axis=-1)
        np.save(
            tmp_path / f"{ann['frame_dir']}.npy", packed[0] if ann is annotations[1] else packed
        )
    rows = ["name,label,split"] + [
        f"{a['frame_dir']},{a['label']}" + (",test" if i >= 4 else "")
        for i, a in enumerate(annotations)
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out" / "clips.pkl"
    argv = ["npy", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--out", str(out)]
    assert convert.main([*argv, "--scores", "--img-shape", "480,640"]) == 0
    assert "6 samples (train 4, test 2)" in capsys.readouterr().out
    content = pyskl.read(out)
    assert content["split"] == {
        "train": [f"clip{i:03d}" for i in range(4)],
        "test": ["clip004", "clip005"],
    }
    for ann, got in zip(annotations, content["annotations"], strict=True):
        persons = 1 if ann is annotations[1] else len(ann["keypoint"])
        np.testing.assert_array_equal(got["keypoint"], ann["keypoint"][:persons])
        np.testing.assert_array_equal(got["keypoint_score"], ann["keypoint_score"][:persons])
        assert (got["label"], got["total_frames"], got["img_shape"]) == (
            ann["label"], ann["total_frames"], (480, 640),
        )  # fmt: skip
    assert load_dataset(custom_data(out, "coco")).input_shapes() == {"x": (3, 16, 17, 2)}
    (tmp_path / "clip002.npy").unlink()
    with pytest.raises(SystemExit) as failed:
        convert.main(argv)
    assert failed.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and line.endswith("clip002.npy does not exist")


def test_write_annotations_checks_before_writing(tmp_path):
    samples = files.torso_annotations(count=4, num_classes=2)
    for sample in samples:
        del sample["total_frames"]  # filled in
    samples[0]["keypoint"] = samples[0]["keypoint"][0]  # one person's (T, V, C)
    path = convert.write_annotations(
        tmp_path / "torso.pkl", samples, {"all": ["take000", "take002"]}
    )
    content = pyskl.read(path)
    assert content["split"] == {"all": ["take000", "take002"]}
    first = content["annotations"][0]
    assert first["keypoint"].shape == (1, first["total_frames"], 7, 3)
    bad = tmp_path / "bad.pkl"
    with pytest.raises(ValueError, match=r"split 'all' names frame_dir 'take999'"):
        convert.write_annotations(bad, samples, {"all": ["take999"]})
    samples[3]["keypoint"] = samples[3]["keypoint"][..., :5, :]
    with pytest.raises(ValueError, match=r"annotation 3 \(frame_dir 'take003'\), field 'keypoint'"):
        convert.write_annotations(bad, samples, {"all": ["take000"]})
    assert not bad.exists() and not list(tmp_path.glob("*.tmp"))


def test_ntu_split_file(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"train": [30, 12, 50], "test": [40, 5]}
    labels = {"train": [0, 2, 1], "test": [1, 0]}
    arrays = {}
    for split, frames in lengths.items():
        x = np.zeros((len(frames), 60, 150), np.float32)
        for i, t in enumerate(frames):  # odd positions: one actor, the second person zero
            x[i, :t, : 75 if i % 2 else 150] = rng.normal(size=(t, 75 if i % 2 else 150))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, np.eye(60)[labels[split]]
    np.savez(tmp_path / "NTU60_CS.npz", **arrays)
    out = tmp_path / "ntu.pkl"
    assert convert.main(["ntu", str(tmp_path / "NTU60_CS.npz"), "--out", str(out)]) == 0
    content = pyskl.read(out)
    assert content["split"]["test"] == ["test_000000", "test_000001"]
    for ann in content["annotations"]:
        split, position = ann["frame_dir"].split("_")
        row = arrays[f"x_{split}"][int(position)]
        frames = lengths[split][int(position)]
        expected = ntu_row_to_sample(row)[:, :frames].transpose(3, 1, 2, 0)
        expected = expected[:1] if int(position) % 2 else expected  # the empty second person
        np.testing.assert_array_equal(ann["keypoint"], expected)
        assert ann["label"] == labels[split][int(position)]
    dataset = load_dataset(custom_data(out, "ntu"))
    assert dataset.train.num_classes == 3 and dataset.input_shapes() == {"x": (3, 16, 25, 2)}


def test_nw_ucla_clips(shared_dir, tmp_path):
    root = shared_dir / "data" / "NW-UCLA"
    if not (root / "all_sqe").is_dir():
        pytest.skip(f"NW-UCLA clips not found at {root}")
    out = tmp_path / "ucla.pkl"
    assert convert.main(["ucla", str(root), "--out", str(out)]) == 0
    content = pyskl.read(out)
    assert [len(content["split"][s]) for s in ("train", "test")] == [1020, 464]
    stems, labels = ucla.split_entries("val")
    ann = content["annotations"][1020 + 7]
    assert (ann["frame_dir"], ann["label"]) == (stems[7], labels[7])
    clip = load_ucla_clip(root / "all_sqe" / f"{stems[7]}.json").astype(np.float32)
    np.testing.assert_array_equal(ann["keypoint"], clip[None])
    dataset = load_dataset(custom_data(out, "ucla"))
    assert dataset.train.num_classes == 10 and dataset.input_shapes() == {"x": (3, 16, 20, 2)}
