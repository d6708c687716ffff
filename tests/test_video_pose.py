"""Skeletons from videos with no network: BlazePose from the packaged model finds the person of
a short video made from matplotlib's portrait of Grace Hopper, keeps frames without anyone as
zeros, and `convert video` writes a pyskl file, skipping a corrupt video and reusing its parts
on a rerun."""

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from csre_jax.data import convert, pyskl
from csre_jax.errors import UserError
from csre_jax.layouts import BUILTIN_LAYOUTS
from csre_jax.video import COCO_FROM_BLAZEPOSE, extract_pose, to_coco

EXTRA = "the video extra is not installed: pip install -r requirements-video.txt"
SIZE = (256, 300)  # (W, H) of the test videos
FPS = 25.0
# In the portrait scaled to SIZE, the face lies within x 75..185, y 60..175.
FACE = (75, 185, 60, 175)
BLANK = (8, 9, 10)  # frames of the 16 without a person
NOSE, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 11, 12


@pytest.fixture(scope="module")
def cv2():
    pytest.importorskip("mediapipe", reason=EXTRA)
    return pytest.importorskip("cv2", reason=EXTRA)


def _shift(i: int) -> tuple[int, int]:
    """The portrait's offset (x, y) in pixels in frame i: it moves right and down."""
    return 2 * i, i


def _write_video(cv2, path, frames: int, blank=(), person=True):
    """An mp4 (MPEG-4 part 2) of the moving portrait; `blank` frames (or all, without a
    person) are a plain grey."""
    portrait = cv2.resize(
        cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), SIZE
    )
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(frames):
        if person and i not in blank:
            move = np.float32([[1, 0, _shift(i)[0]], [0, 1, _shift(i)[1]]])
            writer.write(cv2.warpAffine(portrait, move, SIZE, borderValue=(128, 128, 128)))
        else:
            writer.write(np.full((SIZE[1], SIZE[0], 3), 128, np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def portrait_video(cv2, tmp_path_factory):
    return _write_video(cv2, tmp_path_factory.mktemp("videos") / "portrait.mp4", 16, BLANK)


@pytest.fixture(scope="module")
def pose(portrait_video):
    return extract_pose(portrait_video)


def test_pose_of_the_portrait(pose):
    keypoint, score = pose["keypoint"], pose["keypoint_score"]
    assert keypoint.shape == (1, 16, BUILTIN_LAYOUTS["blazepose"].num_joints, 2)
    assert score.shape == (1, 16, 33) and keypoint.dtype == score.dtype == np.float32
    assert pose["img_shape"] == (SIZE[1], SIZE[0]) and pose["fps"] == FPS
    assert pose["total_frames"] == 16
    assert ((score >= 0) & (score <= 1)).all()
    blank = list(BLANK)
    assert not keypoint[0, blank].any() and not score[0, blank].any()
    seen = [i for i in range(16) if i not in BLANK]
    assert (score[0, seen][:, [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER]] > 0.5).all()
    for i in seen:
        (nose_x, nose_y), dx, dy = keypoint[0, i, NOSE], *_shift(i)
        assert FACE[0] + dx < nose_x < FACE[1] + dx and FACE[2] + dy < nose_y < FACE[3] + dy, i
        left, right = keypoint[0, i, LEFT_SHOULDER], keypoint[0, i, RIGHT_SHOULDER]
        assert min(left[1], right[1]) > nose_y + 30, i  # the shoulders below the nose
        assert 0 <= right[0] < nose_x < left[0] < SIZE[0], i  # her left on the image's right
    drift = keypoint[0, seen[-1], NOSE] - keypoint[0, seen[0], NOSE]
    np.testing.assert_allclose(drift, np.subtract(_shift(seen[-1]), _shift(seen[0])), atol=6)


def test_world_landmarks_and_coco(portrait_video, pose):
    world = extract_pose(portrait_video, world=True)
    keypoint = world["keypoint"]
    assert keypoint.shape == (1, 16, 33, 3)
    np.testing.assert_array_equal(world["keypoint_score"], pose["keypoint_score"])
    assert not keypoint[0, list(BLANK)].any()
    seen = [i for i in range(16) if i not in BLANK]
    assert (np.abs(keypoint[0, seen]) < 2).all()  # metres around the hips
    assert (keypoint[0, seen, NOSE, 1] < keypoint[0, seen, LEFT_SHOULDER, 1]).all()  # y down
    coco, coco_score = to_coco(pose["keypoint"], pose["keypoint_score"])
    assert coco.shape == (1, 16, 17, 2) and coco_score.shape == (1, 16, 17)
    np.testing.assert_array_equal(coco[..., 5, :], pose["keypoint"][..., LEFT_SHOULDER, :])
    assert to_coco(keypoint)[1] is None
    assert to_coco(keypoint)[0].shape == (1, 16, 17, 3) and len(COCO_FROM_BLAZEPOSE) == 17


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.mp4", b"", "cannot be decoded as a video or has no frame"),
        ("corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, "cannot be decoded"),
        ("missing.mp4", None, "no such video file"),
        ("nobody.mp4", "video", "no person found in any of its 6 frames"),
    ],
)
def test_a_video_without_a_pose_is_one_line(cv2, tmp_path, name, content, message):
    path = tmp_path / name
    if content == "video":
        _write_video(cv2, path, 6, person=False)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        extract_pose(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_without_the_extra_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(UserError, match=r"pip install -r requirements-video\.txt$"):
        extract_pose(tmp_path / "any.mp4")


def test_convert_video_folder(cv2, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("walk", "wave"):
        _write_video(cv2, folder / f"{name}.mp4", 8)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "labels.csv").write_text("name,label\nwalk,0\nwave.mp4,1\nbroken,0\n")
    out = tmp_path / "out" / "mine.pkl"
    argv = ["video", str(folder), "--labels", str(tmp_path / "labels.csv"), "--out", str(out)]
    assert convert.main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "2 samples (train 2); 1 video(s) skipped" in captured.out
    (line,) = [line for line in captured.err.splitlines() if "broken" in line]
    assert line.startswith(f"skipped {folder / 'broken.mp4'}: cannot be decoded")
    content, checked = pyskl.load(out, BUILTIN_LAYOUTS["blazepose"], coords=2)
    assert content["split"] == {"train": ["walk", "wave"]} and checked.num_classes == 2
    for ann in content["annotations"]:
        assert ann["keypoint"].shape == (1, 8, 33, 2) and ann["keypoint_score"].shape == (1, 8, 33)
        assert (ann["img_shape"], ann["fps"], ann["total_frames"]) == ((SIZE[1], SIZE[0]), FPS, 8)
    parts = sorted(p.name for p in out.with_name("mine.pkl.parts").iterdir())
    assert parts == ["walk.mp4.npz", "wave.mp4.npz"]

    extracted = []

    def counted(path, **kwargs):
        extracted.append(path.name)
        return extract_pose(path, **kwargs)

    monkeypatch.setattr(convert, "extract_pose", counted)
    assert convert.main(argv) == 0
    assert extracted == ["broken.mp4"]  # the two videos come from their parts
    again = pyskl.read(out)
    for ann, before in zip(again["annotations"], content["annotations"], strict=True):
        np.testing.assert_array_equal(ann["keypoint"], before["keypoint"])
        assert (ann["img_shape"], ann["fps"]) == (before["img_shape"], before["fps"])


def test_convert_video_names_a_missing_video(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("ghost,0\n")
    argv = ["video", str(tmp_path), "--labels", str(tmp_path / "labels.csv")]
    with pytest.raises(SystemExit) as failed:
        convert.main([*argv, "--out", str(tmp_path / "x.pkl")])
    assert failed.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "row 1: expected one video named 'ghost'" in line


def test_readme_from_video_commands_run_as_written(cv2, tmp_path):
    """The README's "From video" commands, in a folder of videos and a label table: only the
    training gets a tiny, one-epoch model added, so the test stays short."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("**From video**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert commands[0] == "pip install -r requirements-video.txt"  # installed here already
    for name in ("train.py", "predict.py", "configs", "csre_jax"):
        (tmp_path / name).symlink_to(root / name)
    (tmp_path / "videos").mkdir()
    rows = []
    for i in range(8):  # still and moving portraits: two classes
        still = i % 2 == 0
        _write_video(cv2, tmp_path / "videos" / f"clip{i}.mp4", 4 if still else 24)
        rows.append(f"clip{i},{int(still)},{'test' if i >= 6 else 'train'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    _write_video(cv2, tmp_path / "new.mp4", 70)
    tiny = (
        " --config.num_epochs=1 --config.data.batch_size=2 --config.data.eval_batch_size=2"
        " --config.csre.num_positives=0 --config.csre.num_negatives=0"
    )
    for command in commands[1:]:
        if command.startswith("python train.py"):
            command = re.sub(r"(configs/\w+\.py:custom)", r"\1,tiny", command) + tiny
        done = subprocess.run(
            command.replace("python ", f"{sys.executable} ", 1),
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert f"new: 70 frames at {FPS:g} fps" in done.stdout, done.stdout  # the timeline
    with Image.open(tmp_path / "new.gif") as rendered:
        assert rendered.size == SIZE and 1 < rendered.n_frames <= 70  # equal frames merge

    # Mistakes with videos, against the run just trained: one line each, no traceback.
    (tmp_path / "empty.mp4").write_bytes(b"")
    _write_video(cv2, tmp_path / "nobody.mp4", 6, person=False)
    for flags, words in (
        ("--input=empty.mp4", "empty.mp4: cannot be decoded as a video or has no frame"),
        ("--input=nobody.mp4", "nobody.mp4: no person found in any of its 6 frames"),
        ("--input=new.mp4 --window=71", "a window of 71 frames is longer than the sequence"),
    ):
        done = subprocess.run(
            f"{sys.executable} predict.py --workdir=runs/mine {flags}",
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(errors) == 1 and words in errors[0], done.stderr[-2000:]
