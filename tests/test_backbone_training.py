"""Every backbone trains with CSRE from its tiny config: finite losses that fall, banks used.

CTR-GCN's run is tests/test_training.py; BlockGCN (the extra 'joint' input) is also scored.
"""

import importlib

import jax
import numpy as np
import pytest

from csre_jax import models, sharding
from csre_jax.training import loop

STEPS = 6


def _filled_banks(state):
    """Banks as after the first epoch (every slot written), so every anchor has a loss."""
    banks = {}
    for i, (name, bank) in enumerate(sorted(state.banks.items())):
        features = jax.random.normal(jax.random.key(i), bank.features.shape)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        banks[name] = bank.replace(features=features, filled=bank.labels >= 0)
    return state.replace(banks=banks)


@pytest.mark.parametrize(
    ("model", "dataset"),
    [(name, "ntu60") for name in models.MODEL_NAMES if name != "ctrgcn"] + [("hcn", "ucla")],
)
def test_tiny_config_trains_with_csre(model, dataset):
    config = importlib.import_module(f"configs.{model}").get_config(f"{dataset},tiny")
    config.num_devices = 1
    config.model.kwargs.dropout = 0.0  # HCN's 0.5 would make six steps' losses a coin toss
    exp = loop.build(config)
    assert exp.config.model.name == model and exp.model.banks == ("spatial", "temporal")
    state = _filled_banks(loop.init_state(exp))
    train_step, eval_step = loop.compile_steps(exp, state)
    split = exp.dataset.train
    rows = np.arange(config.data.batch_size)
    transform = exp.dataset.train_transform
    samples = [transform(split.x[i], None) if transform else {"x": split.x[i]} for i in rows]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    batch |= {"label": split.labels[rows], "index": rows.astype(np.int32)}
    losses = []
    for _ in range(STEPS):  # the same batch: the loss must fall
        state, metrics = train_step(state, sharding.global_batch(batch, exp.mesh))
        metrics = jax.device_get(metrics)
        assert np.isfinite(metrics["loss"]), metrics
        assert metrics["loss_spatial"] > 0 and metrics["loss_temporal"] > 0
        assert metrics["valid_spatial"] > 0 and metrics["valid_temporal"] > 0
        losses.append(float(metrics["loss"]))
    # InfoGCN samples its latent with fresh noise each step: compare halves, not two steps
    assert np.mean(losses[STEPS // 2 :]) < np.mean(losses[: STEPS // 2]), losses
    written = np.asarray(state.banks["spatial"].features)[rows]
    np.testing.assert_allclose(np.linalg.norm(written, axis=1), 1.0, rtol=1e-5)
    if models.extra_inputs(exp.backbone):
        test = loop.evaluate(exp, eval_step, state.backbone_variables())
        assert test.logits.shape == (len(exp.dataset.test), exp.dataset.test.num_classes)
        assert np.isfinite(test.logits).all() and 0 <= test.top1 <= 100
        assert len(test.pooled_features) == len(exp.dataset.test)
