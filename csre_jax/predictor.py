"""What a trained run says about new sequences: class probabilities with class names.

    predictor = Predictor.from_run("runs/mine")
    predictions = predictor.predict(keypoints)   # (M, T, V, C), a batch of them, or a list
    predictions.top(5)                           # [[(name, probability), ...], ...]
    predictor.logits({"x": xs})                  # model inputs, as predictor.inputs makes them
    predictor.predict_stream(long_keypoints, window=32, stride=8).lines()  # docs/streams.md

Keypoints are pyskl's (persons, frames, joints, coords) in the units the run was trained
on: pixels for 2-D custom data (with `scores` (M, T, V) when the run uses them and the
image's (h, w)), metres for 3-D. Each sequence goes through the run's test-time transform,
built from its saved config alone; then the backbone alone runs, in eval mode, on padded
batches of a fixed size, so any number of sequences shares one compiled step.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from ml_collections import ConfigDict

from csre_jax import compile_cache, sharding, stream
from csre_jax.data import datasets, ntu_prepare, pyskl_transform
from csre_jax.data.ntu_raw import read_skeleton
from csre_jax.errors import UserError
from csre_jax.evaluate.scoring import compile_eval_step
from csre_jax.model_card import ModelCard
from csre_jax.models.build import backbone_shapes, build_backbone
from csre_jax.run_variables import restore_variables
from csre_jax.workdir import RunFolder

NTU_PERSONS = 2


@dataclasses.dataclass(frozen=True)
class Predictions:
    """probabilities (B, K): softmax of the logits, one row per sequence, in input order."""

    probabilities: np.ndarray
    class_names: tuple[str, ...]

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable classes of every sequence, most probable first."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [
            [(self.class_names[c], float(row[c])) for c in ranks]
            for row, ranks in zip(self.probabilities, order, strict=True)
        ]


def _stored_sample(data: ConfigDict, card: ModelCard, keypoint: np.ndarray) -> np.ndarray:
    """(M, T, V, C) keypoints -> one sample as data.name's splits store it, so the run's own
    test transform applies unchanged."""
    if data.name in ("ntu60", "ntu120"):
        persons = np.zeros((NTU_PERSONS, *keypoint.shape[1:]), np.float32)
        persons[: len(keypoint)] = keypoint[:NTU_PERSONS]
        row = persons.transpose(1, 0, 2, 3).reshape(keypoint.shape[1], -1)
        return ntu_prepare.transform(row)  # centred as the preparation does (idempotent)
    if data.name == "ucla":
        return keypoint[0]  # the feeder takes one person's (F, 20, 3) clip
    window = card.num_frames  # synthetic samples are stored at the window
    if keypoint.shape[1] != window:
        raise UserError(f"this run takes exactly {window} frames, got {keypoint.shape[1]}")
    sample = np.zeros((card.num_person, *keypoint.shape[1:]), np.float32)
    sample[: len(keypoint)] = keypoint[: card.num_person]
    return sample.transpose(3, 1, 2, 0)


def keypoints_from_skeleton_file(path: str | Path) -> np.ndarray:
    """An NTU RGB+D `.skeleton` file -> (persons, T, 25, 3), denoised and centred as the NTU
    preparation does."""
    joints, _ = ntu_prepare.denoise(read_skeleton(path))
    joints = ntu_prepare.transform(joints)
    return joints.reshape(len(joints), -1, 25, 3).transpose(1, 0, 2, 3)


class Predictor:
    """A trained backbone with its run's test-time preprocessing."""

    def __init__(
        self,
        config: ConfigDict,
        card: ModelCard,
        backbone: nn.Module,
        variables: dict,
        batch_size: int | None = None,
    ):
        """batch_size (default: the run's evaluation batch) is the most sequences one call of
        the step takes; fewer run in the smallest power-of-two batch that holds them, so one
        sequence costs one sequence's compute, not a padded evaluation batch's."""
        self.config, self.card = config, card
        self.batch_size = batch_size or config.data.eval_batch_size
        self._mesh = sharding.mesh_for_config(config)
        self._eval_step = compile_eval_step(
            backbone, self._mesh, config.get("compute_dtype", "float32")
        )
        # On the mesh once, so each batch moves only its inputs; the variables stay arguments
        # of the step (not constants), which keeps it evaluation's program.
        self._variables = sharding.put(variables, sharding.replicated(self._mesh))
        data = config.data
        if data.name == "custom":  # the card's layout: the JSON file the run named may be gone
            data = ConfigDict(data.to_dict(), type_safe=False)
            data.layout = card.layout
            self._transform: Callable = pyskl_transform.inference_transform(data)
        else:
            self._transform = self._builtin_transform(datasets.sample_transform(data, train=False))

    @classmethod
    def from_run(
        cls, workdir: str | Path, *, checkpoint: str = "best", batch_size: int | None = None
    ):
        """The run's best (or 'latest') backbone, from its config.json and model card."""
        compile_cache.enable()
        run = RunFolder(workdir)
        if not run.config.is_file():
            raise FileNotFoundError(f"{run.config}: not found; is {run.root} a train.py workdir?")
        config = ConfigDict(json.loads(run.config.read_text()))
        card = ModelCard.load(run.model_card)
        backbone = build_backbone(config, card)
        variables, _ = restore_variables(
            run.checkpoint_folder(checkpoint), backbone_shapes(backbone, card)
        )
        return cls(config, card, backbone, variables, batch_size)

    def _builtin_transform(self, test) -> Callable:
        data, card = self.config.data, self.card

        def transform(keypoint, score, img_shape):
            stored = _stored_sample(data, card, keypoint)
            return stored if test is None else test(stored, None)

        return transform

    @property
    def coords(self) -> int:
        """Coordinates per joint the run takes: 2 (pixels) or 3."""
        data = self.config.data
        return data.coords if data.name == "custom" else 3

    @property
    def uses_score(self) -> bool:
        """Whether the model takes a keypoint score per joint (2-D runs with data.use_score)."""
        data = self.config.data
        return data.name == "custom" and data.coords == 2 and bool(data.use_score)

    def check(self, keypoint, score=None) -> tuple[np.ndarray, np.ndarray | None]:
        """One sequence's keypoints (M, T, V, C) and scores (M, T, V), the person axis added
        to one person's (T, V, C), or a UserError saying what this run takes instead."""
        try:
            keypoint = np.asarray(keypoint, np.float32)
        except (TypeError, ValueError) as e:
            raise UserError(f"keypoints are not a numeric array ({e})") from e
        if keypoint.ndim == 3:
            keypoint = keypoint[None]  # one person's (T, V, C)
            if score is not None and np.ndim(score) == 2:
                score = np.asarray(score)[None]  # and its (T, V)
        layout, coords = self.card.layout, self.coords
        if keypoint.ndim != 4 or keypoint.shape[2:] != (layout.num_joints, coords):
            raise UserError(
                f"keypoints of shape {keypoint.shape}: this run takes (persons, frames, "
                f"{layout.num_joints}, {coords}) for its layout {layout.name!r} "
                f"({layout.num_joints} joints) with {coords} coordinates"
            )
        if not keypoint.shape[0] or not keypoint.shape[1]:
            raise UserError(f"keypoints of shape {keypoint.shape}: no person or no frame")
        if not np.isfinite(keypoint).all():
            raise UserError("keypoints hold NaN or infinite values; write 0 for missing joints")
        if not self.uses_score:
            return keypoint, score
        if score is None or np.shape(score) != keypoint.shape[:3]:
            raise UserError(
                f"the model takes keypoint scores (data.use_score): give keypoint_score of "
                f"shape {keypoint.shape[:3]}, got {None if score is None else np.shape(score)}"
            )
        if not np.isfinite(score).all():
            raise UserError(
                "keypoint scores hold NaN or infinite values; write 0 for missing joints"
            )
        return keypoint, score

    def inputs(self, keypoint, score=None, img_shape=None) -> dict[str, np.ndarray]:
        """One sequence's model inputs, checked against what the run was trained on."""
        out = self._transform(*self.check(keypoint, score), img_shape)
        return out if isinstance(out, dict) else {"x": out}

    def predict(
        self,
        keypoints: np.ndarray | Sequence[np.ndarray],
        scores: np.ndarray | Sequence[np.ndarray | None] | None = None,
        img_shapes: Sequence[tuple[int, int] | None] | tuple[int, int] | None = None,
    ) -> Predictions:
        """Probabilities for one sequence (M, T, V, C), a batch (B, M, T, V, C) or a list of
        sequences of any lengths; scores and img_shapes go with them (one or one each)."""
        single = isinstance(keypoints, np.ndarray) and keypoints.ndim != 5
        sequences = [keypoints] if single else list(keypoints)
        count = len(sequences)
        if not count:
            raise UserError("no sequences to predict")
        scores = [scores] * count if scores is None or single else list(scores)
        if img_shapes is None or (len(img_shapes) == 2 and np.isscalar(img_shapes[0])):
            img_shapes = [img_shapes] * count
        samples = [
            self.inputs(k, s, i) for k, s, i in zip(sequences, scores, img_shapes, strict=True)
        ]
        inputs = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
        probabilities = np.asarray(jax.nn.softmax(self.logits(inputs), axis=-1))
        return Predictions(probabilities, self.card.class_names)

    def predict_stream(
        self,
        keypoint: np.ndarray,
        score: np.ndarray | None = None,
        img_shape: tuple[int, int] | None = None,
        *,
        window: int,
        stride: int,
        smooth: int = 1,
        fps: float | None = None,
    ) -> stream.Timeline:
        """The actions along one long sequence (M, T, V, C): windows of `window` frames every
        `stride` frames, all predicted as one list (batched as `logits` batches), their
        probabilities averaged over `smooth` windows, then merged into segments
        (csre_jax.stream); fps gives the segments' times in seconds."""
        keypoint, score = self.check(keypoint, score)

        def probabilities(starts: np.ndarray) -> np.ndarray:
            parts = [slice(s, s + window) for s in starts]
            scores = None if score is None else [score[:, part] for part in parts]
            keypoints = [keypoint[:, part] for part in parts]
            return self.predict(keypoints, scores, img_shape).probabilities

        return stream.build_timeline(
            probabilities,
            keypoint.shape[1],
            window=window,
            stride=stride,
            smooth=smooth,
            fps=fps,
            class_names=self.card.class_names,
        )

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (B, K) of B sequences' model inputs (what `inputs` returns, stacked: each
        array (B, ...)): more than batch_size in batches of batch_size (the last one padded:
        one compiled shape for a long stream's windows), fewer in one of `padded_size`."""
        count = len(inputs["x"])
        size = self.batch_size if count > self.batch_size else self.padded_size(count)
        rows = []
        for start in range(0, count, size):
            chunk = {k: v[start : start + size] for k, v in inputs.items()}
            pad = size - len(chunk["x"])  # repeats the last row
            batch = {k: np.concatenate([v, v[-1:].repeat(pad, 0)]) for k, v in chunk.items()}
            logits, _ = self._eval_step(self._variables, sharding.global_batch(batch, self._mesh))
            rows.append(np.asarray(jax.device_get(logits)))
        return np.concatenate(rows)[:count]

    def padded_size(self, count: int) -> int:
        """The batch that `count` sequences (at most batch_size) run in: the smallest power of
        two times the device count that holds them (at most batch_size). A handful of compiled
        shapes (each compiled once, then cached) against padding every call to batch_size,
        which multiplied one sequence's time by up to the evaluation batch (256 on NTU)."""
        devices = self._mesh.size
        size = devices
        while size < count:
            size *= 2
        return min(size, max(self.batch_size, devices))
