"""A custom dataset of a hundred samples trains with CSRE from the full recipe: its positives
and negatives per anchor follow the training set (csre_jax/csre/sampling.py), and explicit
counts the training set cannot supply are refused before anything is built."""

import contextlib
import io
import json

import numpy as np
import pyskl_files
import pytest

from configs import ctrgcn, synthetic
from csre_jax.config_checks import ConfigError, check_config
from csre_jax.csre import sampling
from csre_jax.errors import UserError
from csre_jax.layouts import BUILTIN_LAYOUTS
from csre_jax.training import loop
from csre_jax.workdir import RunFolder

NUM_CLASSES, NUM_TRAIN, NUM_TEST = 10, 100, 30
# The rule on 10 classes of 10: a quarter of the smallest class's 10 slots and of the 90
# outside the largest.
RULE = (2, 22)


def _ucla_file(folder):
    """3-D NW-UCLA-layout samples, one person, a class-dependent pose plus noise."""
    rng = np.random.default_rng(0)
    joints = BUILTIN_LAYOUTS["ucla"].num_joints
    poses = rng.normal(0, 0.5, (NUM_CLASSES, joints, 3))
    annotations = []
    for i in range(NUM_TRAIN + NUM_TEST):
        frames, label = int(rng.integers(20, 60)), i % NUM_CLASSES
        keypoint = poses[label] + rng.normal(0, 0.05, (1, frames, joints, 3))
        annotations.append(
            {
                "frame_dir": f"clip{i:03d}",
                "label": label,
                "total_frames": frames,
                "keypoint": keypoint.astype(np.float32),
            }
        )
    names = [a["frame_dir"] for a in annotations]
    splits = {"train": names[:NUM_TRAIN], "test": names[NUM_TRAIN:]}
    return pyskl_files.write_pickle(folder / "ucla_small.pkl", annotations, splits)


def _config(path):
    """configs/ctrgcn.py:custom as a user runs it, cut to seconds: widths, window, batch
    and epochs."""
    config = ctrgcn.get_config("custom")
    config.data.path, config.data.layout = str(path), "ucla"
    config.data.num_frames, config.data.batch_size, config.data.eval_batch_size = 16, 20, 30
    config.model.kwargs.base_channels = 8
    config.num_epochs, config.num_devices = 1, 1
    return config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return _ucla_file(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    """One tiny run: (its folder, what it printed, the config it was given)."""
    run = RunFolder(tmp_path_factory.mktemp("run") / "run")
    config = _config(data_file)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        loop.train_and_evaluate(config, run.root)
    return run, printed.getvalue(), config


def test_trains_with_the_counts_of_the_rule(trained):
    run, printed, _ = trained
    saved = json.loads(run.config.read_text())["csre"]
    assert (saved["num_positives"], saved["num_negatives"]) == RULE
    line = f"CSRE sampling: {RULE[0]} positives, {RULE[1]} negatives per anchor (followed the"
    assert line in printed, printed
    epochs = [
        r for r in map(json.loads, run.metrics.read_text().splitlines()) if r["kind"] == "epoch"
    ]
    assert len(epochs) == 1 and all(np.isfinite(r["loss"]) for r in epochs), epochs
    for bank in ("spatial", "temporal"):  # CSRE took part: anchors met the counts
        assert epochs[-1][f"valid_{bank}"] > 0 and epochs[-1][f"loss_{bank}"] > 0, epochs[-1]


def test_the_same_command_resumes_the_finished_run(trained):
    run, _, config = trained
    assert config.csre.num_positives == 0  # the caller's config still follows the data
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        loop.train_and_evaluate(config, run.root)
    assert "finished, all" in printed.getvalue(), printed.getvalue()


def _csre(positives=0, negatives=0, bank_size=0):
    config = ctrgcn.get_config("custom").csre
    config.update(num_positives=positives, num_negatives=negatives, bank_size=bank_size)
    return config


def test_the_rule_takes_the_smallest_class_and_the_slots_outside_the_largest():
    labels = np.repeat(np.arange(4), [12, 40, 40, 100])  # 192 slots
    counts = sampling.resolve(_csre(), labels)
    assert (counts.positives, counts.negatives) == (3, 23)  # 12 / 4, (192 - 100) / 4
    assert "12 slots of the smallest class and 92 outside the largest" in counts.description
    counts = sampling.resolve(_csre(positives=12), labels)  # one given, one followed
    assert (counts.positives, counts.negatives) == (12, 23)
    assert counts.description.startswith("negatives followed the training set"), counts
    counts = sampling.resolve(_csre(), np.arange(40_000) % 60)  # NTU-sized: capped
    assert (counts.positives, counts.negatives) == (128, 512)


def test_a_queue_offers_its_share_of_each_class():
    labels = np.arange(1000) % 10  # 100 per class
    counts = sampling.resolve(_csre(bank_size=200), labels)  # 20 per class expected
    assert (counts.positives, counts.negatives) == (5, 45)  # 20 / 4, 180 / 4
    assert "200-row queue expects 20 rows" in counts.description
    with pytest.raises(UserError, match=r"csre.num_positives=21: .* at most 20 positives"):
        sampling.resolve(_csre(positives=21, bank_size=200), labels)


def test_the_published_recipes_keep_128_and_512(shared_dir):
    train = json.loads((shared_dir / "spec" / "nw_ucla_split.json").read_text())["train"]
    ucla = np.array([e["label"] for e in train] * 5)  # a slot per clip and repeat
    for arg, labels in (("ntu60", np.arange(40_091) % 60), ("ucla", ucla)):
        counts = sampling.resolve(ctrgcn.get_config(arg).csre, labels)
        assert (counts.positives, counts.negatives) == (128, 512), arg
        assert counts.description.startswith("as configured"), counts.description


def test_only_custom_data_takes_0_and_no_dataset_a_negative_count():
    config = ctrgcn.get_config("custom")
    check_config(config)  # 0 / 0 by default
    config.csre.num_negatives = -1
    with pytest.raises(ConfigError, match=r"num_negatives=-1: must be 0 \(follow the training"):
        check_config(config)
    config = ctrgcn.get_config("ucla")
    config.csre.num_positives = 0
    with pytest.raises(ConfigError, match="num_positives=0: must be positive"):
        check_config(config)


def test_a_single_class_has_no_negatives():
    with pytest.raises(UserError, match="single class.*csre.banks=none"):
        sampling.resolve(_csre(), np.zeros(10, int))


def test_counts_the_data_cannot_supply_are_refused_before_building(data_file, monkeypatch):
    monkeypatch.setattr(loop, "build_backbone", lambda *_: pytest.fail("built the model"))
    config = _config(data_file)
    config.csre.num_positives = 300
    with pytest.raises(UserError) as error:
        loop.build(config)
    assert str(error.value) == (
        "csre.num_positives=300: more than this training set can offer (the bank has 10 "
        "slots of the smallest class and 90 outside the largest: at most 10 positives per "
        "anchor for every class to count); lower them, e.g. --config.csre.num_positives=2"
    )
    config = synthetic.get_config()  # any dataset: 32 / 128 explicit, 4 samples per class
    config.data.update(num_train=40, val_fraction=0.0)
    with pytest.raises(UserError, match=r"^csre.num_positives=32 and csre.num_negatives=128: "):
        loop.build(config)
