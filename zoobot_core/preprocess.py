"""Turn batches of dicts into (images, labels) for Keras: scale, greyscale, channel permutation."""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf


@dataclass
class PreprocessingConfig:
    """Zoobot's preprocessing settings; one config serves train, validation, test and prediction data."""

    label_cols: list[str] = field(default_factory=list)
    input_size: int = 300
    normalise_from_uint8: bool = True  # divide by 255
    make_greyscale: bool = True  # mean over RGB, keeping one channel
    permute_channels: bool = False  # random channel order, an augmentation for colour images
    seed: int = 0

    @property
    def channels(self) -> int:
        return 1 if self.make_greyscale else 3


def preprocess_images(images: tf.Tensor, config: PreprocessingConfig) -> tf.Tensor:
    """Apply the config to a batch of 0-255 images (B, H, W, 3)."""
    images = tf.ensure_shape(tf.cast(images, tf.float32), (None, config.input_size, config.input_size, 3))
    if config.normalise_from_uint8:
        images = images / 255.0
    if config.permute_channels:
        images = tf.gather(images, tf.random.shuffle(tf.range(3), seed=config.seed), axis=-1)
    if config.make_greyscale:
        images = tf.reduce_mean(images, axis=-1, keepdims=True)
    return images


def preprocess_labels(batch: dict, label_cols: list[str]) -> tf.Tensor:
    """Stack a batch's label columns into (B, n_labels) float32; a single 2-d 'label' is used as is."""
    if len(label_cols) == 1 and batch[label_cols[0]].shape.rank == 2:
        return tf.cast(batch[label_cols[0]], tf.float32)
    return tf.stack([tf.cast(batch[c], tf.float32) for c in label_cols], axis=-1)


def preprocess_dataset(dataset: tf.data.Dataset, config: PreprocessingConfig) -> tf.data.Dataset:
    """(images, labels) batches when the config has label_cols, else images alone."""
    if config.label_cols:
        return dataset.map(
            lambda batch: (preprocess_images(batch["matrix"], config), preprocess_labels(batch, config.label_cols)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.map(lambda batch: preprocess_images(batch["matrix"], config), num_parallel_calls=tf.data.AUTOTUNE)
