"""Skeletons you can watch: predict.py --render writes an .mp4 or .gif of the input's frames
(over the video for video input), eval.py --report animates the most confused test samples,
and a bad output path, several sequences or a window longer than the sequence is one
'error:' line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_runs
from PIL import Image

from csre_jax import render
from csre_jax.errors import UserError
from csre_jax.layouts import BUILTIN_LAYOUTS
from csre_jax.video.pose import COCO_FROM_BLAZEPOSE, NUM_LANDMARKS
from csre_jax.workdir import RunFolder

REPO = Path(__file__).resolve().parents[1]
FRAMES = 40
VIDEO_SHAPE = (96, 128)  # (h, w)
VIDEO_COLOUR = (0, 0, 200)  # RGB: the video's every pixel
# predict.py with extract_pose replaced by one returning the skeleton saved in argv[1]
# (the video extra's MediaPipe is not needed to test what follows the extraction).
FAKE_POSE = """
import runpy, sys
import numpy as np
import csre_jax.video.pose as pose
saved = dict(np.load(sys.argv.pop(1)))

def extract_pose(path, *, world=False, progress=False):
    return {"keypoint": saved["keypoint"], "keypoint_score": saved["score"],
            "img_shape": tuple(saved["img_shape"]), "fps": float(saved["fps"]),
            "total_frames": saved["keypoint"].shape[1]}

pose.extract_pose = extract_pose
sys.argv[0] = "predict.py"
runpy.run_path("predict.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    """A trained 2-D COCO run with scores (random data, so it errs)."""
    return tiny_runs.coco_run(tmp_path_factory.mktemp("render"), num_classes=4)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def _skeleton(frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    """(1, T, 17, 3): x, y in the file's 640 x 480 pixels, then the score; the left wrist
    is missing (score 0) in the first half."""
    rng = np.random.default_rng(seed)
    array = np.concatenate(
        [rng.uniform(50, 400, (1, frames, 17, 2)), rng.uniform(0.5, 1, (1, frames, 17, 1))],
        axis=-1,
    )
    array[:, : frames // 2, 9, 2] = 0
    return array.astype(np.float32)


def _opencv():
    """cv2 for the .mp4 tests: it comes with the video extra (requirements-video.txt)."""
    return pytest.importorskip("cv2")


def _mp4_frames(path: Path) -> list[np.ndarray]:
    cv2 = _opencv()
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def test_render_writes_a_playable_mp4_with_the_timeline(run, tmp_path):
    cv2 = _opencv()
    np.save(tmp_path / "clip.npy", _skeleton())
    out = tmp_path / "clip.mp4"
    flags = ["--window=16", "--stride=8", "--fps=20", f"--render={out}"]
    result = tiny_runs.predict_cli(run, f"--input={tmp_path / 'clip.npy'}", *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("clip: 40 frames at 20 fps, 4 windows of 16 frames")
    assert result.stdout.splitlines()[-1] == f"{FRAMES} frames written to {out}"
    frames = _mp4_frames(out)
    assert len(frames) == FRAMES
    assert frames[0].shape == (360, 480, 3)  # the default canvas
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == 20
    assert all(frame.max() > 200 for frame in frames)  # drawn on every frame


def test_render_writes_a_gif_of_the_sequence_with_its_prediction(run, tmp_path):
    np.save(tmp_path / "clip.npy", _skeleton())
    out = tmp_path / "clip.gif"
    result = tiny_runs.predict_cli(
        run, f"--input={tmp_path / 'clip.npy'}", f"--render={out}", "--top_k=2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:1] == ["clip"]  # the predictions as without --render
    with Image.open(out) as gif:
        assert (gif.n_frames, gif.size) == (FRAMES, (480, 360))


def test_video_input_renders_over_the_video(run, tmp_path):
    cv2 = _opencv()
    h, w = VIDEO_SHAPE
    video = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for _ in range(FRAMES):
        writer.write(np.full((h, w, 3), VIDEO_COLOUR[::-1], np.uint8))
    writer.release()
    skeleton = _skeleton()
    skeleton[..., 0] *= w / 640  # the video's pixels
    skeleton[..., 1] *= h / 480
    blazepose = np.zeros((1, FRAMES, NUM_LANDMARKS, 3), np.float32)  # extract_pose's 33
    blazepose[:, :, list(COCO_FROM_BLAZEPOSE)] = skeleton  # of which a coco run takes 17
    np.savez(
        tmp_path / "pose.npz",
        keypoint=blazepose[..., :2],
        score=blazepose[..., 2],
        img_shape=VIDEO_SHAPE,
        fps=25.0,
    )
    (tmp_path / "fake_pose.py").write_text(FAKE_POSE)
    out = tmp_path / "labelled.mp4"
    script = [str(tmp_path / "fake_pose.py"), str(tmp_path / "pose.npz")]
    flags = [f"--input={video}", "--window=20", "--stride=10", f"--render={out}"]
    result = tiny_runs.script(run, script, f"--workdir={run.root}", *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("walk: 40 frames at 25 fps, 3 windows of 20 frames")
    frames = _mp4_frames(out)
    assert len(frames) == FRAMES and frames[0].shape == (h, w, 3)
    corner = frames[-1][-8:, -8:].reshape(-1, 3).mean(axis=0)  # the video, not drawn over
    assert np.allclose(corner, VIDEO_COLOUR, atol=40), corner


def test_missing_joints_are_not_drawn(tmp_path):
    """A person whose joints are all zeros in frame 1 and whose scores are 0 in frame 2 leaves
    those frames blank below the caption; frame 0 draws it."""
    keypoint = np.random.default_rng(0).uniform(10, 90, (1, 3, 17, 2))
    keypoint[:, 1] = 0
    score = np.ones((1, 3, 17))
    score[:, 2] = 0
    out = tmp_path / "missing.gif"
    captions = [[f"frame {t}"] for t in range(3)]  # GIF merges identical frames: keep them apart
    layout = BUILTIN_LAYOUTS["coco"]
    assert render.render(out, keypoint, layout, score=score, frame_captions=captions) == 3
    with Image.open(out) as gif:
        drawn = []
        for t in range(gif.n_frames):
            gif.seek(t)
            drawn.append(np.asarray(gif.convert("RGB"))[render.CAPTION_SPACE :].max())
    assert drawn[0] > 0 and drawn[1:] == [0, 0]


def test_a_bad_render_path_is_refused_before_the_model_loads(tmp_path):
    layout = BUILTIN_LAYOUTS["coco"]
    keypoint = np.ones((1, 2, 17, 2))
    with pytest.raises(UserError, match=r"out\.avi: cannot write \.avi; name a \.mp4 or \.gif"):
        render.render(tmp_path / "out.avi", keypoint, layout)
    with pytest.raises(UserError, match=r"the folder .*missing does not exist"):
        render.render(tmp_path / "missing" / "out.gif", keypoint, layout)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        with pytest.raises(UserError, match=r"cannot write in .*locked"):
            render.render(locked / "out.mp4", keypoint, layout)
    flags = ["--workdir=/nonexistent", "--input=x.npy", f"--render={tmp_path / 'out.webp'}"]
    result = subprocess.run(
        [sys.executable, "predict.py", *flags], cwd=REPO, capture_output=True, text=True
    )
    assert _one_error_line(result) == (
        f"error: {tmp_path / 'out.webp'}: cannot write .webp; name a .mp4 or .gif file"
    )


def test_a_window_longer_than_the_sequence_or_several_sequences_are_one_line(run, tmp_path):
    np.save(tmp_path / "short.npy", _skeleton(12))
    result = tiny_runs.predict_cli(run, f"--input={tmp_path / 'short.npy'}", "--window=16")
    assert _one_error_line(result) == (
        f"error: --input={tmp_path / 'short.npy'}: a window of 16 frames is longer than the "
        "sequence (12 frames); use a window of at most 12 frames"
    )
    np.save(tmp_path / "two.npy", np.stack([_skeleton(), _skeleton(seed=1)]))
    result = tiny_runs.predict_cli(run, f"--input={tmp_path / 'two.npy'}", "--window=16")
    assert _one_error_line(result) == (
        f"error: --window: --input={tmp_path / 'two.npy'} holds 2 sequences; give one (a .npy "
        "of one sequence, or a .pkl of one sample)"
    )


def test_report_animates_the_most_confused_test_samples(run, tmp_path):
    result = tiny_runs.script(
        run, ["eval.py", f"--runs={run.root}", f"--report={tmp_path / 'report'}"]
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    animation = report["confused_animation"]
    assert report["figures"]["confused"] == "confused.gif" == animation["file"]
    samples = animation["samples"]
    assert 1 <= len(samples) <= 4
    assert all(s["true"] != s["predicted"] for s in samples)
    probabilities = [s["probability"] for s in samples]
    assert probabilities == sorted(probabilities, reverse=True)
    with Image.open(tmp_path / "report" / "confused.gif") as gif:
        assert 1 < gif.n_frames <= animation["frames"]  # identical frames merge into one
        assert gif.size == (480, 480 if len(samples) > 2 else 240)
    assert "![confused](confused.gif)" in (tmp_path / "report" / "report.md").read_text()

    scores = tmp_path / "scores_only.npz"  # a score file outside its run folder
    scores.write_bytes(run.test_scores.read_bytes())
    result = tiny_runs.script(run, ["eval.py", f"--runs={scores}", f"--report={tmp_path / 'bare'}"])
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stdout.splitlines() if "animation" in line]
    assert skipped == [
        "no animation of the most confused test samples: no evaluated run is a run folder "
        "(config.json) to load samples from"
    ]
    assert not (tmp_path / "bare" / "confused.gif").exists()
