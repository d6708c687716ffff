"""NW-UCLA clips in the official (CTR-GCN / CSRE feeder) cross-view split and order.

The split lists ship with the package (nw_ucla_split.json: [file stem, 0-based label] per
entry, train = views 1 and 2, 1,020 clips; val = view 3, 464 clips). The clips themselves are
CTR-GCN's preprocessed `all_sqe/<stem>.json` files: a split reads as its raw (F, 20, 3) clips
and their labels, all checked when read.
"""

import json
from functools import cache
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError

SPLITS = ("train", "val")
JOINTS = 20  # Kinect v1
CLIP_FOLDER = "all_sqe"
SPLIT_FILE = Path(__file__).with_name("nw_ucla_split.json")
FIX = (
    "download CTR-GCN's NW-UCLA all_sqe folder and point --config.data.root at the folder "
    "that holds all_sqe/"
)

TRAIN_REPEAT = 5
"""The official training repeat: the UCLA training set is listed 5 times per epoch.

The training dataset has 5 x 1,020 = 5,100 entries and entry (memory-bank slot) i is clip
i mod 1020 of the official train list, so each epoch visits every clip 5 times with
independent augmentations and the memory bank has 5,100 slots. Validation is not repeated.
"""


class NonFiniteClipError(UserError):
    """A clip whose "skeletons" hold NaN or infinity (JSON's NaN and Infinity parse): one such
    clip turns its whole normalised sample into NaN, so it is refused when read."""


def load_ucla_clip(path: str | Path) -> np.ndarray:
    """The "skeletons" of one NW-UCLA JSON file as finite (F, 20, 3) float64 (other keys
    ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            clip = np.asarray(json.load(f)["skeletons"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, no key, ragged or non-numeric
        reason = f"{type(e).__name__}: {e}"
        raise UserError(f'{path}: not a clip with a numeric "skeletons" array ({reason})') from e
    if clip.ndim != 3 or clip.shape[0] < 1 or clip.shape[1:] != (JOINTS, 3):
        raise UserError(f'{path}: "skeletons" has shape {clip.shape}, expected (F, 20, 3)')
    bad = np.argwhere(~np.isfinite(clip))
    if bad.size:
        frame, joint, axis = bad[0]
        raise NonFiniteClipError(
            f'{path}: "skeletons" holds NaN or infinity in {len(bad)} of its {clip.size} '
            f"values (the first, {clip[frame, joint, axis]}, at frame {frame}, joint {joint}, "
            f"{'xyz'[axis]}); replace the file with the clip from CTR-GCN's NW-UCLA all_sqe "
            "download"
        )
    return clip


@cache
def _split_lists() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    with open(SPLIT_FILE, encoding="utf-8") as f:
        raw = json.load(f)
    return {s: (tuple(e[0] for e in raw[s]), tuple(int(e[1]) for e in raw[s])) for s in SPLITS}


def split_entries(split: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The official (file stems, 0-based int32 labels) of "train" or "val", in order."""
    if split not in SPLITS:
        raise UserError(f"unknown NW-UCLA split {split!r}; expected one of {SPLITS}")
    stems, labels = _split_lists()[split]
    return stems, np.asarray(labels, dtype=np.int32)


def clip_dir(root: str | Path) -> Path:
    """The folder holding the clip JSONs: root/all_sqe, or root itself if it is all_sqe."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"NW-UCLA data folder {root} (config field data.root) does not exist; {FIX}"
        )
    sub = root / CLIP_FOLDER
    return sub if sub.is_dir() else root


def load_split(root: str | Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """All clips of `split` ("train" or "val") in official order: ([(F, 20, 3) float32], labels).

    Labels are int32 and 0-based. A missing root or clip raises FileNotFoundError naming the
    path, the config field data.root and the fix; clips holding NaN or infinity raise one
    NonFiniteClipError naming the first and counting the others (all are checked here, before
    training, because one such clip makes its samples NaN and the loss diverges).
    """
    stems, labels = split_entries(split)
    folder = clip_dir(root)
    paths = [folder / f"{stem}.json" for stem in stems]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        count = f"; {len(missing)} of the {len(paths)} {split} clips are missing"
        raise FileNotFoundError(
            f"NW-UCLA clip {missing[0]} not found (config field data.root={root}"
            f"{count if len(missing) > 1 else ''}); {FIX}"
        )
    clips, non_finite = [], []
    for path in paths:
        try:
            clips.append(load_ucla_clip(path).astype(np.float32))
        except NonFiniteClipError as error:
            non_finite.append(error)
    if non_finite:
        count = f" ({len(non_finite)} of the {len(paths)} {split} clips hold such values)"
        raise NonFiniteClipError(f"{non_finite[0]}{count if len(non_finite) > 1 else ''}")
    return clips, labels


def repeat_train(
    clips: list[np.ndarray], labels: np.ndarray, times: int = TRAIN_REPEAT
) -> tuple[list[np.ndarray], np.ndarray]:
    """The training set repeated `times` times: entry i is clip i mod len(clips)."""
    if times < 1:
        raise ValueError(f"repeat times must be >= 1, got {times}")
    if len(clips) != len(labels):
        raise ValueError(f"{len(clips)} clips but {len(labels)} labels")
    return list(clips) * times, np.tile(np.asarray(labels, dtype=np.int32), times)
