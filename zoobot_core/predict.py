"""Predictions with MC-dropout uncertainty, and representations, in one pass over the shards.

The base model runs once per galaxy (dropout is after it); only dropout + head run n times,
so the cost of n samples is close to the cost of one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core import shards as shard_io
from zoobot_core.losses import expected_vote_fractions
from zoobot_core.schemas import get_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """How many dropout samples per galaxy, and the batch size."""

    n_samples: int = 5
    batch_size: int = 64
    seed: int = 42


def predict_shards(model_dir: Path | str, shard_dir: Path | str, split: str, config: PredictConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (predictions, representations, samples) for every galaxy of one split, in shard order.

    Predictions hold, per answer column, the mean concentration over dropout samples, the
    expected vote fraction and its standard deviation across samples. Representations hold
    the base model's pooled features (feat_0000...). Samples hold every dropout sample's
    concentrations: one row per (galaxy, sample).
    """
    import keras

    from zoobot_core.datasets import get_dataset
    from zoobot_core.model import DROPOUT_NAME, HEAD_NAME, representation_model
    from zoobot_core.preprocess import preprocess_images
    from zoobot_core.train import load_model, preprocessing_config

    model, model_config = load_model(model_dir)
    label_cols = model_config["label_cols"]
    tree = get_tree(model_config["tree"], model_config["question_suffix"])
    pre = preprocessing_config(label_cols, model_config["input_size"], model_config["greyscale"])
    extractor = representation_model(model)
    head = model.get_layer(HEAD_NAME)
    dropout = keras.layers.Dropout(model.get_layer(DROPOUT_NAME).rate, seed=config.seed)
    paths = shard_io.shard_paths(shard_dir, split)
    n_expected = shard_io.read_metadata(shard_dir)["counts"][split]
    ids, features, samples = [], [], []
    if paths:
        dataset = get_dataset(
            paths, [], config.batch_size, shuffle=False, requested_img_size=model_config["input_size"],
            image_encoding=shard_io.image_encoding(shard_dir),
        )
        for batch in tqdm(dataset, total=-(-n_expected // config.batch_size), desc=f"predicting {split}", mininterval=10):
            batch_features = extractor.predict_on_batch(preprocess_images(batch["matrix"], pre))
            ids.extend(i.decode() for i in batch["id_str"].numpy())
            features.append(batch_features)
            samples.append(np.stack([keras.ops.convert_to_numpy(head(dropout(batch_features, training=True))) for _ in range(config.n_samples)], axis=1))
    if len(ids) != n_expected:
        raise RuntimeError(f"Read {len(ids)} galaxies from the {split} shards but shards.json lists {n_expected}; rewrite the shards")
    n_features = extractor.output.shape[-1]
    features_array = np.concatenate(features) if features else np.zeros((0, n_features), np.float32)
    samples_array = np.concatenate(samples) if samples else np.zeros((0, config.n_samples, len(label_cols)), np.float32)
    return (
        _prediction_table(ids, samples_array, label_cols, tree.question_index_groups),
        _representation_table(ids, features_array),
        sample_table(ids, samples_array, label_cols),
    )


def sample_table(ids: list[str], samples: np.ndarray, label_cols: list[str]) -> pd.DataFrame:
    """Every MC-dropout sample's Dirichlet concentrations: id_str, sample, one column per answer."""
    n, n_samples, _ = samples.shape
    table = pd.DataFrame(samples.reshape(n * n_samples, -1).astype(np.float32), columns=label_cols)
    table.insert(0, "sample", np.tile(np.arange(n_samples, dtype=np.int16), n))
    table.insert(0, "id_str", np.repeat(np.asarray(ids, dtype=object), n_samples))
    return table


def _prediction_table(ids: list[str], samples: np.ndarray, label_cols: list[str], groups) -> pd.DataFrame:
    fractions = expected_vote_fractions(samples, groups)  # (n, samples, answers)
    columns: dict[str, np.ndarray] = {"id_str": np.asarray(ids, dtype=object)}
    for j, col in enumerate(label_cols):
        columns[f"{col}_concentration"] = samples[:, :, j].mean(axis=1).astype(np.float32)
        columns[f"{col}_fraction"] = fractions[:, :, j].mean(axis=1).astype(np.float32)
        columns[f"{col}_fraction_std"] = fractions[:, :, j].std(axis=1).astype(np.float32)
    table = pd.DataFrame(columns)
    table.attrs["n_samples"] = int(samples.shape[1])
    return table


def _representation_table(ids: list[str], features: np.ndarray) -> pd.DataFrame:
    width = len(str(features.shape[1] - 1))
    table = pd.DataFrame(features.astype(np.float32), columns=[f"feat_{i:0{width}d}" for i in range(features.shape[1])])
    table.insert(0, "id_str", ids)
    return table


def predict_files(
    model_dir: Path | str, shard_dir: Path | str, split: str, predictions_path: Path | str, representations_path: Path | str,
    config: PredictConfig, samples_path: Path | str | None = None,
) -> None:
    """The predict rule: write one split's predictions, representations and (when a path is given) every dropout sample as Parquet."""
    from zoobot_core.io import atomic_write_table

    predictions, representations, samples = predict_shards(model_dir, shard_dir, split, config)
    atomic_write_table(predictions, predictions_path)
    atomic_write_table(representations, representations_path)
    if samples_path is not None:
        atomic_write_table(samples, samples_path)
    log.info("Predicted %d %s galaxies with %d dropout samples each", len(predictions), split, config.n_samples)
