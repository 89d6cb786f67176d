"""Train the Zoobot model from TFRecord shards on Galaxy Zoo vote counts."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from zoobot_core import shards as shard_io
from zoobot_core.hardware import compute_environment, distribution_strategy, precision_policy
from zoobot_core.io import atomic_dir, atomic_path, atomic_write_table, write_json
from zoobot_core.runtime import MODEL_CONFIG, MODEL_FILE, TRAINED_ON, configure_tensorflow, leaves_process_state
from zoobot_core.schemas import DecisionTree

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HISTORY = "history.csv"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (Zoobot defaults where they fit a small CPU run)."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 42
    crop_fraction: float = 0.75
    resize_size: int | None = None  # None: the crop size
    greyscale: bool = True
    dropout_rate: float = 0.2
    batchnorm_momentum: float = 0.99
    deterministic: bool = True  # deterministic TF ops (CPU): same seed, same weights
    precision: str = "float32"  # or mixed_float16 (GPUs with tensor cores), mixed_bfloat16
    distribute: str = "auto"  # auto: MirroredStrategy when 2+ GPUs are visible; none; mirrored
    tensorboard: bool = True  # write TensorBoard logs (per-epoch scalars) beside history.csv


def _prepare_state_dir(state_dir: Path, fingerprint: dict) -> bool:
    """Keep state_dir for resuming only if it was left by a run of the same shards and settings; True if resuming."""
    stamp = state_dir / "fingerprint.json"
    resumable = (state_dir / "backup").exists() and stamp.exists() and json.loads(stamp.read_text()) == fingerprint
    if not resumable:
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        write_json(fingerprint, stamp)
    return resumable


def _finished_epochs(history_path: Path, backed_up: int) -> pd.DataFrame:
    """Epochs a killed run finished and backed up: its history cut, on disk too, to the backup's first `backed_up` epochs.

    An epoch's history row is written before its backup, so a kill between the two left a row for an epoch that
    the resumed run repeats; kept, EarlyStopping would count that epoch twice. Rows are cut as text, keeping
    every digit the kept rows were written with (and dropping a row torn by the kill).
    """
    if not history_path.exists() or history_path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch", "loss", "val_loss"])
    header, *rows = history_path.read_text().splitlines(keepends=True)

    def backed_up_row(row: str) -> bool:
        try:
            return row.endswith("\n") and int(row.split(",", 1)[0]) < backed_up
        except ValueError:
            return False

    kept = [row for row in rows if backed_up_row(row)]
    if len(kept) < len(rows):
        log.info("Dropping %d row(s) of %s past the backup's %d epoch(s): those epochs run again", len(rows) - len(kept), history_path, backed_up)
    if not kept:  # CSVLogger writes the header again (a torn one included)
        history_path.unlink()
        return pd.DataFrame(columns=["epoch", "loss", "val_loss"])
    if len(kept) < len(rows):
        with atomic_path(history_path) as tmp:
            tmp.write_text(header + "".join(kept))
    return pd.read_csv(history_path).drop_duplicates("epoch", keep="last")


def _early_stopping_state(previous: pd.DataFrame) -> tuple[float, int, int]:
    """EarlyStopping's (best val_loss, best epoch, wait) after the epochs in `previous`, as an uninterrupted run has them."""
    best = previous.loc[previous["val_loss"].idxmin()]
    return float(best["val_loss"]), int(best["epoch"]), int(previous["epoch"].max()) - int(best["epoch"])


def _patience_spent(previous: pd.DataFrame, patience: int) -> bool:
    """Whether EarlyStopping stopped training at the last recorded epoch (its backup written, the run killed before it ended)."""
    # max(patience, 1): Keras checks patience only after an epoch that did not improve, when wait is at least 1
    return len(previous) > 0 and int(previous["epoch"].max()) > 0 and _early_stopping_state(previous)[2] >= max(patience, 1)


def _best_checkpoint(path: Path, best: float):
    """Save the model whenever val_loss improves on `best`, atomically (a kill mid-save leaves the previous best)."""
    import keras

    class AtomicBestCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            current = (logs or {}).get("val_loss")
            if current is not None and current < self.best:
                self.best = current
                with atomic_path(path, suffix=".keras") as tmp:
                    self.model.save(tmp)

    return AtomicBestCheckpoint()


def _early_stopping(patience: int, previous: pd.DataFrame):
    """EarlyStopping on val_loss that, after a resume, remembers the best epoch and the patience already used."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if len(previous):
                self.best, self.best_epoch, self.wait = _early_stopping_state(previous)

    return ResumableEarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=False)


BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"


def _atomic_backup(backup_dir: Path) -> "keras.callbacks.BackupAndRestore":
    """Keras' BackupAndRestore, its backup committed as one file: the weights (and optimizer state), with the
    epoch they end written inside. Keras writes weights and metadata one after the other, so a kill between
    the two left epoch N's weights beside epoch N-1's metadata, and a kill inside the metadata write an
    unreadable file; here both are renamed into place whole, and the weights' own epoch is the one that counts."""
    import h5py
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            with atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
                self.model.save_weights(tmp, overwrite=True)
                with h5py.File(tmp, "a") as f:
                    f.attrs["epoch"] = self._current_epoch
            write_json({"epoch": self._current_epoch, "batch": self._last_batch_seen}, self._training_metadata_path)

    return AtomicBackupAndRestore(str(backup_dir), save_freq="epoch", delete_checkpoint=True)


def _restore_backup(backup: "keras.callbacks.BackupAndRestore", backup_dir: Path) -> int:
    """Load the backup into the model (weights, optimizer state) and return the epoch to resume at: 0 without one,
    or when it cannot be read (then it and the epochs' record beside it, history and best model, are removed, and
    training starts over, with a warning)."""
    import h5py

    weights = backup_dir / BACKUP_WEIGHTS
    if not weights.exists():
        return 0
    try:
        with h5py.File(weights, "r") as f:
            epoch = int(f.attrs["epoch"])
        write_json({"epoch": epoch, "batch": 0}, backup_dir / BACKUP_METADATA)  # the weights' own epoch decides
        backup.on_train_begin()
    except (OSError, KeyError, ValueError) as err:
        log.warning("Cannot read the training backup in %s (%s); training starts over", backup_dir, err)
        for leftover in (backup_dir, backup_dir.parent / TENSORBOARD):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (backup_dir.parent / HISTORY, backup_dir.parent / "best.keras"):
            leftover.unlink(missing_ok=True)
        return 0
    return epoch


def seed_states(model: "keras.Model") -> list:
    """The model's random-number states (augmentation layers, dropout), in the order of the model's layers.

    Not by name: a state's path is Keras' process-wide counter (seed_generator_12/...), so sorting by it
    gave each layer another seed in a process that had built or loaded a model before.
    """
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def _epoch_seeds(seed: int) -> "keras.callbacks.Callback":
    """Reset every random layer's state at each epoch's start to a value derived from (seed, epoch, layer):
    augmentations and dropout of epoch e are then the same in a resumed run as in an uninterrupted one."""
    import keras

    class EpochSeeds(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            for index, state in enumerate(seed_states(self.model)):
                derived = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint32)[0]
                state.assign(np.array([derived, 0], dtype=state.dtype))

    return EpochSeeds()


def preprocessing_config(label_cols: list[str], size: int, greyscale: bool):
    """The PreprocessingConfig used for training and, from the saved model config, for prediction."""
    from zoobot_core.preprocess import PreprocessingConfig

    return PreprocessingConfig(label_cols=list(label_cols), input_size=size, make_greyscale=greyscale)


@leaves_process_state
def train_from_shards(
    shard_dir: Path | str,
    out_dir: Path | str,
    tree: DecisionTree,
    config: TrainConfig,
    state_dir: Path | str | None = None,
    threads: int | None = None,
    devices: list[str] | None = None,
) -> pd.DataFrame:
    """Train on the train shards, early-stop on the val shards; write model.keras (best epoch), its config,
    history.csv, trained_on.parquet (the ids of the train and val galaxies) and (config.tensorboard) TensorBoard logs.

    `state_dir` keeps per-epoch backups so a killed job resumes from its last finished epoch.
    `devices` names the replicas for config.distribute == "mirrored" (default: every GPU).
    """
    import keras
    import tensorflow as tf

    from zoobot_core.datasets import get_dataset, get_training_dataset
    from zoobot_core.losses import DirichletMultinomialLoss
    from zoobot_core.model import get_model
    from zoobot_core.preprocess import preprocess_dataset

    out_dir, shard_dir = Path(out_dir), Path(shard_dir)
    state_dir = Path(state_dir) if state_dir else out_dir / "train_state"
    metadata = shard_io.read_metadata(shard_dir)
    label_cols = metadata["label_cols"]
    if label_cols != tree.label_cols:
        raise ValueError(f"Shards in {shard_dir} hold labels {label_cols[:3]}..., not the {tree.name} tree's vote columns; rewrite the shards")
    counts = metadata["counts"]
    if counts["train"] == 0 or counts["val"] == 0:
        raise ValueError(f"Need labelled galaxies in both train and val shards to train; have {counts}. Use a larger catalog.")
    manifest = pd.read_parquet(shard_dir / shard_io.MANIFEST, columns=["shard_sha256"])
    # a backup left under other threads or another instruction-set cap would resume into other bits: start over
    numeric = {"threads": threads, **{k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")}}
    # seed_states: a backup of a version that seeded the layers' random states in name order resumes into other numbers
    fingerprint = {"train_config": asdict(config), "shards": sorted(manifest["shard_sha256"].unique()), "numeric": numeric, "seed_states": "model order"}
    if _prepare_state_dir(state_dir, fingerprint):
        log.info("Resuming from the last finished epoch saved in %s", state_dir)
    configure_tensorflow(config.seed, config.deterministic, threads)
    size = metadata["size"]
    pre = preprocessing_config(label_cols, size, config.greyscale)

    encoding = shard_io.image_encoding(shard_dir)
    train_batches = math.ceil(counts["train"] / config.batch_size)

    def train_dataset(first_epoch: int):
        """Epochs first_epoch.. of shuffled train batches, each epoch's order a function of (seed, epoch) alone."""
        raw = get_training_dataset(
            shard_io.shard_paths(shard_dir, "train"), label_cols, config.batch_size, first_epoch, config.epochs, config.seed,
            requested_img_size=size, image_encoding=encoding,
        )
        return preprocess_dataset(raw, pre)

    def val_dataset():
        raw = get_dataset(shard_io.shard_paths(shard_dir, "val"), label_cols, config.batch_size, requested_img_size=size, image_encoding=encoding)
        # a known number of batches: Keras then neither guesses the epoch length nor warns that the data "ran out"
        return preprocess_dataset(raw, pre).apply(tf.data.experimental.assert_cardinality(math.ceil(counts["val"] / config.batch_size)))

    crop = int(round(size * config.crop_fraction))
    strategy = distribution_strategy(config.distribute, devices)
    with strategy.scope(), precision_policy(config.precision):
        model = get_model(
            len(label_cols), size, crop, config.resize_size or crop, pre.channels, config.dropout_rate,
            seed=config.seed, batchnorm_momentum=config.batchnorm_momentum,
        )
        # under mixed_float16 compile wraps Adam in a LossScaleOptimizer
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=DirichletMultinomialLoss(tree.question_index_groups), jit_compile=False)
        # optimizer slots made now, not inside the first traced step: tf.function would otherwise trace
        # the whole train step twice (it retraces after creating variables); saves ~15 s per run on 2 CPUs
        model.optimizer.build(model.trainable_variables)
    # restored here, before fit, to learn the epoch to resume at (the train data starts there); fit restores it again
    backup = _atomic_backup(state_dir / "backup")
    backup.set_model(model)
    first_epoch = _restore_backup(backup, state_dir / "backup")
    best_path = state_dir / "best.keras"
    history_path = state_dir / HISTORY
    previous = _finished_epochs(history_path, first_epoch)
    # the epoch's record (history, best model) is written before its backup: a kill in between repeats that
    # epoch on resume rather than losing it, and _finished_epochs drops its row, so it is counted once
    last_epoch = config.epochs
    if _patience_spent(previous, config.patience):  # stopped early, killed before training ended: train no further
        log.info("Early stopping had ended training after %d epoch(s); finishing", first_epoch)
        last_epoch = first_epoch
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        _epoch_seeds(config.seed),
        _best_checkpoint(best_path, float(previous["val_loss"].min()) if len(previous) else np.inf),
        _early_stopping(config.patience, previous),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        # scalars per epoch; a resumed run appends a new event file to the same folder
        *([keras.callbacks.TensorBoard(str(state_dir / TENSORBOARD), write_graph=False, profile_batch=0)] if config.tensorboard else []),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log.info(
            "epoch %d/%d: %s", epoch + 1, config.epochs, ", ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))),
        backup,
    ]
    log.info(
        "Training on %d galaxies (%d val), %d px -> crop %d, %d epochs max, %s (%s), %d replica(s)",
        counts["train"], counts["val"], size, crop, config.epochs, config.precision, type(model.optimizer).__name__, strategy.num_replicas_in_sync,
    )
    model.fit(
        # min: a backup of the last epoch leaves fit nothing to do, but it still wants a dataset
        train_dataset(min(first_epoch, config.epochs - 1)), validation_data=val_dataset(), epochs=last_epoch, steps_per_epoch=train_batches,
        callbacks=callbacks, verbose=0, shuffle=False,  # the dataset is already shuffled, per epoch
    )
    history = pd.read_csv(history_path).drop_duplicates("epoch", keep="last").reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HISTORY) as tmp:
        history.to_csv(tmp, index=False)
    model_config = {
        "tree": tree.name,
        "tree_definition": tree.to_dict(),  # the whole tree: a model trained on a user's tree file needs no file to predict
        "question_suffix": tree.suffix,
        "label_cols": label_cols,
        "input_size": size,
        "greyscale": config.greyscale,
        "best_epoch": int(history.loc[history["val_loss"].idxmin(), "epoch"]),
        "train_config": asdict(config),
        "environment": compute_environment(),  # CPU, instruction sets, GPUs, oneDNN, threads: what decides the last bits
    }
    write_json(model_config, out_dir / MODEL_CONFIG)
    with atomic_dir(out_dir / TENSORBOARD) as tmp:  # empty when config.tensorboard is off
        if config.tensorboard:
            shutil.copytree(state_dir / TENSORBOARD, tmp, dirs_exist_ok=True)
    seen = pd.read_parquet(shard_dir / shard_io.MANIFEST, columns=["id_str", "split"])
    atomic_write_table(seen[seen["split"].isin(["train", "val"])].reset_index(drop=True), out_dir / TRAINED_ON)
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        shutil.copyfile(best_path, tmp)
    log.info("Best epoch %d (val_loss %.3f); model at %s", model_config["best_epoch"], history["val_loss"].min(), out_dir / MODEL_FILE)
    return history

