"""What a trained backbone takes and what its outputs mean, saved with its run.

A prediction rebuilds the backbone from the run's config and this card, so it needs neither
the training data nor the layout file the run was started with (the layout is copied in).
"""

import dataclasses
import json
from pathlib import Path

from ml_collections import ConfigDict

from csre_jax.data.datasets import Dataset
from csre_jax.errors import UserError
from csre_jax.evaluate.class_names import class_names
from csre_jax.fileio import atomic_write
from csre_jax.layouts import Layout, layout_from_dict


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """layout: the skeleton the graph is built for; input_shapes: one sample's model inputs,
    {'x': (C, T, V, M)} plus any extra (BlockGCN's 'joint'); class_names: one per label."""

    layout: Layout
    input_shapes: dict[str, tuple[int, ...]]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.input_shapes["x"][0]

    @property
    def num_frames(self) -> int:
        return self.input_shapes["x"][1]

    @property
    def num_person(self) -> int:
        return self.input_shapes["x"][3]

    @classmethod
    def from_dataset(cls, dataset: Dataset, data: ConfigDict) -> "ModelCard":
        num_classes = dataset.train.num_classes
        names = dataset.class_names or class_names(data.get("name"), num_classes)
        return cls(dataset.layout, dataset.input_shapes(), tuple(names))

    def to_json(self) -> dict:
        """The card as a JSON-ready dict that `load` reads back (extra keys are ignored)."""
        return {
            "layout": self.layout.to_json(),
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "class_names": list(self.class_names),
        }

    def save(self, path: Path) -> None:
        with atomic_write(Path(path)) as tmp:
            tmp.write_text(json.dumps(self.to_json()) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelCard":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found. A run folder gets its model card when train.py starts; "
                "runs started before it existed can be rescored (eval.py) but not asked "
                "to predict"
            )
        try:
            record = json.loads(path.read_text())
            return cls(
                layout=layout_from_dict(record["layout"], source=f"{path} (field 'layout')"),
                input_shapes={k: tuple(v) for k, v in record["input_shapes"].items()},
                class_names=tuple(record["class_names"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a model card ({type(e).__name__}: {e})") from e
