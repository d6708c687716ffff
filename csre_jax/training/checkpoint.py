"""orbax checkpoints: the latest full train state with the data position, and the best model.

workdir/checkpoints/<step>/ holds the whole TrainState (banks and rng included), the grain
iterator's position and the loop's progress record (running metric sums), so a killed run
resumes with the same banks, the same next batch and the same epoch averages.
workdir/best/<step>/ holds only the backbone's variables of the best evaluation, which is
what eval.py scores. orbax writes each step to a temporary folder and renames it when
complete, so an interrupted save never replaces a good checkpoint.

A checkpoint damaged later (files truncated or deleted) is told apart from one of another
model (csre_jax.run_variables, which also reads the backbone's variables for eval.py and
the predictor): damage falls back to the newest intact checkpoint, a shape mismatch is
refused.

A run resumes on any device count: arrays are read into this run's shardings, and banks,
whose rows are padded to a multiple of the device count (loop.init_state), are re-padded
to this run's row count (`_refit`).
"""

import contextlib
import logging as std_logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax.csre.bank import MemoryBank
from csre_jax.errors import UserError
from csre_jax.run_variables import (
    READ_ERRORS,
    Damaged,
    OrbaxNoticesToInfo,
    check_item,
    none_intact_message,
    read_step,
)
from csre_jax.training.state import TrainState
from csre_jax.workdir import RunFolder


class _DiskFullToSilence(std_logging.Filter):
    """Drops orbax's tracebacks of a write that found the disk full: the save that fails
    raises DiskFull, which the command line prints as one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno < std_logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not _is_disk_full(f"{record.getMessage()} {error}")


# orbax logs through absl's logger, so the filters sit there. "Waiting for previous save to
# complete took N seconds" is a notice a loop that checkpoints every epoch cannot act on, and
# it breaks tqdm's bar line.
logging.get_absl_logger().addFilter(OrbaxNoticesToInfo("Waiting for previous save"))
logging.get_absl_logger().addFilter(_DiskFullToSilence())

# How TensorStore and the OS word a full disk (ENOSPC is error 28; a quota is EDQUOT).
_DISK_FULL = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def _is_disk_full(text: str) -> bool:
    return any(sign in text for sign in _DISK_FULL)


class DiskFull(UserError):
    """A checkpoint did not fit on the disk; str() names the folder, the step, the last
    intact checkpoint and the fix."""


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _nbytes(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    return sum(
        jax.eval_shape(jax.random.key_data, x).size * 4
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x.nbytes
        for x in leaves
    )


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _stored_shape(x: jax.ShapeDtypeStruct) -> tuple[int, ...]:
    """The shape orbax stores: a PRNG key as its raw key data."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data, x).shape
    return x.shape


def _difference(abstract: Any, saved: Any) -> str | None:
    """How the saved state's leaves and shapes differ from the configured ones (None: same)."""
    want = {k: _stored_shape(x) for k, x in ocp.tree.to_flat_dict(abstract, sep="/").items()}
    have = {k: tuple(x.shape) for k, x in ocp.tree.to_flat_dict(saved, sep="/").items()}
    if want.keys() != have.keys():
        only_saved, only_configured = sorted(have.keys() - want), sorted(want.keys() - have)
        return f"leaves only saved: {only_saved[:3]}, only configured: {only_configured[:3]}"
    for key, shape in want.items():
        if have[key] != shape:
            return f"{key} is saved as {have[key]}, configured as {shape}"
    return None


def _shape_mismatch_message(directory: Path, error: Exception | str) -> str:
    if isinstance(error, Exception):
        error = f"{type(error).__name__}: {error}"
    return (
        f"{directory}: the checkpoint does not fit the configured model/data ({error}). "
        f"Resume with the config it was written with (see config.json in the workdir) or "
        f"start a new --workdir."
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
        raise UserError(
            f"a saved bank ({old_rows} rows) holds other slots than this run's ({new_rows} "
            f"rows): another dataset or split"
        )
    return fitted


class Checkpointer:
    """Latest-state and best-model checkpoints of one run.

    Use it as a context manager: leaving the block, by an exception or KeyboardInterrupt
    included, finishes a pending asynchronous save before the interpreter can shut down
    the threads that write it.
    """

    def __init__(self, workdir: Path, keep: int = 2):
        workdir = Path(workdir).absolute()
        self._folder = RunFolder(workdir).checkpoints
        self._latest = ocp.CheckpointManager(
            self._folder,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "progress": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self._best = ocp.CheckpointManager(
            RunFolder(workdir).best,
            item_names=("variables", "metrics"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        )

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as error:  # the exception on its way out is the one to report
            if not isinstance(exc, DiskFull):  # which already says why
                logging.warning("%s: the pending checkpoint save failed: %s", self._folder, error)

    def _disk_full(self, folder: Path, step: int, detail: str) -> DiskFull:
        last = self._latest.latest_step()
        resume = (
            f"the last intact checkpoint is step {last} ({self._folder / str(last)})"
            if last is not None
            else "no checkpoint is intact yet, so the run would start from the beginning"
        )
        return DiskFull(
            f"{folder}: no space left on the disk to save step {step} ({detail}); {resume}. "
            "Free space there and run the same command again to resume."
        )

    def _check_space(self, manager: ocp.CheckpointManager, step: int, tree: Any) -> None:
        """Refuses a save that cannot fit before it starts (it would fail halfway, in
        orbax's threads): it needs the arrays' bytes, or the last checkpoint's size on disk
        if larger, with 10% and 1 MB to spare."""
        folder = Path(manager.directory)
        last = manager.latest_step()
        on_disk = _folder_bytes(folder / str(last)) if last is not None else 0
        needed = max(_nbytes(tree), on_disk) * 11 // 10 + (1 << 20)
        free = shutil.disk_usage(folder).free
        if free < needed:
            detail = f"it needs about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free"
            raise self._disk_full(folder, step, detail)

    @contextlib.contextmanager
    def _full_disk_is_a_user_error(self, folder: Path, step: int) -> Iterator[None]:
        """A write that found the disk full (this save's or a pending one) as DiskFull."""
        try:
            yield
        except DiskFull:  # already said, by a save inside this one
            raise
        except Exception as error:
            if not _is_disk_full(f"{error} {error.__cause__}"):
                raise
            raise self._disk_full(folder, step, "a write failed: no space left") from error

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(
        self,
        state: TrainState,
        data_iterator: grain.DatasetIterator,
        progress: dict | None = None,
    ) -> None:
        """Starts an asynchronous save of the state, the iterator's position and `progress`
        (a small JSON-able dict: the loop's running sums), returned by `restore`."""
        items = {
            "state": ocp.args.StandardSave(state),
            "data": grain.checkpoint.CheckpointSave(data_iterator),
        }
        if progress is not None:
            items["progress"] = ocp.args.JsonSave(progress)
        step = int(jax.device_get(state.step))
        with self._full_disk_is_a_user_error(self._folder, step):
            # a failed pending save speaks first, and the free space is measured when no
            # write is in flight
            self._latest.wait_until_finished()
            self._best.wait_until_finished()
            self._check_space(self._latest, step, state)
            self._latest.save(step, args=ocp.args.Composite(**items), force=True)

    def save_now(
        self,
        state: TrainState,
        data_iterator: grain.DatasetIterator,
        progress: dict | None = None,
    ) -> None:
        """Saves and returns once the checkpoint is complete on disk (the interrupt path); a
        step already checkpointed, or being checkpointed, is not saved again."""
        step = int(jax.device_get(state.step))
        with self._full_disk_is_a_user_error(self._folder, step):
            self._latest.wait_until_finished()
            if step in self._latest.all_steps():
                return
            self.save(state, data_iterator, progress)
            self._latest.wait_until_finished()

    def restore(
        self, target: TrainState, shardings: TrainState, data_iterator: grain.DatasetIterator
    ) -> tuple[TrainState, dict]:
        """The newest intact state, laid out as `shardings`, and the progress saved with it
        ({} for checkpoints written without one); data_iterator is moved to its position.

        Newer damaged checkpoints (files missing or unreadable) are moved aside to
        `<step>.damaged` with a warning each, so the run continues from the intact one and
        can checkpoint those steps again. A checkpoint of another model or dataset is
        refused (ValueError), as is a folder with no intact checkpoint.
        """
        damaged = []
        for step in sorted(self._latest.all_steps(), reverse=True):
            try:
                restored = self._restore_step(step, target, shardings, data_iterator)
            except Damaged as damage:
                damaged.append((step, str(damage)))
                continue
            self._set_aside(damaged, step)
            return restored
        raise UserError(none_intact_message(self._folder, damaged))

    def _restore_step(
        self,
        step: int,
        target: TrainState,
        shardings: TrainState,
        data_iterator: grain.DatasetIterator,
    ) -> tuple[TrainState, dict]:
        directory = self._folder / str(step)
        check_item(directory / "state")
        try:
            metadata = self._latest.item_metadata(step)
        except READ_ERRORS as error:  # e.g. a truncated _METADATA
            raise Damaged.unreadable(error) from error
        saved = metadata["state"]
        # Banks saved with another row count (on another device count) are read whole onto
        # every device, then re-padded and split again.
        refit = [
            name
            for name, bank in target.banks.items()
            if name in saved["banks"]
            and saved["banks"][name]["labels"].shape[0] != bank.labels.shape[0]
        ]
        abstract = _abstract(target, shardings)
        for name in refit:
            whole = NamedSharding(shardings.banks[name].labels.mesh, P())
            abstract.banks[name] = _saved_layout(abstract.banks[name], saved["banks"][name], whole)
        difference = _difference(abstract, saved)
        if difference is not None:
            raise UserError(_shape_mismatch_message(directory, difference))
        items = {
            "state": ocp.args.StandardRestore(abstract),
            "data": grain.checkpoint.CheckpointRestore(data_iterator),
        }
        if "progress" in metadata:
            items["progress"] = ocp.args.JsonRestore()
        restored = read_step(self._latest, step, **items)
        state = restored.state
        try:
            for name in refit:
                state.banks[name] = _refit(
                    state.banks[name], target.banks[name], shardings.banks[name]
                )
        except ValueError as error:
            raise UserError(_shape_mismatch_message(directory, error)) from error
        return state, restored.progress if "progress" in metadata else {}

    def _set_aside(self, damaged: list[tuple[int, str]], resumed: int) -> None:
        """Renames damaged step folders out of orbax's sight, keeping them for inspection."""
        for step, reason in damaged:
            source = self._folder / str(step)
            aside = source.with_name(f"{step}.damaged")
            copy = 1
            while aside.exists():
                aside, copy = source.with_name(f"{step}.damaged.{copy}"), copy + 1
            if jax.process_index() == 0:
                source.rename(aside)
            logging.warning(
                "%s: %s; moved aside to %s, resuming from %s",
                source,
                reason,
                aside.name,
                self._folder / str(resumed),
            )
        if damaged:
            multihost_utils.sync_global_devices("checkpoints set aside")
            self._latest.reload()

    def save_best(self, step: int, variables: Any, metrics: dict[str, float]) -> None:
        folder = Path(self._best.directory)
        with self._full_disk_is_a_user_error(folder, step):
            self._best.wait_until_finished()
            self._check_space(self._best, step, variables)
            if step in self._best.all_steps():  # kept before a stop; this evaluation replaces it
                self._best.delete(step)
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
        with self._full_disk_is_a_user_error(self._folder, self._latest.latest_step() or 0):
            self._latest.wait_until_finished()
            self._best.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and stops orbax's threads. A process that exits with a save
        in flight leaves them writing while the interpreter shuts down the executors and
        event loops they write through: each array then logs a traceback ("Event loop is
        closed", "cannot schedule new futures after shutdown")."""
        try:
            self._latest.close()
        finally:
            self._best.close()
