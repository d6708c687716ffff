"""Actions along one long sequence (csre_jax.stream, Predictor.predict_stream, predict.py
--window): the window, smoothing and segment rules on made-up probabilities, then a run
trained on three hand actions finds where they change in a sequence of them back to back.
"""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pyskl_files
import pytest
import tiny_runs

from csre_jax import stream
from csre_jax.errors import UserError
from csre_jax.training import loop
from csre_jax.workdir import RunFolder

ACTIONS = ("raise left hand", "raise right hand", "clap")
HANDS = (5, 6)  # TORSO_LAYOUT's left and right hand
PERIOD = 15  # frames per hand cycle, about
# The long sequence: (label, frames) back to back; boundaries at 64, 112 and 176.
PLAN = ((0, 64), (2, 48), (1, 64), (0, 40))
WINDOW, STRIDE, SMOOTH, FPS = 32, 8, 3, 15.0
SEGMENT = re.compile(
    r"^  frames +(\d+)-(\d+) +([\d.]+)-([\d.]+) s  (.+)  ([\d.]+)$"
)  # Timeline.lines()


def action(label: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(1, frames, 7, 3): TORSO_LAYOUT's rest pose with one hand waving above the shoulder
    (labels 0 and 1) or both hands clapping in front of the chest (2), at a random tempo and
    phase, with joint noise."""
    t = np.arange(frames) / PERIOD
    wave = np.sin(2 * np.pi * rng.uniform(0.8, 1.2) * t + rng.uniform(0, 2 * np.pi))
    pose = np.repeat(pyskl_files.TORSO_POSE[None], frames, axis=0)
    if label < 2:
        hand = HANDS[label]
        pose[:, hand, 0] *= 1.3
        pose[:, hand, 2] = 0.55 + 0.15 * wave
    else:
        for hand, side in zip(HANDS, (-1, 1), strict=True):
            pose[:, hand, 0] = side * 0.05 * (1.5 + wave)
            pose[:, hand, 1:] = -0.3, 0.4
    return (pose + rng.normal(0, 0.01, pose.shape))[None].astype(np.float32)


def long_sequence(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """PLAN's actions back to back (1, T, 7, 3), and each frame's true label (T,)."""
    rng = np.random.default_rng(seed)
    keypoint = np.concatenate([action(label, frames, rng) for label, frames in PLAN], axis=1)
    return keypoint, np.concatenate([np.full(frames, label) for label, frames in PLAN])


def train_actions_run(folder: Path) -> RunFolder:
    """HCN, widened a little, trained 8 epochs on 60 clips of 24 to 47 frames (30 to test):
    about 15 s on 2 CPU cores, 100% on the test clips."""
    rng = np.random.default_rng(0)
    annotations = []
    for i in range(90):
        frames = int(rng.integers(24, 48))
        annotations.append(
            {
                "frame_dir": f"clip{i:03d}",
                "label": i % len(ACTIONS),
                "total_frames": frames,
                "keypoint": action(i % len(ACTIONS), frames, rng),
            }
        )
    path = pyskl_files.write_pickle(
        folder / "actions.pkl", annotations, pyskl_files.halves(annotations)
    )
    layout = folder / "torso.json"
    layout.write_text(json.dumps(pyskl_files.TORSO_LAYOUT))
    names = folder / "actions.txt"
    names.write_text("\n".join(ACTIONS) + "\n")
    config = importlib.import_module("configs.hcn").get_config("custom,tiny")
    config.data.path, config.data.layout, config.data.class_names = map(str, (path, layout, names))
    config.data.augment = False
    config.model.kwargs.update(out_channels=16, hidden=64)
    config.csre.banks = "none"
    config.optim.base_lr, config.optim.clip_norm = 0.01, 0.0
    config.num_devices, config.num_epochs = 1, 8
    run = RunFolder(folder / "run")
    loop.train_and_evaluate(config, run.root)
    return run


def one_hot_windows(truth: np.ndarray, window: int, num_classes: int):
    """A fake model: each window is certain of the label most of its frames have."""
    calls = []

    def probabilities(starts: np.ndarray) -> np.ndarray:
        calls.append(starts)
        majority = [
            np.bincount(truth[s : s + window], minlength=num_classes).argmax() for s in starts
        ]
        return np.eye(num_classes)[majority]

    return probabilities, calls


# --- the rules on their own ---------------------------------------------------------------


@pytest.mark.parametrize(
    "length,window,stride", [(100, 32, 8), (100, 30, 7), (32, 32, 5), (9, 4, 4)]
)
def test_windows_cover_every_frame_and_the_last_ends_with_the_sequence(length, window, stride):
    starts = stream.window_starts(length, window, stride)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()
    assert starts[-1] == length - window
    assert (np.diff(starts)[:-1] == stride).all() and 0 < np.diff(starts, prepend=-1)[-1] <= stride


def test_a_window_longer_than_the_sequence_names_both_lengths_and_the_fix():
    with pytest.raises(UserError, match=r"window of 64 frames.*sequence \(40 frames\).*at most 40"):
        stream.window_starts(40, 64, 8)


@pytest.mark.parametrize(
    "settings",
    [
        dict(window=0),
        dict(stride=0),
        dict(stride=9),
        dict(smooth=0),
        dict(fps=0.0),
        dict(fps=np.nan),
    ],
)
def test_settings_that_describe_no_timeline_are_refused_before_the_model_runs(settings):
    probabilities, calls = one_hot_windows(np.zeros(50, int), 8, 2)
    kwargs = dict(window=8, stride=4, smooth=1, fps=None) | settings
    with pytest.raises(UserError, match=next(iter(settings))):
        stream.build_timeline(probabilities, 50, class_names=("a", "b"), **kwargs)
    assert not calls


@pytest.mark.parametrize("stride", [1, 4, 8, 13])
def test_segments_end_within_one_stride_of_where_the_action_changes(stride):
    """All windows in one call; segment boundaries within one stride of the truth (the
    majority of a window changes at the truth, its nearest frames follow)."""
    plan = ((2, 50), (0, 37), (1, 61), (2, 20))
    truth = np.concatenate([np.full(n, label) for label, n in plan])
    probabilities, calls = one_hot_windows(truth, 16, 3)
    timeline = stream.build_timeline(
        probabilities, len(truth), window=16, stride=stride, class_names=("a", "b", "c"), fps=10
    )
    assert len(calls) == 1 and (calls[0] == timeline.starts).all()
    assert [s.label for s in timeline.segments] == [label for label, _ in plan]
    bounds = np.cumsum([n for _, n in plan])
    assert timeline.segments[0].start == 0 and timeline.segments[-1].stop == len(truth)
    for got, want in zip([s.stop for s in timeline.segments[:-1]], bounds[:-1], strict=True):
        assert abs(got - want) <= stride, (got, want)
    for before, after in zip(timeline.segments, timeline.segments[1:], strict=False):
        assert before.stop == after.start
    first = timeline.segments[0]
    assert (first.start_s, first.stop_s, first.name) == (0.0, first.stop / 10, "c")
    assert first.probability == 1.0
    assert (
        timeline.frame_labels.tolist()
        == np.concatenate([np.full(s.stop - s.start, s.label) for s in timeline.segments]).tolist()
    )


def test_each_frame_takes_the_window_centred_nearest_it_the_earlier_on_a_tie():
    # centres 1.5 and 4.5: frame 3 is as near to both
    assert stream.nearest_window(7, np.array([0, 3]), 4).tolist() == [0, 0, 0, 0, 1, 1, 1]
    # centres 1.5, 3.5 and 6.5: frame 5 ties between the last two
    assert stream.nearest_window(9, np.array([0, 2, 5]), 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_smoothing_is_a_centred_moving_average_that_removes_one_confused_window():
    raw = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], float)
    values = np.random.default_rng(0).uniform(size=(7, 3))
    for smooth, before, after in ((3, 1, 1), (4, 1, 2), (5, 2, 2), (2, 0, 1)):
        want = [values[max(i - before, 0) : i + after + 1].mean(0) for i in range(len(values))]
        assert np.allclose(stream.smooth_probabilities(values, smooth), want), smooth
    assert np.array_equal(stream.smooth_probabilities(values, 1), values)

    def fake(starts):
        return raw[: len(starts)]

    plain = stream.build_timeline(fake, 8 * 4 + 4, window=8, stride=4, class_names="ab")
    steady = stream.build_timeline(fake, 8 * 4 + 4, window=8, stride=4, class_names="ab", smooth=3)
    assert [s.label for s in plain.segments] == [0, 1, 0, 1]
    assert [s.label for s in steady.segments] == [0, 1]


def test_lines_print_one_segment_a_line():
    probabilities, _ = one_hot_windows(np.repeat([0, 1], 30), 10, 2)
    timeline = stream.build_timeline(
        probabilities, 60, window=10, stride=10, fps=30, class_names=("left", "right")
    )
    lines = timeline.lines()
    assert lines[0] == (
        "60 frames at 30 fps, 6 windows of 10 frames every 10 (smoothed over 1): 2 segments"
    )
    assert [SEGMENT.match(line).groups() for line in lines[1:]] == [
        ("0", "29", "0.00", "1.00", "left", "1.000"),
        ("30", "59", "1.00", "2.00", "right", "1.000"),
    ]
    untimed = stream.build_timeline(probabilities, 60, window=10, stride=10, class_names="ab")
    assert untimed.lines()[1] == "  frames  0-29  a  1.000"


# --- a trained run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    return train_actions_run(tmp_path_factory.mktemp("stream"))


def test_predict_py_finds_the_actions_of_a_long_sequence(run, tmp_path):
    keypoint, truth = long_sequence()
    np.save(tmp_path / "long.npy", keypoint)
    flags = [f"--window={WINDOW}", f"--stride={STRIDE}", f"--smooth={SMOOTH}", f"--fps={FPS:g}"]
    result = tiny_runs.predict_cli(run, f"--input={tmp_path / 'long.npy'}", *flags)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"long: {len(truth)} frames at 15 fps, "), lines
    segments = [SEGMENT.match(line).groups() for line in lines[1:]]
    assert [name for *_, name, _ in segments] == [ACTIONS[label] for label, _ in PLAN], lines
    stops = [int(stop) + 1 for _, stop, *_ in segments]
    bounds = np.cumsum([frames for _, frames in PLAN])
    assert stops[-1] == len(truth)
    for got, want in zip(stops[:-1], bounds[:-1], strict=True):
        assert abs(got - want) <= STRIDE, (lines, bounds)
    for start, stop, start_s, stop_s, *_ in segments:
        assert (float(start_s), float(stop_s)) == (
            round(int(start) / FPS, 2),
            round((int(stop) + 1) / FPS, 2),
        )


def test_predict_stream_runs_the_windows_as_predict_does(run):
    """Every window batched through one step gives what predicting it alone gives."""
    from csre_jax.predictor import Predictor

    predictor = Predictor.from_run(run.root)
    keypoint, _ = long_sequence()
    timeline = predictor.predict_stream(keypoint[0], window=WINDOW, stride=STRIDE, smooth=SMOOTH)
    assert len(timeline.starts) > predictor.batch_size  # more than one padded batch
    for i in (0, len(timeline.starts) // 2, len(timeline.starts) - 1):
        start = timeline.starts[i]
        alone = predictor.predict(keypoint[:, start : start + WINDOW]).probabilities[0]
        assert np.allclose(timeline.window_probabilities[i], alone, atol=1e-5)
    assert np.allclose(
        timeline.smoothed, stream.smooth_probabilities(timeline.window_probabilities, SMOOTH)
    )
