"""A trained backbone as a file that serves without csre_jax or flax: StableHLO through
jax.export (run with jax and numpy) or ONNX through jax2onnx (run with onnxruntime), both for
any batch size. Loaders and the files' contents: docs/export.md.

The StableHLO function takes (variables, inputs): the variables travel beside it as a flat
.npz ({'params/l1/...': array}), so that loading it needs no flax to rebuild their tree.
The ONNX model holds its weights and takes the inputs by name. Each artefact gets the run's
model card beside it, out + '.card.json': its inputs, classes, skeleton layout and, for a
run, what its test-time transform does to keypoints.
"""

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from ml_collections import ConfigDict

from csre_jax import models
from csre_jax.errors import UserError
from csre_jax.fileio import atomic_write
from csre_jax.model_card import ModelCard
from csre_jax.models.build import backbone_shapes, build_backbone
from csre_jax.models.layers import temporal_conv_2d
from csre_jax.run_variables import restore_variables
from csre_jax.workdir import BEST, RunFolder

PLATFORMS = ("cpu", "cuda")  # one StableHLO file that serves on either
VARIABLES_SUFFIX = ".variables.npz"
CARD_SUFFIX = ".card.json"
OUTPUT_NAME = "logits"
ONNX_BATCH = "B"  # the symbolic batch dimension's name in the ONNX graph
SEPARATOR = "/"  # between the keys of a flat variable name, 'params/l1/gcn/...'

ServingFunction = Callable[[dict[str, jax.Array], dict[str, jax.Array]], jax.Array]


def sidecar(out: Path, suffix: str) -> Path:
    """out + suffix: a file that travels with the artefact (out.variables.npz, out.card.json)."""
    return Path(out).with_name(Path(out).name + suffix)


def serving_inputs(backbone: nn.Module, card: ModelCard) -> dict[str, tuple[int, ...]]:
    """One sample's shape of each input the backbone takes, by name, x first."""
    names = ("x", *models.extra_inputs(backbone))
    missing = [name for name in names if name not in card.input_shapes]
    if missing:
        raise UserError(
            f"{type(backbone).__name__} takes the input(s) {missing}, which the model card "
            f"does not describe (it has {sorted(card.input_shapes)})"
        )
    return {name: tuple(card.input_shapes[name]) for name in names}


def flat_variables(variables: dict) -> dict[str, np.ndarray]:
    """{'params': {'l1': {...}}} -> {'params/l1/...': array}, the format the artefacts take."""
    flat = traverse_util.flatten_dict(variables, sep=SEPARATOR)
    return {name: np.asarray(value) for name, value in flat.items()}


def serving_function(backbone: nn.Module, card: ModelCard) -> ServingFunction:
    """(flat variables, {input name: (B, *shape) array}) -> logits (B, K) of the backbone in
    eval mode, in float32: what evaluation and the predictor run, in the artefacts' terms."""
    names = tuple(serving_inputs(backbone, card))

    def serve(variables: dict[str, jax.Array], inputs: dict[str, jax.Array]) -> jax.Array:
        tree = traverse_util.unflatten_dict(variables, sep=SEPARATOR)
        arrays = {name: jnp.asarray(inputs[name], jnp.float32) for name in names}
        logits = backbone.apply(tree, arrays.pop("x"), **arrays, train=False)
        return logits.astype(jnp.float32)

    return serve


def transform_record(data: ConfigDict, card: ModelCard) -> dict:
    """What a run's test-time transform makes of keypoints (M, T, V, coords) before the
    model sees them, in the terms of its config (csre_jax.predictor applies it)."""
    custom = data.name == "custom"
    coords = data.coords if custom else 3
    return {
        "dataset": data.name,
        "stream": data.stream,
        "feeder_variant": data.feeder_variant,
        "window": card.num_frames,
        "persons": card.num_person,
        "coords": coords,
        "use_score": bool(custom and coords == 2 and data.use_score),
    }


def check_writable(out: Path) -> None:
    """Raises, before any long work, the OSError that writing `out` would raise, naming it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out))
    try:
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}."):
            pass
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(out)) from error


def _write_card(
    out: Path, card: ModelCard, inputs: dict[str, tuple[int, ...]], data: ConfigDict | None
) -> Path:
    """out.card.json: the model card (ModelCard.load reads it) with the artefact's inputs
    and output, batch first, and the run's test-time transform when known."""
    record = card.to_json()
    record["inputs"] = {name: ["B", *shape] for name, shape in inputs.items()}
    record["output"] = {OUTPUT_NAME: ["B", card.num_classes]}
    if data is not None:
        record["test_transform"] = transform_record(data, card)
    path = sidecar(out, CARD_SUFFIX)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record) + "\n")
    return path


def export_stablehlo(
    backbone: nn.Module,
    variables: dict,
    card: ModelCard,
    out: Path,
    *,
    data: ConfigDict | None = None,
) -> list[Path]:
    """out: serving_function serialized by jax.export for CPU and CUDA with a symbolic batch;
    out.variables.npz: its flat variables (np.load, no pickle); out.card.json. `data`, the
    run's config.data, adds the test-time transform to the card. Returns the three paths."""
    out = Path(out)
    check_writable(out)
    flat = flat_variables(variables)
    inputs = serving_inputs(backbone, card)
    (batch,) = jax.export.symbolic_shape("b")
    specs = (
        {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in flat.items()},
        {name: jax.ShapeDtypeStruct((batch, *s), jnp.float32) for name, s in inputs.items()},
    )
    exported = jax.export.export(jax.jit(serving_function(backbone, card)), platforms=PLATFORMS)(
        *specs
    )
    with atomic_write(out) as tmp:
        tmp.write_bytes(exported.serialize())
    npz = sidecar(out, VARIABLES_SUFFIX)
    with atomic_write(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, **flat)
    return [out, npz, _write_card(out, card, inputs, data)]


class _HarmlessNotices(logging.Filter):
    """Drops what jax2onnx and onnx_ir log about nothing in this model: example plugins for
    libraries we do not install (equinox, dm_pix), and intermediate values left without a
    type annotation, which ONNX Runtime infers."""

    NOTICES = re.compile(
        r"Skipping (pkgutil )?import of jax2onnx\.plugins\..* No module named "
        r"'(equinox|dm_pix)'|The value type for .* is not known"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.NOTICES.match(record.getMessage())


NOISY_LOGGERS = ("jax2onnx.plugins.plugin_system", "onnx_ir.serde")


@contextlib.contextmanager
def _quiet_onnx_conversion() -> Iterator[None]:
    notices = _HarmlessNotices()
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    for logger in loggers:
        logger.addFilter(notices)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notices)


def _drop_unused_initializers(graph) -> set[str]:
    """Removes the initializers no node reads from an ONNX graph and its subgraphs (jax2onnx
    leaves some in loop bodies, and ONNX Runtime warns about each when it loads the model).
    Returns the names the graph reads."""
    used = {name for node in graph.node for name in node.input}
    used |= {output.name for output in graph.output}
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                used |= _drop_unused_initializers(subgraph)
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return used


def export_onnx(
    backbone: nn.Module,
    variables: dict,
    card: ModelCard,
    out: Path,
    *,
    data: ConfigDict | None = None,
) -> list[Path]:
    """out: the backbone through jax2onnx, weights inside, inputs named as the card's with a
    dynamic batch 'B', output 'logits'; out.card.json. Returns the two paths."""
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError as error:
        raise UserError(
            f"ONNX export needs jax2onnx ({error}): pip install --no-deps -r "
            "requirements-export.txt"
        ) from error
    out = Path(out)
    check_writable(out)
    flat = flat_variables(variables)
    inputs = serving_inputs(backbone, card)
    serve = serving_function(backbone, card)

    def graph(*arrays):
        return serve(flat, dict(zip(inputs, arrays, strict=True)))

    with _quiet_onnx_conversion(), temporal_conv_2d():
        model = to_onnx(
            graph,
            inputs=[(ONNX_BATCH, *shape) for shape in inputs.values()],
            model_name=type(backbone).__name__,
            input_names=list(inputs),
            output_names=[OUTPUT_NAME],
        )
    _drop_unused_initializers(model.graph)
    with atomic_write(out) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return [out, _write_card(out, card, inputs, data)]


EXPORTERS = {"stablehlo": export_stablehlo, "onnx": export_onnx}
FORMATS = tuple(EXPORTERS)
CHECKPOINTS = ("best", "latest")


def export_run(
    workdir: str | Path, fmt: str, out: str | Path, checkpoint: str = "best"
) -> list[Path]:
    """A train.py run's best (or 'latest') backbone exported as `fmt` to `out`; every check
    of the arguments comes before the model is built. Returns the paths written."""
    if fmt not in EXPORTERS:
        raise UserError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    run = RunFolder(workdir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.config}: not found; is {run.root} a train.py workdir?")
    folder = run.checkpoint_folder(checkpoint)
    if checkpoint == BEST and not any(p.name.isdigit() for p in folder.glob("*")):
        raise UserError(
            f"{folder}: no best model saved yet; export the latest train state instead "
            "(--checkpoint=latest), or train the run until its first evaluation"
        )
    check_writable(Path(out))
    config = ConfigDict(json.loads(run.config.read_text()))
    card = ModelCard.load(run.model_card)
    backbone = build_backbone(config, card)
    variables, _ = restore_variables(folder, backbone_shapes(backbone, card))
    return EXPORTERS[fmt](backbone, variables, card, Path(out), data=config.data)
