"""Trains a backbone with CSRE from a config file.

  python train.py --config=configs/synthetic.py --workdir=runs/synthetic
  python train.py --config=configs/ctrgcn.py:ntu120,xset,bone --workdir=runs/ntu120_xset_bone \
      --config.csre.temperature=0.5

Re-running with the same --workdir resumes from its latest checkpoint, on any device count.
On a cluster, start one process per host (or per GPU) with the same flags; docs/clusters.md
says what starts jax.distributed.
"""

import sys

import jax
from absl import flags
from ml_collections import config_flags

from csre_jax import cli
from csre_jax.selection import describe
from csre_jax.training.interrupts import Stopped
from csre_jax.training.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and scores.")


def main(argv):
    cli.start(argv, _CONFIG.value)
    try:
        summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Stopped as stop:  # a signal: the checkpoint is written, say how to resume
        sys.stderr.write(f"\n{stop}\n")
        sys.exit(stop.exit_code)
    if summary and jax.process_index() == 0:
        print("\n".join(describe(summary)))
        print(f"scores of the selected model in {_WORKDIR.value}/scores/test_scores.npz")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
