"""Out-of-fold scores: thresholds chosen on training galaxies, metrics against scikit-learn, spread over folds."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from zoobot_core.scores import balanced_threshold, classify, score_predictions, summary_table


def test_balanced_threshold_maximises_balanced_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.9])
    threshold = balanced_threshold(labels, scores)
    assert 0.3 < threshold <= 0.6  # both positives found, one negative wrong: J = 1 + 0.75
    assert balanced_accuracy_score(labels, classify(scores, "binary", threshold)) == 0.875
    assert balanced_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5  # one class only: no information


def test_binary_scores_match_scikit_learn_and_carry_their_spread():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 50)
    scores = np.clip(truth * 0.3 + rng.normal(0.35, 0.2, 100), 0, 1)
    predicted = classify(scores, "binary", 0.5)
    folds = np.tile(np.arange(5), 20)
    out = score_predictions(truth, scores, predicted, folds, "binary", n_bootstrap=200)
    assert out["roc_auc"]["pooled"] == pytest.approx(roc_auc_score(truth, scores))
    assert out["balanced_accuracy"]["pooled"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert len(out["roc_auc"]["per_fold"]) == 5 and out["roc_auc"]["fold_std"] > 0
    low, high = out["balanced_accuracy"]["ci95"]
    assert low < out["balanced_accuracy"]["pooled"] < high
    confusion = np.array(out["confusion"]["rows_true_columns_predicted"])
    assert confusion.sum() == 100 and confusion[1, 1] == ((truth == 1) & (predicted == 1)).sum()
    assert out["class_rate"]["true"] == [0.5, 0.5] and out["class_rate"]["predicted"][1] == predicted.mean()
    table = summary_table({"model": out}, "binary")
    assert table.loc[0, "share_predicted_positive"] == predicted.mean() and "±" in table.loc[0, "roc_auc_folds"]


def test_multiclass_and_regression_scores():
    truth = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[[0, 1, 2, 0, 2, 1]] * 0.8 + 0.2 / 3
    out = score_predictions(truth, probabilities, classify(probabilities, "multiclass"), np.zeros(6), "multiclass", n_classes=3, n_bootstrap=50)
    assert out["accuracy"]["pooled"] == pytest.approx(4 / 6) and out["roc_auc"]["pooled"] > 0.5
    reg = score_predictions(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 4.0]), None, np.array([0, 0, 1, 1]), "regression", n_bootstrap=50)
    assert reg["mae"]["pooled"] == pytest.approx(0.25) and reg["r2"]["pooled"] == pytest.approx(1 - 0.5 / 5)


def test_paired_difference_is_zero_for_the_same_predictions_and_positive_for_a_better_model():
    from zoobot_core.scores import paired_difference

    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 40)
    good = np.clip(truth * 0.5 + rng.normal(0.25, 0.15, 80), 0, 1)
    poor = rng.random(80)
    same = paired_difference(truth, (good, classify(good, "binary")), (good, classify(good, "binary")), "binary", n_bootstrap=100)
    assert same["roc_auc"] == {"difference": 0.0, "ci95": [0.0, 0.0], "share_better": 0.0}
    better = paired_difference(truth, (good, classify(good, "binary")), (poor, classify(poor, "binary")), "binary", n_bootstrap=200)
    assert better["roc_auc"]["difference"] == pytest.approx(roc_auc_score(truth, good) - roc_auc_score(truth, poor))
    assert better["roc_auc"]["ci95"][0] > 0 and better["roc_auc"]["share_better"] > 0.95


def test_the_fast_binary_bootstrap_gives_scikit_learns_numbers():
    from zoobot_core.scores import _bootstrap_scores

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 50)
    scores = np.round(rng.random(50), 1)  # many ties
    predicted = classify(scores, "binary", 0.5)
    picks = np.vstack([rng.integers(0, 50, (30, 50)), np.zeros((1, 50), int)])  # the last resample holds one galaxy: one class only
    fast = _bootstrap_scores(truth, scores, predicted, "binary", 2, picks)
    for i, pick in enumerate(picks[:-1]):
        assert fast["roc_auc"][i] == pytest.approx(roc_auc_score(truth[pick], scores[pick]))
        assert fast["balanced_accuracy"][i] == pytest.approx(balanced_accuracy_score(truth[pick], predicted[pick]))
    assert np.isnan(fast["roc_auc"][-1]) and fast["balanced_accuracy"][-1] == float(predicted[0] == truth[0])


def test_the_scores_benchmark_runs_at_a_tiny_size():
    """tests/benchmarks/bench_finetune_scores.py (make bench) at 20 galaxies and 20 resamples, so it cannot rot."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    import bench_finetune_scores

    result = bench_finetune_scores.main(20, 20, 1)
    assert result["max_difference"] < 1e-12 and result["ours_s"] > 0 and result["baseline_s"] > 0
