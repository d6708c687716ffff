"""The report's animation of the test samples the model gets most confidently wrong: their
skeletons side by side, each titled with its true and predicted class, so a reader sees what
the confused actions look like. The keypoints come from the test split of the first
evaluated run folder (its config.json, loaded with the dataset code that trained it);
score files alone hold none, and then the animation is skipped."""

import json
import math
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict
from PIL import Image

from csre_jax import render
from csre_jax.data.datasets import Dataset, load_dataset
from csre_jax.errors import UserError
from csre_jax.workdir import RunFolder

CONFUSED_GIF = "confused.gif"
SAMPLES = 4  # panels, in a square grid
PANEL = (240, 240)  # (h, w) of each sample's canvas
MAX_FRAMES = 100  # longer samples are shown at every k-th frame
GIF_FPS = 15.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def most_confident_errors(probabilities: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Test positions of the wrong predictions with the highest predicted probability."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    confidence = probabilities[wrong].max(axis=1)
    return wrong[np.argsort(-confidence, kind="stable")][:count].tolist()


def stored_keypoints(
    dataset: Dataset, data: ConfigDict, index: int
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Test sample `index` as drawable (M, T, V, C) keypoints, its scores (or None) and
    whether y points up (3-D), from the form each dataset stores."""
    x = np.asarray(dataset.test.x[index], np.float32)
    if data.name in ("ntu60", "ntu120"):  # (T, 150): person, joint, xyz
        return x.reshape(len(x), 2, 25, 3).transpose(1, 0, 2, 3), None, True
    if data.name == "ucla":  # one person's (F, 20, 3)
        return x[None], None, True
    if data.name == "custom":  # pack's (C', M, T, V), 2-D in [-1, 1] with y down
        coords = int(data.coords)
        score = x[-1] if coords == 2 and data.use_score else None
        return x[:coords].transpose(1, 2, 3, 0), score, coords == 3
    return x.transpose(3, 1, 2, 0), None, True  # synthetic: the feeder's (C, T, V, M)


def _trimmed(keypoint: np.ndarray, score: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints and their visible joints up to the last frame with one (NTU pads its
    samples with empty frames)."""
    visible = render.visible_joints(keypoint, score)
    shown = np.flatnonzero(visible.any(axis=(0, 2)))
    last = shown[-1] + 1 if len(shown) else 1
    return keypoint[:, :last], visible[:, :last]


def write_confused_gif(
    path: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    runs: list[RunFolder],
) -> dict:
    """Writes the GIF of the SAMPLES most confident errors; returns what the report records:
    the file, the run whose test split was drawn and the samples, or why it was skipped."""
    probabilities = _softmax(logits)
    errors = most_confident_errors(probabilities, labels, SAMPLES)
    if not errors:
        return {"skipped": "no test sample is predicted wrong"}
    run = next((r for r in runs if r.config.is_file()), None)
    if run is None:
        return {"skipped": "no evaluated run is a run folder (config.json) to load samples from"}
    config = ConfigDict(json.loads(run.config.read_text()))
    try:
        dataset = load_dataset(config.data)
    except (UserError, OSError) as e:
        return {"skipped": f"the test split of {run.root} cannot be loaded ({e})"}
    if not np.array_equal(dataset.test.labels, labels):
        return {"skipped": f"{run.root}'s test split is not the one the scores are of"}
    samples, sequences = [], []
    for index in errors:
        predicted = int(probabilities[index].argmax())
        truth, guess = names[labels[index]], names[predicted]
        probability = float(probabilities[index, predicted])
        keypoint, score, y_up = stored_keypoints(dataset, config.data, index)
        caption = (f"true: {truth}", f"predicted: {guess} {probability:.2f}")
        sequences.append((*_trimmed(keypoint, score), y_up, caption))
        samples.append(
            {"index": index, "true": truth, "predicted": guess, "probability": probability}
        )
    step = max(1, math.ceil(max(k.shape[1] for k, *_ in sequences) / MAX_FRAMES))
    panels = []
    for keypoint, visible, y_up, caption in sequences:
        points = render.fit_to_canvas(keypoint, visible, PANEL, y_up=y_up, top=render.CAPTION_SPACE)
        panels.append(
            [
                render.draw_frame(
                    Image.new("RGB", PANEL[::-1]),
                    points[:, t],
                    visible[:, t],
                    dataset.layout,
                    caption,
                )
                for t in range(0, keypoint.shape[1], step)
            ]
        )
    columns = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / columns)
    h, w = PANEL

    def grid(t: int) -> Image.Image:
        """Frame t of every panel; a shorter sample holds its last frame."""
        frame = Image.new("RGB", (columns * w, rows * h))
        for i, panel in enumerate(panels):
            frame.paste(panel[min(t, len(panel) - 1)], ((i % columns) * w, (i // columns) * h))
        return frame

    count = max(map(len, panels))
    render.write_frames(path, (grid(t) for t in range(count)), GIF_FPS)
    return {"file": path.name, "run": str(run.root), "frames": count, "samples": samples}
