"""Library calls leave the process as they found it: a training run computes the same numbers whatever ran
before it in the same Python process (a notebook's earlier cells, an earlier test).

The leak this guards against: each layer's random state was seeded by its position in the model's states
sorted by name, and the names carry Keras' process-wide counter (seed_generator_12/...), so a process that had
built or loaded a model before gave the layers other seeds, and training other numbers (issue 24).
"""

import os
import random
import re

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.framework import config as tf_config
from tensorflow.python.util import _pywrap_determinism

from zoobot_core.bases import BaseSpec
from zoobot_core.finetune import FinetuneConfig, finetune
from zoobot_core.model import get_model
from zoobot_core.predict import PredictConfig, predict_shards
from zoobot_core.runtime import load_model, restored_process_state
from zoobot_core.schemas import get_tree
from zoobot_core.train import TrainConfig, seed_states, train_from_shards

TREE = get_tree("gz_decals_dr5")


@pytest.fixture(autouse=True)
def _leave_the_process_as_found():
    """These tests reseed the global generators on purpose: the next test gets the process as this one found it."""
    with restored_process_state():
        yield


def _train(shards, out, **settings) -> tuple[pd.DataFrame, list[np.ndarray]]:
    config = TrainConfig(epochs=2, batch_size=8, resize_size=32, tensorboard=False, seed=5, **settings)
    history = train_from_shards(shards, out, TREE, config, threads=2)
    model, _ = load_model(out)
    return history, model.get_weights()


def _draws() -> tuple:
    """One draw from each global generator a library call might reseed."""
    return random.random(), np.random.random(), float(tf.random.uniform([])), float(keras.random.uniform(()))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)


def _ring_images(n: int = 24, size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    radius = np.hypot(*(np.indices((size, size)) - (size - 1) / 2))
    labels = np.tile([0, 1], n // 2)
    images = [np.clip(200 * np.exp(-radius / 4) + label * 80 * np.exp(-((radius - 14) ** 2) / 3) + rng.normal(0, 8, (size, size)), 0, 255) for label in labels]
    return np.repeat(np.asarray(images, np.uint8)[..., None], 3, axis=-1), labels, np.array([f"G{i:03d}" for i in range(n)])


@pytest.mark.slow
def test_training_computes_the_same_numbers_after_every_other_call_that_touches_tensorflow(tiny_shards, tmp_path):
    first_history, first_weights = _train(tiny_shards, tmp_path / "first")

    # what a notebook might run in between: the mixed-precision path (train, load, predict), finetuning with
    # unfreezing, models built by hand, and the global generators drawn from and reseeded
    _train(tiny_shards, tmp_path / "mixed", precision="mixed_float16", distribute="none")
    model, _ = load_model(tmp_path / "mixed")
    predict_shards(tmp_path / "mixed", tiny_shards, "test", PredictConfig(n_samples=2))
    images, labels, ids = _ring_images()
    finetune(images, ids, labels, BaseSpec("none"), tmp_path / "finetuned", FinetuneConfig(folds=2, inner_folds=2, batch_size=8, unfreeze_blocks=1, unfreeze_epochs=1),
             label_col="ring", seen_by_base=set(), threads=2)
    for _ in range(3):
        get_model(34, 32, 24, 32, 1, seed=1)
    _seed_everything(99)
    _draws()

    again_history, again_weights = _train(tiny_shards, tmp_path / "again")
    pd.testing.assert_frame_equal(again_history, first_history, check_exact=True)
    assert len(again_weights) == len(first_weights)
    for again, first in zip(again_weights, first_weights):
        np.testing.assert_array_equal(again, first)


def _owners(model) -> list[str]:
    """The layer each of seed_states' states belongs to, in seed_states' order (named without Keras' _N counter)."""
    owner = {g.state.path: re.sub(r"_[0-9]+$", "", layer.name) for layer in model._flatten_layers(include_self=False, recursive=True) for g in getattr(layer, "_seed_generators", [])}
    return [owner[v.path] for v in seed_states(model)]


def test_seed_states_follow_the_layers_not_keras_name_counter():
    """A model whose states are named across a power of ten (seed_generator_995 ... seed_generator_1007, as in a process
    that built models before) lists them for the same layers in the same order as the next model."""
    import collections

    from keras.src.backend.common import global_state

    uids = global_state.get_global_attribute("object_name_uids", default=collections.defaultdict(int), set_to_default=True)
    power = 10 ** len(str(uids["seed_generator"] + 5))
    uids["seed_generator"] = power - 5  # only ever raised: later names stay unique
    across, after = (get_model(34, 32, 24, 32, 1, seed=1) for _ in range(2))
    assert [v.path for v in seed_states(across)][:2] == [f"seed_generator_{power - 5}/seed_generator_state", f"seed_generator_{power - 4}/seed_generator_state"]
    assert _owners(across) == _owners(after)
    assert _owners(after)[:3] == ["random_rotation", "random_flip", "random_crop"] and len(_owners(after)) == 13


@pytest.mark.slow
def test_training_and_finetuning_leave_every_global_generator_determinism_and_the_environment_as_they_found_them(tiny_shards, tmp_path):
    _seed_everything(7)
    expected = _draws(), _draws()
    _seed_everything(7)
    policy, environment, deterministic = keras.config.dtype_policy().name, dict(os.environ), _pywrap_determinism.is_enabled()
    first = _draws()
    _train(tiny_shards, tmp_path / "model", precision="mixed_float16", distribute="none")
    images, labels, ids = _ring_images()
    finetune(images, ids, labels, BaseSpec("none"), tmp_path / "finetuned", FinetuneConfig(folds=2, inner_folds=2, batch_size=8), label_col="ring", seen_by_base=set(), threads=2)
    assert (first, _draws()) == expected  # the draws go on where they were, as if nothing had run
    assert keras.config.dtype_policy().name == policy and dict(os.environ) == environment
    assert _pywrap_determinism.is_enabled() == deterministic


def test_restored_process_state_undoes_seeds_determinism_policy_and_environment():
    deterministic = _pywrap_determinism.is_enabled()
    tf_config.disable_op_determinism()  # so that the block's turning it on has something to undo
    try:
        tf_seed, policy = context.context()._seed, keras.config.dtype_policy().name
        python_state, numpy_state = random.getstate(), np.random.get_state()
        os.environ.pop("ZOOBOT_TEST_VARIABLE", None)
        with restored_process_state():
            keras.utils.set_random_seed(3)
            tf.config.experimental.enable_op_determinism()
            keras.config.set_dtype_policy("mixed_bfloat16")
            os.environ["ZOOBOT_TEST_VARIABLE"] = "1"
            random.random(), np.random.random()
        assert context.context()._seed == tf_seed and not _pywrap_determinism.is_enabled()
        assert random.getstate() == python_state
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
        assert keras.config.dtype_policy().name == policy and "ZOOBOT_TEST_VARIABLE" not in os.environ
    finally:
        (tf_config.enable_op_determinism if deterministic else tf_config.disable_op_determinism)()


@pytest.mark.slow
def test_finetuning_with_unfreezing_repeats_whatever_state_the_process_was_in(tmp_path):
    """Two finetunings (unfreezing included) from other global seeds and with op determinism off give the same model:
    every random thing in them (the copies' drop-connect seeds, augmentation, shuffling) is seeded by the config."""
    images, labels, ids = _ring_images()
    config = FinetuneConfig(folds=2, inner_folds=2, batch_size=8, unfreeze_blocks=1, unfreeze_epochs=2, patience=2)
    runs = []
    for k, seed in enumerate((1, 2)):
        with restored_process_state():
            _seed_everything(seed)
            tf_config.disable_op_determinism()
            finetune(images, ids, labels, BaseSpec("none"), tmp_path / str(k), config, label_col="ring", seen_by_base=set(), threads=2)
        out = tmp_path / str(k)
        runs.append((pd.read_csv(out / "history.csv"), pd.read_parquet(out / "cv_predictions.parquet"),
                     keras.models.load_model(out / "model.keras", compile=False).get_weights()))
    (history, oof, weights), (history_again, oof_again, weights_again) = runs
    assert len(history) > 0
    pd.testing.assert_frame_equal(history_again, history, check_exact=True)
    pd.testing.assert_frame_equal(oof_again, oof, check_exact=True)
    assert len(weights_again) == len(weights) > 0
    for again, first in zip(weights_again, weights):
        np.testing.assert_array_equal(again, first)
