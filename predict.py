"""Prints what a trained run recognises in new sequences: the top-k classes of each.

  python predict.py --workdir=runs/mine --input=clips.pkl          # pyskl annotation file
  python predict.py --workdir=runs/mine --input=clip.npy           # (M, T, V, C) or a batch
  python predict.py --workdir=runs/ntu60 --input=S001C001P001R001A001.skeleton

The backbone alone runs (csre_jax.predictor); a .pkl's samples use their own keypoint
scores and image shapes, and their labels, when present, are printed beside the prediction.
"""

from pathlib import Path

import numpy as np
from absl import app, flags

from csre_jax.cli import parse_flags, start
from csre_jax.data import pyskl
from csre_jax.errors import UserError
from csre_jax.predictor import Predictor, keypoints_from_skeleton_file

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run folder.")
_INPUT = flags.DEFINE_string("input", None, "A .pkl (pyskl), .npy or NTU .skeleton file.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes printed per sequence.", lower_bound=1)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which model.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    0,
    "Sequences per compiled batch (0: the run's data.eval_batch_size).",
    lower_bound=0,
)


def read_sequences(path: Path) -> tuple[list[str], list[np.ndarray], list, list, list]:
    """(names, keypoints, scores, img_shapes, labels) of every sequence in the file."""
    if not path.is_file():
        raise FileNotFoundError(f"--input={path}: no such file")
    if path.suffix == ".skeleton":
        return [path.stem], [keypoints_from_skeleton_file(path)], [None], [None], [None]
    if path.suffix == ".npy":
        array = np.load(path)
        if array.ndim not in (3, 4, 5):
            raise UserError(
                f"{path}: an array of shape {array.shape}; expected (T, V, C), (M, T, V, C) "
                "or a batch (B, M, T, V, C)"
            )
        batch = array[None] if array.ndim < 5 else array
        names = [f"{path.stem}[{i}]" for i in range(len(batch))] if array.ndim == 5 else [path.stem]
        return names, list(batch), [None] * len(batch), [None] * len(batch), [None] * len(batch)
    if path.suffix == ".pkl":
        annotations = pyskl.read(path)["annotations"]
        return (
            [str(a.get("frame_dir", i)) for i, a in enumerate(annotations)],
            [a["keypoint"] for a in annotations],
            [a.get("keypoint_score") for a in annotations],
            [a.get("img_shape") for a in annotations],
            [a.get("label") for a in annotations],
        )
    raise UserError(f"--input={path}: expected a .pkl, .npy or .skeleton file")


def main(argv):
    start(argv)
    predictor = Predictor.from_run(
        _WORKDIR.value, checkpoint=_CHECKPOINT.value, batch_size=_BATCH_SIZE.value or None
    )
    names, keypoints, scores, img_shapes, labels = read_sequences(Path(_INPUT.value))
    predictions = predictor.predict(keypoints, scores, img_shapes)
    class_names = predictor.card.class_names
    for name, label, top in zip(names, labels, predictions.top(_TOP_K.value), strict=True):
        truth = f" (label: {class_names[label]})" if label is not None else ""
        print(f"{name}{truth}")
        for rank, (class_name, probability) in enumerate(top, start=1):
            print(f"  {rank}. {class_name}  {probability:.3f}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "input"])
    app.run(main, flags_parser=parse_flags)
