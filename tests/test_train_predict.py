"""Training and prediction on tiny shards: outputs, MC dropout, resume state, base-once equivalence."""

import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import tensorboard_scalars

from zoobot_core.datasets import get_dataset
from zoobot_core.hdf5 import load_predictions_hdf5, samples_to_array, write_predictions_hdf5
from zoobot_core.model import HEAD_NAME, representation_model
from zoobot_core.predict import PredictConfig, dihedral_views, predict_shards
from zoobot_core.preprocess import preprocess_images
from zoobot_core.runtime import load_model
from zoobot_core.schemas import get_tree
from zoobot_core.shards import read_catalog, read_metadata, shard_paths
from zoobot_core.train import TrainConfig, preprocessing_config, train_from_shards

TREE = get_tree("gz_decals_dr5")
TINY = TrainConfig(epochs=2, batch_size=8, patience=2, resize_size=32, batchnorm_momentum=0.9)


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    history = train_from_shards(tiny_shards, out, TREE, TINY, threads=2)
    return out, history


def test_training_writes_model_config_and_history(trained):
    out, history = trained
    assert history["epoch"].tolist() == [0, 1]
    assert pd.read_csv(out / "history.csv").equals(history)
    config = json.loads((out / "model_config.json").read_text())
    assert config["best_epoch"] == int(history["val_loss"].idxmin())
    assert config["label_cols"] == TREE.label_cols and config["greyscale"] is True
    assert not (out / "train_state" / "backup").exists()  # a finished run leaves nothing to resume


def test_tensorboard_logs_hold_the_history_per_epoch(trained):
    out, history = trained
    train = tensorboard_scalars(out / "tensorboard" / "train", "epoch_loss")
    val = tensorboard_scalars(out / "tensorboard" / "validation", "epoch_loss")
    assert sorted(train) == sorted(val) == history["epoch"].tolist()
    np.testing.assert_allclose([train[e] for e in history["epoch"]], history["loss"], rtol=1e-5)
    np.testing.assert_allclose([val[e] for e in history["epoch"]], history["val_loss"], rtol=1e-5)


_TRAIN_ONCE = """
import sys
from zoobot_core.schemas import get_tree
from zoobot_core.train import TrainConfig, train_from_shards
config = TrainConfig(epochs=2, batch_size=8, patience=2, resize_size=32, batchnorm_momentum=0.9)
train_from_shards(sys.argv[1], sys.argv[2], get_tree("gz_decals_dr5"), config, threads=2)
"""


def test_training_is_deterministic_on_cpu(tiny_shards, tmp_path):
    """Two trainings, each in a fresh process as a workflow job is, give the same history and weights to the bit.

    (Within one process, measured: a second and a third training agree with each other but not with the first,
    whose process had not started TensorFlow's runtime yet; pools and other runtime state are set up once per
    process. So the comparison is between fresh processes, as the workflow runs.)
    """
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", _TRAIN_ONCE, str(tiny_shards), str(tmp_path / name)], check=True, capture_output=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a/history.csv"), pd.read_csv(tmp_path / "b/history.csv"))
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_predictions_have_dropout_spread_and_match_the_full_model_without_dropout(tiny_shards, trained):
    out, _ = trained
    predictions, representations, samples = predict_shards(out, tiny_shards, "test", PredictConfig(n_samples=4, batch_size=16))
    n_test = read_metadata(tiny_shards)["counts"]["test"]
    assert len(predictions) == len(representations) == n_test
    stds = predictions[[f"{c}_fraction_std" for c in TREE.label_cols]].to_numpy()
    assert (stds > 0).mean() > 0.9  # dropout samples differ
    # every sample is stored; their mean is the reported concentration
    assert len(samples) == 4 * n_test and samples.groupby("id_str")["sample"].apply(lambda s: sorted(s) == [0, 1, 2, 3]).all()
    means = samples.groupby("id_str", sort=False)[TREE.label_cols].mean().loc[predictions["id_str"]]
    np.testing.assert_allclose(means.to_numpy(), predictions[[f"{c}_concentration" for c in TREE.label_cols]].to_numpy(), rtol=1e-5)

    # base once + head == the whole model at inference (no dropout, no augmentation)
    model, config = load_model(out)
    pre = preprocessing_config(TREE.label_cols, config["input_size"], config["greyscale"])
    batch = next(iter(get_dataset(shard_paths(tiny_shards, "test"), [], 64, requested_img_size=32)))
    images = preprocess_images(batch["matrix"], pre)
    features = representation_model(model).predict_on_batch(images)
    np.testing.assert_allclose(features, representations.drop(columns="id_str").to_numpy()[: len(features)], rtol=1e-4, atol=1e-5)
    head_only = keras.ops.convert_to_numpy(model.get_layer(HEAD_NAME)(features))
    np.testing.assert_allclose(head_only, model.predict_on_batch(images), rtol=1e-4)


def test_prediction_is_repeatable_for_a_seed(tiny_shards, trained):
    out, _ = trained
    a, *_ = predict_shards(out, tiny_shards, "val", PredictConfig(n_samples=3, seed=1))
    b, *_ = predict_shards(out, tiny_shards, "val", PredictConfig(n_samples=3, seed=1))
    pd.testing.assert_frame_equal(a, b)


def test_training_and_prediction_read_raw_pixel_shards_and_ignore_stale_state(tiny_shards, tmp_path):
    from zoobot_core.shard_writer import write_shards
    from zoobot_core.shards import ShardSettings

    ready = read_catalog(tiny_shards)
    write_shards(ready, tmp_path / "raw", ShardSettings(size=32, label_cols=tuple(TREE.label_cols), shard_size=16, train_fraction=0.6, val_fraction=0.2, image_encoding="raw"))
    # training state left by some other run (other config, other shards) must not be resumed
    state = tmp_path / "state"
    (state / "backup").mkdir(parents=True)
    (state / "fingerprint.json").write_text(json.dumps({"not": "this run"}))
    (state / "history.csv").write_text("epoch,loss,val_loss\n0,1,1\n1,1,1\n2,1,1\n")
    history = train_from_shards(tmp_path / "raw", tmp_path / "model", TREE, TrainConfig(epochs=1, batch_size=8, resize_size=32), state_dir=state, threads=2)
    assert history["epoch"].tolist() == [0] and np.isfinite(history["loss"]).all()
    predictions, *_ = predict_shards(tmp_path / "model", tmp_path / "raw", "test", PredictConfig(n_samples=2))
    assert len(predictions) == read_metadata(tmp_path / "raw")["counts"]["test"]


def test_test_time_augmentation_samples_every_view_and_is_rotation_invariant(tiny_shards, trained, tmp_path):
    out, _ = trained
    plain, plain_repr, _ = predict_shards(out, tiny_shards, "test", PredictConfig(n_samples=2, seed=1))
    tta, tta_repr, samples = predict_shards(out, tiny_shards, "test", PredictConfig(n_samples=2, seed=1, tta_views=8))
    n_test = len(plain)
    assert len(samples) == 16 * n_test
    per_galaxy = samples.groupby("id_str", sort=False)
    assert per_galaxy["sample"].apply(list).map(lambda s: s == list(range(16))).all()
    assert per_galaxy["view"].apply(list).map(lambda v: v == [k // 2 for k in range(16)]).all()
    pd.testing.assert_frame_equal(tta_repr, plain_repr)  # representations are of the image as it is
    assert not np.allclose(tta.filter(like="_concentration"), plain.filter(like="_concentration"))

    # averaged over all 8 views, the network's output does not change when the galaxy is turned by 90 degrees
    model, config = load_model(out)
    pre = preprocessing_config(TREE.label_cols, config["input_size"], config["greyscale"])
    batch = next(iter(get_dataset(shard_paths(tiny_shards, "test"), [], 8, requested_img_size=32)))
    images = keras.ops.convert_to_numpy(preprocess_images(batch["matrix"], pre))
    extractor = representation_model(model)

    def view_mean(x):
        return np.mean([extractor.predict_on_batch(v) for v in dihedral_views(x, 8)], axis=0)

    np.testing.assert_allclose(view_mean(np.rot90(images, 1, axes=(1, 2))), view_mean(images), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="tta_views must be one of"):
        PredictConfig(tta_views=3)


def test_hdf5_round_trip_in_zoobot_layout(tiny_shards, trained, tmp_path):
    out, _ = trained
    predictions, _, samples = predict_shards(out, tiny_shards, "val", PredictConfig(n_samples=3))
    values, ids = samples_to_array(samples.sample(frac=1, random_state=0), TREE.label_cols)  # row order does not matter
    in_order, in_order_ids = samples_to_array(samples, TREE.label_cols)  # as predict writes them: the sort is skipped
    assert in_order_ids == list(pd.unique(samples["id_str"]))
    for id_str, array in zip(in_order_ids, in_order):
        np.testing.assert_array_equal(array, dict(zip(ids, values))[id_str])
    write_predictions_hdf5(values, ids, TREE.label_cols, tmp_path / "val.hdf5", attrs={"tta_views": 1})
    loaded, loaded_ids, label_cols = load_predictions_hdf5(tmp_path / "val.hdf5")
    assert label_cols == TREE.label_cols and loaded.shape == (len(predictions), len(TREE.label_cols), 3)
    by_id = dict(zip(loaded_ids, loaded))
    for _, row in samples.head(9).iterrows():
        np.testing.assert_array_equal(by_id[row["id_str"]][:, row["sample"]], row[TREE.label_cols].to_numpy(np.float32))
    means = np.stack([by_id[i].mean(axis=1) for i in predictions["id_str"]])
    np.testing.assert_allclose(means, predictions[[f"{c}_concentration" for c in TREE.label_cols]], rtol=1e-5)
    with pytest.raises(ValueError, match="must be \\(galaxies"):
        write_predictions_hdf5(values[:, :3], ids, TREE.label_cols, tmp_path / "bad.hdf5")
    assert not (tmp_path / "bad.hdf5").exists()


def test_an_empty_split_gives_empty_tables_not_a_crash(tiny_shards, trained, tmp_path):
    """A catalog without unlabelled galaxies still has an `unlabelled` split to predict (predict.splits), just empty."""
    import shutil

    from zoobot_core.predict import predict_files

    out, _ = trained
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    for path in (shards / "unlabelled").glob("*.tfrecord"):
        path.unlink()
    metadata = json.loads((shards / "shards.json").read_text())
    metadata["counts"]["unlabelled"] = 0
    (shards / "shards.json").write_text(json.dumps(metadata))
    predict_files(out, shards, "unlabelled", tmp_path / "p.parquet", tmp_path / "r.parquet", PredictConfig(n_samples=2, tta_views=2), tmp_path / "s.parquet")
    predictions, samples = pd.read_parquet(tmp_path / "p.parquet"), pd.read_parquet(tmp_path / "s.parquet")
    assert predictions.empty and samples.empty
    assert list(samples.columns) == ["id_str", "sample", "view", *TREE.label_cols]


def test_the_predict_rule_streams_windows_to_disk_with_the_same_numbers(tiny_shards, trained, tmp_path):
    """predict_files writes `window` galaxies at a time (bounded memory for a split of any size); the files hold
    exactly what predicting the whole split at once gives, rows in shard order."""
    from zoobot_core.predict import predict_files

    out, _ = trained
    config = PredictConfig(n_samples=2, seed=3, batch_size=4)
    whole = predict_shards(out, tiny_shards, "train", config)
    paths = [tmp_path / f"{name}.parquet" for name in ("p", "r", "s")]
    predict_files(out, tiny_shards, "train", paths[0], paths[1], config, paths[2], window=5)  # windows of 8 (two batches), 8, ...
    assert len(whole[0]) > 10
    for table, path in zip(whole, paths):
        pd.testing.assert_frame_equal(pd.read_parquet(path), table, check_dtype=False)
    assert pd.read_parquet(paths[0])["id_str"].tolist() == whole[0]["id_str"].tolist()
    import pyarrow.parquet as pq

    assert pq.ParquetFile(paths[1]).num_row_groups > 1  # written window by window
    assert not list(tmp_path.glob(".*.tmp"))  # no temporaries left behind


_PREDICT_IN_A_FRESH_PROCESS = """
import sys
from zoobot_core.predict import PredictConfig, predict_shards
predictions, _, samples = predict_shards(sys.argv[1], sys.argv[2], "test", PredictConfig(n_samples=3, seed=4))
predictions.to_parquet(sys.argv[3])
samples.to_parquet(sys.argv[4])
"""


def test_recalibration_is_fitted_on_validation_only_and_applied_by_a_prediction_in_a_fresh_process(tiny_shards, trained, tmp_path):
    import shutil

    from zoobot_core.recalibration import RECALIBRATION_FILE, RecalibrationConfig, recalibrate_files

    out, _ = trained
    model = tmp_path / "model"
    shutil.copytree(out, model)  # the shared model folder stays without a recalibration
    settings = PredictConfig(n_samples=3, seed=4)
    raw, _, raw_samples = predict_shards(model, tiny_shards, "test", settings)
    fitted = recalibrate_files(model, tiny_shards, model / RECALIBRATION_FILE, settings, RecalibrationConfig(method="scale", min_galaxies=5))
    assert fitted["fitted_on"] == "val" and fitted["n_val"] == read_metadata(tiny_shards)["counts"]["val"]
    scales = {name: q["scale"] for name, q in fitted["questions"].items()}
    assert any(q["status"] == "fitted" and q["scale"] != 1.0 for q in fitted["questions"].values())

    # the fit never reads test: other test votes, the same recalibration; other validation votes, another one
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    test = pd.read_parquet(shards / "test_catalog.parquet")
    test[TREE.label_cols] = test[TREE.label_cols].to_numpy()[::-1]
    test.to_parquet(shards / "test_catalog.parquet")
    again = recalibrate_files(model, shards, tmp_path / "again.json", settings, RecalibrationConfig(method="scale", min_galaxies=5))
    assert again["questions"] == fitted["questions"]
    val = pd.read_parquet(shards / "val_catalog.parquet")
    val[TREE.label_cols] = val[TREE.label_cols].to_numpy()[::-1]
    val.to_parquet(shards / "val_catalog.parquet")
    other = recalibrate_files(model, shards, tmp_path / "other.json", settings, RecalibrationConfig(method="scale", min_galaxies=5))
    assert {n: q["scale"] for n, q in other["questions"].items()} != scales

    # a fresh process reads recalibration.json from the model folder and applies it
    subprocess.run([sys.executable, "-c", _PREDICT_IN_A_FRESH_PROCESS, str(model), str(tiny_shards), str(tmp_path / "p.parquet"), str(tmp_path / "s.parquet")],
                   check=True, capture_output=True)
    calibrated, calibrated_samples = pd.read_parquet(tmp_path / "p.parquet"), pd.read_parquet(tmp_path / "s.parquet")
    for question, (first, last) in zip(TREE.questions, TREE.question_index_groups):
        cols = TREE.label_cols[first : last + 1]
        np.testing.assert_allclose(calibrated_samples[cols].to_numpy(), raw_samples[cols].to_numpy() * scales[question.name], rtol=1e-5)
        np.testing.assert_allclose(calibrated[[f"{c}_concentration_raw" for c in cols]].to_numpy(), raw[[f"{c}_concentration" for c in cols]].to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(calibrated[[f"{c}_concentration" for c in cols]].to_numpy(),
                                   raw[[f"{c}_concentration" for c in cols]].to_numpy() * scales[question.name], rtol=1e-5)
        for suffix in ("_fraction", "_fraction_std"):  # a scale keeps every sample's vote fractions
            np.testing.assert_allclose(calibrated[[f"{c}{suffix}" for c in cols]].to_numpy(), raw[[f"{c}{suffix}" for c in cols]].to_numpy(), rtol=1e-4, atol=1e-6)

    from zoobot_core.recalibration import METADATA_KEY, applied_recalibration

    assert applied_recalibration(tmp_path / "s.parquet") == (False, None)  # to_parquet of the DataFrame: no record; predict_files writes one
    from zoobot_core.predict import predict_files

    predict_files(model, tiny_shards, "test", tmp_path / "pf.parquet", tmp_path / "rf.parquet", settings, samples_path=tmp_path / "sf.parquet")
    assert applied_recalibration(tmp_path / "sf.parquet")[1]["questions"] == fitted["questions"]
    assert applied_recalibration(tmp_path / "pf.parquet")[0] and METADATA_KEY not in (pq_schema(tmp_path / "rf.parquet").metadata or {})

    # switched off, the prediction is the raw one exactly, columns and all
    off, _, off_samples = predict_shards(model, tiny_shards, "test", PredictConfig(n_samples=3, seed=4, recalibrate=False))
    pd.testing.assert_frame_equal(off, raw, check_exact=True)
    pd.testing.assert_frame_equal(off_samples, raw_samples, check_exact=True)

    # a recalibration fitted for another network (the model retrained since) is refused, naming the fix
    from zoobot_core.recalibration import RecalibrationError

    stale = json.loads((model / RECALIBRATION_FILE).read_text())
    stale["model_weights_sha256"] = "0" * 64
    (model / RECALIBRATION_FILE).write_text(json.dumps(stale))
    with pytest.raises(RecalibrationError, match="fitted for another model.keras"):
        predict_shards(model, tiny_shards, "test", settings)


def pq_schema(path):
    import pyarrow.parquet as pq

    return pq.read_schema(path)
