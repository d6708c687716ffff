"""Exports a trained run's backbone for serving without csre_jax: StableHLO (jax + numpy) or
ONNX (onnxruntime), any batch size, with the run's model card beside it.

  python export.py --workdir=runs/mine --format=stablehlo --out=serving/mine.stablehlo
  python export.py --workdir=runs/mine --format=onnx --out=serving/mine.onnx
  python export.py --workdir=runs/mine --format=onnx --out=mine.onnx --checkpoint=latest

ONNX needs `pip install --no-deps -r requirements-export.txt`. docs/export.md shows how to
load each file and what its inputs are.
"""

from absl import flags

from csre_jax import cli
from csre_jax.cli import start
from csre_jax.export import CHECKPOINTS, FORMATS, export_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run folder.")
_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS), "What to write.")
_OUT = flags.DEFINE_string(
    "out", None, "The file to write; its .card.json (and .variables.npz) go beside it."
)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", list(CHECKPOINTS), "Which model.")


def main(argv):
    start(argv)
    for path in export_run(_WORKDIR.value, _FORMAT.value, _OUT.value, _CHECKPOINT.value):
        print(f"wrote {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "format", "out"])
    cli.run(main)
