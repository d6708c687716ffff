"""Where arrays live: the device mesh, shardings, placement, and joining a multi-host run.

One 'data' axis over every device of every process: batches are split along it, the
memory banks are split by rows along it (training/state.py), everything else is
replicated. The same code runs on one device and on many.

Joining a multi-host run: train.py and eval.py call `initialize()` before touching devices.
Every process of a run executes the same program on its own devices; jax.distributed connects
them so one jitted step spans all of them and orbax writes one checkpoint. It starts when the
environment asks for it:

- explicitly: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID (any
  launcher; the first is jax's own variable, the other two are passed on);
- SLURM: srun with more than one task (jax reads the node list, task count and rank);
- a Cloud TPU VM: jax asks the TPU metadata server for the slice's hosts (one host: one
  process).

Anywhere else it does nothing, so a single machine never waits for peers.
"""

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from csre_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first num_devices devices (all of them by default)."""
    available = jax.device_count()
    count = num_devices or available
    if count > available:
        raise UserError(f"asked for {count} devices but only {available} are visible")
    # Auto axes let XLA place intermediates; the state and batch shardings below are explicit.
    return jax.make_mesh((count,), (DATA_AXIS,), (AxisType.Auto,), devices=jax.devices()[:count])


def mesh_for_config(config: ConfigDict) -> Mesh:
    """The mesh of config.num_devices devices (0: all), which must split every batch."""
    mesh = make_mesh(config.num_devices or None)
    for name in ("batch_size", "eval_batch_size"):
        if config.data[name] % mesh.size:
            raise UserError(
                f"data.{name}={config.data[name]} is not divisible by the {mesh.size} devices"
            )
    return mesh


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(tree, shardings):
    """jax.device_put onto the mesh, also across processes, where device_put refuses devices
    of other hosts: every process holds the same values and fills its own shards."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def place(x, sharding):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x)
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree, shardings)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows of a batch into one global array per key."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _slurm_tasks() -> int:
    """Tasks of this srun step (1 outside srun: a batch script alone is one process)."""
    if "SLURM_STEP_NODELIST" not in os.environ:
        return 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def _cloud_tpu_vm() -> bool:
    # jax's import-time TPU setup sets this where libtpu and TPU chips are present; jax has
    # no public flag for it.
    from jax._src import cloud_tpu_init

    return getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)


def initialize_distributed() -> None:
    """Starts jax.distributed if the environment describes a multi-process run."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
        jax.distributed.initialize(
            num_processes=None if count is None else int(count),
            process_id=None if index is None else int(index),
        )
    elif _slurm_tasks() > 1 or _cloud_tpu_vm():
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
