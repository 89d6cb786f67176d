"""Reading timm state dicts without torch: against files torch itself wrote (tests/fixtures/torch_files, made by
make_torch_files.py), safetensors, and torch-format files whose pickle would run a command if loaded with pickle."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from safetensors.numpy import save_file

from zoobot_core.encoders.weights import WEIGHT_FILES, UnsafeWeightsError, WeightsFormatError, read_state_dict, weights_file

TORCH_FILES = Path(__file__).parent / "fixtures" / "torch_files"
STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, np.ndarray]]:
    """{file name: {tensor name: array}} of what torch saved, in the state dict's order."""
    with np.load(TORCH_FILES / "expected.npz") as npz:
        by_file: dict[str, dict[str, np.ndarray]] = {}
        for key in npz.files:
            file, name = key.split(":", 1)
            by_file.setdefault(file, {})[name] = npz[key]
    return by_file


def _assert_same(state: dict[str, np.ndarray], expected: dict[str, np.ndarray], ordered: bool = True) -> None:
    assert list(state) == list(expected) if ordered else sorted(state) == sorted(expected)
    for name, want in expected.items():
        got = state[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        np.testing.assert_array_equal(got, want, err_msg=name, strict=True)
        assert got.flags.c_contiguous and got.flags.writeable, name


@pytest.mark.parametrize("file", ["mixed.bin", "module.bin", "nested.bin", "mixed.safetensors"])
def test_reads_what_torch_saved_exactly(file, expected):
    _assert_same(read_state_dict(TORCH_FILES / file), expected[file], ordered=file.endswith(".bin"))  # safetensors sorts its names


def test_every_dtype_comes_back_as_documented(expected):
    state = read_state_dict(str(TORCH_FILES / "mixed.bin"))
    dtypes = {name: str(array.dtype) for name, array in state.items()}
    assert dtypes == {"conv.weight": "float32", "transposed": "float32", "view_with_offset": "float32", "every_other": "float32",
                      "shared_a": "float32", "shared_b": "float32", "bn.num_batches_tracked": "int64", "long_vector": "int64",
                      "half": "float32", "bfloat16": "float32", "double": "float32", "int32": "int32", "int16": "int16", "int8": "int8",
                      "uint8": "uint8", "bool": "bool", "parameter": "float32"}
    assert state["transposed"].shape == (5, 3) and state["view_with_offset"].tolist() == [[-0.25, -0.125, 0.0], [0.375, 0.5, 0.625]]
    assert state["long_vector"].tolist() == [-(2**40), 0, 2**40] and state["bn.num_batches_tracked"].shape == ()
    assert state["half"][0].tolist() == [1.5, -2.25, 65504.0] and state["bfloat16"][:2].tolist() == [1.5, -2.25]
    np.testing.assert_array_equal(state["shared_a"][2:], state["shared_b"][:2])  # one storage, two views


def _rezip(source: Path, target: Path, top: str) -> None:
    """The same torch archive with its top folder renamed (torch names it after the file; the published files say 'archive')."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(top + name[name.index("/"):], old.read(name))


def test_the_archive_folder_name_does_not_matter(tmp_path, expected):
    _rezip(TORCH_FILES / "module.bin", tmp_path / "pytorch_model.bin", "archive")
    _assert_same(read_state_dict(tmp_path / "pytorch_model.bin"), expected["module.bin"])


# A torch-format writer for files torch would not write (big-endian, corrupt, hostile): the pickle's opcodes by hand.
class Global(NamedTuple):
    module: str
    name: str


class Call(NamedTuple):
    func: Any
    args: tuple


class Persistent(NamedTuple):
    pid: tuple


def _opcodes(obj: Any) -> bytes:
    if isinstance(obj, Global):
        return b"c" + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        return _opcodes(obj.func) + _opcodes(obj.args) + b"R"
    if isinstance(obj, Persistent):
        return _opcodes(obj.pid) + b"Q"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        return b"X" + struct.pack("<I", len(obj.encode())) + obj.encode()
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_opcodes, obj)) + b"t"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_opcodes(k) + _opcodes(v) for k, v in obj.items()) + b"u"
    raise TypeError(obj)


def _tensor(key: str, values: np.ndarray, offset: int = 0, size: tuple | None = None, stride: tuple | None = None, numel: int | None = None) -> Call:
    """_rebuild_tensor_v2 of storage `key` (values flattened), as torch pickles it."""
    size = values.shape if size is None else size
    stride = tuple(s // values.itemsize for s in values.strides) if stride is None else stride
    storage = Persistent(("storage", Global("torch", STORAGES[values.dtype]), key, "cpu", values.size if numel is None else numel))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, tuple(size), tuple(stride), False, Call(Global("collections", "OrderedDict"), ())))


def _write_torch_zip(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None, byteorder: str | None = "little", top: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", pickled)
        if byteorder is not None:
            archive.writestr(f"{top}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(f"{top}/data/{key}", raw)
    return path


def _write_state(path: Path, state: dict[str, np.ndarray], byteorder: str = "little") -> Path:
    order = "<" if byteorder == "little" else ">"
    state = {name: np.array(values, order="C") for name, values in state.items()}
    pickled = b"\x80\x02" + _opcodes({name: _tensor(str(i), values) for i, (name, values) in enumerate(state.items())}) + b"."
    storages = {str(i): values.astype(values.dtype.newbyteorder(order)).tobytes() for i, values in enumerate(state.values())}
    return _write_torch_zip(path, pickled, storages, byteorder)


def test_big_endian_files_are_byteswapped(tmp_path, expected):
    state = {name: values for name, values in expected["mixed.bin"].items() if values.dtype in STORAGES}
    for byteorder in ("little", "big"):
        _assert_same(read_state_dict(_write_state(tmp_path / f"{byteorder}.pt", state, byteorder)), state)
    assert _write_state(tmp_path / "check.pt", {"w": np.array([1.0], np.float32)}, "big").read_bytes().count(b"\x3f\x80\x00\x00") == 1


def test_a_missing_byteorder_entry_means_little_endian(tmp_path):
    values = np.arange(6, dtype=np.float32)
    pickled = b"\x80\x02" + _opcodes({"w": _tensor("0", values, size=(2, 2), stride=(1, 3), offset=1)}) + b"."
    state = read_state_dict(_write_torch_zip(tmp_path / "w.pth", pickled, {"0": values.tobytes()}, byteorder=None))
    assert state["w"].tolist() == [[1.0, 4.0], [2.0, 5.0]]


@pytest.mark.parametrize(("tensor", "message"), [
    (dict(offset=4, size=(3,), stride=(1,)), "overruns its storage"),
    (dict(size=(2, 2), stride=(1, 6)), "overruns its storage"),
    (dict(size=(2,), stride=(-1,)), "negative"),
    (dict(numel=1000), "holds 24 bytes, not 1000"),
    (dict(size=(10**6, 10**6, 10**6), stride=(0, 0, 0)), "more elements than its storage"),  # 24 bytes expanded to 4 EB
])
def test_views_outside_their_storage_are_refused(tmp_path, tensor, message):
    values = np.arange(6, dtype=np.float32)
    pickled = b"\x80\x02" + _opcodes({"w": _tensor("0", values, **tensor)}) + b"."
    with pytest.raises(WeightsFormatError, match=message):
        read_state_dict(_write_torch_zip(tmp_path / "w.bin", pickled, {"0": values.tobytes()}))


def test_something_other_than_a_state_dict_of_tensors_is_refused(tmp_path):
    values = np.zeros(2, np.float32)
    for name, obj in {"extra.bin": {"state_dict": {"w": _tensor("0", values)}, "epoch": 3}, "tuple.bin": (_tensor("0", values),),
                      "int.bin": {"w": _tensor("0", values), "step": 3}}.items():
        path = _write_torch_zip(tmp_path / name, b"\x80\x02" + _opcodes(obj) + b".", {"0": values.tobytes()})
        with pytest.raises(WeightsFormatError, match=rf"{path}.* not a state dict") as error:
            read_state_dict(path)
        assert name != "extra.bin" or "'epoch'" in str(error.value)


class RunsCommand:
    """Pickles as a call to `func(*args)`: what a hostile pytorch_model.bin would hold."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("payload", ["os.system", "subprocess.call", "builtins.eval"])
@pytest.mark.parametrize("protocol", [2, 4], ids=["GLOBAL", "STACK_GLOBAL"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, payload, protocol):
    marker = tmp_path / "ran"
    func, args = {"os.system": (os.system, (f"touch '{marker}'",)), "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
                  "builtins.eval": (eval, (f"open({str(marker)!r}, 'w').close()",))}[payload]
    pickled = pickle.dumps({"conv.weight": RunsCommand(func, *args)}, protocol=protocol, fix_imports=False)
    pickle.loads(pickled)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()

    path = _write_torch_zip(tmp_path / "pytorch_model.bin", pickled)
    with pytest.raises(UnsafeWeightsError) as error:
        read_state_dict(path)
    refused = f"{func.__module__}.{func.__name__}"  # os.system pickles as posix.system on Linux
    assert refused in str(error.value) and str(path) in str(error.value) and "model.safetensors" in str(error.value)
    assert isinstance(error.value, ValueError)
    assert not marker.exists()


def test_python2_names_of_a_call_are_refused_too(tmp_path):
    # protocol 2 with fix_imports (torch.save's setting) writes builtins.eval as __builtin__.eval
    marker = tmp_path / "ran"
    pickled = pickle.dumps({"w": RunsCommand(eval, f"open({str(marker)!r}, 'w').close()")}, protocol=2)
    with pytest.raises(UnsafeWeightsError, match=r"__builtin__\.eval"):
        read_state_dict(_write_torch_zip(tmp_path / "pytorch_model.bin", pickled))
    assert not marker.exists()


def test_a_pickle_cannot_change_the_allowed_globals_for_later_files(tmp_path, expected):
    # BUILD on torch.FloatStorage, setting its dtype: refused, and the next file reads as before
    pickled = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Osb."
    with pytest.raises(WeightsFormatError, match="not a readable torch pickle"):
        read_state_dict(_write_torch_zip(tmp_path / "build.bin", pickled))
    _assert_same(read_state_dict(TORCH_FILES / "module.bin"), expected["module.bin"])


def test_the_legacy_torch_format_is_refused_without_unpickling(tmp_path):
    with pytest.raises(WeightsFormatError, match="legacy") as error:
        read_state_dict(TORCH_FILES / "legacy.bin")
    message = str(error.value)
    assert str(TORCH_FILES / "legacy.bin") in message and "recent torch" in message and "safetensors" in message

    marker = tmp_path / "ran"
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(RunsCommand(os.system, f"touch '{marker}'"), protocol=2))
    with pytest.raises(WeightsFormatError, match="legacy"):
        read_state_dict(plain)
    assert not marker.exists()


def test_unreadable_files_name_themselves(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a torch file")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    (tmp_path / "model.h5").write_bytes(b"")
    for name, error_type, message in [("junk.bin", WeightsFormatError, "neither torch's zip format nor safetensors"),
                                      ("junk.safetensors", WeightsFormatError, "not a readable safetensors file"),
                                      ("model.h5", WeightsFormatError, "unknown weights format '.h5'"),
                                      ("absent.bin", FileNotFoundError, "does not exist")]:
        with pytest.raises(error_type, match=message) as error:
            read_state_dict(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)
    two = _write_torch_zip(tmp_path / "two.bin", b"\x80\x02}.")
    with zipfile.ZipFile(two, "a") as archive:
        archive.writestr("other/data.pkl", b"\x80\x02}.")
    with pytest.raises(WeightsFormatError, match="expected one <folder>/data.pkl"):
        read_state_dict(two)


def test_safetensors_round_trip(tmp_path):
    state = {"conv.weight": np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32), "half": np.array([1.5, -2.0], np.float16),
             "double": np.array([0.25], np.float64), "bn.num_batches_tracked": np.array(5, np.int64), "mask": np.array([True, False])}
    save_file(state, str(tmp_path / "model.safetensors"))
    read = read_state_dict(tmp_path / "model.safetensors")
    assert {name: str(array.dtype) for name, array in read.items()} == {
        "conv.weight": "float32", "half": "float32", "double": "float32", "bn.num_batches_tracked": "int64", "mask": "bool"}
    for name, values in state.items():
        np.testing.assert_array_equal(read[name], values.astype(read[name].dtype), strict=True)


def test_weights_file_prefers_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        weights_file(tmp_path)
    assert str(tmp_path) in str(error.value) and all(name in str(error.value) for name in WEIGHT_FILES)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert weights_file(tmp_path) == tmp_path / "pytorch_model.bin"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert weights_file(tmp_path) == tmp_path / "model.safetensors"


def test_a_compressed_storage_is_refused_before_it_is_inflated(tmp_path):
    """torch never compresses: a deflated entry could inflate a few kB into gigabytes."""
    values = np.zeros(1 << 16, np.float32)
    pickled = b"\x80\x02" + _opcodes({"w": _tensor("0", values)}) + b"."
    path = tmp_path / "deflated.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/data/0", values.tobytes(), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < values.nbytes // 50
    with pytest.raises(WeightsFormatError, match="compressed"):
        read_state_dict(path)


def test_many_tensors_on_one_storage_are_refused(tmp_path):
    """Each tensor is copied out of its storage: thousands of views of one storage would multiply memory."""
    values = np.arange(6, dtype=np.float32)
    pickled = b"\x80\x02" + _opcodes({f"w{i}": _tensor("0", values) for i in range(10)}) + b"."
    with pytest.raises(WeightsFormatError, match="four times"):
        read_state_dict(_write_torch_zip(tmp_path / "views.bin", pickled, {"0": values.tobytes()}))
    tied = b"\x80\x02" + _opcodes({"a": _tensor("0", values), "b": _tensor("0", values)}) + b"."  # tied weights: fine
    assert sorted(read_state_dict(_write_torch_zip(tmp_path / "tied.bin", tied, {"0": values.tobytes()}))) == ["a", "b"]


def test_a_state_dict_whose_methods_a_pickle_replaced_is_still_checked(tmp_path):
    """BUILD can set `items` on the OrderedDict instance; the check reads the dict with dict's own methods."""
    ordered = Call(Global("collections", "OrderedDict"), ())
    pickled = (b"\x80\x02" + _opcodes(ordered) + b"(" + _opcodes("w") + _opcodes(3) + b"u"
               + _opcodes({"items": ordered}) + b"b.")
    with pytest.raises(WeightsFormatError, match="'w' is not a tensor"):
        read_state_dict(_write_torch_zip(tmp_path / "build.bin", pickled))
