"""The pure train and eval steps. They see global arrays; the mesh decides where they run."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from csre_jax.csre.loss import ContrastConfig, bank_loss
from csre_jax.csre.model import parameters_in_loss
from csre_jax.models import extra_inputs
from csre_jax.training.state import TrainState

Batch = dict[str, jax.Array]


def cast_floats(tree, dtype: jnp.dtype):
    """Floating leaves of a pytree in `dtype`: the compute copy of float32 parameters and inputs.

    Mixed precision keeps parameters, optimizer state, BatchNorm statistics and banks in
    float32 and runs the network in `dtype`; gradients flow back through the cast in float32.
    """
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def model_inputs(backbone: nn.Module, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x and the backbone's extra keyword inputs from a batch, naming what a batch lacks."""
    missing = [k for k in ("x", *extra_inputs(backbone)) if k not in batch]
    if missing:
        raise KeyError(
            f"{type(backbone).__name__} needs the input(s) {missing} but the batch holds "
            f"{sorted(batch)}; for 'joint' set config.data.keep_joint=True"
        )
    return batch["x"], {k: batch[k] for k in extra_inputs(backbone)}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    contrast: ContrastConfig,
    contrast_weight: float,
    label_smoothing: float = 0.0,
    compute_dtype: jnp.dtype = jnp.float32,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """loss = CE + contrast_weight * mean over banks of each bank's InfoNCE (csre.md §5).

    label_smoothing spreads that much target mass uniformly over the classes (InfoGCN's 0.1).
    The network runs in compute_dtype (e.g. bfloat16); logits, embeddings, similarities,
    the losses and everything stored stay float32.
    """

    def train_step(state: TrainState, batch: Batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        dropout_rng, bank_rng = jax.random.split(step_rng)
        labels, indices = batch["label"], batch["index"]
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
            targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
            ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
            metrics, banks, bank_losses = {"ce": ce}, {}, []
            for i, (name, embedding) in enumerate(sorted(embeddings.items())):
                loss, banks[name], bank_metrics = bank_loss(
                    embedding.astype(jnp.float32),
                    labels,
                    indices,
                    state.banks[name],
                    jax.random.fold_in(bank_rng, i),
                    contrast,
                    batch.get(f"random_negatives_{name}"),
                )
                bank_losses.append(loss)
                metrics[f"loss_{name}"] = loss
                metrics[f"valid_{name}"] = bank_metrics["valid_anchors"]
            total = ce
            if bank_losses:
                total = total + contrast_weight * jnp.mean(jnp.stack(bank_losses))
            metrics["loss"] = total
            metrics["top1"] = jnp.mean(jnp.argmax(logits, -1) == labels)
            batch_stats = cast_floats(updates["batch_stats"], jnp.float32)
            return total, (batch_stats, banks, metrics)

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


def make_eval_step(
    backbone: nn.Module, compute_dtype: jnp.dtype = jnp.float32
) -> Callable[[dict, Batch], tuple[jax.Array, jax.Array]]:
    """(logits, pooled features) of the backbone alone in eval mode: heads and banks play no
    part. The features, the last map averaged over everything but its channels, are what
    the reports' t-SNE shows."""

    def eval_step(variables, batch):
        x, extras = cast_floats(model_inputs(backbone, batch), compute_dtype)
        variables = {**variables, "params": cast_floats(variables["params"], compute_dtype)}
        logits, feature_map = backbone.apply(
            variables, x, **extras, train=False, return_features=True
        )
        pooled = feature_map.mean(axis=tuple(range(1, feature_map.ndim - 1)))
        return logits.astype(jnp.float32), pooled.astype(jnp.float32)

    return eval_step
