"""Shared test helpers: where the reference material lives, the official checkpoints run once."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# The tests are compile-bound (tiny models, a few steps each): without LLVM's optimisations
# XLA:CPU compiles in half the time, and nothing here is timed (benchmarks/ are). Set before
# jax starts; the subprocesses that tests launch inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"


# The modules that take minutes, longest first. With one file per worker at a time
# (pyproject's --dist=loadfile), starting them first keeps the short ones for the end,
# where they fill the other workers instead of one long file running alone.
SLOW_MODULES = (
    "test_training.py",
    "test_custom_data.py",
    "test_study.py",
    "test_multidevice.py",
    "test_replay.py",
    "test_distributed.py",
    "test_training_checks.py",
    "test_device_check.py",
    "test_bank_queue.py",
    "test_blockgcn.py",
)


def pytest_collection_modifyitems(items):
    """Slow modules first (SLOW_MODULES), each module's tests in their own order."""
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout. Without it the tests that compare with the official
    code skip on a developer's machine, and fail under CI (CI=true), where it must be."""
    if not SHARED.is_dir():
        message = f"reference material not found at {SHARED}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI runs every comparison with the official code")
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """Tests build the same tiny models repeatedly: reuse their compiled steps."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def max_rel_err(got, want) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


# The official NTU-60 checkpoints in shared/fixtures: backbone -> (file stem, registry kwargs).
# Each `<stem>_io.npz` holds the input x (plus any extra input, e.g. BlockGCN's joint), the
# official logits and block taps `tap_<layer>` (N*M, C, T, V).
OFFICIAL_CHECKPOINTS = {
    "ctrgcn": ("ctrgcn_ntu60", {}),
    "agcn": ("agcn_ntu60", {}),
    "hcn": ("hcn_ntu60", {}),
    "hyperformer": ("hyperformer_csre_ntu60", {}),  # the CSRE release: backbone + std.* head
    "blockgcn": ("blockgcn_ntu60", {}),
    "infogcn": ("infogcn_ntu60_k1", {"k": 1}),
}


@dataclass(frozen=True)
class OfficialRun:
    """An official checkpoint loaded through the registry and run once in eval mode."""

    ckpt: Path
    io: dict[str, np.ndarray]
    model: Any
    variables: dict
    apply: Callable  # apply(variables, x, **extra) -> ((logits, feats), {"intermediates": ...})
    logits: Any
    feats: Any
    intermediates: dict  # outputs of the top-level modules, channels-last

    def tap(self, layer: str):
        """The eval-mode output of top-level module `layer`, e.g. (N*M, T, V, C)."""
        (out,) = self.intermediates[layer]["__call__"]
        return out


def _top_level(module, method: str) -> bool:
    return method == "__call__" and len(module.scope.path) == 1


def _official_run(shared_dir: Path, name: str) -> OfficialRun:
    import jax

    import csre_jax.models as models

    stem, kwargs = OFFICIAL_CHECKPOINTS[name]
    ckpt = shared_dir / "fixtures" / f"{stem}.pt"
    io = dict(np.load(shared_dir / "fixtures" / f"{stem}_io.npz"))
    model, variables = models.from_torch_checkpoint(
        name, ckpt, num_classes=60, dataset="ntu", **kwargs
    )
    apply = jax.jit(
        lambda v, x, **extra: model.apply(
            v,
            x,
            **extra,
            return_features=True,
            capture_intermediates=_top_level,
            mutable=["intermediates"],
        )
    )
    extra = {key: io[key] for key in models.extra_inputs(model)}  # BlockGCN: joint
    (logits, feats), state = apply(variables, io["x"], **extra)
    return OfficialRun(ckpt, io, model, variables, apply, logits, feats, state["intermediates"])


@pytest.fixture(scope="session")
def official_run(shared_dir) -> Callable[[str], OfficialRun]:
    """official_run(name): backbone `name`'s official checkpoint (OFFICIAL_CHECKPOINTS) loaded
    and run on its fixture input, once per session however many test modules ask (one load
    and one compile per backbone)."""
    runs: dict[str, OfficialRun] = {}

    def get(name: str) -> OfficialRun:
        if name not in runs:
            runs[name] = _official_run(shared_dir, name)
        return runs[name]

    return get
