"""Finetuning's score intervals: scikit-learn once per bootstrap resample (the baseline) vs all resamples at once.

Both score the same out-of-fold predictions of 104 galaxies (the rings sample's size) with the same
1,000 resamples; the numbers must agree. Then the part of the whole `snakemake finetune` command it
sits in: score_predictions for five methods plus four paired differences, as cross_validate calls them.

    python tests/benchmarks/bench_finetune_scores.py
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from timing import median_seconds

from zoobot_core.scores import _bootstrap_scores, classify, paired_difference, score_predictions


def sklearn_loop(truth, scores, predicted, picks) -> dict[str, np.ndarray]:
    """The baseline: scikit-learn's metrics, one resample at a time."""
    out = {"balanced_accuracy": [], "accuracy": [], "roc_auc": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for pick in picks:
            out["balanced_accuracy"].append(balanced_accuracy_score(truth[pick], predicted[pick]))
            out["accuracy"].append(accuracy_score(truth[pick], predicted[pick]))
            out["roc_auc"].append(roc_auc_score(truth[pick], scores[pick]) if len(set(truth[pick])) > 1 else np.nan)
    return {k: np.asarray(v) for k, v in out.items()}


def main(n: int = 104, n_bootstrap: int = 1000, repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], n // 2)
    methods = {m: np.clip(truth * s + rng.normal(0.4, 0.25, n), 0, 1) for m, s in (("a", 0.3), ("b", 0.2), ("c", 0.1), ("d", 0.0), ("e", 0.05))}
    picks = rng.integers(0, n, (n_bootstrap, n))
    scores = methods["a"]
    predicted = classify(scores, "binary")
    fast, slow = _bootstrap_scores(truth, scores, predicted, "binary", 2, picks), sklearn_loop(truth, scores, predicted, picks)
    worst = max(float(np.nanmax(np.abs(fast[k] - slow[k]))) for k in fast)
    t_slow = median_seconds(lambda: sklearn_loop(truth, scores, predicted, picks), max(1, repeats // 2))
    t_fast = median_seconds(lambda: _bootstrap_scores(truth, scores, predicted, "binary", 2, picks), repeats)

    def all_intervals():
        for m in methods.values():
            score_predictions(truth, m, classify(m, "binary"), np.arange(n) % 5, "binary", n_bootstrap=n_bootstrap)
        for m in list(methods.values())[1:]:
            paired_difference(truth, (scores, predicted), (m, classify(m, "binary")), "binary", n_bootstrap=n_bootstrap)

    t_all = median_seconds(all_intervals, repeats)
    print(f"{n} galaxies x {n_bootstrap} resamples; largest difference between the two: {worst:.1e}")
    print(f"  baseline, scikit-learn per resample: {t_slow:.3f} s  (x 13 per CV run: 5 methods + 4 paired differences x 2)")
    print(f"  ours, all resamples at once:         {t_fast:.4f} s  ({t_slow / t_fast:.0f}x)")
    print(f"  every interval of one CV run (5 methods, 4 paired differences), ours: {t_all:.2f} s")
    return {"baseline_s": t_slow, "ours_s": t_fast, "all_intervals_s": t_all, "max_difference": worst}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
