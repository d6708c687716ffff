"""PyTorch state_dicts without torch: read `.pt` files, map them to and from Flax variables.

A `.pt` file written by torch.save (PyTorch >= 1.6) is a zip holding `<name>/data.pkl`, a
pickle of the state_dict whose tensors point at raw little-endian storages `<name>/data/<key>`.
The pickle is read with an allowlist, so a checkpoint cannot run code; save_state_dict writes
the same format, so weights trained here open with torch.load.

The mapping is driven by a per-backbone `KeyFn`: (collection, Flax path, ndim) ->
(torch key, kind). The kind names the layout change between the two frameworks and works
both ways, so the same KeyFn imports and exports.
"""

import collections
import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from csre_jax.errors import UserError
from csre_jax.fileio import atomic_write

KeyFn = Callable[[str, tuple[str, ...], int], tuple[str, str]]


class TorchCheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a torch.*Storage class inside the pickle: only its dtype matters."""

    dtype: np.dtype


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2 as a numpy copy of a (checked) strided view."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"malformed tensor: size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if extent > storage.size:
        raise pickle.UnpicklingError(f"tensor {size} reaches past its storage ({storage.size})")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view, order="C")


class _Unpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    }

    def __init__(self, data: bytes, read_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': only tensors and dicts are allowed"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        return self._read_storage(str(key), storage_type.dtype, int(numel))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The flat {key: array} state_dict stored in a torch.save zip file."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise TorchCheckpointError(
            f"{path}: not a zip archive, so not a PyTorch checkpoint in the torch.save format "
            "of PyTorch >= 1.6 (the legacy format is not supported)"
        ) from e
    with archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        big_endian = (
            prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big"
        )
        storages: dict[str, np.ndarray] = {}

        def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise pickle.UnpicklingError(f"storage '{name}' is missing")
                stored = dtype.newbyteorder(">") if big_endian else dtype
                raw = np.frombuffer(archive.read(name), stored)
                if raw.size < numel:
                    raise pickle.UnpicklingError(f"storage '{name}' is shorter than {numel}")
                storages[key] = raw.astype(dtype)
            return storages[key]

        try:
            obj = _Unpickler(archive.read(pickles[0]), read_storage).load()
        except Exception as e:  # a malformed pickle can fail in many ways; name the file
            raise TorchCheckpointError(f"{path}: cannot read the checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise TorchCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    others = [repr(k) for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if others or not all(isinstance(k, str) for k in obj):
        raise TorchCheckpointError(
            f"{path}: not a bare state_dict of tensors (entries {', '.join(others[:5])} are not "
            "tensors); extract the model's state_dict first"
        )
    return dict(obj)


# kind -> (torch layout -> Flax layout, Flax layout -> torch layout)
_KINDS: dict[str, tuple[Callable, Callable]] = {
    "raw": (lambda a: a, lambda a: a),
    # Linear (O, I) <-> Dense (I, O)
    "linear": (lambda w: w.T, lambda w: w.T),
    # 1x1 Conv1d (O, I, 1) <-> Dense (I, O)
    "conv1d": (lambda w: w[:, :, 0].T, lambda w: w.T[:, :, None]),
    # 1x1 Conv2d (O, I, 1, 1) <-> Dense (I, O)
    "pointwise": (lambda w: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None]),
    # Conv2d (O, I, kh, kw) <-> Conv (kh, kw, I, O)
    "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),
}

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def default_torch_key(collection: str, path: tuple[str, ...]) -> str:
    """Torch key of a Flax variable whose module names follow the torch attributes.

    A Sequential index is written `_i` in Flax: ('l1', 'tcn1', 'branches_0_3', 'conv',
    'kernel') is 'l1.tcn1.branches.0.3.conv.weight'.
    """
    modules = [re.sub(r"_(\d+)", r".\1", name) for name in path[:-1]]
    return ".".join([*modules, _LEAF_NAMES.get((collection, path[-1]), path[-1])])


def default_kind(path: tuple[str, ...], ndim: int) -> str:
    """Conv kernels are 4-d, 1x1 convs computed as Dense are 2-d, the rest copies as is."""
    if path[-1] != "kernel":
        return "raw"
    if ndim == 4:
        return "conv"
    if ndim == 2:
        return "pointwise"
    raise ValueError(f"no default torch layout for the {ndim}-d kernel {'/'.join(path)}")


def default_key_fn(*linears: str) -> KeyFn:
    """The KeyFn of a backbone whose module names follow the torch attributes: default keys
    and kinds, but 'linear' for the kernel of each module named in `linears` or of a layer
    inside one (HCN's `fc7` is the Sequential whose layer fc7.0 is the Linear).

    A 2-d kernel is otherwise a 1x1 Conv2d computed as Dense ('pointwise').
    """
    names = frozenset(linears)

    def torch_key(collection: str, path: tuple[str, ...], ndim: int) -> tuple[str, str]:
        is_linear = path[-1] == "kernel" and not names.isdisjoint(path[:-1])
        kind = "linear" if is_linear else default_kind(path, ndim)
        return default_torch_key(collection, path), kind

    return torch_key


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return _KINDS[kind][1](np.broadcast_to(np.int8(0), shape)).shape


def _listing(keys: list[str], limit: int = 20) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], template, key_fn: KeyFn, *, source: str
) -> dict:
    """Fill a Flax variables tree shaped like `template` (arrays or ShapeDtypeStructs).

    Every template leaf must be in the state_dict and vice versa (num_batches_tracked aside);
    values are cast to the template dtype. `source` names the checkpoint in errors.
    """
    wanted = {}
    for flat_path, leaf in traverse_util.flatten_dict(template).items():
        key, kind = key_fn(flat_path[0], flat_path[1:], len(leaf.shape))
        wanted[key] = (flat_path, kind, leaf)
    missing = [k for k in wanted if k not in state_dict]
    unexpected = [
        k for k in state_dict if k not in wanted and not k.endswith(".num_batches_tracked")
    ]
    if missing or unexpected:
        raise TorchCheckpointError(
            f"{source}: the state_dict does not match the model; "
            f"missing keys ({len(missing)}): [{_listing(missing)}]; "
            f"unexpected keys ({len(unexpected)}): [{_listing(unexpected)}]"
        )
    flat = {}
    for key, (flat_path, kind, leaf) in wanted.items():
        value = np.asarray(state_dict[key])
        expected = _torch_shape(kind, tuple(leaf.shape))
        if value.shape != expected:
            raise TorchCheckpointError(
                f"{source}: key '{key}' has shape {value.shape} but the model expects "
                f"{expected}; was the checkpoint trained on a different dataset?"
            )
        flat[flat_path] = jnp.asarray(_KINDS[kind][0](value).astype(leaf.dtype))
    return traverse_util.unflatten_dict(flat)


def state_dict_from_variables(variables, key_fn: KeyFn) -> dict[str, np.ndarray]:
    """The inverse: Flax variables ({'params', 'batch_stats'}) as a torch-layout state_dict.

    Each BatchNorm also gets num_batches_tracked = 0, so the key set is the official one.
    """
    state_dict = {}
    for flat_path, leaf in traverse_util.flatten_dict(variables).items():
        key, kind = key_fn(flat_path[0], flat_path[1:], np.ndim(leaf))
        state_dict[key] = np.ascontiguousarray(_KINDS[kind][1](np.asarray(leaf)))
    for key in [k for k in state_dict if k.endswith(".running_mean")]:
        state_dict[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros(
            (), np.int64
        )
    return state_dict


_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items()}
_ALIGNMENT = 64  # torch.save aligns every storage record to 64 bytes


def _pickle_state_dict(state_dict: Mapping[str, np.ndarray]) -> bytes:
    """Protocol-2 opcodes of an OrderedDict of tensors, as torch.save emits them.

    Written by hand because pickling references to torch functions needs torch itself.
    """

    def text(value: str) -> bytes:
        data = value.encode()
        return pickle.BINUNICODE + struct.pack("<I", len(data)) + data

    def integers(values) -> bytes:
        return (
            pickle.MARK
            + b"".join(pickle.BININT + struct.pack("<i", v) for v in values)
            + (pickle.TUPLE)
        )

    ordered_dict = (
        pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
    )
    out = [pickle.PROTO + b"\x02", ordered_dict, pickle.MARK]
    for index, (key, value) in enumerate(state_dict.items()):
        storage = (
            pickle.MARK
            + text("storage")
            + pickle.GLOBAL
            + f"torch\n{_STORAGE_NAMES[value.dtype]}\n".encode()
            + text(str(index))
            + text("cpu")
            + pickle.BININT
            + struct.pack("<i", value.size)
            + pickle.TUPLE
            + pickle.BINPERSID
        )
        strides = [s // value.itemsize for s in value.strides]
        out += [
            text(key),
            pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n",
            pickle.MARK,
            storage,
            pickle.BININT + struct.pack("<i", 0),
            integers(value.shape),
            integers(strides),
            pickle.NEWFALSE,
            ordered_dict,
            pickle.TUPLE,
            pickle.REDUCE,
        ]
    return b"".join([*out, pickle.SETITEMS, pickle.STOP])


def save_state_dict(path: str | Path, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write a state_dict ({key: array}) as a torch.save file, atomically."""
    arrays = {k: np.array(v, order="C") for k, v in state_dict.items()}  # 0-d stays 0-d
    unsupported = [k for k, v in arrays.items() if v.dtype not in _STORAGE_NAMES]
    if unsupported:
        raise TypeError(f"no PyTorch storage for the dtypes of {', '.join(unsupported)}")
    prefix = Path(path).stem or "archive"
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:

        def record(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            # Pad the local header's extra field so the data starts on the alignment.
            start = archive.fp.tell() + 30 + len(info.filename.encode()) + 4
            info.extra = struct.pack("<HH", 0x4246, -start % _ALIGNMENT) + b"Z" * (
                -start % _ALIGNMENT
            )
            archive.writestr(info, data)

        record("data.pkl", _pickle_state_dict(arrays))
        record("byteorder", b"little")
        for index, value in enumerate(arrays.values()):
            record(f"data/{index}", value.tobytes())
        record("version", b"3\n")
