"""Joining a multi-host run: train.py and eval.py call `initialize()` before touching devices.

Every process of a run executes the same program on its own devices; jax.distributed connects
them so one jitted step spans all of them (parallel.py) and orbax writes one checkpoint.
It starts when the environment asks for it:

- explicitly: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID (any
  launcher; the first is jax's own variable, the other two are passed on);
- SLURM: srun with more than one task (jax reads the node list, task count and rank);
- a Cloud TPU VM: jax asks the TPU metadata server for the slice's hosts (one host: one
  process).

Anywhere else it does nothing, so a single machine never waits for peers.
"""

import os

import jax
from absl import logging


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


def initialize() -> None:
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
