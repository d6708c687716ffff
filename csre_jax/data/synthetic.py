"""Deterministic synthetic skeleton actions in the NTU feeder layout, separable by motion only.

Lets a newcomer train and test the whole pipeline without NTU RGB+D. Each person is the NTU
25-joint Kinect v2 skeleton driven by a few degrees of freedom (DOFs): joint rotations and a
root step. A DOF follows ``base + a * A * sin(2 pi m f t + phase)``, with the same base,
amplitude ``A``, amplitude factor ``a`` ~ U(0.6, 1) and tempo ``f`` distributions in every
class; a class only chooses which DOFs oscillate (multiplier ``m``; 0 freezes the DOF at
``base + a * A * sin(phase)``) and which of them share a phase. The phase is uniform and
independent of the class, so every DOF has the same distribution at every frame in every
class, and phases are shared only between DOFs that move disjoint sets of joints. Each joint's
expected position at every frame, hence its expected time-averaged position, is therefore the
same in every class: a linear model on the average pose is at chance, while the motion tells
the classes apart.

Samples also vary in subject (height, body proportions), viewpoint (azimuth, elevation) and
joint noise. A second person, the partner in interactions and an idle bystander otherwise, is
present with the same probability in every class.
"""

import numpy as np

# Parent of each joint in the NTU (Kinect v2) joint order, 0-based; spine base is the root.
_PARENT = (-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11)
# Parents before children.
_ORDER = (0, 1, 20, 2, 3, 4, 5, 6, 7, 21, 22, 8, 9, 10, 11, 23, 24, 12, 13, 14, 15, 16, 17, 18, 19)

# Rest-pose bone vectors (metres; y up, facing -z, the person's left at -x as in Kinect camera
# space), lengths near the median of real NTU skeletons. Right-side bones mirror these.
_CENTRE_BONES = {
    1: (0.0, 0.27, 0.0),  # spine mid
    20: (0.0, 0.2, 0.0),  # spine shoulder
    2: (0.0, 0.065, -0.01),  # neck
    3: (0.0, 0.125, -0.01),  # head
}
_LEFT_BONES = {
    4: (-0.155, -0.03, 0.0),  # shoulder
    5: (-0.02, -0.245, 0.0),  # elbow
    6: (-0.01, -0.228, -0.01),  # wrist
    7: (0.0, -0.06, -0.01),  # hand
    21: (0.0, -0.05, -0.01),  # hand tip
    22: (0.02, -0.03, -0.03),  # thumb
    12: (-0.075, -0.05, 0.0),  # hip
    13: (-0.01, -0.33, 0.0),  # knee
    14: (0.0, -0.34, 0.02),  # ankle
    15: (0.0, -0.05, -0.11),  # foot
}
_MIRROR = {4: 8, 5: 9, 6: 10, 7: 11, 21: 23, 22: 24, 12: 16, 13: 17, 14: 18, 15: 19}

# Subject proportions: every bone of a group is scaled by the same random factor.
_BODY_PARTS = {
    "torso": (1, 20, 2, 3),
    "width": (4, 8, 12, 16),
    "arms": (5, 6, 7, 21, 22, 9, 10, 11, 23, 24),
    "legs": (13, 14, 15, 17, 18, 19),
}

# Rotation DOFs: (bone = its child joint, axis, sign, base, amplitude) with the applied angle
# sign * (base + a * amplitude * wave), in radians; signs make positive values anatomical.
_ROTATIONS = {
    "torso_bend": (1, 0, -1.0, 0.1, 0.3),
    "torso_sway": (1, 2, 1.0, 0.0, 0.25),
    "torso_twist": (1, 1, 1.0, 0.0, 0.6),
    "head_nod": (3, 0, -1.0, 0.1, 0.35),
    "l_shoulder_flex": (5, 0, 1.0, 0.4, 0.8),
    "l_shoulder_abd": (5, 2, -1.0, 0.35, 0.6),
    "l_elbow": (6, 0, 1.0, 0.8, 0.7),
    "r_shoulder_flex": (9, 0, 1.0, 0.4, 0.8),
    "r_shoulder_abd": (9, 2, 1.0, 0.35, 0.6),
    "r_elbow": (10, 0, 1.0, 0.8, 0.7),
    "l_hip": (13, 0, 1.0, 0.2, 0.35),
    "l_knee": (14, 0, -1.0, 0.35, 0.45),
    "r_hip": (17, 0, 1.0, 0.2, 0.35),
    "r_knee": (18, 0, -1.0, 0.35, 0.45),
}
# Root translation DOFs in the person's frame: (axis, signed amplitude in metres); forward is
# -z, towards the partner. Only person 2 ever steps: centring on person 1 (as NTU does) removes
# a still person 1's offset but not a stepping one's, and that class-dependent whole-body spread
# is enough for a linear fit on a few thousand samples to beat chance.
_TRANSLATIONS = {"step_forward": (2, -0.2)}
_DOFS = (*_ROTATIONS, *_TRANSLATIONS)
_BASE = np.array([r[3] for r in _ROTATIONS.values()] + [0.0] * len(_TRANSLATIONS))
_AMPLITUDE = np.array(
    [r[4] for r in _ROTATIONS.values()] + [abs(a) for _, a in _TRANSLATIONS.values()]
)

# Per class, the moving DOFs as (person, dof, multiplier, phase group, phase offset); a None
# group draws its own phase. Same-group DOFs must move disjoint joints (tests check this).
_PI = np.pi
_ACTIONS = {
    "wave right hand": ((0, "r_elbow", 2, None, 0), (0, "r_shoulder_abd", 1, None, 0)),
    "clap": (
        (0, "l_shoulder_abd", 2, 0, 0),
        (0, "r_shoulder_abd", 2, 0, 0),
        (0, "l_elbow", 1, 1, 0),
        (0, "r_elbow", 1, 1, 0),
    ),
    "jumping jack": (
        (0, "l_shoulder_abd", 1, 0, 0),
        (0, "r_shoulder_abd", 1, 0, 0),
        (0, "l_knee", 2, 0, 0),
        (0, "r_knee", 2, 0, 0),
    ),
    "march in place": (
        (0, "l_hip", 1, 0, 0),
        (0, "r_hip", 1, 0, _PI),
        (0, "l_shoulder_flex", 1, 0, _PI),
        (0, "r_shoulder_flex", 1, 0, 0),
        (0, "l_knee", 1, 1, 0),
        (0, "r_knee", 1, 1, _PI),
    ),
    "bow": ((0, "torso_bend", 1, None, 0), (0, "head_nod", 2, None, 0)),
    "twist torso": ((0, "torso_twist", 1, None, 0), (0, "torso_sway", 2, None, 0)),
    "handshake": (
        (0, "r_elbow", 2, 0, 0),
        (1, "r_elbow", 2, 0, 0),
        (0, "r_shoulder_flex", 1, None, 0),
    ),
    "push": (
        (0, "l_shoulder_flex", 1, 0, 0),
        (0, "r_shoulder_flex", 1, 0, 0),
        (0, "torso_bend", 1, None, 0),
        (1, "step_forward", 1, 0, _PI),
        (1, "torso_bend", 1, 0, _PI),
    ),
    "hug": (
        (0, "l_shoulder_abd", 1, 0, _PI),
        (0, "r_shoulder_abd", 1, 0, _PI),
        (0, "torso_bend", 1, None, 0),
        (1, "l_shoulder_abd", 1, 0, _PI),
        (1, "r_shoulder_abd", 1, 0, _PI),
        (1, "step_forward", 1, 0, 0),
    ),
    "pass object": ((0, "l_shoulder_flex", 1, 0, 0), (1, "r_shoulder_flex", 1, 0, _PI / 2)),
    "kick": ((0, "r_hip", 1, None, 0), (0, "r_knee", 2, None, 0)),
    "swing arms": (
        (0, "l_shoulder_flex", 1, 0, 0),
        (0, "r_shoulder_flex", 1, 0, _PI),
        (0, "l_elbow", 1, 1, 0),
        (0, "r_elbow", 1, 1, _PI),
    ),
}
CLASS_NAMES = tuple(_ACTIONS)

_PARTNER_PROB = 0.75  # a second person (partner or idle bystander), the same in every class
_CYCLES = (2.0, 3.0)  # tempo: cycles per sequence at multiplier 1


def _class_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, person, dof) multiplier, phase group (-1 = own phase) and phase offset."""
    shape = (len(_ACTIONS), 2, len(_DOFS))
    mult, group, offset = np.zeros(shape), np.full(shape, -1), np.zeros(shape)
    for c, moves in enumerate(_ACTIONS.values()):
        for person, dof, m, g, off in moves:
            d = _DOFS.index(dof)
            mult[c, person, d] = m
            group[c, person, d] = -1 if g is None else g
            offset[c, person, d] = off
    return mult, group, offset


_MULT, _GROUP, _OFFSET = _class_tables()


def _rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """Right-handed rotation matrices (..., 3, 3) about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.zeros((*np.shape(angle), 3, 3), dtype=c.dtype)
    rot[..., axis, axis] = 1
    rot[..., i, i], rot[..., i, j], rot[..., j, i], rot[..., j, j] = c, -s, s, c
    return rot


def _rest_bones(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Per-person bone vectors (N, M, 25, 3): height and body-part proportions vary."""
    bones = np.zeros((25, 3))
    for joint, vec in _CENTRE_BONES.items():
        bones[joint] = vec
    for joint, vec in _LEFT_BONES.items():
        bones[joint] = vec
        bones[_MIRROR[joint]] = (-vec[0], vec[1], vec[2])
    scale = np.broadcast_to(rng.uniform(0.85, 1.15, (*shape, 1)), (*shape, 25)).copy()
    for joints in _BODY_PARTS.values():
        scale[..., joints] *= rng.uniform(0.92, 1.08, (*shape, 1))
    return bones * scale[..., None]


def _forward_kinematics(
    bones: np.ndarray, angles: np.ndarray, orientation: np.ndarray, root: np.ndarray
) -> np.ndarray:
    """Joints (25, N, M, T, 3) in the scene from bones (N, M, 25, 3), rotation DOFs
    (N, M, R, T), each person's orientation (N, M, 3, 3) and root trajectory (N, M, T, 3)."""
    local = {}
    for r, (bone, axis, sign, _, _) in enumerate(_ROTATIONS.values()):
        rot = _rotation(axis, sign * angles[:, :, r])
        local[bone] = local[bone] @ rot if bone in local else rot
    frames = {0: orientation[:, :, None]}  # orientation of the bone ending at each joint
    joints = {0: root}
    for j in _ORDER[1:]:
        parent = _PARENT[j]
        frames[j] = frames[parent] @ local[j] if j in local else frames[parent]
        joints[j] = joints[parent] + np.einsum("nmtij,nmj->nmti", frames[j], bones[:, :, j])
    return np.stack([joints[j] for j in range(25)])


def _trajectories(rng: np.random.Generator, label: np.ndarray, num_frames: int) -> np.ndarray:
    """DOF values (N, 2, D, T): the class picks multipliers and phase coupling, the sample its
    tempo, amplitudes and phases."""
    n = len(label)
    mult, group, offset = _MULT[label], _GROUP[label], _OFFSET[label]
    cycles = rng.uniform(*_CYCLES, (n, 1, 1)) * mult
    amplitude = _AMPLITUDE * rng.uniform(0.6, 1.0, mult.shape)
    own_phase = rng.uniform(0, 2 * _PI, mult.shape)
    group_phase = rng.uniform(0, 2 * _PI, (n, _GROUP.max() + 1))
    shared = np.take_along_axis(group_phase, np.maximum(group, 0).reshape(n, -1), axis=1)
    phase = np.where(group >= 0, mult * shared.reshape(group.shape) + offset, own_phase)
    time = np.arange(num_frames) / num_frames
    wave = np.sin(2 * _PI * cycles[..., None] * time + phase[..., None])
    return (_BASE[:, None] + amplitude[..., None] * wave).astype(np.float32)


def _placement(rng: np.random.Generator, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each person's orientation (N, 2, 3, 3) and root trajectory (N, 2, T, 3) in camera space
    from the translation DOFs (N, 2, D_t, T): person 1 on the left facing person 2, both seen
    from a random azimuth (+-45 degrees, as NTU's three cameras) and elevation."""
    n, shape = len(shifts), shifts.shape[:2]
    distance = rng.uniform(0.8, 1.4, n)
    position = np.zeros((*shape, 3))
    position[:, 0, 0], position[:, 1, 0] = -distance / 2, distance / 2
    position[:, 1, 2] = rng.uniform(-0.2, 0.2, n)
    facing = np.array([-_PI / 2, _PI / 2]) + rng.uniform(-0.25, 0.25, shape)
    view = _rotation(0, rng.uniform(-0.2, 0.2, n)) @ _rotation(1, rng.uniform(-_PI / 4, _PI / 4, n))
    orientation = (view[:, None] @ _rotation(1, facing)).astype(np.float32)
    steps = np.zeros((*shape, shifts.shape[-1], 3), np.float32)
    for d, (axis, amplitude) in enumerate(_TRANSLATIONS.values()):
        steps[..., axis] = np.sign(amplitude) * shifts[:, :, d]
    root = np.einsum("nmij,nmtj->nmti", orientation, steps)
    root += np.einsum("nij,nmj->nmi", view, position).astype(np.float32)[:, :, None]
    return orientation, root


def generate(
    num_samples: int,
    *,
    seed: int,
    num_classes: int = 10,
    num_frames: int = 64,
    num_persons: int = 2,
    noise: float = 0.01,
) -> dict[str, np.ndarray]:
    """Balanced synthetic set: {'x': float32 (N, 3, T, 25, M), 'label': int32 (N,)}.

    Labels index ``CLASS_NAMES[:num_classes]``. As in the NTU preparation, coordinates are
    metres relative to person 1's spine mid at the first frame (so only the camera's direction
    matters, not its position), and an absent second person is all zeros; a second person is
    present in 75% of the samples of every class. ``noise`` is the standard deviation of the
    Gaussian joint jitter in metres.
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}")
    if num_persons not in (1, 2):
        raise ValueError(f"num_persons must be 1 or 2, got {num_persons}")
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(num_samples) % num_classes).astype(np.int32)
    dofs = _trajectories(rng, label, num_frames)
    orientation, root = _placement(rng, dofs[:, :, len(_ROTATIONS) :])
    bones = _rest_bones(rng, (num_samples, 2)).astype(np.float32)
    joints = _forward_kinematics(bones, dofs[:, :, : len(_ROTATIONS)], orientation, root)

    joints -= joints[1, :, :1, :1].copy()  # NTU origin: person 1's spine mid, first frame
    joints += np.float32(noise) * rng.standard_normal(joints.shape, np.float32)
    present = np.ones((num_samples, 2), np.float32)
    present[:, 1] = rng.random(num_samples) < _PARTNER_PROB
    joints *= present[:, :, None, None]
    x = joints[:, :, :num_persons].transpose(1, 4, 3, 0, 2)  # (V, N, M, T, C) -> (N, C, T, V, M)
    finite = np.isfinite(x).reshape(num_samples, -1).all(axis=1)
    if not finite.all():  # a guard for edits here: NaN inputs would show up as a diverged loss
        raise FloatingPointError(
            f"synthetic sample {np.flatnonzero(~finite)[0]} holds NaN or infinite joints "
            f"({np.sum(~finite)} of {num_samples} samples, seed {seed}): the generator in "
            "csre_jax/data/synthetic.py is broken, undo the last change to it"
        )
    return {"x": np.ascontiguousarray(x), "label": label}


def make_splits(
    num_train: int, num_test: int, *, seed: int, **kwargs
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Independent train and test sets from two seeds derived from ``seed``."""
    train_seed, test_seed = (
        int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)
    )
    train = generate(num_train, seed=train_seed, **kwargs)
    return train, generate(num_test, seed=test_seed, **kwargs)
