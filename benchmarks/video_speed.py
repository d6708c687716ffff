"""How fast a long video becomes actions on CPU: decoding, pose extraction, windowed
prediction and rendering of one 10-minute video, each stage in frames per second.

  python -m benchmarks.video_speed                 # 10 minutes of 640 x 480 at 30 fps
  python -m benchmarks.video_speed --minutes=0.5   # a smoke run

Needs the video extra (pip install -r requirements-video.txt). The video is made here, so
nothing is downloaded: a portrait from matplotlib's sample data moving over a plain
background, one person always in view. Prediction is CTR-GCN at the `custom` config's width
on the `blazepose` layout, one person, random weights (the speed does not depend on them):
windows of 64 frames every 16, all in batches of one compiled step, as predict.py --window
runs them. Rendering draws the skeleton and the labels over the video's frames into an mp4.
"""

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from csre_jax import render
from csre_jax.data import convert
from csre_jax.layouts import load_layout
from csre_jax.model_card import ModelCard
from csre_jax.models.build import build_backbone
from csre_jax.predictor import Predictor
from csre_jax.video.frames import VideoFrames, require
from csre_jax.video.pose import extract_pose

SIZE = (480, 640)  # (h, w)
FPS = 30
WINDOW, STRIDE = 64, 16
CLASSES = ("left to right", "up and down")


def make_video(path: Path, frames: int) -> None:
    """A portrait sliding left and right, then bobbing, over a grey background (mp4v)."""
    cv2 = require("cv2")
    from matplotlib import cbook

    portrait = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    portrait = cv2.resize(portrait, (256, 300))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE[::-1])
    height, width = SIZE
    for t in range(frames):
        canvas = np.full((height, width, 3), 200, np.uint8)
        swing = 60 * np.sin(2 * np.pi * t / FPS)
        sideways = (t // (20 * FPS)) % 2 == 0  # 20 s of one motion, then of the other
        left = (width - 256) // 2 + (int(swing) if sideways else 0)
        top = (height - 300) // 2 + (0 if sideways else int(swing / 3))
        canvas[top : top + 300, left : left + 256] = portrait
        writer.write(canvas)
    writer.release()


def predictor_for(folder: Path, pose: dict) -> Predictor:
    """CTR-GCN for 2-D blazepose keypoints with scores, random weights."""
    config = importlib.import_module("configs.ctrgcn").get_config("custom")
    sample = {k: pose[k][:, :WINDOW] for k in ("keypoint", "keypoint_score")}
    samples = [{**sample, "frame_dir": f"s{k}", "label": k, "img_shape": SIZE} for k in (0, 1)]
    data_file = convert.write_annotations(
        folder / "one.pkl", samples, {"train": ["s0", "s1"], "test": ["s0", "s1"]}
    )
    config.data.path, config.data.layout, config.data.coords = str(data_file), "blazepose", 2
    config.num_devices, config.data.num_person = 1, 1  # BlazePose finds one person
    shape = (3, config.data.num_frames, 33, config.data.num_person)
    card = ModelCard(load_layout("blazepose"), {"x": shape}, CLASSES)
    backbone = build_backbone(config, card)
    variables = backbone.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    return Predictor(config, card, backbone, variables)


def rate(frames: int, seconds: float) -> str:
    return (
        f"{seconds:.1f} s, {frames / seconds:.1f} frames/s, {seconds / frames * 1e3:.2f} ms/frame"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    frames = round(args.minutes * 60 * FPS)
    print(
        f"jax {jax.__version__} on {os.cpu_count()} CPU cores; a {args.minutes:g}-minute "
        f"video, {SIZE[1]} x {SIZE[0]} at {FPS} fps ({frames} frames)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        video = folder / "long.mp4"
        start = time.perf_counter()
        make_video(video, frames)
        print(f"written:   {rate(frames, time.perf_counter() - start)}", flush=True)

        start = time.perf_counter()
        with VideoFrames(video) as decoded:
            count = sum(1 for _ in decoded)
        decode_s = time.perf_counter() - start
        print(f"decode:    {rate(count, decode_s)}", flush=True)

        start = time.perf_counter()
        pose = extract_pose(video)
        extract_s = time.perf_counter() - start
        found = float((pose["keypoint_score"][0].max(-1) > 0).mean())
        print(f"extract:   {rate(count, extract_s)} (decode and pose; person in {found:.1%})")
        print(f"  pose alone: {(extract_s - decode_s) / count * 1e3:.2f} ms/frame", flush=True)

        predictor = predictor_for(folder, pose)
        keypoint, score = pose["keypoint"], pose["keypoint_score"]
        for attempt in ("first", "again"):  # the first compiles the batch shapes it needs
            start = time.perf_counter()
            timeline = predictor.predict_stream(
                keypoint, score, SIZE, window=WINDOW, stride=STRIDE, smooth=3, fps=FPS
            )
            predict_s = time.perf_counter() - start
            windows = len(timeline.starts)
            print(
                f"predict ({attempt}): {rate(count, predict_s)} ({windows} windows of {WINDOW} "
                f"every {STRIDE}, {windows / predict_s:.1f} windows/s, batches of at most "
                f"{predictor.batch_size})",
                flush=True,
            )

        captions = render.captions(timeline.frame_probabilities, CLASSES)
        start = time.perf_counter()
        written = render.render(
            folder / "labelled.mp4",
            keypoint,
            load_layout("blazepose"),
            score=score,
            frame_captions=captions,
            video=video,
            fps=FPS,
        )
        print(f"render:    {rate(written, time.perf_counter() - start)}", flush=True)
        total = extract_s + predict_s
        print(
            f"video to timeline: {total:.0f} s for {args.minutes:g} minutes of video, "
            f"{count / total:.1f} frames/s ({count / total / FPS:.2f}x real time)"
        )


if __name__ == "__main__":
    main()
