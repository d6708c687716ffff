"""predict.py as a user types it, on a run trained on a 2-D COCO-17 file with keypoint scores:
a .npy with the score as its last channel, or with --scores and --img_shape, predicts what
the .pkl path predicts for the same sequence; --split picks a split's samples; labelled
inputs end with their accuracy; and a bad file or flag is one 'error:' line naming it.
"""

import re
from pathlib import Path

import numpy as np
import pyskl_files
import pytest
import tiny_runs

from csre_jax.data import pyskl, pyskl_transform
from csre_jax.model_card import ModelCard
from csre_jax.workdir import RunFolder

NUM_CLASSES = 6  # top-5 accuracy is printed from 5 classes on
SEQUENCE = re.compile(r"^(?P<name>\S+)(?: \(label: (?P<label>.*)\))?$")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predict_cli")


@pytest.fixture(scope="module")
def run(folder) -> RunFolder:
    return tiny_runs.coco_run(folder, NUM_CLASSES)


def _parse(stdout: str) -> tuple[dict[str, tuple[str | None, list]], list[str]]:
    """name -> (label or None, [(class, probability), ...]) in printed order, and the lines
    after them (the accuracy summary)."""
    lines = stdout.splitlines()
    sequences, name = {}, None
    while lines and lines[0]:
        line = lines.pop(0)
        if line.startswith("  "):
            class_name, probability = line.split(". ", 1)[1].rsplit(None, 1)
            sequences[name][1].append((class_name, float(probability)))
        else:
            match = SEQUENCE.match(line)
            name = match["name"]
            sequences[name] = (match["label"], [])
    return sequences, lines[1:]


@pytest.fixture(scope="module")
def test_split(run) -> tuple[dict, list[str]]:
    """predict.py on the file's test split, the default top 5."""
    path = run.root.parent / "coco.pkl"
    result = tiny_runs.predict_cli(run, f"--input={path}", "--split=test")
    assert result.returncode == 0, result.stderr
    return _parse(result.stdout)


def _first_test_sample(run: RunFolder) -> dict:
    content = pyskl.read(run.root.parent / "coco.pkl")
    first = content["split"]["test"][0]
    return next(a for a in content["annotations"] if a["frame_dir"] == first)


def _same(got: list, want: list) -> bool:
    """The same classes in the same order, probabilities equal to the printed digits (a
    rescaled image moves the float32 coordinates by rounding only)."""
    return [c for c, _ in got] == [c for c, _ in want] and np.allclose(
        [p for _, p in got], [p for _, p in want], atol=1.01e-3
    )


def test_split_predicts_its_samples_and_ends_with_their_accuracy(run, test_split):
    """The summary's numbers recounted from the printed predictions and labels."""
    sequences, summary = test_split
    assert list(sequences) == pyskl.read(run.root.parent / "coco.pkl")["split"]["test"]
    labels = [label for label, _ in sequences.values()]
    assert set(labels) <= set(ModelCard.load(run.model_card).class_names)
    tops = [[c for c, _ in top] for _, top in sequences.values()]
    count = len(labels)
    right = sum(top[0] == label for label, top in zip(labels, tops, strict=True))
    in5 = sum(label in top[:5] for label, top in zip(labels, tops, strict=True))
    assert summary[:4] == [
        f"accuracy over {count} labelled sequences:",
        f"  top-1 {100 * right / count:.1f}% ({right} of {count})",
        f"  top-5 {100 * in5 / count:.1f}% ({in5} of {count})",
        "  classes with the most errors:",
    ], summary

    taken = {c: [] for c in labels}  # class -> what its errors were predicted as
    for label, top in zip(labels, tops, strict=True):
        if top[0] != label:
            taken[label].append(top[0])
    worst = summary[4:]
    assert 1 <= len(worst) <= 3, summary
    for line in worst:
        name, rest = line.strip().split(": ", 1)
        samples, wrong = labels.count(name), taken[name]
        most = max(map(wrong.count, wrong))
        match = re.fullmatch(
            r"(\S+)% \((\d+) of (\d+)\), most often predicted as (.+) \((\d+) of (\d+)\)", rest
        )
        assert match is not None, line
        accuracy = 100 * (samples - len(wrong)) / samples
        assert match.groups() == (
            f"{accuracy:.1f}",
            str(samples - len(wrong)),
            str(samples),
            match[4],
            str(most),
            str(samples),
        ), line
        assert wrong.count(match[4]) == most, line
    listed = {line.strip().split(": ", 1)[0] for line in worst}
    unlisted = [len(wrong) for c, wrong in taken.items() if c not in listed]
    assert min(len(taken[c]) for c in listed) >= max(unlisted, default=0), (taken, worst)


def test_npy_with_the_score_as_last_channel_predicts_as_the_pkl(run, test_split, folder):
    """The pkl's first test sample as a batch of two, rescaled to the default image shape
    (no --img_shape), the score appended to x and y."""
    sample = _first_test_sample(run)
    h, w = pyskl_files.IMG_SHAPE
    default_h, default_w = pyskl_transform.DEFAULT_IMG_SHAPE
    keypoint = sample["keypoint"].astype(np.float64) * [default_w / w, default_h / h]
    array = np.concatenate([keypoint, sample["keypoint_score"][..., None]], axis=-1)
    np.save(folder / "clip.npy", np.stack([array, array]).astype(np.float32))
    result = tiny_runs.predict_cli(run, f"--input={folder / 'clip.npy'}", "--top_k=3")
    assert result.returncode == 0, result.stderr
    sequences, summary = _parse(result.stdout)
    want = test_split[0][sample["frame_dir"]][1][:3]
    assert list(sequences) == ["clip[0]", "clip[1]"] and summary == []
    for label, top in sequences.values():
        assert label is None and _same(top, want), (top, want)


def test_npy_with_scores_and_img_shape_predicts_as_the_pkl(run, test_split, folder):
    sample = _first_test_sample(run)
    np.save(folder / "keypoint.npy", sample["keypoint"].astype(np.float32))
    np.save(folder / "score.npy", sample["keypoint_score"].astype(np.float32))
    h, w = pyskl_files.IMG_SHAPE
    result = tiny_runs.predict_cli(
        run,
        f"--input={folder / 'keypoint.npy'}",
        f"--scores={folder / 'score.npy'}",
        f"--img_shape={h},{w}",
    )
    assert result.returncode == 0, result.stderr
    sequences, _ = _parse(result.stdout)
    want = test_split[0][sample["frame_dir"]][1]
    assert _same(sequences["keypoint"][1], want), (sequences, want)


# Each bad input and the one error line it gets.
BAD_INPUTS = {
    "empty": r"--input=\S*empty\.npy: not a readable \.npy \(EOFError",
    "wrong_joints": r"--input=\S*wrong_joints\.npy: an array of shape \(1, 30, 25, 3\); ",
    "no_scores": r"--input=\S*no_scores\.npy: .*give the score as the last channel",
    "split": r"--split=val: \S*coco\.pkl has no such split; its splits: train, test$",
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line(run, folder, case):
    if case == "split":
        flags = [f"--input={run.root.parent / 'coco.pkl'}", "--split=val"]
    else:
        path = folder / f"{case}.npy"
        if case == "empty":
            path.write_bytes(b"")
        else:
            np.save(path, np.zeros((1, 30, 25, 3) if case == "wrong_joints" else (1, 30, 17, 2)))
        flags = [f"--input={path}"]
    result = tiny_runs.predict_cli(run, *flags)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and re.search(BAD_INPUTS[case], errors[0]), errors
