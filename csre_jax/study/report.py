"""A study's report: study.json, study.md and figures, from its finished runs.

A row is what one seed of a variant produces: the variant's run (or, with several streams,
each stream's run and the 2- and 4-stream ensembles). Each run contributes its test top-1
under every selection rule (csre_jax.selection); per-sample and per-class analyses use the
scores of the model the run's own rule kept (scores/test_scores.npz), as do ensembles.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from csre_jax import selection
from csre_jax.evaluate.class_names import class_names
from csre_jax.evaluate.ensembles import evaluate_runs
from csre_jax.evaluate.reports import LEVELS, difficulty_levels, per_class_accuracy
from csre_jax.evaluate.runs import load_run
from csre_jax.fileio import atomic_write
from csre_jax.run_metrics import read_metrics
from csre_jax.study import figures, stats
from csre_jax.study.plan import Run
from csre_jax.study.variants import Variant

# Differences (points) for which the report says how many seeds a paired t test needs.
EFFECT_SIZES = (0.5, 1.0, 2.0)


@dataclasses.dataclass
class _Seed:
    """One seed of one row: its test top-1 by selection rule and the kept model's outcomes."""

    by_rule: dict[str, float]
    correct: np.ndarray
    class_accuracy: np.ndarray
    sample_ids: np.ndarray


def _run_numbers(run: Run) -> tuple[dict[str, float], str]:
    """{rule: test top-1} of a finished run, and the rule that kept its model: the
    selection record training wrote at its end."""
    summary = read_metrics(run.folder, "selection")[-1]
    by_rule = {rule: summary[rule]["test_top1"] for rule in selection.RULES if summary[rule]}
    return by_rule, summary["rule"]


def _seed_entry(by_rule: dict, logits: np.ndarray, labels: np.ndarray, ids) -> _Seed:
    accuracy, _ = per_class_accuracy(logits, labels)
    return _Seed(by_rule, logits.argmax(1) == labels, accuracy, np.asarray(ids))


def _collect(runs: list[Run], search: bool) -> tuple[dict[str, dict[int, _Seed]], dict]:
    """row name -> seed -> _Seed, and facts: the rule each run used, missing runs, classes."""
    rows: dict[str, dict[int, _Seed]] = {}
    rules, missing, dataset = set(), [], ""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.variant, run.seed), []).append(run)
    several = len({run.stream for run in runs}) > 1
    for (variant, seed), members in groups.items():
        done = [run for run in members if run.finished]
        missing += [str(run.folder) for run in members if not run.finished]
        if len(done) != len(members):
            continue  # a seed counts once every stream has finished (its ensembles need all)
        tests, vals = [], []
        for run in done:  # the streams of one seed share the config, so the rule too
            by_rule, seed_rule = _run_numbers(run)
            rules.add(seed_rule)
            test, val = load_run(str(run.folder))
            tests.append(test)
            vals.append(val)
            dataset = test.metadata.get("dataset", dataset)
            name = f"{variant} {run.stream}" if several else variant
            entry = _seed_entry(by_rule, test.logits, test.labels, test.sample_ids)
            rows.setdefault(name, {})[seed] = entry
        if several:
            evaluation = evaluate_runs(tests, val_runs=vals, search=search)
            for result in evaluation.ensembles:
                entry = _seed_entry(
                    {seed_rule: result.top1},
                    result.logits,
                    evaluation.labels,
                    evaluation.sample_ids,
                )
                rows.setdefault(f"{variant} {result.name}", {})[seed] = entry
    some_seed = next((seed for seeds in rows.values() for seed in seeds.values()), None)
    num_classes = 0 if some_seed is None else len(some_seed.class_accuracy)
    facts = {"rules": sorted(rules), "missing": missing, "dataset": dataset, "classes": num_classes}
    return rows, facts


def _row_summary(seeds: dict[int, _Seed]) -> dict:
    by_rule = {}
    for rule in selection.RULES:
        values = {seed: s.by_rule[rule] for seed, s in sorted(seeds.items()) if rule in s.by_rule}
        if values:
            by_rule[rule] = {"runs": values, **stats.spread(list(values.values()))}
    return by_rule


def _comparison(variant: dict[int, _Seed], baseline: dict[int, _Seed], names: list[str]) -> dict:
    """Variant against baseline over the seeds both have: paired differences by rule, the
    pooled per-sample McNemar test, and per-class differences with difficulty levels."""
    seeds = sorted(variant.keys() & baseline.keys())
    by_rule = {}
    for rule in selection.RULES:
        both = [s for s in seeds if rule in variant[s].by_rule and rule in baseline[s].by_rule]
        if both:
            result = stats.paired(
                [variant[s].by_rule[rule] for s in both],
                [baseline[s].by_rule[rule] for s in both],
            )
            by_rule[rule] = {"seeds": both, **result}
    for s in seeds:
        if not np.array_equal(variant[s].sample_ids, baseline[s].sample_ids):
            raise ValueError(f"seed {s}: the variant and the baseline scored other test samples")
    mcnemar = stats.mcnemar(
        np.concatenate([variant[s].correct for s in seeds]),
        np.concatenate([baseline[s].correct for s in seeds]),
    )
    ours = np.stack([variant[s].class_accuracy for s in seeds])
    theirs = np.stack([baseline[s].class_accuracy for s in seeds])
    classes = stats.per_class(ours, theirs)
    levels = difficulty_levels(np.nanmean(theirs, axis=0))
    mean = np.asarray(classes["mean"])
    level_means = {
        level: float(np.nanmean(mean[levels == level])) if (levels == level).any() else None
        for level in LEVELS
    }
    per_class = [
        {"class": names[i], "level": str(levels[i]), "mean": mean[i], "ci95": classes["ci95"][i]}
        for i in range(len(names))
    ]
    return {"by_rule": by_rule, "mcnemar": mcnemar, "per_class": per_class, "levels": level_means}


def _counterpart(row: str, variant: str, baseline: str) -> str:
    return baseline + row[len(variant) :]


def build(runs: list[Run], variants: list[Variant], search: bool = False) -> dict:
    """The whole report as JSON-ready data."""
    rows, facts = _collect(runs, search)
    baseline = variants[0].name
    names = class_names(facts["dataset"], facts["classes"])
    report = {
        "baseline": baseline,
        "variants": {v.name: v.overrides for v in variants},
        "seeds": sorted({run.seed for run in runs}),
        "selection_rules_of_the_runs": facts["rules"],
        "missing_runs": facts["missing"],
        "rows": {name: _row_summary(seeds) for name, seeds in rows.items()},
        "comparisons": {},
    }
    for variant in variants[1:]:
        for row in [r for r in rows if r == variant.name or r.startswith(f"{variant.name} ")]:
            other = _counterpart(row, variant.name, baseline)
            if other in rows:
                report["comparisons"][row] = {"against": other} | _comparison(
                    rows[row], rows[other], names
                )
    report["seeds_needed"] = _seeds_needed(report)
    return report


def _seeds_needed(report: dict) -> dict:
    """From the measured spread of paired differences (the run's own rule): seeds a paired t
    test needs to see a difference of each size at p < 0.05 with 80% power."""
    needed = {}
    for row, comparison in report["comparisons"].items():
        rule = next((r for r in selection.RULES if r in comparison["by_rule"]), None)
        if rule is None:
            continue
        std = comparison["by_rule"][rule]["std"]
        needed[row] = {
            "rule": rule,
            "std_of_differences": std,
            **{f"{size:g} points": stats.seeds_for(size, std) for size in EFFECT_SIZES},
        }
    return needed


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    lines = ["# Study", ""]
    if report["missing_runs"]:
        lines += [f"Not finished, left out: {', '.join(report['missing_runs'])}", ""]
    lines += [
        "Test top-1 (%) per row and selection rule: 'val' = the epoch chosen on the held-out "
        "validation split (the honest number), 'last' = the last evaluation, 'test' = the best "
        "test epoch (picked on the test set, as the papers do; optimistic).",
        "",
        "| row | rule | runs (seed: top-1) | mean | std | 95% interval | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_rule in report["rows"].items():
        for rule, row in by_rule.items():
            runs = ", ".join(f"{s}: {v:.2f}" for s, v in row["runs"].items())
            low, high = row["ci95"]
            lines.append(
                f"| {name} | {rule} | {runs} | {_fmt(row['mean'])} | {_fmt(row['std'])} | "
                f"{_fmt(low)} to {_fmt(high)} | {_fmt(row['min'])} | {_fmt(row['max'])} |"
            )
    for name, comparison in report["comparisons"].items():
        lines += ["", f"## {name} against {comparison['against']}", ""]
        lines += [
            "| rule | differences per seed (points) | mean | 95% interval | paired t p | "
            "Wilcoxon p (exact) |",
            "|---|---|---|---|---|---|",
        ]
        for rule, result in comparison["by_rule"].items():
            diffs = ", ".join(
                f"{s}: {d:+.2f}"
                for s, d in zip(result["seeds"], result["differences"], strict=True)
            )
            low, high = result["ci95"]
            lines.append(
                f"| {rule} | {diffs} | {result['mean']:+.2f} | {_fmt(low)} to {_fmt(high)} | "
                f"{_fmt(result['t_test_p'], 4)} | {_fmt(result['wilcoxon_p'], 4)} |"
            )
        n = len(next(iter(comparison["by_rule"].values()))["seeds"])
        mc = comparison["mcnemar"]
        lines += [
            "",
            f"With {n} seeds the exact Wilcoxon test cannot go below p = "
            f"{stats.smallest_wilcoxon_p(n):.4g}. Per sample (the kept models' predictions, "
            f"pooled over seeds), McNemar's exact test: {mc['gained']} samples gained, "
            f"{mc['lost']} lost, p = {mc['p']:.4g}.",
            "",
            "Per-class difference (points, mean over seeds, the kept models) by the baseline's "
            "difficulty level: "
            + ", ".join(f"{lvl} {_fmt(v, 2)}" for lvl, v in comparison["levels"].items()),
        ]
    if report["seeds_needed"]:
        lines += ["", "## Seeds needed", ""]
        lines += [
            "| row | rule | std of paired differences | "
            + " | ".join(f"{s:g} points" for s in EFFECT_SIZES)
            + " |"
        ]
        lines += ["|---|---|---|" + "---|" * len(EFFECT_SIZES)]
        for row, needed in report["seeds_needed"].items():
            cells = " | ".join(str(needed[f"{s:g} points"] or "-") for s in EFFECT_SIZES)
            lines.append(
                f"| {row} | {needed['rule']} | {_fmt(needed['std_of_differences'])} | {cells} |"
            )
        lines += [
            "",
            "Seeds for a paired t test at p < 0.05 with 80% power, from the measured spread.",
        ]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict) -> list[str]:
    """The verdict in a few lines: each comparison's mean difference and p-values by rule."""
    lines = []
    for name, comparison in report["comparisons"].items():
        for rule, result in comparison["by_rule"].items():
            low, high = result["ci95"]
            lines.append(
                f"{name} - {comparison['against']} ({selection.LABELS[rule]}): "
                f"{result['mean']:+.2f} points over {len(result['seeds'])} seeds "
                f"(95% interval {_fmt(low)} to {_fmt(high)}; paired t p = "
                f"{_fmt(result['t_test_p'], 4)}, Wilcoxon p = {_fmt(result['wilcoxon_p'], 4)})"
            )
    return lines


def write_study_report(
    root: Path, runs: list[Run], variants: list[Variant], search: bool = False
) -> str:
    """study.json, study.md and the figures in the study folder; returns the verdict lines
    and where the report is."""
    report = build(runs, variants, search)
    root = Path(root)
    with atomic_write(root / "study.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_write(root / "study.md") as tmp:
        tmp.write_text(markdown(report))
    figures.write_figures(root, report)
    return "\n".join([*summary_lines(report), f"report: {root / 'study.md'}"])
