"""A run's saved backbone variables, for evaluation and prediction: best/'s, or those of the
newest intact train state in checkpoints/ (csre_jax.workdir), read without the optimizer,
the banks or any other part of training.

Here too is how a damaged checkpoint (files truncated or deleted) is told apart from an
intact one, which resuming a run (training/checkpoint.py) shares: damage falls back to an
older checkpoint, a checkpoint of another model is refused.
"""

import logging as std_logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from absl import logging

from csre_jax.errors import UserError
from csre_jax.workdir import BEST

# What reading a damaged checkpoint raises: TensorStore's errors (truncated or missing array
# files), grain's missing iterator file and truncated JSON are ValueErrors, a missing item a
# KeyError, a vanished file an OSError, orbax indexing metadata it could not read a TypeError.
READ_ERRORS = (ValueError, OSError, KeyError, TypeError)


class OrbaxNoticesToInfo(std_logging.Filter):
    """Lowers orbax warnings that start with one of `notices` to INFO (they still show with
    --verbosity=0): notices a reader or writer of checkpoints reports better itself."""

    def __init__(self, *notices: str):
        super().__init__()
        self._notices = notices

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno == std_logging.WARNING and str(record.msg).startswith(self._notices):
            record.levelno, record.levelname = std_logging.INFO, "INFO"
            return logging.get_absl_logger().isEnabledFor(std_logging.INFO)
        return True


# orbax logs through absl's logger, so the filter sits there. Its "Metadata file does not
# exist" is a damaged step folder, which the readers report themselves in one line.
logging.get_absl_logger().addFilter(OrbaxNoticesToInfo("Metadata file does not exist"))


class Damaged(Exception):  # noqa: N818 (a finding about a folder, caught by the readers)
    """A checkpoint whose files are missing or unreadable; str() says which and why."""

    @classmethod
    def unreadable(cls, error: Exception) -> "Damaged":
        """An error while reading, in one line (TensorStore appends its whole JSON spec)."""
        text = str(error).split(" [tensorstore_spec=")[0].splitlines()[0] if str(error) else ""
        return cls(f"files unreadable ({type(error).__name__}: {text})")


def read_step(manager: ocp.CheckpointManager, step: int, **items: Any) -> Any:
    """The items of one step, any read error turned into Damaged."""
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except READ_ERRORS as error:
        raise Damaged.unreadable(error) from error


def check_item(item: Path) -> None:
    """Raises Damaged unless an item's metadata is there and every array chunk it stores
    reads back. The chunks are read through TensorStore before orbax reads them: orbax gives
    up at the first unreadable array while its other reads are still in flight, and each of
    those then prints a traceback ("Task exception was never retrieved", "Event loop is
    closed")."""
    if not item.is_dir():
        raise Damaged(f"{item.name}/ is missing (an empty or partly deleted folder)")
    if not (item / "_METADATA").is_file():
        raise Damaged(f"{item.name}/_METADATA is missing")
    try:
        spec = {"driver": "ocdbt", "base": {"driver": "file", "path": f"{item}/"}}
        store = ts.KvStore.open(spec).result()
        keys = store.list().result()
        if not keys:
            raise Damaged(f"{item.name}/ stores no arrays (manifest.ocdbt missing?)")
        for start in range(0, len(keys), 64):  # a bounded number of chunks in memory
            reads = [store.read(key) for key in keys[start : start + 64]]
            errors = [read.exception() for read in reads]  # waits for every read
            if any(errors):
                raise next(error for error in errors if error)
    except ValueError as error:
        raise Damaged.unreadable(error) from error


def none_intact_message(folder: Path, damaged: list[tuple[int, str]]) -> str:
    found = "; ".join(f"{step}: {reason}" for step, reason in damaged) or "no checkpoints"
    return (
        f"{folder}: no intact checkpoint to resume from ({found}). Start a new --workdir, or "
        f"delete {folder} to train this run again from the start."
    )


def backbone_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """What evaluation needs of a train state: the backbone without the training-only heads."""
    return {"params": params["backbone"], "batch_stats": batch_stats.get("backbone", {})}


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Each leaf's shape by its path; empty collections (HCN has no batch_stats), which orbax
    does not store, drop out."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}


def _read_variables(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
    """The backbone's variables of one step of best/ or checkpoints/ (raw, no target)."""
    check_item(Path(manager.directory) / str(step) / item)
    raw = read_step(manager, step, **{item: ocp.args.StandardRestore()})
    if item == "variables":
        return raw.variables
    return backbone_variables(raw.state["params"], raw.state["batch_stats"])


def restore_variables(directory: Path, target: Any) -> tuple[Any, int]:
    """Backbone variables from a run's best/ folder, or from the newest intact full state in
    checkpoints/ (a damaged newer one is skipped with a warning).

    Returns (variables, step).
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here; pass a run's --workdir")
    item = "variables" if directory.name == BEST else "state"
    with ocp.CheckpointManager(directory, item_names=(item,)) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"{directory}: holds no finished checkpoint")
        damaged = []
        for step in steps if item == "state" else steps[:1]:
            try:
                variables = _read_variables(manager, step, item)
                break
            except Damaged as damage:
                damaged.append((step, str(damage)))
        else:
            if item == "variables":
                raise UserError(
                    f"{directory / str(steps[0])}: the best model's checkpoint is damaged "
                    f"({damaged[0][1]}). Score the latest train state instead "
                    f"(eval.py --checkpoint=latest) or train again in a new --workdir."
                )
            raise UserError(none_intact_message(directory, damaged))
    for bad, reason in damaged:
        logging.warning("%s: %s; using %s", directory / str(bad), reason, directory / str(step))
    if _leaf_shapes(target) != _leaf_shapes(variables):
        raise UserError(
            f"{directory / str(step)}: the checkpoint's parameters do not fit the configured "
            f"model (shapes differ, e.g. another dataset, class count or width). Evaluate it "
            f"with the config it was trained with (config.json in its workdir)."
        )
    return variables, step
