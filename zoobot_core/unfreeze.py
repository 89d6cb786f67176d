"""The Keras training loop of finetuning's unfreezing stage: which of the base's stages train (counted in the
architecture's own units), class weights, the fit on images streamed from an image source, and the number of
epochs chosen on an inner validation split by the one-standard-error rule. Cross-validation (finetune.py) calls it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from zoobot_core.bases import HEAD, efficientnet_of
from zoobot_core.image_source import ImageSource, gather_rows, held

if TYPE_CHECKING:
    from zoobot_core.finetune import FinetuneConfig

log = logging.getLogger(__name__)


def _stage(layer_name: str) -> str:
    """EfficientNet's stage of a layer: 'block6' for 'block6c_expand_conv', 'top' for 'top_conv', else its prefix."""
    prefix = layer_name.split("_")[0]
    return prefix[:6] if prefix.startswith("block") else prefix


def unfreezable_units(model) -> tuple[list[str], str, object]:
    """The base's stages `unfreeze_blocks` counts, in order (EfficientNetB0's block1..block7; an encoder's stages,
    blocks or layers), the layer name of what trains with the last one ('top', 'head' or none), and the
    function giving each of the base's layers its stage."""
    from zoobot_core.encoders import encoder_stages, is_encoder_network, stage_of

    network = efficientnet_of(model)
    if is_encoder_network(network):
        stages = encoder_stages(network)
        return [s for s in stages if s not in ("stem", "head")], "head" if "head" in stages else "", lambda name: stage_of(network, name)
    return sorted({_stage(layer.name) for layer in network.layers if layer.name.startswith("block")}), "top", _stage


def check_unfreeze_blocks(model, n_blocks: int) -> None:
    """unfreeze_blocks may not ask for more stages than the base has: ValueError naming its count."""
    units, _, _ = unfreezable_units(model)
    if n_blocks > len(units):
        raise ValueError(f"finetune.settings.unfreeze_blocks is {n_blocks} but the base {efficientnet_of(model).name} has {len(units)} "
                         f"({', '.join(units)}): set it to at most {len(units)}")


def unfreeze_last_blocks(model, n_blocks: int) -> list[str]:
    """Make the base's last n stages and the head trainable, counted in the architecture's own units:
    EfficientNetB0's blocks (block7, block6, ...; 7 in all, as Zoobot counts them) with its top
    convolution; a Zoobot 2 ConvNeXt's stages (stages_3, ...; 4 in all) with its final norm; a timm
    EfficientNet's blocks (blocks_6, ...) with its conv_head; a ResNet's layers (layer4, ...). Everything
    else, and every BatchNormalization layer, stays frozen (Keras then runs BatchNorm in inference mode)."""
    import keras

    check_unfreeze_blocks(model, n_blocks)
    units, last, stage = unfreezable_units(model)
    chosen = set(units[-n_blocks:]) | ({last} - {""})
    network = efficientnet_of(model)
    for layer in model.layers:
        layer.trainable = layer is network or layer.name == HEAD
    for layer in network.layers:
        layer.trainable = stage(layer.name) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return sorted(chosen)


def _class_weights(labels: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Per-galaxy weights that give every class the same total weight (1 for regression)."""
    if task == "regression":
        return np.ones(len(labels), np.float32)
    counts = np.bincount(labels.astype(int), minlength=n_classes).astype(np.float64)
    per_class = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return per_class[labels.astype(int)].astype(np.float32)


def _compile_unfrozen(model, config: FinetuneConfig) -> None:
    import keras

    unfreeze_last_blocks(model, config.unfreeze_blocks)
    loss = {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy", "regression": "mse"}[config.task]
    model.compile(optimizer=keras.optimizers.Adam(config.unfreeze_learning_rate), loss=loss, jit_compile=False)
    model.optimizer.build(model.trainable_variables)  # slots now, so fit traces its step once (see train.py)


def _validation_losses(model, source: ImageSource, val: np.ndarray, channels: int, batch_size: int, labels: np.ndarray, weights: np.ndarray,
                       task: str) -> np.ndarray:
    """Each validation galaxy's loss (dropout off, centre crop), times its class weight (weights averaging 1); the
    images read a batch at a time."""
    from zoobot_core.finetuned import model_input

    outputs = gather_rows(source, val, batch_size, lambda images: np.asarray(model.predict_on_batch(model_input(images, channels)), np.float64))
    if task == "binary":
        p = np.clip(outputs[:, 0], 1e-7, 1 - 1e-7)
        losses = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    elif task == "multiclass":
        losses = -np.log(np.clip(outputs[np.arange(len(labels)), labels.astype(int)], 1e-7, 1))
    else:
        losses = (outputs[:, 0] - labels) ** 2
    return losses * weights / weights.mean()


def train_unfrozen(model, images: ImageSource, labels, rows, channels: int, config: FinetuneConfig, seed: int, epochs: int, val: np.ndarray | None = None) -> pd.DataFrame:
    """Train the unfrozen blocks and the head on `rows` (class-weighted, augmented, shuffled with `seed`).

    With `val`: at most `epochs` epochs, stopped after `patience` without a lower validation loss. The
    epochs kept are the fewest whose validation loss is within one standard error (over the validation
    galaxies) of the lowest, the starting (head-only) weights counting as epoch 0: Breiman's
    one-standard-error rule, so a chance dip on a small validation split does not buy unfreezing.
    Returns the history (epoch, loss, val_loss, val_loss_se, kept).
    """
    import keras

    keras.utils.set_random_seed(seed)  # this fit's augmentations and shuffling, whatever ran before
    _compile_unfrozen(model, config)
    train = images.training_dataset(rows, labels, _class_weights(labels[rows], config.task, config.n_classes), channels, config.batch_size, seed)
    if val is None:
        if epochs == 0:
            return pd.DataFrame(columns=["epoch", "loss"])
        fitted = model.fit(train, epochs=epochs, verbose=0, shuffle=False)
        return pd.DataFrame(fitted.history).reset_index(names="epoch").assign(epoch=lambda d: d["epoch"] + 1)
    y_val = labels[val].astype(np.float64)
    w_val = _class_weights(labels[val], config.task, config.n_classes).astype(np.float64)
    losses: list[np.ndarray] = []
    snapshots = []
    # the validation galaxies are read every epoch: kept once (a shard source's in a local file), not decoded from every shard again
    with held(images, val) as val_images:

        def validation_losses(network) -> np.ndarray:
            return _validation_losses(network, val_images, val, channels, config.batch_size, y_val, w_val, config.task)

        losses.append(validation_losses(model))
        snapshots.append([v.numpy() for v in model.trainable_variables])

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                losses.append(validation_losses(self.model))
                snapshots.append([v.numpy() for v in self.model.trainable_variables])
                means = [loss.mean() for loss in losses]
                self.model.stop_training = len(means) - 1 - int(np.argmin(means)) >= config.patience

        fitted = model.fit(train, epochs=epochs, callbacks=[Record()], verbose=0, shuffle=False)
    means = np.array([loss.mean() for loss in losses])
    errors = np.array([loss.std(ddof=1) / np.sqrt(len(loss)) if len(loss) > 1 else 0.0 for loss in losses])
    best = int(np.argmin(means))
    chosen = int(np.flatnonzero(means <= means[best] + errors[best])[0])
    for variable, value in zip(model.trainable_variables, snapshots[chosen]):
        variable.assign(value)
    history = pd.DataFrame({"epoch": np.arange(len(means)), "loss": [np.nan, *fitted.history["loss"]], "val_loss": means, "val_loss_se": errors})
    history["kept"] = history["epoch"] == chosen
    log.info("Unfreezing, chosen on the inner split: %d epochs (validation loss %.4f; lowest %.4f ± %.4f at epoch %d; head only %.4f)",
             chosen, means[chosen], means[best], errors[best], best, means[0])
    return history


def inner_split(labels: np.ndarray, rows: np.ndarray, config: FinetuneConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into fit and validation rows (stratified for classes)."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    splitter = (ShuffleSplit if config.task == "regression" else StratifiedShuffleSplit)(1, test_size=config.val_fraction, random_state=seed)
    fit, val = next(splitter.split(rows, None if config.task == "regression" else labels[rows]))
    return rows[fit], rows[val]
