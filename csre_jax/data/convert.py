"""Writes pyskl annotation pickles, the custom dataset's format (csre_jax/data/pyskl.py), from
a folder of .npy sequences or of videos, a Python list, our NTU split files or NW-UCLA's JSON
clips.

    python -m csre_jax.data.convert npy FOLDER --labels labels.csv --out my.pkl
        [--scores] [--img-shape H,W] [--split train]
    python -m csre_jax.data.convert video FOLDER --labels labels.csv --out my.pkl
        [--split train] [--world]
    python -m csre_jax.data.convert ntu data/ntu60/NTU60_CS.npz --out ntu60_xsub.pkl
    python -m csre_jax.data.convert ucla data/NW-UCLA --out nw_ucla.pkl

npy: FOLDER/<name>.npy per sequence, (M, T, V, C) or one person's (T, V, C); labels.csv has
rows `name,label[,split]` (0-based labels; an optional header row `name,label,...`); rows
without a split go to --split. With --scores the last channel is the keypoint score.
video: FOLDER/<name> (or the one FOLDER/<name>.* file) per video, the same label table; one
person's 33 BlazePose landmarks per frame (the `blazepose` layout, csre_jax.video), 2-D pixels
with scores, img_shape and fps, or with --world metric 3-D. Each video's extraction is kept in
<out>.parts/ and reused by a rerun; a video that cannot be read or shows no person is named on
one line and skipped.
ntu: the split file's train and test parts as splits 'train' and 'test', frame_dir
`<split>_<position>` (the sample's position in the split file, its memory-bank slot), the
zero padding cut off and an all-zero second person dropped. ucla: the official cross-view
train and val lists as splits 'train' and 'test', frame_dir the clip's file stem. Every
written file is checked as training loads it (except the layout) and written atomically.
"""

import argparse
import csv
import glob
import pickle
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csre_jax.data import pyskl, ucla
from csre_jax.data.ntu_splits import npz_member_memmap, ntu_row_to_sample
from csre_jax.data.transforms import valid_frame_count
from csre_jax.errors import UserError, user_errors
from csre_jax.fileio import atomic_write
from csre_jax.video import extract_pose

Samples = list[dict]
Splits = dict[str, list[str]]


def write_annotations(
    path: str | Path, samples: Sequence[Mapping], splits: Mapping[str, Sequence[str]]
) -> Path:
    """Writes `samples` (dicts with frame_dir, label, keypoint (M, T, V, C) or (T, V, C) and
    optionally keypoint_score, img_shape) and `splits` ({name: [frame_dir, ...]}) to `path`.

    keypoint becomes a 4-D numeric array and total_frames is filled in; the result is checked
    as `pyskl.load` checks it, then written atomically."""
    path = Path(path)
    if not samples:
        raise UserError(f"{path}: no samples to write")
    annotations = [_annotation(sample) for sample in samples]
    content = {"split": {name: list(dirs) for name, dirs in splits.items()}}
    content["annotations"] = annotations
    checked = pyskl.check(content, str(path), layout=None)
    for name in content["split"]:
        pyskl.split_positions(content, str(path), checked.positions, name)
    with atomic_write(path) as tmp, tmp.open("wb") as f:
        pickle.dump(content, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _annotation(sample: Mapping) -> dict:
    """A sample with 4-D numeric keypoint (and score) arrays and total_frames."""
    ann = dict(sample)
    for field, person_free_ndim in (("keypoint", 3), ("keypoint_score", 2)):
        if ann.get(field) is not None:
            array = np.asarray(ann[field])
            ann[field] = array[None] if array.ndim == person_free_ndim else array
    if np.ndim(ann.get("keypoint")) == 4:
        ann.setdefault("total_frames", ann["keypoint"].shape[1])
    return ann


def npy_annotations(
    folder: Path,
    labels_csv: Path,
    *,
    scores: bool = False,
    img_shape: tuple[int, int] | None = None,
    default_split: str = "train",
) -> tuple[Samples, Splits]:
    """The samples and splits of a folder of .npy sequences and its label table."""
    samples, splits = [], {}
    for line, name, label, split in _label_rows(labels_csv):
        source = folder / (name if name.endswith(".npy") else f"{name}.npy")
        if not source.is_file():
            raise FileNotFoundError(f"{labels_csv} row {line}: {source} does not exist")
        array = np.load(source, allow_pickle=False)
        sample = {"frame_dir": Path(name).stem, "label": label}
        if scores:
            array, sample["keypoint_score"] = array[..., :-1], array[..., -1]
        if img_shape is not None:
            sample["img_shape"] = img_shape
        samples.append(sample | {"keypoint": array})
        splits.setdefault(split or default_split, []).append(sample["frame_dir"])
    return samples, splits


def _label_rows(labels_csv: Path) -> list[tuple[int, str, int, str]]:
    """(row number, name, label, split or "") of each row of a label table."""
    with labels_csv.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["name", "label"]:
        rows = rows[1:]
    entries = []
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if len(cells) not in (2, 3) or not cells[1].isdigit():
            raise UserError(
                f"{labels_csv} row {line}: expected name,label[,split] with a 0-based integer "
                f"label, got {row}"
            )
        entries.append((line, cells[0], int(cells[1]), cells[2] if len(cells) == 3 else ""))
    return entries


def video_annotations(
    folder: Path,
    labels_csv: Path,
    parts: Path,
    *,
    world: bool = False,
    default_split: str = "train",
) -> tuple[Samples, Splits, list[str]]:
    """The samples and splits of a folder of videos and its label table, and one line per
    video skipped (unreadable, or no person in any frame).

    Every named video is found before any is read, so a typo in the table stops the run at
    once; each extraction is cached in `parts` and reused while the video is unchanged."""
    rows = [
        (_video_file(folder, name, f"{labels_csv} row {line}"), name, label, split)
        for line, name, label, split in _label_rows(labels_csv)
    ]
    samples, splits, skipped = [], {}, []
    for source, name, label, split in tqdm(rows, unit="video", file=sys.stderr):
        try:
            pose = _cached_pose(source, parts, world)
        except UserError as e:
            skipped.append(f"skipped {e}")
            tqdm.write(skipped[-1], file=sys.stderr)
            continue
        samples.append({"frame_dir": Path(name).stem, "label": label} | pose)
        splits.setdefault(split or default_split, []).append(Path(name).stem)
    return samples, splits, skipped


def _video_file(folder: Path, name: str, where: str) -> Path:
    """FOLDER/name, or the one FOLDER/name.* file."""
    if (folder / name).is_file():
        return folder / name
    found = [p for p in folder.glob(f"{glob.escape(name)}.*") if p.is_file()]
    if len(found) != 1:
        matches = ", ".join(sorted(p.name for p in found)) or "none"
        raise UserError(
            f"{where}: expected one video named {name!r} in {folder}, found {matches}; name "
            "the video file (with its extension) in the table"
        )
    return found[0]


def _cached_pose(source: Path, parts: Path, world: bool) -> dict:
    """extract_pose's result for `source`, from `parts` when a run extracted it already from the
    same file (size and modification time) with the same `world`."""
    stat = source.stat()
    key = np.array([stat.st_size, stat.st_mtime_ns, world], np.int64)
    part = parts / f"{source.name}.npz"
    if part.is_file():
        with np.load(part) as cached:
            if np.array_equal(cached["source"], key):
                pose = {field: cached[field] for field in cached.files if field != "source"}
                return pose | {
                    "img_shape": tuple(int(n) for n in pose["img_shape"]),
                    "fps": float(pose["fps"]),
                    "total_frames": int(pose["total_frames"]),
                }
    pose = extract_pose(source, world=world)
    with atomic_write(part) as tmp, tmp.open("wb") as f:
        np.savez(f, source=key, **pose)
    return pose


def ntu_annotations(split_file: Path) -> tuple[Samples, Splits]:
    """The samples and splits of one of our NTU split files (NTU60_CS.npz, ...)."""
    samples, splits = [], {}
    for split in ("train", "test"):
        try:
            with np.load(split_file) as npz:
                labels = np.argmax(npz[f"y_{split}"], axis=1)
            rows = npz_member_memmap(split_file, f"x_{split}")
        except (KeyError, zipfile.BadZipFile, EOFError) as e:
            raise UserError(
                f"{split_file}: not one of our NTU split files ({type(e).__name__}: {e}); "
                "give a file written by python -m csre_jax.data.ntu_prepare"
            ) from e
        names = splits.setdefault(split, [])
        for position, (row, label) in enumerate(zip(rows, labels, strict=True)):
            sample = ntu_row_to_sample(row)  # (3, T, 25, 2)
            keypoint = sample[:, : valid_frame_count(sample)].transpose(3, 1, 2, 0)
            if len(keypoint) > 1 and not keypoint[1].any():
                keypoint = keypoint[:1]
            names.append(f"{split}_{position:06d}")
            samples.append(
                {
                    "frame_dir": names[-1],
                    "label": int(label),
                    "keypoint": keypoint.astype(np.float32),
                }
            )
    return samples, splits


def ucla_annotations(root: Path) -> tuple[Samples, Splits]:
    """The samples and splits of NW-UCLA's clips (CTR-GCN's all_sqe JSON files)."""
    samples, splits = [], {}
    for split, name in (("train", "train"), ("val", "test")):
        stems, labels = ucla.split_entries(split)
        clips, _ = ucla.load_split(root, split)
        splits[name] = list(stems)
        samples += [
            {"frame_dir": stem, "label": int(label), "keypoint": clip[None]}
            for stem, label, clip in zip(stems, labels, clips, strict=True)
        ]
    return samples, splits


def _img_shape(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give H,W, e.g. 1080,1920") from None
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sources = parser.add_subparsers(dest="source", required=True)
    npy = sources.add_parser("npy", help="a folder of .npy sequences and a label CSV")
    video = sources.add_parser("video", help="a folder of videos and a label CSV (BlazePose)")
    for sub in (npy, video):
        sub.add_argument("folder", type=Path)
        sub.add_argument("--labels", type=Path, required=True, help="CSV rows name,label[,split]")
        sub.add_argument("--split", default="train", help="split of rows that name none")
    npy.add_argument("--scores", action="store_true", help="the last channel is the score")
    npy.add_argument("--img-shape", type=_img_shape, help="H,W of 2-D pixel coordinates")
    video.add_argument("--world", action="store_true", help="metric 3-D landmarks, not pixels")
    sources.add_parser("ntu", help="one of our NTU split files").add_argument(
        "split_file", type=Path
    )
    sources.add_parser("ucla", help="NW-UCLA's all_sqe clips").add_argument("root", type=Path)
    for sub in sources.choices.values():
        sub.add_argument("--out", type=Path, required=True, help="the .pkl to write")
        sub.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    skipped = []
    with user_errors(args.verbose):
        if args.source == "npy":
            samples, splits = npy_annotations(
                args.folder,
                args.labels,
                scores=args.scores,
                img_shape=args.img_shape,
                default_split=args.split,
            )
        elif args.source == "video":
            samples, splits, skipped = video_annotations(
                args.folder,
                args.labels,
                args.out.with_name(f"{args.out.name}.parts"),
                world=args.world,
                default_split=args.split,
            )
        elif args.source == "ntu":
            samples, splits = ntu_annotations(args.split_file)
        else:
            samples, splits = ucla_annotations(args.root)
        write_annotations(args.out, samples, splits)
    sizes = ", ".join(f"{name} {len(dirs)}" for name, dirs in splits.items())
    unread = f"; {len(skipped)} video(s) skipped, named above" if skipped else ""
    print(f"wrote {args.out}: {len(samples)} samples ({sizes}){unread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
