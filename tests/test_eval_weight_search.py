"""Ensemble weights are searched on held-out validation scores only, never on test labels."""

import dataclasses

import numpy as np
import pytest

from csre_jax.evaluate import ensembles
from csre_jax.evaluate.ensembles import evaluate_runs, search_weights
from csre_jax.evaluate.scores import ScoreFile

STREAMS = ("joint", "bone", "joint_motion", "bone_motion")


def test_grid_search_finds_the_hand_computed_weights():
    # Sample 0 is right iff w_J > 2.25 w_B, sample 1 iff w_J > w_B. Of the grid points with
    # both right, (1.2, 0.5) is nearest the preferred (1, 1): squared distance 0.29, against
    # 0.36 for (1.0, 0.4).
    joint = np.array([[1.0, 0.0], [0.0, 1.0]])
    bone = np.array([[0.0, 2.25], [1.0, 0.0]])
    weights, accuracy = search_weights([joint, bone], np.array([0, 1]), prefer=(1.0, 1.0))
    assert weights == (1.2, 0.5)
    assert accuracy == 1.0


def _scores(rng, labels, split, stream, num_classes=5, sample_ids=None):
    logits = rng.normal(size=(len(labels), num_classes)) + 1.5 * np.eye(num_classes)[labels]
    return ScoreFile(
        logits=logits.astype(np.float32),
        labels=labels,
        sample_ids=np.arange(len(labels)) if sample_ids is None else sample_ids,
        path=f"{stream}/scores/{split}_scores.npz",
        metadata={"dataset": "synthetic", "stream": stream, "model": "ctrgcn", "split": split},
    )


def _runs(seed=0):
    """Four streams' test and validation scores (validation: 40 held-out training samples)."""
    rng = np.random.default_rng(seed)
    test_labels, val_labels = rng.integers(0, 5, 60), rng.integers(0, 5, 40)
    val_ids = np.sort(rng.choice(400, 40, replace=False))
    tests = [_scores(rng, test_labels, "test", s) for s in STREAMS]
    vals = [_scores(rng, val_labels, "val", s, sample_ids=val_ids) for s in STREAMS]
    return tests, vals


class LabelsTouched(Exception):
    pass


class GuardedRun(ScoreFile):
    """A test score file whose labels raise on any access."""

    def __getattribute__(self, name):
        if name == "labels":
            raise LabelsTouched
        return super().__getattribute__(name)


def _guarded(run: ScoreFile) -> GuardedRun:
    return GuardedRun(**{f.name: getattr(run, f.name) for f in dataclasses.fields(run)})


def test_weight_search_reads_no_test_labels(monkeypatch):
    """Every search runs to its end on validation arrays before any test label is touched."""
    tests, vals = _runs()
    searched = []

    def spy(logits, labels, prefer, **kwargs):
        assert labels is vals[0].labels
        for got in logits:
            assert any(got is val.logits for val in vals)
        result = search_weights(logits, labels, prefer, **kwargs)
        searched.append(len(logits))
        return result

    monkeypatch.setattr(ensembles, "search_weights", spy)
    with pytest.raises(LabelsTouched):
        evaluate_runs([_guarded(t) for t in tests], val_runs=vals, search=True)
    assert searched == [2, 4], "the 2- and 4-stream weights were fixed before test labels"


def test_permuted_test_labels_give_the_same_weights():
    tests, vals = _runs()
    evaluation = evaluate_runs(tests, val_runs=vals, search=True)
    permuted = [
        dataclasses.replace(t, labels=np.random.default_rng(1).permutation(t.labels)) for t in tests
    ]
    shuffled = evaluate_runs(permuted, val_runs=vals, search=True)
    assert [e.weights for e in shuffled.ensembles] == [e.weights for e in evaluation.ensembles]
    assert shuffled.ensembles[-1].top1 != evaluation.ensembles[-1].top1
    two, four = evaluation.ensembles
    assert two.weights.source.startswith("searched on the held-out validation split (40 ")
    assert len(four.weights.values) == 4


def test_searched_weights_are_the_validation_optimum_applied_once_to_test():
    tests, vals = _runs()
    four = evaluate_runs(tests, val_runs=vals, search=True).ensembles[-1]
    expected, _ = search_weights([v.logits for v in vals], vals[0].labels, (0.6, 0.6, 0.4, 0.4))
    assert four.weights.values == expected
    fused = sum(w * t.logits.astype(np.float64) for w, t in zip(expected, tests, strict=True))
    assert four.top1 == 100 * np.mean(fused.argmax(1) == tests[0].labels)


def test_search_refuses_test_scores_and_mismatched_validation_files():
    tests, vals = _runs()
    with pytest.raises(ValueError, match="joint/scores/test_scores.npz: not a validation score"):
        evaluate_runs(tests, val_runs=tests, search=True)
    vals[1] = dataclasses.replace(vals[1], sample_ids=vals[1].sample_ids + 1)
    with pytest.raises(ValueError, match="bone/scores/val_scores.npz and joint/.*validation split"):
        evaluate_runs(tests, val_runs=vals, search=True)
    with pytest.raises(ValueError, match="not both"):
        evaluate_runs(tests, val_runs=vals, search=True, weights=[1, 1, 1, 1])


def test_runs_without_validation_scores_say_how_to_get_them():
    tests, _ = _runs()
    with pytest.raises(ValueError, match=r"no validation scores.*--config.data.val_fraction=0.05"):
        evaluate_runs(tests, val_runs=[None] * 4, search=True)


def _weights_by_stream(evaluation) -> list[dict[str, float]]:
    return [dict(zip(e.members, e.weights.values, strict=True)) for e in evaluation.ensembles]


def test_searched_weights_follow_the_streams_not_the_file_order():
    """Weights are searched and applied in stream order whatever order the runs come in: a
    search in file order applied in stream order gives one stream's weight to another."""
    tests, vals = _runs()
    standard = evaluate_runs(tests, val_runs=vals, search=True)
    reversed_order = evaluate_runs(tests[::-1], val_runs=vals[::-1], search=True)
    pairs = zip(_weights_by_stream(reversed_order), _weights_by_stream(standard), strict=True)
    for got, want in pairs:
        moved = [s for s in want if got[s] != want[s]]
        assert not moved, f"weight of {moved} moved with the file order: {got} != {want}"
    for got, want in zip(reversed_order.ensembles, standard.ensembles, strict=True):
        assert got.top1 == want.top1, f"{want.name}: top-1 {got.top1} != {want.top1}"
