"""What train.py, eval.py, predict.py, study.py and the data commands share at the command line:
every mistake in the flags, the config, the data or the paths ends in one 'error:' line (or
one per bad value) and a non-zero exit instead of a traceback; --verbose adds the traceback.
Anything else is a bug and keeps its traceback."""

import importlib.util
import linecache
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import ConfigDict

from csre_jax import sharding
from csre_jax.config_checks import ConfigError, check_config
from csre_jax.errors import UserError, user_errors

# absl prints the usage and exits with status 1 after these; asking for help is no failure.
_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")
# ml_collections' refusal to add a field to a locked ConfigDict (configs/common.py locks them).
_LOCKED = re.compile(r'Key "(?P<key>[^"]+)" does not exist and cannot be added')
_DID_YOU_MEAN = re.compile(r'Did you mean "(?P<key>[^"]+)"')
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print its traceback as well.")


class ConfigFileError(UserError):
    """A config file that cannot be loaded; the message names the file, line and fix."""


def _where(error: BaseException) -> str:
    """'path:line: source' of the innermost frame outside ml_collections: the config file's
    line (or a configs/common.py setter's) that raised."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "ml_collections" not in f.filename
    ]
    frame = frames[-1]
    source = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{frame.filename}:{frame.lineno}: {source}"


def _describe(error: Exception, spec: str) -> str:
    if type(error) is ValueError:  # raised for the user, e.g. an unknown dataset in the arg
        return f"--config={spec}: {error}"
    locked = _LOCKED.search(str(error))
    if locked is None:
        return f"--config={spec}: {_where(error)}: {type(error).__name__}: {error}"
    guess = _DID_YOU_MEAN.search(str(error))
    hint = f" (did you mean {guess['key']!r}?)" if guess else ""
    return (
        f"{_where(error)}: the config has no field {locked['key']!r}{hint}. A config's fields "
        "are fixed by configs/common.py (base_config and the dataset and model setters): fix "
        "the spelling, or add the field there."
    )


def load_config_file(spec: str) -> ConfigDict:
    """configs/x.py[:arg] -> get_config(arg), as ml_collections' --config flag loads it;
    ConfigFileError naming the file and the line when that fails."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigFileError(f"--config={spec}: {path} does not exist")
    module_spec = importlib.util.spec_from_file_location("_config_file", path)
    if module_spec is None:
        raise ConfigFileError(f"--config={spec}: {path} is not a Python config file")
    try:
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as error:
        raise ConfigFileError(_describe(error, spec)) from error


def _config_spec(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _unknown_override(argv: list[str], config: ConfigDict, spec: str) -> str | None:
    """A message for the first --config.<key> override that the config file lacks."""
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
                    f"field {key!r}. Its fields: {fields}. Fix the spelling (configs/common.py "
                    "fixes the fields, the backbone those of model.kwargs)."
                )
            node = node[key]
    return None


def _config_error(argv: list[str]) -> str | None:
    """What is wrong with --config's file or its --config.<key> overrides, if anything."""
    spec = _config_spec(argv)
    if spec is None:
        return None
    try:
        config = load_config_file(spec)
    except ConfigFileError as error:
        return str(error)
    return _unknown_override(argv, config, spec)


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run with parse_flags and the user-error boundary around `main`."""

    def guarded(argv: list[str]) -> None:
        with user_errors(_VERBOSE.value):
            main(argv)

    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that names a bad flag, config file or --config.<key> override in one
    message and exits with status 2, and exits with 0 after printing --help."""
    try:
        remaining = flags.FLAGS(argv)
    except SystemExit:
        if any(arg.lstrip("-").partition("=")[0] in _HELP_FLAGS for arg in argv[1:]):
            raise SystemExit(0) from None
        raise
    except (flags.Error, AttributeError, KeyError) as error:
        message = _config_error(argv)
        if message is None and not isinstance(error, flags.Error):
            raise
        _fail(message or str(error))
    spec = _config_spec(argv)
    if spec is not None and not Path(spec.partition(":")[0]).is_file():
        _fail(_config_error(argv))  # config_flags defers this error to the config's first use
    return remaining


def exit_if_bad(config: ConfigDict) -> ConfigDict:
    """The config if check_config passes; otherwise its list of bad values, and exit 2."""
    try:
        check_config(config)
    except ConfigError as error:
        _fail(str(error))
    return config


def start(argv: list[str], config: ConfigDict | None = None) -> None:
    """What every entry point's main does first: refuse stray arguments, check the config's
    values (before any data loads), join a multi-host run before anything touches a device,
    and quiet orbax/grain (they log every save at INFO) unless --verbosity was given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if config is not None:
        exit_if_bad(config)
    sharding.initialize_distributed()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
