"""Your own skeletons: pyskl's annotation pickle in any layout, 2-D or 3-D, read and checked.

The file (as pyskl, kennymckormick/pyskl, writes it; `python -m csre_jax.data.convert`
writes it from other formats):

    {'split': {name: [frame_dir, ...]},
     'annotations': [{'frame_dir': str, 'label': int (0-based), 'total_frames': T,
                      'keypoint': (M, T, V, C) float, C = 2 (pixels) or 3 (3-D),
                      'keypoint_score': (M, T, V) (optional), 'img_shape': (h, w) (optional)}]}

`load` checks the whole file before training in one pass that copies no keypoint array
(tens of microseconds a sample: 100,000 samples take seconds); every error names the file,
the sample's frame_dir, the field and the fix. `split_samples` then gives the training and
test splits' annotations, labels and frame_dirs: it refuses a frame_dir listed in both, and
warns (on stderr) about test samples whose keypoints repeat a training sample's byte for byte
and about classes that have no training sample. The keypoints stay as loaded, one copy in
memory; pyskl_transform.py converts each sample when drawn.
"""

import dataclasses
import hashlib
import pickle
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from csre_jax.errors import UserError
from csre_jax.layouts import Layout

KEYPOINT_SHAPE = "store (persons, frames, joints, coords); one person's (T, V, C) as keypoint[None]"
MISSING_JOINTS = "write 0 for undetected joints (pyskl's convention) or drop the sample"


def read(path: Path) -> dict:
    """The pickle's dict with 'split' and 'annotations' (a pickle runs code: load only your
    own files)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} (config field data.path) does not exist")
    with path.open("rb") as f:
        try:
            content = pickle.load(f)
        except Exception as e:  # bytes that are no pickle fail in any of a dozen ways
            raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(content, dict) or not {"split", "annotations"} <= content.keys():
        raise UserError(
            f"{path}: expected a dict with fields 'split' and 'annotations' (pyskl's format); "
            f"got {type(content).__name__}"
            + (f" with fields {sorted(map(str, content))}" if isinstance(content, dict) else "")
        )
    if not isinstance(content["split"], dict):
        raise UserError(f"{path}: field 'split' must map split names to frame_dir lists")
    if not isinstance(content["annotations"], list) or not content["annotations"]:
        raise UserError(f"{path}: field 'annotations' must be a non-empty list of samples")
    return content


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the file holds: keypoint coords, whether it has scores, labels and classes, and
    each frame_dir's position in the annotation list."""

    coords: int
    has_score: bool
    labels: np.ndarray
    num_classes: int
    positions: dict[str, int]


def check(content: dict, source: str, layout: Layout | None) -> Checked:
    """Every annotation against the layout (None: against annotation 0's joint count) and
    against annotation 0, in one pass that copies no array; raises on the first problem,
    naming the sample, the field and the fix."""
    annotations = content["annotations"]
    labels = np.empty(len(annotations), np.int64)
    positions: dict[str, int] = {}
    first = None
    for i, ann in enumerate(annotations):
        name = ann.get("frame_dir") if isinstance(ann, dict) else None
        problem = _problem(ann, layout, first)
        if problem is None and name in positions:
            problem = (
                "frame_dir",
                f"repeats annotation {positions[name]}'s",
                "name each sample once",
            )
        if problem is not None:
            field, what, fix = problem
            raise UserError(
                f"{source}: annotation {i} (frame_dir {name!r}), field {field!r} {what}; {fix}"
            )
        if first is None:
            first = (*ann["keypoint"].shape[2:], "keypoint_score" in ann)
        positions[name] = i
        labels[i] = ann["label"]
    counts = np.bincount(labels)
    gaps = np.flatnonzero(counts == 0)
    if gaps.size:
        raise UserError(
            f"{source}: field 'label': classes {gaps[:10].tolist()} have no sample (labels run "
            f"0..{len(counts) - 1}); renumber the labels 0..classes-1 without gaps"
        )
    return Checked(first[1], first[2], labels.astype(np.int32), len(counts), positions)


def _problem(ann, layout: Layout | None, first: tuple[int, int, bool] | None):
    """One annotation's first problem as (field, problem, fix), or None; first is annotation
    0's (joints, coords, has_score), None while checking it."""
    if not isinstance(ann, dict):
        return "annotation", f"is a {type(ann).__name__}", "each annotation is a dict"
    for field in ("frame_dir", "label", "keypoint"):
        if field not in ann:
            return field, "is missing", "every annotation needs frame_dir, label and keypoint"
    if not isinstance(ann["frame_dir"], str):
        return "frame_dir", "is not a string", "name each sample with a string"
    label = ann["label"]
    if not isinstance(label, int | np.integer) or isinstance(label, bool) or label < 0:
        return "label", f"is {label!r}", "labels are integers 0..classes-1"
    kp = ann["keypoint"]
    if not isinstance(kp, np.ndarray) or kp.dtype.kind not in "fiu":
        return "keypoint", "is not a numeric numpy array", "store np.asarray(keypoint, np.float32)"
    if kp.ndim != 4:
        return "keypoint", f"has shape {kp.shape}, not 4-D", KEYPOINT_SHAPE
    persons, frames, joints, c = kp.shape
    if layout is not None and joints != layout.num_joints:
        what = f"has {joints} joints but layout {layout.name!r} has {layout.num_joints}"
        return "keypoint", what, "pick the keypoints' layout with --config.data.layout"
    if first is not None and joints != first[0]:
        what = f"has {joints} joints, annotation 0 has {first[0]}"
        return "keypoint", what, "every sample follows the same layout"
    if c not in (2, 3) or (first is not None and c != first[1]):
        what = f"has {c} coordinates per joint (annotation 0: {first[1] if first else c})"
        return "keypoint", what, "every sample has 2 (x, y pixels) or every one 3 (x, y, z)"
    if persons == 0 or frames == 0:
        return "keypoint", f"has shape {kp.shape}: no person or no frame", "drop the sample"
    if ann.get("total_frames", frames) != frames:
        what = f"is {ann['total_frames']} but keypoint has {frames} frames"
        return "total_frames", what, "set it to keypoint.shape[1]"
    if not np.isfinite(kp).all():
        return "keypoint", "holds NaN or infinite values", MISSING_JOINTS
    score = ann.get("keypoint_score")
    if first is not None and (score is not None) != first[2]:
        what = "is present in some samples, not in others"
        return "keypoint_score", what, "give every sample scores or none"
    if score is not None and (not isinstance(score, np.ndarray) or score.shape != kp.shape[:3]):
        what = f"has shape {np.shape(score)}, not keypoint's (M, T, V) {kp.shape[:3]}"
        return "keypoint_score", what, "store one score per person, frame and joint"
    if score is not None and not np.isfinite(score).all():
        return "keypoint_score", "holds NaN or infinite values", MISSING_JOINTS
    shape = ann.get("img_shape")
    if shape is not None and (np.shape(shape) != (2,) or min(shape) <= 0):
        return "img_shape", f"is {shape!r}", "give (height, width) in pixels"
    return None


class Samples(NamedTuple):
    """One split's annotations (dicts as in the module docstring), their 0-based int32 labels
    and their frame_dirs (score files name the samples by them), in the split's order."""

    annotations: list[dict]
    labels: np.ndarray
    names: np.ndarray


def load(path: Path, layout: Layout, coords: int) -> tuple[dict, Checked]:
    """The file's content, checked whole against the layout and against data.coords (0: the
    file's), and what the check found."""
    content = read(path)
    checked = check(content, str(path), layout)
    if coords not in (0, checked.coords):
        raise UserError(
            f"{path}: the keypoints are {checked.coords}-D but data.coords={coords}; "
            f"set --config.data.coords={checked.coords} (or 0: from the file)"
        )
    return content, checked


def split_samples(
    content: dict, source: str, checked: Checked, split_names: tuple[str, str]
) -> tuple[Samples, Samples]:
    """The samples of the training and the test split, named `split_names` (data.train_split
    and data.test_split), once `check_splits` has found no sample in both."""
    train, test = (
        split_positions(content, source, checked.positions, name, field)
        for name, field in zip(split_names, ("train_split", "test_split"), strict=True)
    )
    check_splits(content, source, checked.labels, split_names, train, test)
    annotations = content["annotations"]
    frame_dirs = np.array([a["frame_dir"] for a in annotations], str)
    return tuple(
        Samples(
            [annotations[i] for i in positions], checked.labels[positions], frame_dirs[positions]
        )
        for positions in (train, test)
    )


def split_positions(
    content: dict, source: str, positions: dict[str, int], name: str, field: str = ""
) -> np.ndarray:
    """The annotation positions of split `name` (named by config field data.<field>), in
    the split's order."""
    named_by = f" (config field data.{field})" if field else ""
    if name not in content["split"]:
        raise UserError(
            f"{source}: field 'split' has no split {name!r}{named_by}; the file has "
            f"{sorted(content['split'])}" + (f": set --config.data.{field} to one" if field else "")
        )
    frame_dirs = content["split"][name]
    if not len(frame_dirs):
        raise UserError(f"{source}: field 'split', split {name!r}{named_by} is empty")
    index = np.fromiter((positions.get(d, -1) for d in frame_dirs), np.int64, len(frame_dirs))
    if (index < 0).any():
        first = int(np.argmax(index < 0))
        raise UserError(
            f"{source}: field 'split', split {name!r} names frame_dir {frame_dirs[first]!r} "
            f"({int((index < 0).sum())} missing in all) that no annotation has; "
            "list only frame_dirs of the annotations"
        )
    return index


def check_splits(
    content: dict,
    source: str,
    labels: np.ndarray,
    names: tuple[str, str],
    train: np.ndarray,
    test: np.ndarray,
) -> None:
    """Refuses a sample in both the training and the test split (named `names`, at these
    annotation positions): its test score would be of a sample the model trained on. Warns
    about the subtler leak and the gap: test keypoints equal to a training sample's under
    another frame_dir, and classes that the test split has but the training split lacks."""
    annotations = content["annotations"]
    both = np.intersect1d(train, test)
    if both.size:
        first = ", ".join(repr(annotations[i]["frame_dir"]) for i in both[:3])
        raise UserError(
            f"{source}: field 'split': {both.size} frame_dir(s) are in both split {names[0]!r} "
            f"(data.train_split) and split {names[1]!r} (data.test_split), first {first}; "
            "the model would be tested on samples it trained on: list each frame_dir in one "
            "split only"
        )
    copies = _same_keypoints(annotations, train, test)
    if copies:
        pairs = ", ".join(
            f"{annotations[j]['frame_dir']!r} = {annotations[i]['frame_dir']!r}"
            for j, i in copies[:3]
        )
        _warn(
            f"{source}: field 'keypoint': {len(copies)} sample(s) of split {names[1]!r} hold "
            f"the same keypoints as one of split {names[0]!r} under another frame_dir, first "
            f"{pairs}; their test scores are of samples the model trained on: drop the copies "
            "or keep each recording in one split"
        )
    unseen = np.setdiff1d(labels[test], labels[train])
    if unseen.size:
        _warn(
            f"{source}: field 'label': {unseen.size} class(es) of split {names[1]!r} have no "
            f"sample in split {names[0]!r}, first {unseen[:10].tolist()}; the model cannot "
            "learn them: move some of their samples into the training split"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _same_keypoints(annotations: list[dict], train: np.ndarray, test: np.ndarray):
    """(test, train) annotation positions whose keypoint arrays are byte for byte equal. The
    first frame's hash picks the candidates and only they are hashed whole, so a big file
    costs little more than its first frames."""

    def digest(i: int, whole: bool) -> tuple:
        keypoint = annotations[i]["keypoint"]
        part = np.ascontiguousarray(keypoint if whole else keypoint[:, :1])
        return keypoint.dtype.str, keypoint.shape, hashlib.blake2b(part).digest()

    by_start: dict[tuple, list[int]] = {}
    for i in train:
        by_start.setdefault(digest(i, whole=False), []).append(i)
    candidates = [(j, by_start[d]) for j in test if (d := digest(j, whole=False)) in by_start]
    near = sorted({i for _, group in candidates for i in group}, reverse=True)
    whole = {digest(i, whole=True): i for i in near}  # the first of equal ones wins
    return [(j, whole[d]) for j, _ in candidates if (d := digest(j, whole=True)) in whole]


def read_class_names(path: str, num_classes: int) -> tuple[str, ...] | None:
    """The class names of data.class_names, a text file with one per line in label order
    (None when path is empty)."""
    if not path:
        return None
    names = tuple(line.strip() for line in Path(path).expanduser().read_text().splitlines())
    names = names[: len(names) - next((i for i, n in enumerate(reversed(names)) if n), 0)]
    if len(names) != num_classes:
        raise UserError(
            f"{path} (config field data.class_names) names {len(names)} classes but the "
            f"labels give {num_classes}: one name per line, in label order"
        )
    return names
