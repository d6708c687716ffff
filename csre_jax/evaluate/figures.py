"""The report's PNG figures: confusion heat map, t-SNE of test features, per-class changes,
training curves.

matplotlib's object API (Figure, no pyplot) renders with Agg off screen and leaves the
process's global plotting state alone; matplotlib and scikit-learn are imported only here, so
training and `import eval` never pay for them.
"""

from pathlib import Path

import numpy as np

from csre_jax.fileio import atomic_write

_MAX_LEGEND_CLASSES = 20


def save_png(figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _class_ticks(axis_setter, names: list[str]) -> None:
    """Every class named up to 60 classes, else every 10th label number."""
    if len(names) <= 60:
        axis_setter(range(len(names)), names, fontsize=6)
    else:
        ticks = range(0, len(names), 10)
        axis_setter(ticks, [str(t) for t in ticks])


def confusion_png(path: Path, confusion: np.ndarray, names: list[str]) -> None:
    """Row-normalised: each cell is the share of the true class predicted as the column."""
    from matplotlib.figure import Figure

    rows = confusion.sum(1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = min(4 + 0.12 * len(names), 20)
    figure = Figure(figsize=(size + 1, size))
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    _class_ticks(lambda t, n, **kw: ax.set_xticks(t, n, rotation=90, **kw), names)
    _class_ticks(ax.set_yticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised)")
    save_png(figure, path)


def stratified_subsample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most about max_points samples, every class in proportion."""
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(len(members) * max_points / len(labels)))
        keep.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(keep))


def tsne_png(
    path: Path,
    features: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    title: str = "",
    max_points: int = 2000,
    seed: int = 0,
) -> int:
    """2-D t-SNE of the features coloured by true class (a legend up to 20 classes);
    returns the number of points drawn. Deterministic for a given seed."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    keep = stratified_subsample(labels, max_points, seed)
    features, labels = np.asarray(features, np.float32)[keep], labels[keep]
    perplexity = min(30.0, (len(keep) - 1) / 3)
    embedded = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    figure = Figure(figsize=(9, 7))
    ax = figure.add_subplot()
    if len(names) <= _MAX_LEGEND_CLASSES:
        colours = colormaps["tab10" if len(names) <= 10 else "tab20"]
        for label in np.unique(labels):
            points = embedded[labels == label]
            ax.scatter(*points.T, s=6, color=colours(label), label=names[label])
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    else:
        dots = ax.scatter(*embedded.T, s=4, c=labels, cmap="turbo", vmin=0, vmax=len(names) - 1)
        figure.colorbar(dots, ax=ax, label="class label")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of the test features of {title} ({len(keep)} samples)", fontsize=9)
    save_png(figure, path)
    return len(keep)


def delta_png(path: Path, delta: np.ndarray, names: list[str]) -> None:
    """Per-class change of accuracy against the baseline, sorted, gains green, losses red."""
    from matplotlib.figure import Figure

    order = np.argsort(np.nan_to_num(delta), kind="stable")
    values = np.nan_to_num(delta[order])
    figure = Figure(figsize=(8, 1.5 + 0.16 * len(names)))
    ax = figure.add_subplot()
    ax.barh(range(len(order)), values, color=np.where(values >= 0, "tab:green", "tab:red"))
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=6)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("accuracy change against the baseline (points)")
    ax.set_ylim(-0.5, len(order) - 0.5)
    ax.set_title("Per-class accuracy change")
    save_png(figure, path)


def _curve_panels(runs: dict[str, list[dict]]) -> list[tuple[str, str, str]]:
    """(record kind, metric, title) of each panel: total loss, CE, each bank's loss found in
    any run (a run without that bank has no line there), learning rate, test top-1."""
    names = {name for records in runs.values() for r in records for name in r}
    banks = sorted(name for name in names if name.startswith("loss_"))
    return [
        ("train_step", "loss", "loss = CE + weight · mean bank loss"),
        ("train_step", "ce", "cross-entropy"),
        *[("train_step", bank, f"{bank.removeprefix('loss_')} bank InfoNCE") for bank in banks],
        ("train_step", "lr", "learning rate"),
        ("epoch", "test_top1", "test top-1 %"),
    ]


def curves_png(path: Path, runs: dict[str, list[dict]]) -> None:
    """Training curves of one or more runs (name -> its metrics.jsonl records), one colour
    per run: the step records' losses and learning rate by step, test top-1 by epoch."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = _curve_panels(runs)
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    legend_rows = -(-len(runs) // 2)
    figure = Figure(figsize=(4.5 * columns, 3.2 * rows + 0.3 * legend_rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = colormaps["tab10"]
    for ax, (kind, metric, title) in zip(axes, panels, strict=False):
        x_key = "epoch" if kind == "epoch" else "step"
        for i, records in enumerate(runs.values()):
            points = [(r[x_key], r[metric]) for r in records if r["kind"] == kind and metric in r]
            if points:
                marker = "o" if kind == "epoch" else None
                ax.plot(*zip(*points, strict=True), color=colours(i % 10), marker=marker)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=colours(i % 10), label=name) for i, name in enumerate(runs)]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    figure.suptitle("Training curves (metrics.jsonl)")
    save_png(figure, path)
