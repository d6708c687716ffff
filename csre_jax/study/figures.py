"""The study's figures: every seed's accuracy per row, the paired differences against the
baseline, and the per-class differences; each under the runs' own selection rule."""

import re
from pathlib import Path

import numpy as np

from csre_jax import selection
from csre_jax.evaluate.figures import save_png


def _rule(by_rule: dict) -> str:
    return next(r for r in selection.RULES if r in by_rule)


def _interval_plot(ax, position, values, mean, ci, color):
    ax.scatter([position] * len(values), values, color=color, alpha=0.6, s=18)
    low, high = ci
    if np.isfinite(low):
        ax.errorbar(
            position + 0.15,
            mean,
            yerr=[[mean - low], [high - mean]],
            fmt="o",
            color="black",
            capsize=4,
        )


def seeds_png(path: Path, report: dict) -> None:
    from matplotlib.figure import Figure

    rows = [
        (name, by_rule[_rule(by_rule)], _rule(by_rule)) for name, by_rule in report["rows"].items()
    ]
    figure = Figure(figsize=(1.6 + 1.2 * len(rows), 4))
    ax = figure.add_subplot()
    for i, (_, row, _) in enumerate(rows):
        _interval_plot(ax, i, list(row["runs"].values()), row["mean"], row["ci95"], f"C{i}")
    ax.set_xticks(range(len(rows)), [f"{name}\n({rule})" for name, _, rule in rows], fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Every seed, mean and 95% interval")
    save_png(figure, path)


def differences_png(path: Path, report: dict) -> None:
    from matplotlib.figure import Figure

    comparisons = list(report["comparisons"].items())
    figure = Figure(figsize=(1.6 + 1.6 * len(comparisons), 4))
    ax = figure.add_subplot()
    for i, (_, comparison) in enumerate(comparisons):
        rule = _rule(comparison["by_rule"])
        result = comparison["by_rule"][rule]
        _interval_plot(ax, i, result["differences"], result["mean"], result["ci95"], f"C{i}")
    ax.axhline(0, color="black", linewidth=0.8)
    labels = [f"{n}\n- {c['against']}\n({_rule(c['by_rule'])})" for n, c in comparisons]
    ax.set_xticks(range(len(comparisons)), labels, fontsize=8)
    ax.set_ylabel("paired difference per seed (points)")
    ax.set_title("Against the baseline, seed by seed")
    save_png(figure, path)


def per_class_png(path: Path, name: str, comparison: dict) -> None:
    from matplotlib.figure import Figure

    classes = comparison["per_class"]
    mean = np.array([c["mean"] for c in classes], np.float64)
    ci = np.array([c["ci95"] for c in classes], np.float64)
    order = np.argsort(np.nan_to_num(mean), kind="stable")
    figure = Figure(figsize=(8, 1.5 + 0.18 * len(classes)))
    ax = figure.add_subplot()
    errors = np.abs(ci[order] - mean[order, None]).T
    ax.barh(
        range(len(order)),
        np.nan_to_num(mean[order]),
        xerr=np.nan_to_num(errors),
        color=np.where(mean[order] >= 0, "tab:green", "tab:red"),
    )
    ax.set_yticks(
        range(len(order)),
        [f"{classes[i]['class']} ({classes[i]['level']})" for i in order],
        fontsize=6,
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("accuracy difference, mean over seeds with 95% interval (points)")
    ax.set_title(f"{name} - {comparison['against']}, per class (the kept models)")
    save_png(figure, path)


def write_figures(root: Path, report: dict) -> None:
    if not report["rows"]:
        return
    seeds_png(root / "seeds.png", report)
    if report["comparisons"]:
        differences_png(root / "differences.png", report)
    for name, comparison in report["comparisons"].items():
        stem = re.sub(r"[^A-Za-z0-9+.-]+", "_", name).strip("_")  # "csre 2-stream (J+B)"
        per_class_png(root / f"per_class_{stem}.png", name, comparison)
