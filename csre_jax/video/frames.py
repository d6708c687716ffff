"""A video's frames, decoded by OpenCV one at a time (no system ffmpeg needed: the
opencv-python wheels bring their own), so a long video never sits in memory."""

import contextlib
import importlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError

INSTALL = "pip install -r requirements-video.txt"
DEFAULT_FPS = 30.0  # when the container states no frame rate
_FIX = "give a complete video file OpenCV decodes (mp4, avi, mov, mkv), or re-encode it"


def require(module: str):
    """Imports one of the video extra's modules, or says how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"video pose extraction needs the video extra ({e}): {INSTALL}") from None


class VideoFrames:
    """A video opened for decoding: `fps`, `img_shape` (H, W), `frame_count` (the container's
    count, which may be approximate, or None) and, iterated once, its RGB uint8 (H, W, 3)
    frames.

    Opening decodes the first frame, so a file that is not a video, or holds no frame, is
    refused here, naming the file."""

    def __init__(self, path: str | Path):
        cv2 = require("cv2")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such video file; check the path")
        self._cv2 = cv2
        with native_logs_muted():  # ffmpeg's own complaint about a broken file
            self._capture = cv2.VideoCapture(str(self.path))
            ok, self._first = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self.close()
            raise UserError(f"{self.path}: cannot be decoded as a video or has no frame; {_FIX}")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self.img_shape = tuple(int(n) for n in self._first.shape[:2])
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None

    def __iter__(self) -> Iterator[np.ndarray]:
        """The frames in order, RGB; decoding stops at the first frame that cannot be read."""
        frame = self._first
        while frame is not None:
            yield self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)
            ok, frame = self._capture.read()
            frame = frame if ok else None

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def native_logs_muted() -> Iterator[None]:
    """Native libraries write to stderr past Python (MediaPipe some 45 lines as it loads, first
    runs and closes the model, LiteRT and glog, which no setting silences; ffmpeg a line per
    broken file); they would bury a conversion's progress and its one line per skipped video,
    so stderr's file descriptor points at /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
