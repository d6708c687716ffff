"""NTU RGB+D split files, as `python -m csre_jax.data.ntu_prepare` writes them: read lazily.

A split file (NTU60_CS.npz, ...) holds x_train and x_test, (N, T, 150) float32 rows zero-padded
in time, and their one-hot labels y_train and y_test. A split reads as its rows, memory-mapped
(split files are tens of GB), and their 0-based int32 labels; `ntu_row_to_sample` views a row
as the feeders' (3, T, 25, 2).
"""

import zipfile
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError

# Split files as the official NTU preparation names them, per (dataset, benchmark).
SPLIT_FILES = {
    ("ntu60", "xsub"): "NTU60_CS.npz",
    ("ntu60", "xview"): "NTU60_CV.npz",
    ("ntu120", "xsub"): "NTU120_CSub.npz",
    ("ntu120", "xset"): "NTU120_CSet.npz",
}
JOINTS, PERSONS = 25, 2


def split_file(root: str, dataset: str, benchmark: str) -> Path:
    """The split file of `dataset`'s `benchmark` under root (config fields data.name,
    data.benchmark, data.root); a missing one raises with the way to prepare it."""
    key = (dataset, benchmark)
    if key not in SPLIT_FILES:
        choices = sorted(b for n, b in SPLIT_FILES if n == dataset)
        raise UserError(f"data.benchmark={benchmark!r} for {dataset}: choose {choices}")
    path = Path(root).expanduser() / SPLIT_FILES[key]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the {dataset} {benchmark} split file is missing "
            f"(config field data.root={root!r}). Prepare it from the raw .skeleton files "
            f"as docs/data.md shows, or point --config.data.root at the "
            f"folder that holds {SPLIT_FILES[key]}."
        )
    return path


def load_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of "train" or "test": x_<split> memory-mapped, one-hot y_<split> decoded."""
    try:
        with np.load(path) as npz:
            missing = {f"x_{split}", f"y_{split}"} - set(npz.files)
            if missing:
                raise UserError(f"{path}: missing array(s) {sorted(missing)}; found {npz.files}")
            labels = np.argmax(npz[f"y_{split}"], axis=1).astype(np.int32)
        rows = npz_member_memmap(path, f"x_{split}")
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} samples but {len(labels)} labels")
        return rows, labels
    except (zipfile.BadZipFile, EOFError, ValueError) as error:  # truncated or not an .npz
        if isinstance(error, UserError):
            raise
        raise UserError(
            f"{path}: not a readable split file ({type(error).__name__}: {error}); prepare it "
            "again with python -m csre_jax.data.ntu_prepare (docs/data.md)"
        ) from error


def npz_member_memmap(path: Path, key: str) -> np.ndarray:
    """A read-only memmap of an uncompressed .npz member; compressed members are loaded."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with np.load(path) as npz:
                return npz[key]
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local_header = f.read(30)
        name_length = int.from_bytes(local_header[26:28], "little")
        extra_length = int.from_bytes(local_header[28:30], "little")
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    order = "F" if fortran_order else "C"
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order=order)


def ntu_row_to_sample(row: np.ndarray) -> np.ndarray:
    """A split-file row (T, 150) -> a (3, T, 25, 2) view: the 150 values are person, joint, xyz.

    A view, not a copy: the transforms read it once and copying costs more than they do.
    """
    return row.reshape(row.shape[0], PERSONS, JOINTS, 3).transpose(3, 0, 2, 1)
