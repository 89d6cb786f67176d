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
    """tests/benchmarks/bench_finetune_scores.py (make bench) at 20 galaxies and 20 resamples (scaling part at 20 and 50), so it cannot rot."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    import bench_finetune_scores

    result = bench_finetune_scores.main(20, 20, 1, sizes=(20, 50))
    assert result["max_difference"] < 1e-12 and result["ours_s"] > 0 and result["baseline_s"] > 0
    assert [r["n"] for r in result["scaling"]] == [20, 50]
    assert all(r["threshold_same"] and r["bootstrap_difference"] == 0 and r["bootstrap_new_s"] > 0 for r in result["scaling"])


# Issue 25: finetuning at 50,000-100,000 galaxies. The references below are the implementations before it
# (a distinct scores x galaxies matrix for the threshold; every resample index drawn at once for the
# bootstraps); the new ones must give exactly their numbers in O(n) memory.


def _reference_balanced_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if len(np.unique(labels)) < 2:
        return 0.5
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-9], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-9]])
    positive, negative = labels == 1, labels == 0
    predicted = scores[None, :] >= candidates[:, None]
    j = predicted[:, positive].mean(axis=1) + (~predicted[:, negative]).mean(axis=1)
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _reference_binary_bootstrap(truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray, picks: np.ndarray) -> dict[str, np.ndarray]:
    from scipy.stats import rankdata

    t, s, p = truth[picks], scores[picks], predicted[picks]
    positive, negative = t == 1, t == 0
    n1, n0 = positive.sum(axis=1), negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (positive & (p == 1)).sum(axis=1) / n1
        tnr = (negative & (p == 0)).sum(axis=1) / n0
        auc = ((rankdata(s, axis=1, method="average") * positive).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return {
        "balanced_accuracy": np.where(n1 == 0, tnr, np.where(n0 == 0, tpr, (tpr + tnr) / 2)),
        "accuracy": (t == p).mean(axis=1),
        "roc_auc": np.where((n1 == 0) | (n0 == 0), np.nan, auc),
    }


def _random_scores(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:
        return np.round(rng.random(n), 1)  # many ties
    if kind == 1:
        return rng.random(n)
    if kind == 2:
        return rng.integers(0, 3, n).astype(float)  # very few distinct scores
    if kind == 3:
        s = np.round(rng.random(n), 1)
        s[rng.random(n) < 0.2] = np.nan
        return s
    if kind == 4:
        return rng.choice([0.0, 0.5, 1.0, np.inf, -np.inf, 1e12, 1e12 + 1e-4], n)  # midpoints and +-1e-9 that round
    return 0.5 + np.arange(n) * np.finfo(float).eps  # neighbouring floats: midpoints equal an end


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


def test_balanced_threshold_equals_the_matrix_implementation_with_ties_nan_and_one_class():
    rng = np.random.default_rng(25)
    for trial in range(1500):
        n = int(rng.integers(1, 30))
        labels = rng.integers(0, 2, n) if trial % 40 else np.full(n, trial % 2)
        scores = _random_scores(rng, n, trial % 6)
        assert _same(balanced_threshold(labels, scores), _reference_balanced_threshold(labels, scores)), (labels, scores)
    labels = rng.integers(0, 2, 3000)  # a bigger one, on a near-tie-rich grid
    scores = np.round(rng.random(3000), 2)
    assert balanced_threshold(labels, scores) == _reference_balanced_threshold(labels, scores)
    assert balanced_threshold([0, 1, 2, 0], [0.1, 0.5, 0.3, 0.2]) == _reference_balanced_threshold([0, 1, 2, 0], [0.1, 0.5, 0.3, 0.2])
    with pytest.raises(ValueError):  # two labels but not both of 0 and 1: the matrix version failed too
        balanced_threshold([0, 2, 2], [0.1, 0.5, 0.3])


def test_balanced_threshold_is_fast_and_linear_in_memory_at_200000_galaxies():
    import time
    import tracemalloc

    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200_000), rng.random(200_000)
    tracemalloc.start()
    start = time.perf_counter()
    threshold = balanced_threshold(labels, scores)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0 <= threshold <= 1 and seconds < 2 and peak < 50e6  # the matrix version: 40 GB


def test_the_binary_bootstrap_equals_the_whole_matrix_one_in_any_chunks():
    from zoobot_core.scores import _bootstrap_scores

    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 60))
        truth = rng.integers(0, 2, n) if trial % 10 else np.zeros(n, int)
        scores = _random_scores(rng, n, trial % 5)
        predicted = classify(scores, "binary", 0.5)
        picks = rng.integers(0, n, (int(rng.integers(0, 40)), n))
        reference = _reference_binary_bootstrap(truth, scores, predicted, picks)
        for budget in (1, n * 3, 1 << 20):
            ours = _bootstrap_scores(truth, scores, predicted, "binary", 2, picks, budget=budget)
            for name, values in reference.items():
                np.testing.assert_array_equal(ours[name], values, err_msg=f"{name} n={n} budget={budget}")


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_chunked_intervals_equal_the_ones_from_all_resamples_at_once():
    """score_predictions and paired_difference draw their resamples chunk by chunk from the same generator:
    the same indices as one default_rng(seed).integers(0, n, (n_bootstrap, n)), so the same intervals."""
    from zoobot_core.scores import paired_difference

    def reference_draws(truth, scores, predicted, n_bootstrap, seed):
        picks = np.random.default_rng(seed).integers(0, len(truth), (n_bootstrap, len(truth)))
        return _reference_binary_bootstrap(truth, scores, predicted, picks)

    rng = np.random.default_rng(11)
    for n, n_bootstrap in ((1, 5), (7, 33), (104, 200), (501, 40)):
        truth = rng.integers(0, 2, n)
        a, b = _random_scores(rng, n, 0), rng.random(n)
        pa, pb = classify(a, "binary"), classify(b, "binary")
        ref_a, ref_b = reference_draws(truth, a, pa, n_bootstrap, 3), reference_draws(truth, b, pb, n_bootstrap, 3)
        whole = score_predictions(truth, a, pa, np.arange(n) % 3, "binary", n_bootstrap=n_bootstrap, seed=3, budget=n * n_bootstrap)
        boot = ref_a["roc_auc"][np.isfinite(ref_a["roc_auc"])]
        if len(boot):
            assert whole["roc_auc"]["ci95"] == [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
        whole_diff = paired_difference(truth, (a, pa), (b, pb), "binary", n_bootstrap=n_bootstrap, seed=3, budget=n * n_bootstrap)
        diff = ref_a["balanced_accuracy"] - ref_b["balanced_accuracy"]
        assert whole_diff["balanced_accuracy"]["share_better"] == float((diff > 0).mean())
        for budget in (1, n + 1, 5 * n - 1):  # one resample a chunk, one, then several, with a ragged last chunk
            assert repr(score_predictions(truth, a, pa, np.arange(n) % 3, "binary", n_bootstrap=n_bootstrap, seed=3, budget=budget)) == repr(whole)
            assert repr(paired_difference(truth, (a, pa), (b, pb), "binary", n_bootstrap=n_bootstrap, seed=3, budget=budget)) == repr(whole_diff)
    probabilities = rng.dirichlet(np.ones(3), 30)  # scikit-learn one resample at a time: chunking changes nothing either
    labels = rng.integers(0, 3, 30)
    whole = score_predictions(labels, probabilities, classify(probabilities, "multiclass"), np.arange(30) % 2, "multiclass", 3, n_bootstrap=12, budget=1 << 20)
    assert repr(score_predictions(labels, probabilities, classify(probabilities, "multiclass"), np.arange(30) % 2, "multiclass", 3, n_bootstrap=12, budget=70)) == repr(whole)
    truth, first, second = rng.random(30), rng.random(30), rng.random(30)
    whole = paired_difference(truth, (first, None), (second, None), "regression", n_bootstrap=12, budget=1 << 20)
    assert repr(paired_difference(truth, (first, None), (second, None), "regression", n_bootstrap=12, budget=31)) == repr(whole)


def test_bootstrap_memory_stays_bounded_at_50000_galaxies():
    import tracemalloc

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 50_000)
    scores = np.round(rng.random(50_000), 3)
    score_predictions(truth[:100], scores[:100], classify(scores[:100], "binary"), np.arange(100) % 5, "binary", n_bootstrap=5)  # imports
    tracemalloc.start()
    out = score_predictions(truth, scores, classify(scores, "binary"), np.arange(50_000) % 5, "binary", n_bootstrap=200)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0.45 < out["roc_auc"]["pooled"] < 0.55 and peak < 60e6  # every index at once: 80 MB of them alone, ~700 MB in all
