"""Your own skeletons end to end: every backbone trains with CSRE from its config on a 2-D
COCO-17 pickle with keypoint scores or on a 3-D pickle in a user JSON layout, through
train.py's loop; the saved run then predicts through the API and the command.

The prediction of the test split must equal the run's own evaluation of its best model, so
the predictor's preprocessing and weights are the training run's, not merely plausible.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyskl_files
import pytest

from benchmarks.layout_copies import layout_copies
from csre_jax import models
from csre_jax.data import pyskl
from csre_jax.evaluate.scores import load_scores
from csre_jax.predictor import Predictor
from csre_jax.training import loop
from csre_jax.workdir import RunFolder

REPO = Path(__file__).resolve().parents[1]
DATA = ("coco_2d", "torso_3d")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (the pickle, the layout): 24 training and 12 test samples each."""
    folder = tmp_path_factory.mktemp("custom_data")
    torso, torso_layout = pyskl_files.torso_files(folder, count=36)
    return {
        "coco_2d": (pyskl_files.coco_file(folder, count=36), "coco"),
        "torso_3d": (torso, str(torso_layout)),
    }


def _config(model: str, path: Path, layout: str):
    config = importlib.import_module(f"configs.{model}").get_config("custom,tiny")
    config.data.path, config.data.layout = str(path), layout
    config.num_devices = 1
    return config


def _test_split(path: Path) -> tuple[list, list, list, list[int]]:
    content = pyskl.read(path)
    by_name = {a["frame_dir"]: a for a in content["annotations"]}
    test = [by_name[name] for name in content["split"]["test"]]
    return (
        [a["keypoint"] for a in test],
        [a.get("keypoint_score") for a in test],
        [a.get("img_shape") for a in test],
        [a["label"] for a in test],
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# Each backbone once, three on each kind of data (a training is the suite's costliest item);
# every backbone also builds and runs on a user JSON layout in tests/test_layout_backbones.py.
CASES = {
    "ctrgcn": "coco_2d",
    "hyperformer": "coco_2d",
    "infogcn": "coco_2d",
    "agcn": "torso_3d",
    "blockgcn": "torso_3d",
    "hcn": "torso_3d",
}


# Layout copies (transposes and copies that only reorder data) in each case's compiled train
# step, CSRE included, as measured on jax 0.10.2; `python -m benchmarks.layout_copies`
# explains them. A change of a backbone's activation order that adds copies fails here (5%
# headroom for other XLA versions); one that removes some lowers these numbers.
LAYOUT_COPIES = {
    "ctrgcn": 115,
    "hyperformer": 264,
    "infogcn": 10,
    "agcn": 57,
    "blockgcn": 158,
    "hcn": 19,
}


@pytest.fixture
def compiled_train_steps(monkeypatch) -> list:
    """The train steps that train_and_evaluate compiles, as it compiles them."""
    compiled, compile_train_step = [], loop._compile_train_step

    def recorded(*args):
        compiled.append(compile_train_step(*args))
        return compiled[-1]

    monkeypatch.setattr(loop, "_compile_train_step", recorded)
    return compiled


def test_every_backbone_and_kind_of_data_is_covered():
    assert sorted(CASES) == sorted(models.MODEL_NAMES) and set(CASES.values()) == set(DATA)


@pytest.mark.parametrize(("model", "data"), CASES.items())
def test_trains_with_csre_then_predicts(model, data, files, tmp_path, compiled_train_steps):
    path, layout = files[data]
    run = RunFolder(tmp_path / "run")
    loop.train_and_evaluate(_config(model, path, layout), run.root)
    (train_step,) = compiled_train_steps
    copies = len(layout_copies(train_step.as_text()))
    assert copies <= 1.05 * LAYOUT_COPIES[model], f"{copies} layout copies in the train step"

    records = map(json.loads, run.metrics.read_text().splitlines())
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(r["loss"]) for r in epochs), epochs
    # CE, not the total: the contrastive terms join as the banks fill
    assert epochs[-1]["ce"] < epochs[0]["ce"], epochs
    for bank in ("spatial", "temporal"):
        assert epochs[-1][f"valid_{bank}"] > 0 and epochs[-1][f"loss_{bank}"] > 0, epochs[-1]

    predictor = Predictor.from_run(run.root)
    keypoints, scores, img_shapes, labels = _test_split(path)
    predictions = predictor.predict(keypoints, scores, img_shapes)
    saved = load_scores(run.test_scores)
    np.testing.assert_array_equal(saved.labels, labels)
    np.testing.assert_array_equal(saved.sample_names, pyskl.read(path)["split"]["test"])
    np.testing.assert_allclose(predictions.probabilities, _softmax(saved.logits), atol=1e-6)
    assert predictions.class_names == predictor.card.class_names
    assert len(predictions.top(2)) == len(labels)

    if (model, data) == ("ctrgcn", "coco_2d"):  # the command, once: a fresh process
        result = subprocess.run(
            [sys.executable, "predict.py", f"--workdir={run.root}", f"--input={path}", "--top_k=1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        content = pyskl.read(path)
        everything = predictor.predict(
            [a["keypoint"] for a in content["annotations"]],
            [a["keypoint_score"] for a in content["annotations"]],
            [a["img_shape"] for a in content["annotations"]],
        )
        for i, (annotation, (top,)) in enumerate(
            zip(content["annotations"], everything.top(1), strict=True)
        ):
            assert lines[2 * i].startswith(annotation["frame_dir"]), lines[2 * i]
            assert lines[2 * i + 1].split()[1:] == [*top[0].split(), f"{top[1]:.3f}"]
