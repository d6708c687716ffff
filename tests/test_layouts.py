"""Skeleton layouts as data: the built-ins are the official graphs, a JSON file names its
joints, and a broken layout is refused naming the file and the field."""

import json

import jax
import numpy as np
import pytest

import csre_jax.models as models
from csre_jax.data import transforms
from csre_jax.layouts import BUILTIN_LAYOUTS, load_layout, tree_parents
from csre_jax.video import COCO_FROM_BLAZEPOSE

ARM = {
    "name": "arm",
    "joints": ["shoulder", "elbow", "wrist", "hand", "other_shoulder"],
    "edges": [["elbow", "shoulder"], ["wrist", "elbow"], ["hand", "wrist"], [4, 0]],
    "centre": "shoulder",
    "flip_pairs": [["shoulder", "other_shoulder"]],
}

# pyskl's COCO-17 keypoints and the flip pairs its 2D pipelines pass to Flip (left_kp, right_kp).
PYSKL_COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
PYSKL_COCO_LEFT_KP = (1, 3, 5, 7, 9, 11, 13, 15)
PYSKL_COCO_RIGHT_KP = (2, 4, 6, 8, 10, 12, 14, 16)


def _write(tmp_path, spec) -> str:
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize(("name", "pairs"), [("ntu", "NTU"), ("ucla", "UCLA")])
def test_default_bones_are_the_official_bone_pairs(name, pairs):
    official = [v2 - 1 for _, v2 in getattr(transforms, f"{pairs}_BONE_PAIRS")]
    assert list(BUILTIN_LAYOUTS[name].bone_partners()) == official


def test_json_layout_by_names_and_indices(tmp_path):
    layout = load_layout(_write(tmp_path, ARM))
    assert layout.edges == ((1, 0), (2, 1), (3, 2), (4, 0)) and layout.centre == 0
    assert layout.bone_partners() == (0, 0, 1, 2, 0)
    assert layout.flip_permutation() == (4, 1, 2, 3, 0)
    # no parts: the centre is group 0, each branch from it one group, by its lowest joint
    assert layout.joint_groups() == (0, 1, 1, 1, 2)
    assert load_layout(layout) is layout


def test_builtin_part_groups_cover_every_joint():
    for layout in BUILTIN_LAYOUTS.values():
        groups = np.asarray(layout.joint_groups())
        assert len(groups) == layout.num_joints and groups.min() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"edges": [["elbow", "shoulder"], ["wrist", "knee"]]},
            "'edges' names the unknown joint 'knee'",
        ),
        ({"edges": [["elbow", "shoulder"]]}, r"field 'edges' do not connect \['wrist', 'hand'"),
        ({"edges": [[1, 9]]}, r"field 'edges' has the pair \(1, 9\) naming joints outside 0..4"),
        ({"centre": "hip"}, "'centre' names the unknown joint 'hip'"),
        ({"parts": [0, 1]}, "field 'parts' has 2 entries for 5 joints"),
        ({"flip_pairs": [[0, 4], [4, 1]]}, "field 'flip_pairs' names a joint twice"),
        (
            {"joints": [*"aabcd"], "edges": [[1, 0]], "centre": 0, "flip_pairs": []},
            "repeats a name",
        ),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        (
            {"edges": [["elbow", "shoulder"], ["elbow", "wrist"], ["hand", "wrist"], [4, 0]]},
            r"field 'edges' give joint 'elbow' two parents, 'shoulder' and 'wrist'; write each "
            r"edge as \[child, parent\] .* centre 'shoulder': here \['wrist', 'elbow'\]$",
        ),
    ],
)
def test_broken_layout_names_the_file_and_field(tmp_path, change, message):
    path = _write(tmp_path, ARM | change)
    with pytest.raises(ValueError, match=message) as error:
        load_layout(path)
    assert str(error.value).startswith(path) and "\n" not in str(error.value)


def test_builtin_edges_give_each_joint_its_one_parent():
    for layout in BUILTIN_LAYOUTS.values():
        parents = tree_parents(layout)
        assert all(parents[child] == parent for child, parent in layout.edges), layout.name
        assert (
            len({child for child, _ in layout.edges}) == len(layout.edges) == layout.num_joints - 1
        )


def test_a_brace_closing_a_loop_may_give_a_second_parent(tmp_path):
    """wrist - other_shoulder closes the loop shoulder - elbow - wrist - other_shoulder:
    both of the wrist's parents are one hop from the centre, nearer than the wrist."""
    layout = load_layout(_write(tmp_path, ARM | {"edges": [*ARM["edges"], ["wrist", 4]]}))
    assert layout.bone_partners() == (0, 0, 1, 2, 0)


def test_unknown_name_lists_the_built_ins():
    with pytest.raises(ValueError, match="ntu, ntu_hyperformer, ucla, coco, openpose, handmp"):
        load_layout("kinetics")


def _named(layout, pairs) -> list[tuple[str, str]]:
    return [(layout.joints[a], layout.joints[b]) for a, b in sorted(pairs)]


@pytest.mark.parametrize("name", BUILTIN_LAYOUTS)
def test_flip_pairs_are_the_left_right_twins_by_name(name):
    """A horizontal flip swaps exactly the joints named left_X and right_X: a pair of two body
    parts (left elbow with right wrist) would teach the model mangled mirror images. Every
    built-in names its sided joints left_*/right_* (NTU and NW-UCLA's Kinect joints too);
    handmp (one MediaPipe hand) has no sided joints, so the rule gives it no flip pairs."""
    layout = BUILTIN_LAYOUTS[name]
    joints = layout.joints
    twins = {
        (joints.index(left), joints.index(f"right_{left[5:]}"))
        for left in joints
        if left.startswith("left_") and f"right_{left[5:]}" in joints
    }
    pairs = set()
    for a, b in layout.flip_pairs:
        pair = (a, b) if joints[a].startswith("left_") else (b, a)
        assert pair in twins, (
            f"layout {name!r}: flip pair ({joints[a]}, {joints[b]}) is not a left/right twin"
        )
        pairs.add(pair)
    unpaired = _named(layout, twins - pairs)
    assert not unpaired, f"layout {name!r}: the twins {unpaired} are missing from flip_pairs"


def test_coco_is_pyskls_coco17():
    """The coco layout reads pyskl's keypoint files: its joints and flip pairs are pyskl's."""
    coco = BUILTIN_LAYOUTS["coco"]
    assert coco.joints == PYSKL_COCO_KEYPOINTS, "layout 'coco': joints are not pyskl's COCO-17"
    pairs = {tuple(sorted(pair)) for pair in coco.flip_pairs}
    pyskl_pairs = set(zip(PYSKL_COCO_LEFT_KP, PYSKL_COCO_RIGHT_KP, strict=True))
    assert pairs == pyskl_pairs, (
        f"layout 'coco': flip pairs {_named(coco, pairs - pyskl_pairs)} are not pyskl's, "
        f"pyskl's {_named(coco, pyskl_pairs - pairs)} are missing"
    )


def test_blazepose_holds_coco17_with_coco_bones():
    """to_coco takes from the 33 BlazePose landmarks exactly coco's joints, by name; on the
    blazepose tree each one's nearest COCO ancestor is its coco parent, so the bones agree."""
    blazepose, coco = BUILTIN_LAYOUTS["blazepose"], BUILTIN_LAYOUTS["coco"]
    picked = list(COCO_FROM_BLAZEPOSE)
    assert tuple(blazepose.joints[i] for i in picked) == coco.joints
    parents = tree_parents(blazepose)
    for joint, landmark in enumerate(picked):
        ancestor = parents[landmark]
        while ancestor not in picked:
            ancestor = parents[ancestor]
        assert picked.index(ancestor) == coco.bone_partners()[joint], coco.joints[joint]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_backbone_builds_its_graph_from_blazepose(name):
    """Adjacency partitions, hop tables, joint groups and HCN's joint count, from the layout
    (an abstract init: traced, not compiled)."""
    widths = {"hyperformer": {"num_heads": 2, "head_dim": 6}, "blockgcn": {"num_heads": 2}}
    model = models.create_model(
        name, num_classes=3, layout="blazepose", num_person=1, **widths.get(name, {})
    )
    inputs = models.example_inputs(model, batch=1, num_frames=16)
    assert inputs["x"].shape[3] == 33
    jax.eval_shape(model.init, jax.random.key(0), **inputs)
