"""The TensorFlow runtime (seeds, determinism, threads) and loading of saved models: one home for
training, finetuning and prediction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MODEL_CONFIG = "model_config.json"
TRAINED_ON = "trained_on.parquet"  # beside model.keras: ids of the galaxies it was trained or early-stopped on


def configure_tensorflow(seed: int, deterministic: bool = True, threads: int | None = None) -> None:
    """Seed Python, NumPy and the backend; make TensorFlow's ops deterministic; size its thread pools.

    Call it before anything starts TensorFlow's runtime: thread pools can only be sized once per
    process (if it is already running, the existing pools are kept and a warning says so).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:  # TensorFlow already started in this process (a notebook, an earlier call)
            log.warning("TensorFlow is already running in this process; keeping its thread pools instead of %d threads", threads)


def load_keras_model(model_path: Path | str):
    """A .keras file this package wrote, uncompiled: inference needs no optimizer, finetuning compiles
    its own, and a mixed-precision run's loss-scale state is not wanted by either."""
    import keras

    import zoobot_core.losses  # noqa: F401  (registers custom objects)
    import zoobot_core.model  # noqa: F401

    return keras.models.load_model(model_path, compile=False)


def load_model(model_dir: Path | str, config_name: str = MODEL_CONFIG):
    """Load model.keras (uncompiled) and its JSON config (model_config.json by default) from a model folder."""
    model_dir = Path(model_dir)
    return load_keras_model(model_dir / MODEL_FILE), json.loads((model_dir / config_name).read_text())
