"""Skeletons from a video with MediaPipe's BlazePose (the `blazepose` layout, 33 landmarks),
offline: the model ships in the package (pose_landmarker_full.task, NOTICE), so extraction
never downloads anything.

BlazePose tracks one person per frame; a frame without one is kept as zeros with score 0, so
frame times stay those of the video.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csre_jax.errors import UserError
from csre_jax.video.frames import VideoFrames, native_logs_muted, require

MODEL = Path(__file__).with_name("pose_landmarker_full.task")
NUM_LANDMARKS = 33
# COCO-17's keypoints, in COCO order, as BlazePose landmark indices (the layouts name both).
COCO_FROM_BLAZEPOSE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def extract_pose(path: str | Path, *, world: bool = False, progress: bool = False) -> dict:
    """The pose of the person in every frame of the video at `path`, as a pyskl sample's fields.

    keypoint: float32 (1, T, 33, 2) pixel x, y in the frame, or with `world` (1, T, 33, 3)
    BlazePose's metric world landmarks (metres, origin between the hips); keypoint_score:
    float32 (1, T, 33) landmark visibility in [0, 1]; img_shape (H, W); fps; total_frames T.
    Frames without a person are zeros with score 0. A file that is not a video, or a video
    in which no frame shows a person, raises a UserError naming it."""
    channels = 3 if world else 2
    keypoints, scores = [], []
    with VideoFrames(path) as video, _landmarker() as (landmarker, mp):
        height, width = video.img_shape
        frames = tqdm(
            video,
            total=video.frame_count,
            desc=video.path.name,
            unit="frame",
            disable=not progress,
            leave=False,
        )
        last_ms = -1
        for index, rgb in enumerate(frames):
            # VIDEO mode tracks from frame to frame and needs strictly increasing timestamps.
            last_ms = max(last_ms + 1, round(index * 1000 / video.fps))
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            with native_logs_muted() if index == 0 else contextlib.nullcontext():
                result = landmarker.detect_for_video(image, last_ms)
            if not result.pose_landmarks:
                keypoints.append(np.zeros((NUM_LANDMARKS, channels), np.float32))
                scores.append(np.zeros(NUM_LANDMARKS, np.float32))
                continue
            image_marks = result.pose_landmarks[0]
            if world:
                coords = [(m.x, m.y, m.z) for m in result.pose_world_landmarks[0]]
            else:
                coords = [(m.x * width, m.y * height) for m in image_marks]
            keypoints.append(np.asarray(coords, np.float32))
            scores.append(np.asarray([m.visibility for m in image_marks], np.float32))
    score = np.stack(scores)[None]
    if not score.any():
        raise UserError(
            f"{video.path}: no person found in any of its {score.shape[1]} frames; BlazePose "
            "needs one person in view (whole or upper body): check the video shows one"
        )
    return {
        "keypoint": np.stack(keypoints)[None],
        "keypoint_score": score,
        "img_shape": video.img_shape,
        "fps": video.fps,
        "total_frames": score.shape[1],
    }


def to_coco(
    keypoint: np.ndarray, score: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """BlazePose-33 keypoints (..., 33, C) and scores (..., 33) as COCO-17's (the `coco`
    layout): the same landmarks, COCO's order; returns (keypoint, score), score None if None."""
    index = list(COCO_FROM_BLAZEPOSE)
    keypoint = np.asarray(keypoint)
    if keypoint.ndim < 2 or keypoint.shape[-2] != NUM_LANDMARKS:
        raise UserError(
            f"to_coco: keypoints of shape {keypoint.shape} are not BlazePose's 33 landmarks "
            "(..., 33, C); give extract_pose's keypoint"
        )
    return keypoint[..., index, :], None if score is None else np.asarray(score)[..., index]


@contextlib.contextmanager
def _landmarker() -> Iterator[tuple]:
    """BlazePose in VIDEO mode from the packaged model, and the mediapipe module."""
    mp = require("mediapipe")
    vision = require("mediapipe.tasks.python.vision")
    base_options = require("mediapipe.tasks.python").BaseOptions
    if not MODEL.is_file():
        raise UserError(
            f"{MODEL}: the pose model is missing from the package; reinstall csre-jax, or "
            "rebuild it with tools/build_pose_model.py"
        )
    options = vision.PoseLandmarkerOptions(
        base_options=base_options(model_asset_path=str(MODEL)),
        running_mode=vision.RunningMode.VIDEO,
        num_poses=1,
    )
    with native_logs_muted():
        landmarker = vision.PoseLandmarker.create_from_options(options)
    try:
        yield landmarker, mp
    finally:
        with native_logs_muted():
            landmarker.close()
