"""SGD with Nesterov momentum, weight decay and the epoch-wise warm-up/step schedule.

The recipes set the learning rate once per epoch (recipes.md §1), so the schedule is a step
function of the epoch index floor(step / steps_per_epoch).
"""

from collections.abc import Sequence

import jax.numpy as jnp
import optax


def epoch_schedule(
    base_lr: float,
    *,
    steps_per_epoch: int,
    warmup_epochs: int,
    milestones: Sequence[int],
    decay: float,
) -> optax.Schedule:
    """lr(e) = base * (e + 1) / warmup during warm-up, then base * decay ** #(milestones <= e)."""
    milestones = jnp.asarray(sorted(milestones), jnp.int32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        warm = base_lr * (epoch + 1) / max(warmup_epochs, 1)
        decayed = base_lr * decay ** jnp.sum(epoch >= milestones)
        return jnp.where(epoch < warmup_epochs, warm, decayed)

    return schedule


def sgd(
    schedule: optax.Schedule, *, momentum: float, nesterov: bool, weight_decay: float
) -> optax.GradientTransformation:
    """PyTorch's SGD: decay is added to the gradient of every parameter before momentum."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
    )
