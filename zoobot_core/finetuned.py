"""Using a finetuned model: features averaged over a galaxy's four 90-degree rotations, then the new
head, once with dropout off (the prediction) and `n_samples` times with it on (MC dropout: the
spread). On images in memory, or on a whole survey's TFRecord shards a batch at a time.

The model is a plain Keras model (bases.build_network); `finetune_config.json` beside it records
what prediction needs: task, label, classes, decision threshold, channels, and (temperature scaling
on) the temperature every probability is rescaled by.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.bases import DROPOUT, HEAD, STANDARDISE
from zoobot_core.runtime import leaves_process_state

log = logging.getLogger(__name__)

ROTATIONS = 4
FINETUNE_CONFIG = "finetune_config.json"


def model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """0-255 RGB images (uint8 or float) as the network takes them (preprocess.preprocess_images: [0, 1],
    the mean over RGB when it takes one channel)."""
    from zoobot_core.preprocess import PreprocessingConfig, preprocess_images

    return preprocess_images(np.asarray(images), PreprocessingConfig(input_size=images.shape[1], make_greyscale=channels == 1)).numpy()


def feature_extractor(model):
    """The network up to the base's pooled features (the input of the standardisation), sharing weights."""
    from zoobot_core.model import representation_model

    return representation_model(model, after=STANDARDISE)


def rotation_features(extractor, images: np.ndarray, channels: int, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Pooled features of each image averaged over its four 90-degree rotations (rows follow `images`).

    The network sees one rotation of a batch at a time, so memory is that of `batch_size` images whatever the
    rotations (a 224 px ConvNeXt's activations are ~20 MB per image)."""
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, mininterval=10):
        batch = model_input(images[start : start + batch_size], channels)
        features = sum(np.asarray(extractor.predict_on_batch(np.ascontiguousarray(np.rot90(batch, k, axes=(1, 2)))), np.float64) for k in range(ROTATIONS))
        out.append((features / ROTATIONS).astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, extractor.output.shape[-1]), np.float32)


def head_outputs(model, features: np.ndarray, n_samples: int = 0, seed: int = 0) -> np.ndarray:
    """The head on given features: (n, units) with dropout off; with n_samples > 0, (n, n_samples, units)
    with dropout on (MC dropout, seeded)."""
    import keras

    standardise, head = model.get_layer(STANDARDISE), model.get_layer(HEAD)
    x = standardise(np.asarray(features, np.float32))
    if n_samples == 0:
        return keras.ops.convert_to_numpy(head(x))
    dropout = keras.layers.Dropout(model.get_layer(DROPOUT).rate, seed=seed)
    return np.stack([keras.ops.convert_to_numpy(head(dropout(x, training=True))) for _ in range(n_samples)], axis=1)


def scores_from_outputs(outputs: np.ndarray, task: str) -> np.ndarray:
    """Head outputs as scores: P(class 1) (binary), class probabilities (multiclass), values (regression)."""
    return outputs if task == "multiclass" else outputs[..., 0]


def model_scores(model, images: np.ndarray, channels: int, task: str, batch_size: int = 32) -> np.ndarray:
    """The model's scores (dropout off) for 0-255 RGB images, from their rotation-averaged features."""
    return scores_from_outputs(head_outputs(model, rotation_features(feature_extractor(model), images, channels, batch_size)), task)


def output_names(settings: dict) -> list[str]:
    """Column names of the head's outputs: <label>_probability (binary), <label>_p<k> (multiclass), <label> (regression)."""
    if settings["task"] == "multiclass":
        return [f"{settings['label']}_p{k}" for k in range(settings["n_classes"])]
    return [f"{settings['label']}_probability" if settings["task"] == "binary" else settings["label"]]


def is_calibrated(settings: dict) -> bool:
    """Whether a finetuned model's probabilities are rescaled by a stored temperature (temperature scaling was on)."""
    return settings.get("temperature") is not None and settings["task"] != "regression"


def calibrate(outputs: np.ndarray, settings: dict) -> np.ndarray:
    """Head outputs (..., units) rescaled by the model's stored temperature (temperature.apply_temperature);
    unchanged without one (temperature scaling off, or regression)."""
    if not is_calibrated(settings):
        return outputs
    from zoobot_core.temperature import apply_temperature

    return apply_temperature(outputs, float(settings["temperature"]), settings["task"]).astype(np.float32)


def prediction_table(ids: list[str], deterministic: np.ndarray, samples: np.ndarray, settings: dict) -> pd.DataFrame:
    """Per galaxy: the prediction (dropout off), its MC-dropout mean and spread, and the predicted class.

    Columns for label L: binary L_probability, L_probability_mc_mean, L_probability_mc_std, L_predicted
    (P >= the configured threshold); multiclass L_p<k>, its _mc_mean and _mc_std, L_predicted (most
    probable class); regression L, L_mc_mean, L_mc_std.

    A model with a temperature (finetune_config.json `temperature`, from temperature scaling) rescales
    every probability and MC-dropout sample by it (calibrate), and keeps the head's own probability
    as L_probability_raw (L_p<k>_raw). L_predicted is unchanged by it: the raw probability against
    `threshold` (equivalently the rescaled one against `threshold_scaled`), or the most probable class.
    `deterministic` and `samples` are the head's raw outputs.
    """
    from zoobot_core.scores import classify

    label, task = settings["label"], settings["task"]
    columns: dict[str, np.ndarray] = {"id_str": np.asarray(ids, dtype=object)}
    scaled, scaled_samples = calibrate(deterministic, settings), calibrate(samples, settings)
    for k, name in enumerate(output_names(settings)):
        columns[name] = scaled[:, k]
        if is_calibrated(settings):
            columns[f"{name}_raw"] = deterministic[:, k]
        columns[f"{name}_mc_mean"] = scaled_samples[:, :, k].mean(axis=1)
        columns[f"{name}_mc_std"] = scaled_samples[:, :, k].std(axis=1)
    if task != "regression":
        columns[f"{label}_predicted"] = classify(scores_from_outputs(deterministic, task), task, 0.5 if settings["threshold"] is None else settings["threshold"])
    table = pd.DataFrame(columns)
    for col in table.columns[1:]:
        if table[col].dtype.kind == "f":
            table[col] = table[col].astype(np.float32)
    return table


def predict_images(model_dir: Path | str, images: np.ndarray, ids: list[str] | None = None, n_samples: int | None = None,
                   batch_size: int = 32, seed: int = 0) -> pd.DataFrame:
    """Predictions of a finetuned model (finetune's output folder) for 0-255 RGB images (n, size, size, 3)
    already resized to the size it was finetuned at: one row per image, see prediction_table."""
    from zoobot_core.runtime import load_model

    model, settings = load_model(model_dir, FINETUNE_CONFIG)
    expected = model.input_shape[1]
    if images.shape[1:3] != (expected, expected):
        raise ValueError(f"Images are {images.shape[1]}x{images.shape[2]} px; this model was finetuned at {expected} px: resize them (images.load_rgb)")
    features = rotation_features(feature_extractor(model), images, settings["channels"], batch_size)
    samples = head_outputs(model, features, settings["n_samples"] if n_samples is None else n_samples, seed)
    ids = [str(i) for i in range(len(images))] if ids is None else list(ids)
    return prediction_table(ids, head_outputs(model, features), samples, settings)


def predict_survey_shards(model_dir: Path | str, shard_dir: Path | str, batch_size: int = 64, seed: int = 0,
                          n_samples: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions for every galaxy in a survey's shards (all splits, in shard order), read a batch at a
    time: the table (see prediction_table) and the MC-dropout samples (galaxies, outputs, samples),
    rescaled by the model's temperature when it has one (calibrate)."""
    from zoobot_core import shards as shard_io
    from zoobot_core.datasets import get_dataset
    from zoobot_core.runtime import load_model

    model, settings = load_model(model_dir, FINETUNE_CONFIG)
    size = shard_io.read_metadata(shard_dir)["size"]
    if size != model.input_shape[1]:
        raise ValueError(f"Shards in {shard_dir} hold {size} px images; the model was finetuned at {model.input_shape[1]} px. Rewrite the shards at that size")
    paths = [p for split in (*shard_io.SPLITS, shard_io.UNLABELLED) for p in shard_io.shard_paths(shard_dir, split)]
    counts = shard_io.read_metadata(shard_dir)["counts"]
    n_expected = sum(counts.values())
    extractor = feature_extractor(model)
    n_samples = settings["n_samples"] if n_samples is None else n_samples
    ids, deterministic, samples = [], [], []
    if paths:
        dataset = get_dataset(paths, [], batch_size, shuffle=False, requested_img_size=size, image_encoding=shard_io.image_encoding(shard_dir))
        for batch in tqdm(dataset, total=-(-n_expected // batch_size), desc="predicting survey", mininterval=10):
            features = rotation_features(extractor, batch["matrix"].numpy(), settings["channels"], batch_size)
            ids.extend(i.decode() for i in batch["id_str"].numpy())
            deterministic.append(head_outputs(model, features))
            samples.append(head_outputs(model, features, n_samples, seed + len(ids)))
    if len(ids) != n_expected:
        raise RuntimeError(f"Read {len(ids)} galaxies from the shards in {shard_dir} but shards.json lists {n_expected}; rewrite the shards")
    units = model.output_shape[-1]
    deterministic_array = np.concatenate(deterministic) if deterministic else np.zeros((0, units), np.float32)
    samples_array = np.concatenate(samples) if samples else np.zeros((0, n_samples, units), np.float32)
    return prediction_table(ids, deterministic_array, samples_array, settings), calibrate(samples_array, settings).transpose(0, 2, 1)


@leaves_process_state
def predict_survey_files(model_dir: Path | str, shard_dir: Path | str, predictions_path: Path | str, hdf5_path: Path | str | None = None,
                         batch_size: int = 64, seed: int = 0, threads: int | None = None) -> pd.DataFrame:
    """The predict_survey rule: the finetuned model over a survey's shards, as Parquet (and, with
    `hdf5_path`, every MC-dropout sample in Zoobot's HDF5 layout)."""
    import json

    from zoobot_core.io import atomic_write_table
    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(seed, True, threads)
    table, samples = predict_survey_shards(model_dir, shard_dir, batch_size, seed)
    atomic_write_table(table, predictions_path)
    if hdf5_path is not None:
        from zoobot_core.hdf5 import write_predictions_hdf5

        settings = json.loads((Path(model_dir) / FINETUNE_CONFIG).read_text())
        write_predictions_hdf5(samples, table["id_str"].tolist(), output_names(settings), hdf5_path,
                               {"task": settings["task"], "label": settings["label"], "mc_dropout_samples": samples.shape[2],
                                **({"temperature": float(settings["temperature"])} if is_calibrated(settings) else {})})
    log.info("Predicted %d survey galaxies with the finetuned model in %s", len(table), model_dir)
    return table
