"""Which samples a config trains and tests on, and how each sample is transformed.

`load_dataset(config.data)` is the one entry point: data.name picks a reader and a
transform, and this module joins them into a `Dataset`; data never imports models.
"""

import dataclasses
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from csre_jax.data import ntu_splits, pyskl, pyskl_transform, synthetic, transforms, ucla
from csre_jax.data.pipeline import Split, Transform
from csre_jax.errors import UserError
from csre_jax.layouts import BUILTIN_LAYOUTS, Layout, load_layout


@dataclasses.dataclass(frozen=True)
class Dataset:
    """layout is the skeleton the backbone's graph is built for. val (with data.val_fraction
    > 0) is held out of the training data; val_ids are its samples' positions in the full
    training list of full_train_size samples (NW-UCLA: clips before the repeat), the same for
    every stream. class_names (custom data only, optional) name the labels in order.
    train_names and test_names (custom data only) are the samples' frame_dirs, in the order
    of the full training list and of the test split, so score files can name their rows."""

    train: Split
    test: Split
    layout: Layout
    train_transform: Transform | None = None
    test_transform: Transform | None = None
    val: Split | None = None
    val_ids: np.ndarray | None = None
    full_train_size: int = 0
    class_names: tuple[str, ...] | None = None
    train_names: np.ndarray | None = None
    test_names: np.ndarray | None = None

    def sample_names(self, split: str = "test") -> np.ndarray | None:
        """The frame_dirs of the test split's or the validation ('val') split's samples, in
        order; None where the dataset has no names."""
        if split == "test":
            return self.test_names
        if self.train_names is None or self.val_ids is None:
            return None
        return self.train_names[self.val_ids]

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one sample's model inputs: {'x': (C, T, V, M)} plus any extra ('joint')."""
        x = np.asarray(self.test.x[0])
        out = self.test_transform(x, None) if self.test_transform else x
        return {k: v.shape for k, v in (out if isinstance(out, dict) else {"x": out}).items()}


def load_dataset(data: ConfigDict) -> Dataset:
    """data.keep_joint (BlockGCN) adds each sample's absolute joints as the input 'joint';
    data.val_fraction holds that share of every class's training samples out for validation.
    'custom' reads a pyskl annotation pickle and fills data.coords and data.use_score in from
    the file."""
    if data.name == "synthetic":
        return _synthetic(data)
    if data.name in ("ntu60", "ntu120"):
        return _ntu(data)
    if data.name == "ucla":
        return _ucla(data)
    if data.name == "custom":
        return _custom(data)
    raise UserError(
        f"data.name={data.name!r} is not a known dataset: "
        "choose synthetic, ntu60, ntu120, ucla or custom"
    )


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted positions: `fraction` of each class, at least one sample of
    every class that has two, drawn with `seed`. Depends on labels only, not on the stream,
    so the four streams of a benchmark hold out the same samples."""
    if not 0 <= fraction < 1:
        raise UserError(f"data.val_fraction={fraction}: choose a share in [0, 1), e.g. 0.05")
    held = []
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(round(fraction * len(members)), 1), len(members) - 1) if fraction else 0
        held.append(rng.permutation(members)[:count])
    held_out = np.sort(np.concatenate(held)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def _with_validation(dataset: Dataset, full_train: Split, data: ConfigDict, repeat=None):
    """The dataset with data.val_fraction of full_train held out (then `repeat`ed, NW-UCLA)."""
    fraction = data.get("val_fraction", 0.0)
    if not fraction:
        return dataset
    kept, held_out = hold_out(full_train.labels, fraction, data.get("val_seed", 0))
    train = full_train.subset(kept)
    if repeat is not None:
        train = repeat(train)
    return dataclasses.replace(
        dataset,
        train=train,
        val=full_train.subset(held_out),
        val_ids=held_out,
        full_train_size=len(full_train),
    )


# NW-UCLA's 20 Kinect v1 joints as NTU (Kinect v2) joints: NTU's neck has no UCLA joint and
# UCLA's shoulder centre is NTU's spine shoulder (python indices).
_UCLA_FROM_NTU_JOINTS = [0, 1, 20, *range(3, 20)]


def _synthetic_layout(data: ConfigDict) -> Layout:
    skeleton = data.get("skeleton", "ntu")
    if skeleton not in ("ntu", "ucla"):
        raise UserError(f"data.skeleton={skeleton!r}: choose ntu or ucla")
    return BUILTIN_LAYOUTS[skeleton]


def sample_transform(data: ConfigDict, *, train: bool) -> Transform | None:
    """The per-sample transform of data.name's samples as its splits store them, from the
    config alone (prediction builds the test one without reading the data)."""
    keep_joint = data.get("keep_joint", False)
    if data.name == "synthetic":
        stream, layout = data.get("stream", "joint"), _synthetic_layout(data)
        if stream == "joint" and not keep_joint:
            return None
        return lambda x, rng: transforms.model_inputs(
            x, transforms.to_stream(x, stream, skeleton=layout, variant="ctrgcn"), keep_joint
        )
    if data.name in ("ntu60", "ntu120"):
        ntu = transforms.ntu_transform(
            train=train,
            window=data.num_frames,
            p_interval=tuple(data.train_p_interval if train else data.test_p_interval),
            rotate=train and data.random_rotation,
            stream=data.stream,
            variant=data.feeder_variant,
            keep_joint=keep_joint,
        )
        return lambda row, rng: ntu(ntu_splits.ntu_row_to_sample(row), rng)
    if data.name == "ucla":
        return transforms.ucla_transform(
            train=train, stream=data.stream, variant=data.feeder_variant, keep_joint=keep_joint
        )
    if data.name == "custom":
        return pyskl_transform.sample_transform(data, train=train)
    raise UserError(f"data.name={data.name!r} is not a known dataset")


def _synthetic(data: ConfigDict) -> Dataset:
    """The generated skeletons; data.skeleton='ucla' keeps the first person on NW-UCLA's
    20 joints, so NW-UCLA-shaped models train without the dataset."""
    train, test = synthetic.make_splits(
        data.num_train,
        data.num_test,
        seed=data.seed,
        num_classes=data.num_classes,
        num_frames=data.num_frames,
    )
    if _synthetic_layout(data).name == "ucla":
        train["x"], test["x"] = (s["x"][..., _UCLA_FROM_NTU_JOINTS, :1] for s in (train, test))
    full_train = Split(train["x"], train["label"], data.num_classes)
    dataset = Dataset(
        train=full_train,
        test=Split(test["x"], test["label"], data.num_classes),
        layout=_synthetic_layout(data),
        train_transform=sample_transform(data, train=True),
        test_transform=sample_transform(data, train=False),
    )
    return _with_validation(dataset, full_train, data)


def _ntu(data: ConfigDict) -> Dataset:
    path = ntu_splits.split_file(data.root, data.name, data.benchmark)
    num_classes = 60 if data.name == "ntu60" else 120
    full_train = Split(*ntu_splits.load_split(path, "train"), num_classes)
    dataset = Dataset(
        train=full_train,
        test=Split(*ntu_splits.load_split(path, "test"), num_classes),
        layout=BUILTIN_LAYOUTS["ntu"],
        train_transform=sample_transform(data, train=True),
        test_transform=sample_transform(data, train=False),
    )
    return _with_validation(dataset, full_train, data)


def _ucla(data: ConfigDict) -> Dataset:
    """NW-UCLA from CTR-GCN's JSON clips; the training list is repeated (bank slot i is
    clip i mod 1,020), as the official feeder does."""
    num_classes = 10
    base_train = Split(*ucla.load_split(data.root, "train"), num_classes)
    test_clips, test_labels = ucla.load_split(data.root, "val")

    def repeat(split: Split) -> Split:
        return Split(*ucla.repeat_train(list(split.x), split.labels), num_classes)

    dataset = Dataset(
        train=repeat(base_train),
        test=Split(test_clips, test_labels, num_classes),
        layout=BUILTIN_LAYOUTS["ucla"],
        train_transform=sample_transform(data, train=True),
        test_transform=sample_transform(data, train=False),
    )
    return _with_validation(dataset, base_train, data, repeat)


def _custom(data: ConfigDict) -> Dataset:
    """A pyskl annotation pickle in any layout, checked whole first.

    Fills in what the file decides, so the run's saved config rebuilds the same input spec:
    data.coords (0: the file's) and data.use_score (kept only for 2-D files with scores).
    data.class_names optionally names a text file with one class name per line, by label.
    """
    if not data.path:
        raise UserError(
            "data.path is empty: name your pyskl annotation pickle, e.g. "
            "--config.data.path=my.pkl --config.data.layout=coco (docs/data.md, 'Your own data')"
        )
    layout = load_layout(data.layout)
    path = Path(data.path).expanduser()
    content, checked = pyskl.load(path, layout, data.coords)
    data.coords = checked.coords
    data.use_score = bool(data.use_score) and checked.has_score and checked.coords == 2
    spec = pyskl_transform.input_spec(data)
    split_names = (data.train_split, data.test_split)
    train, test = pyskl.split_samples(content, str(path), checked, split_names)
    class_names = pyskl.read_class_names(data.get("class_names", ""), checked.num_classes)

    def packed(samples: pyskl.Samples) -> Split:
        x = pyskl_transform.Packed(samples.annotations, spec)
        return Split(x, samples.labels, checked.num_classes)

    full_train = packed(train)
    dataset = Dataset(
        train=full_train,
        test=packed(test),
        layout=spec.layout,
        train_transform=sample_transform(data, train=True),
        test_transform=sample_transform(data, train=False),
        class_names=class_names,
        train_names=train.names,
        test_names=test.names,
    )
    return _with_validation(dataset, full_train, data)
