"""Predictions with MC-dropout uncertainty (optionally with test-time augmentation), and representations.

The base model runs once per galaxy and view (dropout is after it); only dropout + head run n
times, so the cost of n samples is close to the cost of one. Test-time augmentation adds the
image's dihedral views (90-degree rotations, and their mirror images): a galaxy has no preferred
orientation, so each view is an equally valid look at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core import shards as shard_io
from zoobot_core.dirichlet import expected_vote_fractions
from zoobot_core.recalibration import METADATA_KEY, apply_recalibration, check_recalibration, read_recalibration
from zoobot_core.schemas import get_tree

log = logging.getLogger(__name__)


TTA_VIEWS = (1, 2, 4, 8)


@dataclass(frozen=True)
class PredictConfig:
    """Dropout samples per view, dihedral views per galaxy (1: no test-time augmentation), batch size, and whether to
    apply the model folder's recalibration (recalibration.json, where it has one)."""

    n_samples: int = 5
    batch_size: int = 64
    seed: int = 42
    tta_views: int = 1
    recalibrate: bool = True

    def __post_init__(self) -> None:
        if self.tta_views not in TTA_VIEWS:
            raise ValueError(f"predict.tta_views must be one of {TTA_VIEWS}, not {self.tta_views}")


def dihedral_views(images: np.ndarray, n_views: int) -> list[np.ndarray]:
    """The first `n_views` of the square's 8 symmetries applied to (batch, height, width, channels) images.

    Every prefix is a group, so averaging over it is exactly invariant to its transformations:
    1 view: the images as they are; 2: and their left-right mirror; 4: and the up-down mirror and
    180-degree rotation; 8: and the 90- and 270-degree rotations with their mirrors (the dihedral group).
    """
    images = np.asarray(images)
    mirrored = images[:, :, ::-1]
    views = [images, mirrored]
    for k in (2, 1, 3):
        views += [np.rot90(images, k, axes=(1, 2)), np.rot90(mirrored, k, axes=(1, 2))]
    return [np.ascontiguousarray(v) for v in views[:n_views]]


def predict_windows(
    model_dir: Path | str, shard_dir: Path | str, split: str, config: PredictConfig, window: int = 4096
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """Yield (predictions, representations, samples) for about `window` galaxies of one split at a time, in shard
    order, so a split of any size is predicted in bounded memory (at least one window, even for an empty split).

    Predictions hold, per answer column, the mean concentration over all samples (views x dropout
    samples), the expected vote fraction and its standard deviation across samples. Representations
    hold the base model's pooled features (feat_0000...) of the image as it is (view 0). Samples hold
    every sample's concentrations: one row per (galaxy, sample), with the view it came from.

    Where the model folder holds a recalibration (recalibration.json) and config.recalibrate is on,
    concentrations (in predictions and samples) are the recalibrated ones, and predictions add the raw
    network's mean concentration as {answer}_concentration_raw. Recalibration keeps every sample's
    expected vote fractions, so the fraction columns are the raw network's either way.
    """
    import keras

    from zoobot_core.datasets import get_dataset
    from zoobot_core.model import DROPOUT_NAME, HEAD_NAME, representation_model
    from zoobot_core.preprocess import preprocess_images
    from zoobot_core.runtime import load_model
    from zoobot_core.train import preprocessing_config

    model, model_config = load_model(model_dir)
    label_cols = model_config["label_cols"]
    tree = get_tree(model_config.get("tree_definition", model_config["tree"]), model_config["question_suffix"])
    recalibration = read_recalibration(model_dir) if config.recalibrate else None
    if recalibration is not None:
        check_recalibration(recalibration, model, model_dir, tree, config.n_samples, config.tta_views)
        log.info("Applying the model's recalibration (%s, fitted on %s): calibrated concentrations, raw ones as *_concentration_raw",
                 recalibration["method"], recalibration["fitted_on"])
    pre = preprocessing_config(label_cols, model_config["input_size"], model_config["greyscale"])
    extractor = representation_model(model)
    head = model.get_layer(HEAD_NAME)
    dropout = keras.layers.Dropout(model.get_layer(DROPOUT_NAME).rate, seed=config.seed)
    paths = shard_io.shard_paths(shard_dir, split)
    n_expected = shard_io.read_metadata(shard_dir)["counts"][split]
    n_features = extractor.output.shape[-1]
    ids, features, samples = [], [], []
    n_read, yielded = 0, False

    def tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        features_array = np.concatenate(features) if features else np.zeros((0, n_features), np.float32)
        samples_array = np.concatenate(samples) if samples else np.zeros((0, config.tta_views * config.n_samples, len(label_cols)), np.float32)
        calibrated = apply_recalibration(samples_array, recalibration, tree)
        predictions = _prediction_table(ids, calibrated, label_cols, tree.question_index_groups)
        if recalibration is not None:
            for j, col in enumerate(label_cols):
                predictions.insert(predictions.columns.get_loc(f"{col}_fraction_std") + 1, f"{col}_concentration_raw",
                                   samples_array[:, :, j].mean(axis=1).astype(np.float32))
        sample_rows = sample_table(ids, calibrated, label_cols, config.tta_views)
        predictions.attrs["recalibration"] = sample_rows.attrs["recalibration"] = recalibration  # predict_files records it in the Parquet metadata
        return predictions, representation_table(ids, features_array), sample_rows

    if paths:
        dataset = get_dataset(
            paths, [], config.batch_size, shuffle=False, requested_img_size=model_config["input_size"],
            image_encoding=shard_io.image_encoding(shard_dir),
        )
        for batch in tqdm(dataset, total=-(-n_expected // config.batch_size), desc=f"predicting {split}", mininterval=10):
            images = keras.ops.convert_to_numpy(preprocess_images(batch["matrix"], pre))
            view_features = [extractor.predict_on_batch(view) for view in dihedral_views(images, config.tta_views)]
            ids.extend(i.decode() for i in batch["id_str"].numpy())
            features.append(view_features[0])
            samples.append(np.stack([
                keras.ops.convert_to_numpy(head(dropout(f, training=True))) for f in view_features for _ in range(config.n_samples)
            ], axis=1))
            if len(ids) >= window:
                n_read += len(ids)
                yield tables()
                ids, features, samples, yielded = [], [], [], True
    n_read += len(ids)
    if n_read != n_expected:
        raise RuntimeError(f"Read {n_read} galaxies from the {split} shards but shards.json lists {n_expected}; rewrite the shards")
    if ids or not yielded:
        yield tables()


def predict_shards(model_dir: Path | str, shard_dir: Path | str, split: str, config: PredictConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (predictions, representations, samples) for every galaxy of one split, in shard order (predict_windows,
    concatenated: the whole split in memory; the predict rule streams the windows to disk instead)."""
    parts = list(predict_windows(model_dir, shard_dir, split, config))
    return tuple(pd.concat([p[k] for p in parts], ignore_index=True) for k in range(3))


def sample_table(ids: list[str], samples: np.ndarray, label_cols: list[str], n_views: int = 1) -> pd.DataFrame:
    """Every sample's Dirichlet concentrations: id_str, sample, view, one column per answer.

    `samples` is (galaxies, views x dropout samples, answers), each view's dropout samples together.
    """
    n, n_samples, _ = samples.shape
    table = pd.DataFrame(samples.reshape(n * n_samples, samples.shape[-1]).astype(np.float32), columns=label_cols)
    table.insert(0, "view", np.tile(np.arange(n_samples, dtype=np.int16) // (n_samples // n_views), n))
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


def representation_table(ids: list[str], features: np.ndarray) -> pd.DataFrame:
    """Pooled features as a table: id_str, then feat_0000... (as wide as the count needs)."""
    width = len(str(features.shape[1] - 1))
    table = pd.DataFrame(features.astype(np.float32), columns=[f"feat_{i:0{width}d}" for i in range(features.shape[1])])
    table.insert(0, "id_str", ids)
    return table


def predict_files(
    model_dir: Path | str, shard_dir: Path | str, split: str, predictions_path: Path | str, representations_path: Path | str,
    config: PredictConfig, samples_path: Path | str | None = None, window: int = 4096,
) -> None:
    """The predict rule: write one split's predictions, representations and (when a path is given) every dropout sample as
    Parquet, `window` galaxies at a time (one row group each), so memory stays bounded however large the split;
    each file appears whole when the split is done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zoobot_core.io import atomic_path

    targets = [Path(predictions_path), Path(representations_path), *([Path(samples_path)] if samples_path is not None else [])]
    n = 0
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in targets]
        writers: list = [None] * len(targets)
        for tables in predict_windows(model_dir, shard_dir, split, config, window):
            n += len(tables[0])
            for k, table in enumerate(tables[: len(targets)]):
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                if "recalibration" in table.attrs:  # predictions and samples: which map they carry (null: the raw network's)
                    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(table.attrs["recalibration"])})
                if writers[k] is None:
                    writers[k] = stack.enter_context(pq.ParquetWriter(tmps[k], arrow.schema))
                writers[k].write_table(arrow.cast(writers[k].schema))
        # leaving the block closes the writers first, then renames each file into place (the stack unwinds in reverse)
    log.info("Predicted %d %s galaxies: %d view(s) x %d dropout samples each", n, split, config.tta_views, config.n_samples)
