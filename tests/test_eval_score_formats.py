"""Both score file formats round-trip, and files of another test set fail with a clear error."""

import pickle

import numpy as np
import pytest

from csre_jax.evaluate.class_names import class_names
from csre_jax.evaluate.ctrgcn_pickle import load_labels, load_pickle_scores, save_pickle_scores
from csre_jax.evaluate.runs import load_run
from csre_jax.evaluate.scores import load_scores, save_scores

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 4)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3, 1, 0])


def _ours(path, dataset="ntu60", **kwargs):
    metadata = {"dataset": dataset, "benchmark": "xsub", "stream": "bone", "split": "test"}
    save_scores(path, LOGITS, LABELS, metadata, **kwargs)
    return path


def _pickle(path, scores):
    with open(path, "wb") as f:
        pickle.dump(scores, f)
    return path


def test_our_score_file_round_trips_with_sample_ids_and_features(tmp_path):
    features = RNG.normal(size=(6, 3)).astype(np.float32)
    path = _ours(tmp_path / "s.npz", sample_ids=np.arange(10, 16), features=features)
    run = load_scores(path)
    np.testing.assert_array_equal(run.logits, LOGITS)
    np.testing.assert_array_equal(run.labels, LABELS)
    np.testing.assert_array_equal(run.sample_ids, np.arange(10, 16))
    np.testing.assert_array_equal(run.features, features)
    assert run.metadata["stream"] == "bone"
    assert run.path == str(path)


def test_ntu_pickle_round_trips_through_our_format(tmp_path):
    ours = _ours(tmp_path / "test_scores.npz")
    exported = tmp_path / "epoch1_test_score.pkl"
    save_pickle_scores(exported, load_scores(ours))
    with open(exported, "rb") as f:
        raw = pickle.load(f)
    assert list(raw) == [f"test_{i}" for i in range(6)]  # CTR-GCN's NTU names, test order
    np.testing.assert_array_equal(raw["test_2"], LOGITS[2])
    run = load_pickle_scores(exported, ours, stream="bone")
    np.testing.assert_array_equal(run.logits, LOGITS)
    np.testing.assert_array_equal(run.labels, LABELS)
    np.testing.assert_array_equal(run.sample_ids, np.arange(6))
    assert run.metadata["dataset"] == "ntu60"
    assert run.metadata["stream"] == "bone"


def test_ucla_pickle_round_trips_with_val_label_pkl(tmp_path):
    exported = tmp_path / "ucla.pkl"
    save_pickle_scores(exported, load_scores(_ours(tmp_path / "s.npz", dataset="ucla")))
    with open(exported, "rb") as f:
        assert list(pickle.load(f)) == list(range(6))  # NW-UCLA names are integers
    # NW-UCLA's val_label.pkl: 1-based labels in list order
    val_label = [{"file_name": f"a{i}", "label": int(y) + 1} for i, y in enumerate(LABELS)]
    labels_file = _pickle(tmp_path / "val_label.pkl", val_label)
    run = load_pickle_scores(exported, labels_file)
    np.testing.assert_array_equal(run.labels, LABELS)
    np.testing.assert_array_equal(run.logits, LOGITS)
    assert run.metadata["dataset"] == "ucla"


def test_pickle_takes_labels_from_an_ntu_split_file(tmp_path):
    split = tmp_path / "NTU60_CS.npz"
    np.savez(split, x_test=np.zeros((6, 1)), y_test=np.eye(60)[LABELS])
    pkl = _pickle(tmp_path / "s.pkl", {f"test_{i}": row for i, row in enumerate(LOGITS)})
    run = load_pickle_scores(pkl, split)
    np.testing.assert_array_equal(run.labels, LABELS)
    assert run.metadata["dataset"] == "ntu60"


def test_real_nw_ucla_val_label_pkl(shared_dir):
    labels = load_labels(shared_dir / "data" / "NW-UCLA" / "val_label.pkl")
    assert len(labels.labels) == 464
    assert labels.labels.min() == 0 and labels.labels.max() == 9


def test_pickle_errors_name_the_file_and_the_fix(tmp_path):
    ours = _ours(tmp_path / "test_scores.npz")
    rows = {f"test_{i}": row for i, row in enumerate(LOGITS)}
    short = _pickle(tmp_path / "short.pkl", dict(list(rows.items())[:5]))
    with pytest.raises(ValueError, match="short.pkl holds 5 samples but .*labels 6"):
        load_pickle_scores(short, ours)
    swapped = dict(rows)
    swapped["test_1"], swapped["test_2"] = rows["test_2"], rows["test_1"]
    names = ["test_0", "test_2", "test_1", "test_3", "test_4", "test_5"]
    shuffled = _pickle(tmp_path / "shuffled.pkl", {n: swapped[n] for n in names})
    with pytest.raises(ValueError, match="out of test order: position 1 is 'test_2'"):
        load_pickle_scores(shuffled, ours)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="garbage.pkl: not a readable pickle"):
        load_pickle_scores(garbage, ours)
    with pytest.raises(ValueError, match="holds no labels; pass --labels="):
        load_run(str(short))
    with pytest.raises(FileNotFoundError, match="missing.npz: labels file not found; pass"):
        load_pickle_scores(short, tmp_path / "missing.npz")


def test_class_names_follow_the_dataset_and_class_count():
    assert class_names("ntu120", 120)[57] == "A58 handshaking"
    assert class_names("ntu60", 60)[-1] == "A60 walking apart from each other"
    assert class_names(None, 120)[-1].startswith("A120 finger-guessing game")
    assert class_names("ucla", 10)[0] == "pick up with one hand"
    assert class_names("ucla", 10)[-1] == "carry"
    assert class_names("synthetic", 3) == ["wave right hand", "clap", "jumping jack"]
    assert class_names("", 7) == [f"class {i}" for i in range(7)]
