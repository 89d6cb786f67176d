"""Read a timm state dict (model.safetensors or torch's pytorch_model.bin) into NumPy, without torch and without running code.

torch's zip format is a pickle (`<top>/data.pkl`) of an OrderedDict of tensors whose storages are raw files
(`<top>/data/<key>`). The pickle is read by an unpickler that resolves exactly the globals torch writes for a
state dict and refuses every other one, so a file that would call `os.system` (or anything else) on load raises
`UnsafeWeightsError` instead.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TORCH_SUFFIXES = (".bin", ".pt", ".pth")

# torch's legacy storage classes, as torch.save names them, and the NumPy dtype of their raw bytes (bfloat16: uint16)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_SAFETENSORS_BF16 = "BF16"
_NESTING_KEYS = ("state_dict", "model")


class UnsafeWeightsError(ValueError):
    """A weights file asks to import something a state dict never needs: it is refused, never run."""


class WeightsFormatError(ValueError):
    """A weights file is not a state dict this reader understands (legacy torch format, corrupt, not tensors)."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{parameter name: array} of a safetensors or torch zip file; float tensors come back as float32, others as their own dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        state = _read_torch_zip(path)
    else:
        raise WeightsFormatError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    return {name: _as_float32(array) for name, array in state.items()}


def weights_file(folder: Path) -> Path:
    """The first of WEIGHT_FILES present in `folder` (safetensors preferred)."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no weights file in {folder}: looked for {' or '.join(WEIGHT_FILES)}")


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32 else array


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the high half of a float32: shift the 16 bits up."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            names = list(handle.keys())
            bfloat16 = {name for name in names if handle.get_slice(name).get_dtype() == _SAFETENSORS_BF16}
            state = {name: handle.get_tensor(name) for name in names if name not in bfloat16}
    except SafetensorError as error:
        raise WeightsFormatError(f"{path} is not a readable safetensors file: {error}") from error
    if bfloat16:  # NumPy has no bfloat16, so safetensors.numpy cannot return these
        state.update(_read_safetensors_bfloat16(path, bfloat16))
    return state


def _read_safetensors_bfloat16(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The BF16 tensors of a safetensors file as float32, read from its header's offsets (8-byte length, JSON, data)."""
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
        arrays = {}
        for name in names:
            begin, end = header[name]["data_offsets"]
            handle.seek(8 + header_size + begin)
            bits = np.frombuffer(handle.read(end - begin), dtype="<u2").reshape(header[name]["shape"])
            arrays[name] = _bfloat16_to_float32(bits)
    return arrays


class _StorageType(NamedTuple):
    """What the unpickler hands back for `torch.<name>Storage`: a marker, never torch's class (a tuple: BUILD cannot change it)."""

    name: str
    dtype: np.dtype


class _Storage(NamedTuple):
    """One storage file of the zip, as a flat array."""

    type: _StorageType
    values: np.ndarray


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 for NumPy: the (size, stride) view of the storage from storage_offset, copied."""
    if not isinstance(storage, _Storage):
        raise WeightsFormatError(f"_rebuild_tensor_v2 got {type(storage).__name__} instead of a storage")
    if not (_is_ints(size) and _is_ints(stride) and len(size) == len(stride) and isinstance(storage_offset, int)):
        raise WeightsFormatError(f"_rebuild_tensor_v2 got size {size!r}, stride {stride!r}, offset {storage_offset!r}")
    values = storage.values
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise WeightsFormatError(f"negative size, stride or offset: {size!r}, {stride!r}, {storage_offset!r}")
    if all(n > 0 for n in size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= values.size:  # as_strided would read past the storage
            raise WeightsFormatError(f"tensor of size {tuple(size)}, stride {tuple(stride)}, offset {storage_offset} overruns its storage of {values.size}")
        # a state dict's tensor never has more elements than its storage: zero strides would let a few bytes expand to any size
        if int(np.prod(np.asarray(size, dtype=object))) > values.size - storage_offset:
            raise WeightsFormatError(f"tensor of size {tuple(size)} has more elements than its storage ({values.size - storage_offset} from offset "
                                     f"{storage_offset}): a state dict holds no expanded (zero-stride) tensors")
    itemsize = values.itemsize
    view = np.lib.stride_tricks.as_strided(values[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False)
    array = np.array(view, order="C")  # a C-contiguous copy, so the storage bytes can be freed
    return _bfloat16_to_float32(array) if storage.type.name == "BFloat16Storage" else array


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> np.ndarray:
    """torch._utils._rebuild_parameter for NumPy: a Parameter is its tensor."""
    if not isinstance(data, np.ndarray):
        raise WeightsFormatError(f"_rebuild_parameter got {type(data).__name__} instead of a tensor")
    return data


def _is_ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a state dict pickle may name, as fresh objects for each file, so that a pickle which sets
    attributes on them (BUILD) changes nothing beyond its own load."""

    def rebuild_tensor_v2(*args: Any) -> np.ndarray:
        return _rebuild_tensor_v2(*args)

    def rebuild_parameter(*args: Any) -> np.ndarray:
        return _rebuild_parameter(*args)

    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
    }


ALLOWED_GLOBALS = tuple(f"{module}.{name}" for module, name in _allowed_globals())


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles torch's data.pkl with only the globals of a state dict; storages are read from the open zip."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, top: str, byteorder: str, path: Path) -> None:
        super().__init__(file)
        self._archive, self._top, self._byteorder, self._path = archive, top, byteorder, path
        self._storages: dict[str, _Storage] = {}
        self._globals = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the allowed globals; any other is refused before it is imported."""
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"{self._path} asks to load {module}.{name}, which a state dict of tensors never needs, so it was refused "
                "(nothing was run; a state dict may only name collections.OrderedDict, torch._utils._rebuild_tensor_v2 or "
                "_rebuild_parameter and torch's typed storages). If you trust the file, "
                "convert it to model.safetensors on a trusted machine with torch: "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        """('storage', storage type, key, location, numel) -> that storage's values, read once per key."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsFormatError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str) and isinstance(numel, int)):
            raise WeightsFormatError(f"{self._path}: unexpected persistent id {pid!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type, self._read_storage(key, storage_type, numel))
        return self._storages[key]

    def _read_storage(self, key: str, storage_type: _StorageType, numel: int) -> np.ndarray:
        entry = f"{self._top}/data/{key}"
        try:
            info = self._archive.getinfo(entry)
        except KeyError:
            raise WeightsFormatError(f"{self._path}: storage {entry} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; a compressed entry could inflate a small file to any size
            raise WeightsFormatError(f"{self._path}: storage {entry} is compressed, which torch.save never does; not read")
        size = info.file_size
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        if size != numel * dtype.itemsize:  # checked before reading: the pickle's numel is not trusted
            raise WeightsFormatError(f"{self._path}: storage {entry} holds {size} bytes, not {numel} x {dtype.itemsize}")
        return np.frombuffer(self._archive.read(entry), dtype=dtype).astype(storage_type.dtype, copy=False)


def _read_torch_zip(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            start = handle.read(1)
        kind = "torch's legacy (pre-1.6, non-zip) format" if start == b"\x80" else "neither torch's zip format nor safetensors"
        raise WeightsFormatError(
            f"{path} is in {kind} and is not read (a plain pickle can run code). Re-save it on a trusted machine with a recent torch "
            "(torch.save(torch.load(path, weights_only=True), path)) or, better, as model.safetensors with safetensors.torch.save_file."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsFormatError(f"{path}: expected one <folder>/data.pkl in the torch archive, found {pickles or 'none'}")
        top = pickles[0][: -len("/data.pkl")]
        byteorder = archive.read(f"{top}/byteorder").decode().strip() if f"{top}/byteorder" in archive.namelist() else "little"
        if byteorder not in ("little", "big"):
            raise WeightsFormatError(f"{path}: unknown byte order {byteorder!r} in {top}/byteorder")
        with archive.open(pickles[0]) as handle:
            unpickler = _StateDictUnpickler(handle, archive, top, byteorder, path)
            try:
                loaded = unpickler.load()
            except (UnsafeWeightsError, WeightsFormatError):
                raise
            except Exception as error:  # anything else a malformed pickle raises (MemoryError, OverflowError, ...): one error type
                raise WeightsFormatError(f"{path}: {pickles[0]} is not a readable torch pickle: {type(error).__name__}: {error}") from error
        state = _as_state_dict(loaded, path)
    # tensors sharing a storage are copied each; more elements than the storages hold, many times over, is no state dict
    stored = sum(storage.values.size for storage in unpickler._storages.values())
    if sum(array.size for array in state.values()) > 4 * stored:
        raise WeightsFormatError(f"{path}: its tensors hold over four times the elements of its storages; not a state dict")
    return state


def _as_state_dict(loaded: Any, path: Path) -> dict[str, np.ndarray]:
    """The loaded object as {str: array}, unwrapping a lone 'state_dict' or 'model' key.

    Only a plain dict or OrderedDict is accepted, read with dict's own methods: a pickle can set attributes on the
    instance (BUILD), so its `items` or `keys` could be anything."""

    def mapping(value: Any) -> bool:
        return type(value) in (dict, collections.OrderedDict)

    if mapping(loaded) and dict.__len__(loaded) == 1:
        (key, inner), = dict.items(loaded)
        if key in _NESTING_KEYS and mapping(inner):
            loaded = inner
    if not mapping(loaded):
        raise WeightsFormatError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors")
    items = list(dict.items(loaded))
    wrong = [repr(key) for key, value in items if not (type(key) is str and type(value) is np.ndarray)]
    if wrong:
        raise WeightsFormatError(f"{path} is not a state dict of tensors only: {', '.join(wrong[:5])} {'are' if len(wrong) > 1 else 'is'} not a tensor")
    return dict(items)
