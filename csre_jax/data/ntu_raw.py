"""Reads one NTU RGB+D `.skeleton` text file into per-body arrays (the raw extraction of the
official get_raw_skes_data.py, CTR-GCN's data/ntu{,120}/).

Values are kept in float64, exactly as written in the file; the preparation casts them to
float32 the way the official scripts do. The official extraction assumes that each body occupies
a contiguous run of the kept frames; `RawBody.start` carries that assumption forward.

A NaN or infinite x, y or z (the values that reach the split files) makes the file corrupt, like
a truncated one: the error names the line, frame, body and joint, and the preparation leaves the
sample out. The other values of a joint line (depth and colour pixels, orientation, tracking
state) are not used downstream and are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError

NUM_JOINTS = 25
_BODY_FIELDS = 10
_JOINT_FIELDS = 12


class SkeletonFormatError(UserError):
    """A `.skeleton` file that does not follow the format (corrupt or truncated)."""


@dataclass
class RawBody:
    """One Kinect body id across the kept frames it appears in."""

    start: int  # kept-frame index of its first appearance; frames are assumed contiguous from here
    joints: np.ndarray  # (n, 25, 3) float64 camera-space x, y, z in metres
    colors: np.ndarray  # (n, 25, 2) float64 colorX, colorY

    @property
    def num_frames(self) -> int:
        return self.joints.shape[0]


@dataclass
class RawSkeleton:
    """A parsed sample: its bodies in order of first appearance and the frame bookkeeping."""

    name: str
    num_frames: int  # frames that hold at least one body
    dropped_frames: list[int] = field(default_factory=list)  # file frame indices with no body
    bodies: dict[str, RawBody] = field(default_factory=dict)


class _Lines:
    """Walks the file line by line so that errors can name the 1-based line."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()
        self.pos = 0

    def fail(self, line_no: int, message: str) -> SkeletonFormatError:
        return SkeletonFormatError(f"{self.path.name} line {line_no}: {message}")

    def next_tokens(self, what: str) -> list[str]:
        if self.pos >= len(self.lines):
            raise self.fail(self.pos + 1, f"expected {what}, found end of file (file truncated?)")
        self.pos += 1
        return self.lines[self.pos - 1].split()

    def next_int(self, what: str) -> int:
        tokens = self.next_tokens(what)
        if len(tokens) != 1 or not tokens[0].isdigit():
            raise self.fail(self.pos, f"expected {what} (one non-negative integer), found {tokens}")
        return int(tokens[0])

    def joint_block(self, where: str) -> np.ndarray:
        """The next 25 joint lines as a (25, 12) float64 array with finite x, y, z; `where`
        (frame and body) goes into the error."""
        first = self.pos
        block = self.lines[first : first + NUM_JOINTS]
        rows = [line.split() for line in block]
        for offset, row in enumerate(rows):
            if len(row) != _JOINT_FIELDS:
                hint = " (file truncated?)" if first + offset == len(self.lines) - 1 else ""
                raise self.fail(
                    first + offset + 1,
                    f"expected {_JOINT_FIELDS} joint values, found {len(row)}{hint}",
                )
        if len(rows) < NUM_JOINTS:
            raise self.fail(
                len(self.lines) + 1,
                f"expected {_JOINT_FIELDS} joint values, found end of file (file truncated?)",
            )
        self.pos += NUM_JOINTS
        try:
            values = np.array(rows, dtype=np.float64)
        except ValueError:
            for offset, row in enumerate(rows):
                try:
                    np.array(row, dtype=np.float64)
                except ValueError as err:
                    raise self.fail(
                        first + offset + 1, f"non-numeric joint value ({err})"
                    ) from None
            raise
        bad = np.argwhere(~np.isfinite(values[:, :3]))
        if bad.size:
            joint, axis = bad[0]
            raise self.fail(
                first + joint + 1,
                f"non-finite joint coordinate {'xyz'[axis]} = {values[joint, axis]} ({where}, "
                f"joint {joint}); the file is corrupt: restore it from the NTU RGB+D download",
            )
        return values


def read_skeleton(path: str | Path) -> RawSkeleton:
    """Parses one `.skeleton` file (CRLF or LF); raises SkeletonFormatError naming file and line."""
    path = Path(path)
    lines = _Lines(path, path.read_text(encoding="ascii", errors="replace"))
    total = lines.next_int("the frame count")
    skeleton = RawSkeleton(name=path.name.split(".")[0], num_frames=0)
    blocks: dict[str, list[np.ndarray]] = {}
    starts: dict[str, int] = {}
    for frame in range(total):
        body_count = lines.next_int(f"the body count of frame {frame}")
        if body_count == 0:
            skeleton.dropped_frames.append(frame)
            continue
        kept = skeleton.num_frames
        skeleton.num_frames += 1
        for _ in range(body_count):
            info = lines.next_tokens(f"{_BODY_FIELDS} body values")
            if len(info) != _BODY_FIELDS:
                raise lines.fail(
                    lines.pos, f"expected {_BODY_FIELDS} body values, found {len(info)}"
                )
            joint_count = lines.next_int("the joint count")
            if joint_count != NUM_JOINTS:
                raise lines.fail(lines.pos, f"expected {NUM_JOINTS} joints, found {joint_count}")
            starts.setdefault(info[0], kept)
            block = lines.joint_block(f"frame {frame}, body {info[0]}")
            blocks.setdefault(info[0], []).append(block)
    if skeleton.num_frames == 0:
        raise lines.fail(1, f"expected at least one frame holding a body, found none of {total}")
    for body_id, rows in blocks.items():
        values = np.stack(rows)
        skeleton.bodies[body_id] = RawBody(
            start=starts[body_id], joints=values[:, :, :3], colors=values[:, :, 5:7]
        )
    return skeleton
