"""A training job killed with SIGKILL (as a preempted SLURM job is) resumes from its last finished epoch."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tensorboard_scalars

pytestmark = pytest.mark.slow

_TRAIN = """
import sys
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree
from zoobot_core.train import TrainConfig, train_from_shards
setup_logging(sys.argv[3])
config = TrainConfig(epochs=int(sys.argv[4]), batch_size=8, patience=10, greyscale=True, seed=3, resize_size=32)
train_from_shards(sys.argv[1], sys.argv[2], get_tree("gz_decals_dr5"), config, state_dir=sys.argv[2] + "_state", threads=1)
"""


def _train(shards: Path, out: Path, log: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-c", _TRAIN, str(shards), str(out), str(log), str(epochs)], env=env)


def _epochs_logged(history: Path) -> int:
    try:
        return len(pd.read_csv(history))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def test_killed_training_resumes_from_its_last_finished_epoch(tiny_shards, tmp_path):
    out, history = tmp_path / "model", tmp_path / "model_state" / "history.csv"
    job = _train(tiny_shards, out, tmp_path / "first.log", epochs=5)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and job.poll() is None:
        if _epochs_logged(history) >= 2:
            break
        time.sleep(0.2)
    assert job.poll() is None, "training finished before it could be killed; make the test run longer"
    job.send_signal(signal.SIGKILL)  # no chance to clean up, as with a preempted job
    job.wait()
    killed_at = len(pd.read_csv(history))
    assert 2 <= killed_at < 5 and not (out / "model.keras").exists()

    rerun = _train(tiny_shards, out, tmp_path / "second.log", epochs=5)
    assert rerun.wait(timeout=600) == 0
    assert "Resuming from the last finished epoch" in (tmp_path / "second.log").read_text()
    final = pd.read_csv(out / "history.csv")
    assert final["epoch"].tolist() == [0, 1, 2, 3, 4]
    # TensorBoard logs of both runs sit together: every epoch's validation loss, the resumed ones included
    val_loss = tensorboard_scalars(out / "tensorboard" / "validation", "epoch_loss")
    assert sorted(val_loss) == [0, 1, 2, 3, 4]
    assert val_loss[4] == pytest.approx(final["val_loss"].iloc[4], rel=1e-5)
    # epochs backed up before the kill are kept, not retrained (the last one seen may not have been backed up yet)
    kept = killed_at - 1
    first_run = pd.read_csv(history).drop_duplicates("epoch", keep="first").head(kept).reset_index(drop=True)
    pd.testing.assert_frame_equal(final.head(kept), first_run)
    retrained = len(re.findall(r"epoch \d+/5:", (tmp_path / "second.log").read_text()))
    assert retrained in (5 - killed_at, 5 - killed_at + 1)

    # the resumed run ends where an uninterrupted one does: each epoch's shuffle and augmentations depend on
    # (seed, epoch) alone, not on how many epochs this process has run
    straight = tmp_path / "straight"
    assert _train(tiny_shards, straight, tmp_path / "straight.log", epochs=5).wait(timeout=600) == 0
    pd.testing.assert_frame_equal(final, pd.read_csv(straight / "history.csv"), check_exact=True)
    resumed_weights, straight_weights = (_weights(path / "model.keras") for path in (out, straight))
    assert len(resumed_weights) == len(straight_weights) > 100
    for a, b in zip(resumed_weights, straight_weights):
        np.testing.assert_array_equal(a, b)


def _weights(path: Path) -> list:
    """Every weight array of a saved model, in order."""
    from zoobot_core.runtime import load_keras_model

    return [np.asarray(w) for w in load_keras_model(path).get_weights()]


def test_the_backup_is_one_file_whose_own_epoch_decides_and_an_unreadable_one_restarts(tmp_path):
    """Keras writes weights then metadata: a kill between them left epoch N's weights beside epoch N-1's metadata, a kill
    inside the metadata write an unreadable file. The backup now commits the weights with their epoch inside, atomically."""
    import keras

    from zoobot_core.train import BACKUP_METADATA, BACKUP_WEIGHTS, _atomic_backup, _restore_backup

    def model() -> keras.Model:
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile(optimizer="adam", loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    backup_dir = tmp_path / "backup"
    saved = model()
    saving = _atomic_backup(backup_dir)
    saving.set_model(saved)
    saving._current_epoch = 3  # as after epoch 2's on_epoch_end
    saving._save_model()
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted([BACKUP_METADATA, BACKUP_WEIGHTS])  # no temporary files left

    (backup_dir / BACKUP_METADATA).write_text('{"epoch": 2, "ba')  # torn metadata, one epoch behind
    restored = model()
    loading = _atomic_backup(backup_dir)
    loading.set_model(restored)
    assert _restore_backup(loading, backup_dir) == 3
    for a, b in zip(saved.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)

    (backup_dir / BACKUP_WEIGHTS).write_bytes(b"not hdf5")  # unreadable weights: start over rather than crash
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n0,1.0,1.0\n")  # and forget the epochs it recorded
    fresh = _atomic_backup(backup_dir)
    fresh.set_model(model())
    assert _restore_backup(fresh, backup_dir) == 0 and not backup_dir.exists() and not (tmp_path / "history.csv").exists()
