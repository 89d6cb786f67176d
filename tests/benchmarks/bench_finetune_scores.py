"""Finetuning's score intervals and decision threshold, at the rings sample's size and at 50,000-100,000 galaxies.

Part 1 (104 galaxies, the rings sample's size): scikit-learn once per bootstrap resample (the baseline)
vs all resamples at once, on the same 1,000 resamples; the numbers must agree. Then the part of the
whole `snakemake finetune` command it sits in: score_predictions for five methods plus four paired
differences, as cross_validate calls them.

Part 2 (issue 25, up to 100,000 galaxies): the implementations before it (copied below as the
baseline: a distinct scores x galaxies matrix for balanced_threshold, every resample index drawn at
once and ranked by scipy for the bootstrap) vs ours (binary search in sorted scores; resamples drawn
and scored in chunks of RESAMPLE_BUDGET indices from the same generator), median time and median
tracemalloc peak side by side. The numbers must be identical. A baseline whose estimated peak is
over `baseline_limit_gb` is skipped.

    python tests/benchmarks/bench_finetune_scores.py [n n_bootstrap repeats [sizes ...]]
"""

from __future__ import annotations

import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from timing import median_seconds

from zoobot_core.scores import (
    RESAMPLE_BUDGET,
    _bootstrap_scores,
    _chunked_bootstrap,
    balanced_threshold,
    classify,
    paired_difference,
    score_predictions,
)

SIZES = (8_000, 25_000, 50_000, 100_000)


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


def old_balanced_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The baseline threshold (before issue 25): a (distinct scores x galaxies) matrix of predictions."""
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


def old_bootstrap(truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """The baseline bootstrap (before issue 25): every resample index at once, ranks from scipy."""
    from scipy.stats import rankdata

    picks = np.random.default_rng(seed).integers(0, len(truth), (n_bootstrap, len(truth)))
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


def new_bootstrap(truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """Ours, as score_predictions runs it."""
    return _chunked_bootstrap(truth, [(scores, predicted)], "binary", 2, n_bootstrap, seed, RESAMPLE_BUDGET)[0]


def time_and_peak(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median seconds and median tracemalloc peak (bytes) of `repeats` calls of fn, and its last result."""
    seconds, peaks = [], []
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return statistics.median(seconds), statistics.median(peaks), result


def _largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for k in a:
        if not np.array_equal(np.isnan(a[k]), np.isnan(b[k])):
            return float("inf")
        finite = ~np.isnan(a[k])
        worst = max(worst, float(np.max(np.abs(a[k][finite] - b[k][finite]), initial=0.0)))
    return worst


def scaling(sizes: tuple[int, ...], n_bootstrap: int, repeats: int, baseline_limit_gb: float) -> list[dict]:
    """Old vs new balanced_threshold and bootstrap at each size; None where the baseline was skipped."""
    return [one_size(n, n_bootstrap, repeats, baseline_limit_gb) for n in sizes]


def one_size(n: int, n_bootstrap: int, repeats: int, baseline_limit_gb: float) -> dict:
    """Old vs new balanced_threshold and bootstrap at n galaxies."""
    rng = np.random.default_rng(n)
    truth = rng.integers(0, 2, n)
    scores = np.clip(truth * 0.3 + rng.normal(0.35, 0.2, n), 0, 1)  # continuous: ~n distinct scores
    predicted = classify(scores, "binary")
    row: dict = {"n": n, "n_bootstrap": n_bootstrap}
    new_s, new_b, new_t = time_and_peak(lambda: balanced_threshold(truth, scores), repeats)
    row.update(threshold_new_s=new_s, threshold_new_mb=new_b / 1e6)
    if 2.0 * n * n / 1e9 <= baseline_limit_gb:  # the matrix and its two class slices: ~2 bytes per score and galaxy
        old_s, old_b, old_t = time_and_peak(lambda: old_balanced_threshold(truth, scores), repeats)
        row.update(threshold_old_s=old_s, threshold_old_mb=old_b / 1e6, threshold_same=old_t == new_t)
    else:
        row.update(threshold_old_s=None, threshold_old_mb=None, threshold_same=None)
    new_s, new_b, new_draws = time_and_peak(lambda: new_bootstrap(truth, scores, predicted, n_bootstrap, 0), repeats)
    row.update(bootstrap_new_s=new_s, bootstrap_new_mb=new_b / 1e6)
    if 70.0 * n * n_bootstrap / 1e9 <= baseline_limit_gb:  # ~70 bytes per resample index (measured)
        old_s, old_b, old_draws = time_and_peak(lambda: old_bootstrap(truth, scores, predicted, n_bootstrap, 0), repeats)
        row.update(bootstrap_old_s=old_s, bootstrap_old_mb=old_b / 1e6, bootstrap_difference=_largest_difference(old_draws, new_draws))
    else:
        row.update(bootstrap_old_s=None, bootstrap_old_mb=None, bootstrap_difference=None)
    return row


def _cell(seconds: float | None, mb: float | None) -> str:
    return "skipped (over the memory limit)" if seconds is None else f"{seconds:8.3f} s {mb:9.1f} MB"


def main(n: int = 104, n_bootstrap: int = 1000, repeats: int = 5, sizes: tuple[int, ...] = SIZES, baseline_limit_gb: float = 8.0) -> dict:
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

    rows = scaling(tuple(sizes), n_bootstrap, repeats, baseline_limit_gb)
    print(f"\nAt scale (issue 25): median of {repeats} calls, time and tracemalloc peak; baseline = before issue 25")
    print(f"{'galaxies':>9}  {'threshold, baseline':>26}  {'threshold, ours':>26}  {'bootstrap, baseline':>26}  {'bootstrap, ours':>26}  same numbers")
    for r in rows:
        same = "" if r["threshold_same"] is None else f"threshold {'yes' if r['threshold_same'] else 'NO'}"
        if r["bootstrap_difference"] is not None:
            same += f"; bootstrap max diff {r['bootstrap_difference']:.1e}"
        print(f"{r['n']:>9,}  {_cell(r['threshold_old_s'], r['threshold_old_mb']):>26}  {_cell(r['threshold_new_s'], r['threshold_new_mb']):>26}  "
              f"{_cell(r['bootstrap_old_s'], r['bootstrap_old_mb']):>26}  {_cell(r['bootstrap_new_s'], r['bootstrap_new_mb']):>26}  {same}")
    return {"baseline_s": t_slow, "ours_s": t_fast, "all_intervals_s": t_all, "max_difference": worst, "scaling": rows}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args[:3], **({"sizes": tuple(args[3:])} if len(args) > 3 else {}))
