"""Per-sample feeder transforms of the official NTU and NW-UCLA loaders, in NumPy, and the
streams (joint, bone, their motion) that every feeder computes.

Every function works on one sample in the official layout (C=3, T, V, M) unless it says
otherwise (the NW-UCLA feeder takes a raw (F, 20, 3) clip), so grain pipelines can call them
per element. Each feeder is a `pipeline.Transform`; its test path is deterministic and matches
the official feeders' outputs (shared/fixtures/feeders_test_mode.npz). With keep_joint a
transform also returns the absolute joints the stream was computed from, as BlockGCN's feeder
does: {"x": stream, "joint": joints}.
"""

import functools

import numpy as np

from csre_jax.data.pipeline import Transform
from csre_jax.layouts import Layout, load_layout

STREAMS = ("joint", "bone", "joint_motion", "bone_motion")
VARIANTS = ("ctrgcn", "csre")

# The official bone lists (bone of v1 = joint v1 - joint v2, 1-based), kept as the reference
# the built-in layouts' default bones are tested against; to_stream reads the layout.
NTU_BONE_PAIRS = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12),
)  # fmt: skip
UCLA_BONE_PAIRS = (
    (1, 2), (2, 3), (3, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19),
)  # fmt: skip

NTU_WINDOW = 64
NTU_TRAIN_P = (0.5, 1.0)
NTU_TEST_P = (0.95,)
MIN_CROP = 64  # the official lower bound on a training crop, hard-coded (not the window)

UCLA_WINDOW = 52
UCLA_MAX_DEGREES = 60
UCLA_SCALE = (0.5, 1.5)
UCLA_POOL_COPIES = 100
UCLA_ORIGIN_JOINT = 1  # python index of the spine, frame 0 of which becomes the origin


def valid_frame_count(x: np.ndarray) -> int:
    """Frames whose values do not sum to zero: the length before the zero padding."""
    return int(np.count_nonzero(x.sum(axis=(0, 2, 3))))


def _resize_time(x: np.ndarray, window: int) -> np.ndarray:
    """Linear resize of float32 x along T with half-pixel centres (PyTorch bilinear).

    Indices and weights are float32 as in PyTorch's CPU kernel, and the blend rounds as it
    does, x0 * w0 fused with the rounded x1 * w1 (float64 holds the exact product), so the
    result is bit-identical to the official feeder's.
    """
    length = x.shape[1]
    scale = np.float32(length) / np.float32(window)
    src = np.maximum(scale * (np.arange(window, dtype=np.float32) + 0.5) - 0.5, 0)
    i0 = np.minimum(src.astype(np.int64), length - 1)
    i1 = np.minimum(i0 + 1, length - 1)
    w1 = (src - i0).astype(np.float32)[:, None, None]
    w0 = np.float32(1) - w1
    far = (x[:, i1] * w1).astype(np.float64)
    return (x[:, i0].astype(np.float64) * w0 + far).astype(np.float32)


def crop_resize(
    x: np.ndarray,
    valid: int,
    window: int,
    p_interval: tuple[float, ...],
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Crop the valid frames and resize them to `window` (official valid_crop_resize).

    One p: the centre crop dropping int((1 - p) * valid / 2) frames at each end. Two: a
    random fraction p of the valid frames (clamped to [MIN_CROP, valid]) at a random start.
    """
    if valid < 1:
        raise ValueError("the sample has no non-zero frame to crop")
    if len(p_interval) == 1:
        border = int((1 - p_interval[0]) * valid / 2)
        crop = x[:, border : valid - border]
    else:
        if rng is None:
            raise ValueError("a random crop (two-value p_interval) needs a Generator")
        low, high = p_interval
        p = rng.random() * (high - low) + low
        length = min(max(int(np.floor(valid * p)), MIN_CROP), valid)
        start = int(rng.integers(0, valid - length + 1))
        crop = x[:, start : start + length]
    return _resize_time(crop.astype(np.float32, copy=False), window)


def rotation_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """R = Rz . Ry . Rx with Rx = [[1, 0, 0], [0, cx, sx], [0, -sx, cx]] and Ry, Rz below: the
    sign convention of `_rot` in the official CTR-GCN feeders/tools.py."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(x: np.ndarray, rng: np.random.Generator, max_angle: float = 0.3) -> np.ndarray:
    """Rotate every joint of every frame and person by one random R (angles in radians)."""
    rot = rotation_matrix(*rng.uniform(-max_angle, max_angle, size=3)).astype(x.dtype)
    return np.tensordot(rot, x, axes=(1, 0))


def check_stream(stream: str, variant: str) -> None:
    """Fails early, when a transform is built, on an unknown stream or feeder variant."""
    for name, value, allowed in (("stream", stream, STREAMS), ("variant", variant, VARIANTS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


@functools.cache
def _bone_partners(layout: Layout) -> np.ndarray:
    """The layout's bone partners as an index array, built once per layout."""
    return np.array(layout.bone_partners())


def to_stream(x: np.ndarray, stream: str, *, skeleton: Layout | str, variant: str) -> np.ndarray:
    """Joint, bone or their motion from joints (C, T, V, M), the official way per variant.

    skeleton is a Layout or a built-in layout's name: its bone partners give the bones and
    its centre is the root. CSRE centres joints per frame on the root joint and keeps the
    root's trajectory in its slot, for joints and for the root's (otherwise zero) bone;
    CTR-GCN does neither. Motion is the forward difference of that result, zero at the last
    frame.
    """
    check_stream(stream, variant)
    layout = load_layout(skeleton)
    root = layout.centre
    if stream.startswith("bone"):
        y = x - np.take(x, _bone_partners(layout), axis=2)
    elif variant == "csre":
        y = x - x[:, :, root : root + 1]
    else:
        y = x.copy()
    if variant == "csre":
        y[:, :, root] = x[:, :, root]
    if stream.endswith("_motion"):
        motion = np.zeros_like(y)
        motion[:, :-1] = y[:, 1:] - y[:, :-1]
        y = motion
    return y


def model_inputs(joints: np.ndarray, stream: np.ndarray, keep_joint: bool):
    """The stream as float32, with the joints it came from when keep_joint (BlockGCN)."""
    stream = np.ascontiguousarray(stream, dtype=np.float32)
    if not keep_joint:
        return stream
    return {"x": stream, "joint": np.ascontiguousarray(joints, dtype=np.float32)}


def ntu_transform(
    *,
    train: bool,
    stream: str,
    variant: str,
    window: int = NTU_WINDOW,
    p_interval: tuple[float, ...] | None = None,
    rotate: bool | None = None,
    keep_joint: bool = False,
) -> Transform:
    """The NTU feeder for one (3, T, 25, 2) sample: crop/resize, rotation, stream, motion.

    p_interval defaults to the official (0.5, 1.0) in training and (0.95,) at test; rotate
    defaults to train (the official configs rotate in training only). keep_joint also
    returns the cropped, rotated joints (see the module docstring).
    """
    if p_interval is None:
        p_interval = NTU_TRAIN_P if train else NTU_TEST_P
    if rotate is None:
        rotate = train
    if rotate and not train:
        raise ValueError("rotation is random: a test transform gets no Generator")
    check_stream(stream, variant)

    def transform(x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if train and rng is None:
            raise ValueError("a training transform needs a Generator")
        x = crop_resize(x, valid_frame_count(x), window, p_interval, rng)
        if rotate:
            x = random_rotation(x, rng)
        return model_inputs(x, to_stream(x, stream, skeleton="ntu", variant=variant), keep_joint)

    return transform


def ucla_clip_to_sample(
    clip: np.ndarray, rng: np.random.Generator | None, window: int = UCLA_WINDOW
) -> np.ndarray:
    """A raw (F, 20, 3) clip -> joints (3, window, 20, 1) float64, the official UCLA way.

    Origin at frame 0's spine; in training a random view (integer degrees about x and y)
    and scale; per-axis min-max to [-1, 1]; then `window` frames: sorted draws without
    replacement from 100 copies of each index in training, floor(linspace) at test.
    """
    frames, joints = clip.shape[:2]
    x = np.asarray(clip, dtype=np.float64)
    # Coordinate-major (3, F*20): per-axis reductions are fast, and it is the output layout.
    x = np.ascontiguousarray((x - x[0, UCLA_ORIGIN_JOINT]).reshape(-1, 3).T)
    if rng is not None:
        ax, ay = np.radians(rng.integers(-UCLA_MAX_DEGREES, UCLA_MAX_DEGREES + 1, size=2))
        scale = rng.uniform(*UCLA_SCALE)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), np.sin(ax)], [0, -np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, -np.sin(ay)], [0, 1, 0], [np.sin(ay), 0, np.cos(ay)]])
        x = (ry @ rx * scale).T @ x  # row vectors p -> p . (Ry . Rx . sI)
    low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    x = ((x - low) / (high - low) * 2 - 1).reshape(3, frames, joints)
    if rng is None:
        idx = np.linspace(0, frames - 1, window).astype(np.int64)
    else:
        idx = np.sort(rng.choice(frames * UCLA_POOL_COPIES, size=window, replace=False) % frames)
    return x[:, idx, :, None]


def ucla_transform(
    *, train: bool, stream: str, variant: str, keep_joint: bool = False
) -> Transform:
    """The NW-UCLA feeder for one raw (F, 20, 3) clip -> (3, 52, 20, 1) float32."""
    check_stream(stream, variant)

    def transform(clip: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if train and rng is None:
            raise ValueError("a training transform needs a Generator")
        x = ucla_clip_to_sample(clip, rng if train else None)
        return model_inputs(x, to_stream(x, stream, skeleton="ucla", variant=variant), keep_joint)

    return transform
