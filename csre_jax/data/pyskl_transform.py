"""pyskl's per-sample GCN pipeline for your own keypoints, in any layout, 2-D or 3-D.

A sample is one annotation as a pyskl file stores it: keypoint (M, T, V, C), optionally
keypoint_score (M, T, V) and img_shape (h, w). `pack` writes the three into one float32
(C', M, T, V) array (step 2 and the score channel), `Packed` packs a list of annotations lazily,
one sample when drawn, and `sample_transform` is the `pipeline.Transform` of a packed sample.

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
from collections.abc import Callable

import numpy as np
from ml_collections import ConfigDict

from csre_jax.data import transforms
from csre_jax.data.pipeline import Transform
from csre_jax.errors import UserError
from csre_jax.layouts import Layout, load_layout

DEFAULT_IMG_SHAPE = (1080, 1920)  # (h, w), pyskl's PreNormalize2D default
TEST_SEED = 255  # pyskl's UniformSampleFrames test seed
MAX_ROTATION = 0.3  # radians per axis, 3-D training
FLIP_PROBABILITY = 0.5
SCALE = 0.1  # 2-D training: per-axis factor in 1 +- SCALE
SHIFT = 0.1  # 2-D training: per-axis shift in +- SHIFT (coordinates in [-1, 1])
AUTO_ALIGN = ("spine_base", "spine_mid", "left_shoulder", "right_shoulder")

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


def sample_transform(data: ConfigDict, *, train: bool) -> Transform:
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
class Packed:
    """The annotations as `pack`ed samples, converted one at a time when drawn."""

    annotations: list[dict]
    spec: InputSpec

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, i: int) -> np.ndarray:
        ann = self.annotations[i]
        return pack(ann["keypoint"], ann.get("keypoint_score"), ann.get("img_shape"), self.spec)
