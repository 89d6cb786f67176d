"""The TensorFlow runtime (seeds, determinism, threads) and loading of saved models: one home for
training, finetuning and prediction."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

MODEL_FILE = "model.keras"
MODEL_CONFIG = "model_config.json"
TRAINED_ON = "trained_on.parquet"  # beside model.keras: ids of the galaxies it was trained or early-stopped on


def configure_tensorflow(seed: int, deterministic: bool = True, threads: int | None = None) -> None:
    """Seed Python, NumPy and the backend; make TensorFlow's ops deterministic; size its thread pools.

    Process-wide: call it only inside `restored_process_state` (the public functions that call it are
    wrapped in `leaves_process_state`), which puts the seeds and op determinism back afterwards. Thread
    pools are the exception: TensorFlow sizes them once per process, when its runtime starts, and offers
    no way back, so `threads` applies only if nothing has started TensorFlow yet (otherwise the existing
    pools are kept and a warning says so). Pool sizes change speed, not results: every op's result is the
    same whatever the pool size once op determinism is on.
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


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Run a block that seeds random number generators or turns on op determinism, and put back after it
    what it changed: Python's, NumPy's, Keras' and TensorFlow's global random states, TensorFlow's op
    determinism, Keras' dtype policy and the environment variables: a notebook's next cell sees the state its
    previous cell left. Not put back: TensorFlow's thread pools (sized once per process) and Keras' layer-name
    counter (names only; no result depends on them, see train.seed_states)."""
    import keras
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras_seed = global_state.get_global_attribute(GLOBAL_RANDOM_SEED)
    keras_generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    policy, environment = keras.config.dtype_policy(), dict(os.environ)
    tensorflow = _tensorflow_state() if keras.backend.backend() == "tensorflow" else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(GLOBAL_RANDOM_SEED, keras_seed)
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, keras_generator)
        keras.config.set_dtype_policy(policy)
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)
        if tensorflow is not None:
            tensorflow()


def _tensorflow_state() -> Callable[[], None]:
    """TensorFlow's global seed (the eager context's seed and its op-seed sequence) and op determinism, as a
    function that restores them. TensorFlow has public calls to set both but none to read or undo them, so
    this reads its eager context and calls its own (unexported) disable_op_determinism."""
    from tensorflow.python.eager import context
    from tensorflow.python.framework import config as tf_config
    from tensorflow.python.util import _pywrap_determinism

    ctx = context.context()
    seed, op_seeds = ctx._seed, None if ctx._seed is None else ctx._rng.getstate()
    deterministic = _pywrap_determinism.is_enabled()

    def restore() -> None:
        if seed is None:
            if ctx._seed is not None:
                ctx._set_global_seed(0)  # clears the kernel cache, as setting any seed does
                ctx._seed, ctx._rng = None, None
        elif ctx._seed != seed or ctx._rng.getstate() != op_seeds:
            ctx._set_global_seed(seed)
            ctx._rng.setstate(op_seeds)
        if _pywrap_determinism.is_enabled() != deterministic:
            (tf_config.enable_op_determinism if deterministic else tf_config.disable_op_determinism)()

    return restore


def leaves_process_state(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public function that seeds or configures TensorFlow so that it returns the process as it found it
    (restored_process_state)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with restored_process_state():
            return func(*args, **kwargs)

    return wrapper


@leaves_process_state  # building the layers draws Keras' default seeds from Python's generator: not the caller's
def load_keras_model(model_path: Path | str):
    """A .keras file this package wrote, uncompiled: inference needs no optimizer, finetuning compiles
    its own, and a mixed-precision run's loss-scale state is not wanted by either."""
    import keras

    import zoobot_core.encoders.layers  # noqa: F401  (registers custom objects: the encoders' layers)
    import zoobot_core.losses  # noqa: F401
    import zoobot_core.model  # noqa: F401

    return keras.models.load_model(model_path, compile=False)


def load_model_config(model_dir: Path | str, config_name: str = MODEL_CONFIG) -> dict:
    """A model folder's JSON config (model_config.json by default), without loading the network."""
    return json.loads((Path(model_dir) / config_name).read_text())


def load_model(model_dir: Path | str, config_name: str = MODEL_CONFIG):
    """Load model.keras (uncompiled) and its JSON config (model_config.json by default) from a model folder."""
    return load_keras_model(Path(model_dir) / MODEL_FILE), load_model_config(model_dir, config_name)
