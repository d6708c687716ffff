"""NTU RGB+D 60/120 preparation: raw `.skeleton` files to the official split files.

Reproduces the official (SGN / CTR-GCN / CSRE) scripts, CTR-GCN's data/ntu{,120}/
get_raw_denoised_data.py and seq_transformation.py: denoising and choice of at most two
actors, centring on actor 1's spine mid, padding to the longest sample, and the split order that
fixes each sample's dataset index (hence its memory-bank slot). The CLI runs samples in parallel,
caches each denoised sample so that an interrupted run resumes, and collects corrupt files into
OUT/report.json instead of stopping at the first. A file holding a NaN or infinite joint
coordinate is corrupt (ntu_raw says why): the sample is rejected, not repaired. A cache entry
records the raw file's size and modification time, so a changed (for example fixed) file is
read again.

    python -m csre_jax.data.ntu_prepare ntu120 --raw DIR [--raw DIR2 ...] --out DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csre_jax.data.ntu_raw import RawSkeleton, read_skeleton
from csre_jax.errors import UserError, user_errors
from csre_jax.fileio import atomic_write

# Denoising thresholds of the official script (the motion filter there is disabled, so absent).
LENGTH_THRESHOLD = 11
SPREAD_THRESHOLD = 0.8
NOISY_FRAME_RATIO = 0.69754

_NTU60_CS_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
_NTU120_CSUB_TRAIN = _NTU60_CS_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
)  # fmt: skip

# benchmark -> (name field the rule reads, train ids, test ids), each in the official order.
SPLITS = {
    "CS": ("performer", _NTU60_CS_TRAIN, tuple(sorted(set(range(1, 41)) - set(_NTU60_CS_TRAIN)))),
    "CV": ("camera", (2, 3), (1,)),
    "CSub": (
        "performer",
        _NTU120_CSUB_TRAIN,
        tuple(sorted(set(range(1, 107)) - set(_NTU120_CSUB_TRAIN))),
    ),
    "CSet": ("setup", tuple(range(2, 33, 2)), tuple(range(1, 33, 2))),
}
DATASETS = {  # dataset -> (benchmarks, classes, prefix of the split files, last setup)
    "ntu60": (("CS", "CV"), 60, "NTU60", 17),
    "ntu120": (("CSub", "CSet"), 120, "NTU120", 32),
}
_NAME_FIELDS = {"setup": 1, "camera": 5, "performer": 9, "replication": 13, "action": 17}


def name_field(names: Sequence[str], field: str) -> np.ndarray:
    """One id (e.g. performer) of every `SsssCcccPpppRrrrAaaa` name, as an int array."""
    start = _NAME_FIELDS[field]
    return np.array([int(name[start : start + 3]) for name in names], dtype=np.int64)


def missing_skeletons(dataset: str) -> set[str]:
    """The official list of samples without skeletons, shipped with the package."""
    path = Path(__file__).with_name(f"{dataset}_missing_skeletons.txt")
    return set(path.read_text().split())


# ------------------------------------------------------------------------------- denoising


def _motion(joints: np.ndarray) -> np.float32:
    """Sum over x, y, z of the variance over all (frame, joint) rows, in float32 as officially."""
    return np.sum(np.var(joints.reshape(-1, 3), axis=0))


def _spread_valid(joints: np.ndarray) -> np.ndarray:
    """Frames whose x extent is at most 0.8 times the y extent (others are likely not people)."""
    x_extent = joints[:, :, 0].max(axis=1) - joints[:, :, 0].min(axis=1)
    y_extent = joints[:, :, 1].max(axis=1) - joints[:, :, 1].min(axis=1)
    return x_extent <= SPREAD_THRESHOLD * y_extent.astype(np.float64)


def _select_bodies(bodies: dict[str, dict], report: dict) -> list[tuple[str, dict]]:
    """Length then spread filter; the survivors sorted by motion, largest first."""
    for body_id, body in list(bodies.items()):
        length = body["joints"].shape[0]
        if length <= LENGTH_THRESHOLD:
            del bodies[body_id]
            report["bodies_removed"].append(
                {"body": body_id, "rule": "length", "frames": length, "motion": body["motion"]}
            )
    for body_id, body in list(bodies.items()):
        if len(bodies) <= 1:
            break
        valid = _spread_valid(body["joints"])
        noisy = valid.size - int(valid.sum())
        if noisy == 0:
            continue
        ratio = noisy / valid.size
        if ratio >= NOISY_FRAME_RATIO:
            del bodies[body_id]
            report["bodies_removed"].append(
                {"body": body_id, "rule": "spread", "noisy_ratio": ratio, "motion": body["motion"]}
            )
        else:
            body["motion"] = min(body["motion"], float(_motion(body["joints"][valid])))
    return sorted(bodies.items(), key=lambda item: item[1]["motion"], reverse=True)


def _place(out: np.ndarray, column: int, body: dict) -> tuple[int, int]:
    """Writes a body into one actor's 75 columns at its assumed contiguous interval."""
    start, n = body["start"], body["joints"].shape[0]
    out[start : start + n, column : column + 75] = body["joints"].reshape(n, 75)
    return start, start + n - 1


def denoise(skeleton: RawSkeleton) -> tuple[np.ndarray, dict]:
    """The denoised float32 joints of one sample, (F, 75) for one actor or (F, 150) for two.

    The report lists what was changed: frames without bodies, bodies removed by the length or
    spread rule, bodies dropped for overlapping both actors, and all-absent frames removed.
    """
    report = {"frames_dropped_empty": list(skeleton.dropped_frames), "bodies_removed": []}
    bodies = {
        body_id: {"start": raw.start, "joints": raw.joints.astype(np.float32)}
        for body_id, raw in skeleton.bodies.items()
    }
    num_frames = skeleton.num_frames
    if len(bodies) == 1:
        out = np.zeros((num_frames, 75), dtype=np.float32)
        _place(out, 0, next(iter(bodies.values())))
        return out, report
    for body in bodies.values():
        body["motion"] = float(_motion(body["joints"]))
    ranked = _select_bodies(bodies, report)
    if not ranked:
        raise UserError(f"{skeleton.name}: every body is {LENGTH_THRESHOLD} frames or shorter")
    report["actors"] = [[ranked[0][0]], []]  # body ids written into each actor's columns
    if len(ranked) == 1:
        out = np.zeros((num_frames, 75), dtype=np.float32)
        _place(out, 0, ranked[0][1])
    else:
        out = np.zeros((num_frames, 150), dtype=np.float32)
        start1, end1 = _place(out, 0, ranked[0][1])
        start2, end2 = 0, 0  # the official virtual initial span of actor 2
        for body_id, body in ranked[1:]:
            start, end = body["start"], body["start"] + body["joints"].shape[0] - 1
            if min(end1, end) - max(start1, start) <= 0:
                _place(out, 0, body)
                start1, end1 = min(start, start1), max(end, end1)
                report["actors"][0].append(body_id)
            elif min(end2, end) - max(start2, start) <= 0:
                _place(out, 75, body)
                start2, end2 = min(start, start2), max(end, end2)
                report["actors"][1].append(body_id)
            else:
                report.setdefault("bodies_dropped_overlap", []).append(body_id)
    absent = out.sum(axis=1) == 0
    if absent.any():
        report["frames_dropped_missing"] = np.flatnonzero(absent).tolist()
        out = out[~absent]
    return out, report


# ------------------------------------------------------------------- transformation, splits


def transform(joints: np.ndarray) -> np.ndarray:
    """Centres every actor on actor 1's spine mid at its first present frame; absent stays 0."""
    first = np.flatnonzero((joints[:, :75] != 0).any(axis=1))[0]
    origin = joints[first, 3:6].copy()
    out = joints - np.tile(origin, joints.shape[1] // 3)
    for column in range(0, joints.shape[1], 75):
        out[joints[:, column : column + 75].sum(axis=1) == 0, column : column + 75] = 0
    return out


def pad(joints: np.ndarray, t_max: int, dataset: str) -> np.ndarray:
    """(t_max, 150), zero-padded in time; a lone actor pairs with 0 (NTU60) or itself (NTU120)."""
    out = np.zeros((t_max, 150), dtype=np.float32)
    out[: joints.shape[0], : joints.shape[1]] = joints
    if joints.shape[1] == 75 and dataset == "ntu120":
        out[: joints.shape[0], 75:] = joints
    return out


def transform_and_pad(samples: Sequence[np.ndarray], dataset: str, t_max: int | None = None):
    """(N, T_max, 150) float32 from denoised samples; T_max defaults to the longest sample."""
    t_max = t_max or max(sample.shape[0] for sample in samples)
    return np.stack([pad(transform(sample), t_max, dataset) for sample in samples])


def split_indices(names: Sequence[str], benchmark: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices into the sorted name list, concatenated id by id as officially."""
    field, train_ids, test_ids = SPLITS[benchmark]
    ids = name_field(names, field)
    return tuple(
        np.concatenate([np.flatnonzero(ids == i) for i in id_list]).astype(np.int64)
        for id_list in (train_ids, test_ids)
    )


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes))
    out[np.arange(len(labels)), labels] = 1
    return out


def save_npz(path: Path, members: dict[str, tuple[tuple, np.dtype, Iterable[np.ndarray]]]) -> None:
    """An np.savez-format file (uncompressed, so memory-mappable) written block by block.

    The full NTU120 tensors (about 20 GB) never sit in memory; the file appears atomically.
    """
    with (
        atomic_write(path) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for key, (shape, dtype, blocks) in members.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "shape": shape}
                np.lib.format.write_array_header_1_0(member, header | {"fortran_order": False})
                for block in blocks:
                    member.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


# --------------------------------------------------------------------------------------- CLI


def _cache_paths(cache: Path, name: str) -> tuple[Path, Path]:
    return cache / f"{name}.npy", cache / f"{name}.json"


def _atomic_write(path: Path, write) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _raw_stamp(path: Path) -> dict[str, int]:
    """The raw file's size and mtime: a cache entry holds only for the file it was made from."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_cached(cache: Path, name: str, path: Path) -> bool:
    array_path, entry_path = _cache_paths(cache, name)
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, ValueError):
        return False
    return array_path.exists() and entry.get("raw") == _raw_stamp(path)


def _process(job: tuple[str, Path, Path]) -> tuple[str, str | None]:
    """Worker: parse and denoise one file into the cache; an error comes back as its message."""
    name, path, cache = job
    try:
        stamp = _raw_stamp(path)  # taken first: a file changed while read is read again
        joints, report = denoise(read_skeleton(path))
    except (ValueError, OSError) as err:
        return name, str(err)
    array_path, entry_path = _cache_paths(cache, name)
    _atomic_write(array_path, lambda f: np.save(f, joints))
    entry = {"raw": stamp, "report": report}  # written last: marks the sample done
    _atomic_write(entry_path, lambda f: f.write(json.dumps(entry).encode()))
    return name, None


def _find_files(raw_dirs: Sequence[Path], last_setup: int) -> dict[str, Path]:
    files = {}
    for raw in raw_dirs:
        for path in sorted(Path(raw).rglob("*.skeleton")):
            name = path.name.split(".")[0]
            if int(name[1:4]) <= last_setup:
                files.setdefault(name, path)
    return files


def _split_blocks(cache: Path, names: Sequence[str], t_max: int, dataset: str) -> Iterator:
    for name in names:
        yield pad(transform(np.load(_cache_paths(cache, name)[0])), t_max, dataset)


def prepare(dataset: str, raw_dirs: Sequence[Path], out: Path, workers: int = 2) -> dict:
    """Runs the whole preparation; returns (and writes to OUT/report.json) what happened."""
    benchmarks, num_classes, prefix, last_setup = DATASETS[dataset]
    out = Path(out)
    absent = [str(d) for d in raw_dirs if not Path(d).is_dir()]
    if absent:
        raise UserError(
            f"--raw={absent[0]}: no such folder; name the folder of the .skeleton files"
        )
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    files = _find_files(raw_dirs, last_setup)
    missing = missing_skeletons(dataset)
    skipped = sorted(set(files) & missing)
    names = sorted(set(files) - missing)
    todo = [name for name in names if not _is_cached(cache, name, files[name])]
    jobs = [(name, files[name], cache) for name in todo]
    errors = {}
    with multiprocessing.get_context("spawn").Pool(max(workers, 1)) as pool:
        results = pool.imap_unordered(_process, jobs, chunksize=8)
        for name, error in tqdm(results, total=len(jobs), desc=f"{dataset} samples"):
            if error is not None:
                errors[name] = error
    names = [name for name in names if name not in errors]
    if not names:
        raise UserError(
            f"--raw={','.join(map(str, raw_dirs))}: no usable .skeleton files there "
            f"({len(files)} found, {len(skipped)} on the missing-skeleton list, {len(errors)} "
            "corrupt); name the folder(s) holding NTU's raw .skeleton files"
        )
    repaired = {}
    frames = []
    for name in names:
        array_path, entry_path = _cache_paths(cache, name)
        frames.append(np.load(array_path, mmap_mode="r").shape[0])
        sample_report = json.loads(entry_path.read_text())["report"]
        if any(value for key, value in sample_report.items() if key != "actors"):
            repaired[name] = sample_report
    t_max = max(frames)
    labels = name_field(names, "action") - 1
    for benchmark in benchmarks:
        members = {}
        for part, indices in zip(("train", "test"), split_indices(names, benchmark), strict=True):
            part_names = [names[i] for i in indices]
            blocks = _split_blocks(cache, part_names, t_max, dataset)
            members[f"x_{part}"] = ((len(indices), t_max, 150), np.float32, blocks)
            members[f"y_{part}"] = (
                (len(indices), num_classes),
                np.float64,
                [one_hot(labels[indices], num_classes)],
            )
        save_npz(out / f"{prefix}_{benchmark}.npz", members)
    report = {
        "dataset": dataset,
        "samples": len(names),
        "t_max": t_max,
        "processed": len(todo) - len(errors),
        "from_cache": len(names) - (len(todo) - len(errors)),
        "skipped_missing": skipped,
        "errors": errors,
        "repaired": repaired,
    }
    _atomic_write(out / "report.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--raw", type=Path, action="append", required=True, help="raw folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    args = parser.parse_args(argv)
    with user_errors(args.verbose):
        report = prepare(args.dataset, args.raw, args.out, args.workers)
    print(
        f"{report['samples']} samples (T_max {report['t_max']}): {report['processed']} processed, "
        f"{report['from_cache']} from cache, {len(report['repaired'])} repaired, "
        f"{len(report['skipped_missing'])} skipped as missing skeletons, "
        f"{len(report['errors'])} rejected as corrupt"
    )
    for name, error in sorted(report["errors"].items()):
        print(f"error: {name}: {error}", file=sys.stderr)
    if report["errors"]:
        print(
            f"the rejected samples are left out of the split files ({args.out / 'report.json'} "
            "lists them); restore or delete their files and run again: changed files are re-read",
            file=sys.stderr,
        )
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
