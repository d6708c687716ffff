"""The training-time model: a backbone plus the CSRE embedding heads.

Evaluation uses the backbone alone (params['backbone']): the heads and banks are removed.
"""

from pathlib import Path

import flax.linen as nn
import jax
from flax import traverse_util

from csre_jax.csre.heads import STFD, GlobalHead
from csre_jax.errors import UserError
from csre_jax.models import torch_io

# Which embedding each bank contrasts: the STFD branches, or the pooled global feature.
BANK_NAMES = ("spatial", "temporal", "global")
# The parameters (a path in params) that produce each bank's embedding.
BANK_HEADS = {
    "spatial": ("stfd", "spatial"),
    "temporal": ("stfd", "temporal"),
    "global": ("global_head",),
}


def parameters_in_loss(params: dict, bank_used: dict[str, jax.Array]) -> dict:
    """Booleans shaped like `params`: whether each parameter took part in this step's loss.

    A bank with no valid anchor contributes a constant 0, so its head gets no gradient at all
    (PyTorch's None gradient); bank_used maps each bank to whether it had a valid anchor.
    Everything else (the backbone) always takes part through the cross-entropy.
    """
    present = {}
    for path in traverse_util.flatten_dict(params):
        heads = [name for name, head in BANK_HEADS.items() if path[: len(head)] == head]
        present[path] = bank_used[heads[0]] if heads and heads[0] in bank_used else True
    return traverse_util.unflatten_dict(present)


class ContrastiveClassifier(nn.Module):
    """Returns (logits, {bank name: (N, dim) embedding}) for the banks switched on."""

    backbone: nn.Module
    banks: tuple[str, ...] = ("spatial", "temporal")
    dim: int = 256
    reduction: int = 8

    def __post_init__(self):
        unknown = set(self.banks) - set(BANK_NAMES)
        if unknown:
            raise UserError(f"unknown bank(s) {sorted(unknown)}: choose from {BANK_NAMES}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, **extra_inputs: jax.Array):
        """extra_inputs: what the backbone needs besides x (BlockGCN's joint)."""
        if not self.banks:
            return self.backbone(x, train=train, **extra_inputs), {}
        logits, feature_map = self.backbone(x, train=train, return_features=True, **extra_inputs)
        embeddings = {}
        stfd_branches = tuple(b for b in self.banks if b in ("spatial", "temporal"))
        if stfd_branches:
            embeddings |= STFD(self.dim, self.reduction, stfd_branches, name="stfd")(feature_map)
        if "global" in self.banks:
            embeddings["global"] = GlobalHead(self.dim, name="global_head")(feature_map)
        return logits, embeddings


# The official head's names (std.* in the CSRE release's model/Hyperformer.py): the spatial
# branch is std.conv1 -> std.convs, the temporal branch std.conv2 -> std.convt.
_STFD_TORCH_LAYERS = {
    ("spatial", "reduce"): ("std.conv1", "conv1d"),
    ("spatial", "project"): ("std.convs", "linear"),
    ("temporal", "reduce"): ("std.conv2", "conv1d"),
    ("temporal", "project"): ("std.convt", "linear"),
}


def torch_key_fn(backbone_key: torch_io.KeyFn) -> torch_io.KeyFn:
    """State_dict keys of the whole training model, for loading or exporting a CSRE checkpoint.

    Backbone variables keep the backbone's official keys and STFD's are the released `std.*`
    ones. The global head has no official counterpart; it is written `global_head.project.*`.
    """

    def key_fn(collection: str, path: tuple[str, ...], ndim: int) -> tuple[str, str]:
        if path[0] == "backbone":
            return backbone_key(collection, path[1:], ndim)
        is_kernel = path[-1] == "kernel"
        if path[0] == "stfd":
            prefix, kind = _STFD_TORCH_LAYERS[path[1:3]]
            return f"{prefix}.{'weight' if is_kernel else path[-1]}", kind if is_kernel else "raw"
        return torch_io.default_torch_key(collection, path), "linear" if is_kernel else "raw"

    return key_fn


def load_torch_checkpoint(variables: dict, path: str | Path, backbone_key: torch_io.KeyFn) -> dict:
    """`variables` of a ContrastiveClassifier with the backbone, and the STFD head when the
    file has one (`std.*`), replaced by an official checkpoint's; other heads keep theirs.

    Lets a run start from released weights; a checkpoint that does not fit names its keys.
    """
    state_dict = torch_io.load_state_dict(path)
    load_head = "stfd" in variables["params"] and any(k.startswith("std.") for k in state_dict)
    if not load_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("std.")}
    parts = ("backbone", "stfd") if load_head else ("backbone",)
    template = {
        collection: {part: tree[part] for part in parts if part in tree}
        for collection, tree in variables.items()
    }
    loaded = torch_io.variables_from_state_dict(
        state_dict, template, torch_key_fn(backbone_key), source=str(path)
    )
    return {collection: tree | loaded.get(collection, {}) for collection, tree in variables.items()}
