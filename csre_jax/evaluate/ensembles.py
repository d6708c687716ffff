"""Multi-stream ensembles scored honestly: published, given, or validation-searched weights.

The official CSRE ensemble script (zhshj0110/CSRE ensemble.py) searches its stream weights
on the test labels (scikit-optimize's gp_minimize of minus the test top-1), which inflates the
accuracy it reports. Here weights come from the published ensemble scripts, from the command
line, or from a search on scores of a validation split held out of the training data; they
are fixed before any test label is read and applied to the test scores once.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from csre_jax.data.transforms import STREAMS
from csre_jax.errors import UserError
from csre_jax.evaluate.scores import ScoreFile, check_same_samples, ensemble, topk_accuracy
from csre_jax.workdir import RunFolder

SHORT_NAMES = {"joint": "J", "bone": "B", "joint_motion": "JM", "bone_motion": "BM"}
TWO_STREAM = STREAMS[:2]
# The official search space [0.2, 1.2] per weight, as an exhaustive grid at 0.1 steps.
GRID = np.round(np.arange(2, 13) / 10, 1)
NO_VALIDATION_HINT = (
    "train every stream with a held-out validation split (--config.data.val_fraction=0.05, "
    f"the same for every stream) so each run writes {RunFolder('<run>').val_scores}"
)


@dataclasses.dataclass(frozen=True)
class Weights:
    values: tuple[float, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class Result:
    """Accuracies (percent) of one run or one ensemble on the test set."""

    name: str
    top1: float
    top5: float
    logits: np.ndarray = dataclasses.field(repr=False)
    members: tuple[str, ...] = ()  # an ensemble's streams (or files), in weight order
    weights: Weights | None = None
    path: str = ""  # a single run's score file
    features: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def summary(self) -> dict:
        """The JSON-ready part: no per-sample arrays."""
        out = {"name": self.name, "top1": self.top1, "top5": self.top5}
        if self.weights is not None:
            out |= {
                "members": list(self.members),
                "weights": list(self.weights.values),
                "weights_source": self.weights.source,
            }
        if self.path:
            out["path"] = self.path
        return out


@dataclasses.dataclass(frozen=True)
class RunsEvaluation:
    """Every run alone and every ensemble, on one test set (what evaluate_runs returns)."""

    runs: list[Result]
    ensembles: list[Result]
    labels: np.ndarray
    sample_ids: np.ndarray
    dataset: str
    notes: list[str]

    @property
    def main(self) -> Result:
        """What per-class reports describe: the largest ensemble, else the first run."""
        return self.ensembles[-1] if self.ensembles else self.runs[0]

    def summary(self) -> dict:
        """The JSON-ready results: every run and ensemble, the notes, what `main` is."""
        return {
            "runs": [run.summary() for run in self.runs],
            "ensembles": [e.summary() for e in self.ensembles],
            "notes": self.notes,
            "analysed": self.main.name,
        }


def weights_problem(weights: Sequence[float]) -> str | None:
    """What makes given ensemble weights unusable, or None: a NaN or infinite weight, a
    negative one, or all zero would print an accuracy that is no ensemble's."""
    values = np.asarray(weights, np.float64)
    if not np.isfinite(values).all():
        return "a weight is not finite"
    if (values < 0).any():
        return "a weight is negative"
    if not values.any():
        return "every weight is 0"
    return None


def ensemble_name(members: Sequence[str]) -> str:
    if all(m in SHORT_NAMES for m in members):
        return f"{len(members)}-stream ({'+'.join(SHORT_NAMES[m] for m in members)})"
    return f"ensemble of {len(members)} runs"


def published_weights(streams: Sequence[str], model: str, dataset: str) -> Weights:
    """The fixed weights of the backbone's official ensemble.py: CTR-GCN's
    (Uason-Chen/CTR-GCN ensemble.py, every dataset) for every backbone but Hyperformer, which
    publishes its own (ZhouYuxuanYX/Hyperformer ensemble.py, NTU and NW-UCLA apart)."""
    hyperformer = model == "hyperformer"
    script = "Hyperformer ensemble.py" if hyperformer else "CTR-GCN ensemble.py"
    if tuple(streams) == TWO_STREAM:
        return Weights((1.0, 1.0), f"published default ({script}, J + 1.0·B)")
    if tuple(streams) != STREAMS:
        raise UserError(f"no published weights for {ensemble_name(streams)}; pass --weights")
    if not hyperformer:
        return Weights((0.6, 0.6, 0.4, 0.4), f"published default ({script})")
    if dataset == "ucla":
        return Weights((0.4, 0.4, 0.3, 0.2), f"published default ({script}, NW-UCLA)")
    return Weights((0.4, 0.6, 0.2, 0.2), f"published default ({script}, NTU)")


def runs_by_stream(runs: Sequence[ScoreFile]) -> dict[str, int]:
    """stream -> index into runs, in the order joint, bone, joint_motion, bone_motion."""
    found: dict[str, int] = {}
    for i, run in enumerate(runs):
        stream = run.stream
        if stream not in STREAMS:
            raise UserError(
                f"{run.path}: stream {stream!r} is not one of {', '.join(STREAMS)}; name "
                f"each run's stream with --streams (in --runs order) or give --weights in "
                f"file order"
            )
        if stream in found:
            raise UserError(
                f"{run.path} and {runs[found[stream]].path} both hold the {stream} "
                f"stream; ensemble different streams, or give --weights in file order"
            )
        found[stream] = i
    return {s: found[s] for s in STREAMS if s in found}


def search_weights(
    logits: Sequence[np.ndarray],
    labels: np.ndarray,
    prefer: Sequence[float],
    *,
    grid: np.ndarray = GRID,
    show_progress: bool = False,
) -> tuple[tuple[float, ...], float]:
    """The weights (one per stream) with the highest top-1 on these scores, and that top-1.

    Give it held-out validation scores only: whatever it is given, it tunes for. Every point
    of the grid is tried (11^4 = 14,641 for four streams). Accuracy depends only on the
    weights' direction, so ties are common: the tie closest to `prefer` (the published
    default) wins, then the lowest grid index (the smallest first weight, then second, ...).
    """
    stacked = np.stack([np.asarray(x, np.float32) for x in logits])
    num_streams, num_samples, num_classes = stacked.shape
    flat = stacked.reshape(num_streams, -1)
    points = np.stack(np.meshgrid(*[grid] * num_streams, indexing="ij"), -1)
    points = points.reshape(-1, num_streams)
    correct = np.empty(len(points), np.int64)
    chunk = max(1, 2**24 // flat.shape[1])  # about 64 MB of fused logits at a time
    starts = range(0, len(points), chunk)
    for start in tqdm(starts, desc="weight search", disable=not show_progress, leave=False):
        fused = (points[start : start + chunk].astype(np.float32) @ flat).reshape(
            -1, num_samples, num_classes
        )
        correct[start : start + chunk] = (fused.argmax(-1) == labels).sum(-1)
    best = np.flatnonzero(correct == correct.max())
    distance = np.round(np.linalg.norm(points[best] - np.asarray(prefer), axis=1), 9)
    pick = best[np.argmin(distance)]  # argmin takes the first, the lowest index, of equals
    return tuple(float(w) for w in points[pick]), float(correct[pick] / num_samples)


def _validation_source(val_runs: Sequence[ScoreFile], accuracy: float) -> str:
    split = val_runs[0].validation_split
    recorded = (
        f", fraction {split.fraction} seed {split.seed} as recorded in {split.recorded_in.name}"
        if split is not None
        else ""
    )
    return (
        f"searched on the held-out validation split ({len(val_runs[0].labels)} training "
        f"samples{recorded}; grid 0.2-1.2 step 0.1, top-1 there {100 * accuracy:.2f}%)"
    )


def _validation_searched_weights(
    members: Sequence[int],
    default: Weights,
    val_runs: Sequence[ScoreFile | None],
    test_runs: Sequence[ScoreFile],
    show_progress: bool,
) -> Weights:
    """Weights searched on the members' validation score files; test_runs only name files."""
    chosen = []
    for i in members:
        val, stream = val_runs[i], test_runs[i].stream
        if val is None:
            raise UserError(
                f"{test_runs[i].path}: no validation scores to search weights on; "
                f"{NO_VALIDATION_HINT}, or drop --search_weights to use the published weights"
            )
        if val.metadata.get("split") != "val":
            raise UserError(
                f"{val.path}: not a validation score file (metadata split="
                f"{val.metadata.get('split')!r}); weights are searched on held-out "
                f"validation scores only, never on test scores"
            )
        if val.stream != stream:
            raise UserError(
                f"{val.path}: validation scores of the {val.stream} "
                f"stream given for the {stream} run {test_runs[i].path}"
            )
        chosen.append(val)
    check_same_samples(chosen, "validation split")
    values, accuracy = search_weights(
        [v.logits for v in chosen],
        chosen[0].labels,
        default.values,
        show_progress=show_progress,
    )
    return Weights(values, _validation_source(chosen, accuracy))


def _distinct_streams(runs: Sequence[ScoreFile]) -> bool:
    streams = [run.stream for run in runs]
    return set(streams) <= set(STREAMS) and len(set(streams)) == len(streams)


def _plan(
    test_runs: Sequence[ScoreFile], weights: Sequence[float] | None, model: str, dataset: str
) -> tuple[list[tuple[list[int], Weights]], list[str]]:
    """Which ensembles to score (run indices in weight order) with which weights, and notes;
    from the runs' metadata only. Without known, distinct streams only given weights apply."""
    if weights is not None and len(weights) != len(test_runs):
        raise UserError(f"{len(test_runs)} runs but {len(weights)} weights")
    if len(test_runs) < 2:
        return [], []
    try:
        streams = runs_by_stream(test_runs)
    except ValueError:
        if weights is None:
            raise
        streams = None
    plans = [
        ([streams[s] for s in standard], published_weights(standard, model, dataset))
        for standard in (TWO_STREAM, STREAMS)
        if streams and set(standard) <= set(streams)
    ]
    if weights is not None:
        order = list(streams.values()) if streams else list(range(len(test_runs)))
        # The given runs' own ensemble takes the given weights instead of the published ones.
        plans = [plan for plan in plans if len(plan[0]) != len(order)]
        plans.append((order, Weights(tuple(float(weights[i]) for i in order), "command line")))
    plans.sort(key=lambda plan: len(plan[0]))
    notes = []
    if streams and not plans:
        notes.append(
            f"no published weights for {ensemble_name(list(streams))}; pass --weights in "
            f"file order to ensemble them"
        )
    return plans, notes


def evaluate_runs(
    test_runs: Sequence[ScoreFile],
    *,
    weights: Sequence[float] | None = None,
    val_runs: Sequence[ScoreFile | None] | None = None,
    search: bool = False,
    show_progress: bool = False,
) -> RunsEvaluation:
    """Every run alone, then the 2-stream (J+B) and 4-stream ensembles its streams allow
    (published weights, or searched on val_runs, parallel to test_runs) and the ensemble of
    all runs with `weights` (file order) when given. The weights are settled before any test
    label is read."""
    if weights is not None and search:
        raise UserError("--weights and --search_weights: give weights or search them, not both")
    problem = None if weights is None else weights_problem(weights)
    if problem:
        raise UserError(
            f"--weights={','.join(map(str, weights))}: {problem}; give finite weights of 0 or "
            "more, not all 0, one per run (e.g. --weights=0.6,0.6,0.4,0.4)"
        )
    metadata = test_runs[0].metadata
    dataset = metadata.get("dataset") or ""
    plans, notes = _plan(test_runs, weights, metadata.get("model", ""), dataset)
    if search:
        val_runs = val_runs or [None] * len(test_runs)
        plans = [
            (
                members,
                _validation_searched_weights(members, default, val_runs, test_runs, show_progress),
            )
            for members, default in plans
        ]
        if not plans:
            notes.append("--search_weights: no 2- or 4-stream ensemble to search weights for")
    check_same_samples(test_runs)
    labels = test_runs[0].labels
    runs = [_run_result(run, labels, _distinct_streams(test_runs)) for run in test_runs]
    ensembles = []
    for members, chosen in plans:
        fused = ensemble([test_runs[i] for i in members], chosen.values).logits
        names = [runs[i].name for i in members]
        ensembles.append(
            _result_with_accuracy(
                ensemble_name(names), fused, labels, members=tuple(names), weights=chosen
            )
        )
    return RunsEvaluation(runs, ensembles, labels, test_runs[0].sample_ids, dataset, notes)


def _result_with_accuracy(name: str, logits: np.ndarray, labels: np.ndarray, **fields) -> Result:
    top1, top5 = (100 * topk_accuracy(logits, labels, k) for k in (1, 5))
    return Result(name, top1, top5, logits, **fields)


def _run_result(run: ScoreFile, labels: np.ndarray, name_by_stream: bool) -> Result:
    """One run alone, named by its stream (when every run's is known and distinct) or path."""
    name = run.stream if name_by_stream else run.path
    return _result_with_accuracy(name, run.logits, labels, path=run.path, features=run.features)
