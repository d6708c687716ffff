"""orbax checkpoints: the latest full train state with the data position, and the best model.

workdir/checkpoints/<step>/ holds the whole TrainState (banks and rng included) and the
grain iterator's position, so a killed run resumes with the same banks and the same next
batch. workdir/best/<step>/ holds only the backbone's variables of the best evaluation,
which is what eval.py scores. orbax writes each step to a temporary folder and renames it
when complete, so an interrupted save never replaces a good checkpoint.
"""

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from csre_jax.training.state import TrainState, backbone_variables


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


class Checkpointer:
    """Latest-state and best-model checkpoints of one run."""

    def __init__(self, workdir: Path, keep: int = 2):
        workdir = Path(workdir).absolute()
        self._latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._best = ocp.CheckpointManager(
            workdir / "best",
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
        try:
            restored = self._latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(target, shardings)),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                _shape_mismatch_message(self._workdir / "checkpoints" / str(step), error)
            ) from error
        return restored.state

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


def restore_variables(directory: Path, target: Any) -> tuple[Any, int]:
    """Backbone variables from a run's best/ folder, or from a full state in checkpoints/.

    Returns (variables, step).
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here; pass a run's --workdir")
    item = "variables" if directory.name == "best" else "state"
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
    if jax.tree.map(lambda x: x.shape, target) != jax.tree.map(lambda x: x.shape, variables):
        raise ValueError(
            f"{directory / str(step)}: the checkpoint's parameters do not fit the configured "
            f"model (shapes differ, e.g. another dataset, class count or width). Evaluate it "
            f"with the config it was trained with (config.json in its workdir)."
        )
    return variables, step
