"""Backbone registry: build a model by name, or build it from an official PyTorch checkpoint.

Each backbone lives in `csre_jax/models/<name>.py` and provides
`create(*, num_classes, dataset, num_person, **kwargs)` and a `torch_key` KeyFn (see
torch_io). A backbone that needs more than the stream tensor x declares the names of its
extra keyword inputs in the class attribute `extra_inputs` (BlockGCN: the absolute joints).
"""

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.models import graphs, torch_io

MODEL_NAMES = ("ctrgcn", "agcn", "hyperformer", "blockgcn", "hcn", "infogcn")
# Heads a checkpoint may carry besides the backbone; the backbone alone ignores them
# (CSRE's `std.*`, the STFD head, is training-only).
TRAINING_ONLY_PREFIXES = ("std.",)


@dataclass(frozen=True)
class DatasetShape:
    """What a dataset fixes about the input (N, C, T, V, M); num_frames is the feeders' T."""

    graph: str
    num_person: int
    num_frames: int

    @property
    def num_joints(self) -> int:
        return graphs.num_joints(self.graph)


DATASETS = {
    "ntu": DatasetShape(graph="ntu", num_person=2, num_frames=64),
    "ucla": DatasetShape(graph="ucla", num_person=1, num_frames=52),
}


def _lookup(table, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(table)}")
    return table[name] if isinstance(table, dict) else name


def backbone_module(name: str) -> ModuleType:
    """The module that implements backbone `name` (imported on first use)."""
    return importlib.import_module(f"csre_jax.models.{_lookup(MODEL_NAMES, 'model', name)}")


def create_model(name: str, *, num_classes: int, dataset: str, **kwargs) -> nn.Module:
    """A freshly configured (uninitialised) backbone for "ntu" or "ucla" inputs."""
    shape = _lookup(DATASETS, "dataset", dataset)
    return backbone_module(name).create(
        num_classes=num_classes, dataset=dataset, num_person=shape.num_person, **kwargs
    )


def extra_inputs(model: nn.Module) -> tuple[str, ...]:
    """Keyword inputs the backbone needs besides x, e.g. ('joint',) for BlockGCN."""
    return tuple(getattr(type(model), "extra_inputs", ()))


def model_inputs(model: nn.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """x and the backbone's extra keyword inputs from a batch, naming what a batch lacks."""
    missing = [k for k in ("x", *extra_inputs(model)) if k not in batch]
    if missing:
        raise KeyError(
            f"{type(model).__name__} needs the input(s) {missing} but the batch holds "
            f"{sorted(batch)}; for 'joint' set config.data.keep_joint=True"
        )
    return batch["x"], {k: batch[k] for k in extra_inputs(model)}


def cast_floats(tree, dtype: jnp.dtype):
    """Floating leaves of a pytree in `dtype`: the compute copy of float32 parameters and inputs.

    Mixed precision keeps parameters, optimizer state, BatchNorm statistics and banks in
    float32 and runs the network in `dtype`; gradients flow back through the cast in float32.
    """
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def example_inputs(model: nn.Module, dataset: str, batch: int = 1) -> dict[str, jax.Array]:
    """Zeros of the official input shapes, as keyword arguments: x (N, C, T, V, M) and any
    extra input (3 coordinate channels)."""
    shape = _lookup(DATASETS, "dataset", dataset)
    dims = (shape.num_frames, shape.num_joints, shape.num_person)
    inputs = {"x": jnp.zeros((batch, model.in_channels, *dims))}
    return inputs | {name: jnp.zeros((batch, 3, *dims)) for name in extra_inputs(model)}


def from_torch_checkpoint(
    name: str, path: str | Path, *, num_classes: int, dataset: str, **kwargs
) -> tuple[nn.Module, dict]:
    """The backbone and its variables ({'params', 'batch_stats'}) from an official `.pt`.

    Training-only heads in the file (CSRE's `std.*`) are left out: test time uses the
    backbone alone. csre_jax.csre.model loads them with the backbone for training.
    """
    model = create_model(name, num_classes=num_classes, dataset=dataset, **kwargs)
    template = jax.eval_shape(model.init, jax.random.key(0), **example_inputs(model, dataset))
    state_dict = {
        key: value
        for key, value in torch_io.load_state_dict(path).items()
        if not key.startswith(TRAINING_ONLY_PREFIXES)
    }
    variables = torch_io.variables_from_state_dict(
        state_dict, template, backbone_module(name).torch_key, source=str(path)
    )
    return model, variables
