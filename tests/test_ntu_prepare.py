"""NTU preparation against the official outputs on real and planted-noise raw files."""

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from csre_jax.data import ntu_prepare
from csre_jax.data.ntu_raw import RawBody, RawSkeleton, SkeletonFormatError, read_skeleton

FRAMES = {  # from data/ntu/PROVENANCE.md
    "S001C001P001R001A001": 103,
    "S001C001P001R001A011": 82,
    "S001C003P008R002A058": 70,
    "S002C001P003R001A003": 100,
    "S003C001P015R001A034": 71,
    "S004C002P003R001A017": 124,
}
SPLIT_FILES = ("NTU60_CS", "NTU60_CV", "NTU120_CSub", "NTU120_CSet")


@pytest.fixture(scope="module")
def raw_dir(shared_dir) -> Path:
    return shared_dir / "data" / "ntu" / "raw_samples"


def test_parser_reads_all_raw_samples(raw_dir):
    for name, frames in FRAMES.items():
        skeleton = read_skeleton(raw_dir / f"{name}.skeleton")
        assert skeleton.name == name and skeleton.num_frames == frames
        assert len(skeleton.bodies) == (2 if name.endswith("A058") else 1)
        for body in skeleton.bodies.values():
            assert body.joints.shape == (body.num_frames, 25, 3)
            assert body.colors.shape == (body.num_frames, 25, 2)


def test_parser_matches_official_npy_and_reads_lf(raw_dir, tmp_path):
    path = raw_dir / "S001C001P001R001A001.skeleton"
    official = np.load(f"{path}.npy", allow_pickle=True).item()  # txt2npy.py: a pickled dict
    skeleton = read_skeleton(path)
    (body,) = skeleton.bodies.values()
    assert official["file_name"] == skeleton.name and official["nbodys"] == [1] * 103
    np.testing.assert_array_equal(body.joints, official["skel_body0"])  # exact, float64
    lf_copy = tmp_path / path.name
    lf_copy.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    np.testing.assert_array_equal(
        next(iter(read_skeleton(lf_copy).bodies.values())).joints, body.joints
    )


def test_two_person_sample(raw_dir):
    joints, report = ntu_prepare.denoise(read_skeleton(raw_dir / "S001C003P008R002A058.skeleton"))
    assert joints.shape == (70, 150) and len(report["actors"][1]) == 1
    assert (joints[:, :75] != 0).any(axis=1).all() and (joints[:, 75:] != 0).any(axis=1).all()
    x = ntu_prepare.transform_and_pad([joints], "ntu120")
    np.testing.assert_allclose(x[0, 0, 3:6], 0)  # centred on actor 1's spine mid
    assert not np.array_equal(x[0, :, :75], x[0, :, 75:])  # two actors, not a duplicate


def test_truncated_file_names_file_and_line(raw_dir, tmp_path):
    lines = (raw_dir / "S001C001P001R001A011.skeleton").read_bytes().split(b"\r\n")
    truncated = tmp_path / "S001C001P001R001A011.skeleton"
    truncated.write_bytes(b"\r\n".join(lines[:56] + [b" ".join(lines[56].split()[:5])]))
    with pytest.raises(SkeletonFormatError, match="expected 12 joint values, found 5") as err:
        read_skeleton(truncated)
    assert str(err.value).startswith("S001C001P001R001A011.skeleton line 57:")
    truncated.write_bytes(b"\r\n".join(lines[:30]))
    with pytest.raises(SkeletonFormatError, match="line 31: .*found end of file"):
        read_skeleton(truncated)


@pytest.fixture(scope="module", params=["ntu_pipeline", "ntu_pipeline_noisy"])
def prepared(request, shared_dir, tmp_path_factory):
    """Both datasets prepared by the CLI code from one fixture folder's raw files."""
    fixture = shared_dir / "fixtures" / request.param
    raw_dirs = [shared_dir / "data" / "ntu" / "raw_samples"]
    if (fixture / "raw").is_dir():
        raw_dirs.append(fixture / "raw")
    out = tmp_path_factory.mktemp(request.param)
    reports = {
        dataset: ntu_prepare.prepare(dataset, raw_dirs, out) for dataset in ("ntu60", "ntu120")
    }
    return fixture, out, reports


def test_denoised_samples_match_official(prepared):
    fixture, out, _ = prepared
    for dataset_file in ("ntu_denoised_joints", "ntu120_denoised_joints"):
        official = np.load(fixture / f"{dataset_file}.npz")
        names = [key for key in official.files if key != "frames_cnt"]
        frames = [np.load(out / "cache" / f"{name}.npy").shape[0] for name in names]
        np.testing.assert_array_equal(frames, official["frames_cnt"])
        for name in names:
            np.testing.assert_array_equal(np.load(out / "cache" / f"{name}.npy"), official[name])


def test_split_files_match_official(prepared):
    fixture, out, reports = prepared
    assert reports["ntu120"]["from_cache"] == reports["ntu60"]["samples"]  # cache shared
    for split in SPLIT_FILES:
        official, ours = np.load(fixture / f"{split}.npz"), np.load(out / f"{split}.npz")
        assert sorted(ours.files) == sorted(official.files)
        with zipfile.ZipFile(out / f"{split}.npz") as archive:  # stored: loaders memory-map it
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
        for key in official.files:
            assert ours[key].dtype == official[key].dtype and ours[key].shape == official[key].shape
            if key.startswith("x"):
                np.testing.assert_allclose(ours[key], official[key], rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(ours[key], official[key])


def test_planted_noise_is_reported(prepared):
    fixture, _, reports = prepared
    repaired = reports["ntu120"]["repaired"]
    if fixture.name == "ntu_pipeline":
        assert repaired == {}
        return
    first = repaired["S005C001P002R001A008"]
    assert first["frames_dropped_empty"] == [0, 1, 2]
    removed = {body["body"]: body for body in first["bodies_removed"]}
    assert removed["999"]["rule"] == "length" and removed["999"]["frames"] == 8
    assert round(removed["999"]["motion"], 3) == 0.165
    assert removed["888"]["rule"] == "spread" and removed["888"]["noisy_ratio"] == 1.0
    assert round(removed["888"]["motion"], 3) == 0.894
    assert repaired["S006C002P006R002A050"]["bodies_dropped_overlap"] == ["777"]


def _body(widths, height=1.0, start=0) -> RawBody:
    """A synthetic body, one frame per width: the 25 joints spread evenly over x in
    [0, width] and y in [0, height], so the spread rule sees exactly these extents."""
    steps = np.linspace(0.0, 1.0, 25)
    x = np.asarray(widths, np.float64)[:, None] * steps
    joints = np.stack([x, np.broadcast_to(height * steps, x.shape), np.zeros_like(x)], axis=-1)
    return RawBody(start=start, joints=joints, colors=np.zeros(x.shape + (2,)))


def _denoise(**bodies: RawBody) -> tuple[np.ndarray, dict]:
    """Denoises one planted sample holding `bodies` (id -> body) in the given order."""
    frames = max(body.start + body.num_frames for body in bodies.values())
    return ntu_prepare.denoise(RawSkeleton("S001C001P001R001A001", frames, bodies=bodies))


def _removed(report: dict) -> dict[str, str]:
    return {body["body"]: body["rule"] for body in report["bodies_removed"]}


@pytest.mark.parametrize(("frames", "kept"), [(11, False), (12, True)])
def test_length_rule_deletes_bodies_of_at_most_11_frames(frames, kept):
    """Official rule: a body of 11 frames or fewer is deleted, one of 12 is kept."""
    _, report = _denoise(actor=_body([0.5] * 30), short=_body([0.3] * frames))
    if kept:
        assert _removed(report) == {} and report["actors"] == [["actor"], ["short"]]
    else:
        assert _removed(report) == {"short": "length"} and report["actors"] == [["actor"], []]
        assert report["bodies_removed"][0]["frames"] == frames


@pytest.mark.parametrize(
    ("width", "height", "kept"),
    [(0.799, 1.0, True), (1.0, 1.25, True), (0.801, 1.0, False)],  # 1.0 = 0.8 * 1.25 exactly
)
def test_spread_rule_flags_frames_wider_than_0_8_of_their_height(width, height, kept):
    """A frame is valid while its x extent is at most 0.8 times its y extent (equality
    included); a body whose frames are all invalid is deleted."""
    _, report = _denoise(actor=_body([0.5] * 20), wide=_body([width] * 20, height))
    assert _removed(report) == ({} if kept else {"wide": "spread"})


@pytest.mark.parametrize(("noisy", "frames", "kept"), [(113, 162, True), (143, 205, False)])
def test_spread_rule_deletes_bodies_with_noisy_ratio_from_0_69754(noisy, frames, kept):
    """113/162 = 0.697531 is just under the official 0.69754: the body is kept and its
    motion drops to that of its valid frames (so it ranks below the other actor); 143/205 =
    0.697561 is just over: the body is deleted."""
    noisy_body = _body([2.0] * noisy + [0.3] * (frames - noisy))
    _, report = _denoise(actor=_body([0.5] * frames), noisy=noisy_body)
    if kept:
        assert _removed(report) == {} and report["actors"] == [["actor"], ["noisy"]]
    else:
        assert report["bodies_removed"][0]["noisy_ratio"] == noisy / frames
        assert _removed(report) == {"noisy": "spread"} and report["actors"] == [["actor"], []]


def test_motion_bounds_are_not_applied():
    """The official motion filter (keep 0.089925 <= motion <= 2.0) is commented out: bodies
    outside the bounds stay and are only ranked by motion (here the variance of the joints'
    spread, above 2.0 for bodies metres tall)."""
    bodies = {
        "top": _body([3.0] * 30, height=6.0),
        "high": _body([1.0] * 30, height=5.0),
        "low": _body([0.25] * 20, height=0.5, start=30),  # after "top": joins its columns
    }
    motion = {key: np.var(body.joints.reshape(-1, 3), axis=0).sum() for key, body in bodies.items()}
    assert motion["top"] > motion["high"] > 2.0 and motion["low"] < 0.089925
    joints, report = _denoise(**bodies)
    assert _removed(report) == {} and report["actors"] == [["top", "low"], ["high"]]
    assert joints.shape == (50, 150)


COUNTS = {
    "CS": (40091, 16487),
    "CV": (37646, 18932),
    "CSub": (63026, 50919),
    "CSet": (54468, 59477),
}


@pytest.mark.parametrize("dataset", ["ntu60", "ntu120"])
def test_split_rules_reproduce_official_counts(shared_dir, dataset):
    statistics = shared_dir / "data" / ("ntu" if dataset == "ntu60" else "ntu120") / "statistics"
    names = (statistics / "skes_available_name.txt").read_text().split()
    missing = ntu_prepare.missing_skeletons(dataset)
    assert len(names) + len(missing) == {"ntu60": 56880, "ntu120": 114480}[dataset]
    assert names == sorted(names) and not missing & set(names)
    for field in ("setup", "camera", "performer", "replication"):
        expected = np.loadtxt(statistics / f"{field}.txt", dtype=np.int64)
        np.testing.assert_array_equal(ntu_prepare.name_field(names, field), expected)
    performer = ntu_prepare.name_field(names, "performer")
    for benchmark in ntu_prepare.DATASETS[dataset][0]:
        train, test = ntu_prepare.split_indices(names, benchmark)
        assert (len(train), len(test)) == COUNTS[benchmark]
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(names)))
        if benchmark in ("CS", "CSub"):  # id by id in the listed order, names sorted within
            assert performer[train[0]] == 1 and performer[test[0]] == 3
            assert np.all(np.diff(train[performer[train] == 38]) > 0)


def test_cli_reports_corrupt_file_and_resumes_from_cache(raw_dir, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for name in ("S001C001P001R001A001", "S001C003P008R002A058", "S002C001P003R001A003"):
        shutil.copy(raw_dir / f"{name}.skeleton", raw)
    lines = (raw_dir / "S001C001P001R001A011.skeleton").read_bytes().split(b"\r\n")
    (raw / "S001C001P001R001A011.skeleton").write_bytes(b"\r\n".join(lines[:100]))
    (raw / "S001C002P005R002A008.skeleton").write_text("listed as missing: never read")

    assert ntu_prepare.main(["ntu60", "--raw", str(raw), "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert list(report["errors"]) == ["S001C001P001R001A011"]
    assert "S001C001P001R001A011.skeleton line 101" in report["errors"]["S001C001P001R001A011"]
    assert report["skipped_missing"] == ["S001C002P005R002A008"]
    assert (report["samples"], report["processed"], report["t_max"]) == (3, 3, 103)
    with np.load(out / "NTU60_CV.npz") as split:
        assert split["x_test"].shape == (2, 103, 150) and split["x_train"].shape == (1, 103, 150)

    cached = raw / "S001C001P001R001A001.skeleton"  # same size and mtime: must not be read
    stat = cached.stat()
    cached.write_bytes(b"x" * stat.st_size)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ntu_prepare.main(["ntu60", "--raw", str(raw), "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert (report["processed"], report["from_cache"]) == (0, 3)
    assert list(report["errors"]) == ["S001C001P001R001A011"]
