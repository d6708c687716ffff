"""The pure train and eval steps. They see global arrays; the mesh decides where they run."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from csre_jax.csre.loss import ContrastConfig, bank_loss
from csre_jax.training.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    contrast: ContrastConfig,
    contrast_weight: float,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """loss = CE + contrast_weight * mean over banks of each bank's InfoNCE (csre.md §5)."""

    def train_step(state: TrainState, batch: Batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        dropout_rng, bank_rng = jax.random.split(step_rng)
        labels, indices = batch["label"], batch["index"]

        def loss_fn(params):
            (logits, embeddings), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["x"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()
            metrics, banks, bank_losses = {"ce": ce}, {}, []
            for i, (name, embedding) in enumerate(sorted(embeddings.items())):
                loss, banks[name], bank_metrics = bank_loss(
                    embedding,
                    labels,
                    indices,
                    state.banks[name],
                    jax.random.fold_in(bank_rng, i),
                    contrast,
                )
                bank_losses.append(loss)
                metrics[f"loss_{name}"] = loss
                metrics[f"valid_{name}"] = bank_metrics["valid_anchors"]
            total = ce
            if bank_losses:
                total = total + contrast_weight * jnp.mean(jnp.stack(bank_losses))
            metrics["loss"] = total
            metrics["top1"] = jnp.mean(jnp.argmax(logits, -1) == labels)
            return total, (updates["batch_stats"], banks, metrics)

        grads, (batch_stats, banks, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
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


def make_eval_step(backbone: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
    """Logits of the backbone alone in eval mode: heads and banks play no part."""

    def eval_step(variables, x):
        return backbone.apply(variables, x, train=False).astype(jnp.float32)

    return eval_step
