"""The whole train state as one pytree: what a checkpoint must hold to resume exactly."""

from typing import Any

import jax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax import sharding
from csre_jax.csre.bank import MemoryBank
from csre_jax.run_variables import backbone_variables


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    banks: dict[str, MemoryBank]
    rng: jax.Array

    def backbone_variables(self) -> dict[str, Any]:
        return backbone_variables(self.params, self.batch_stats)


def state_sharding(state: TrainState, mesh: Mesh) -> TrainState:
    """Banks split by rows over the data axis; parameters, optimizer state, rng replicated."""
    rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    return shardings.replace(banks=jax.tree.map(lambda _: rows, state.banks))
