"""Where finetuning reads its images: an array in memory (the Python API) or a catalog's shards on disk (the
workflow), a batch at a time either way, so memory holds a bounded number of batches whatever the catalog's size.

Rows are the labelled catalog's rows (0..n-1): `batches(rows)` yields (row numbers, 0-255 images) for the rows
asked for, in the order the source stores them; `training_dataset` yields shuffled (image, label, weight) batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

SHUFFLE_BYTES = 256 * 2**20  # a shard source's shuffle buffer, in uint8 image bytes (~1,700 images at 224 px, ~21,800 at 64)
PARSE_BATCH = 256  # records parsed per tf.io.parse_example call


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

    def _records(self, rows: np.ndarray):
        """(row, float32 0-255 image) of `rows`, read in shard order from only the shards that hold them."""
        import tensorflow as tf

        from zoobot_core.datasets import _parser

        keep = np.zeros(len(self), bool)
        keep[rows] = True
        files = [str(self.root / f) for f in sorted(set(self.shards[rows]))]
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf.constant(self.ids), tf.range(len(self), dtype=tf.int64)), -1)
        wanted = tf.constant(keep)
        ds = tf.data.TFRecordDataset(files).batch(PARSE_BATCH).map(_parser((), self.encoding, self.size)).unbatch()
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
        """(image, label, weight) batches of `rows`, through a shuffle buffer of SHUFFLE_BYTES (reshuffled with
        `seed` every epoch): memory bounded whatever the number of galaxies."""
        import tensorflow as tf

        rows = np.asarray(rows, np.int64)
        label_of = np.zeros(len(self), np.float32)
        label_of[rows] = labels[rows]
        weight_of = np.zeros(len(self), np.float32)
        weight_of[rows] = weights
        label_t, weight_t = tf.constant(label_of), tf.constant(weight_of)
        buffer = int(max(1, min(len(rows), SHUFFLE_BYTES // max(1, self.size * self.size * 3))))
        ds = self._records(rows).map(lambda row, image: (tf.cast(image, tf.uint8), tf.gather(label_t, row), tf.gather(weight_t, row)))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return _preprocessed(ds.batch(batch_size), self.size, channels)


ImageSource = ArrayImages | ShardImages


def _preprocessed(ds, size: int, channels: int):
    """Batches converted to the network's input (preprocess.preprocess_images), prefetched."""
    import tensorflow as tf

    from zoobot_core.preprocess import PreprocessingConfig, preprocess_images

    pre = PreprocessingConfig(input_size=size, make_greyscale=channels == 1)
    return ds.map(lambda x, y, w: (preprocess_images(x, pre), y, w)).prefetch(tf.data.AUTOTUNE)


def as_source(images) -> ArrayImages | ShardImages:
    """An image source as given, or an array of images wrapped as one."""
    return images if isinstance(images, (ArrayImages, ShardImages)) else ArrayImages(images)


def gather_rows(source, rows: np.ndarray, batch_size: int, compute) -> np.ndarray:
    """compute(images) -> (b, ...) for every row of `rows`, a batch at a time, returned in `rows`' order."""
    rows = np.asarray(rows, np.int64)
    position = {int(r): k for k, r in enumerate(rows)}
    out = None
    for picked, images in source.batches(rows, batch_size):
        values = np.asarray(compute(images))
        if out is None:
            out = np.zeros((len(rows), *values.shape[1:]), values.dtype)
        out[[position[int(r)] for r in picked]] = values
    return out
