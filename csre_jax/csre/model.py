"""The training-time model: a backbone plus the CSRE embedding heads.

Evaluation uses the backbone alone (params['backbone']): the heads and banks are removed.
"""

import flax.linen as nn
import jax

from csre_jax.csre.heads import STFD, GlobalHead

# Which embedding each bank contrasts: the STFD branches, or the pooled global feature.
BANK_NAMES = ("spatial", "temporal", "global")


class ContrastiveClassifier(nn.Module):
    """Returns (logits, {bank name: (N, dim) embedding}) for the banks switched on."""

    backbone: nn.Module
    banks: tuple[str, ...] = ("spatial", "temporal")
    dim: int = 256
    reduction: int = 8

    def __post_init__(self):
        unknown = set(self.banks) - set(BANK_NAMES)
        if unknown:
            raise ValueError(f"unknown bank(s) {sorted(unknown)}: choose from {BANK_NAMES}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        if not self.banks:
            return self.backbone(x, train=train), {}
        logits, feature_map = self.backbone(x, train=train, return_features=True)
        embeddings = {}
        stfd_branches = tuple(b for b in self.banks if b in ("spatial", "temporal"))
        if stfd_branches:
            embeddings |= STFD(self.dim, self.reduction, stfd_branches, name="stfd")(feature_map)
        if "global" in self.banks:
            embeddings["global"] = GlobalHead(self.dim, name="global_head")(feature_map)
        return logits, embeddings
