"""Trains a few steps of a config on meshes of several sizes; the multi-device tests run it.

XLA_FLAGS (emulated devices) and jax.distributed must be set up before jax starts, so the
tests start this in fresh processes:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_run.py \
      --output=out.npz --workdir=w --runs=1,8:save,2:resume [--config.data.num_train=60]

Each run of --runs is `devices[:save|:resume]`: train --steps steps on that many devices
(0: all, across processes), saving a checkpoint after --save_after steps, or resuming from
it. The .npz holds per run r: r/metrics/<name> (per step), r/state/<leaf> and
r/state_checksum/<leaf> at the end, the same as r/saved_state... after --save_after steps
and r/initial_state... before the first step (runs from scratch), r/bank_rows/<leaf> (all
rows, then the rows of each local device), and the compiled step's HLO is written to
<workdir>/train_step_<devices>.hlo. Only process 0 writes.
"""

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from csre_jax import sharding
from csre_jax.csre.bank import create_bank, write
from csre_jax.csre.loss import ContrastConfig, bank_loss, normalize
from csre_jax.training import loop
from csre_jax.training.checkpoint import Checkpointer
from csre_jax.training.state import state_sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ctrgcn.py:tiny", "Config.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and HLO dumps.", required=True)
_RUNS = flags.DEFINE_list("runs", ["0"], "devices[:save|:resume] per run, in order.")
_STEPS = flags.DEFINE_integer("steps", 4, "Train steps of every run.")
_SAVE_AFTER = flags.DEFINE_integer("save_after", 2, "Step of the checkpoint.")
_CHECK_LOSS = flags.DEFINE_bool("check_loss", False, "Also bank_loss alone on 1 and all devices.")


def _host(x: jax.Array) -> np.ndarray:
    """A full host copy of a replicated or (on one process) sharded array."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def train(config, devices: int, mode: str, workdir: Path) -> dict[str, np.ndarray]:
    config = copy.deepcopy(config)
    config.num_devices = devices
    exp = loop.build(config)
    state = loop.init_state(exp)
    train_step, _ = loop.compile_steps(exp, state)
    batches = loop.train_batches(exp)
    checkpointer = Checkpointer(workdir / "run")
    if mode == "resume":
        state, _ = checkpointer.restore(state, state_sharding(state, exp.mesh), batches)
    compiled, history, out = None, [], {}
    snapshots = {0: "initial_state", _SAVE_AFTER.value: "saved_state"}
    for step in range(int(state.step), _STEPS.value):
        if step in snapshots:
            out |= _snapshot(state, snapshots[step])
        batch = sharding.global_batch(next(batches), exp.mesh)
        if compiled is None:  # the executable that runs is the one whose HLO is checked
            compiled = train_step.lower(state, batch).compile()
            if jax.process_index() == 0:
                (workdir / f"train_step_{devices}.hlo").write_text(compiled.as_text())
        state, metrics = compiled(state, batch)
        history.append(jax.device_get(metrics))
        if mode == "save" and step + 1 == _SAVE_AFTER.value:
            checkpointer.save(state, batches)
    checkpointer.wait()
    checkpointer.close()
    out |= {f"metrics/{k}": np.array([m[k] for m in history]) for k in history[0]}
    out["devices"] = np.array(exp.mesh.size)
    for path, x in jax.tree_util.tree_leaves_with_path(state.banks):
        rows = [s.data.shape[0] for s in sorted(x.addressable_shards, key=lambda s: s.device.id)]
        out[f"bank_rows/{jax.tree_util.keystr(path)}"] = np.array([x.shape[0], *rows])
    return out | _snapshot(state, "state")


def _checksum(x: jax.Array) -> jax.Array:
    """(sum x, sum x * w) in float32: signed, so a flipped sign shows, and weighted by position
    (w: a fixed hash of the flat index, exact in float32, in [-0.5, 0.5)), so moved values
    show."""
    x = x.astype(jnp.float32)
    index = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
    w = (index * jnp.uint32(2654435761) >> 8).astype(jnp.float32) / 2**24 - 0.5
    return jnp.stack([x.sum(), (x * w).sum()])


def _snapshot(state, prefix: str) -> dict[str, np.ndarray]:
    """Checksums (_checksum) of every leaf, and (on one process) the leaves themselves."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    numeric = [(p, x) for p, x in leaves if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
    sums = jax.jit(lambda xs: [_checksum(x) for x in xs])
    out = {
        f"{prefix}_checksum/{jax.tree_util.keystr(p)}": _host(total)
        for (p, _), total in zip(numeric, sums([x for _, x in numeric]), strict=True)
    }
    if jax.process_count() == 1:
        out |= {f"{prefix}/{jax.tree_util.keystr(p)}": _host(x) for p, x in leaves}
    return out


def check_loss() -> dict[str, np.ndarray]:
    """bank_loss and its gradient against a part-filled bank, on one device and on all."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 100).astype(np.int32)
    bank = create_bank(labels, 32, pad_to_multiple=jax.device_count())
    rows = normalize(jnp.asarray(rng.normal(size=(90, 32)), jnp.float32))
    bank = write(bank, jnp.arange(90), rows)
    features = jnp.asarray(rng.normal(size=(8, 32)), jnp.float32)
    indices = jnp.asarray(rng.choice(100, 8, replace=False).astype(np.int32))
    config = ContrastConfig(4, 8, 0.8, "hard+random", "hard+random")

    def loss(features, bank, key):
        return bank_loss(features, labels[indices], indices, bank, key, config)[0]

    out = {}
    for devices in (1, jax.device_count()):
        mesh = sharding.make_mesh(devices)
        args = [(features, P("data")), (bank, P("data")), (jax.random.key(0), P())]
        placed = [jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in args]
        value, grad = jax.jit(jax.value_and_grad(loss))(*placed)
        out |= {
            f"check_loss/{devices}/loss": _host(value),
            f"check_loss/{devices}/grad": _host(grad),
        }
    return out


def main(argv):
    del argv
    sharding.initialize_distributed()
    workdir = Path(_WORKDIR.value)
    results = check_loss() if _CHECK_LOSS.value else {}
    for run in _RUNS.value:
        devices, _, mode = run.partition(":")
        for key, value in train(_CONFIG.value, int(devices), mode, workdir).items():
            results[f"{run}/{key}"] = value
    if jax.process_index() == 0:
        np.savez(_OUTPUT.value, **results)


if __name__ == "__main__":
    app.run(main)
