"""Backbone registry: build a model by name, or build it from an official PyTorch checkpoint.

Each backbone module provides `create(*, num_classes, dataset, num_person, **kwargs)` and a
`torch_key` KeyFn (see torch_io); registering a backbone is one line in _BACKBONES.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.models import ctrgcn, graphs, torch_io


@dataclass(frozen=True)
class Backbone:
    create: Callable[..., nn.Module]
    torch_key: torch_io.KeyFn


@dataclass(frozen=True)
class DatasetShape:
    """What a dataset fixes about the input (N, C, T, V, M); num_frames is the feeders' T."""

    graph: str
    num_person: int
    num_frames: int

    @property
    def num_joints(self) -> int:
        return graphs.num_joints(self.graph)


_BACKBONES = {"ctrgcn": Backbone(ctrgcn.create, ctrgcn.torch_key)}
DATASETS = {
    "ntu": DatasetShape(graph="ntu", num_person=2, num_frames=64),
    "ucla": DatasetShape(graph="ucla", num_person=1, num_frames=52),
}
MODEL_NAMES = tuple(_BACKBONES)


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(table)}")
    return table[name]


def create_model(name: str, *, num_classes: int, dataset: str, **kwargs) -> nn.Module:
    """A freshly configured (uninitialised) backbone for "ntu" or "ucla" inputs."""
    backbone = _lookup(_BACKBONES, "model", name)
    shape = _lookup(DATASETS, "dataset", dataset)
    return backbone.create(
        num_classes=num_classes, dataset=dataset, num_person=shape.num_person, **kwargs
    )


def example_input(model: nn.Module, dataset: str, batch: int = 1) -> jax.Array:
    """Zeros of the official input shape (N, C, T, V, M) for this model and dataset."""
    shape = _lookup(DATASETS, "dataset", dataset)
    return jnp.zeros(
        (batch, model.in_channels, shape.num_frames, shape.num_joints, shape.num_person)
    )


def from_torch_checkpoint(
    name: str, path: str | Path, *, num_classes: int, dataset: str, **kwargs
) -> tuple[nn.Module, dict]:
    """The backbone and its variables ({'params', 'batch_stats'}) from an official `.pt`."""
    model = create_model(name, num_classes=num_classes, dataset=dataset, **kwargs)
    template = jax.eval_shape(model.init, jax.random.key(0), example_input(model, dataset))
    state_dict = torch_io.load_state_dict(path)
    variables = torch_io.variables_from_state_dict(
        state_dict, template, _BACKBONES[name].torch_key, source=str(path)
    )
    return model, variables
