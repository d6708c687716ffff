"""Small pyskl annotation pickles for tests: a 2-D COCO-17 file with scores and a 3-D file in
a user JSON layout, written raw (unchecked) so tests can also break them on purpose."""

import json
import pickle
from pathlib import Path

import numpy as np

from csre_jax.layouts import BUILTIN_LAYOUTS

IMG_SHAPE = (480, 640)  # (h, w)
# A user layout whose joint names let data.align='auto' align it as pyskl aligns NTU.
TORSO_LAYOUT = {
    "name": "torso",
    "joints": [
        "spine_base", "spine_mid", "neck", "left_shoulder", "right_shoulder", "left_hand",
        "right_hand",
    ],
    "edges": [
        ["spine_mid", "spine_base"], ["neck", "spine_mid"], ["left_shoulder", "neck"],
        ["right_shoulder", "neck"], ["left_hand", "left_shoulder"],
        ["right_hand", "right_shoulder"],
    ],
    "centre": "spine_mid",
    "flip_pairs": [["left_shoulder", "right_shoulder"], ["left_hand", "right_hand"]],
}  # fmt: skip
# Rest pose of TORSO_LAYOUT (x right, y forward, z up), shoulders perpendicular to the spine.
TORSO_POSE = np.array(
    [[0, 0, 0], [0, 0, 0.3], [0, 0, 0.55], [-0.2, 0, 0.5], [0.2, 0, 0.5], [-0.3, 0, 0.1],
     [0.3, 0, 0.1]],
    np.float32,
)  # fmt: skip


def write_pickle(path: Path, annotations: list[dict], splits: dict[str, list[str]]) -> Path:
    """The pyskl dict as is, not checked."""
    with path.open("wb") as f:
        pickle.dump({"split": splits, "annotations": annotations}, f)
    return path


def halves(annotations: list[dict]) -> dict[str, list[str]]:
    """Splits 'train' (the first two thirds) and 'test' (the rest)."""
    names = [a["frame_dir"] for a in annotations]
    cut = 2 * len(names) // 3
    return {"train": names[:cut], "test": names[cut:]}


def coco_annotations(count: int = 12, num_classes: int = 3, seed: int = 0) -> list[dict]:
    """2-D COCO-17 samples in pixels with scores, 1 to 3 persons, 20 to 250 frames."""
    rng = np.random.default_rng(seed)
    joints = BUILTIN_LAYOUTS["coco"].num_joints
    h, w = IMG_SHAPE
    annotations = []
    for i in range(count):
        persons, frames = int(rng.integers(1, 4)), int(rng.integers(20, 250))
        keypoint = rng.uniform(0, 1, (persons, frames, joints, 2)) * [w, h]
        annotations.append(
            {
                "frame_dir": f"clip{i:03d}",
                "label": i % num_classes,
                "total_frames": frames,
                "img_shape": IMG_SHAPE,
                "keypoint": keypoint.astype(np.float16),
                "keypoint_score": rng.uniform(0, 1, (persons, frames, joints)).astype(np.float16),
            }
        )
    return annotations


def torso_annotations(count: int = 9, num_classes: int = 3, seed: int = 1) -> list[dict]:
    """3-D TORSO_LAYOUT samples: the rest pose turned and moved, plus noise; 1 or 2 persons,
    without scores."""
    rng = np.random.default_rng(seed)
    annotations = []
    for i in range(count):
        persons, frames = int(rng.integers(1, 3)), int(rng.integers(30, 120))
        angle = rng.uniform(-np.pi, np.pi)
        turn = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        )
        pose = TORSO_POSE @ turn.T + rng.normal(0, 1, 3)
        keypoint = pose + rng.normal(0, 0.02, (persons, frames, *pose.shape))
        annotations.append(
            {
                "frame_dir": f"take{i:03d}",
                "label": i % num_classes,
                "total_frames": frames,
                "keypoint": keypoint.astype(np.float32),
            }
        )
    return annotations


def coco_file(folder: Path, **kwargs) -> Path:
    annotations = coco_annotations(**kwargs)
    return write_pickle(folder / "coco.pkl", annotations, halves(annotations))


def torso_files(folder: Path, **kwargs) -> tuple[Path, Path]:
    """(the pickle, the layout JSON)."""
    layout = folder / "torso.json"
    layout.write_text(json.dumps(TORSO_LAYOUT))
    annotations = torso_annotations(**kwargs)
    return write_pickle(folder / "torso.pkl", annotations, halves(annotations)), layout
