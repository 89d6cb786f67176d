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


# patience 3 at this learning rate: the best val_loss is epoch 1's, so an uninterrupted run stops after epoch 4
_EARLY_STOPPING = """
import os
import sys
import zoobot_core.train as train
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

kill_epoch, kill_when = int(sys.argv[4]), sys.argv[5]
make_backup = train._atomic_backup

def killing_backup(backup_dir):
    # the backup is the last callback: os._exit here is a SIGKILL after the epoch's history row (and, 'after', its backup)
    backup = make_backup(backup_dir)
    backup_epoch_end = backup.on_epoch_end

    def on_epoch_end(epoch, logs=None):
        if epoch == kill_epoch and kill_when == "before_backup":
            os._exit(137)
        backup_epoch_end(epoch, logs)
        if epoch == kill_epoch and kill_when == "after_backup":
            os._exit(137)

    backup.on_epoch_end = on_epoch_end
    return backup

train._atomic_backup = killing_backup
setup_logging(sys.argv[3])
config = train.TrainConfig(epochs=8, batch_size=8, patience=3, learning_rate=1e-2, greyscale=True, seed=3, resize_size=32, tensorboard=False)
train.train_from_shards(sys.argv[1], sys.argv[2], get_tree("gz_decals_dr5"), config, state_dir=sys.argv[2] + "_state", threads=1)
"""


def _train_early_stopping(shards: Path, out: Path, log: Path, kill_epoch: int = -1, kill_when: str = "never") -> int:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [sys.executable, "-c", _EARLY_STOPPING, str(shards), str(out), str(log), str(kill_epoch), kill_when]
    return subprocess.run(args, env=env, timeout=600).returncode


@pytest.fixture(scope="module")
def early_stopped(tiny_shards, tmp_path_factory) -> Path:
    """An uninterrupted run that early-stops: its output folder."""
    out = tmp_path_factory.mktemp("early_stopped") / "model"
    assert _train_early_stopping(tiny_shards, out, out.parent / "train.log") == 0
    epochs = pd.read_csv(out / "history.csv")["epoch"].tolist()
    # the epoch it stops at depends on the CPU's numerics; that it stops before the 8th, with epochs to kill in, does not
    assert epochs == list(range(len(epochs))) and 3 <= len(epochs) < 8, f"early stopping should fire before epoch 8, not after {epochs}; retune the test"
    return out


@pytest.mark.parametrize(
    ("offset", "kill_when"),
    [
        (-1, "before_backup"),  # the epoch before the stopping one in the history, not in the backup: resuming repeats it
        (0, "after_backup"),  # the stopping epoch backed up, training not yet ended: resuming must not train on
    ],
)
def test_resumed_run_early_stops_at_the_same_epoch_as_an_uninterrupted_one(tiny_shards, tmp_path, early_stopped, offset, kill_when):
    """A kill between an epoch's history row and its backup made EarlyStopping count the repeated epoch twice (one
    epoch early); a kill after the stopping epoch's backup made the resumed run train another epoch."""
    import h5py

    from zoobot_core.train import BACKUP_WEIGHTS

    kill_epoch = int(pd.read_csv(early_stopped / "history.csv")["epoch"].max()) + offset
    backed_up = kill_epoch + (kill_when == "after_backup")  # epochs in the backup when the kill came
    out, state = tmp_path / "model", tmp_path / "model_state"
    assert _train_early_stopping(tiny_shards, out, tmp_path / "killed.log", kill_epoch, kill_when) == 137
    # what the kill left on disk: history up to kill_epoch, a backup of the first `backed_up` epochs, no model
    assert pd.read_csv(state / "history.csv")["epoch"].tolist() == list(range(kill_epoch + 1))
    with h5py.File(state / "backup" / BACKUP_WEIGHTS, "r") as f:
        assert int(f.attrs["epoch"]) == backed_up
    assert not (out / "model.keras").exists()

    assert _train_early_stopping(tiny_shards, out, tmp_path / "resumed.log") == 0
    assert "Resuming from the last finished epoch" in (tmp_path / "resumed.log").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), pd.read_csv(early_stopped / "history.csv"), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(state / "history.csv"), pd.read_csv(early_stopped / "history.csv"), check_exact=True)
    assert not (state / "backup").exists()  # training ended: the backup is gone, as after an uninterrupted run
    assert len(_weights(out / "model.keras")) == len(_weights(early_stopped / "model.keras")) > 0
    for a, b in zip(_weights(out / "model.keras"), _weights(early_stopped / "model.keras")):
        np.testing.assert_array_equal(a, b)
