"""Checkpoints that fail cleanly: a damaged latest checkpoint falls back to the newest intact
one, a checkpoint of another model is refused, the progress record travels with the state,
and an exit with a save in flight finishes it quietly."""

import gc
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

from configs import hcn
from csre_jax.run_variables import restore_variables
from csre_jax.training import loop
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.state import state_sharding

PROGRESS = {"window": {"sums": {"loss": 2.5}, "count": 2}, "epoch": {"sums": {}, "count": 0}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny run folder with checkpoints at steps 4 (no progress record, as written before
    progress existed) and 8 (with one), one batch apart in the data, and a best model."""
    exp = loop.build(hcn.get_config("tiny"))  # few arrays: orbax reads it in a blink
    state = loop.init_state(exp)
    workdir = tmp_path_factory.mktemp("run")
    batches = loop.train_batches(exp)
    with Checkpointer(workdir) as checkpointer:
        checkpointer.save(state.replace(step=jnp.asarray(4, jnp.int32)), batches)
        first_batch = next(batches)["index"]
        checkpointer.save(state.replace(step=jnp.asarray(8, jnp.int32)), batches, PROGRESS)
        checkpointer.save_best(8, state.backbone_variables(), {"top1": 50.0, "epoch": 1})
    return exp, state, workdir, first_batch


@pytest.fixture
def run(saved, tmp_path):
    """A fresh copy of the saved run folder, for a test to damage."""
    exp, state, workdir, first_batch = saved
    shutil.copytree(workdir, tmp_path / "run")
    return exp, state, tmp_path / "run", first_batch


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _truncate_data_files(step: Path) -> None:
    for data in step.rglob("d/*"):
        _truncate(data)


DAMAGES = {
    "data files halved": (lambda folder: _truncate_data_files(folder / "8"), 8, 4),
    "_METADATA deleted": (lambda folder: (folder / "8" / "state" / "_METADATA").unlink(), 8, 4),
    "_METADATA truncated": (lambda folder: _truncate(folder / "8" / "state" / "_METADATA"), 8, 4),
    "iterator file deleted": (
        lambda folder: [file.unlink() for file in (folder / "8" / "data").glob("*.json")],
        8,
        4,
    ),
    "empty step folder": (lambda folder: (folder / "12").mkdir(), 12, 8),
}


def _restore(exp, state, workdir: Path, batches=None):
    batches = loop.train_batches(exp) if batches is None else batches
    with Checkpointer(workdir) as checkpointer:
        return checkpointer.restore(state, state_sharding(state, exp.mesh), batches)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(run, damage, caplog):
    exp, state, workdir, first_batch = run
    folder = workdir / "checkpoints"
    damage_folder, skipped, intact = DAMAGES[damage]
    damage_folder(folder)
    batches = loop.train_batches(exp)

    restored, progress = _restore(exp, state, workdir, batches)
    gc.collect()  # orbax reading a damaged array leaves tasks that log when collected

    assert int(restored.step) == intact
    assert progress == (PROGRESS if intact == 8 else {})  # step 4 was saved without one
    if intact == 4:  # the data position is the one saved with step 4
        np.testing.assert_array_equal(next(batches)["index"], first_batch)
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{folder / str(skipped)}: ") and "\n" not in warning
    assert warning.endswith(f"resuming from {folder / str(intact)}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The damaged folder is kept aside, out of the way of the step's next checkpoint.
    assert (folder / f"{skipped}.damaged").is_dir()
    with Checkpointer(workdir) as checkpointer:
        checkpointer.save_now(restored.replace(step=jnp.asarray(skipped)), batches)
    assert (folder / str(skipped) / "state" / "_METADATA").is_file()
    assert list((folder / str(skipped) / "data").glob("*.json"))


def test_damaged_arrays_are_found_before_orbax_reads_them(run, monkeypatch):
    """orbax gives up at the first unreadable array while its other reads are in flight, and
    those print a traceback each, at times that depend on the load: the damage must be found
    before orbax reads the step at all."""
    exp, state, workdir, _ = run
    read = []
    item_metadata = ocp.CheckpointManager.item_metadata
    monkeypatch.setattr(
        ocp.CheckpointManager,
        "item_metadata",
        lambda manager, step: read.append(step) or item_metadata(manager, step),
    )
    _truncate_data_files(workdir / "checkpoints" / "8")
    restored, _ = _restore(exp, state, workdir)
    assert int(restored.step) == 4 and read == [4]


def test_no_intact_checkpoint_is_one_message_naming_the_folder(run):
    exp, state, workdir, _ = run
    folder = workdir / "checkpoints"
    for step in ("4", "8"):
        (folder / step / "state" / "_METADATA").unlink()
    with pytest.raises(ValueError) as refused:
        _restore(exp, state, workdir)
    message = str(refused.value)
    assert message.startswith(f"{folder}: no intact checkpoint")
    assert "start a new --workdir" in message.lower() and f"delete {folder}" in message
    assert not list(folder.glob("*.damaged"))  # nothing is moved when nothing is resumed


def test_an_intact_checkpoint_of_another_model_is_refused_not_skipped(run):
    exp, state, workdir, _ = run
    wider = state.replace(
        params=jax.tree_util.tree_map_with_path(
            lambda path, x: (
                jnp.zeros((*x.shape[:-1], 2 * x.shape[-1]))
                if jax.tree_util.keystr(path).endswith("['fc8']['kernel']")
                else x
            ),
            state.params,
        )
    )
    with pytest.raises(ValueError, match=r"checkpoints/8: the checkpoint does not fit .*fc8/kern"):
        _restore(exp, wider, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "8"]


def test_save_now_is_complete_on_return_and_skips_a_saved_step(run):
    exp, state, workdir, _ = run
    batches = loop.train_batches(exp)
    with Checkpointer(workdir) as checkpointer:
        checkpointer.save(state.replace(step=jnp.asarray(10)), batches)
        checkpointer.save_now(state.replace(step=jnp.asarray(10)), batches)  # pending: skipped
        checkpointer.save_now(state.replace(step=jnp.asarray(12)), batches, PROGRESS)
        assert (workdir / "checkpoints" / "12" / "state" / "_METADATA").is_file()
        assert checkpointer.latest_step() == 12


def test_eval_falls_back_in_checkpoints_and_names_a_damaged_best(run, caplog):
    exp, state, workdir, _ = run
    target = state.backbone_variables()
    _truncate_data_files(workdir / "checkpoints" / "8")
    _, step = restore_variables(workdir / "checkpoints", target)
    assert step == 4
    assert any("checkpoints/8: files unreadable" in w for w in _warnings(caplog))

    _truncate_data_files(workdir / "best" / "8")
    with pytest.raises(ValueError, match=r"best/8: the best model's checkpoint is damaged"):
        restore_variables(workdir / "best", target)


def test_eval_restores_the_newest_of_several_intact_checkpoints(run):
    """With two checkpoints the newest intact one is also the oldest: only a third, damaged
    on top of two intact ones, tells a newest-first fallback from an oldest-first one."""
    exp, state, workdir, _ = run
    folder = workdir / "checkpoints"
    with Checkpointer(workdir, keep=3) as checkpointer:  # keeps 4 and 8 beside 12
        checkpointer.save(state.replace(step=jnp.asarray(12, jnp.int32)), loop.train_batches(exp))
    assert sorted(int(p.name) for p in folder.iterdir()) == [4, 8, 12]
    _truncate_data_files(folder / "12")
    _, step = restore_variables(folder, state.backbone_variables())
    assert step == 8, f"restored step {step} of intact 4, 8 and damaged 12; should be 8"


def test_orbax_save_wait_warning_is_lowered_to_info(caplog):
    absl_logging.warning("Waiting for previous save to complete took %f seconds.", 3.0)
    absl_logging.warning("an unrelated warning")
    assert _warnings(caplog) == ["an unrelated warning"]


INTERRUPTED = """
    import sys
    import grain
    import jax
    import jax.numpy as jnp
    from csre_jax.training.checkpoint import Checkpointer
    from csre_jax.training.state import TrainState

    params = {f"w{i}": jnp.full((4_000_000,), i, jnp.float32) for i in range(8)}  # 128 MB
    state = TrainState(
        step=jnp.asarray(3), params=params, batch_stats={}, opt_state=(), banks={},
        rng=jax.random.key(0),
    )
    with Checkpointer(sys.argv[1]) as checkpointer:
        checkpointer.save(state, iter(grain.MapDataset.range(4).to_iter_dataset()))
        raise KeyboardInterrupt  # while the save is in flight
"""


def test_an_interrupt_during_a_save_finishes_it_quietly(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(INTERRUPTED))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr
    assert len(done.stderr.splitlines()) < 30, done.stderr[-3000:]
    assert "Event loop is closed" not in done.stderr
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["3"]
