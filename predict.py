"""Prints what a trained run recognises in new sequences: the top-k classes of each.

  python predict.py --workdir=runs/mine --input=clips.pkl          # pyskl annotation file
  python predict.py --workdir=runs/mine --input=clips.pkl --split=test
  python predict.py --workdir=runs/mine --input=clip.npy           # (M, T, V, C) or a batch
  python predict.py --workdir=runs/mine --input=clip.npy --scores=score.npy --img_shape=480,640
  python predict.py --workdir=runs/ntu60 --input=S001C001P001R001A001.skeleton
  python predict.py --workdir=runs/pose --input=clip.mp4 --render=clip_labelled.mp4
  python predict.py --workdir=runs/mine --input=long.npy --window=32 --stride=8 --smooth=3 \
      --fps=30 --render=long.gif

The backbone alone runs (csre_jax.predictor); a .pkl's samples use their own keypoint
scores and image shapes, and when they have labels an accuracy summary follows the
predictions. A .npy for a 2-D run that uses keypoint scores carries them as its last channel
(x, y, score) or in --scores. A video's skeletons come from BlazePose (csre_jax.video, the
video extra). --window prints the actions along one long sequence as segments
(docs/streams.md); --render draws the skeletons with their labels over the video, or on a
blank canvas.
"""

import dataclasses
from pathlib import Path

import numpy as np
from absl import flags

from csre_jax import cli, render
from csre_jax.cli import start
from csre_jax.data import pyskl, pyskl_transform
from csre_jax.errors import UserError
from csre_jax.predictor import Predictor, keypoints_from_skeleton_file

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run folder.")
_INPUT = flags.DEFINE_string(
    "input", None, "A .pkl (pyskl), .npy, NTU .skeleton or video (.mp4, .avi, .mov, ...) file."
)
_SPLIT = flags.DEFINE_string(
    "split", None, "With a .pkl: predict only this split's samples (default: every sample)."
)
_SCORES = flags.DEFINE_string(
    "scores",
    None,
    "With a .npy of a 2-D run that uses keypoint scores: the scores as a .npy of the "
    "keypoints' shape without C (instead of the score as the keypoints' last channel).",
)
_IMG_SHAPE = flags.DEFINE_string(
    "img_shape",
    None,
    "H,W: the height and width in pixels of the image that 2-D keypoints come from (a .pkl "
    "sample's own img_shape wins); default {},{}, what training assumes without one.".format(
        *pyskl_transform.DEFAULT_IMG_SHAPE
    ),
)
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes printed per sequence.", lower_bound=1)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which model.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    0,
    "Sequences per compiled batch (0: the run's data.eval_batch_size).",
    lower_bound=0,
)
_WINDOW = flags.DEFINE_integer(
    "window",
    None,
    "Frames per window: print the actions along one long sequence as segments.",
    lower_bound=1,
)
_STRIDE = flags.DEFINE_integer(
    "stride",
    None,
    "With --window: frames between windows (default: half the window).",
    lower_bound=1,
)
_SMOOTH = flags.DEFINE_integer(
    "smooth", 1, "With --window: windows averaged per window (centred; 1: none).", lower_bound=1
)
_FPS = flags.DEFINE_float(
    "fps", None, "Frames per second of skeleton input: segment times and --render's rate."
)
_RENDER = flags.DEFINE_string(
    "render",
    None,
    "Write the skeletons with their labels to this .mp4 or .gif (over the video for video "
    "input, on a blank canvas otherwise).",
)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
RENDER_FPS = 30.0  # skeleton input without --fps
WORST_CLASSES = 3  # classes listed under the accuracy, those with the most errors


@dataclasses.dataclass
class Sequences:
    """An input file's sequences: a name, keypoints, scores, image shape and label each."""

    names: list[str]
    keypoints: list[np.ndarray]
    scores: list[np.ndarray | None]
    img_shapes: list[tuple[int, int] | None]
    labels: list[int | None]
    fps: float | None = None


def parse_img_shape(value: str | None) -> tuple[int, int] | None:
    """--img_shape's 'H,W' as (h, w)."""
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(
            f"--img_shape={value}: give the image's height and width in pixels as H,W, "
            "e.g. --img_shape=1080,1920"
        )
    return int(parts[0]), int(parts[1])


def load_npy(path: Path, flag: str) -> np.ndarray:
    """A numeric array saved with numpy.save; the error names the flag and the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{flag}={path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise UserError(
            f"{flag}={path}: not a readable .npy ({type(e).__name__}: {e}); write the array "
            "with numpy.save"
        ) from e
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise UserError(f"{flag}={path}: not a numeric array; save np.asarray(x, np.float32)")
    return array


def _channels(predictor: Predictor, scores_given: bool) -> tuple[int, str]:
    """The .npy's C and what its channels are."""
    coords = predictor.coords
    if coords == 3:
        return 3, "3 (x, y, z)"
    if predictor.uses_score and not scores_given:
        return 3, "3 (x, y in pixels, then the keypoint score; or 2 with --scores)"
    return 2, "2 (x, y in pixels)"


def read_npy(path: Path, predictor: Predictor, scores_path: str | None) -> Sequences:
    """A (T, V, C), (M, T, V, C) or (B, M, T, V, C) array, with the score as the last
    channel or in --scores for runs that use scores."""
    array = load_npy(path, "--input")
    if scores_path is not None and not predictor.uses_score:
        raise UserError(f"--scores={scores_path}: this run takes no keypoint scores; leave it out")
    layout = predictor.card.layout
    channels, meaning = _channels(predictor, scores_path is not None)
    shaped = array.ndim in (3, 4, 5)
    unscored = predictor.uses_score and scores_path is None
    if shaped and unscored and array.shape[-2:] == (layout.num_joints, 2):
        raise UserError(
            f"--input={path}: an array of shape {array.shape}, without keypoint scores, but "
            "this run's model takes them: give the score as the last channel (C = 3: x, y, "
            f"score) or as --scores=FILE.npy of shape {array.shape[:-1]}"
        )
    if not shaped or array.shape[-2:] != (layout.num_joints, channels):
        raise UserError(
            f"--input={path}: an array of shape {array.shape}; this run takes (T, V, C), "
            f"(M, T, V, C) or a batch (B, M, T, V, C) with V = {layout.num_joints} (layout "
            f"{layout.name!r}) and C = {meaning}"
        )
    if not array.size:
        raise UserError(f"--input={path}: an empty array of shape {array.shape}")
    if scores_path is not None:
        scores = load_npy(Path(scores_path), "--scores")
        if scores.shape != array.shape[:-1]:
            raise UserError(
                f"--scores={scores_path}: an array of shape {scores.shape}; give one score per "
                f"keypoint, the shape of --input without C: {array.shape[:-1]}"
            )
    elif predictor.uses_score:
        array, scores = array[..., :-1], array[..., -1]
    else:
        scores = None
    batch = array.ndim == 5
    count = len(array) if batch else 1
    return Sequences(
        names=[f"{path.stem}[{i}]" for i in range(count)] if batch else [path.stem],
        keypoints=list(array) if batch else [array],
        scores=[None] * count if scores is None else list(scores) if batch else [scores],
        img_shapes=[None] * count,
        labels=[None] * count,
    )


def read_pkl(path: Path, split: str | None) -> Sequences:
    """The annotations of a pyskl file, or those of one of its splits, in the split's order."""
    content = pyskl.read(path)
    annotations = content["annotations"]
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "keypoint" not in ann:
            raise UserError(
                f"--input={path}: annotation {i} has no field 'keypoint'; each annotation is a "
                "dict with keypoint (M, T, V, C) (pyskl's format)"
            )
    names = [str(ann.get("frame_dir", i)) for i, ann in enumerate(annotations)]
    if split is not None:
        if split not in content["split"]:
            raise UserError(
                f"--split={split}: {path} has no such split; its splits: "
                f"{', '.join(map(str, content['split'])) or 'none'}"
            )
        positions = {name: i for i, name in enumerate(names)}
        annotations = [
            annotations[i] for i in pyskl.split_positions(content, str(path), positions, split)
        ]
        names = [str(ann.get("frame_dir")) for ann in annotations]
    return Sequences(
        names=names,
        keypoints=[a["keypoint"] for a in annotations],
        scores=[a.get("keypoint_score") for a in annotations],
        img_shapes=[a.get("img_shape") for a in annotations],
        labels=[a.get("label") for a in annotations],
    )


def read_video(path: Path, predictor: Predictor) -> Sequences:
    """The BlazePose skeleton of a video's person (its COCO-17 subset for a coco run):
    pixels, or metres for a 3-D run."""
    if _FPS.value is not None:
        raise UserError(f"--fps={_FPS.value}: a video's own frame rate is used; leave it out")
    try:
        from csre_jax.video.pose import extract_pose, to_coco
    except ImportError as e:
        raise UserError(
            f"--input={path}: video input needs the video extra ({e}): "
            "pip install -r requirements-video.txt"
        ) from None
    pose = extract_pose(path, world=predictor.coords == 3, progress=True)
    keypoint, score = pose["keypoint"], pose["keypoint_score"]
    if predictor.card.layout.name == "coco":  # BlazePose's landmarks include COCO's 17
        keypoint, score = to_coco(keypoint, score)
    return Sequences(
        [path.stem],
        [keypoint],
        [score],
        [tuple(pose["img_shape"])],
        [None],
        fps=float(pose["fps"]),
    )


def read_sequences(path: Path, predictor: Predictor) -> Sequences:
    """Every sequence of the input file (of --split's samples), checked against the run."""
    img_shape = parse_img_shape(_IMG_SHAPE.value)
    if img_shape is not None and predictor.coords != 2:
        raise UserError(
            f"--img_shape={_IMG_SHAPE.value}: this run takes 3-D keypoints; leave it out"
        )
    if _SPLIT.value is not None and path.suffix != ".pkl":
        raise UserError(f"--split={_SPLIT.value}: only a .pkl --input has splits")
    if _SCORES.value is not None and path.suffix != ".npy":
        raise UserError(f"--scores={_SCORES.value}: only with a .npy --input")
    if not path.is_file():
        raise FileNotFoundError(f"--input={path}: no such file")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        sequences = read_video(path, predictor)
    elif path.suffix == ".skeleton":
        sequences = Sequences(
            [path.stem], [keypoints_from_skeleton_file(path)], [None], [None], [None]
        )
    elif path.suffix == ".npy":
        sequences = read_npy(path, predictor, _SCORES.value)
    elif path.suffix == ".pkl":
        sequences = read_pkl(path, _SPLIT.value)
    else:
        raise UserError(
            f"--input={path}: expected a .pkl, .npy, .skeleton or video "
            f"({', '.join(VIDEO_SUFFIXES)}) file"
        )
    sequences.img_shapes = [img_shape if s is None else s for s in sequences.img_shapes]
    _check(sequences, path, predictor)
    return sequences


def _check(sequences: Sequences, path: Path, predictor: Predictor) -> None:
    """Each sequence against the run, the error naming the file and the sequence."""
    num_classes = predictor.card.num_classes
    for i, name in enumerate(sequences.names):
        where = f"--input={path}" + (f": {name}" if len(sequences.names) > 1 else "")
        try:
            predictor.check(sequences.keypoints[i], sequences.scores[i])
        except UserError as e:
            raise UserError(f"{where}: {e}") from e
        label = sequences.labels[i]
        if label is not None and not (
            isinstance(label, int | np.integer) and 0 <= label < num_classes
        ):
            raise UserError(
                f"{where}: label {label!r}, but this run's classes are 0..{num_classes - 1}; "
                "give the labels the run was trained with, or none"
            )


def accuracy_lines(
    probabilities: np.ndarray, labels: list[int | None], class_names: tuple[str, ...]
) -> list[str]:
    """The summary over the labelled sequences: top-1 (and top-5 with 5 or more classes),
    then the classes with the most errors and what they are most often taken for."""
    known = [i for i, label in enumerate(labels) if label is not None]
    if not known:
        return []
    truth = np.array([labels[i] for i in known])
    order = np.argsort(-probabilities[known], axis=1, kind="stable")
    predicted, right = order[:, 0], order[:, 0] == truth
    count = len(truth)
    lines = [f"accuracy over {count} labelled sequences:"]
    lines.append(f"  top-1 {100 * right.mean():.1f}% ({right.sum()} of {count})")
    if len(class_names) >= 5:
        top5 = (order[:, :5] == truth[:, None]).any(axis=1)
        lines.append(f"  top-5 {100 * top5.mean():.1f}% ({top5.sum()} of {count})")
    samples = np.bincount(truth, minlength=len(class_names))
    errors = np.bincount(truth[~right], minlength=len(class_names))
    worst = sorted(np.flatnonzero(errors), key=lambda c: (-errors[c], -errors[c] / samples[c], c))
    if worst:
        lines.append("  classes with the most errors:")
    for c in worst[:WORST_CLASSES]:
        taken = np.bincount(predicted[(truth == c) & ~right], minlength=len(class_names))
        lines.append(
            f"    {class_names[c]}: {100 * (1 - errors[c] / samples[c]):.1f}% "
            f"({samples[c] - errors[c]} of {samples[c]}), most often predicted as "
            f"{class_names[taken.argmax()]} ({taken.max()} of {samples[c]})"
        )
    return lines


def check_stream_flags() -> None:
    """--stride and --smooth only mean something with --window; --render's path is checked
    before the model loads."""
    if _WINDOW.value is None:
        for flag in (_STRIDE, _SMOOTH):
            if flag.present:
                raise UserError(f"--{flag.name}={flag.value}: only with --window=FRAMES")
    if _FPS.value is not None and not _FPS.value > 0:
        raise UserError(f"--fps={_FPS.value}: give the frames per second, e.g. --fps=30")
    if _RENDER.value is not None:
        render.check_output(_RENDER.value)


def predict_one(predictor: Predictor, sequences: Sequences, path: Path) -> None:
    """--window's segments and --render's file for the input's one sequence."""
    if len(sequences.names) != 1:
        flag = "--window" if _WINDOW.value is not None else "--render"
        raise UserError(
            f"{flag}: --input={path} holds {len(sequences.names)} sequences; give one (a .npy "
            "of one sequence, or a .pkl of one sample)"
        )
    keypoint, score = predictor.check(sequences.keypoints[0], sequences.scores[0])
    img_shape = sequences.img_shapes[0]
    fps = sequences.fps or _FPS.value
    class_names = predictor.card.class_names
    if _WINDOW.value is not None:
        try:
            timeline = predictor.predict_stream(
                keypoint,
                score,
                img_shape,
                window=_WINDOW.value,
                stride=_STRIDE.value or max(_WINDOW.value // 2, 1),
                smooth=_SMOOTH.value,
                fps=fps,
            )
        except UserError as e:
            raise UserError(f"--input={path}: {e}") from e
        print(f"{sequences.names[0]}: " + "\n".join(timeline.lines()))
        probabilities = timeline.frame_probabilities
    else:
        predictions = predictor.predict(keypoint, score, img_shape)
        probabilities = predictions.probabilities.repeat(keypoint.shape[1], axis=0)
        print_predictions(sequences, predictions)
    if _RENDER.value is not None:
        # Over the video where the keypoints are its pixels (not a 3-D run's world landmarks).
        video = path if sequences.fps is not None and predictor.coords == 2 else None
        count = render.render(
            _RENDER.value,
            keypoint,
            predictor.card.layout,
            score=score,
            frame_captions=render.captions(probabilities, class_names),
            video=video,
            fps=fps or RENDER_FPS,
            y_up=predictor.coords == 3,
        )
        print(f"{count} frames written to {_RENDER.value}")


def print_predictions(sequences: Sequences, predictions) -> None:
    """Each sequence's top --top_k classes, then the accuracy over the labelled ones."""
    class_names = predictions.class_names
    tops = predictions.top(_TOP_K.value)
    for name, label, top in zip(sequences.names, sequences.labels, tops, strict=True):
        truth = f" (label: {class_names[label]})" if label is not None else ""
        print(f"{name}{truth}")
        for rank, (class_name, probability) in enumerate(top, start=1):
            print(f"  {rank}. {class_name}  {probability:.3f}")
    summary = accuracy_lines(predictions.probabilities, sequences.labels, class_names)
    if summary:
        print("\n" + "\n".join(summary))


def main(argv):
    start(argv)
    check_stream_flags()
    predictor = Predictor.from_run(
        _WORKDIR.value, checkpoint=_CHECKPOINT.value, batch_size=_BATCH_SIZE.value or None
    )
    path = Path(_INPUT.value)
    sequences = read_sequences(path, predictor)
    if _WINDOW.value is not None or _RENDER.value is not None:
        predict_one(predictor, sequences, path)
        return
    predictions = predictor.predict(sequences.keypoints, sequences.scores, sequences.img_shapes)
    print_predictions(sequences, predictions)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "input"])
    cli.run(main)
