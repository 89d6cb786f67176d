"""Mixed precision and tf.distribute: the dtype policy is scoped, and both train and predict on CPU.

There is no GPU here, so MirroredStrategy runs over two logical CPU devices (set up in a
fresh process before TensorFlow starts); on a machine with 2+ GPUs `distribute: auto` picks it.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from zoobot_core.hardware import distribution_strategy, precision_policy
from zoobot_core.model import HEAD_NAME
from zoobot_core.predict import PredictConfig, predict_shards
from zoobot_core.runtime import load_model
from zoobot_core.schemas import get_tree

TREE = get_tree("gz_decals_dr5")


def test_precision_policy_is_scoped_and_checked():
    before = keras.config.dtype_policy().name
    with precision_policy("mixed_float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
        assert keras.layers.Dense(2).compute_dtype == "float16"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ValueError, match="train.precision must be one of"):
        with precision_policy("float8"):
            pass
    assert keras.config.dtype_policy().name == before


def test_auto_strategy_on_a_cpu_machine_is_one_device():
    assert distribution_strategy("auto").num_replicas_in_sync == 1
    assert distribution_strategy("none").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="train.distribute must be one of"):
        distribution_strategy("tpu")


_TRAIN = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree
from zoobot_core.train import TrainConfig, train_from_shards
setup_logging(sys.argv[3])
config = TrainConfig(epochs=1, batch_size=8, resize_size=32, precision="mixed_float16", distribute="mirrored", tensorboard=False)
train_from_shards(sys.argv[1], sys.argv[2], get_tree("gz_decals_dr5"), config, threads=2, devices=["/cpu:0", "/cpu:1"])
assert keras.config.dtype_policy().name == "float32", "training left its dtype policy behind"
"""


@pytest.mark.slow
def test_mixed_float16_under_mirrored_strategy_over_two_replicas(tiny_shards, tmp_path):
    """The GZ DECaLS setting (mixed precision, two GPUs) with two logical CPUs standing in for the GPUs."""
    out, log = tmp_path / "model", tmp_path / "train.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, "-c", _TRAIN, str(tiny_shards), str(out), str(log)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = log.read_text()
    assert "MirroredStrategy over 2 replicas" in text and "1 epochs max, mixed_float16 (LossScaleOptimizer), 2 replica(s)" in text
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0] and np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    assert sorted((out / "tensorboard").iterdir()) == []  # tensorboard: false leaves the folder empty

    # the saved model keeps its policies: float16 compute in the base, float32 weights, augmentation and head
    model, _ = load_model(out)
    base = next(layer for layer in model.layers if layer.name.startswith("efficientnet"))
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {c.compute_dtype for c in convs} == {"float16"} and {c.variable_dtype for c in convs} == {"float32"}
    assert model.get_layer(HEAD_NAME).compute_dtype == "float32" and model.get_layer("random_rotation").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    predictions, representations, _ = predict_shards(out, tiny_shards, "test", PredictConfig(n_samples=2))
    concentrations = predictions[[f"{c}_concentration" for c in TREE.label_cols]].to_numpy()
    assert np.isfinite(concentrations).all() and (concentrations > 1).all() and (concentrations < 101).all()
    assert np.isfinite(representations.drop(columns="id_str").to_numpy()).all()
