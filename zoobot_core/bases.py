"""The networks finetuning starts from: a model this pipeline trained, EfficientNetB0's ImageNet
weights, the same architecture from random weights (the no-pretraining control), or one of Zoobot 2's
published encoders (timm networks pretrained on Galaxy Zoo; zoobot_core.encoders), named
`hf_hub:<repo>` or by the path of a folder holding such a repo's files.

`resolve_base` checks the configured base is at hand before any work starts (the workflow calls it
while it reads the config); `build_network` puts the base's EfficientNetB0 behind Zoobot's
augmentation layers at any input size, with a new head. Keras is imported only where a network is
built, so the workflow can check a base while it reads the config without starting TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGENET, NONE, PIPELINE, ENCODER = "imagenet", "none", "pipeline", "encoder"
ENCODER_SIZE = 224  # the image size Zoobot 2's encoders were trained at
IMAGENET_FILE = "efficientnetb0_notop.h5"
IMAGENET_ORIGIN = "https://storage.googleapis.com/keras-applications/" + IMAGENET_FILE
MIRROR_VARIABLE = "ZOOBOT_CORE_IMAGENET_URL"  # where to fetch the file instead (a site mirror); same bytes, checked by MD5
IMAGENET_MD5 = "50bc09e76180e00e4465e1a485ddc09d"  # keras.applications.efficientnet.WEIGHTS_HASHES["b0"][1]
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
STANDARDISE, DROPOUT, HEAD = "finetune_standardise", "finetune_dropout", "finetune_head"


class BaseModelError(ValueError):
    """The configured base cannot be used (missing file, weights not downloadable, wrong kind)."""


@dataclass(frozen=True)
class BaseSpec:
    """Which base: 'pipeline' (a .keras model this pipeline trained), 'imagenet' (a weights file in
    Keras' EfficientNetB0 no-top layout), 'encoder' (a folder with a timm encoder's config.json and
    weights) or 'none' (random weights); `path` for all but the last."""

    kind: str
    path: str | None = None

    @property
    def label(self) -> str:
        return self.kind if self.kind == NONE or (self.kind == IMAGENET and Path(self.path or "").name == IMAGENET_FILE) else f"{self.kind}:{self.path}"


def keras_cache_file(name: str = IMAGENET_FILE) -> Path:
    """Where keras.utils.get_file keeps a downloaded model file: $KERAS_HOME/models (default ~/.keras/models)."""
    home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        home = Path("/tmp/.keras")  # what Keras falls back to when the home folder is read-only
    return home / "models" / name


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_imagenet_weights(origin: str | None = None, timeout: float = 60.0) -> Path:
    """EfficientNetB0's ImageNet weights (no top) from Keras' cache, downloaded there once if missing
    (from `origin`, else $ZOOBOT_CORE_IMAGENET_URL, else Keras' own address). The file must have the
    MD5 Keras publishes for it, cached or downloaded.

    Offline without the file: BaseModelError naming the file, where to put it and how to get it.
    """
    origin = origin or os.environ.get(MIRROR_VARIABLE) or IMAGENET_ORIGIN
    target = keras_cache_file()
    if target.is_file():
        if _md5(target) == IMAGENET_MD5:
            return target
        log.warning("%s is not the ImageNet weights file Keras publishes (MD5 differs); fetching it again", target)
    fix = (
        f"EfficientNetB0's ImageNet weights are not in Keras' cache ({target}) and could not be downloaded from {origin}. "
        "On a machine with internet run: python -c \"import keras; keras.applications.EfficientNetB0(weights='imagenet', include_top=False)\" "
        f"and copy ~/.keras/models/{IMAGENET_FILE} to {target} (or set KERAS_HOME), or set finetune.base_model to the path of that file."
    )
    import urllib.request

    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    log.info("Downloading EfficientNetB0 ImageNet weights from %s to %s", origin, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(origin, timeout=timeout) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        if _md5(partial) != IMAGENET_MD5:
            raise OSError(f"the downloaded file's MD5 is not {IMAGENET_MD5}")
        os.replace(partial, target)
    except Exception as err:  # refused, timed out, cut short, a malformed address, an unwritable cache: all the same to the user
        raise BaseModelError(f"{fix} ({type(err).__name__}: {err})") from err
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_base(base_model: str | None, default_model: str | None = None, origin: str | None = None, in_job: bool = False) -> BaseSpec:
    """The base named by `finetune.base_model`, checked to be usable now, before any work starts.

    'imagenet' (Keras' cache, downloaded once if missing), 'none' (random weights), a .keras model
    this pipeline trained, a .h5 weights file of EfficientNetB0 without its top (ImageNet's, kept
    locally), or a Zoobot 2 encoder: 'hf_hub:<owner>/<repo>' (Hugging Face's cache, downloaded once if
    missing) or a folder holding its config.json and weights. None: `default_model` (the run's own
    model, which the workflow trains first). `in_job` (a workflow job): an encoder only from the
    cache or its folder, never downloaded, and its weights not read twice.
    """
    if base_model is None:
        if default_model is None:
            raise BaseModelError("finetune.base_model is not set and there is no default model")
        return BaseSpec(PIPELINE, str(default_model))
    name = str(base_model)
    if name.lower() == NONE:
        return BaseSpec(NONE)
    if name.lower() == IMAGENET:
        return BaseSpec(IMAGENET, str(fetch_imagenet_weights(origin)))
    from zoobot_core.encoders.hub import encoder_folder, is_encoder_name

    path = Path(name).expanduser()
    if is_encoder_name(name) or path.is_dir():
        from zoobot_core.encoders import describe_encoder

        try:
            folder = encoder_folder(name, download=not in_job)
            if not in_job:
                describe_encoder(folder)  # an architecture not built here, unsafe or unfitting weights: the run stops now
        except (ValueError, OSError) as err:  # EncoderUnavailableError, ArchitectureError, the weights' and state dict's errors
            raise BaseModelError(f"finetune.base_model {name!r}: {err}") from err
        return BaseSpec(ENCODER, str(Path(folder).resolve()))
    kind = PIPELINE if path.suffix == ".keras" else IMAGENET if path.suffix == ".h5" else None
    if kind is None:
        raise BaseModelError(
            f"finetune.base_model is {name!r}: use 'imagenet', 'none', a .keras model this pipeline trained, "
            "a .h5 file of EfficientNetB0's ImageNet weights without the top, a Zoobot 2 encoder as "
            "'hf_hub:mwalmsley/zoobot-encoder-convnext_nano', or a folder holding such an encoder's config.json and weights"
        )
    if not path.is_file():
        raise BaseModelError(f"finetune.base_model {path} does not exist; train a model first or fix the path")
    return BaseSpec(kind, str(path.resolve()))


def efficientnet_of(model):
    """The base network inside a model built by model.get_model or build_network: its EfficientNetB0, or
    the Zoobot 2 encoder (a nested timm_<architecture> model)."""
    from zoobot_core.encoders import is_encoder_network
    from zoobot_core.model import BASE_NAME

    found = [layer for layer in model.layers if layer.name.startswith(BASE_NAME) or is_encoder_network(layer)]
    if not found:
        raise BaseModelError(f"Model {model.name!r} has no {BASE_NAME} layer: it was not built by this pipeline")
    return found[0]


def _load_imagenet(network, weights_path: str) -> None:
    """Load Keras' EfficientNetB0 ImageNet weights into a network built with weights=None, and fold in
    the extra input scaling Keras adds only when it builds the network for weights='imagenet'."""
    import numpy as np

    try:
        network.load_weights(weights_path)
    except (ValueError, OSError, KeyError) as err:
        raise BaseModelError(f"{weights_path} does not hold EfficientNetB0 no-top weights Keras can load ({err})") from err
    # Keras divides the normalised input once more by sqrt(stddev) for ImageNet weights (its efficientnet.py,
    # TF issue 49930); the same as multiplying the Normalization layer's variance by stddev
    import keras

    norm = next(layer for layer in network.layers if isinstance(layer, keras.layers.Normalization))
    mean, variance, *rest = norm.get_weights()
    norm.set_weights([mean, variance * np.asarray(IMAGENET_STDDEV_RGB, variance.dtype).reshape(variance.shape), *rest])
    refresh_normalization(network)


def refresh_normalization(network) -> None:
    """Keras' Normalization layer works from a copy of its statistics made when they were loaded;
    after set_weights it must make that copy again (finalize_state), or it keeps the old ones."""
    import keras

    for layer in network.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


def base_channels(base: BaseSpec, greyscale: bool | None) -> int:
    """Image channels the finetuned network takes: the pipeline model's or the encoder's own (1 for
    Zoobot 2's greyscale encoders); otherwise 1 if greyscale."""
    if base.kind in (PIPELINE, ENCODER):
        if base.kind == PIPELINE:
            from zoobot_core.runtime import load_keras_model

            channels = int(load_keras_model(base.path).input_shape[-1])
        else:
            from zoobot_core.encoders import describe_encoder

            channels = describe_encoder(base.path).in_chans
        if greyscale is not None and greyscale != (channels == 1):
            raise BaseModelError(
                f"finetune.greyscale is {greyscale} but the base {base.path} takes {channels}-channel images; "
                "leave finetune.greyscale unset (null) to follow the base"
            )
        return channels
    return 1 if greyscale else 3


def build_network(
    base: BaseSpec,
    input_size: int,
    channels: int,
    crop_size: int,
    resize_size: int,
    head_units: int,
    head_activation: str | None,
    dropout_rate: float = 0.2,
    seed: int | None = 0,
):
    """Zoobot's augmentation layers, the base's EfficientNetB0 (weights loaded), a standardisation of
    its pooled features, dropout and a new Dense head; for images in [0, 1] of any size.

    The standardisation (Standardise) starts as the identity; finetune sets it (and the head) from
    the training galaxies' features. EfficientNet's weights do not depend on the image size, so a
    base trained at 64 px can be finetuned at 128 px; greyscale images go through the ImageNet
    weights by repeating their channel (GreyToRGB). A Zoobot 2 encoder takes the images in [0, 1] as
    they are (no ImageNet mean/std, as Zoobot feeds it), with the channels its weights have.
    """

    from zoobot_core.model import augmented_efficientnet

    if base.kind == ENCODER:
        inputs, features = augmented_encoder(base.path, input_size, channels, crop_size, resize_size, seed)
        return _with_head(inputs, features, head_units, head_activation, dropout_rate, seed)
    inputs, features, network = augmented_efficientnet(input_size, channels, crop_size, resize_size, seed, rgb_weights=base.kind == IMAGENET,
                                                       settings="finetune.settings")
    if base.kind == IMAGENET:
        _load_imagenet(network, base.path)
    elif base.kind == PIPELINE:
        from zoobot_core.encoders import is_encoder_network
        from zoobot_core.runtime import load_keras_model

        source = efficientnet_of(load_keras_model(base.path))
        if is_encoder_network(source):
            raise BaseModelError(
                f"The base {base.path} was finetuned from the Zoobot 2 encoder {source.name[len('timm_'):]}: a finetuned model is not a base here. "
                "Set finetune.base_model to that encoder (its hf_hub: name or folder) instead"
            )
        if source.input_shape[-1] != network.input_shape[-1]:
            raise BaseModelError(f"The base {base.path} takes {source.input_shape[-1]}-channel images, not {network.input_shape[-1]}")
        network.set_weights(source.get_weights())
        refresh_normalization(network)
    elif base.kind != NONE:
        raise BaseModelError(f"Unknown base kind {base.kind!r}")
    return _with_head(inputs, features, head_units, head_activation, dropout_rate, seed)


def _with_head(inputs, features, head_units: int, head_activation: str | None, dropout_rate: float, seed: int | None):
    """The finetuned model: standardised pooled features, MC dropout and a new Dense head."""
    import keras
    from keras import layers

    from zoobot_core.model import Standardise

    x = Standardise(name=STANDARDISE)(features)
    x = layers.Dropout(dropout_rate, seed=seed, name=DROPOUT)(x)
    outputs = layers.Dense(head_units, activation=head_activation, name=HEAD, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="zoobot_finetuned")


def augmented_encoder(folder: str, input_size: int, channels: int, crop_size: int, resize_size: int, seed: int | None = 0, settings: str = "finetune.settings"):
    """Zoobot's augmentation layers, then the encoder in `folder` (weights loaded): (image input, pooled features)."""
    from zoobot_core.encoders import load_encoder
    from zoobot_core.model import augmented_input

    inputs, x = augmented_input(input_size, channels, crop_size, resize_size, seed, settings, "The encoder (trained at 224 px)")
    encoder = load_encoder(folder, (resize_size, resize_size, channels))
    return inputs, encoder(x)
