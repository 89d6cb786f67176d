"""TFRecord files of tf.train.Example records written without TensorFlow, so writing shards does not spend
seconds (and a few hundred MB) starting TensorFlow. The bytes equal TensorFlow's own writer's with
`SerializeToString(deterministic=True)` (tests/test_tfrecord.py checks them against it).

Example (tensorflow/core/example/example.proto): Features{map<string, Feature> feature = 1}, Feature is one of
BytesList (1) or FloatList (2, packed float32); deterministic serialization sorts the map by key.
TFRecord framing: uint64 length, masked CRC-32C of the length, the record, masked CRC-32C of the record.
"""

from __future__ import annotations

import logging
import struct
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


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordWriter:
    """Write records to a TFRecord file (uncompressed), as tf.io.TFRecordWriter does."""

    def __init__(self, path: Path | str) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close() / the context manager

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", masked_crc(length)))
        self._file.write(record)
        self._file.write(struct.pack("<I", masked_crc(record)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
