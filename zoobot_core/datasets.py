"""tf.data input pipelines: from image files (get_image_dataset) and from TFRecord shards (get_dataset).

Both yield batches of dicts with 'matrix' (float32 image, 0-255, HWC) and 'id_str', plus labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _decode(encoded: tf.Tensor, size: int | None, channels: int = 3) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    if size is not None:
        image = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == size),
            lambda: tf.cast(image, tf.float32),
            lambda: tf.image.resize(tf.cast(image, tf.float32), (size, size), method="lanczos3", antialias=True),
        )
        image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (size, size, channels))
    else:
        image = tf.cast(image, tf.float32)
    return image


def get_image_dataset(
    image_paths: Sequence[str],
    file_format: str = "png",
    requested_img_size: int | None = None,
    batch_size: int = 64,
    labels: Sequence | np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batched dataset of {'matrix', 'id_str' (the path), ['label']} read straight from png/jpg files.

    Images are resized on load when their size differs from `requested_img_size`.
    """
    if file_format not in ("png", "jpg", "jpeg"):
        raise ValueError(f"file_format must be 'png' or 'jpg', got {file_format!r}")
    paths = [str(p) for p in image_paths]
    if not paths:
        raise ValueError("get_image_dataset got no image paths")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} images: give one label (row) per image")
    tensors = {"id_str": paths}
    if labels is not None:
        tensors["label"] = np.asarray(labels, dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(item: dict) -> dict:
        item = dict(item)
        item["matrix"] = _decode(tf.io.read_file(item["id_str"]), requested_img_size)
        return item

    return ds.map(load, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def get_dataset(
    tfrecord_locs: Sequence[str],
    label_cols: Sequence[str] = (),
    batch_size: int = 64,
    shuffle: bool = False,
    repeat: bool = False,
    drop_remainder: bool = False,
    requested_img_size: int | None = None,
    seed: int = 0,
    shuffle_buffer: int = 2048,
    image_encoding: str = "encoded",
) -> tf.data.Dataset:
    """Batched dataset of {'matrix', 'id_str', <label col>...} from TFRecord shards.

    `image_encoding` is how the shards store images (shards.json says): 'encoded' PNG/JPEG bytes,
    or 'raw' uint8 pixels, which need `requested_img_size` to be reshaped.

    Records are parsed a batch at a time and decoded in parallel; shuffled reading interleaves the shard files. Order is
    deterministic: manifest order unshuffled, a fixed permutation per seed shuffled.
    """
    files = [str(p) for p in tfrecord_locs]
    if not files:
        raise ValueError("get_dataset got no TFRecord files; check the shard directory and split")
    if image_encoding not in ("encoded", "raw"):
        raise ValueError(f"image_encoding must be 'encoded' or 'raw', got {image_encoding!r}")
    if image_encoding == "raw" and requested_img_size is None:
        raise ValueError("Raw-pixel shards need requested_img_size (the size in shards.json) to be reshaped")
    # unshuffled: files one after another, so records come in manifest order; shuffled: interleave files
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) if shuffle else None)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    return ds.batch(batch_size, drop_remainder=drop_remainder).map(_parser(label_cols, image_encoding, requested_img_size), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _parser(label_cols: Sequence[str], image_encoding: str, requested_img_size: int | None):
    """A function parsing a batch of serialized records into {'matrix', 'id_str', <label col>...}."""
    features = {"id_str": tf.io.FixedLenFeature([], tf.string), "matrix": tf.io.FixedLenFeature([], tf.string)}
    features.update({col: tf.io.FixedLenFeature([], tf.float32) for col in label_cols})

    def parse(records: tf.Tensor) -> dict:
        # a whole batch at once: one parse_example call instead of one parse per record
        item = tf.io.parse_example(records, features)
        if image_encoding == "raw":
            pixels = tf.io.decode_raw(item["matrix"], tf.uint8)
            item["matrix"] = tf.cast(tf.reshape(pixels, (-1, requested_img_size, requested_img_size, 3)), tf.float32)
        else:
            spec = tf.TensorSpec((requested_img_size, requested_img_size, 3) if requested_img_size else (None, None, 3), tf.float32)
            item["matrix"] = tf.map_fn(lambda e: _decode(e, requested_img_size), item["matrix"], fn_output_signature=spec, parallel_iterations=16)
        return item

    return parse


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of (seed, epoch) alone, so a resumed run replays the same orders."""
    return (seed * 1_000_003 + epoch) % 2**31


def get_training_dataset(
    tfrecord_locs: Sequence[str],
    label_cols: Sequence[str],
    batch_size: int,
    first_epoch: int,
    epochs: int,
    seed: int,
    requested_img_size: int | None = None,
    shuffle_buffer: int = 2048,
    image_encoding: str = "encoded",
) -> tf.data.Dataset:
    """Training batches for epochs first_epoch .. epochs-1, one after another (fit with steps_per_epoch = batches per epoch).

    Each epoch shuffles the shard order and the records (buffer `shuffle_buffer`) with a seed derived from
    (seed, epoch) only: epoch 7 sees the same order whether the run started at epoch 0 or resumed at 5.
    The epochs are built here, with their seeds as plain integers, and concatenated (300 epochs: ~0.6 s).
    """
    import functools

    files = [str(p) for p in tfrecord_locs]
    if not files:
        raise ValueError("get_training_dataset got no TFRecord files; check the shard directory and split")
    if image_encoding == "raw" and requested_img_size is None:
        raise ValueError("Raw-pixel shards need requested_img_size (the size in shards.json) to be reshaped")
    if first_epoch >= epochs:
        raise ValueError(f"Nothing to train: first epoch {first_epoch} of {epochs}")
    parse = _parser(label_cols, image_encoding, requested_img_size)

    def one_epoch(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng([seed, epoch]).permutation(len(files))
        shards = tf.data.Dataset.from_tensor_slices([files[i] for i in order])
        records = shards.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=min(len(files), 8), deterministic=True)
        return records.shuffle(shuffle_buffer, seed=epoch_seed(seed, epoch)).batch(batch_size)

    stream = functools.reduce(lambda a, b: a.concatenate(b), (one_epoch(e) for e in range(first_epoch, epochs)))
    return stream.map(parse, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
