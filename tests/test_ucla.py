"""NW-UCLA split loading against the reference copy in shared/data/NW-UCLA."""

import json
import pickle
import shutil

import numpy as np
import pytest

from csre_jax.data import ucla

ACTION_TO_LABEL = {"01": 0, "02": 1, "03": 2, "04": 3, "05": 4, "06": 5, "08": 6, "09": 7}
ACTION_TO_LABEL |= {"11": 8, "12": 9}


@pytest.fixture(scope="module")
def root(shared_dir):
    path = shared_dir / "data" / "NW-UCLA"
    if not (path / "all_sqe").is_dir():
        pytest.skip(f"NW-UCLA clips not found at {path}")
    return path


@pytest.fixture(scope="module")
def official(shared_dir):
    with open(shared_dir / "spec" / "nw_ucla_split.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def loaded(root):
    return {s: ucla.load_split(root, s) for s in ucla.SPLITS}


def test_sizes_and_dtypes(loaded):
    assert len(loaded["train"][0]) == 1020 and len(loaded["val"][0]) == 464
    for clips, labels in loaded.values():
        assert labels.dtype == np.int32 and labels.shape == (len(clips),)
        assert set(labels.tolist()) == set(range(10))
        for clip in clips:
            assert clip.dtype == np.float32 and clip.ndim == 3 and clip.shape[1:] == (20, 3)
            assert clip.shape[0] >= 1 and np.isfinite(clip).all()


def test_matches_official_lists(loaded, official):
    for split in ucla.SPLITS:
        clips, labels = loaded[split]
        entries = official[split]
        stems, _ = ucla.split_entries(split)
        assert list(stems) == [e["file_name"] for e in entries]
        assert labels.tolist() == [e["label"] - 1 for e in entries]
        assert [c.shape[0] for c in clips] == [e["length"] for e in entries]
        assert labels.tolist() == [ACTION_TO_LABEL[s[1:3]] for s in stems]


def test_val_labels_match_pickle(loaded, root):
    with open(root / "val_label.pkl", "rb") as f:
        info = pickle.load(f)  # list of {"file_name", "length", "label" (1-based)}
    stems, labels = ucla.split_entries("val")
    assert [e["file_name"] for e in info] == list(stems)
    assert loaded["val"][1].tolist() == [e["label"] - 1 for e in info]


def test_views():
    train, _ = ucla.split_entries("train")
    val, _ = ucla.split_entries("val")
    assert {s[-3:] for s in train} == {"v01", "v02"}
    assert {s[-3:] for s in val} == {"v03"}
    assert len(set(train)) == 1020 and len(set(val)) == 464


def test_clip_values_and_all_sqe_root(loaded, root):
    stem = ucla.split_entries("val")[0][7]
    direct = ucla.load_split(root / "all_sqe", "val")[0][7]
    with open(root / "all_sqe" / f"{stem}.json", encoding="utf-8") as f:
        ref = np.asarray(json.load(f)["skeletons"], dtype=np.float32)
    np.testing.assert_array_equal(loaded["val"][0][7], ref)
    np.testing.assert_array_equal(direct, ref)


def test_repeat(loaded):
    clips, labels = loaded["train"]
    rep_clips, rep_labels = ucla.repeat_train(clips, labels)
    assert ucla.TRAIN_REPEAT == 5
    assert len(rep_clips) == 5100 and rep_labels.shape == (5100,)
    assert rep_labels.dtype == np.int32
    for i in (0, 1019, 1020, 2041, 5099):
        assert rep_clips[i] is clips[i % 1020] and rep_labels[i] == labels[i % 1020]
    assert rep_labels.tolist() == [labels[i % 1020] for i in range(5100)]


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        ucla.load_split(missing, "train")
    msg = str(e.value)
    assert str(missing) in msg and "data.root" in msg and "all_sqe" in msg and "download" in msg


def test_missing_clips(root, tmp_path):
    stems, _ = ucla.split_entries("val")
    (tmp_path / "all_sqe").mkdir()
    for stem in stems[:3]:
        shutil.copy(root / "all_sqe" / f"{stem}.json", tmp_path / "all_sqe")
    with pytest.raises(FileNotFoundError) as e:
        ucla.load_split(tmp_path, "val")
    msg = str(e.value)
    assert str(tmp_path / "all_sqe" / f"{stems[3]}.json") in msg
    assert "461 of the 464 val clips are missing" in msg
    assert "data.root" in msg and "download" in msg


def test_single_missing_clip(root, tmp_path):
    stems, _ = ucla.split_entries("val")
    for stem in stems[:-1]:
        (tmp_path / f"{stem}.json").symlink_to(root / "all_sqe" / f"{stem}.json")
    with pytest.raises(FileNotFoundError, match=stems[-1]) as e:
        ucla.load_split(tmp_path, "val")
    assert "clips are missing" not in str(e.value) and "data.root" in str(e.value)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        ucla.split_entries("test")
