"""The validation split held out of the training data for tuning ensemble weights."""

import numpy as np
import pytest

from configs import ctrgcn, synthetic
from csre_jax.data.datasets import hold_out, load_dataset


def test_hold_out_is_stratified_disjoint_and_fixed_by_seed():
    labels = np.repeat(np.arange(5), [40, 20, 10, 2, 1])
    kept, held = hold_out(labels, 0.1, seed=3)
    assert np.intersect1d(kept, held).size == 0
    assert np.array_equal(np.union1d(kept, held), np.arange(len(labels)))
    per_class = np.bincount(labels[held], minlength=5)
    # a tenth of each class, at least one of a class with two, none of a singleton
    assert per_class.tolist() == [4, 2, 1, 1, 0]
    again, other_seed = hold_out(labels, 0.1, seed=3)[1], hold_out(labels, 0.1, seed=4)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other_seed)
    assert hold_out(labels, 0.0, seed=3)[1].size == 0
    with pytest.raises(ValueError, match="data.val_fraction=1.0"):
        hold_out(labels, 1.0, seed=0)


def test_every_stream_holds_out_the_same_samples_and_trains_on_the_rest():
    datasets = {}
    for stream in ("joint", "bone"):
        config = synthetic.get_config(stream)
        config.data.num_train, config.data.num_test, config.data.num_frames = 200, 20, 8
        datasets[stream] = load_dataset(config.data)
    joint, bone = datasets["joint"], datasets["bone"]
    assert np.array_equal(joint.val_ids, bone.val_ids) and len(joint.val) == 20
    full = synthetic.get_config()
    full.data.update(num_train=200, num_test=20, num_frames=8, val_fraction=0.0)
    everything = load_dataset(full.data)
    assert everything.val is None and len(everything.train) == 200
    for position in (0, 7):
        source = joint.val_ids[position]
        np.testing.assert_array_equal(joint.val.x[position], everything.train.x[source])
        assert joint.val.labels[position] == everything.train.labels[source]
    kept = np.setdiff1d(np.arange(200), joint.val_ids)
    np.testing.assert_array_equal(joint.train.x[13], everything.train.x[kept[13]])
    # the bone stream's transform sees the same held-out joints
    bone_x = bone.test_transform(np.asarray(bone.val.x[0]), None)
    assert not np.allclose(bone_x, joint.val.x[0])


def test_nw_ucla_holds_out_clips_before_repeating_the_training_list(shared_dir):
    root = shared_dir / "data" / "NW-UCLA"
    if not (root / "all_sqe").is_dir():
        pytest.skip(f"NW-UCLA clips not found at {root}")
    config = ctrgcn.get_config("ucla,joint")
    config.data.root, config.data.val_fraction = str(root), 0.05
    dataset = load_dataset(config.data)
    kept = 1020 - len(dataset.val)
    assert len(dataset.val) == len(dataset.val_ids) == 51 and dataset.full_train_size == 1020
    assert len(dataset.train) == 5 * kept  # the official five-fold repeat of the kept clips
    held = {id(dataset.val.x[i]) for i in range(len(dataset.val))}
    assert not held & {id(dataset.train.x[i]) for i in range(kept)}
    assert dataset.train.x[0] is dataset.train.x[kept]
