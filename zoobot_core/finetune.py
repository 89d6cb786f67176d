"""Finetune a trained model on a new label: new head on the frozen base, then optionally unfreeze its last blocks.

Zoobot's finetuning recipe (its rings example): keep the trained base and its augmentation layers,
drop the Dirichlet head, freeze the base, train a small new head, then optionally unfreeze the
top of the base at a lower learning rate. A pixel baseline (logistic or ridge regression on
downsampled greyscale pixels) is scored on the same held-out galaxies.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.io import atomic_path, atomic_write_table
from zoobot_core.shards import assign_splits

log = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class FinetuneConfig:
    """The new head's task, training settings, and the optional unfreezing stage."""

    task: str = "binary"  # binary (labels 0/1), multiclass (labels 0..n_classes-1), regression (floats)
    n_classes: int = 2
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 8
    dropout_rate: float = 0.2
    unfreeze_blocks: int = 0  # > 0: afterwards unfreeze EfficientNet's last N blocks (block7a, block6d, ...)
    unfreeze_epochs: int = 10
    unfreeze_learning_rate: float = 1e-5
    train_fraction: float = 0.6
    val_fraction: float = 0.2
    seed: int = 42


def build_finetune_model(trained, config: FinetuneConfig, train_features: np.ndarray | None = None):
    """The trained model's input, augmentation layers and base (frozen), with a new head for the task.

    With `train_features` (the base's features of the training images), the head starts with a
    per-feature standardisation adapted to them: a base trained elsewhere can give features whose
    spread across galaxies is tiny next to their size, which a plain Dense head barely learns from.
    """
    import keras

    from zoobot_core.model import representation_model

    if config.task not in TASKS:
        raise ValueError(f"finetune task must be one of {TASKS}, got {config.task!r}")
    base = representation_model(trained)
    base.trainable = False  # Keras 3: frozen BatchNormalization layers also run in inference mode
    inputs = keras.Input(trained.input_shape[1:], name="image")
    x = base(inputs)
    if train_features is not None:
        norm = keras.layers.Normalization(name="finetune_standardise")
        norm.adapt(train_features)
        x = norm(x)
    x = keras.layers.Dropout(config.dropout_rate, seed=config.seed, name="finetune_dropout")(x)
    units, activation = {"binary": (1, "sigmoid"), "multiclass": (config.n_classes, "softmax"), "regression": (1, None)}[config.task]
    outputs = keras.layers.Dense(units, activation=activation, name="finetune_head")(x)
    return keras.Model(inputs, outputs, name="zoobot_finetuned")


def _unfreeze_last_blocks(model, n_blocks: int) -> list[str]:
    """Make the last n EfficientNet blocks (and the top conv) trainable; BatchNormalization stays frozen."""
    import keras

    base = next(layer for layer in model.layers if layer.name == "zoobot_representation")
    efficientnet = next(layer for layer in base.layers if layer.name.startswith("efficientnet"))
    blocks = sorted({layer.name.split("_")[0] for layer in efficientnet.layers if layer.name.startswith("block")})
    chosen = set(blocks[-n_blocks:]) | {"top"}
    base.trainable = True
    for layer in base.layers:
        if layer is not efficientnet:
            layer.trainable = False
    for layer in efficientnet.layers:
        layer.trainable = layer.name.split("_")[0] in chosen and not isinstance(layer, keras.layers.BatchNormalization)
    return sorted(chosen)


def _compile(model, config: FinetuneConfig, learning_rate: float) -> None:
    import keras

    loss, metrics = {
        "binary": ("binary_crossentropy", ["accuracy"]),
        "multiclass": ("sparse_categorical_crossentropy", ["accuracy"]),
        "regression": ("mse", ["mae"]),
    }[config.task]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    model.optimizer.build(model.trainable_variables)  # slots now, so fit traces its step once (see train.py)


def _dataset(paths: list[str], labels: np.ndarray, size: int, greyscale: bool, batch_size: int, shuffle: bool, seed: int):
    from zoobot_core.datasets import get_image_dataset
    from zoobot_core.preprocess import PreprocessingConfig, preprocess_images

    pre = PreprocessingConfig(input_size=size, make_greyscale=greyscale)
    ds = get_image_dataset(paths, "png", size, batch_size, labels=labels, shuffle=shuffle, seed=seed)
    return ds.map(lambda batch: (preprocess_images(batch["matrix"], pre), batch["label"]))


def pixel_features(paths: list[str], size: int = 16) -> np.ndarray:
    """Downsampled greyscale pixels, one row per image: the input of the pixel baseline."""
    from zoobot_core.images import load_rgb

    return np.stack([np.asarray(load_rgb(p, size).convert("L"), np.float32).ravel() / 255.0 for p in paths])


def pixel_baseline(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, task: str) -> np.ndarray:
    """Predictions for the test rows from a linear model on standardised pixels (logistic, or ridge for regression)."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = RidgeCV() if task == "regression" else LogisticRegression(C=0.1, max_iter=2000)
    model = make_pipeline(StandardScaler(), estimator).fit(features[train], labels[train])
    return model.predict(features[test])


def _predict(model, dataset, task: str) -> np.ndarray:
    outputs = np.concatenate([model.predict_on_batch(images) for images, _ in dataset])
    if task == "binary":
        return (outputs[:, 0] >= 0.5).astype(int)
    if task == "multiclass":
        return outputs.argmax(axis=1)
    return outputs[:, 0]


def _score(truth: np.ndarray, predicted: np.ndarray, task: str) -> dict:
    if task == "regression":
        return {"mae": float(np.abs(truth - predicted).mean())}
    return {"accuracy": float((truth == predicted).mean())}


def finetune(
    model_path: Path | str, catalog: pd.DataFrame, label_col: str, out_dir: Path | str, config: FinetuneConfig, threads: int | None = None
) -> dict:
    """Finetune the model in `model_path` (.keras) on `catalog` (id_str, file_loc, label_col), split by a
    hash of id; write the model, history, per-galaxy predictions and metrics (finetuned vs pixel
    baseline vs constant, on the held-out test split)."""
    import keras

    from zoobot_core.train import _configure_tensorflow, load_keras_model

    out_dir = Path(out_dir)
    _configure_tensorflow(config.seed, True, threads)  # before anything starts TensorFlow: seeds, determinism, threads
    trained = load_keras_model(model_path)
    size, channels = trained.input_shape[1], trained.input_shape[-1]
    greyscale = channels == 1
    labels = catalog[label_col].to_numpy(np.float32 if config.task == "regression" else np.int64)
    if config.task != "regression" and (labels.min() < 0 or labels.max() >= (2 if config.task == "binary" else config.n_classes)):
        raise ValueError(f"{label_col} holds labels outside 0..{1 if config.task == 'binary' else config.n_classes - 1} for a {config.task} task")
    split = assign_splits(catalog["id_str"], config.seed, config.train_fraction, config.val_fraction).to_numpy()
    paths = catalog["file_loc"].astype(str).tolist()
    parts = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    if min(len(v) for v in parts.values()) == 0:
        raise ValueError(f"Need galaxies in train, val and test; the split gave {({s: len(v) for s, v in parts.items()})}. Use a larger catalog.")

    def data(s: str, shuffle: bool):
        idx = parts[s]
        return _dataset([paths[i] for i in idx], labels[idx], size, greyscale, config.batch_size, shuffle, config.seed)

    from zoobot_core.model import representation_model

    extractor = representation_model(trained)
    train_features = np.concatenate([extractor.predict_on_batch(images) for images, _ in data("train", False)])
    model = build_finetune_model(trained, config, train_features)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    _compile(model, config, config.learning_rate)
    log.info("Finetuning a new %s head on %d galaxies (%d val, %d test), base frozen", config.task, *(len(parts[s]) for s in ("train", "val", "test")))
    history = [pd.DataFrame(model.fit(data("train", True), validation_data=data("val", False), epochs=config.epochs, callbacks=[stop], verbose=0).history).assign(stage="head")]
    unfrozen: list[str] = []
    if config.unfreeze_blocks > 0:
        unfrozen = _unfreeze_last_blocks(model, config.unfreeze_blocks)
        _compile(model, config, config.unfreeze_learning_rate)
        log.info("Unfreezing %s at learning rate %g", unfrozen, config.unfreeze_learning_rate)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        history.append(pd.DataFrame(model.fit(data("train", True), validation_data=data("val", False), epochs=config.unfreeze_epochs, callbacks=[stop], verbose=0).history).assign(stage="unfrozen"))
    history_table = pd.concat(history, ignore_index=True).rename_axis("epoch").reset_index()

    predictions = np.empty(len(catalog), dtype=labels.dtype)
    for s in ("train", "val", "test"):
        predictions[parts[s]] = _predict(model, data(s, False), config.task)
    test = parts["test"]
    pixels = pixel_features(paths)
    fit_rows = np.concatenate([parts["train"], parts["val"]])
    baseline = pixel_baseline(pixels, labels, fit_rows, test, config.task)
    constant = np.full(len(test), labels[fit_rows].mean() if config.task == "regression" else np.bincount(labels[fit_rows]).argmax())
    metrics = {
        "task": config.task,
        "label": label_col,
        "n": {s: int(len(v)) for s, v in parts.items()},
        "test": {
            "finetuned": _score(labels[test], predictions[test], config.task),
            "pixel_baseline": _score(labels[test], baseline, config.task),
            "constant": _score(labels[test], constant, config.task),
        },
        "unfrozen_blocks": unfrozen,
        "config": asdict(config),
        "base_model": str(model_path),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    atomic_write_table(history_table, out_dir / "history.csv")
    atomic_write_table(pd.DataFrame({"id_str": catalog["id_str"], "split": split, label_col: labels, "prediction": predictions}), out_dir / "predictions.parquet")
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("Held-out test (%d galaxies): finetuned %s, pixel baseline %s, constant %s",
             len(test), metrics["test"]["finetuned"], metrics["test"]["pixel_baseline"], metrics["test"]["constant"])
    return metrics


def finetune_files(
    model_path: Path | str, catalog_path: Path | str, catalog_config, label_col: str, out_dir: Path | str, config: FinetuneConfig, threads: int | None = None
) -> dict:
    """The finetune rule: validate the labelled catalog (bad rows, unreadable images included, are
    quarantined into out_dir/quarantine.parquet with their reason), then finetune."""
    from PIL import Image

    from zoobot_core.catalog import QUARANTINE_COLUMNS, check_quarantine_fraction, validate_catalog
    from zoobot_core.images import UNREADABLE_ERRORS

    validated, quarantine = validate_catalog(catalog_path, catalog_config)
    unreadable = []
    for row in validated.itertuples():
        try:
            with Image.open(row.file_loc) as img:
                img.load()
        except UNREADABLE_ERRORS as err:
            unreadable.append({"row": row.row, "id_str": row.id_str, "file_loc": row.file_loc, "stage": "finetune",
                               "reason": "unreadable_image", "message": f"{type(err).__name__}: {err}; replace or remove the file"})
    if unreadable:
        quarantine = pd.concat([quarantine, pd.DataFrame(unreadable)], ignore_index=True)[QUARANTINE_COLUMNS]
        validated = validated[~validated["id_str"].isin({u["id_str"] for u in unreadable})].reset_index(drop=True)
        check_quarantine_fraction(len(validated) + len(quarantine), quarantine, catalog_config.max_quarantine_fraction, catalog_path)
    atomic_write_table(quarantine, Path(out_dir) / "quarantine.parquet")
    log.info("Finetuning catalog: %d rows in, %d ready, %d quarantined", len(validated) + len(quarantine), len(validated), len(quarantine))
    return finetune(model_path, validated, label_col, out_dir, config, threads)
