"""The values of an experiment config, checked before any data loads or anything compiles.

A bad value otherwise surfaces late and far from its cause: `data.batch_size=-8` after half a
minute inside grain, `=0` as a ZeroDivisionError. `check_config` names every bad field with
its value and the fix at once. Fields a config does not hold (an older run's config.json)
are not checked: the code that reads them has its own default.
"""

import dataclasses
import typing
from pathlib import Path

import jax
from ml_collections import ConfigDict

from csre_jax import models, selection
from csre_jax.csre.loss import SAMPLING_MODES
from csre_jax.csre.model import BANK_NAMES
from csre_jax.data.transforms import STREAMS, VARIANTS
from csre_jax.errors import UserError

# What csre_jax.data.datasets.load_dataset, optimizer.from_config and the train step dispatch on.
CHOICES = {
    "compute_dtype": ("float32", "bfloat16", "float64"),
    "select_on": ("auto", *selection.RULES),
    "data.name": ("synthetic", "ntu60", "ntu120", "ucla", "custom"),
    "data.stream": STREAMS,
    "data.feeder_variant": VARIANTS,
    "data.skeleton": ("ntu", "ucla"),
    "data.coords": (0, 2, 3),
    "model.name": models.MODEL_NAMES,
    "optim.name": ("sgd", "adam"),
    "optim.lr_decay": ("step", "exponential"),
    "csre.positive_sampling": SAMPLING_MODES,
    "csre.negative_sampling": SAMPLING_MODES,
}
POSITIVE = (
    "num_epochs",
    "data.batch_size",
    "data.eval_batch_size",
    "data.num_frames",
    "data.num_classes",
    "data.num_train",
    "data.num_test",
    "data.num_person",
    "csre.dim",
    "csre.reduction",
    "csre.temperature",
    "optim.base_lr",
    "optim.decay",
)
NON_NEGATIVE = (
    "num_devices",
    "eval_every_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "data.val_seed",
    "csre.weight",
    "csre.bank_size",
    "optim.weight_decay",
    "optim.warmup_epochs",
    "optim.clip_norm",
)
BELOW_ONE = ("data.val_fraction", "loss.label_smoothing", "optim.momentum")  # in [0, 1)
# Backbone fields that create_model fills from the data, and flax's own (parent, name).
NOT_KNOBS = ("num_classes", "layout", "num_person", "in_channels", "parent", "name")


class ConfigError(UserError):
    """One or more config fields hold values the run cannot use; the message lists each."""


def backbone_knobs(name: str) -> dict[str, typing.Any]:
    """Every setting of backbone `name` that model.kwargs may hold, at its default: the fields
    of the Flax module its registry `create` returns, less those the data decides."""
    module_class = typing.get_type_hints(models.backbone_module(name).create)["return"]
    return {
        field.name: field.default
        for field in dataclasses.fields(module_class)
        if field.name not in NOT_KNOBS and field.default is not dataclasses.MISSING
    }


def _present(config: ConfigDict, field: str) -> tuple[bool, typing.Any]:
    node = config
    for key in field.split("."):
        if not isinstance(node, ConfigDict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _problems(config: ConfigDict) -> list[str]:
    problems = []
    for field, choices in CHOICES.items():
        present, value = _present(config, field)
        if present and value not in choices:
            options = ", ".join(map(str, choices))
            problems.append(f"{field}={value!r}: not one of {options}")
    for fields, ok, rule in (
        (POSITIVE, lambda v: v > 0, "must be positive"),
        (NON_NEGATIVE, lambda v: v >= 0, "must be 0 or more"),
        (BELOW_ONE, lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ):
        for field in fields:
            present, value = _present(config, field)
            if present and not ok(value):
                problems.append(f"{field}={value!r}: {rule}")
    if _present(config, "select_on")[1] == "val" and not _present(config, "data.val_fraction")[1]:
        problems.append(
            "select_on='val': needs a held-out validation split; set data.val_fraction "
            "(e.g. 0.05), or select_on='last'"
        )
    if _present(config, "compute_dtype")[1] == "float64" and not jax.config.jax_enable_x64:
        problems.append(
            "compute_dtype='float64': JAX runs in 32 bits unless told otherwise; set "
            "JAX_ENABLE_X64=1 in the environment, or use float32"
        )
    return problems + _sampling_problems(config) + _csre_problems(config) + _model_problems(config)


def _sampling_problems(config: ConfigDict) -> list[str]:
    """Positive counts; custom data also takes 0, which follows its training set (the
    default there, resolved once the labels load: csre/sampling.py)."""
    problems = []
    custom = _present(config, "data.name")[1] == "custom"
    for field in ("csre.num_positives", "csre.num_negatives"):
        present, value = _present(config, field)
        if present and (value < 0 or not value and not custom):
            rule = "must be 0 (follow the training set) or more" if custom else "must be positive"
            problems.append(f"{field}={value!r}: {rule}")
    return problems


def _csre_problems(config: ConfigDict) -> list[str]:
    present, banks = _present(config, "csre.banks")
    if not present or banks in ("", "none"):
        return []
    names = banks.split("+")
    if set(names) <= set(BANK_NAMES) and len(set(names)) == len(names):
        return []
    return [
        f"csre.banks={banks!r}: not a '+'-joined set of {', '.join(BANK_NAMES)} "
        "(e.g. 'spatial+temporal'), nor 'none'"
    ]


def _model_problems(config: ConfigDict) -> list[str]:
    problems = []
    present, name = _present(config, "model.name")
    _, kwargs = _present(config, "model.kwargs")
    if present and name in models.MODEL_NAMES and isinstance(kwargs, ConfigDict):
        knobs = backbone_knobs(name)
        for key in sorted(set(kwargs) - set(knobs)):
            problems.append(
                f"model.kwargs.{key}: model.name={name!r} has no such setting (its settings: "
                f"{', '.join(sorted(knobs))}); train {name} from configs/{name}.py, whose "
                "model.kwargs are its own, or give model.kwargs only its settings"
            )
    present, checkpoint = _present(config, "model.init_checkpoint")
    if present and checkpoint and not Path(checkpoint).expanduser().is_file():
        problems.append(f"model.init_checkpoint={checkpoint!r}: no such file")
    return problems


def check_config(config: ConfigDict) -> None:
    """Raises ConfigError listing every bad field, its value and the fix; run it on the final
    config (overrides applied) before loading data."""
    problems = _problems(config)
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise ConfigError(
            f"{len(problems)} config value(s) cannot be used; set each in the config file or "
            f"with --config.<field>=<value>:\n{lines}"
        )
