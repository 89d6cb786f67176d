"""TFRecord files of tf.train.Example records written without TensorFlow, so writing shards does not spend
seconds (and a few hundred MB) starting TensorFlow. The bytes equal TensorFlow's own writer's with
`SerializeToString(deterministic=True)` (tests/test_tfrecord.py checks them against it).

Example (tensorflow/core/example/example.proto): Features{map<string, Feature> feature = 1}, Feature is one of
BytesList (1) or FloatList (2, packed float32); deterministic serialization sorts the map by key.
TFRecord framing: uint64 length, masked CRC-32C of the length, the record, masked CRC-32C of the record.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import google_crc32c

_MASK_DELTA = 0xA282EAD8
if google_crc32c.implementation != "c":
    logging.getLogger(__name__).warning("google-crc32c has no C extension here: writing shards will be slow (reinstall google-crc32c)")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def example_bytes(features: dict[str, bytes | list[float]]) -> bytes:
    """A serialized tf.train.Example: bytes values as one-element BytesLists, lists of floats as FloatLists."""
    entries = []
    for key in sorted(features, key=str.encode):
        value = features[key]
        if isinstance(value, bytes):
            feature = _field(1, _field(1, value))
        else:
            packed = struct.pack(f"<{len(value)}f", *value)
            feature = _field(2, _field(1, packed) if packed else b"")
        entries.append(_field(1, _field(1, key.encode()) + _field(2, feature)))
    return _field(1, b"".join(entries)) if entries else b""


_BIG = 1024  # bytes values at least this long stay separate pieces: written and checksummed in place, never copied


class ExampleLayout:
    """tf.train.Examples that all have the same keys, encoded fast: each `bytes_keys` feature one bytes value, each
    `float_keys` feature one float. The bytes are example_bytes' (tests check them); only the values vary, so every
    key's framing is worked out once, each run of floats between two bytes features (in key order) is packed in one
    struct call, and big values (an image's pixels) are returned as pieces of their own rather than copied into one
    buffer (TFRecordWriter.write_pieces)."""

    def __init__(self, bytes_keys: Sequence[str], float_keys: Sequence[str]) -> None:
        self.bytes_keys = tuple(bytes_keys)
        self.float_keys = tuple(float_keys)
        if len({*self.bytes_keys, *self.float_keys}) != len(self.bytes_keys) + len(self.float_keys):
            raise ValueError(f"Duplicate feature keys in {self.bytes_keys + self.float_keys}")
        # runs of one-float entries between the bytes entries, in serialization order (keys sorted as bytes)
        self._runs: list[tuple[struct.Struct, list[bytes], list[int]]] = []
        self._order: list[str] = []  # the bytes keys, in order; run k comes before the k-th of them
        run_prefixes: list[bytes] = []
        run_columns: list[int] = []
        float_index = {key: i for i, key in enumerate(self.float_keys)}
        for key in sorted({*self.bytes_keys, *self.float_keys}, key=str.encode):
            if key in float_index:
                # the whole entry minus the 4 float bytes: constant for the key
                run_prefixes.append(_field(1, _field(1, key.encode()) + _field(2, _field(2, _field(1, bytes(4)))))[:-4])
                run_columns.append(float_index[key])
            else:
                self._close_run(run_prefixes, run_columns)
                self._order.append(key)
                run_prefixes, run_columns = [], []
        self._close_run(run_prefixes, run_columns)
        self._key_fields = {key: _field(1, key.encode()) for key in self.bytes_keys}

    def _close_run(self, prefixes: list[bytes], columns: list[int]) -> None:
        fmt = "<" + "".join(f"{len(prefix)}sf" for prefix in prefixes)
        self._runs.append((struct.Struct(fmt), prefixes, columns))

    def _bytes_entry_header(self, key: str, value: bytes) -> bytes:
        """An entry for `key` up to (not including) its value's bytes."""
        value_field = 1 + len(_varint(len(value))) + len(value)  # BytesList.value
        bytes_list = 1 + len(_varint(value_field)) + value_field  # Feature.bytes_list
        feature_field = 1 + len(_varint(bytes_list)) + bytes_list  # MapEntry.value
        entry = len(self._key_fields[key]) + feature_field
        return (b"\x0a" + _varint(entry) + self._key_fields[key] + b"\x12" + _varint(bytes_list) + b"\x0a" + _varint(value_field)
                + b"\x0a" + _varint(len(value)))

    def pieces(self, values: dict[str, bytes], floats: Sequence[float]) -> list[bytes]:
        """One Example as a list of byte strings to be written one after another (small parts joined, big values
        alone); b"".join(pieces) == example_bytes({**values, **{key: [float] ...}})."""
        if len(floats) != len(self.float_keys):
            raise ValueError(f"Expected {len(self.float_keys)} floats ({self.float_keys}), got {len(floats)}")
        if set(values) != set(self.bytes_keys):
            raise ValueError(f"Expected bytes values for {sorted(self.bytes_keys)}, got {sorted(values)}")
        out: list[bytes] = []
        small = bytearray()
        for k, (packer, prefixes, columns) in enumerate(self._runs):
            if columns:
                small += packer.pack(*[part for prefix, col in zip(prefixes, columns) for part in (prefix, floats[col])])
            if k < len(self._order):
                key = self._order[k]
                value = values[key]
                small += self._bytes_entry_header(key, value)
                if len(value) >= _BIG:
                    out += [bytes(small), value]
                    small = bytearray()
                else:
                    small += value
        if small:
            out.append(bytes(small))
        total = sum(len(piece) for piece in out)
        return [b"\x0a" + _varint(total) + out[0], *out[1:]] if total else []


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
    """TFRecord's masking of a CRC-32C value."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordWriter:
    """Write records to a TFRecord file (uncompressed), as tf.io.TFRecordWriter does; `sha256` is the file's
    checksum, taken as it is written (no second read of the file) unless `checksum` is False."""

    def __init__(self, path: Path | str, checksum: bool = True) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close() / the context manager
        self._hash = hashlib.sha256() if checksum else None

    def write(self, record: bytes) -> None:
        self.write_pieces([record])

    def write_pieces(self, pieces: Sequence[bytes]) -> None:
        """One record given as consecutive pieces (ExampleLayout.pieces): checksummed and written without joining them."""
        crc = 0
        for piece in pieces:
            crc = google_crc32c.extend(crc, piece)
        length = struct.pack("<Q", sum(len(piece) for piece in pieces))
        parts = [length + struct.pack("<I", masked_crc(length)), *pieces, struct.pack("<I", _mask(crc))]
        for part in parts:
            if self._hash is not None:
                self._hash.update(part)
            self._file.write(part)

    @property
    def sha256(self) -> str:
        """SHA-256 of everything written so far."""
        if self._hash is None:
            raise ValueError("This TFRecordWriter was opened with checksum=False")
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
