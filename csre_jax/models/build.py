"""The backbone a config's model section and a model card describe, built the same way for
training, evaluation and prediction, so a saved run rebuilds exactly what it trained."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from csre_jax import models
from csre_jax.errors import UserError
from csre_jax.model_card import ModelCard


def build_backbone(config: ConfigDict, card: ModelCard) -> nn.Module:
    """The configured backbone for the card's skeleton, input shape and classes."""
    backbone = models.create_model(
        config.model.name,
        num_classes=card.num_classes,
        layout=card.layout,
        num_person=card.num_person,
        in_channels=card.channels,
        **config.model.kwargs,
    )
    missing = set(models.extra_inputs(backbone)) - set(card.input_shapes)
    if missing:
        raise UserError(
            f"model.name={config.model.name!r} needs the input(s) {sorted(missing)}, which the "
            "data pipeline does not provide: set config.data.keep_joint=True"
        )
    return backbone


def backbone_shapes(backbone: nn.Module, card: ModelCard) -> dict:
    """The backbone's variables as shapes, without computing them: what a checkpoint of it
    is checked against."""
    sample = {k: jnp.zeros((1, *s), jnp.float32) for k, s in card.input_shapes.items()}
    return jax.eval_shape(lambda: backbone.init(jax.random.key(0), **sample, train=False))
