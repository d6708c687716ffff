"""Command-line flag parsing shared by train.py and eval.py."""

import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict

from csre_jax import sharding


def load_config_file(spec: str) -> ConfigDict:
    """configs/x.py[:arg] -> get_config(arg), as ml_collections' --config flag loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_file", path)
    if module_spec is None:
        raise SystemExit(f"error: --config={spec}: {path} is not a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _unknown_override(argv: list[str]) -> str | None:
    """A message for the first --config.<key> override that the config file lacks."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    config = load_config_file(spec)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[2:].split("=", 1)[0].split(".")[1:]
        node = config
        for depth, key in enumerate(path):
            if not isinstance(node, ConfigDict) or key not in node:
                parent = ".".join(["config", *path[:depth]])
                fields = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else ""
                return (
                    f"unknown config key {arg.split('=', 1)[0]}: {parent} (from {spec}) has no "
                    f"field {key!r}. Its fields: {fields}. Fix the spelling or add the field "
                    f"to the config file."
                )
            node = node[key]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that names an unknown --config.<key> override and exits."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as error:
        message = _unknown_override(argv)
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2) from error


def start(argv: list[str]) -> None:
    """What every entry point's main does first: refuse stray arguments, join a multi-host
    run before anything touches a device, and quiet orbax/grain (they log every save at
    INFO) unless --verbosity was given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sharding.initialize_distributed()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
