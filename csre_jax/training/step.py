"""The pure train step. It sees global arrays; the mesh decides where it runs."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from csre_jax.csre.loss import ContrastConfig
from csre_jax.csre.model import parameters_in_loss
from csre_jax.csre.objective import objective
from csre_jax.models import cast_floats, model_inputs
from csre_jax.training.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(
    *,
    model: nn.Module,
    tx: optax.GradientTransformationExtraArgs,
    schedule: optax.Schedule,
    contrast: ContrastConfig,
    contrast_weight: float,
    label_smoothing: float = 0.0,
    compute_dtype: jnp.dtype = jnp.float32,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The step of csre.objective: forward in train mode, loss, gradient, optimizer update.

    The network runs in compute_dtype (e.g. bfloat16); logits, embeddings, similarities,
    the losses and everything stored keep the state's precision (float32, or float64 for the
    float64 replay of an official run). tx is told which parameters took part
    in the loss (a head whose bank had no valid anchor did not).
    """

    def train_step(state: TrainState, batch: Batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        dropout_rng, bank_rng = jax.random.split(step_rng)
        x, extras = cast_floats(model_inputs(model.backbone, batch), compute_dtype)

        def loss_fn(params):
            (logits, embeddings), updates = model.apply(
                {"params": cast_floats(params, compute_dtype), "batch_stats": state.batch_stats},
                x,
                **extras,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            loss, banks, metrics = objective(
                logits,
                embeddings,
                batch,
                state.banks,
                bank_rng,
                contrast=contrast,
                weight=contrast_weight,
                label_smoothing=label_smoothing,
            )
            # BatchNorm statistics keep the state's precision, whatever the network ran in
            batch_stats = jax.tree.map(
                lambda new, old: new.astype(old.dtype), updates["batch_stats"], state.batch_stats
            )
            return loss, (batch_stats, banks, metrics)

        grads, (batch_stats, banks, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        present = parameters_in_loss(
            state.params, {name: metrics[f"valid_{name}"] > 0 for name in banks}
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params, present=present)
        metrics["lr"] = schedule(state.step)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            banks=banks,
        )
        return new_state, metrics

    return train_step
