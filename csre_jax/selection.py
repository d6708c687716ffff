"""Which evaluation's model a run keeps, and the three numbers a run reports, each labelled.

Picking the epoch with the best test accuracy, as the papers do, reports the maximum of
noisy measurements on the very data it claims to measure: it overstates a model by about the
epoch-to-epoch spread, the size of the gains these methods report. A run with a held-out
validation split picks on validation instead; without one it keeps the last evaluation.
Every run still records all three: the test accuracy of the epoch chosen on validation (the
honest number), the last epoch's, and the best test epoch's (the papers' practice, named
as such).
"""

from ml_collections import ConfigDict

RULES = ("val", "last", "test")
# What each rule's number is, in the words train.py and the study print.
LABELS = {
    "val": "selected on validation",
    "last": "last evaluation",
    "test": "best test epoch (picked on the test set, as the papers do)",
}


def rule_of(config: ConfigDict, has_validation: bool) -> str:
    """config.select_on resolved: 'auto' is 'val' with a held-out validation split, else
    'last' (never the test set unless asked). config_checks refuses 'val' without a split."""
    rule = config.get("select_on", "auto")
    if rule == "auto":
        return "val" if has_validation else "last"
    return rule


def improves(rule: str, scores: dict[str, float], kept: dict | None) -> bool:
    """Whether the model just evaluated replaces the kept one: always for 'last', else a
    strictly higher top-1 on the rule's split (the earlier epoch wins a tie)."""
    if kept is None or rule == "last":
        return True
    key = "val_top1" if rule == "val" else "test_top1"
    return scores[key] > kept[key]


def summarize(evaluations: list[dict], rule: str) -> dict:
    """The three numbers from a run's epoch records with test scores (metrics.jsonl), each
    as {epoch, test_top1, test_top5[, val_top1, val_top5]}; 'val' is None without a
    validation split. 'selected' is what the run's rule kept in best/."""
    evaluated = [e for e in evaluations if "test_top1" in e]
    if not evaluated:
        return {}

    def entry(record: dict) -> dict:
        keys = ("test_top1", "test_top5", "val_top1", "val_top5")
        return {"epoch": int(record["epoch"])} | {k: record[k] for k in keys if k in record}

    def first_best(key: str) -> dict:  # the earliest epoch among equals, as training keeps
        return entry(max(evaluated, key=lambda e: (e[key], -e["epoch"])))

    numbers = {
        "val": first_best("val_top1") if all("val_top1" in e for e in evaluated) else None,
        "last": entry(evaluated[-1]),
        "test": first_best("test_top1"),
    }
    return {"rule": rule, "selected": numbers[rule], **numbers}


def describe(summary: dict) -> list[str]:
    """One labelled line per number, the run's own rule first."""
    rule = summary["rule"]
    lines = []
    for name in (rule, *(r for r in RULES if r != rule)):
        number = summary[name]
        if number is None:
            continue
        text = f"test top-1 {number['test_top1']:.2f}% (top-5 {number['test_top5']:.2f}%)"
        val = f", val top-1 {number['val_top1']:.2f}%" if "val_top1" in number else ""
        kept = " <- select_on, in best/ and scores/" if name == rule else ""
        lines.append(f"{LABELS[name]}: {text} at epoch {number['epoch']}{val}{kept}")
    return lines
