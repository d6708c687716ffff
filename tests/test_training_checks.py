"""Training's checks that need no training run: bad configs and inputs are named clearly,
the README's configs load, bfloat16 compute keeps float32 state. (Apart from
tests/test_training.py's runs, so that the two halves can go to different test workers.)"""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from csre_jax.cli import load_config_file
from csre_jax.data.transforms import STREAMS
from csre_jax.training import loop
from tests.test_training import _run, tiny_config


def test_missing_dataset_names_the_file_and_the_fix(tmp_path):
    from configs import ctrgcn

    config = ctrgcn.get_config("ntu120,xset,bone")
    config.data.root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as error:
        loop.build(config)
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "NTU120_CSet.npz") in message
    assert "data.root" in message and "docs/data.md" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.nonexistent=1", "config (from configs/synthetic.py) has no field 'nonexistent'"),
        ("--config.csre.temprature=1", "config.csre (from configs/synthetic.py) has no field"),
    ],
)
def test_unknown_config_key_is_named(tmp_path, override, expected):
    result = _run("train.py", "--config=configs/synthetic.py", f"--workdir={tmp_path}", override)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "temperature" in result.stderr or "csre" in result.stderr  # lists the valid fields


def test_config_arguments_pick_benchmark_and_stream():
    from configs import ctrgcn

    config = ctrgcn.get_config("ntu120,xset,bone_motion")
    assert (config.data.name, config.data.benchmark) == ("ntu120", "xset")
    assert config.data.stream == "bone_motion"
    assert ctrgcn.get_config("bone_motion,xset,ntu120") == config  # any order
    data = ctrgcn.get_config(None).data
    assert (data.name, data.benchmark, data.stream) == ("ntu60", "xsub", "joint")
    with pytest.raises(ValueError, match="unknown config argument 'xset' for ntu60"):
        ctrgcn.get_config("xset")
    ucla = ctrgcn.get_config("ucla,bone")
    assert (ucla.data.name, ucla.data.stream, ucla.data.batch_size) == ("ucla", "bone", 16)
    assert "benchmark" not in ucla.data
    with pytest.raises(ValueError, match="unknown config argument 'xsub' for ucla"):
        ctrgcn.get_config("ucla,xsub")
    with pytest.raises(ValueError, match="unknown config argument 'nt60'"):
        ctrgcn.get_config("nt60")


def test_every_config_the_readme_and_docs_name_loads():
    """The README's and docs/' commands name configs as `--config=configs/<file>.py:<arg>`:
    each loads as train.py would load it, with the dataset, benchmark and stream its arg
    names; every page the README and the docs link exists."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page} links {link}, which does not exist"
    text = readme + "".join(page.read_text() for page in sorted((root / "docs").glob("*.md")))
    specs = sorted(set(re.findall(r"--config=(configs/\w+\.py(?::[\w,]+)?)", text)))
    assert len(specs) >= 8, specs
    for spec in specs:
        config = load_config_file(spec)
        tokens = spec.partition(":")[2].split(",")
        named = {config.data.name, config.data.get("benchmark"), config.data.stream}
        for token in tokens:
            if token in ("ntu60", "ntu120", "ucla", "xsub", "xset", "xview", *STREAMS):
                assert token in named or config.data.name == "synthetic", (spec, token)


def test_bfloat16_compute_keeps_float32_state_and_close_logits():
    """Mixed precision: the network runs in bf16, everything stored stays float32."""
    exps = {d: loop.build(tiny_config(compute_dtype=d)) for d in ("float32", "bfloat16")}
    state = loop.init_state(exps["bfloat16"])
    train_step, eval_step = loop.compile_steps(exps["bfloat16"], state)
    split = exps["bfloat16"].dataset.train
    batch = {"x": split.x[:16], "label": split.labels[:16], "index": np.arange(16, dtype=np.int32)}
    for _ in range(2):
        state, metrics = train_step(state, loop.sharding.global_batch(batch, exps["bfloat16"].mesh))
        assert np.isfinite(float(metrics["loss"]))
    stored = [state.params, state.batch_stats, state.opt_state, state.banks]
    floats = [a for a in jax.tree.leaves(stored) if jax.numpy.issubdtype(a.dtype, np.floating)]
    assert floats and all(a.dtype == np.float32 for a in floats)
    variables = state.backbone_variables()
    _, f32_eval = loop.compile_steps(exps["float32"], state)
    x = {"x": loop.sharding.global_batch({"x": split.x[:16]}, exps["bfloat16"].mesh)["x"]}
    low, full = np.asarray(eval_step(variables, x)[0]), np.asarray(f32_eval(variables, x)[0])
    assert not np.array_equal(low, full)  # it really ran in bf16
    assert np.abs(low - full).max() <= 0.05 * np.abs(full).max()


def test_a_non_finite_loss_names_the_step_and_the_samples_behind_it():
    """The first non-finite step of a logging window, and whether its batch's inputs were."""
    x = np.zeros((6, 3, 4, 25, 2), np.float32)
    x[4, 0, 2, 7, 0] = np.nan
    split = loop.Split(x, np.zeros(6, np.int32), 2)
    window = loop._RunningMeans()
    window.add(11, {"loss": np.float32(1.0)}, np.array([0, 1]))
    window.add(12, {"loss": np.float32(np.nan)}, np.array([3, 4]))
    with pytest.raises(FloatingPointError, match=r"at step 12: loss nan; .*not finite: .*\[4\]"):
        window.means(split)
    window = loop._RunningMeans()
    window.add(13, {"loss": np.float32(np.inf)}, np.array([0, 1]))
    with pytest.raises(FloatingPointError, match=r"step 13: loss inf; the batch's inputs were fin"):
        window.means(split)
