"""Finetuning: the head is the fitted linear model, cross-validation scores every galaxy once and none the
base saw, unfreezing that does not help keeps the probe, and the saved model predicts with MC dropout."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from zoobot_core.baselines import fit_linear
from zoobot_core.bases import BaseSpec, build_network, efficientnet_of
from zoobot_core.finetune import EXCLUDED_FOLD, FinetuneConfig, assign_folds, cross_validate, finetune, set_head, unfreeze_last_blocks
from zoobot_core.finetuned import feature_extractor, head_outputs, predict_images, rotation_features

pytestmark = pytest.mark.slow
NONE = BaseSpec("none")


def _galaxies(n=36, size=48, seed=0):
    """Blobs (label 0) and blobs with a ring (label 1), 0-255 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    radius = np.hypot(yy, xx)
    labels = np.tile([0, 1], n // 2)
    images = [np.clip(200 * np.exp(-radius / 4) + label * 80 * np.exp(-((radius - 14) ** 2) / 3) + rng.normal(0, 8, (size, size)), 0, 255)
              for label in labels]
    return np.repeat(np.asarray(images, np.uint8)[..., None], 3, axis=-1), labels, np.array([f"G{i:03d}" for i in range(n)])


@pytest.mark.parametrize("task, units", [("binary", 1), ("multiclass", 3), ("regression", 1)])
def test_the_keras_head_computes_the_fitted_linear_model(task, units):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10) if task == "multiclass" else np.tile([0, 1], 15)
    features = (rng.normal(0, 1, (30, 1280)) + labels[:, None] * 0.3).astype(np.float32)
    features[:, 5] = 3.0  # a feature that never varies
    y = labels.astype(float) if task == "regression" else labels
    fitted = fit_linear(features, y, np.arange(30), np.arange(30), task, 3 if task == "multiclass" else 2, inner_folds=3)
    model = build_network(NONE, 48, 3, 36, 36, units, {"binary": "sigmoid", "multiclass": "softmax", "regression": None}[task])
    set_head(model, fitted.estimator, task)
    outputs = head_outputs(model, features)
    expected = fitted.scores if task != "binary" else fitted.scores[:, None]
    np.testing.assert_allclose(outputs if task != "binary" else outputs, expected.reshape(outputs.shape), rtol=1e-4, atol=1e-5)
    samples = head_outputs(model, features, n_samples=4, seed=1)
    assert samples.shape == (30, 4, units) and samples.std(axis=1).mean() > 0  # MC dropout varies the outputs


def test_unfreezing_trains_only_the_last_blocks_and_the_head():
    model = build_network(NONE, 48, 3, 36, 36, 1, "sigmoid")
    assert unfreeze_last_blocks(model, 1) == ["block7", "top"]
    names = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert any(n.startswith("block7a") for n in names) and not any(n.startswith("block6") for n in names)
    assert not any("_bn" in n for n in names) and "finetune_head" in names
    assert not efficientnet_of(model).get_layer("stem_conv").trainable
    assert unfreeze_last_blocks(model, 2) == ["block6", "block7", "top"]  # blocks are EfficientNet's stages, as Zoobot counts them
    names = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert {n[:7] for n in names if n.startswith("block6")} == {"block6a", "block6b", "block6c", "block6d"}


def test_folds_keep_two_of_every_class_for_training_or_say_why_not():
    ids = np.array([f"G{i:02d}" for i in range(23)])
    labels = np.array([0] * 20 + [1] * 3)
    folds = assign_folds(ids, labels, np.zeros(23, bool), FinetuneConfig(folds=5))
    assert folds.max() == 2  # 3 galaxies of the rare class allow 3 folds, each training on 2 of them
    assert all((labels[folds != f] == 1).sum() >= 2 for f in range(3))
    with pytest.raises(ValueError, match=r"class counts are \[20, 2\]"):
        assign_folds(ids[:22], labels[:22], np.zeros(22, bool), FinetuneConfig(folds=5))
    with pytest.raises(ValueError, match="n_classes 2"):
        FinetuneConfig(task="binary", n_classes=3)


def test_cross_validation_scores_every_galaxy_once_and_never_one_the_base_saw():
    images, labels, ids = _galaxies()
    seen = np.isin(ids, ["G000", "G001", "G002"])
    config = FinetuneConfig(folds=3, inner_folds=3, batch_size=8)
    table, metrics, _, _ = cross_validate(images, ids, labels, NONE, config, excluded=seen, threads=2)
    assert table["id_str"].tolist() == ids.tolist()
    assert (table.loc[seen, "fold"] == EXCLUDED_FOLD).all() and table.loc[seen, "finetuned_score"].isna().all()
    scored = table[~seen]
    assert sorted(scored["fold"].unique()) == [0, 1, 2] and scored["finetuned_score"].notna().all()
    per_fold = scored.groupby("fold")["label"].agg(["size", "sum"])
    assert per_fold["size"].sum() == 33 and (per_fold["sum"] - per_fold["size"] / 2).abs().max() <= 1  # stratified
    assert {m: metrics[m]["n_scored"] for m in metrics} == dict.fromkeys(metrics, 33)
    assert len(metrics["finetuned"]["thresholds"]) == 3
    # folds follow the ids, not the catalog's row order
    order = np.random.default_rng(1).permutation(len(ids))
    again, _, _, _ = cross_validate(images[order], ids[order], labels[order], NONE, config, excluded=seen[order], threads=2)
    pd.testing.assert_frame_equal(again.set_index("id_str").sort_index(), table.set_index("id_str").sort_index(), check_exact=False, rtol=1e-5)


def test_unfreezing_that_does_not_help_keeps_the_linear_probe():
    images, labels, ids = _galaxies(24)
    config = FinetuneConfig(folds=2, inner_folds=2, unfreeze_blocks=1, unfreeze_epochs=2, unfreeze_learning_rate=50.0, patience=1, batch_size=8, val_fraction=0.3)
    table, _, history, _ = cross_validate(images, ids, labels, NONE, config, threads=2)
    np.testing.assert_array_equal(table["finetuned_score"], table["linear_probe_score"])  # a learning rate of 50 only makes it worse
    chosen = history[history["kept"].fillna(False).astype(bool)]
    assert sorted(chosen["fold"]) == [0, 1] and (chosen["epoch"] == 0).all()


def test_finetune_writes_the_final_model_and_it_predicts_with_mc_dropout(tmp_path):
    images, labels, ids = _galaxies()
    config = FinetuneConfig(folds=3, inner_folds=3, batch_size=8, n_samples=3)
    summary = finetune(images, ids, labels, NONE, tmp_path, config, label_col="ring", seen_by_base={"G000"}, threads=2, catalog={"n_in": 40})
    assert summary["n_scored"] == 35 and summary["n_excluded_seen_by_base"] == 1 and summary["catalog"] == {"n_in": 40}
    assert summary["base_overlap_checked"] is True
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"]["finetuned"]["roc_auc"]["pooled"] == summary["methods"]["finetuned"]["roc_auc"]["pooled"]
    cv_metrics = pd.read_csv(tmp_path / "cv_metrics.csv")
    assert cv_metrics["method"].tolist() == ["finetuned", "linear_probe", "radial_profile", "pixels", "constant"]
    settings = json.loads((tmp_path / "finetune_config.json").read_text())
    assert settings["label"] == "ring" and settings["channels"] == 3 and 0 < settings["threshold"] < 1
    predictions = predict_images(tmp_path, images, ids=list(ids))
    assert predictions.columns.tolist() == ["id_str", "ring_probability", "ring_probability_mc_mean", "ring_probability_mc_std", "ring_predicted"]
    assert (predictions["ring_predicted"] == (predictions["ring_probability"] >= settings["threshold"])).all()
    assert predictions["ring_probability_mc_std"].max() > 0 and predictions["ring_probability_mc_mean"].between(0, 1).all()
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    features = rotation_features(feature_extractor(model), images, 3)
    np.testing.assert_allclose(predictions["ring_probability"], head_outputs(model, features)[:, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="finetuned at 48 px"):
        predict_images(tmp_path, images[:, :32, :32])
