"""orbax checkpoints: the latest full train state with the data position, and the best model.

workdir/checkpoints/<step>/ holds the whole TrainState (banks and rng included) and the
grain iterator's position, so a killed run resumes with the same banks and the same next
batch. workdir/best/<step>/ holds only the backbone's variables of the best evaluation,
which is what eval.py scores. orbax writes each step to a temporary folder and renames it
when complete, so an interrupted save never replaces a good checkpoint.

A run resumes on any device count: arrays are read into this run's shardings, and banks,
whose rows are padded to a multiple of the device count (loop.init_state), are re-padded
to this run's row count (`_refit`).
"""

from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax.csre.bank import MemoryBank
from csre_jax.training.state import TrainState, backbone_variables
from csre_jax.workdir import BEST, RunFolder


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _shape_mismatch_message(directory: Path, error: Exception) -> str:
    return (
        f"{directory}: the checkpoint does not fit the configured model/data "
        f"({type(error).__name__}: {error}). Resume with the config it was written with "
        f"(see config.json in the workdir) or start a new --workdir."
    )


def _saved_layout(bank: MemoryBank, saved: dict, sharding: NamedSharding) -> MemoryBank:
    """The abstract bank with the saved shapes, read whole (`sharding`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(saved[path[0].name].shape, x.dtype, sharding=sharding),
        bank,
    )


def _refit(bank: MemoryBank, template: MemoryBank, sharding: MemoryBank) -> MemoryBank:
    """A bank saved on another device count in the padded row count of `template` (this
    run's fresh bank): shared rows are copied, rows only the template has keep its padding
    (label -1, unfilled), rows only the saved bank has must be padding, and a queue's
    per-shard copies of its pointer are re-broadcast."""
    old_rows, new_rows = bank.labels.shape[0], template.labels.shape[0]

    def fit(old, new):
        rows = min(old.shape[0], new.shape[0])
        return new.at[:rows].set(old[:rows])

    def refit(bank, template):
        fitted = jax.tree.map(fit, bank, template)
        if hasattr(bank, "pointer"):
            fitted = fitted.replace(pointer=jnp.full_like(template.pointer, bank.pointer[0]))
        fixed = template.labels >= 0  # a per-sample bank's labels are the dataset's
        same = jnp.all(~fixed | (fitted.labels == template.labels))
        return fitted, same & jnp.all(bank.labels[new_rows:] < 0)

    fitted, fits = jax.jit(refit, out_shardings=(sharding, None))(bank, template)
    if not bool(fits):
        raise ValueError(
            f"a saved bank ({old_rows} rows) holds other slots than this run's ({new_rows} "
            f"rows): another dataset or split"
        )
    return fitted


class Checkpointer:
    """Latest-state and best-model checkpoints of one run."""

    def __init__(self, workdir: Path, keep: int = 2):
        workdir = Path(workdir).absolute()
        self._latest = ocp.CheckpointManager(
            RunFolder(workdir).checkpoints,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._best = ocp.CheckpointManager(
            RunFolder(workdir).best,
            item_names=("variables", "metrics"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        )
        self._workdir = workdir

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, state: TrainState, data_iterator: grain.DatasetIterator) -> None:
        step = int(jax.device_get(state.step))
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=True,
        )

    def restore(
        self, target: TrainState, shardings: TrainState, data_iterator: grain.DatasetIterator
    ) -> TrainState:
        """The latest state, laid out as `shardings`; data_iterator is moved to its position."""
        step = self._latest.latest_step()
        saved = self._latest.item_metadata(step).state["banks"]
        # Banks saved with another row count (on another device count) are read whole onto
        # every device, then re-padded and split again.
        refit = [
            name
            for name, bank in target.banks.items()
            if name in saved and saved[name]["labels"].shape[0] != bank.labels.shape[0]
        ]
        abstract = _abstract(target, shardings)
        for name in refit:
            whole = NamedSharding(shardings.banks[name].labels.mesh, P())
            abstract.banks[name] = _saved_layout(abstract.banks[name], saved[name], whole)
        try:
            state = self._latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            ).state
            for name in refit:
                state.banks[name] = _refit(
                    state.banks[name], target.banks[name], shardings.banks[name]
                )
        except (ValueError, KeyError, TypeError) as error:
            directory = RunFolder(self._workdir).checkpoints / str(step)
            raise ValueError(_shape_mismatch_message(directory, error)) from error
        return state

    def save_best(self, step: int, variables: Any, metrics: dict[str, float]) -> None:
        self._best.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), metrics=ocp.args.JsonSave(metrics)
            ),
            force=True,
        )

    def best_metrics(self) -> dict | None:
        """The metrics saved with the best model so far (None before the first eval)."""
        step = self._best.latest_step()
        if step is None:
            return None
        return self._best.restore(
            step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore())
        ).metrics

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Each leaf's shape by its path; empty collections (HCN has no batch_stats), which orbax
    does not store, drop out."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}


def restore_variables(directory: Path, target: Any) -> tuple[Any, int]:
    """Backbone variables from a run's best/ folder, or from a full state in checkpoints/.

    Returns (variables, step).
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here; pass a run's --workdir")
    item = "variables" if directory.name == BEST else "state"
    with ocp.CheckpointManager(directory, item_names=(item,)) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory}: holds no finished checkpoint")
        if item == "state":
            raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            variables = backbone_variables(raw.state["params"], raw.state["batch_stats"])
        else:
            raw = manager.restore(
                step, args=ocp.args.Composite(variables=ocp.args.StandardRestore())
            )
            variables = raw.variables
    if _leaf_shapes(target) != _leaf_shapes(variables):
        raise ValueError(
            f"{directory / str(step)}: the checkpoint's parameters do not fit the configured "
            f"model (shapes differ, e.g. another dataset, class count or width). Evaluate it "
            f"with the config it was trained with (config.json in its workdir)."
        )
    return variables, step
