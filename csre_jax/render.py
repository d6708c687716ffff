"""Skeleton sequences you can watch: the layout's edges drawn over video frames, or on a blank
canvas, with a caption per frame (e.g. the current label and the top probabilities), written
as `.mp4` (opencv, mp4v) or `.gif` (Pillow).

Joints at the origin (all coordinates 0) or with score 0 are missing and not drawn, nor are
their edges. On a blank canvas the coordinates are fitted to it, one scale for the whole
sequence so the motion stays visible; 3-D skeletons are drawn from their x and y with y up.
A GIF shows identical consecutive frames as one frame of their summed duration (Pillow's
writer merges them), so it may hold fewer frames than the sequence, never less time.
"""

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from csre_jax.errors import UserError
from csre_jax.layouts import Layout
from csre_jax.video import frames as frames_module

FORMATS = (".mp4", ".gif")
PERSON_COLOURS = ((255, 80, 60), (60, 160, 255), (80, 220, 100), (240, 200, 40))
JOINT_RADIUS = 3
CANVAS_MARGIN = 0.1  # of the canvas, on each side
CAPTION_SPACE = 36  # pixels at the top of a blank canvas for two caption lines


def check_output(path: str | Path) -> Path:
    """The output path, refused before any work when its format is unknown or its folder is
    missing or not writable."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(
            f"{path}: cannot write {path.suffix or 'a file without extension'}; "
            f"name a {' or '.join(FORMATS)} file"
        )
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{path}: the folder {folder} does not exist; create it first")
    probe = folder / f".{path.name}.probe"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"{path}: cannot write in {folder} ({e.strerror}); pick another path"
        ) from e
    return path


# Below this score a joint is a guess (BlazePose places legs out of frame with visibility
# around 0.1): drawing it would show a skeleton the model was not sure of.
MIN_DRAWN_SCORE = 0.3


def visible_joints(keypoint: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """(M, T, V) bool: the joints to draw: not missing (zeros), scored at least
    MIN_DRAWN_SCORE where there are scores."""
    visible = np.any(keypoint != 0, axis=-1)
    return visible if score is None else visible & (np.asarray(score) >= MIN_DRAWN_SCORE)


def fit_to_canvas(
    keypoint: np.ndarray,
    visible: np.ndarray,
    size: tuple[int, int],
    *,
    y_up: bool,
    top: int = 0,
) -> np.ndarray:
    """(M, T, V, 2) pixel positions on an (h, w) canvas: x and y scaled by one factor that
    fits every visible joint of every frame, centred with a margin below the `top` pixels
    kept free for the caption."""
    h, w = size[0] - top, size[1]
    xy = np.asarray(keypoint, np.float64)[..., :2] * [1, -1 if y_up else 1]
    points = xy[visible]
    if not len(points):
        return np.zeros_like(xy)
    low, high = points.min(axis=0), points.max(axis=0)
    scale = (1 - 2 * CANVAS_MARGIN) * np.min(np.array([w, h]) / np.maximum(high - low, 1e-9))
    return (xy - (low + high) / 2) * scale + [w / 2, top + h / 2]


def draw_frame(
    image: Image.Image,
    points: np.ndarray,
    visible: np.ndarray,
    layout: Layout,
    caption: Sequence[str] = (),
) -> Image.Image:
    """Draws one frame's skeletons (M, V, 2 pixels; visible (M, V)) and the caption lines
    onto the image, in place; returns it."""
    draw = ImageDraw.Draw(image)
    for person, (xy, seen) in enumerate(zip(points, visible, strict=True)):
        colour = PERSON_COLOURS[person % len(PERSON_COLOURS)]
        for a, b in layout.edges:
            if seen[a] and seen[b]:
                draw.line([tuple(xy[a]), tuple(xy[b])], fill=colour, width=2)
        for x, y in xy[seen]:
            r = JOINT_RADIUS
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255), outline=colour)
    if caption:
        font = ImageFont.load_default()
        text = "\n".join(caption)
        box = draw.multiline_textbbox((6, 6), text, font=font)
        draw.rectangle([box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4], fill=(0, 0, 0))
        draw.multiline_text((6, 6), text, fill=(255, 255, 255), font=font)
    return image


def captions(
    probabilities: np.ndarray, class_names: Sequence[str], top: int = 3
) -> list[list[str]]:
    """Per frame, from its (T, K) probabilities: the most probable class, then the top
    classes with their probabilities."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [
        [class_names[ranks[0]], "  ".join(f"{class_names[c]} {row[c]:.2f}" for c in ranks)]
        for row, ranks in zip(probabilities, order, strict=True)
    ]


def write_frames(path: str | Path, frames: Iterable[Image.Image], fps: float) -> int:
    """Writes RGB frames to an .mp4 or .gif (check_output's formats); returns their count."""
    path = check_output(path)
    if path.suffix.lower() == ".gif":
        images = list(frames)
        if images:
            duration = max(round(1000 / fps), 20)  # GIF players slow down shorter frames
            images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
        return len(images)
    cv2 = frames_module.require("cv2")
    writer, count = None, 0
    try:
        for image in frames:
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(str(path), fourcc, float(fps), image.size)
                if not writer.isOpened():
                    raise UserError(
                        f"{path}: opencv cannot write an mp4v video; {frames_module.INSTALL}"
                    )
            writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def render(
    path: str | Path,
    keypoint: np.ndarray,
    layout: Layout,
    *,
    score: np.ndarray | None = None,
    frame_captions: Sequence[Sequence[str]] | None = None,
    video: str | Path | None = None,
    fps: float = 30.0,
    size: tuple[int, int] = (360, 480),
    y_up: bool = False,
) -> int:
    """Writes the skeletons (M, T, V, C) frame by frame to path (.mp4 or .gif): over the
    frames of `video` (keypoints in its pixels), else fitted to a blank (h, w) canvas.
    Returns the frames written: T, or fewer when the video ends first."""
    path = check_output(path)
    keypoint = np.asarray(keypoint)
    length = keypoint.shape[1]
    visible = visible_joints(keypoint, score)
    with contextlib.ExitStack() as stack:
        if video is None:
            top = CAPTION_SPACE if frame_captions else 0
            points = fit_to_canvas(keypoint, visible, size, y_up=y_up, top=top)
            backgrounds = (np.zeros((*size, 3), np.uint8) for _ in range(length))
        else:
            points = keypoint[..., :2]
            backgrounds = stack.enter_context(frames_module.VideoFrames(video))
        frames = (
            draw_frame(Image.fromarray(background), points[:, t], visible[:, t], layout, caption)
            for t, background, caption in zip(
                range(length), backgrounds, frame_captions or [()] * length, strict=False
            )
        )
        return write_frames(path, frames, fps)
