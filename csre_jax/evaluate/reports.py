"""Which classes an evaluation gets right: per-class accuracy, the paper's difficulty levels,
the most confused pairs and, against a baseline (e.g. the same backbone without CSRE), which
classes gained or lost; written as report.json, report.md and PNG figures, with the training
curves of the runs that are run folders. Classes are named by the runs' model cards (a custom
dataset's data.class_names), else by the dataset's known names."""

import json
from pathlib import Path

import numpy as np

from csre_jax.errors import UserError
from csre_jax.evaluate import animations, figures
from csre_jax.evaluate.class_names import class_names, numbered
from csre_jax.evaluate.ensembles import SHORT_NAMES, Result, RunsEvaluation
from csre_jax.evaluate.scores import ScoreFile, check_same_samples
from csre_jax.fileio import atomic_write
from csre_jax.model_card import ModelCard
from csre_jax.run_metrics import read_metrics
from csre_jax.workdir import RunFolder

# The paper's difficulty levels by per-class accuracy: hard < 80% <= medium < 90% <= easy.
LEVELS = ("hard", "medium", "easy")
LEVEL_BOUNDS = (80.0, 90.0)


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy (percent; NaN for a class without test samples) and sample count."""
    num_classes = logits.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    right = np.bincount(labels[logits.argmax(1) == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * right / counts, counts


def difficulty_levels(accuracy: np.ndarray) -> np.ndarray:
    """'hard', 'medium' or 'easy' per class ('' for a class without samples)."""
    levels = np.array(LEVELS)[np.searchsorted(LEVEL_BOUNDS, np.nan_to_num(accuracy), "right")]
    return np.where(np.isnan(accuracy), "", levels)


def level_table(accuracy: np.ndarray, levels: np.ndarray) -> dict:
    """Per level: how many classes, and their mean accuracy (None for an empty level)."""
    table = {}
    for level in LEVELS:
        members = accuracy[levels == level]
        mean = float(members.mean()) if len(members) else None
        table[level] = {"classes": len(members), "mean_accuracy": mean}
    return table


def confusion_matrix(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    num_classes = logits.shape[1]
    pairs = labels * num_classes + logits.argmax(1)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def most_confused(confusion: np.ndarray, names: list[str], top: int) -> list[dict]:
    """The off-diagonal cells with most samples, with their share of the true class."""
    off = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    cells = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = []
    for true, predicted in zip(*np.unravel_index(cells, off.shape), strict=True):
        if off[true, predicted] == 0:
            break
        pairs.append(
            {
                "true": names[true],
                "predicted": names[predicted],
                "count": int(off[true, predicted]),
                "share_of_true_class": 100 * float(off[true, predicted] / confusion[true].sum()),
            }
        )
    return pairs


def compare(accuracy: np.ndarray, baseline: np.ndarray, names: list[str], top: int) -> dict:
    """This evaluation against a baseline of the same test set, class by class.

    Levels are the baseline's (as the paper groups classes), so both means cover the same
    classes; transitions count classes moving between levels."""
    delta = accuracy - baseline
    levels, base_levels = difficulty_levels(accuracy), difficulty_levels(baseline)
    by_level = {}
    for level in LEVELS:
        members = base_levels == level
        base_mean, mean = (
            float(a[members].mean()) if members.any() else None for a in (baseline, accuracy)
        )
        by_level[level] = {
            "classes": int(members.sum()),
            "baseline_mean_accuracy": base_mean,
            "mean_accuracy": mean,
            "delta": None if mean is None else mean - base_mean,
        }
    transitions = {
        a: {b: int(np.sum((base_levels == a) & (levels == b))) for b in LEVELS} for a in LEVELS
    }
    order = np.argsort(-np.nan_to_num(delta), kind="stable")
    rows = [
        {
            "class": names[i],
            "baseline": float(baseline[i]),
            "accuracy": float(accuracy[i]),
            "delta": float(delta[i]),
        }
        for i in order
        if not np.isnan(delta[i])
    ]
    return {
        "levels_by_baseline": by_level,
        "level_transitions": transitions,
        "baseline_levels": level_table(baseline, base_levels),
        "levels": level_table(accuracy, levels),
        "gained": [row for row in rows if row["delta"] > 0][:top],
        "lost": [row for row in reversed(rows) if row["delta"] < 0][:top],
        "mean_delta": float(np.nanmean(delta)),
    }


def _tsne_source(evaluation: RunsEvaluation) -> Result | None:
    return next((run for run in evaluation.runs if run.features is not None), None)


def _run_folder(result: Result) -> RunFolder | None:
    """The run folder whose scores/ holds this run's score file."""
    if not result.path:
        return None
    score_file = Path(result.path)
    run = RunFolder(score_file.parent.parent)
    return run if score_file.parent == run.test_scores.parent else None


def _run_folders(*evaluations: RunsEvaluation | None) -> list[RunFolder]:
    """The run folders of every evaluated run (a baseline's too), each once."""
    found = {}
    for evaluation in filter(None, evaluations):
        for run in filter(None, map(_run_folder, evaluation.runs)):
            found.setdefault(run.root, run)
    return list(found.values())


def _training_curves(*evaluations: RunsEvaluation | None) -> dict[str, list[dict]]:
    """Run folder -> its metrics.jsonl records, for every evaluated run folder that has one."""
    return {
        str(run.root): read_metrics(run.root)
        for run in _run_folders(*evaluations)
        if run.metrics.is_file()
    }


def _report_class_names(
    evaluation: RunsEvaluation, baseline: RunsEvaluation | None = None
) -> list[str]:
    """The names the run folders' model cards hold (a card of numbered classes names none),
    else the dataset's known names, else "class <i>". Every card must agree: one name list
    labels the ensembles and the comparison with the baseline."""
    num_classes = evaluation.main.logits.shape[1]
    first = None  # (card, its names)
    for run in _run_folders(evaluation, baseline):
        card = run.model_card
        if not card.is_file():
            continue
        names = list(ModelCard.load(card).class_names)
        if names == numbered(len(names)):
            continue
        if len(names) != num_classes:
            raise UserError(
                f"{card}: names {len(names)} classes but the scores have {num_classes}, so "
                f"they are not this run's; rescore it (python eval.py --workdir={run.root})"
            )
        if first is None:
            first = card, names
        elif names != first[1]:
            label = next(i for i, (a, b) in enumerate(zip(names, first[1], strict=True)) if a != b)
            raise UserError(
                f"{first[0]} and {card} name the classes differently (label {label}: "
                f"{first[1][label]!r} vs {names[label]!r}); evaluate together only runs "
                "trained with the same data.class_names file"
            )
    return first[1] if first else class_names(evaluation.dataset, num_classes)


def build_report(evaluation: RunsEvaluation, baseline: RunsEvaluation | None = None, top: int = 10):
    """The report as a JSON-ready dict, plus the arrays the figures need."""
    main = evaluation.main
    labels = evaluation.labels
    names = _report_class_names(evaluation, baseline)
    accuracy, counts = per_class_accuracy(main.logits, labels)
    levels = difficulty_levels(accuracy)
    confusion = confusion_matrix(main.logits, labels)
    report = {
        "dataset": evaluation.dataset,
        "num_samples": len(labels),
        "num_classes": len(names),
        **evaluation.summary(),
        "per_class": [
            {
                "label": i,
                "class": names[i],
                "samples": int(counts[i]),
                "accuracy": None if np.isnan(accuracy[i]) else float(accuracy[i]),
                "level": str(levels[i]),
            }
            for i in range(len(names))
        ],
        "levels": level_table(accuracy, levels),
        "most_confused": most_confused(confusion, names, top),
        "confusion": {"classes": names, "counts": confusion.tolist()},
    }
    arrays = {"names": names, "confusion": confusion, "accuracy": accuracy}
    if baseline is not None:
        base = baseline.main
        check_same_samples(
            [_scores_of(main, evaluation), _scores_of(base, baseline)], "test set as the baseline"
        )
        base_accuracy, _ = per_class_accuracy(base.logits, baseline.labels)
        report["baseline"] = baseline.summary()
        report["comparison"] = compare(accuracy, base_accuracy, names, top)
        arrays["delta"] = accuracy - base_accuracy
    return report, arrays


def _scores_of(result: Result, evaluation: RunsEvaluation) -> ScoreFile:
    """A run's or ensemble's test scores, to check they are the baseline's samples."""
    path = result.path or " + ".join(result.members)
    return ScoreFile(result.logits, evaluation.labels, evaluation.sample_ids, path)


def write_report(
    folder: Path,
    evaluation: RunsEvaluation,
    baseline: RunsEvaluation | None = None,
    top: int = 10,
    max_tsne_points: int = 2000,
) -> dict:
    """report.json, report.md, confusion.png, tsne.png (when the score files hold features),
    curves.png (when runs are run folders with metrics.jsonl), confused.gif (when a run is a
    run folder whose test split loads) and, against a baseline, per_class_delta.png; returns
    the report."""
    folder = Path(folder)
    report, arrays = build_report(evaluation, baseline, top)
    report["figures"] = {"confusion": "confusion.png"}
    figures.confusion_png(folder / "confusion.png", arrays["confusion"], arrays["names"])
    source = _tsne_source(evaluation)
    if source is None:
        report["notes"] = [*report["notes"], "no t-SNE: the score files hold no features"]
    else:
        points = figures.tsne_png(
            folder / "tsne.png",
            source.features,
            evaluation.labels,
            arrays["names"],
            title=f"{source.name} ({source.path})",
            max_points=max_tsne_points,
        )
        report["figures"]["tsne"] = "tsne.png"
        report["tsne"] = {"features_of": source.path, "points": points}
    if "delta" in arrays:
        figures.delta_png(folder / "per_class_delta.png", arrays["delta"], arrays["names"])
        report["figures"]["per_class_delta"] = "per_class_delta.png"
    curves = _training_curves(evaluation, baseline)
    if curves:
        figures.curves_png(folder / "curves.png", curves)
        report["figures"]["curves"] = "curves.png"
        report["curves_of"] = list(curves)
    else:
        note = "no training curves: no evaluated run is a run folder with metrics.jsonl"
        report["notes"] = [*report["notes"], note]
    animation = animations.write_confused_gif(
        folder / animations.CONFUSED_GIF,
        evaluation.main.logits,
        labels=evaluation.labels,
        names=arrays["names"],
        runs=_run_folders(evaluation),
    )
    report["confused_animation"] = animation
    if "file" in animation:
        report["figures"]["confused"] = animation["file"]
    with atomic_write(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_write(folder / "report.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def _cell(name: str) -> str:
    """A class name in a Markdown table: a custom name's '|' would split the cell."""
    return name.replace("|", "\\|")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _weights(entry: dict) -> str:
    pairs = zip(entry["members"], entry["weights"], strict=True)
    return ", ".join(f"{SHORT_NAMES.get(m, m)} {w:g}" for m, w in pairs)


def results_table(summary: dict) -> str:
    """The runs and ensembles as a Markdown table (also what eval.py prints)."""
    lines = ["| scores | top-1 % | top-5 % | weights | weights from |", "|---|---|---|---|---|"]
    for run in summary["runs"]:
        name = run["name"] if run["name"] == run["path"] else f"{run['name']} ({run['path']})"
        lines.append(f"| {name} | {run['top1']:.2f} | {run['top5']:.2f} | | |")
    for e in summary["ensembles"]:
        lines.append(
            f"| {e['name']} | {e['top1']:.2f} | {e['top5']:.2f} | {_weights(e)} | "
            f"{e['weights_source']} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """report.md: the tables of report.json that a reader looks at, figures linked."""
    out = [
        f"# Evaluation: {report['dataset'] or 'unknown dataset'}, "
        f"{report['num_samples']} test samples, {report['num_classes']} classes",
        "",
        results_table(report),
        "",
    ]
    out += [f"Note: {note}" for note in report["notes"]]
    if "baseline" in report:
        out += ["", "## Baseline", "", results_table(report["baseline"])]
    out += [
        "",
        f"## Difficulty levels ({report['analysed']})",
        "",
        "Per-class accuracy: hard < 80% <= medium < 90% <= easy.",
        "",
    ]
    if "comparison" in report:
        out += _comparison_md(report)
    else:
        out += ["| level | classes | mean accuracy % |", "|---|---|---|"]
        for level, row in report["levels"].items():
            out.append(f"| {level} | {row['classes']} | {_pct(row['mean_accuracy'])} |")
    out += [
        "",
        "## Most confused pairs",
        "",
        "| true | predicted as | samples | % of true class |",
        "|---|---|---|---|",
    ]
    for pair in report["most_confused"]:
        out.append(
            f"| {_cell(pair['true'])} | {_cell(pair['predicted'])} | {pair['count']} | "
            f"{pair['share_of_true_class']:.1f} |"
        )
    out += [
        "",
        "## Per-class accuracy",
        "",
        "| label | class | samples | accuracy % | level |",
        "|---|---|---|---|---|",
    ]
    for row in report["per_class"]:
        out.append(
            f"| {row['label']} | {_cell(row['class'])} | {row['samples']} | "
            f"{_pct(row['accuracy'])} | {row['level']} |"
        )
    out += ["", "## Figures", ""]
    out += [f"![{name}]({file})" for name, file in report["figures"].items()]
    return "\n".join(out) + "\n"


def _comparison_md(report: dict) -> list[str]:
    comparison = report["comparison"]
    out = [
        f"Classes grouped by the baseline's level ({report['baseline']['analysed']}):",
        "",
        "| level | classes | baseline % | this % | change |",
        "|---|---|---|---|---|",
    ]
    for level, row in comparison["levels_by_baseline"].items():
        change = "–" if row["delta"] is None else f"{row['delta']:+.2f}"
        out.append(
            f"| {level} | {row['classes']} | {_pct(row['baseline_mean_accuracy'])} | "
            f"{_pct(row['mean_accuracy'])} | {change} |"
        )
    out += [
        "",
        "Each evaluation's own levels (classes / mean accuracy %):",
        "",
        "| level | baseline | this |",
        "|---|---|---|",
    ]
    for level in comparison["levels"]:
        base, this = comparison["baseline_levels"][level], comparison["levels"][level]
        out.append(
            f"| {level} | {base['classes']} / {_pct(base['mean_accuracy'])} | "
            f"{this['classes']} / {_pct(this['mean_accuracy'])} |"
        )
    out += [
        "",
        "Level transitions (rows: baseline level, columns: level now):",
        "",
        "| | " + " | ".join(comparison["level_transitions"]) + " |",
        "|---|---|---|---|",
    ]
    for level, row in comparison["level_transitions"].items():
        out.append(f"| {level} | " + " | ".join(str(n) for n in row.values()) + " |")
    out.append(f"\nMean per-class change: {comparison['mean_delta']:+.2f} points.")
    for title, rows in (("gained most", comparison["gained"]), ("lost most", comparison["lost"])):
        out += [
            "",
            f"### Classes that {title}",
            "",
            "| class | baseline % | this % | change |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {_cell(r['class'])} | {r['baseline']:.2f} | {r['accuracy']:.2f} | "
            f"{r['delta']:+.2f} |"
            for r in rows
        ]
    return out
