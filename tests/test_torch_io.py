"""Reading torch.save files without torch, and the state_dict <-> Flax variables mapping."""

import json
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from csre_jax.models import torch_io

# -- a minimal torch.save writer, opcode by opcode, to make files torch would write -----------


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    b = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return pickle.BININT + struct.pack("<i", i)


def _tuple(items) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def write_pt(path, tensors, storage_class=None, extra=b""):
    """tensors: key -> (storage_name, storage array, offset, size, stride)."""
    body = [pickle.PROTO + b"\x02", _global("collections", "OrderedDict"), pickle.EMPTY_TUPLE]
    body += [pickle.REDUCE, pickle.MARK]
    storages = {}
    for key, (storage_name, storage, offset, size, stride) in tensors.items():
        storage_id = storages.setdefault(id(storage), (str(len(storages)), storage))[0]
        persistent = _tuple(
            [
                _str("storage"),
                _global(*(storage_class or ("torch", storage_name))),
                _str(storage_id),
                _str("cpu"),
                _int(storage.size),
            ]
        )
        args = [persistent + pickle.BINPERSID, _int(offset), _tuple(map(_int, size))]
        args += [_tuple(map(_int, stride)), pickle.NEWFALSE]
        args += [_global("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.REDUCE]
        body += [_str(key), _global("torch._utils", "_rebuild_tensor_v2"), _tuple(args)]
        body += [pickle.REDUCE]
    body += [extra, pickle.SETITEMS, pickle.STOP]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"".join(body))
        z.writestr("archive/byteorder", "little")
        for storage_id, storage in storages.values():
            little = storage.astype(storage.dtype.newbyteorder("<"))
            z.writestr(f"archive/data/{storage_id}", little.tobytes())


# -- reading -----------------------------------------------------------------------------------


def test_reads_the_official_checkpoint(shared_dir):
    state_dict = torch_io.load_state_dict(shared_dir / "fixtures" / "ctrgcn_ntu60.pt")
    listing = json.loads((shared_dir / "spec" / "state_dicts" / "ctrgcn_ntu60.json").read_text())
    assert [(k, v.shape) for k, v in state_dict.items()] == [(k, tuple(s)) for k, s in listing]
    assert state_dict["l1.gcn1.PA"].dtype == np.float32
    assert state_dict["data_bn.num_batches_tracked"].dtype == np.int64
    assert state_dict["data_bn.running_var"].min() > 0


def test_strides_offsets_shared_storage_and_dtypes(tmp_path):
    shared = np.arange(24, dtype=np.float32)
    tensors = {
        "transposed": ("FloatStorage", shared, 0, (4, 6), (1, 4)),  # a (6, 4) tensor's .T
        "offset_view": ("FloatStorage", shared, 5, (2, 3), (3, 1)),
        "scalar": ("LongStorage", np.array([7], np.int64), 0, (), ()),
        "empty": ("FloatStorage", np.zeros(0, np.float32), 0, (0, 3), (3, 1)),
        "f64": ("DoubleStorage", np.array([1.5, -2.0]), 0, (2,), (1,)),
        "f16": ("HalfStorage", np.array([0.5, 3.0], np.float16), 1, (1,), (1,)),
        "bf16": ("BFloat16Storage", np.array([1.0, 2.5], ml_dtypes.bfloat16), 0, (2,), (1,)),
        "mask": ("BoolStorage", np.array([True, False, True]), 0, (3,), (1,)),
    }
    path = tmp_path / "mixed.pt"
    write_pt(path, tensors)
    sd = torch_io.load_state_dict(path)
    np.testing.assert_array_equal(sd["transposed"], shared.reshape(6, 4).T)
    np.testing.assert_array_equal(sd["offset_view"], [[5, 6, 7], [8, 9, 10]])
    assert sd["scalar"].shape == () and sd["scalar"] == 7 and sd["scalar"].dtype == np.int64
    assert sd["empty"].shape == (0, 3)
    np.testing.assert_array_equal(sd["f64"], [1.5, -2.0])
    assert sd["f16"].dtype == np.float16 and sd["f16"].tolist() == [3.0]
    assert sd["bf16"].dtype == ml_dtypes.bfloat16 and sd["bf16"].astype(float).tolist() == [1, 2.5]
    assert sd["mask"].tolist() == [True, False, True]
    assert sd["transposed"].flags.c_contiguous and sd["transposed"].flags.writeable


def test_code_in_the_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    one = np.ones(1, np.float32)
    sneaky = _str("x") + _global("os", "system") + _tuple([_str("true")]) + pickle.REDUCE
    write_pt(path, {"w": ("FloatStorage", one, 0, (1,), (1,))}, extra=sneaky)
    with pytest.raises(torch_io.TorchCheckpointError, match=r"evil\.pt.*'os\.system'"):
        torch_io.load_state_dict(path)
    write_pt(path, {"w": ("FloatStorage", one, 0, (1,), (1,))}, storage_class=("os", "getcwd"))
    with pytest.raises(torch_io.TorchCheckpointError, match="os.getcwd"):
        torch_io.load_state_dict(path)


def test_view_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "overrun.pt"
    write_pt(path, {"w": ("FloatStorage", np.ones(4, np.float32), 2, (2, 2), (2, 1))})
    with pytest.raises(torch_io.TorchCheckpointError, match="overrun.pt.*past its storage"):
        torch_io.load_state_dict(path)


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(torch_io.TorchCheckpointError, match="notes.pt: not a zip"):
        torch_io.load_state_dict(text)
    other_zip = tmp_path / "bundle.pt"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "no pickle here")
    with pytest.raises(torch_io.TorchCheckpointError, match="bundle.pt: a zip archive but not"):
        torch_io.load_state_dict(other_zip)
    missing_storage = tmp_path / "truncated.pt"
    write_pt(missing_storage, {"w": ("FloatStorage", np.ones(2, np.float32), 0, (2,), (1,))})
    with zipfile.ZipFile(missing_storage) as z, zipfile.ZipFile(tmp_path / "cut.pt", "w") as out:
        out.writestr("archive/data.pkl", z.read("archive/data.pkl"))
    with pytest.raises(torch_io.TorchCheckpointError, match="cut.pt.*'archive/data/0' is missing"):
        torch_io.load_state_dict(tmp_path / "cut.pt")


# -- mapping -----------------------------------------------------------------------------------


def _key_fn(collection, path, ndim):
    kind = "linear" if path == ("fc", "kernel") else torch_io.default_kind(path, ndim)
    return torch_io.default_torch_key(collection, path), kind


def _template():
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.random(shape, np.float32)

    return {
        "params": {
            "conv": {"kernel": r(5, 1, 3, 4), "bias": r(4)},
            "branches_2_0": {"kernel": r(4, 2), "bias": r(2)},
            "bn": {"scale": r(2), "bias": r(2)},
            "fc": {"kernel": r(2, 7), "bias": r(7)},
            "PA": r(3, 5, 5),
        },
        "batch_stats": {"bn": {"mean": r(2), "var": r(2)}},
    }


def test_keys_and_layouts_both_ways():
    variables = _template()
    sd = torch_io.state_dict_from_variables(variables, _key_fn)
    assert sd["conv.weight"].shape == (4, 3, 5, 1)
    kernel = variables["params"]["conv"]["kernel"]  # (kh, kw, I, O)
    np.testing.assert_array_equal(sd["conv.weight"][:, :, :, 0], kernel[:, 0].transpose(2, 1, 0))
    assert sd["branches.2.0.weight"].shape == (2, 4, 1, 1)
    np.testing.assert_array_equal(sd["fc.weight"], variables["params"]["fc"]["kernel"].T)
    np.testing.assert_array_equal(sd["bn.weight"], variables["params"]["bn"]["scale"])
    np.testing.assert_array_equal(sd["bn.running_var"], variables["batch_stats"]["bn"]["var"])
    assert sd["bn.num_batches_tracked"].dtype == np.int64
    back = torch_io.variables_from_state_dict(sd, variables, _key_fn, source="memory")
    flat_in, flat_out = flatten_dict(variables), flatten_dict(back)
    assert flat_in.keys() == flat_out.keys()
    for key, value in flat_in.items():
        np.testing.assert_array_equal(flat_out[key], value)


def test_mismatches_are_named():
    variables = _template()
    sd = torch_io.state_dict_from_variables(variables, _key_fn)
    wrong = {**sd, "PA": np.zeros((3, 4, 4), np.float32)}
    with pytest.raises(
        torch_io.TorchCheckpointError,
        match=r"ckpt\.pt: key 'PA' has shape \(3, 4, 4\) but the model expects \(3, 5, 5\)",
    ):
        torch_io.variables_from_state_dict(wrong, variables, _key_fn, source="ckpt.pt")
    extra = {k: v for k, v in sd.items() if k != "fc.bias"} | {"std.conv1.weight": np.zeros(1)}
    with pytest.raises(torch_io.TorchCheckpointError) as err:
        torch_io.variables_from_state_dict(extra, variables, _key_fn, source="ckpt.pt")
    msg = str(err.value)
    assert "ckpt.pt" in msg and "missing keys (1): [fc.bias]" in msg
    assert "unexpected keys (1): [std.conv1.weight]" in msg


def test_wrapped_checkpoint_is_refused(tmp_path):
    path = tmp_path / "wrapped.pt"
    epoch = _str("epoch") + _int(3)
    write_pt(path, {"w": ("FloatStorage", np.ones(1, np.float32), 0, (1,), (1,))}, extra=epoch)
    with pytest.raises(torch_io.TorchCheckpointError, match="wrapped.pt: not a bare.*'epoch'"):
        torch_io.load_state_dict(path)


def test_saved_state_dict_reads_back_with_aligned_storages(tmp_path, shared_dir):
    original = torch_io.load_state_dict(shared_dir / "fixtures" / "ctrgcn_ntu60.pt")
    extra = {
        "half": np.arange(4, dtype=np.float16),
        "brain": np.arange(4, dtype=ml_dtypes.bfloat16),
        "transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not C-contiguous
    }
    path = tmp_path / "model.pt"
    torch_io.save_state_dict(path, original | extra)
    back = torch_io.load_state_dict(path)
    assert list(back) == list(original | extra)  # order kept, as torch.save keeps it
    for key, value in (original | extra).items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0, info.filename


def test_unsupported_dtype_is_not_saved(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        torch_io.save_state_dict(tmp_path / "x.pt", {"complex": np.zeros(2, np.complex64)})
    assert not (tmp_path / "x.pt").exists()
