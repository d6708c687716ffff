"""grain pipelines: the training stream (with its checkpointable position) and the test pass.

The data package's lowest layer (its __init__ draws the rest): a `Split` holds one split's
samples and labels, a `Transform` turns one sample into model inputs, and the pipelines below
batch the pairs. Every element is {'x': (C, T, V, M) float32, 'label': int32, 'index': int32},
plus any extra model input the transform returns (BlockGCN's 'joint'); 'index' is the
sample's position in its split, which is its memory-bank slot.
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import grain
import jax
import numpy as np

from csre_jax.errors import UserError

Transform = Callable[[np.ndarray, np.random.Generator | None], np.ndarray | dict[str, np.ndarray]]
"""One sample -> its model inputs: the stream array, or a dict of 'x' and extra inputs
(BlockGCN's 'joint'). It receives a numpy Generator in training and None at test time, when
it must be deterministic."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset, random access: sample i is x[i] with label labels[i].

    x is an array (an np.memmap included) or a list of variable-length clips; transforms run
    per sample and give every sample the same shape.
    """

    x: np.ndarray | Sequence[np.ndarray]
    labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        if len(self.x) != len(self.labels):
            raise ValueError(f"{len(self.x)} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Split":
        """The samples at `indices`, in that order; x stays lazy (a memmap is not read)."""
        return Split(_Rows(self.x, np.asarray(indices)), self.labels[indices], self.num_classes)


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Lazy rows of an array or clip list: row i is source[indices[i]]."""

    source: np.ndarray | Sequence[np.ndarray]
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source[self.indices[i]]


class _SplitSource(grain.sources.RandomAccessDataSource):
    def __init__(self, split: Split):
        self._split = split

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {
            "x": np.asarray(self._split.x[index], np.float32),
            "label": np.int32(self._split.labels[index]),
            "index": np.int32(index),
        }


def _apply(transform: Transform | None, element, rng):
    if transform is None:
        return element
    out = transform(element["x"], rng)
    return element | (out if isinstance(out, dict) else {"x": out.astype(np.float32)})


def _process_share(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous rows of a global batch (all of it on one host)."""
    processes, process = jax.process_count(), jax.process_index()
    size = len(batch["label"])
    if size % processes:
        raise UserError(f"batch size {size} is not divisible by {processes} processes")
    rows = slice(process * size // processes, (process + 1) * size // processes)
    return {k: v[rows] for k, v in batch.items()}


def steps_per_epoch(split: Split, global_batch_size: int) -> int:
    """Full batches per epoch; the remainder is dropped, a different one every epoch."""
    steps = len(split) // global_batch_size
    if steps == 0:
        raise UserError(
            f"the training split has {len(split)} samples, fewer than one batch of "
            f"{global_batch_size}: lower data.batch_size"
        )
    return steps


def train_dataset(
    split: Split, *, global_batch_size: int, seed: int, transform: Transform | None = None
) -> grain.IterDataset:
    """Endless stream of this process's share of each global batch.

    Each epoch is a fresh permutation of the whole split cut to whole batches (drop_last),
    then each process keeps its contiguous slice of every global batch. Random transforms
    draw from grain's per-element generator, so a seed fixes the run, and the iterator's
    state (a position) is all a checkpoint needs to resume the same next batch.
    """
    epoch_length = steps_per_epoch(split, global_batch_size) * global_batch_size
    ds = grain.MapDataset.source(_SplitSource(split)).seed(seed).shuffle()[:epoch_length]
    ds = ds.repeat(None).random_map(lambda element, rng: _apply(transform, element, rng))
    ds = ds.batch(global_batch_size, drop_remainder=True).map(_process_share)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def eval_batches(
    split: Split, *, batch_size: int, transform: Transform | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The split in order, as this process's share of global batches of batch_size.

    The last batch is padded (repeating its last sample) so one compiled shape serves the
    whole pass; 'valid' marks the real samples.
    """

    def pad(batch):
        count = len(batch["label"])
        extra = batch_size - count
        batch = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in batch.items()}
        return batch | {"valid": np.arange(batch_size) < count}

    ds = grain.MapDataset.source(_SplitSource(split)).map(lambda e: _apply(transform, e, None))
    ds = ds.batch(batch_size, drop_remainder=False).map(pad).map(_process_share)
    yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
