"""A run folder's record of its config: checked before a resume may change anything.

A resume continues the saved run, so its config must be the saved one, except for the
settings that only say how long to train and how often to log, evaluate or checkpoint
(SAFE_CHANGES). Those are accepted and recorded in config_changes.jsonl; any other change
is refused with the differing keys, before a file of the run is touched; accepted ones are
recorded only once the resumed run has started with them.
"""

import json
from typing import Any

from ml_collections import ConfigDict

from csre_jax.errors import UserError
from csre_jax.fileio import atomic_write
from csre_jax.workdir import RunFolder

SAFE_CHANGES = (
    "num_epochs",
    "eval_every_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "num_devices",
    "data.eval_batch_size",
)
_ABSENT = "<absent>"


class ResumeRefused(UserError):
    """The config differs from the saved run's in a setting a resume must not change."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    if not tree and prefix:
        return {prefix: {}}
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else key)
    return out


def _as_saved(config: ConfigDict) -> dict:
    """The config as config.json holds it (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def config_changes(saved: dict, config: ConfigDict) -> dict[str, tuple[Any, Any]]:
    """key -> (saved value, new value) for every setting that differs."""
    old, new = _flat(saved), _flat(_as_saved(config))
    return {
        key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    }


def check_resume(config: ConfigDict, run: RunFolder, *, resuming: bool) -> dict:
    """The changes a resume brings (key -> (saved, new); empty for a new run), checked
    against the saved config without writing anything.

    Raises ResumeRefused when a setting outside SAFE_CHANGES differs."""
    if not (resuming and run.config.is_file()):
        return {}
    changes = config_changes(json.loads(run.config.read_text()), config)
    refused = {k: v for k, v in changes.items() if k not in SAFE_CHANGES}
    if refused:
        listed = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeRefused(
            f"{run.root} holds a run with another config; resuming would change\n{listed}\n"
            f"A resume may change only {', '.join(SAFE_CHANGES)}. Resume with the saved "
            f"settings ({run.config}) or train in a new --workdir."
        )
    return changes


def write_config(
    config: ConfigDict, run: RunFolder, *, resuming: bool, changes: dict, step: int = 0
) -> None:
    """Writes config.json once the run has started with it, and appends a resume's accepted
    changes (check_resume) to config_changes.jsonl with the step they apply from."""
    if resuming and not changes and run.config.is_file():
        return
    if changes:
        record = {"step": step, "changes": {k: list(v) for k, v in changes.items()}}
        with run.config_changes.open("a") as f:
            f.write(json.dumps(record) + "\n")
    with atomic_write(run.config) as tmp:
        tmp.write_text(config.to_json_best_effort(indent=2) + "\n")
