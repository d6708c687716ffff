"""Skeleton layouts as data: joints, edges, centre, mirror pairs, body parts and bones.

Everything graph-dependent is derived from a `Layout`: the backbones' adjacency partitions,
hop distances and joint groups, the bone streams' pairs and the left/right flip of 2D
augmentation. Built-in layouts: `ntu` (Kinect v2, 25 joints), `ntu_hyperformer` (the same
joints with hand tip and thumb attached to the hand, as Hyperformer, BlockGCN and CSRE
build their graph), `ucla` (Kinect v1, 20), `coco` (17 keypoints), `openpose` (18),
`handmp` (MediaPipe's 21 hand landmarks) and `blazepose` (MediaPipe's 33 body landmarks, what
csre_jax.video extracts from videos). A user layout is a small JSON file
(`load_layout`), e.g.

    {"name": "arm", "joints": ["shoulder", "elbow", "wrist", "hand"],
     "edges": [["elbow", "shoulder"], ["wrist", "elbow"], ["hand", "wrist"]],
     "centre": "shoulder"}

Joints may be given by name or 0-based index everywhere. Optional keys: "flip_pairs"
(left/right joints swapped by a horizontal flip), "parts" (a group id per joint, Hyperformer's
hyperedges) and "bone_pairs" (which joint each joint's bone points to).
"""

import dataclasses
import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from csre_jax.errors import UserError

Pair = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A skeleton's joints and connections, 0-based; hashable, so modules can hold it.

    edges are (child, parent) pairs pointing towards the centre: a joint has one parent, or
    a second one no farther from the centre where an edge closes a loop (a brace across the
    skeleton); a second parent farther out is a pair written backwards and is refused.
    parts is a group id per
    joint or None (then `joint_groups` derives them). bone_pairs is None for the default
    bones: each joint minus its parent on the tree grown from the centre, the centre minus
    itself (the official NTU and NW-UCLA bones are exactly these).
    """

    name: str
    joints: tuple[str, ...]
    edges: tuple[Pair, ...]
    centre: int
    flip_pairs: tuple[Pair, ...] = ()
    parts: tuple[int, ...] | None = None
    bone_pairs: tuple[Pair, ...] | None = None

    def __post_init__(self):
        _validate(self)

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def bone_partners(self) -> tuple[int, ...]:
        """partner[v]: the bone of joint v is joint v minus joint partner[v]."""
        if self.bone_pairs is not None:
            partners = dict(self.bone_pairs)
            return tuple(partners[v] for v in range(self.num_joints))
        return tree_parents(self)

    def flip_permutation(self) -> tuple[int, ...]:
        """Joint order after a horizontal flip: each left joint takes its right partner."""
        order = list(range(self.num_joints))
        for left, right in self.flip_pairs:
            order[left], order[right] = right, left
        return tuple(order)

    def joint_groups(self) -> tuple[int, ...]:
        """A group id per joint: `parts` when given, else the documented default: the centre
        is group 0 and every subtree hanging from the centre (a limb, the head) is one group,
        numbered from 1 in the order of its lowest joint."""
        if self.parts is not None:
            return self.parts
        parents = tree_parents(self)
        groups, branch_ids = [0] * self.num_joints, {}
        for v in range(self.num_joints):  # ascending: a branch is first met at its lowest joint
            branch = v
            while v != self.centre and parents[branch] != self.centre:
                branch = parents[branch]
            if v != self.centre:
                groups[v] = branch_ids.setdefault(branch, len(branch_ids) + 1)
        return tuple(groups)

    def to_json(self) -> dict:
        """The layout as a JSON-ready dict that `layout_from_dict` reads back."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def tree_parents(layout: Layout) -> tuple[int, ...]:
    """Each joint's parent on the breadth-first tree grown from the centre over the undirected
    edges (the centre is its own parent); for a tree of (child, parent) edges these are the
    edges' parents."""
    neighbours: list[list[int]] = [[] for _ in range(layout.num_joints)]
    for child, parent in layout.edges:
        neighbours[parent].append(child)
        neighbours[child].append(parent)
    parents = [-1] * layout.num_joints
    parents[layout.centre] = layout.centre
    queue = deque([layout.centre])
    while queue:
        u = queue.popleft()
        for w in sorted(neighbours[u]):
            if parents[w] < 0:
                parents[w] = u
                queue.append(w)
    return tuple(parents)


def _validate(layout: Layout) -> None:
    """Every index in range, one entry per joint, and one connected skeleton."""
    v = len(layout.joints)
    source = f"layout {layout.name!r}"

    def fail(field: str, problem: str, fix: str) -> None:
        raise UserError(f"{source}: field {field!r} {problem}; {fix}")

    if v < 2:
        fail("joints", f"names {v} joint(s)", "a skeleton needs at least two joints")
    if len(set(layout.joints)) != v:
        fail("joints", "repeats a name", "give every joint its own name")
    for field in ("edges", "flip_pairs", "bone_pairs"):
        for pair in getattr(layout, field) or ():
            bad = [i for i in pair if not 0 <= i < v]
            if len(pair) != 2 or bad:
                fail(field, f"has the pair {pair} naming joints outside 0..{v - 1}", "fix it")
    if not 0 <= layout.centre < v:
        fail("centre", f"is {layout.centre}, outside 0..{v - 1}", "name one of the joints")
    if any(a == b for a, b in layout.edges):
        fail("edges", "joins a joint to itself", "edges link two different joints")
    if layout.parts is not None and len(layout.parts) != v:
        fail("parts", f"has {len(layout.parts)} entries for {v} joints", "give one per joint")
    if layout.bone_pairs is not None and sorted(a for a, _ in layout.bone_pairs) != list(range(v)):
        fail("bone_pairs", "does not give exactly one bone per joint", "list (joint, partner)")
    flipped = [j for pair in layout.flip_pairs for j in pair]
    if len(set(flipped)) != len(flipped):
        fail("flip_pairs", "names a joint twice", "each joint has at most one mirror partner")
    parents = tree_parents(layout)
    names, centre = layout.joints, layout.joints[layout.centre]
    unreached = [names[j] for j in range(v) if parents[j] < 0]
    if unreached:
        fail(
            "edges",
            f"do not connect {unreached} to the centre {centre!r}",
            "add the edges that attach them: the skeleton must be one connected graph",
        )
    depth = [_depth(parents, j) for j in range(v)]
    first_parent: dict[int, int] = {}
    for child, parent in layout.edges:
        other = first_parent.setdefault(child, parent)
        outward = [p for p in (other, parent) if depth[p] > depth[child]]
        if other != parent and outward:
            fail(
                "edges",
                f"give joint {names[child]!r} two parents, {names[other]!r} and {names[parent]!r}",
                f"write each edge as [child, parent] with the parent towards the centre "
                f"{centre!r}: here [{names[outward[0]]!r}, {names[child]!r}]",
            )


def _depth(parents: tuple[int, ...], joint: int) -> int:
    """The joint's hops from the centre on the tree of `tree_parents`."""
    hops = 0
    while parents[joint] != joint:
        joint, hops = parents[joint], hops + 1
    return hops


# The built-in layouts. NTU and NW-UCLA pairs are the official 1-based lists, converted.
def _one_based(pairs: Sequence[Pair]) -> tuple[Pair, ...]:
    return tuple((i - 1, j - 1) for i, j in pairs)


_KINECT_BODY = (
    "spine_base", "spine_mid", "neck", "head", "left_shoulder", "left_elbow", "left_wrist",
    "left_hand", "right_shoulder", "right_elbow", "right_wrist", "right_hand", "left_hip",
    "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee", "right_ankle",
    "right_foot",
)  # fmt: skip
_KINECT_FLIPS = ((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19))
_NTU_BODY = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19),
)  # fmt: skip
_NTU_JOINTS = (
    *_KINECT_BODY, "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip",
    "right_thumb",
)  # fmt: skip
_NTU_FLIPS = (*_KINECT_FLIPS, (21, 23), (22, 24))
# Hyperformer's joint groups for NTU (its official joint_label).
_NTU_PARTS = (0, 4, 2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 2, 3, 3, 3, 2, 3, 3, 3, 1, 0, 1, 0, 1)
_UCLA_JOINTS = (*_KINECT_BODY[:2], "shoulder_centre", *_KINECT_BODY[3:])
_UCLA_EDGES = (
    (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)  # fmt: skip
_UCLA_PARTS = (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2)
_COCO_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_OPENPOSE_JOINTS = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
_HAND_JOINTS = ("wrist",) + tuple(
    f"{finger}_{joint}"
    for finger, joints in (
        ("thumb", ("cmc", "mcp", "ip", "tip")),
        *((f, ("mcp", "pip", "dip", "tip")) for f in ("index", "middle", "ring", "pinky")),
    )
    for joint in joints
)
# MediaPipe's PoseLandmark order and names, but mouth_left/right as left/right_mouth (every
# sided joint here is left_*/right_*, which the flip pairs follow).
_BLAZEPOSE_JOINTS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "left_mouth", "right_mouth", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
# BlazePose has no mid-hip or neck: the tree hangs from the nose as `coco`'s does, so its COCO
# joints keep coco's bones (an ear's parent is its eye, through the eye's outer corner).
_BLAZEPOSE_EDGES = (
    (1, 0), (2, 1), (3, 2), (7, 3), (4, 0), (5, 4), (6, 5), (8, 6), (9, 0), (10, 0),
    (11, 0), (12, 0), (13, 11), (15, 13), (17, 15), (19, 15), (21, 15), (14, 12), (16, 14),
    (18, 16), (20, 16), (22, 16), (23, 11), (24, 12), (25, 23), (27, 25), (29, 27), (31, 27),
    (26, 24), (28, 26), (30, 28), (32, 28),
)  # fmt: skip

BUILTIN_LAYOUTS = {
    "ntu": Layout(
        "ntu",
        _NTU_JOINTS,
        _one_based(_NTU_BODY + ((22, 23), (23, 8), (24, 25), (25, 12))),
        centre=20,
        flip_pairs=_NTU_FLIPS,
        parts=_NTU_PARTS,
    ),
    "ntu_hyperformer": Layout(
        "ntu_hyperformer",
        _NTU_JOINTS,
        _one_based(_NTU_BODY + ((22, 8), (23, 8), (24, 12), (25, 12))),
        centre=20,
        flip_pairs=_NTU_FLIPS,
        parts=_NTU_PARTS,
    ),
    "ucla": Layout(
        "ucla",
        _UCLA_JOINTS,
        _one_based(_UCLA_EDGES),
        centre=2,
        flip_pairs=_KINECT_FLIPS,
        parts=_UCLA_PARTS,
    ),
    "coco": Layout(
        "coco",
        _COCO_JOINTS,
        (
            (15, 13),
            (13, 11),
            (16, 14),
            (14, 12),
            (11, 5),
            (12, 6),
            (9, 7),
            (7, 5),
            (10, 8),
            (8, 6),
            (5, 0),
            (6, 0),
            (1, 0),
            (3, 1),
            (2, 0),
            (4, 2),
        ),  # fmt: skip
        centre=0,
        flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
        # head, left arm, right arm, left leg, right leg
        parts=(0, 0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4),
    ),
    "openpose": Layout(
        "openpose",
        _OPENPOSE_JOINTS,
        (
            (4, 3),
            (3, 2),
            (7, 6),
            (6, 5),
            (13, 12),
            (12, 11),
            (10, 9),
            (9, 8),
            (11, 5),
            (8, 2),
            (5, 1),
            (2, 1),
            (0, 1),
            (15, 0),
            (14, 0),
            (17, 15),
            (16, 14),
        ),  # fmt: skip
        centre=1,
        flip_pairs=((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)),
        # head and neck, right arm, left arm, right leg, left leg
        parts=(0, 0, 2, 2, 2, 1, 1, 1, 4, 4, 4, 3, 3, 3, 0, 0, 0, 0),
    ),
    "handmp": Layout(
        "handmp",
        _HAND_JOINTS,
        tuple((base + k, base + k - 1 if k else 0) for base in (1, 5, 9, 13, 17) for k in range(4)),
        centre=0,
        # the wrist, then one group per finger
        parts=(0, *(finger for finger in range(1, 6) for _ in range(4))),
    ),
    "blazepose": Layout(
        "blazepose",
        _BLAZEPOSE_JOINTS,
        _BLAZEPOSE_EDGES,
        centre=0,
        flip_pairs=((1, 4), (2, 5), (3, 6), (7, 8), (9, 10))
        + tuple((v, v + 1) for v in range(11, 33, 2)),
        # head, left arm, right arm, left leg, right leg (as coco's)
        parts=(0,) * 11 + (1, 2) * 6 + (3, 4) * 5,
    ),
}


def layout_from_dict(spec: dict, source: str = "layout") -> Layout:
    """A Layout from JSON-like data; joints may be named or indexed. Errors name `source`
    and the field."""
    if not isinstance(spec, dict):
        raise UserError(f"{source}: expected a JSON object with 'joints', 'edges', 'centre'")
    known = {f.name for f in dataclasses.fields(Layout)}
    unknown = set(spec) - known
    if unknown:
        raise UserError(f"{source}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    missing = {"joints", "edges", "centre"} - set(spec)
    if missing:
        raise UserError(f"{source}: missing field(s) {sorted(missing)}")
    joints = tuple(str(j) for j in spec["joints"])

    def index(field: str, joint) -> int:
        if isinstance(joint, int) and not isinstance(joint, bool):
            return joint
        if joint in joints:
            return joints.index(joint)
        raise UserError(f"{source}: field {field!r} names the unknown joint {joint!r}")

    def pairs(field: str) -> tuple[Pair, ...] | None:
        if spec.get(field) is None:
            return None
        try:
            return tuple((index(field, a), index(field, b)) for a, b in spec[field])
        except (TypeError, ValueError) as e:
            if "unknown joint" in str(e):
                raise
            raise UserError(f"{source}: field {field!r} must be a list of [a, b] pairs") from e

    fields = {
        "name": str(spec.get("name", Path(source).stem)),
        "joints": joints,
        "edges": pairs("edges"),
        "centre": index("centre", spec["centre"]),
        "flip_pairs": pairs("flip_pairs") or (),
        "parts": tuple(int(p) for p in spec["parts"]) if spec.get("parts") is not None else None,
        "bone_pairs": pairs("bone_pairs"),
    }
    try:
        return Layout(**fields)
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None


def load_layout(name_or_path: str | Layout) -> Layout:
    """A built-in layout by name, or a user layout from a JSON file."""
    if isinstance(name_or_path, Layout):
        return name_or_path
    if name_or_path in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.suffix != ".json" or not path.is_file():
        raise UserError(
            f"unknown layout {name_or_path!r}: name a built-in one "
            f"({', '.join(BUILTIN_LAYOUTS)}) or an existing .json file (docs/data.md, "
            "'Your own data')"
        )
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    return layout_from_dict(spec, source=str(path))
