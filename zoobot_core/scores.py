"""Scores for a label predicted out of fold: balanced accuracy, ROC AUC, accuracy, confusion and
predicted vs true class rates (binary / multiclass); MAE and R² (regression); with their spread
over folds and a bootstrap interval. Also the decision threshold chosen on training galaxies."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

CLASSIFICATION = ("binary", "multiclass")
RESAMPLE_BUDGET = 1 << 20  # resample indices the bootstraps hold at once (~1M: ~40 MB peak at any n, as fast as larger chunks)


def balanced_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold on P(class 1) that maximises balanced accuracy (Youden's J) on these galaxies.

    Candidates are midpoints between consecutive distinct scores; ties go to the one nearest 0.5.
    Meant for training galaxies' out-of-fold scores, never the galaxies being scored.
    O(n log n) time and O(n) memory: each candidate's true positives and false positives are counted
    by binary search in the sorted scores of each class (NaN scores are never predicted positive).
    """
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if len(np.unique(labels)) < 2:
        return 0.5
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-9], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-9]])
    positive, negative = labels == 1, labels == 0
    n1, n0 = np.count_nonzero(positive), np.count_nonzero(negative)
    if n1 == 0 or n0 == 0:
        raise ValueError("balanced_threshold needs labels 0 and 1 among two or more distinct labels")
    j = _count_at_or_above(scores[positive], candidates) / n1 + (n0 - _count_at_or_above(scores[negative], candidates)) / n0
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _count_at_or_above(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """How many scores are >= each candidate (NaN scores never are; NaN candidates have none)."""
    ordered = np.sort(scores)
    ordered = ordered[: len(ordered) - np.count_nonzero(np.isnan(ordered))]  # NaN sorts last
    return len(ordered) - np.searchsorted(ordered, candidates, side="left")


def classify(scores: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Predicted classes: P(class 1) >= threshold (binary) or the most probable class (multiclass, scores (n, classes))."""
    scores = np.asarray(scores)
    return (scores >= threshold).astype(int) if task == "binary" else scores.argmax(axis=1)


def _scalar_scores(truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray, task: str, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score

    if task == "regression":
        return {"mae": float(mean_absolute_error(truth, scores)), "r2": float(r2_score(truth, scores)) if len(truth) > 1 else np.nan}
    out = {"balanced_accuracy": float(balanced_accuracy_score(truth, predicted)), "accuracy": float(accuracy_score(truth, predicted))}
    present = np.unique(truth)
    if len(present) < 2:
        out["roc_auc"] = np.nan  # AUC needs both classes among the scored galaxies
    elif task == "binary":
        out["roc_auc"] = float(roc_auc_score(truth, scores))
    elif len(present) == n_classes:
        probabilities = np.clip(scores, 0, None) / np.clip(scores, 0, None).sum(axis=1, keepdims=True)
        out["roc_auc"] = float(roc_auc_score(truth, probabilities, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    else:
        out["roc_auc"] = np.nan
    return out


def _bootstrap_scores(
    truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None, task: str, n_classes: int, picks: np.ndarray,
    *, budget: int = RESAMPLE_BUDGET,
) -> dict[str, np.ndarray]:
    """Every score for each row of resample indices `picks` (resamples, galaxies). Binary tasks are
    computed for many resamples at once, in row chunks of at most `budget` indices (the AUC from each
    resample's counts of every distinct score, ties averaged: the same numbers as scikit-learn's);
    other tasks one resample at a time with scikit-learn."""
    if task == "binary":
        if predicted is None:
            raise TypeError("a binary bootstrap needs the predicted classes")
        values, dense = np.unique(scores, return_inverse=True)  # each galaxy's score as its rank among the distinct scores
        nan_code = len(values) - 1 if len(values) and np.isnan(values[-1]) else None  # np.unique sorts NaN last
        rows = _rows_per_chunk(picks.shape[1], budget)
        chunks = [_binary_bootstrap(np.asarray(truth), dense.reshape(-1), len(values), nan_code, np.asarray(predicted), picks[i : i + rows])
                  for i in range(0, max(len(picks), 1), rows)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    draws: dict[str, list] = {}
    with warnings.catch_warnings():  # a resample may lack a class; its scores are still defined
        warnings.simplefilter("ignore", UserWarning)
        for pick in picks:
            for name, value in _scalar_scores(truth[pick], scores[pick], None if predicted is None else predicted[pick], task, n_classes).items():
                draws.setdefault(name, []).append(value)
    return {name: np.asarray(values, float) for name, values in draws.items()}


def _binary_bootstrap(
    truth: np.ndarray, dense: np.ndarray, m: int, nan_code: int | None, predicted: np.ndarray, picks: np.ndarray,
) -> dict[str, np.ndarray]:
    """Balanced accuracy, accuracy and ROC AUC of each resample (row of `picks`), all rows at once;
    `dense` is each galaxy's score as its index among the `m` distinct scores (`nan_code` that of NaN).

    The AUC is Mann-Whitney's: the positives' rank sum, each rank averaged over its ties, from each
    row's count of every distinct score (bincount and cumsum, no sort). Every step is exact in integers,
    so it equals the sum of scipy's average ranks bit for bit. A row holding a NaN score has NaN AUC."""
    positive, negative = truth == 1, truth == 0
    p1 = positive[picks]
    n1, n0 = np.count_nonzero(p1, axis=1), np.count_nonzero(negative[picks], axis=1)
    index = dense[picks]
    has_nan = None if nan_code is None else np.count_nonzero(index == nan_code, axis=1) > 0
    index += (np.arange(len(picks)) * m)[:, None]  # row r's scores counted in bins r*m .. r*m + m - 1
    count = np.bincount(index.ravel(), minlength=len(picks) * m).reshape(len(picks), m)
    count_positive = np.bincount(index[p1], minlength=len(picks) * m).reshape(len(picks), m)
    del index, p1
    twice_rank = np.cumsum(count, axis=1)  # 2 x (galaxies below + (ties + 1) / 2), in place
    twice_rank -= count
    twice_rank *= 2
    twice_rank += count
    twice_rank += 1
    twice_rank *= count_positive
    twice_rank_sum = twice_rank.sum(axis=1)
    del count, count_positive, twice_rank
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.count_nonzero((positive & (predicted == 1))[picks], axis=1) / n1
        tnr = np.count_nonzero((negative & (predicted == 0))[picks], axis=1) / n0
        auc = (twice_rank_sum / 2 - n1 * (n1 + 1) / 2) / (n1 * n0)
    if has_nan is not None:
        auc[has_nan] = np.nan
    return {
        "balanced_accuracy": np.where(n1 == 0, tnr, np.where(n0 == 0, tpr, (tpr + tnr) / 2)),  # recall averaged over the classes present
        "accuracy": np.count_nonzero((truth == predicted)[picks], axis=1) / picks.shape[1],
        "roc_auc": np.where((n1 == 0) | (n0 == 0), np.nan, auc),
    }


def _rows_per_chunk(n: int, budget: int) -> int:
    """Resamples per chunk: as many rows of n indices as fit in `budget` entries, at least one."""
    return max(1, budget // max(n, 1))


def _chunked_bootstrap(
    truth: np.ndarray, methods: list[tuple[np.ndarray, np.ndarray | None]], task: str, n_classes: int, n_bootstrap: int, seed: int,
    budget: int,
) -> list[dict[str, np.ndarray]]:
    """Bootstrap scores of each (scores, predicted) on the same `n_bootstrap` resamples of the galaxies.

    The resample indices are the rows of default_rng(seed).integers(0, n, (n_bootstrap, n)), drawn
    `budget` entries at a time from the same generator (the stream, so the indices, are the same as one
    draw), so memory stays bounded at any number of galaxies."""
    n = len(truth)
    rng, rows = np.random.default_rng(seed), _rows_per_chunk(n, budget)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in methods]
    for start in range(0, max(n_bootstrap, 1), rows):
        picks = rng.integers(0, n, (min(rows, n_bootstrap - start), n))
        for part, (scores, predicted) in zip(parts, methods):
            part.append(_bootstrap_scores(truth, scores, predicted, task, n_classes, picks, budget=budget))
    return [{name: np.concatenate([c[name] for c in part]) for name in part[0]} for part in parts]


def score_predictions(
    truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None, folds: np.ndarray, task: str, n_classes: int = 2,
    n_bootstrap: int = 1000, seed: int = 0, *, budget: int = RESAMPLE_BUDGET,
) -> dict:
    """Scores of out-of-fold predictions: pooled over every scored galaxy (with a bootstrap 95% interval),
    per fold, and the folds' mean and standard deviation; plus the confusion matrix and class rates.
    The bootstrap holds at most `budget` resample indices at once."""
    truth, scores, folds = np.asarray(truth), np.asarray(scores), np.asarray(folds)
    predicted = None if predicted is None else np.asarray(predicted)
    pooled = _scalar_scores(truth, scores, predicted, task, n_classes)
    fold_ids = sorted(set(folds.tolist()))
    per_fold = {f: _scalar_scores(truth[folds == f], scores[folds == f], None if predicted is None else predicted[folds == f], task, n_classes)
                for f in fold_ids}
    (draws,) = _chunked_bootstrap(truth, [(scores, predicted)], task, n_classes, n_bootstrap, seed, budget)
    out: dict = {"n_scored": int(len(truth)), "n_folds": len(fold_ids)}
    for name, value in pooled.items():
        fold_values = np.array([per_fold[f][name] for f in fold_ids], float)
        boot = np.array(draws[name], float)
        boot = boot[np.isfinite(boot)]
        out[name] = {
            "pooled": value,
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))] if len(boot) else [np.nan, np.nan],
            "fold_mean": float(np.nanmean(fold_values)) if np.isfinite(fold_values).any() else np.nan,
            "fold_std": float(np.nanstd(fold_values, ddof=1)) if np.isfinite(fold_values).sum() > 1 else np.nan,
            "per_fold": [float(v) for v in fold_values],
        }
    if task in CLASSIFICATION:
        classes = list(range(n_classes))
        confusion = pd.crosstab(pd.Categorical(truth, classes), pd.Categorical(predicted, classes), dropna=False).to_numpy()
        out["confusion"] = {"rows_true_columns_predicted": confusion.tolist()}
        out["class_rate"] = {
            "true": [float((truth == c).mean()) for c in classes],
            "predicted": [float((predicted == c).mean()) for c in classes],
        }
    return out


def paired_difference(
    truth: np.ndarray, first: tuple[np.ndarray, np.ndarray | None], second: tuple[np.ndarray, np.ndarray | None], task: str, n_classes: int = 2,
    n_bootstrap: int = 1000, seed: int = 0, *, budget: int = RESAMPLE_BUDGET,
) -> dict:
    """How much better the first method scores than the second on the same galaxies: per score, the
    pooled difference (first - second), a paired bootstrap 95% interval (both rescored on the same
    resamples) and the share of resamples in which the first is better (lower MAE counts as better).
    The bootstrap holds at most `budget` resample indices at once."""
    truth = np.asarray(truth)
    (scores_a, predicted_a), (scores_b, predicted_b) = first, second
    a = _scalar_scores(truth, scores_a, predicted_a, task, n_classes)
    b = _scalar_scores(truth, scores_b, predicted_b, task, n_classes)
    draws_a, draws_b = _chunked_bootstrap(
        truth, [(np.asarray(scores_a), predicted_a), (np.asarray(scores_b), predicted_b)], task, n_classes, n_bootstrap, seed, budget)
    draws = {name: draws_a[name] - draws_b[name] for name in a}
    out = {}
    for name in a:
        boot = np.array(draws[name], float)
        boot = boot[np.isfinite(boot)]
        better = (boot < 0) if name == "mae" else (boot > 0)
        out[name] = {
            "difference": a[name] - b[name],
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))] if len(boot) else [np.nan, np.nan],
            "share_better": float(better.mean()) if len(boot) else np.nan,
        }
    return out


def summary_table(metrics: dict[str, dict], task: str) -> pd.DataFrame:
    """One row per method (and the field of view it saw): each headline score pooled, with its bootstrap interval and fold mean ± std, and
    how much the finetuned model beats it on the same galaxies (paired bootstrap 95% interval)."""
    names = ("balanced_accuracy", "roc_auc", "accuracy") if task in CLASSIFICATION else ("mae", "r2")
    rows = []
    for method, m in metrics.items():
        row = {"method": method, "n_scored": m["n_scored"]}
        if "field_of_view" in m:  # the pixels every method saw: the network's centre crop
            row["field_of_view"] = "centre {crop_px} of {image_px} px".format(**m["field_of_view"])
        for name in names:
            row[name] = m[name]["pooled"]
            row[f"{name}_ci95"] = "{:.3f}-{:.3f}".format(*m[name]["ci95"])
            row[f"{name}_folds"] = f"{m[name]['fold_mean']:.3f} ± {m[name]['fold_std']:.3f}"
        if task == "binary":
            row["share_predicted_positive"] = m["class_rate"]["predicted"][1]
            row["share_labelled_positive"] = m["class_rate"]["true"][1]
        for name, diff in m.get("finetuned_minus_this", {}).items():
            if name in names[:2]:
                row[f"finetuned_minus_this_{name}"] = "{:+.3f} ({:+.3f} to {:+.3f})".format(diff["difference"], *diff["ci95"])
        rows.append(row)
    return pd.DataFrame(rows)
