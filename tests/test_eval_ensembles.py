"""Stream ensembles of tiny score files give the accuracies computed by hand below."""

import jax.numpy as jnp
import numpy as np
import pytest

from csre_jax import sharding
from csre_jax.data.pipeline import Split
from csre_jax.evaluate.ensembles import evaluate_runs, published_weights
from csre_jax.evaluate.runs import load_runs
from csre_jax.evaluate.scores import save_scores
from csre_jax.evaluate.scoring import score_split

LABELS = [0, 1, 2, 0]
# Per stream, the logits of the four samples (3 classes). By hand, with fused = sum w * logits:
#   J+B at 1:1                 -> [2,0,0] [0,1,.5] [1,0,0] [2,3,0]: samples 0, 1 right = 50%
#   CTR-GCN .6/.6/.4/.4        -> [1.2,1.6,0] [0,1,.3] [.6,0,1.6] [2.8,1.8,0]: 1, 2, 3 = 75%
#   Hyperformer NTU .4/.6/.2/.2 -> [1,.8,0] [0,.6,.3] [.4,0,.8] [2,1.2,0]: all four = 100%
STREAM_LOGITS = {
    "joint": [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 3, 0]],
    "bone": [[1, 0, 0], [0, 0, 0.5], [0, 0, 0], [2, 0, 0]],
    "joint_motion": [[0, 2, 0], [0, 1, 0], [0, 0, 2], [4, 0, 0]],
    "bone_motion": [[0, 2, 0], [0, 0, 0], [0, 0, 2], [0, 0, 0]],
}


def _run_folder(root, stream, model="ctrgcn", logits=None, labels=LABELS, **kwargs):
    """A run folder as train.py leaves it: scores/test_scores.npz."""
    metadata = {"dataset": "ntu60", "stream": stream, "model": model, "split": "test"}
    logits = np.asarray(STREAM_LOGITS[stream] if logits is None else logits, np.float32)
    save_scores(root / stream / "scores" / "test_scores.npz", logits, labels, metadata, **kwargs)
    return str(root / stream)


def _by_name(evaluation):
    return {result.name: result for result in [*evaluation.runs, *evaluation.ensembles]}


def test_two_and_four_stream_accuracies_with_the_published_ctrgcn_weights(tmp_path):
    # given in a shuffled order: the ensembles follow the streams' metadata, not file order
    specs = [_run_folder(tmp_path, s) for s in ("bone_motion", "joint", "joint_motion", "bone")]
    tests, _ = load_runs(specs)
    results = _by_name(evaluate_runs(tests))
    assert results["joint"].top1 == 50.0  # samples 0 and 1
    two, four = results["2-stream (J+B)"], results["4-stream (J+B+JM+BM)"]
    assert (two.top1, two.top5) == (50.0, 100.0)
    assert two.weights.values == (1.0, 1.0)
    assert two.members == ("joint", "bone")
    assert four.top1 == 75.0
    assert four.weights.values == (0.6, 0.6, 0.4, 0.4)
    assert four.weights.source == "published default (CTR-GCN ensemble.py)"


def test_hyperformer_runs_use_hyperformer_s_published_weights(tmp_path):
    specs = [_run_folder(tmp_path, s, model="hyperformer") for s in STREAM_LOGITS]
    results = _by_name(evaluate_runs(load_runs(specs)[0]))
    four = results["4-stream (J+B+JM+BM)"]
    assert four.weights.values == (0.4, 0.6, 0.2, 0.2)
    assert "Hyperformer" in four.weights.source
    assert four.top1 == 100.0
    ucla = published_weights(list(STREAM_LOGITS), "hyperformer", "ucla")
    assert ucla.values == (0.4, 0.4, 0.3, 0.2)


def test_command_line_weights_apply_in_file_order(tmp_path):
    specs = [_run_folder(tmp_path, s) for s in ("bone_motion", "joint_motion", "bone", "joint")]
    # 0.4 for BM and JM, 0.6 for B and J: the CTR-GCN weights again, so 75%
    results = _by_name(evaluate_runs(load_runs(specs)[0], weights=[0.4, 0.4, 0.6, 0.6]))
    four = results["4-stream (J+B+JM+BM)"]
    assert four.weights.source == "command line"
    assert four.weights.values == (0.6, 0.6, 0.4, 0.4)
    assert four.top1 == 75.0
    assert results["2-stream (J+B)"].weights.source.startswith("published default")


def test_runs_without_a_known_stream_need_weights(tmp_path):
    a = _run_folder(tmp_path / "a", "joint")
    b = _run_folder(tmp_path / "b", "bone")
    tests, _ = load_runs([a, b], streams=["joint", "joint"])
    with pytest.raises(ValueError, match=r"b/bone/.* and .*a/joint/.* both hold the joint stream"):
        evaluate_runs(tests)
    (twice,) = evaluate_runs(tests, weights=[1, 1]).ensembles
    assert twice.name == "ensemble of 2 runs"
    tests[1].metadata["stream"] = None  # e.g. a CTR-GCN pickle without --streams
    with pytest.raises(ValueError, match=r"stream None is not one of .*--streams"):
        evaluate_runs(tests)
    (fused,) = evaluate_runs(tests, weights=[1, 1]).ensembles
    assert fused.name == "ensemble of 2 runs"
    assert fused.top1 == 50.0  # J + B at 1:1, as above


def test_files_of_different_test_sets_fail_naming_both(tmp_path):
    joint = _run_folder(tmp_path, "joint")
    shorter = _run_folder(tmp_path, "bone", logits=np.zeros((3, 3)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"bone/scores/test_scores.npz and .*joint/scores/test_s"):
        evaluate_runs(load_runs([joint, shorter])[0])
    reordered = _run_folder(tmp_path, "bone", sample_ids=[1, 0, 2, 3])
    with pytest.raises(ValueError, match="sample order differ .*row 0 holds sample 1"):
        evaluate_runs(load_runs([joint, reordered])[0])
    with pytest.raises(ValueError, match="2 runs but 3 weights"):
        evaluate_runs(load_runs([joint, reordered])[0], weights=[1, 1, 1])


@pytest.mark.parametrize(
    ("weights", "problem"),
    [([1, float("nan")], "not finite"), ([0, 0], "every weight is 0"), ([1, -1], "negative")],
)
def test_weights_that_make_no_ensemble_are_refused(tmp_path, weights, problem):
    """A NaN, negative or all-zero weight would print a chance-level 'ensemble' as the user's."""
    specs = [_run_folder(tmp_path, stream) for stream in ("joint", "bone")]
    with pytest.raises(ValueError, match=rf"^--weights=.*: (a weight is )?{problem}; give fin"):
        evaluate_runs(load_runs(specs)[0], weights=weights)


def test_a_score_file_with_a_nan_logit_is_refused_naming_the_file_and_the_row(tmp_path):
    """argmax reads a NaN row as class 0: no accuracy may be printed from it."""
    logits = np.asarray(STREAM_LOGITS["joint"], np.float32)
    logits[2, 1] = np.nan
    spec = _run_folder(tmp_path, "joint", logits=logits)
    with pytest.raises(ValueError, match=r"joint/scores/test_scores.npz: the logits of 1 of 4 s"):
        load_runs([spec])
    with pytest.raises(ValueError, match=r"\(rows 2\) are not finite; rescore the run"):
        load_runs([spec])


def test_a_model_whose_outputs_are_not_finite_prints_no_accuracy():
    """Evaluation in training and eval.py --workdir score through score_split."""
    split = Split(np.zeros((3, 2), np.float32), np.zeros(3, np.int32), num_classes=2)

    def nan_step(variables, batch):
        logits = jnp.where(jnp.arange(2) == 1, jnp.nan, 0.0) * jnp.ones((len(batch["x"]), 1))
        return logits, jnp.zeros((len(batch["x"]), 4))

    with pytest.raises(ValueError, match=r"the model's outputs: the logits of 3 of 3 samples"):
        score_split(nan_step, {}, split, batch_size=4, mesh=sharding.make_mesh(1))
