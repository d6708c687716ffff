"""How many positives and negatives each anchor contrasts with, given the training labels.

An anchor counts only once its bank holds num_positives filled slots of its class and
num_negatives of other classes (the official skip rule, loss.py): counts a bank can never
hold leave CSRE silently off for a class, or the loss cannot even be built. So each class
must be able to supply them: the positives come from the smallest class, the negatives from
outside the largest. With the official bank (one slot per training sample) those are slot
counts; a queue of csre.bank_size rows holds the classes in their training-set proportions,
so it is expected to offer those counts scaled by bank_size / slots.

0 (custom data's default) follows the training set: a quarter of what it offers, at most
the paper's 128 and 512, which assume thousands of samples. The quarter keeps the hard
positives a minority of the class, as 128 of NTU's ~650 per class are, and leaves room for
the slots a first epoch (drop_last) or a queue's random mix has not filled yet.
"""

import dataclasses

import numpy as np
from ml_collections import ConfigDict

from csre_jax.errors import UserError

PAPER = {"positives": 128, "negatives": 512}  # the rule's caps: the official counts


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The counts the train step uses, and where they come from (the start-up line)."""

    positives: int
    negatives: int
    description: str

    def line(self) -> str:
        return (
            f"CSRE sampling: {self.positives} positives, {self.negatives} negatives per anchor "
            f"({self.description})"
        )


def resolve(csre: ConfigDict, slot_labels: np.ndarray) -> Sampling:
    """csre.num_positives / num_negatives against the bank's slot labels (the training
    labels, in dataset order): a 0 resolved by the rule, an explicit value checked.

    Raises UserError, naming the fields, what the training set allows and the fix, when a
    value cannot be met for every class, or when the set has one class (no negatives).
    """
    counts = np.unique(np.asarray(slot_labels), return_counts=True)[1]
    slots = int(counts.sum())
    scale = csre.bank_size / slots if csre.bank_size else 1.0
    most = {
        "positives": int(scale * counts.min()),
        "negatives": int(scale * (slots - counts.max())),
    }
    pool = (
        f"a {csre.bank_size}-row queue expects {most['positives']} rows of the smallest class"
        if csre.bank_size
        else f"the bank has {most['positives']} slots of the smallest class"
    ) + f" and {most['negatives']} outside the largest"
    if len(counts) == 1:
        raise UserError(
            "csre.num_negatives: the training set has a single class, so no anchor has "
            "negatives; add classes, or set csre.banks=none"
        )
    rule = {k: min(cap, max(1, most[k] // 4)) for k, cap in PAPER.items()}
    wanted = {"positives": csre.num_positives, "negatives": csre.num_negatives}
    bad = [k for k in wanted if wanted[k] > most[k]]
    if bad:
        fields = " and ".join(f"csre.num_{k}={wanted[k]}" for k in bad)
        allowed = " and ".join(f"{most[k]} {k}" for k in bad)
        fix = " ".join(f"--config.csre.num_{k}={rule[k]}" for k in bad)
        raise UserError(
            f"{fields}: more than this training set can offer ({pool}: at most {allowed} per "
            f"anchor for every class to count); lower them, e.g. {fix}"
        )
    followed = [k for k in wanted if not wanted[k]]
    how = "as configured"
    if followed:
        which = "" if len(followed) == len(wanted) else f"{followed[0]} "
        caps = " and ".join(str(PAPER[k]) for k in followed)
        how = f"{which}followed the training set: a quarter of what it offers, at most {caps}"
    resolved = {k: wanted[k] or rule[k] for k in wanted}
    return Sampling(resolved["positives"], resolved["negatives"], f"{how}; {pool}")
