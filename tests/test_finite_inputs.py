"""Non-finite inputs are refused by name: NTU raw files, NW-UCLA clips, synthetic samples."""

import json
import shutil

import numpy as np
import pytest

from csre_jax.data import ntu_prepare, synthetic, ucla
from csre_jax.data.ntu_raw import SkeletonFormatError, read_skeleton
from csre_jax.data.ucla import NonFiniteClipError

NAN_SAMPLE = "S001C001P001R001A001"  # one body, 103 frames of 28 lines: 1 + 28 f + 4 + j
NAN_LINE = 288  # frame 10, joint 3 (head); its y is 0.8074534
OTHERS = ("S001C003P008R002A058", "S002C001P003R001A003")


def _with_value(path, line: int, column: int, value: str) -> None:
    """Writes `value` into one joint line's column, padded to keep the file's size."""
    lines = path.read_bytes().split(b"\r\n")
    tokens = lines[line - 1].split(b" ")
    tokens[column] = value.encode().ljust(len(tokens[column]))
    lines[line - 1] = b" ".join(tokens)
    path.write_bytes(b"\r\n".join(lines))


@pytest.fixture(scope="module")
def raw_dir(shared_dir):
    return shared_dir / "data" / "ntu" / "raw_samples"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_skeleton_reader_names_file_line_frame_body_and_joint(raw_dir, tmp_path, value):
    path = tmp_path / f"{NAN_SAMPLE}.skeleton"
    shutil.copy(raw_dir / path.name, path)
    _with_value(path, NAN_LINE, 1, value)
    with pytest.raises(SkeletonFormatError) as error:
        read_skeleton(path)
    assert str(error.value) == (
        f"{path.name} line {NAN_LINE}: non-finite joint coordinate y = {float(value)} "
        "(frame 10, body 72057594037931101, joint 3); the file is corrupt: restore it from the "
        "NTU RGB+D download"
    )


def _prepare(raw, out, capsys) -> tuple[int, dict, str, str]:
    code = ntu_prepare.main(["ntu60", "--raw", str(raw), "--out", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    return code, json.loads((out / "report.json").read_text()), captured.out, captured.err


def test_nan_in_cached_raw_file_is_rejected_and_the_fixed_file_reread(raw_dir, tmp_path, capsys):
    """The cache holds for the raw file it was made from: a NaN written into a cached file
    (same size) is read and rejected, and the restored file is read again and kept."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for name in (NAN_SAMPLE, *OTHERS):
        shutil.copy(raw_dir / f"{name}.skeleton", raw)
    path = raw / f"{NAN_SAMPLE}.skeleton"
    original = path.read_bytes()
    code, report, _, _ = _prepare(raw, out, capsys)
    assert code == 0 and (report["processed"], report["from_cache"]) == (3, 0)
    with np.load(out / "NTU60_CV.npz") as split:
        clean = {key: split[key] for key in split.files}
    assert clean["x_test"].shape == (2, 103, 150)  # cameras 1: A001 and A003

    _with_value(path, NAN_LINE, 1, "nan")
    assert path.stat().st_size == len(original)
    code, report, stdout, stderr = _prepare(raw, out, capsys)
    assert code == 1 and (report["processed"], report["from_cache"]) == (0, 2)
    assert report["samples"] == 2 and report["t_max"] == 100
    assert list(report["errors"]) == [NAN_SAMPLE]
    assert report["errors"][NAN_SAMPLE].startswith(
        f"{NAN_SAMPLE}.skeleton line {NAN_LINE}: non-finite joint coordinate y = nan "
        "(frame 10, body 72057594037931101, joint 3)"
    )
    assert "1 rejected as corrupt" in stdout
    assert f"error: {NAN_SAMPLE}: {NAN_SAMPLE}.skeleton line {NAN_LINE}" in stderr
    assert "left out of the split files" in stderr and "changed files are re-read" in stderr
    for split_file in ("NTU60_CS", "NTU60_CV"):
        with np.load(out / f"{split_file}.npz") as split:
            assert len(split["x_train"]) + len(split["x_test"]) == 2
            assert np.isfinite(split["x_train"]).all() and np.isfinite(split["x_test"]).all()

    path.write_bytes(original)
    code, report, stdout, _ = _prepare(raw, out, capsys)
    assert code == 0 and report["errors"] == {}
    assert (report["processed"], report["from_cache"]) == (1, 2)
    assert "1 processed, 2 from cache" in stdout
    with np.load(out / "NTU60_CV.npz") as split:
        for key, value in clean.items():
            np.testing.assert_array_equal(split[key], value)


def test_nan_in_ucla_clip_names_the_clip_and_field(shared_dir, tmp_path):
    """Every clip is checked when the split loads: one error names the first bad clip in
    split order, where in it, the field, the fix, and how many clips are bad."""
    source = shared_dir / "data" / "NW-UCLA" / "all_sqe"
    stems, _ = ucla.split_entries("val")
    folder = tmp_path / "all_sqe"
    folder.mkdir()
    bad = {stems[5]: (3, 7, 2, float("nan")), stems[300]: (0, 0, 0, float("inf"))}
    for stem in stems:
        if stem not in bad:
            (folder / f"{stem}.json").symlink_to(source / f"{stem}.json")
    sizes = {}
    for stem, (frame, joint, axis, value) in bad.items():
        clip = json.loads((source / f"{stem}.json").read_text())
        clip["skeletons"][frame][joint][axis] = value
        (folder / f"{stem}.json").write_text(json.dumps(clip))  # writes JSON's NaN, Infinity
        sizes[stem] = np.size(clip["skeletons"])
    with pytest.raises(NonFiniteClipError) as error:
        ucla.load_split(tmp_path, "val")
    assert str(error.value) == (
        f'{folder / stems[5]}.json: "skeletons" holds NaN or infinity in 1 of its '
        f"{sizes[stems[5]]} values (the first, nan, at frame 3, joint 7, z); replace the file "
        "with the clip from CTR-GCN's NW-UCLA all_sqe download (2 of the 464 val clips hold "
        "such values)"
    )
    (folder / f"{stems[5]}.json").unlink()
    (folder / f"{stems[5]}.json").symlink_to(source / f"{stems[5]}.json")
    with pytest.raises(NonFiniteClipError, match=rf"{stems[300]}\.json: .*first, inf,") as one:
        ucla.load_split(tmp_path, "val")
    assert str(one.value).endswith("all_sqe download")  # a single bad clip: no count


def test_non_finite_synthetic_sample_is_named(monkeypatch):
    """A guard against edits to the generator: a NaN bone of sample 7 is caught there."""
    rest_bones = synthetic._rest_bones

    def broken(rng, shape):
        bones = rest_bones(rng, shape)
        bones[7, 0, 5, 1] = np.nan
        return bones

    assert all(np.isfinite(split["x"]).all() for split in synthetic.make_splits(20, 10, seed=0))
    monkeypatch.setattr(synthetic, "_rest_bones", broken)
    with pytest.raises(FloatingPointError) as error:
        synthetic.generate(20, seed=3)
    assert str(error.value) == (
        "synthetic sample 7 holds NaN or infinite joints (1 of 20 samples, seed 3): the "
        "generator in csre_jax/data/synthetic.py is broken, undo the last change to it"
    )
