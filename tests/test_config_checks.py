"""Configs fail before any data loads, naming the file or field and the fix: misspelt fields
in config files, bad values, model.kwargs overrides on every backbone, and eval.py's flags."""

import importlib
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import ctrgcn, synthetic
from csre_jax import models
from csre_jax.cli import ConfigFileError, load_config_file
from csre_jax.config_checks import ConfigError, backbone_knobs, check_config

REPO = Path(__file__).resolve().parents[1]
BACKBONE_CONFIGS = ("ctrgcn", "agcn", "hyperformer", "blockgcn", "hcn", "infogcn")


def _run(script: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The script's result and the CPU seconds it took (not wall time: the cores are shared)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _config_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "my_config.py"
    path.write_text(
        "from configs import common\n\n\n"
        "def get_config(arg=None):\n"
        "    config = common.base_config()\n"
        '    common.set_model(config, "hcn")\n'
        f"    {line}\n"
        "    return config\n"
    )
    return path


@pytest.mark.parametrize(
    ("line", "field", "guess"),
    [
        ("config.csre.temprature = 0.1", "temprature", "temperature"),
        ("config.data.batchsize = 8", "batchsize", "batch_size"),
        ("config.model.kwargs.hiden = 32", "hiden", "hidden"),
    ],
)
def test_a_typo_in_a_config_file_names_the_file_line_and_field(tmp_path, line, field, guess):
    path = _config_file(tmp_path, line)
    with pytest.raises(ConfigFileError) as error:
        load_config_file(str(path))
    assert f"{path}:7: {line}: the config has no field {field!r}" in str(error.value)
    assert f"did you mean {guess!r}?" in str(error.value)


def test_train_py_refuses_a_config_file_typo_in_one_line(tmp_path):
    path = _config_file(tmp_path, "config.csre.temprature = 0.1")
    result, _ = _run("train.py", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}:7: config.csre.temprature = 0.1: the config")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()


def _configs():
    for name in BACKBONE_CONFIGS:
        get_config = importlib.import_module(f"configs.{name}").get_config
        for arg in ("ntu60,xview", "ntu120,xset,bone_motion", "ucla", "custom", "ucla,tiny"):
            yield name, get_config(arg)
    yield "ctrgcn", synthetic.get_config()


def test_every_shipped_config_passes_the_checks_and_holds_its_backbone_settings():
    for name, config in _configs():
        check_config(config)
        assert set(config.model.kwargs) == set(backbone_knobs(name)), name
        assert config.is_locked and config.model.kwargs.is_locked, name


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("data.batch_size", -8, "must be positive"),
        ("data.batch_size", 0, "must be positive"),
        ("data.eval_batch_size", 0, "must be positive"),
        ("data.num_frames", 0, "must be positive"),
        ("num_epochs", 0, "must be positive"),
        ("csre.temperature", 0.0, "must be positive"),
        ("csre.num_positives", 0, "must be positive"),
        ("optim.base_lr", -0.1, "must be positive"),
        ("csre.bank_size", -1, "must be 0 or more"),
        ("optim.weight_decay", -1e-4, "must be 0 or more"),
        ("num_devices", -1, "must be 0 or more"),
        ("data.val_fraction", 1.0, r"must be in \[0, 1\)"),
        ("data.val_fraction", -0.1, r"must be in \[0, 1\)"),
        ("loss.label_smoothing", 1.5, r"must be in \[0, 1\)"),
        ("compute_dtype", "float8", "not one of float32, bfloat16"),
        ("compute_dtype", "float64", "JAX runs in 32 bits unless told otherwise; set JAX_ENAB"),
        ("data.name", "ntu61", "not one of synthetic, ntu60"),
        ("data.stream", "bones", "not one of joint, bone"),
        ("data.feeder_variant", "pyskl", "not one of ctrgcn, csre"),
        ("data.skeleton", "coco", "not one of ntu, ucla"),
        ("model.name", "ctrgnc", "not one of ctrgcn, agcn"),
        ("optim.name", "adamw", "not one of sgd, adam"),
        ("optim.lr_decay", "cosine", "not one of step, exponential"),
        ("csre.positive_sampling", "hardest", "not one of hard, random, hard\\+random"),
        ("csre.negative_sampling", "easy", "not one of hard, random, hard\\+random"),
        ("csre.banks", "spatial+temporl", "not a '\\+'-joined set of spatial, temporal, global"),
        ("csre.banks", "spatial+spatial", "not a '\\+'-joined set"),
        ("model.init_checkpoint", "nowhere/ctrgcn.pt", "no such file"),
        ("model.name", "hcn", r"model.name='hcn' has no such setting \(its settings: dropout, h"),
    ],
)
def test_a_bad_value_names_its_field_and_what_it_must_be(field, value, message):
    config = synthetic.get_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ConfigError, match=r"^1 config value\(s\) cannot be used") as error:
        check_config(config)
    assert error.match(rf"\n  ({re.escape(f'{field}={value!r}')}|model.kwargs.\w+): {message}")


def test_custom_data_values_are_checked():
    config = ctrgcn.get_config("custom")
    config.data.update(coords=4, num_person=0)
    with pytest.raises(ConfigError, match="^2 config") as error:
        check_config(config)
    assert error.match("data.coords=4: not one of 0, 2, 3") and error.match("data.num_person=0")


@pytest.mark.parametrize("value", ["-8", "0"])
def test_a_bad_batch_size_fails_before_any_data_loads(tmp_path, value):
    """Before: -8 failed after 35 s inside grain, 0 with a ZeroDivisionError."""
    workdir = tmp_path / "run"
    result, cpu_seconds = _run(
        "train.py",
        "--config=configs/synthetic.py",
        f"--workdir={workdir}",
        f"--config.data.batch_size={value}",
    )
    assert result.returncode == 2, result.stderr
    assert f"\n  data.batch_size={value}: must be positive" in result.stderr
    assert "Traceback" not in result.stderr and not workdir.exists()
    assert cpu_seconds < 5, cpu_seconds  # imports and the check: no data, no compilation


KNOBS = {
    "ctrgcn": ("base_channels", 8),
    "agcn": ("base_channels", 8),
    "hyperformer": ("num_heads", 3),
    "blockgcn": ("base_channels", 16),
    "hcn": ("hidden", 32),
    "infogcn": ("noise_ratio", 0.25),
}


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_model_kwargs_override_on_every_backbone_config(name):
    """The README's --config.model.kwargs.<setting>=<value> on each full config (today's
    configs/ctrgcn.py had an empty model.kwargs: 'has no field base_channels')."""
    knob, value = KNOBS[name]
    argv = ["prog", f"--config=configs/{name}.py", f"--config.model.kwargs.{knob}={value}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    check_config(config)
    backbone = models.create_model(name, num_classes=60, dataset="ntu", **config.model.kwargs)
    assert getattr(backbone, knob) == value


def test_a_misspelt_model_kwargs_override_is_named(tmp_path):
    result, _ = _run(
        "train.py",
        "--config=configs/ctrgcn.py",
        f"--workdir={tmp_path}",
        "--config.model.kwargs.base_chanels=8",
    )
    assert result.returncode == 2, result.stderr
    assert "config.model.kwargs (from configs/ctrgcn.py) has no field 'base_chanels'" in (
        result.stderr
    )
    assert "Its fields: base_channels, dropout, remat." in result.stderr


def test_eval_names_a_garbage_npz_and_its_flag(tmp_path):
    garbage = tmp_path / "scores.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    result, _ = _run("eval.py", f"--runs={garbage}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: flag --runs=")
    assert f"{garbage} is not an .npz archive" in result.stderr


def test_eval_names_an_unreadable_run_config(tmp_path):
    (tmp_path / "config.json").write_text('{"data": ')
    result, _ = _run("eval.py", f"--workdir={tmp_path}")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'config.json'}: not a readable run config")


def _two_score_files(tmp_path) -> str:
    """--runs of two .npz files: the weights flag is checked before they are read."""
    runs = []
    for name in ("j", "b"):
        np.savez(tmp_path / f"{name}.npz", logits=np.zeros((2, 3)))
        runs.append(str(tmp_path / f"{name}.npz"))
    return f"--runs={','.join(runs)}"


def test_eval_names_the_weights_flag(tmp_path):
    result, _ = _run("eval.py", _two_score_files(tmp_path), "--weights=1,abc")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: flag --weights=")
    assert "'abc' is not a number; give one weight per --runs entry" in result.stderr


def test_eval_refuses_weights_that_make_no_ensemble(tmp_path):
    result, _ = _run("eval.py", _two_score_files(tmp_path), "--weights=1,nan")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: flag --weights=") and line.endswith(
        ": a weight is not finite; give finite weights of 0 or more, not all 0, one per "
        "--runs entry (e.g. --weights=0.6,0.6,0.4,0.4)"
    )


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py"])
def test_help_exits_0(script):
    result, _ = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "--workdir" in result.stdout
