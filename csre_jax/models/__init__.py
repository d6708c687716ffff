"""Backbone registry: build a model by name, or build it from an official PyTorch checkpoint.

Each backbone lives in `csre_jax/models/<name>.py` and provides
`create(*, num_classes, layout, num_person, **kwargs)` and a `torch_key` KeyFn (see
torch_io). Everything graph-dependent comes from the skeleton `Layout` (csre_jax.layouts).
A backbone that needs more than the stream tensor x declares the names of its extra keyword
inputs in the class attribute `extra_inputs` (BlockGCN: the absolute joints).
"""

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import flax.linen as nn
import jax
import jax.numpy as jnp

from csre_jax.errors import UserError
from csre_jax.layouts import Layout, load_layout
from csre_jax.models import torch_io

MODEL_NAMES = ("ctrgcn", "agcn", "hyperformer", "blockgcn", "hcn", "infogcn")
# Heads a checkpoint may carry besides the backbone; the backbone alone ignores them
# (CSRE's `std.*`, the STFD head, is training-only).
TRAINING_ONLY_PREFIXES = ("std.",)
# The input length when neither a dataset nor num_frames names one: NTU's window, which
# is also the official HCN checkpoints' (the GCNs' variables do not depend on it).
DEFAULT_FRAMES = 64


@dataclass(frozen=True)
class OfficialInput:
    """What an official dataset fixes about the input (N, C, T, V, M): the skeleton (V),
    the persons per sample (M) and the feeders' window (T)."""

    layout: Layout
    num_person: int
    num_frames: int


OFFICIAL_INPUTS = {
    "ntu": OfficialInput(load_layout("ntu"), num_person=2, num_frames=64),
    "ucla": OfficialInput(load_layout("ucla"), num_person=1, num_frames=52),
}


def _lookup(table, kind: str, name: str):
    if name not in table:
        raise UserError(f"unknown {kind} {name!r}; known: {', '.join(table)}")
    return table[name] if isinstance(table, dict) else name


def backbone_module(name: str) -> ModuleType:
    """The module that implements backbone `name` (imported on first use)."""
    return importlib.import_module(f"csre_jax.models.{_lookup(MODEL_NAMES, 'model', name)}")


def create_model(
    name: str,
    *,
    num_classes: int,
    layout: Layout | str | None = None,
    dataset: str | None = None,
    num_person: int | None = None,
    in_channels: int = 3,
    **kwargs,
) -> nn.Module:
    """A freshly configured (uninitialised) backbone.

    dataset "ntu" or "ucla" gives the official skeleton and persons (2 / 1); otherwise
    `layout` (a Layout, a built-in name or a JSON file) and `num_person` describe the input.
    A layout or num_person given with a dataset replaces the dataset's.
    """
    official = _lookup(OFFICIAL_INPUTS, "dataset", dataset) if dataset is not None else None
    if layout is None and official is None:
        raise ValueError("give the skeleton: layout=<Layout, name or .json> or dataset=ntu|ucla")
    if num_person is None and official is None:
        raise ValueError("give num_person (people per sample, the M of x) with layout=")
    return backbone_module(name).create(
        num_classes=num_classes,
        layout=load_layout(layout) if layout is not None else official.layout,
        num_person=num_person if num_person is not None else official.num_person,
        in_channels=in_channels,
        **kwargs,
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


def accumulation_dtype(dtype) -> jnp.dtype:
    """The precision that statistics, losses and stored state keep for a computation in
    `dtype`: float32 for bfloat16 or float32, float64 for float64 (the float64 replay of an
    official run keeps every tensor in float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def example_inputs(
    model: nn.Module, dataset: str | None = None, batch: int = 1, *, num_frames: int | None = None
) -> dict[str, jax.Array]:
    """Zeros shaped like the model's input, as keyword arguments: x (N, C, T, V, M) and any
    extra input (BlockGCN's joint, shaped like x).

    C, V and M are the model's (in_channels, its layout's joints, num_person); T is
    num_frames, else the dataset's official window (ntu 64, ucla 52), else DEFAULT_FRAMES.
    """
    if num_frames is None:
        official = _lookup(OFFICIAL_INPUTS, "dataset", dataset) if dataset is not None else None
        num_frames = official.num_frames if official is not None else DEFAULT_FRAMES
    shape = (batch, model.in_channels, num_frames, model.layout.num_joints, model.num_person)
    return {name: jnp.zeros(shape) for name in ("x", *extra_inputs(model))}


def from_torch_checkpoint(
    name: str,
    path: str | Path,
    *,
    num_classes: int,
    dataset: str | None = None,
    layout: Layout | str | None = None,
    num_person: int | None = None,
    num_frames: int | None = None,
    **kwargs,
) -> tuple[nn.Module, dict]:
    """The backbone and its variables ({'params', 'batch_stats'}) from an official `.pt`.

    The model is create_model's for the same arguments. num_frames is the input length the
    checkpoint was trained on where its variables depend on it (HCN's window: conv2 has one
    output channel per frame); it defaults as in example_inputs.
    Training-only heads in the file (CSRE's `std.*`) are left out: test time uses the
    backbone alone. csre_jax.csre.model loads them with the backbone for training.
    """
    model = create_model(
        name,
        num_classes=num_classes,
        dataset=dataset,
        layout=layout,
        num_person=num_person,
        **kwargs,
    )
    inputs = example_inputs(model, dataset, num_frames=num_frames)
    template = jax.eval_shape(model.init, jax.random.key(0), **inputs)
    state_dict = {
        key: value
        for key, value in torch_io.load_state_dict(path).items()
        if not key.startswith(TRAINING_ONLY_PREFIXES)
    }
    variables = torch_io.variables_from_state_dict(
        state_dict, template, backbone_module(name).torch_key, source=str(path)
    )
    return model, variables
