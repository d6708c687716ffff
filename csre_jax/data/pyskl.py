"""Your own skeletons: pyskl's annotation pickle in any layout, 2-D or 3-D, as a dataset.

The file (as pyskl, kennymckormick/pyskl, writes it; `python -m csre_jax.data.convert`
writes it from other formats):

    {'split': {name: [frame_dir, ...]},
     'annotations': [{'frame_dir': str, 'label': int (0-based), 'total_frames': T,
                      'keypoint': (M, T, V, C) float, C = 2 (pixels) or 3 (3-D),
                      'keypoint_score': (M, T, V) (optional), 'img_shape': (h, w) (optional)}]}

`load` checks the whole file before training in one pass that copies no keypoint array
(tens of microseconds a sample: 100,000 samples take seconds); every error names the file,
the sample's frame_dir, the field and the fix. It refuses a frame_dir listed in both the
training and the test split, and warns (on stderr) about test samples whose keypoints repeat
a training sample's byte for byte and about classes that have no training sample. The splits
then read the annotations lazily: the keypoints stay as loaded, one copy in memory, and each
sample is converted when drawn.

Per sample, in this order (pyskl's GCN pipelines: PreNormalize2D/3D, UniformSampleFrames,
FormatGCNInput), train and test alike unless marked:

1. Persons. A sample with more than data.num_person persons keeps the num_person with the
   largest total keypoint score (when scores are used), otherwise the largest motion energy
   (the NTU preparation's rule: the variance of the person's coordinates over the frames where
   it is present, summed over axes), in their original order. Fewer are zero-padded at the end.
2. 2-D coordinates are scaled to [-1, 1] by the image: x -> x / (w / 2) - 1 and likewise y
   with h; img_shape defaults to pyskl's (1080, 1920) when a sample has none.
3. 3-D: frames where the main person (the one present in the most frames, moved first) is
   absent are dropped. Origin: the main person's layout centre joint at its first frame,
   subtracted from every present joint. Alignment (data.align = 'a,b,c,d'): rotate so that
   a -> b points along +z, then c -> d along +x, both measured on that first frame; joints
   are names or 0-based indices. 'auto' uses spine_base -> spine_mid and left_shoulder ->
   right_shoulder when the layout has those joints (pyskl's NTU choice) and skips alignment
   otherwise; 'none' skips it.
   pyskl centres NTU on the spine mid joint, we on the layout's centre: a constant shift.
4. Frames: pyskl's UniformSampleFrames to data.num_frames: one frame from each of the window's
   equal segments when the clip has at least twice the window, the window's frames with
   random single-frame gaps when it has between one and two windows, and a looped run from a
   random start when it is shorter. Training draws from the pipeline's generator; the test
   path draws from a fresh Generator seeded with 255 (pyskl's test seed) and starts short
   clips at frame 0, so it is deterministic (one clip, as pyskl's validation; its test
   configs average 10).
5. Training only, with data.augment: 3-D, one random rotation of up to 0.3 rad per axis
   (`transforms.random_rotation`); 2-D, a horizontal flip with probability 1/2 (x -> -x and
   left/right joints swapped by the layout's flip_pairs), a scale of 1 +- 0.1 and a shift of
   +- 0.1 per axis.
6. Output (C', T, V, M) float32: C' = 3 for 3-D, 2 for 2-D, 3 for 2-D with the score channel
   (data.use_score: on by default, used when the file has scores). The stream comes from
   `transforms.to_stream` with the layout; the score channel of a bone is the mean of its two
   joints' scores and of a motion the mean of the two frames', as pyskl's GenSkeFeat does.

`inference_transform(data)` is the test path for raw keypoints, from the config alone.
"""

import dataclasses
import hashlib
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from csre_jax.data import transforms
from csre_jax.data.pipeline import Split
from csre_jax.errors import UserError
from csre_jax.layouts import Layout, load_layout

DEFAULT_IMG_SHAPE = (1080, 1920)  # (h, w), pyskl's PreNormalize2D default
TEST_SEED = 255  # pyskl's UniformSampleFrames test seed
MAX_ROTATION = 0.3  # radians per axis, 3-D training
FLIP_PROBABILITY = 0.5
SCALE = 0.1  # 2-D training: per-axis factor in 1 +- SCALE
SHIFT = 0.1  # 2-D training: per-axis shift in +- SHIFT (coordinates in [-1, 1])
AUTO_ALIGN = ("spine_base", "spine_mid", "left_shoulder", "right_shoulder")
KEYPOINT_SHAPE = "store (persons, frames, joints, coords); one person's (T, V, C) as keypoint[None]"
MISSING_JOINTS = "write 0 for undetected joints (pyskl's convention) or drop the sample"

KeypointTransform = Callable[
    [np.ndarray, np.ndarray | None, tuple[int, int] | None], np.ndarray | dict
]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model trained on the custom dataset takes, fixed by the config alone."""

    layout: Layout
    coords: int  # 2 or 3
    use_score: bool  # 2-D only: the keypoint score is the last channel
    window: int
    num_person: int
    stream: str

    @property
    def channels(self) -> int:
        return self.coords + self.use_score

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One sample's (C', T, V, M)."""
        return (self.channels, self.window, self.layout.num_joints, self.num_person)


def input_spec(data: ConfigDict) -> InputSpec:
    """The spec of data.*; data.coords must be resolved (load_dataset fills it in)."""
    if data.coords not in (2, 3):
        raise UserError(
            f"data.coords={data.coords}: set 2 or 3 (0 means 'from the file' and is filled in "
            "when the dataset loads; a run's saved config has it)"
        )
    if data.num_person < 1 or data.num_frames < 1:
        raise UserError("data.num_person and data.num_frames must be at least 1")
    return InputSpec(
        layout=load_layout(data.layout),
        coords=data.coords,
        use_score=bool(data.use_score) and data.coords == 2,
        window=data.num_frames,
        num_person=data.num_person,
        stream=data.stream,
    )


def pack(
    keypoint: np.ndarray,
    score: np.ndarray | None,
    img_shape: tuple[int, int] | None,
    spec: InputSpec,
) -> np.ndarray:
    """Raw keypoints (M, T, V, C) -> one float32 (C', M, T, V) array, channels first so each
    is written whole: 2-D scaled to [-1, 1] by img_shape (default DEFAULT_IMG_SHAPE), the
    score appended as the last channel."""
    keypoint = np.asarray(keypoint)
    expected = (spec.layout.num_joints, spec.coords)
    if keypoint.ndim != 4 or keypoint.shape[2:] != expected:
        raise UserError(
            f"keypoint has shape {keypoint.shape}, expected (M, T, {expected[0]}, {expected[1]})"
            f" for layout {spec.layout.name!r} and data.coords={spec.coords}"
        )
    out = np.empty((spec.channels, *keypoint.shape[:3]), np.float32)
    if spec.coords == 2:
        h, w = img_shape if img_shape is not None else DEFAULT_IMG_SHAPE
        scale = np.array([2 / w, 2 / h], np.float32)[:, None, None, None]
        np.multiply(keypoint.transpose(3, 0, 1, 2), scale, out=out[:2], dtype=np.float32)
        out[:2] -= 1
    else:
        out[:3] = keypoint.transpose(3, 0, 1, 2)
    if spec.use_score:
        if score is None or np.shape(score) != keypoint.shape[:3]:
            raise UserError(
                f"the model takes keypoint scores (data.use_score): give keypoint_score of "
                f"shape {keypoint.shape[:3]}, got {None if score is None else np.shape(score)}"
            )
        out[-1] = score
    return out


def uniform_sample(length: int, window: int, rng: np.random.Generator | None) -> np.ndarray:
    """`window` frame indices of a `length`-frame clip, pyskl's UniformSampleFrames (module
    docstring, step 4); rng None is the deterministic test draw."""
    test = rng is None
    if test:
        rng = np.random.default_rng(TEST_SEED)
    if length < window:
        start = 0 if test else int(rng.integers(length))
        return (start + np.arange(window)) % length
    if length < 2 * window:
        gaps = np.zeros(window + 1, np.int64)
        gaps[rng.choice(window + 1, length - window, replace=False)] = 1
        return np.arange(window) + np.cumsum(gaps)[:-1]
    bounds = np.arange(window + 1) * length // window
    return bounds[:-1] + rng.integers(np.diff(bounds))


def _select_persons(x: np.ndarray, keep: int, scored: bool) -> np.ndarray:
    """The `keep` persons of (C', M, T, V) with the largest score sum (scored) or motion
    energy, in their original order."""
    persons = x.shape[1]
    if persons <= keep:
        return x
    if scored:
        rank = x[-1].sum(axis=(1, 2))
    else:
        present = np.any(x != 0, axis=(0, 3))
        rank = [x[:, m, present[m]].var(axis=(1, 2)).sum() for m in range(persons)]
    return x[:, np.sort(np.argsort(-np.asarray(rank), kind="stable")[:keep])]


def _rotation_onto(v: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rotation about v x target taking v's direction onto target's (identity when v is
    zero or already (anti)parallel to target)."""
    axis = np.cross(v, target)
    sin, cos = np.linalg.norm(axis), np.dot(v, target)
    if sin < 1e-6 * max(np.linalg.norm(v), 1e-12):
        return np.eye(3)
    k = axis / sin
    angle = np.arctan2(sin, cos)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def align_joints(layout: Layout, align: str) -> tuple[int, int, int, int] | None:
    """data.align as four joint indices (module docstring, step 3), or None: no alignment."""
    if align == "none":
        return None
    if align == "auto":
        names = AUTO_ALIGN if set(AUTO_ALIGN) <= set(layout.joints) else None
    else:
        names = [j.strip() for j in align.split(",")]
        if len(names) != 4:
            raise UserError(f"data.align={align!r}: give 'auto', 'none' or four joints a,b,c,d")
    if names is None:
        return None
    joints = []
    for name in names:
        if name in layout.joints:
            joints.append(layout.joints.index(name))
        elif str(name).isdigit() and int(name) < layout.num_joints:
            joints.append(int(name))
        else:
            raise UserError(f"data.align: {name!r} is not a joint of layout {layout.name!r}")
    return tuple(joints)


def _normalise_3d(
    x: np.ndarray, clip: np.ndarray, centre: int, align: tuple[int, int, int, int] | None
) -> np.ndarray:
    """clip (3, W, V, M) centred on x's (3, M, T, V) first frame's main centre joint, absent
    joints kept at zero, then aligned (module docstring, step 3)."""
    first = x[:, 0, 0].T  # (V, 3)
    origin = first[centre]
    present = np.any(clip != 0, axis=0)
    clip = (clip - origin[:, None, None, None]) * present
    if align is not None:
        first = (first - origin) * np.any(first != 0, axis=1, keepdims=True)
        z_from, z_to, x_from, x_to = align
        rot = _rotation_onto(first[z_to] - first[z_from], np.array([0.0, 0.0, 1.0]))
        rot = _rotation_onto(rot @ (first[x_to] - first[x_from]), np.array([1.0, 0.0, 0.0])) @ rot
        clip = np.tensordot(rot.astype(np.float32), clip, axes=(1, 0))
    return clip


def _main_person_first(x: np.ndarray) -> np.ndarray:
    """3-D: the person present in the most frames first, then only its frames (all frames
    of an empty sample)."""
    present = np.any(x != 0, axis=(0, 3))  # (M, T)
    main = int(np.argmax(present.sum(axis=1)))
    if main:
        x = x[:, [main, *(m for m in range(x.shape[1]) if m != main)]]
    return x[:, :, present[main]] if present[main].any() else x


def _score_stream(score: np.ndarray, stream: str, partners: np.ndarray) -> np.ndarray:
    """The score channel (1, T, V, M) of a stream, as pyskl's JointToBone and ToMotion."""
    if stream.startswith("bone"):
        score = (score + score[:, :, partners]) / 2
    if stream.endswith("_motion"):
        motion = np.zeros_like(score)
        motion[:, :-1] = (score[:, :-1] + score[:, 1:]) / 2
        score = motion
    return score


def flip_2d(clip: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """The horizontal mirror of a 2-D clip (C', T, V, M) in [-1, 1]: x -> -x, and each joint
    takes its mirror partner's values (layout.flip_permutation()), the score included."""
    flipped = clip[:, :, permutation]
    flipped[0] = -flipped[0]
    return flipped


def _augment_2d(clip: np.ndarray, rng: np.random.Generator, flip: np.ndarray) -> np.ndarray:
    """Training's 2-D flip, scale and shift of a clip (C', T, V, M) (module docstring, 5)."""
    if rng.random() < FLIP_PROBABILITY:
        clip = flip_2d(clip, flip)
    scale = 1 + rng.uniform(-SCALE, SCALE, (2, 1, 1, 1))
    shift = rng.uniform(-SHIFT, SHIFT, (2, 1, 1, 1))
    clip[:2] = clip[:2] * scale.astype(np.float32) + shift.astype(np.float32)
    return clip


def sample_transform(data: ConfigDict, *, train: bool) -> transforms.Transform:
    """The per-sample transform of `pack`ed samples (C', M, T, V) -> (C', T, V, M)."""
    spec = input_spec(data)
    layout, coords = spec.layout, spec.coords
    align = align_joints(layout, data.get("align", "auto")) if coords == 3 else None
    augment = train and data.get("augment", True)
    variant, keep_joint = data.get("feeder_variant", "ctrgcn"), data.get("keep_joint", False)
    transforms.check_stream(spec.stream, variant)
    partners = np.array(layout.bone_partners())
    flip = np.array(layout.flip_permutation())

    def transform(x: np.ndarray, rng: np.random.Generator | None):
        if train and rng is None:
            raise ValueError("a training transform needs a Generator")
        x = _select_persons(x, spec.num_person, spec.use_score)
        if coords == 3:
            x = _main_person_first(x)
        frames = uniform_sample(x.shape[2], spec.window, rng if train else None)
        clip = np.ascontiguousarray(x[:, :, frames].transpose(0, 2, 3, 1))  # (C', W, V, M)
        if coords == 3:
            clip = _normalise_3d(x, clip, layout.centre, align)
        if augment and coords == 3:
            clip = transforms.random_rotation(clip, rng, MAX_ROTATION)
        elif augment:
            clip = _augment_2d(clip, rng, flip)
        joints = np.zeros(spec.shape, np.float32)
        joints[..., : clip.shape[-1]] = clip
        stream = transforms.to_stream(
            joints[:coords], spec.stream, skeleton=layout, variant=variant
        )
        if spec.use_score:
            stream = np.concatenate([stream, _score_stream(joints[coords:], spec.stream, partners)])
        return transforms.model_inputs(joints, stream, keep_joint)

    return transform


def inference_transform(data: ConfigDict) -> KeypointTransform:
    """The deterministic test path from the config alone, for raw keypoints:
    f(keypoint (M, T, V, C), keypoint_score (M, T, V) or None, img_shape (h, w) or None)
    -> (C', T, V, M) float32 (a dict with 'joint' when data.keep_joint). Training's test
    split runs exactly `pack` then this transform."""
    spec, transform = input_spec(data), sample_transform(data, train=False)
    return lambda keypoint, score=None, img_shape=None: transform(
        pack(keypoint, score, img_shape, spec), None
    )


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A checked file's splits (lazy over its annotations), their samples' frame_dirs in split
    order (score files name the samples by them) and the class names (or None)."""

    train: Split
    test: Split
    class_names: tuple[str, ...] | None
    train_names: np.ndarray
    test_names: np.ndarray


def load(data: ConfigDict) -> Loaded:
    """data.path's splits data.train_split and data.test_split, checked whole first.

    Fills in what the file decides, so the run's saved config rebuilds the same input spec:
    data.coords (0: the file's) and data.use_score (kept only for 2-D files with scores).
    data.class_names optionally names a text file with one class name per line, by label.
    """
    if not data.path:
        raise UserError(
            "data.path is empty: name your pyskl annotation pickle, e.g. "
            "--config.data.path=my.pkl --config.data.layout=coco (README, 'Your own data')"
        )
    layout = load_layout(data.layout)
    path = Path(data.path).expanduser()
    content = read(path)
    checked = check(content, str(path), layout)
    if data.coords not in (0, checked.coords):
        raise UserError(
            f"{path}: the keypoints are {checked.coords}-D but data.coords={data.coords}; "
            f"set --config.data.coords={checked.coords} (or 0: from the file)"
        )
    data.coords = checked.coords
    data.use_score = bool(data.use_score) and checked.has_score and checked.coords == 2
    spec = input_spec(data)
    everything = Split(_Packed(content["annotations"], spec), checked.labels, checked.num_classes)
    train, test = (
        split_positions(content, str(path), checked.positions, data[field], field)
        for field in ("train_split", "test_split")
    )
    names = (data.train_split, data.test_split)
    check_splits(content, str(path), checked.labels, names, train, test)
    frame_dirs = np.array([a["frame_dir"] for a in content["annotations"]], str)
    return Loaded(
        everything.subset(train),
        everything.subset(test),
        _class_names(data.get("class_names", ""), checked.num_classes),
        frame_dirs[train],
        frame_dirs[test],
    )


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


def _class_names(path: str, num_classes: int) -> tuple[str, ...] | None:
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


@dataclasses.dataclass(frozen=True)
class _Packed:
    """The annotations as `pack`ed samples, converted one at a time when drawn."""

    annotations: list[dict]
    spec: InputSpec

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, i: int) -> np.ndarray:
        ann = self.annotations[i]
        return pack(ann["keypoint"], ann.get("keypoint_score"), ann.get("img_shape"), self.spec)
