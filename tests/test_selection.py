"""Model selection: which evaluation a run keeps, and its three labelled numbers."""

import pytest
from ml_collections import ConfigDict

from csre_jax import selection

# Four evaluations: validation peaks at epoch 2 (tied at 4), test at epoch 3.
EPOCHS = [
    {"kind": "epoch", "epoch": 1, "test_top1": 80.0, "test_top5": 95.0, "val_top1": 81.0},
    {"kind": "epoch", "epoch": 2, "test_top1": 84.0, "test_top5": 96.0, "val_top1": 88.0},
    {"kind": "epoch", "epoch": 3, "test_top1": 86.0, "test_top5": 97.0, "val_top1": 85.0},
    {"kind": "epoch", "epoch": 4, "test_top1": 83.0, "test_top5": 96.5, "val_top1": 88.0},
]


def test_the_three_numbers_are_what_each_rule_names():
    summary = selection.summarize(EPOCHS, "val")
    assert summary["val"]["epoch"] == 2 and summary["val"]["test_top1"] == 84.0  # earliest tie
    assert summary["last"]["epoch"] == 4 and summary["last"]["test_top1"] == 83.0
    assert summary["test"]["epoch"] == 3 and summary["test"]["test_top1"] == 86.0
    assert summary["selected"] == summary["val"] and summary["rule"] == "val"
    assert selection.summarize(EPOCHS, "test")["selected"] == summary["test"]


def test_training_keeps_the_model_summarize_names():
    """Replaying the evaluations through improves() keeps the epoch summarize selects."""
    for rule in selection.RULES:
        kept = None
        for record in EPOCHS:
            if selection.improves(rule, record, kept):
                kept = record
        assert kept["epoch"] == selection.summarize(EPOCHS, rule)["selected"]["epoch"], rule


def test_without_a_validation_split_there_is_no_validation_number():
    records = [{k: v for k, v in e.items() if k != "val_top1"} for e in EPOCHS]
    summary = selection.summarize(records + [{"kind": "epoch", "epoch": 5}], "last")
    assert summary["val"] is None and summary["selected"]["epoch"] == 4  # 5 was not evaluated
    lines = selection.describe(summary)
    assert len(lines) == 2 and lines[0].startswith("last evaluation: test top-1 83.00%")


@pytest.mark.parametrize(
    ("select_on", "has_val", "rule"),
    [("auto", True, "val"), ("auto", False, "last"), ("test", True, "test")],
)
def test_auto_selects_on_validation_when_there_is_a_split(select_on, has_val, rule):
    assert selection.rule_of(ConfigDict({"select_on": select_on}), has_val) == rule


def test_each_line_says_which_rule_produced_it():
    lines = selection.describe(selection.summarize(EPOCHS, "val"))
    assert lines == [
        "selected on validation: test top-1 84.00% (top-5 96.00%) at epoch 2, val top-1 "
        "88.00% <- select_on, in best/ and scores/",
        "last evaluation: test top-1 83.00% (top-5 96.50%) at epoch 4, val top-1 88.00%",
        "best test epoch (picked on the test set, as the papers do): test top-1 86.00% "
        "(top-5 97.00%) at epoch 3, val top-1 85.00%",
    ]
