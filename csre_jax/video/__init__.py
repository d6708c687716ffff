"""Skeletons from videos, offline: OpenCV decodes, MediaPipe's BlazePose finds one person's 33
landmarks per frame (docs/video.md). Both come with the video extra
(`pip install -r requirements-video.txt`), imported only when a video is read, so importing
this package needs neither."""

from csre_jax.video.frames import VideoFrames
from csre_jax.video.pose import COCO_FROM_BLAZEPOSE, NUM_LANDMARKS, extract_pose, to_coco

__all__ = ["COCO_FROM_BLAZEPOSE", "NUM_LANDMARKS", "VideoFrames", "extract_pose", "to_coco"]
