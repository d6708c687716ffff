"""Which actions happen when in one long sequence: a timeline of labelled segments.

A model trained on short clips sees a long sequence through sliding windows of `window`
frames every `stride` frames; the last window is aligned to the sequence's end, so every
frame is covered. Each window gets class probabilities; a centred moving average over
`smooth` consecutive windows steadies them against a single confused window; each frame
takes the smoothed probabilities of the window whose centre is nearest to it (the earlier
one on a tie), so a change of action is placed halfway between the centres of the last
window of one label and the first of the next, within about half a stride of where the
windows' majority changes. Consecutive frames of the same most probable class form a segment.

    timeline = build_timeline(probabilities, length, window=32, stride=8, smooth=3, fps=30,
                              class_names=names)   # probabilities(starts) -> (W, K)
    print("\\n".join(timeline.lines()))
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from csre_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Segment:
    """Frames start..stop-1 labelled `label` (`name`); probability is the mean over these
    frames of that class's smoothed probability. Seconds are None without a frame rate."""

    start: int
    stop: int
    label: int
    name: str
    probability: float
    start_s: float | None = None
    stop_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The segments of one sequence, with what they were derived from: each window's first
    frame and probabilities (W, K) before and after smoothing, and each frame's window and
    smoothed probabilities (T, K), so a renderer can caption every frame."""

    segments: tuple[Segment, ...]
    class_names: tuple[str, ...]
    window: int
    stride: int
    smooth: int
    starts: np.ndarray
    window_probabilities: np.ndarray
    smoothed: np.ndarray
    frame_window: np.ndarray
    fps: float | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_window)

    @property
    def frame_probabilities(self) -> np.ndarray:
        """(T, K): each frame's smoothed probabilities."""
        return self.smoothed[self.frame_window]

    @property
    def frame_labels(self) -> np.ndarray:
        """(T,): each frame's most probable class."""
        return self.frame_probabilities.argmax(axis=1)

    def lines(self) -> list[str]:
        """A header, then one line per segment: frames, seconds (with a frame rate), class
        and mean probability."""
        rate = f" at {self.fps:g} fps" if self.fps else ""
        lines = [
            f"{self.num_frames} frames{rate}, {len(self.starts)} windows of {self.window} "
            f"frames every {self.stride} (smoothed over {self.smooth}): "
            f"{len(self.segments)} segments"
        ]
        width = len(str(self.num_frames - 1))
        for s in self.segments:
            span = f"frames {s.start:>{width}}-{s.stop - 1:<{width}}"
            if s.start_s is not None:
                span += f"  {s.start_s:.2f}-{s.stop_s:.2f} s"
            lines.append(f"  {span}  {s.name}  {s.probability:.3f}")
        return lines


def check_settings(window: int, stride: int, smooth: int, fps: float | None) -> None:
    """Refuses settings that describe no timeline, before any model runs."""
    for name, value in (("window", window), ("stride", stride), ("smooth", smooth)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise UserError(f"{name}={value}: give a whole number of 1 or more")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise UserError(f"fps={fps}: give the frames per second as a positive number")
    if stride > window:
        raise UserError(
            f"stride={stride} frames is longer than the window ({window} frames), so frames "
            f"between windows would go unseen; use a stride of at most {window}"
        )


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """First frames of the windows: every stride, plus one ending at the last frame."""
    if window > length:
        raise UserError(
            f"a window of {window} frames is longer than the sequence ({length} frames); use "
            f"a window of at most {length} frames"
        )
    starts = np.arange(0, length - window + 1, stride)
    return starts if starts[-1] == length - window else np.append(starts, length - window)


def smooth_probabilities(probabilities: np.ndarray, smooth: int) -> np.ndarray:
    """Centred moving average over `smooth` windows (i - (smooth-1)//2 .. i + smooth//2),
    over the windows that exist near the ends; smooth=1 leaves them as they are."""
    before, after = (smooth - 1) // 2, smooth // 2
    return np.stack(
        [
            probabilities[max(i - before, 0) : i + after + 1].mean(0)
            for i in range(len(probabilities))
        ]
    )


def nearest_window(length: int, starts: np.ndarray, window: int) -> np.ndarray:
    """(T,): for each frame, the window whose centre is nearest (the earlier on a tie)."""
    centres = starts + (window - 1) / 2  # increasing
    frames = np.arange(length)
    # The nearest centre is the first at or after the frame or the one before it: (T,) work,
    # not a (T, windows) table (160 MB for ten minutes of video at 30 fps).
    after = np.minimum(np.searchsorted(centres, frames), len(centres) - 1)
    before = np.maximum(after - 1, 0)
    earlier = np.abs(frames - centres[before]) <= np.abs(centres[after] - frames)
    return np.where(earlier, before, after)


def segments(
    probabilities: np.ndarray, class_names: Sequence[str], fps: float | None = None
) -> tuple[Segment, ...]:
    """Runs of frames with the same most probable class, from per-frame (T, K)
    probabilities."""
    labels = probabilities.argmax(axis=1)
    cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(labels)], strict=True)
    return tuple(
        Segment(
            start=int(start),
            stop=int(stop),
            label=int(labels[start]),
            name=class_names[labels[start]],
            probability=float(probabilities[start:stop, labels[start]].mean()),
            start_s=None if not fps else start / fps,
            stop_s=None if not fps else stop / fps,
        )
        for start, stop in bounds
    )


def build_timeline(
    probabilities: Callable[[np.ndarray], np.ndarray],
    length: int,
    *,
    window: int,
    stride: int,
    class_names: Sequence[str],
    smooth: int = 1,
    fps: float | None = None,
) -> Timeline:
    """The timeline of a `length`-frame sequence; probabilities(starts) returns (W, K), the
    class probabilities of the windows starting at those frames."""
    check_settings(window, stride, smooth, fps)
    starts = window_starts(length, window, stride)
    raw = np.asarray(probabilities(starts), np.float64)
    smoothed = smooth_probabilities(raw, smooth)
    frame_window = nearest_window(length, starts, window)
    return Timeline(
        segments=segments(smoothed[frame_window], class_names, fps),
        class_names=tuple(class_names),
        window=window,
        stride=stride,
        smooth=smooth,
        starts=starts,
        window_probabilities=raw,
        smoothed=smoothed,
        frame_window=frame_window,
        fps=fps,
    )
