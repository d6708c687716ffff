"""The official optimisers and epoch-wise learning-rate schedules, built from config.optim.

The official recipes set the learning rate once per epoch, so every schedule is a
function of the epoch index floor(step / steps_per_epoch). The GCN recipes use SGD with
Nesterov momentum and a warm-up/step schedule; HCN's uses Adam with an exponential decay
and gradient-norm clipping.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from csre_jax.errors import UserError


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


def exponential_epoch_schedule(
    base_lr: float, *, steps_per_epoch: int, gamma: float
) -> optax.Schedule:
    """PyTorch's ExponentialLR stepped once per epoch: base * gamma ** epoch."""

    def schedule(step):
        return base_lr * gamma ** (jnp.asarray(step, jnp.int32) // steps_per_epoch)

    return schedule


def sgd(
    schedule: optax.Schedule, *, momentum: float, nesterov: bool, weight_decay: float
) -> optax.GradientTransformation:
    """PyTorch's SGD: decay is added to the gradient of every parameter before momentum."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
    )


def adam(schedule: optax.Schedule, *, weight_decay: float) -> optax.GradientTransformation:
    """PyTorch's Adam: weight decay is an L2 term added to the gradient (not AdamW)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(schedule))


def skip_absent_gradients(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """`inner`, leaving alone the parameters that took no part in this step's loss.

    PyTorch's optimizers skip a parameter whose gradient is None: no weight decay, no
    momentum, its buffers unchanged. A CSRE head is such a parameter while its bank has no
    valid anchor (the bank's loss is then a constant), where optax would still decay it and
    move it by its momentum. update(..., present=tree of booleans shaped like the parameters)
    gives absent leaves a zero update and their previous optimizer state; step counters and
    other non-parameter state advance as usual.
    """

    def update(updates, state, params=None, *, present=None, **extra_args):
        del extra_args
        new_updates, new_state = inner.update(updates, state, params)
        if present is None:
            return new_updates, new_state
        new_updates = jax.tree.map(
            lambda u, keep: jnp.where(keep, u, jnp.zeros_like(u)), new_updates, present
        )
        keep_new = optax.tree_utils.tree_map_params(
            inner, lambda _, keep: keep, new_state, present, transform_non_params=lambda _: True
        )
        new_state = jax.tree.map(
            lambda keep, new, old: jnp.where(keep, new, old), keep_new, new_state, state
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def from_config(
    optim: ConfigDict, steps_per_epoch: int
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """The schedule and optimiser a config names (optim.name, optim.lr_decay, optim.clip_norm)."""
    if optim.lr_decay == "step":
        schedule = epoch_schedule(
            optim.base_lr,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=optim.warmup_epochs,
            milestones=optim.milestones,
            decay=optim.decay,
        )
    elif optim.lr_decay == "exponential":
        schedule = exponential_epoch_schedule(
            optim.base_lr, steps_per_epoch=steps_per_epoch, gamma=optim.decay
        )
    else:
        raise UserError(f"optim.lr_decay={optim.lr_decay!r}: choose step or exponential")
    if optim.name == "sgd":
        tx = sgd(
            schedule,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
        )
    elif optim.name == "adam":
        tx = adam(schedule, weight_decay=optim.weight_decay)
    else:
        raise UserError(f"optim.name={optim.name!r}: choose sgd or adam")
    if optim.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), tx)
    return schedule, skip_absent_gradients(tx)
