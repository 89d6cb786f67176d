"""Where finetuning reads its images: an array in memory (the Python API) or a catalog's shards on disk (the
workflow), a batch at a time either way, so memory holds a bounded number of batches whatever the catalog's size.

Rows are the labelled catalog's rows (0..n-1): `batches(rows)` yields (row numbers, 0-255 images) for the rows
asked for, in the order the source stores them; `training_dataset` yields shuffled (image, label, weight) batches.
`held(source, rows)` keeps a subset read again and again (unfreezing's validation galaxies, every epoch) as uint8
pixels in a file on local disk, so each pass reads those rows alone instead of decoding every shard again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

SHUFFLE_BYTES = 256 * 2**20  # a shard source's shuffle buffer, in uint8 image bytes (~1,700 images at 224 px, ~21,800 at 64)
PARSE_BATCH = 256  # records parsed per tf.io.parse_example call
INTERLEAVE_FILES = 8  # shards a training epoch reads from at once, a record from each in turn, in an order reshuffled every epoch


class ArrayImages:
    """0-255 RGB images (n, size, size, 3) in memory: what finetune() always took."""

    def __init__(self, images: np.ndarray):
        self.images = np.asarray(images)
        if self.images.ndim != 4 or self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"Images must be (galaxies, size, size, 3), got {self.images.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def batches(self, rows: np.ndarray | None = None, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, images) of `rows` (every row when None), in the order given, batch_size at a time."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, np.int64)
        for start in range(0, len(rows), batch_size):
            picked = rows[start : start + batch_size]
            yield picked, self.images[picked]

    def training_dataset(self, rows: np.ndarray, labels: np.ndarray, weights: np.ndarray, channels: int, batch_size: int, seed: int):
        """(image, label, weight) batches of `rows`, shuffled with `seed` every epoch (the whole set: it is in memory)."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.images[rows], labels[rows].astype(np.float32), weights))
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        return _preprocessed(ds.batch(batch_size), self.size, channels)


class ShardImages:
    """The images of a ready catalog whose galaxies are in shards (chunk_shards: columns shard, index_in_shard),
    read a batch at a time with tf.data; row k is `ready`'s row k."""

    def __init__(self, ready: pd.DataFrame, shard_root: Path | str):
        from zoobot_core.chunk_shards import RECORD, SHARD
        from zoobot_core.shards import read_metadata

        self.root = Path(shard_root)
        missing = [c for c in ("id_str", SHARD, RECORD) if c not in ready.columns]
        if missing:
            raise ValueError(f"The ready catalog lacks {missing}: it must come from gather_finetune_images (rerun it)")
        self.ids = ready["id_str"].astype(str).to_numpy()
        self.shards = ready[SHARD].astype(str).to_numpy()
        self.files = sorted(set(self.shards))
        chunks = sorted({s.split("/")[0] for s in self.files})
        meta = {c: read_metadata(self.root / c) for c in chunks}
        kinds = {(m["size"], m.get("image_encoding", "encoded")) for m in meta.values()}
        if len(kinds) > 1:
            raise ValueError(f"The chunks in {self.root} hold images of different sizes or encodings {sorted(kinds)}: rewrite them (snakemake -R write_finetune_shards)")
        self._size, self.encoding = kinds.pop() if kinds else (0, "raw")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return int(self._size)

    def _records(self, rows: np.ndarray, shuffle_seed: int | None = None):
        """(row, float32 0-255 image) of `rows`, read from only the shards that hold them: in shard order, or with
        `shuffle_seed`, from INTERLEAVE_FILES shards at a time, a record from each in turn, the shards in an order
        reshuffled (seeded) every time the dataset is iterated."""
        import tensorflow as tf

        from zoobot_core.datasets import _parser

        keep = np.zeros(len(self), bool)
        keep[rows] = True
        files = [str(self.root / f) for f in sorted(set(self.shards[rows]))]
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf.constant(self.ids), tf.range(len(self), dtype=tf.int64)), -1)
        wanted = tf.constant(keep)
        if shuffle_seed is None:
            records = tf.data.TFRecordDataset(files)
        else:
            order = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
            records = order.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), INTERLEAVE_FILES), block_length=1)
        ds = records.batch(PARSE_BATCH).map(_parser((), self.encoding, self.size)).unbatch()
        ds = ds.map(lambda item: (table.lookup(item["id_str"]), item["matrix"]))
        return ds.filter(lambda row, _: tf.logical_and(row >= 0, tf.gather(wanted, tf.maximum(row, 0))))

    def batches(self, rows: np.ndarray | None = None, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, images) of `rows` (every row when None) in shard order, batch_size at a time; every row
        asked for comes once, or RuntimeError names what the shards lack."""
        import tensorflow as tf

        rows = np.arange(len(self)) if rows is None else np.asarray(rows, np.int64)
        if not len(rows):
            return
        seen = 0
        for row, images in self._records(rows).batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            seen += len(row)
            yield row, images
        if seen != len(np.unique(rows)):
            raise RuntimeError(f"Read {seen} of {len(np.unique(rows))} galaxies asked for from the shards in {self.root}: "
                               "they no longer hold what the ready catalog lists; rerun gather_finetune_images (snakemake -R write_finetune_shards)")

    def training_dataset(self, rows: np.ndarray, labels: np.ndarray, weights: np.ndarray, channels: int, batch_size: int, seed: int):
        """(image, label, weight) batches of `rows`, their shards read in an order reshuffled every epoch,
        INTERLEAVE_FILES at a time, through a shuffle buffer of SHUFFLE_BYTES (reshuffled with `seed` every epoch):
        galaxies far apart in the shards meet in a batch, and memory is bounded whatever the number of galaxies."""
        import tensorflow as tf

        rows = np.asarray(rows, np.int64)
        label_of = np.zeros(len(self), np.float32)
        label_of[rows] = labels[rows]
        weight_of = np.zeros(len(self), np.float32)
        weight_of[rows] = weights
        label_t, weight_t = tf.constant(label_of), tf.constant(weight_of)
        buffer = int(max(1, min(len(rows), SHUFFLE_BYTES // max(1, self.size * self.size * 3))))
        ds = self._records(rows, shuffle_seed=seed).map(lambda row, image: (tf.cast(image, tf.uint8), tf.gather(label_t, row), tf.gather(weight_t, row)))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return _preprocessed(ds.batch(batch_size), self.size, channels)


class HeldImages:
    """Some rows of another image source, read once and kept as uint8 pixels in a file on local disk (`path`):
    `batches` reads them back with plain file reads, in the order they were kept, with no decoding and no memory
    beyond a batch. Row numbers are the other source's."""

    def __init__(self, source, rows: np.ndarray, path: Path | str, batch_size: int = 256):
        self.path = Path(path)
        self._size = source.size
        self._row_bytes = self._size * self._size * 3
        stored = []
        with open(self.path, "wb") as f:
            for picked, images in source.batches(np.asarray(rows, np.int64), batch_size):
                f.write(np.clip(np.rint(images), 0, 255).astype(np.uint8).tobytes())  # 0-255 integers already: exact
                stored.append(picked)
        self.rows = np.concatenate(stored) if stored else np.zeros(0, np.int64)
        self._order = np.argsort(self.rows, kind="stable")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        return int(self._size)

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Where each of `rows` is in the file; KeyError naming rows that were not kept."""
        found = np.searchsorted(self.rows[self._order], rows)
        found = np.minimum(found, max(len(self.rows) - 1, 0))
        missing = rows[(len(self.rows) == 0) | (self.rows[self._order][found] != rows)] if len(rows) else rows
        if len(missing):
            raise KeyError(f"Rows {missing[:5].tolist()} were not kept in {self.path}")
        return self._order[found]

    def batches(self, rows: np.ndarray | None = None, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, images) of `rows` (every kept row when None), in the order they were kept; KeyError for a
        row not kept."""
        positions = np.arange(len(self.rows)) if rows is None else np.sort(self._positions(np.asarray(rows, np.int64)))
        shape = (self._size, self._size, 3)
        with open(self.path, "rb") as f:
            for start in range(0, len(positions), batch_size):
                picked = positions[start : start + batch_size]
                if len(picked) and picked[-1] - picked[0] == len(picked) - 1:  # consecutive: one read
                    data = os.pread(f.fileno(), len(picked) * self._row_bytes, int(picked[0]) * self._row_bytes)
                else:
                    data = b"".join(os.pread(f.fileno(), self._row_bytes, int(k) * self._row_bytes) for k in picked)
                yield self.rows[picked], np.frombuffer(data, np.uint8).reshape(len(picked), *shape).astype(np.float32)


@contextmanager
def held(source, rows: np.ndarray, batch_size: int = 256) -> Iterator:
    """`rows` of `source` for repeated reading: an in-memory source as it is, a shard source's rows kept in a
    temporary file beside its shards folder (HeldImages; removed on exit) so that reading them again decodes nothing
    and skips the other rows' shards."""
    if isinstance(source, (ArrayImages, HeldImages)):
        yield source
        return
    # beside the shards (results/...: a disk), not in /tmp, which is memory (tmpfs) on many clusters and containers
    with tempfile.TemporaryDirectory(prefix=".zoobot_held_", dir=source.root.parent) as folder:
        yield HeldImages(source, rows, Path(folder) / "images.u8", batch_size)


ImageSource = ArrayImages | ShardImages | HeldImages


def _preprocessed(ds, size: int, channels: int):
    """Batches converted to the network's input (preprocess.preprocess_images), prefetched."""
    import tensorflow as tf

    from zoobot_core.preprocess import PreprocessingConfig, preprocess_images

    pre = PreprocessingConfig(input_size=size, make_greyscale=channels == 1)
    return ds.map(lambda x, y, w: (preprocess_images(x, pre), y, w)).prefetch(tf.data.AUTOTUNE)


def as_source(images) -> ArrayImages | ShardImages:
    """An image source as given, or an array of images wrapped as one."""
    return images if isinstance(images, (ArrayImages, ShardImages, HeldImages)) else ArrayImages(images)


def gather_rows(source, rows: np.ndarray, batch_size: int, compute, empty: tuple[int, ...] = ()) -> np.ndarray:
    """compute(images) -> (b, ...) for every row of `rows`, a batch at a time, returned in `rows`' order; with no
    rows, an empty (0, *empty) array."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return np.zeros((0, *empty))
    order = np.argsort(rows, kind="stable")
    out = None
    for picked, images in source.batches(rows, batch_size):
        values = np.asarray(compute(images))
        if out is None:
            out = np.zeros((len(rows), *values.shape[1:]), values.dtype)
        out[order[np.searchsorted(rows[order], picked)]] = values
    return out
