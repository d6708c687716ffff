"""Layout copies in each backbone's compiled train step: how many, and how many bytes.

  python -m benchmarks.layout_copies                  # NTU shape, official widths, batch 16
  python -m benchmarks.layout_copies --batch=2 --models=ctrgcn,agcn

A layout copy is an op of the optimised HLO whose only work is moving data into another
order: a top-level copy or transpose, or a fusion made of nothing but transposes, copies and
reshapes. XLA:CPU's matmuls and convolutions want their operands in one order, so a model
whose activations are in another pays one of these on every contraction, forward and
backward. tests/test_custom_data.py bounds the count in each backbone's train step, so a
change that brings copies back shows.
"""

import argparse
import re
import types
from dataclasses import dataclass

import numpy as np

from benchmarks import speed
from csre_jax import models
from csre_jax.training import loop

# Ops that only move or re-view data; a fusion of these alone (with a transpose or copy among
# them) is a layout copy.
_MOVES = {"parameter", "transpose", "copy", "bitcast", "reshape", "broadcast", "slice"}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?(?P<name>%?[\w.\-]+) = (?P<shape>\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?) "
    r"(?P<op>[\w\-]+)\("
)
_DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1}


@dataclass(frozen=True)
class LayoutCopy:
    name: str
    shape: str
    bytes: int


def _computations(hlo: str) -> dict[str, list[tuple[str, str, str, list[str], str | None]]]:
    """Computation name -> its instructions (name, shape, opcode, operands, called computation)."""
    computations, current = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            words = line.split()
            current = computations.setdefault(words[1] if words[0] == "ENTRY" else words[0], [])
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            arguments = line[match.end() :].split(")", 1)[0]
            calls = re.search(r"calls=(%[\w.\-]+)", line)
            current.append(
                (
                    match["name"],
                    match["shape"],
                    match["op"],
                    re.findall(r"%[\w.\-]+", arguments),
                    calls[1] if calls else None,
                )
            )
    return computations


def _bytes(shape: str) -> int:
    match = re.match(r"(\w+)\[([\d,]*)\]", shape)
    if not match:
        return 0
    dims = [int(d) for d in match[2].split(",") if d]
    return _DTYPE_BYTES.get(match[1], 4) * int(np.prod(dims))


def _reorders(instruction, shapes: dict[str, str]) -> bool:
    """Whether the instruction changes the order of data in memory: a transpose, or a copy
    into another layout (a copy into the same layout only duplicates a buffer). `shapes`
    gives its operands' shapes with their layouts."""
    _, shape, op, operands, _ = instruction
    return op == "transpose" or (op == "copy" and shapes.get(operands[0], shape) != shape)


def layout_copies(hlo: str) -> list[LayoutCopy]:
    """The layout copies executed by an optimised HLO module (`compiled.as_text()`)."""
    computations = _computations(hlo)
    shapes = {name: shape for ops in computations.values() for name, shape, *_ in ops}
    fused = {calls for ops in computations.values() for *_, op, _, calls in ops if op == "fusion"}
    found = []
    for name, instructions in computations.items():
        if name in fused:
            continue
        for instruction in instructions:
            label, shape, op, _, calls = instruction
            body = computations.get(calls, []) if op == "fusion" else [instruction]
            only_moves = all(o in _MOVES for _, _, o, _, _ in body)
            if body and only_moves and any(_reorders(i, shapes) for i in body):
                found.append(LayoutCopy(label, shape, _bytes(shape)))
    return found


def train_step_hlo(name: str, *, batch: int, frames: int) -> str:
    """The optimised HLO of backbone `name`'s train step as training runs it without CSRE
    (benchmarks.speed's NTU-shaped experiment: official width, the config's optimizer)."""
    args = types.SimpleNamespace(batch=batch, frames=frames, slots=batch, classes=120)
    exp = speed.experiment(args, name, "none")
    state = speed.filled_state(exp)
    train_step, _ = loop.compile_steps(exp, state)
    batch_of_inputs = next(speed.random_batches(exp, args))
    return train_step.lower(state, batch_of_inputs).compile().as_text()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models.MODEL_NAMES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    print(f"batch {args.batch}, {args.frames} frames, NTU skeleton, official widths\n")
    print("| backbone | layout copies | MiB moved | largest |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        copies = layout_copies(train_step_hlo(name, batch=args.batch, frames=args.frames))
        largest = max(copies, key=lambda c: c.bytes, default=None)
        print(
            f"| {name} | {len(copies)} | {sum(c.bytes for c in copies) / 2**20:,.0f} | "
            f"{largest.shape if largest else '-'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
