"""The run folder that train.py writes and eval.py reads, named in one place.

<workdir>/config.json              the config the run was started with
<workdir>/config_changes.jsonl     settings a resume changed (only the safe ones may change)
<workdir>/model_card.json          the backbone's skeleton, input shapes and class names
<workdir>/validation_split.json    the training samples held out for validation
<workdir>/metrics.jsonl            step and epoch records
<workdir>/events.out.tfevents.*    the same as TensorBoard scalars (tensorboard --logdir=runs)
<workdir>/checkpoints/<step>/      the latest train state and data position (resume)
<workdir>/best/<step>/             the best model's backbone variables (eval.py)
<workdir>/scores/test_scores.npz   the best model's test scores
<workdir>/scores/val_scores.npz    its validation scores (with a held-out split)
<workdir>/scores/test_scores_<which>.npz  eval.py --workdir's scores of the best or latest
                                   model (and val_scores_<which>.npz)

Its readers need none of training: csre_jax.run_metrics reads metrics.jsonl,
csre_jax.run_variables a checkpoint's backbone variables.
"""

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

CHECKPOINTS = "checkpoints"
BEST = "best"


@dataclasses.dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def config_changes(self) -> Path:
        return self.root / "config_changes.jsonl"

    @property
    def model_card(self) -> Path:
        return self.root / "model_card.json"

    @property
    def validation_split(self) -> Path:
        return self.root / "validation_split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.root / BEST

    @property
    def test_scores(self) -> Path:
        return self.root / "scores" / "test_scores.npz"

    @property
    def val_scores(self) -> Path:
        return val_scores_path(self.test_scores)

    def rescored_test_scores(self, which: str) -> Path:
        """Where eval.py --workdir writes its scores of the 'best' or 'latest' model."""
        return self.test_scores.with_name(f"test_scores_{which}.npz")

    def checkpoint_folder(self, which: str) -> Path:
        """'best' or 'latest': where that model's checkpoints are."""
        return self.best if which == "best" else self.checkpoints


def val_scores_path(test_path: Path) -> Path:
    """The validation score file that goes with a test score file:
    scores/test_scores*.npz -> scores/val_scores*.npz (else <name>_val.npz)."""
    test_path = Path(test_path)
    name = test_path.name
    if name.startswith("test_"):
        return test_path.with_name("val_" + name.removeprefix("test_"))
    return test_path.with_name(f"{test_path.stem}_val{test_path.suffix}")


@contextlib.contextmanager
def removed_unless_started(workdir: Path | str) -> Iterator[Callable[[], None]]:
    """Removes the run folder again when the code inside fails and the folder did not exist
    before and holds no checkpoint: a failed check leaves nothing behind, a run that trained
    keeps everything it wrote, and an existing folder is never touched. Yields that removal,
    for a stop that ends the process without unwinding (interrupts.StopRequests)."""
    root = Path(workdir)
    existed = root.exists()

    def discard() -> None:
        if not existed and not any(RunFolder(root).checkpoints.glob("[0-9]*")):
            shutil.rmtree(root, ignore_errors=True)

    try:
        yield discard
    except BaseException:
        discard()
        raise
