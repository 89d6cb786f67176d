"""Zoobot's model: augmentation layers, EfficientNetB0 base, dropout, and a Dirichlet-concentration head.

Written with keras layers and keras.ops only, so it runs on the TensorFlow or JAX backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

BASE_NAME = "efficientnetb0"
DROPOUT_NAME = "top_dropout"
HEAD_NAME = "concentrations"
MIN_SIZE = 32  # keras.applications.EfficientNetB0's smallest input


@keras.saving.register_keras_serializable(package="zoobot_core")
def dirichlet_concentration(x):
    """Zoobot's head activation: sigmoid(x) * 100 + 1, so every concentration lies in (1, 101)."""
    return ops.sigmoid(x) * 100.0 + 1.0


@keras.saving.register_keras_serializable(package="zoobot_core")
class CropAndResize(layers.Layer):
    """Random crop when training, centre crop otherwise (same scale either way), then resize."""

    def __init__(self, crop_size: int, output_size: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.crop_size, self.output_size, self.seed = int(crop_size), int(output_size), seed
        policy = self.dtype_policy
        self.random_crop = layers.RandomCrop(self.crop_size, self.crop_size, seed=seed, dtype=policy)
        self.centre_crop = layers.CenterCrop(self.crop_size, self.crop_size, dtype=policy)
        self.resize = layers.Resizing(self.output_size, self.output_size, interpolation="bilinear", dtype=policy)

    def build(self, input_shape) -> None:
        self.random_crop.build(input_shape)
        self.centre_crop.build(input_shape)
        self.resize.build((input_shape[0], self.crop_size, self.crop_size, input_shape[-1]))
        super().build(input_shape)

    def call(self, images, training=None):
        images = self.random_crop(images, training=True) if training else self.centre_crop(images)
        if self.crop_size != self.output_size:
            images = self.resize(images)
        return images

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "crop_size": self.crop_size, "output_size": self.output_size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="zoobot_core")
class GreyToRGB(layers.Layer):
    """Repeat a one-channel image into three equal channels, so greyscale images can use RGB weights.

    On grey input this is exactly what the RGB network sees for a grey RGB image; the first
    convolution's kernels are kept as trained rather than summed over channels.
    """

    def call(self, images):
        return ops.repeat(images, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="zoobot_core")
class Standardise(layers.Layer):
    """(x - mean) / scale per feature, with mean and scale set from training features (set_statistics)
    and saved with the model; starts as the identity."""

    def build(self, input_shape) -> None:
        self.mean = self.add_weight(name="mean", shape=(input_shape[-1],), initializer="zeros", trainable=False)
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones", trainable=False)
        super().build(input_shape)

    def set_statistics(self, mean, scale) -> None:
        """Set the mean and scale (features that never vary get scale 1, as in scikit-learn's StandardScaler)."""
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        self.mean.assign(np.asarray(mean, "float32"))
        self.scale.assign(np.asarray(scale, "float32"))

    def call(self, features):
        return (features - ops.cast(self.mean, features.dtype)) / ops.cast(self.scale, features.dtype)


def get_augmentation_layers(crop_size: int, resize_size: int, seed: int | None = None) -> list[layers.Layer]:
    """Zoobot's augmentations: random rotation (any angle, reflect fill), flips, random crop, resize.

    They compute in float32 whatever the dtype policy (mixed precision starts at the base).
    """
    return [
        layers.RandomRotation(0.5, fill_mode="reflect", seed=seed, name="random_rotation", dtype="float32"),
        layers.RandomFlip("horizontal_and_vertical", seed=None if seed is None else seed + 1, name="random_flip", dtype="float32"),
        CropAndResize(crop_size, resize_size, seed=None if seed is None else seed + 2, name="crop_and_resize", dtype="float32"),
    ]


def augmented_input(
    input_size: int, channels: int, crop_size: int, resize_size: int, seed: int | None = 0, settings: str = "train", network: str = "EfficientNetB0"
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """An image input in [0, 1] and Zoobot's augmentation layers after it: (inputs, augmented images of resize_size).

    `network` (the base that follows) and `settings` (the config section of its sizes) name the fix when the
    images would be below the 32 px every base needs."""
    if resize_size < MIN_SIZE:
        raise ValueError(
            f"{network} needs images of at least {MIN_SIZE} px after cropping; got {input_size} px cropped to {crop_size} and resized to "
            f"{resize_size}. Set {settings}.resize_size >= {MIN_SIZE}, or a larger crop_fraction or image size."
        )
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = inputs
    for layer in get_augmentation_layers(crop_size, resize_size, seed):
        x = layer(x)
    return inputs, x


def augmented_efficientnet(
    input_size: int, channels: int, crop_size: int, resize_size: int, seed: int | None = 0, rgb_weights: bool = False, settings: str = "train"
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.Model]:
    """Zoobot's network up to the representation: an image input in [0, 1], the augmentation layers,
    the 0-255 scaling Keras' EfficientNet expects, and EfficientNetB0 (random weights, average-pooled).

    Returns (inputs, pooled features, the EfficientNetB0 model, for loading weights). With
    `rgb_weights` a one-channel image is repeated into three (GreyToRGB) for RGB weights. `settings`
    names the config section whose sizes to fix when they are too small.
    """
    inputs, x = augmented_input(input_size, channels, crop_size, resize_size, seed, settings, "EfficientNetB0")
    # keras' EfficientNet divides by 255 internally (it expects ImageNet-style 0-255 input)
    x = layers.Rescaling(255.0, name="to_efficientnet_range", dtype="float32")(x)
    if rgb_weights and channels == 1:
        x, channels = GreyToRGB(name="grey_to_rgb")(x), 3
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(resize_size, resize_size, channels), pooling="avg")
    return inputs, base(x), base


def get_model(
    output_dim: int,
    input_size: int,
    crop_size: int | None = None,
    resize_size: int | None = None,
    channels: int = 1,
    dropout_rate: float = 0.2,
    head_activation=dirichlet_concentration,
    seed: int | None = 0,
    batchnorm_momentum: float | None = None,
) -> keras.Model:
    """EfficientNetB0 (random init) behind augmentation layers, with dropout and a new Dense head.

    Inputs are images in [0, 1] of shape (input_size, input_size, channels). The output has
    `output_dim` units: Dirichlet concentrations by default (one per answer). The base takes
    the Keras dtype policy in force (see hardware.precision_policy); the rest is float32.
    `batchnorm_momentum` overrides keras' 0.99: a lower value lets the moving statistics used
    at inference catch up within a short (few-hundred-step) training run.
    """
    crop_size = crop_size or int(round(input_size * 0.75))
    inputs, features, base = augmented_efficientnet(input_size, channels, crop_size, resize_size or crop_size, seed)
    if batchnorm_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = batchnorm_momentum
    x = layers.Dropout(dropout_rate, seed=seed, name=DROPOUT_NAME)(features)
    # the head stays float32 under mixed precision: concentrations feed lgamma in the loss
    outputs = layers.Dense(output_dim, activation=head_activation, name=HEAD_NAME, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="zoobot")


def representation_model(model: keras.Model, after: str = DROPOUT_NAME) -> keras.Model:
    """The model up to the base's pooled features (the input of layer `after`), sharing weights."""
    return keras.Model(model.inputs, model.get_layer(after).input, name="zoobot_representation")
