"""Finetuning: the head is the fitted linear model, cross-validation scores every galaxy once and none the
base saw, unfreezing that does not help keeps the probe, and the saved model predicts with MC dropout."""

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from zoobot_core.baselines import fit_linear
from zoobot_core.bases import PIPELINE, BaseSpec, build_network, efficientnet_of
from zoobot_core.finetune import EXCLUDED_FOLD, FinetuneConfig, assign_folds, cross_validate, finetune, set_head, unfreeze_last_blocks
from zoobot_core.finetuned import FINETUNE_CONFIG, feature_extractor, head_outputs, predict_images, rotation_features
from zoobot_core.model import get_model
from zoobot_core.runtime import TRAINED_ON
from zoobot_core.temperature import apply_temperature, fit_temperature

pytestmark = pytest.mark.slow
NONE = BaseSpec("none")


def _pipeline_base(folder: Path, trained_on: list[str] | None = None) -> BaseSpec:
    """A model this pipeline trained (random weights, 48 px colour), and beside it (if given) the ids it was trained on."""
    from zoobot_core.runtime import leaves_process_state

    folder.mkdir(parents=True, exist_ok=True)

    @leaves_process_state
    def build():  # get_model's seed is its augmentation's and dropout's: the weights' initialisers draw from Keras' global seed
        keras.utils.set_random_seed(0)
        return get_model(34, 48, 36, 36, 3, seed=0)

    build().save(folder / "model.keras")  # the same base in every run, whatever ran before
    if trained_on is not None:
        pd.DataFrame({"id_str": trained_on, "split": "train"}).to_parquet(folder / TRAINED_ON)
    return BaseSpec(PIPELINE, str(folder / "model.keras"))


def _efficientnet_weights(path) -> list[np.ndarray]:
    return efficientnet_of(keras.models.load_model(path, compile=False)).get_weights()


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


def test_unfreezing_that_does_not_help_keeps_the_linear_probe_and_saves_and_reports_it(tmp_path):
    """A learning rate of 50 only makes the network worse: every fold and the final model keep the probe, the saved
    model has the base's weights untouched, and metrics.json reports the probe (0 epochs), not N unfrozen blocks."""
    images, labels, ids = _galaxies(24)
    base = _pipeline_base(tmp_path / "base", trained_on=[])
    config = FinetuneConfig(folds=2, inner_folds=2, unfreeze_blocks=1, unfreeze_epochs=2, unfreeze_learning_rate=50.0, patience=1, batch_size=8,
                            val_fraction=0.3, n_samples=2)
    summary = finetune(images, ids, labels, base, tmp_path / "out", config, label_col="ring", threads=2)
    table, history = pd.read_parquet(tmp_path / "out/cv_predictions.parquet"), pd.read_csv(tmp_path / "out/history.csv")
    np.testing.assert_array_equal(table["finetuned_score"], table["linear_probe_score"])
    finetuned = summary["methods"]["finetuned"]
    assert finetuned["unfreeze_epochs"] == [0, 0] and finetuned["thresholds"] == summary["methods"]["linear_probe"]["thresholds"]
    chosen = history[history["kept"].fillna(False).astype(bool)]
    assert sorted(chosen["fold"].astype(str)) == ["0", "1", "final"] and (chosen["epoch"] == 0).all()
    assert "refit" not in set(history["stage"])
    assert summary["final_model"]["kept"] == "linear_probe" and summary["final_model"]["unfreeze_epochs"] == 0
    assert summary["final_model"]["unfrozen_blocks"] == 0
    assert json.loads((tmp_path / "out" / FINETUNE_CONFIG).read_text())["kept"] == "linear_probe"
    for saved, original in zip(_efficientnet_weights(tmp_path / "out/model.keras"), _efficientnet_weights(base.path)):
        np.testing.assert_array_equal(saved, original)


def test_unfreezing_that_helps_is_kept_with_its_inner_split_threshold_rescored_saved_and_reported(tmp_path, monkeypatch):
    """When unfreezing wins, keeping it means: its epochs and its binary threshold come from the inner split of the
    training galaxies (never the scored fold), the scored fold is rescored by the refitted network, and the final
    model saved is the unfrozen one (block7 trained, earlier blocks as the base), reported as such.

    Contrived but honest set-up: every linear model's regularisation grid is pinned to C = 1e-6, so the probe (the
    head-only starting point) scores every galaxy about 0.5, as a probe would on frozen features that say nothing
    about the label. Rings are easy for the trainable head and block7, so a few epochs at lr 3e-4 beat that start
    by far more than one standard error of the validation loss, and the unfrozen model must be kept.
    """
    import zoobot_core.baselines as baselines
    import zoobot_core.finetune as ft

    monkeypatch.setattr(baselines, "C_GRID", np.array([1e-6]))
    calls, real = [], ft.balanced_threshold

    def spy(truth, scores):
        calls.append((np.asarray(truth).copy(), real(truth, scores)))
        return calls[-1][1]

    monkeypatch.setattr(ft, "balanced_threshold", spy)
    images, labels, ids = _galaxies(40)
    base = _pipeline_base(tmp_path / "base", trained_on=[])
    config = FinetuneConfig(folds=2, inner_folds=2, unfreeze_blocks=1, unfreeze_epochs=3, unfreeze_learning_rate=3e-4, patience=3, batch_size=8,
                            val_fraction=0.4, n_samples=2)
    summary = finetune(images, ids, labels, base, tmp_path / "out", config, label_col="ring", threads=2)
    table, history = pd.read_parquet(tmp_path / "out/cv_predictions.parquet"), pd.read_csv(tmp_path / "out/history.csv")
    finetuned = summary["methods"]["finetuned"]
    assert len(finetuned["unfreeze_epochs"]) == 2 and min(finetuned["unfreeze_epochs"]) > 0  # unfreezing kept in every fold
    assert len(calls) == 4  # fold 0's, fold 1's and the final model's inner splits, then the final threshold from out-of-fold scores
    for fold, epochs in enumerate(finetuned["unfreeze_epochs"]):
        train, scored = np.flatnonzero(table["fold"] != fold), np.flatnonzero(table["fold"] == fold)
        _, val = ft.inner_split(labels, train, config, config.seed + fold)
        np.testing.assert_array_equal(calls[fold][0], labels[val])  # the threshold is chosen on the inner split's validation galaxies
        assert finetuned["thresholds"][fold] == calls[fold][1]
        rows = history[history["fold"].astype(str) == str(fold)]
        kept = rows[rows["kept"].fillna(False).astype(bool)]
        assert kept["epoch"].tolist() == [epochs] and kept["val_loss"].iloc[0] < rows.loc[rows["epoch"] == 0, "val_loss"].iloc[0]
        assert (rows["stage"] == "refit").sum() == epochs
        part = table.iloc[scored]
        assert (part["finetuned_score"] - part["linear_probe_score"]).abs().min() > 1e-3  # rescored by the unfrozen network, not the probe's scores
        np.testing.assert_array_equal(part["finetuned_predicted"], (part["finetuned_score"] >= finetuned["thresholds"][fold]).astype(int))
    final = summary["final_model"]
    assert final["kept"] == "unfrozen" and final["unfreeze_epochs"] > 0 and final["unfrozen_blocks"] == 1
    assert final["threshold"] == calls[3][1] and calls[3][0].tolist() == table["label"].tolist()
    settings = json.loads((tmp_path / "out" / FINETUNE_CONFIG).read_text())
    assert settings["kept"] == "unfrozen" and settings["threshold"] == final["threshold"]
    saved = efficientnet_of(keras.models.load_model(tmp_path / "out/model.keras", compile=False))
    original = efficientnet_of(keras.models.load_model(base.path, compile=False))
    assert not np.allclose(saved.get_layer("block7a_project_conv").get_weights()[0], original.get_layer("block7a_project_conv").get_weights()[0])
    np.testing.assert_array_equal(saved.get_layer("stem_conv").get_weights()[0], original.get_layer("stem_conv").get_weights()[0])


def test_finetune_from_python_keeps_out_what_a_pipeline_base_was_trained_on_or_says_it_could_not_check(tmp_path):
    """seen_by_base left unknown (the default): finetune reads the trained_on.parquet beside a pipeline base and never
    scores those galaxies; without that file it cannot know, so it scores them all and says it did not check."""
    images, labels, ids = _galaxies(24)
    config = FinetuneConfig(folds=2, inner_folds=2, batch_size=8, n_samples=2)
    base = _pipeline_base(tmp_path / "base", trained_on=["G000", "G001", "G002", "G003", "NOT_IN_THIS_CATALOG"])
    summary = finetune(images, ids, labels, base, tmp_path / "checked", config, threads=2)
    assert summary["n_scored"] == 20
    assert summary["base_overlap"] == {"checked": True, "n_matched": 4, "source": str(tmp_path / "base" / TRAINED_ON)}
    table = pd.read_parquet(tmp_path / "checked/cv_predictions.parquet")
    assert table.loc[table["fold"] == EXCLUDED_FOLD, "id_str"].tolist() == ["G000", "G001", "G002", "G003"]
    (tmp_path / "base" / TRAINED_ON).unlink()
    unknown = finetune(images, ids, labels, base, tmp_path / "unknown", config, threads=2)
    assert unknown["n_scored"] == 24 and unknown["base_overlap"] == {"checked": False, "n_matched": None, "source": None}
    assert json.loads((tmp_path / "unknown/metrics.json").read_text())["base_overlap"]["checked"] is False


def test_every_method_sees_the_same_field_of_view():
    """The network sees the centre crop (crop_fraction 0.75: 36 of 48 px), and so must the radial-profile and pixel
    baselines: galaxies whose images differ only outside it get the same out-of-fold scores from every method, so
    "finetuned minus baseline" compares the same pixels; metrics say which field of view."""
    images, labels, ids = _galaxies(24)
    other = images.copy()
    outside = np.ones((48, 48), bool)
    outside[6:42, 6:42] = False
    other[:, outside] = np.random.default_rng(1).integers(0, 256, (len(images), outside.sum(), 3), dtype=np.uint8)
    config = FinetuneConfig(folds=2, inner_folds=2, batch_size=8)
    table, metrics, _, _ = cross_validate(images, ids, labels, NONE, config, threads=2)
    again, _, _, _ = cross_validate(other, ids, labels, NONE, config, threads=2)
    pd.testing.assert_frame_equal(again, table, check_exact=False, rtol=1e-5, atol=1e-7)
    assert {m: metrics[m]["field_of_view"] for m in metrics} == dict.fromkeys(metrics, {"crop_fraction": 0.75, "crop_px": 36, "image_px": 48})


def test_finetune_writes_the_final_model_and_it_predicts_with_mc_dropout(tmp_path):
    images, labels, ids = _galaxies()
    config = FinetuneConfig(folds=3, inner_folds=3, batch_size=8, n_samples=3)
    summary = finetune(images, ids, labels, NONE, tmp_path, config, label_col="ring", seen_by_base={"G000"}, threads=2, catalog={"n_in": 40})
    assert summary["n_scored"] == 35 and summary["catalog"] == {"n_in": 40}
    assert summary["base_overlap"] == {"checked": True, "n_matched": 1, "source": "seen_by_base"}
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"]["finetuned"]["roc_auc"]["pooled"] == summary["methods"]["finetuned"]["roc_auc"]["pooled"]
    cv_metrics = pd.read_csv(tmp_path / "cv_metrics.csv")
    assert cv_metrics["method"].tolist() == ["finetuned", "linear_probe", "radial_profile", "pixels", "constant"]
    assert (cv_metrics["field_of_view"] == "centre 36 of 48 px").all()  # every method saw the network's crop
    settings = json.loads((tmp_path / "finetune_config.json").read_text())
    assert settings["label"] == "ring" and settings["channels"] == 3 and 0 < settings["threshold"] < 1
    predictions = predict_images(tmp_path, images, ids=list(ids))
    assert predictions.columns.tolist() == ["id_str", "ring_probability", "ring_probability_raw", "ring_probability_mc_mean", "ring_probability_mc_std", "ring_predicted"]
    assert (predictions["ring_predicted"] == (predictions["ring_probability_raw"] >= settings["threshold"])).all()  # temperature scaling on: see below
    assert predictions["ring_probability_mc_std"].max() > 0 and predictions["ring_probability_mc_mean"].between(0, 1).all()
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    features = rotation_features(feature_extractor(model), images, 3)
    np.testing.assert_allclose(predictions["ring_probability_raw"], head_outputs(model, features)[:, 0], rtol=1e-5)
    np.testing.assert_allclose(predictions["ring_probability"], apply_temperature(head_outputs(model, features)[:, 0], settings["temperature"], "binary"), rtol=1e-5)
    with pytest.raises(ValueError, match="finetuned at 48 px"):
        predict_images(tmp_path, images[:, :32, :32])


def test_temperature_scaling_is_fitted_out_of_fold_changes_no_score_or_class_and_off_leaves_outputs_raw(tmp_path):
    """On: each fold's temperature is the one fitted on the other folds' out-of-fold scores, balanced accuracy, AUC,
    thresholds and classes are those of the raw scores, and the final model's stored temperature rescales its
    predictions (sigmoid(logit(raw) / T)). Off: no temperature anywhere, and predictions are the head's own."""
    from dataclasses import replace

    from scipy.special import expit, logit

    images, labels, ids = _galaxies(24)
    config = FinetuneConfig(folds=2, inner_folds=2, batch_size=8, n_samples=2)
    on = finetune(images, ids, labels, NONE, tmp_path / "on", config, label_col="ring", threads=2)
    off = finetune(images, ids, labels, NONE, tmp_path / "off", replace(config, temperature_scaling=False), label_col="ring", threads=2)
    cv_on, cv_off = pd.read_parquet(tmp_path / "on/cv_predictions.parquet"), pd.read_parquet(tmp_path / "off/cv_predictions.parquet")
    assert [c for c in cv_on.columns if c not in cv_off.columns] == ["finetuned_score_scaled"]
    pd.testing.assert_frame_equal(cv_on[cv_off.columns], cv_off)
    for method in on["methods"]:
        assert "calibration" in on["methods"][method] and "calibration" not in off["methods"][method]
        for name in ("balanced_accuracy", "roc_auc", "accuracy"):
            assert on["methods"][method][name] == off["methods"][method][name]
        assert on["methods"][method]["thresholds"] == off["methods"][method]["thresholds"]
    calibration = on["methods"]["finetuned"]["calibration"]
    for fold, temperature in enumerate(calibration["fold_temperatures"]):
        others, scored = cv_on[cv_on["fold"] != fold], cv_on[cv_on["fold"] == fold]
        assert temperature == pytest.approx(fit_temperature(others["finetuned_score"], others["label"], "binary"), rel=1e-9)
        np.testing.assert_allclose(scored["finetuned_score_scaled"], apply_temperature(scored["finetuned_score"].to_numpy(), temperature, "binary"))
    assert calibration["scaled"]["log_loss"] == pytest.approx(-np.mean(np.log(np.where(cv_on["label"] == 1, cv_on["finetuned_score_scaled"], 1 - cv_on["finetuned_score_scaled"]))))
    expected = fit_temperature(cv_on["finetuned_score"], cv_on["label"], "binary") if calibration["helps"] else 1.0
    settings_on = json.loads((tmp_path / "on" / FINETUNE_CONFIG).read_text())
    settings_off = json.loads((tmp_path / "off" / FINETUNE_CONFIG).read_text())
    assert settings_on["temperature"] == pytest.approx(expected) == on["final_model"]["temperature"]
    assert settings_on["threshold_scaled"] == pytest.approx(expit(logit(settings_on["threshold"]) / settings_on["temperature"]))
    assert not {"temperature", "temperature_reason", "threshold_scaled"} & (set(settings_off) | set(off["final_model"]))
    assert "temperature" not in off["final_model"] and settings_off["threshold"] == settings_on["threshold"]
    raw = predict_images(tmp_path / "off", images, ids=list(ids), n_samples=2)
    assert raw.columns.tolist() == ["id_str", "ring_probability", "ring_probability_mc_mean", "ring_probability_mc_std", "ring_predicted"]
    model = keras.models.load_model(tmp_path / "off/model.keras", compile=False)
    np.testing.assert_allclose(raw["ring_probability"], head_outputs(model, rotation_features(feature_extractor(model), images, 3))[:, 0], rtol=1e-5)
    # a model folder with a stored temperature: its probabilities are sigmoid(logit(raw) / T), its classes the raw ones'
    settings_on["temperature"] = 2.5
    (tmp_path / "on" / FINETUNE_CONFIG).write_text(json.dumps(settings_on))
    scaled = predict_images(tmp_path / "on", images, ids=list(ids), n_samples=2)
    np.testing.assert_allclose(scaled["ring_probability_raw"], raw["ring_probability"], rtol=1e-5)
    p = scaled["ring_probability_raw"].to_numpy(np.float64)
    np.testing.assert_allclose(scaled["ring_probability"], expit(logit(np.clip(p, 1e-7, 1 - 1e-7)) / 2.5), rtol=1e-5)
    assert (scaled["ring_probability"] - scaled["ring_probability_raw"]).abs().min() > 1e-3  # every probability softened
    pd.testing.assert_series_equal(scaled["ring_predicted"], raw["ring_predicted"])
