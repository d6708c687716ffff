"""The device mesh and where each piece of the train state lives on it.

One 'data' axis over every device of every process: batches are split along it, the
memory banks are split by rows along it, everything else is replicated. The same code runs
on one device and on many.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax.training.state import TrainState

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first num_devices devices (all of them by default)."""
    available = jax.device_count()
    count = num_devices or available
    if count > available:
        raise ValueError(f"asked for {count} devices but only {available} are visible")
    # Auto axes let XLA place intermediates; the state and batch shardings below are explicit.
    return jax.make_mesh((count,), (DATA_AXIS,), (AxisType.Auto,), devices=jax.devices()[:count])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(state: TrainState, mesh: Mesh) -> TrainState:
    """Banks split by rows over the data axis; parameters, optimizer state, rng replicated."""
    rows = NamedSharding(mesh, P(DATA_AXIS))
    shardings = jax.tree.map(lambda _: replicated(mesh), state)
    return shardings.replace(banks=jax.tree.map(lambda _: rows, state.banks))


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
