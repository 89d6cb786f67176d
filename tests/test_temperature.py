"""Temperature scaling: it recovers the temperature of a known over-confident model and lowers its calibration
errors, each fold's temperature never sees that fold's labels, the scores have their textbook values, and a
finetuned model's stored temperature rescales its prediction table (and nothing else) while the classes stay."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax

from zoobot_core.finetuned import calibrate, prediction_table
from zoobot_core.temperature import (
    apply_temperature,
    brier_score,
    calibration_scores,
    cross_fitted_temperatures,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    reliability_bins,
    temperature_report,
)


def _overconfident_binary(n=20_000, seed=0):
    """Labels drawn from p = sigmoid(z); the model reports sigmoid(3 z): three times too confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    return expit(3 * z), (rng.random(n) < expit(z)).astype(int), rng.integers(0, 5, n)


def test_the_temperature_of_an_overconfident_binary_model_is_recovered_and_lowers_its_errors():
    scores, labels, folds = _overconfident_binary()
    temperature = fit_temperature(scores, labels, "binary")
    assert temperature == pytest.approx(3.0, abs=0.12)
    raw, scaled = calibration_scores(scores, labels, "binary"), calibration_scores(apply_temperature(scores, temperature, "binary"), labels, "binary")
    assert raw["ece"] > 0.1 and scaled["ece"] < 0.02  # ten bins on P(class 1)
    assert scaled["brier"] < raw["brier"] - 0.02 and scaled["log_loss"] < raw["log_loss"] - 0.1
    report, rescaled = temperature_report(scores, labels, folds, "binary")
    assert report["helps"] and report["final_temperature"] == pytest.approx(temperature)
    assert all(t == pytest.approx(3.0, abs=0.2) for t in report["fold_temperatures"]) and len(report["fold_temperatures"]) == 5
    assert report["scaled"]["ece"] < report["raw"]["ece"] / 5 and report["scaled"]["brier"] < report["raw"]["brier"]
    assert len(report["per_fold"]["ece_scaled"]) == 5 and report["ece_of"] == "P(class 1)"
    for fold, t in enumerate(report["fold_temperatures"]):
        np.testing.assert_allclose(rescaled[folds == fold], apply_temperature(scores[folds == fold], t, "binary"))
    # one temperature is monotone: the ranking (so the AUC) is unchanged. Pooled cross-fitted scores mix five
    # temperatures, so the AUCs in metrics.json stay those of the raw scores.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, apply_temperature(scores, temperature, "binary")) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_the_temperature_of_an_overconfident_multiclass_model_is_recovered_and_keeps_its_classes():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (20_000, 4))
    labels = (rng.random(len(z))[:, None] > np.cumsum(softmax(z, axis=1), axis=1)).sum(axis=1)
    scores = softmax(3 * z, axis=1)
    temperature = fit_temperature(scores, labels, "multiclass")
    assert temperature == pytest.approx(3.0, abs=0.12)
    scaled = apply_temperature(scores, temperature, "multiclass")
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    np.testing.assert_array_equal(scaled.argmax(axis=1), scores.argmax(axis=1))
    assert expected_calibration_error(scaled, labels, "multiclass") < 0.02 < 0.1 < expected_calibration_error(scores, labels, "multiclass")
    assert brier_score(scaled, labels, "multiclass") < brier_score(scores, labels, "multiclass") - 0.03


def test_an_underconfident_model_gets_a_temperature_below_one():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, 20_000)
    labels = (rng.random(len(z)) < expit(z)).astype(int)
    assert fit_temperature(expit(z / 2), labels, "binary") == pytest.approx(0.5, abs=0.03)


def test_scores_have_their_textbook_values():
    p, y = np.array([0.8, 0.8, 0.2, 0.2]), np.array([1, 0, 0, 0])
    assert brier_score(p, y, "binary") == pytest.approx((0.04 + 0.64 + 0.04 + 0.04) / 4)
    # bins [0.8, 0.9): predicted 0.8, observed 0.5; [0.2, 0.3): predicted 0.2, observed 0
    assert expected_calibration_error(p, y, "binary") == pytest.approx((2 * 0.3 + 2 * 0.2) / 4)
    assert log_loss(p, y, "binary") == pytest.approx(-(np.log(0.8) + np.log(0.2) + 2 * np.log(0.8)) / 4)
    multi = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert brier_score(multi, np.array([0, 1]), "multiclass") == pytest.approx((0.09 + 0.04 + 0.01 + 0.01 + 0.49 + 0.36) / 2)
    # top-class confidences 0.7 (right) and 0.6 (wrong): |0.7 - 1| and |0.6 - 0|
    assert expected_calibration_error(multi, np.array([0, 1]), "multiclass") == pytest.approx((0.3 + 0.6) / 2)
    bins = reliability_bins(np.array([0.0, 0.05, 0.55, 1.0, 1.0]), np.array([0, 0, 1, 1, 0]), "binary")
    assert bins["count"].tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2] and np.isnan(bins.loc[1, "observed"])  # 1.0 in the last bin
    assert bins.loc[9, "observed"] == 0.5 and bins.loc[0, "mean_predicted"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="classification task"):
        fit_temperature(p, y, "regression")


def test_apply_temperature_is_sigmoid_of_the_logit_over_t_and_one_leaves_scores_alone():
    p = np.array([0.01, 0.3, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(apply_temperature(p, 2.0, "binary"), expit(np.log(p / (1 - p)) / 2.0))
    np.testing.assert_array_equal(apply_temperature(p, 1.0, "binary"), p)
    samples = softmax(np.random.default_rng(0).normal(0, 2, (5, 3, 4)), axis=-1)  # (galaxies, MC samples, classes)
    np.testing.assert_allclose(apply_temperature(samples, 2.0, "multiclass"), softmax(np.log(samples) / 2.0, axis=-1))
    with pytest.raises(ValueError, match="> 0"):
        apply_temperature(p, 0.0, "binary")


def test_a_folds_temperature_never_depends_on_that_folds_labels():
    scores, labels, folds = _overconfident_binary(3000, seed=3)
    temperatures, scaled = cross_fitted_temperatures(scores, labels, folds, "binary")
    for fold in range(5):
        others = folds != fold
        assert temperatures[fold] == pytest.approx(fit_temperature(scores[others], labels[others], "binary"), rel=1e-9)
        np.testing.assert_allclose(scaled[~others], apply_temperature(scores[~others], temperatures[fold], "binary"))
    flipped = labels.copy()
    flipped[folds == 2] = 1 - flipped[folds == 2]  # fold 2's labels, all wrong now
    again, rescaled = cross_fitted_temperatures(scores, flipped, folds, "binary")
    assert again[2] == temperatures[2]
    np.testing.assert_array_equal(rescaled[folds == 2], scaled[folds == 2])  # so fold 2's rescaled scores are the same
    assert all(abs(again[f] - temperatures[f]) > 0.05 for f in (0, 1, 3, 4))  # the other folds did fit on them


def test_when_rescaling_does_not_lower_the_cross_validated_log_loss_the_final_temperature_stays_one():
    labels = np.tile([0, 1], 50)
    report, scaled = temperature_report(np.full(100, 0.5), labels, np.repeat(np.arange(5), 20), "binary")  # logits 0: T changes nothing
    assert not report["helps"] and report["final_temperature"] == 1.0 and "kept at 1" in report["final_temperature_reason"]
    np.testing.assert_allclose(scaled, 0.5)
    assert report["raw"] == report["scaled"]


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_stored_temperature_rescales_the_prediction_table_and_keeps_the_raw_probability_and_the_classes(task):
    rng = np.random.default_rng(4)
    units = 1 if task == "binary" else 3
    logits = rng.normal(0, 3, (40, units))
    deterministic = (expit(logits) if task == "binary" else softmax(logits, axis=1)).astype(np.float32)
    samples = (expit(logits[:, None, :] + rng.normal(0, 0.5, (40, 4, units))) if task == "binary"
               else softmax(logits[:, None, :] + rng.normal(0, 0.5, (40, 4, units)), axis=-1)).astype(np.float32)
    settings = {"task": task, "label": "ring", "n_classes": 2 if task == "binary" else 3, "threshold": 0.4 if task == "binary" else None}
    raw = prediction_table(list(map(str, range(40))), deterministic, samples, settings)
    scaled = prediction_table(list(map(str, range(40))), deterministic, samples, {**settings, "temperature": 2.5})
    names = ["ring_probability"] if task == "binary" else ["ring_p0", "ring_p1", "ring_p2"]
    assert raw.columns.tolist() == ["id_str", *[f"{n}{s}" for n in names for s in ("", "_mc_mean", "_mc_std")], "ring_predicted"]
    assert scaled.columns.tolist() == ["id_str", *[f"{n}{s}" for n in names for s in ("", "_raw", "_mc_mean", "_mc_std")], "ring_predicted"]
    expected = expit(np.log(deterministic / (1 - deterministic)) / 2.5) if task == "binary" else softmax(np.log(deterministic) / 2.5, axis=1)
    np.testing.assert_allclose(scaled[names].to_numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(scaled[[f"{n}_raw" for n in names]].to_numpy(), raw[names].to_numpy())
    np.testing.assert_allclose(scaled[[f"{n}_mc_mean" for n in names]].to_numpy(), calibrate(samples, {**settings, "temperature": 2.5}).mean(axis=1), rtol=1e-5)
    pd.testing.assert_series_equal(scaled["ring_predicted"], raw["ring_predicted"])  # the classes are the raw ones'
    assert calibrate(samples, settings) is samples  # no temperature stored: nothing changes
