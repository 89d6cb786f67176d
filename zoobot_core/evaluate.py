"""Compare predicted vote fractions with the volunteers' on the test split, against a constant baseline."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)


def vote_fractions(votes: np.ndarray, tree: DecisionTree) -> tuple[np.ndarray, np.ndarray]:
    """Observed vote fractions per answer, and each question's vote total per galaxy."""
    fractions = np.zeros_like(votes, dtype=np.float64)
    totals = np.zeros((votes.shape[0], len(tree.questions)))
    for q, (first, last) in enumerate(tree.question_index_groups):
        totals[:, q] = votes[:, first : last + 1].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fractions[:, first : last + 1] = np.where(totals[:, q : q + 1] > 0, votes[:, first : last + 1] / totals[:, q : q + 1], 0.0)
    return fractions, totals


def evaluate_predictions(predictions: pd.DataFrame, test_catalog: pd.DataFrame, train_catalog: pd.DataFrame, tree: DecisionTree, min_votes: int = 1) -> pd.DataFrame:
    """Per-question metrics for the model and for a constant predictor (the train set's mean vote fractions).

    For each question, over test galaxies with at least `min_votes` votes on it: mean absolute
    error of the vote fractions (averaged over answers) and the accuracy of the most-voted answer.
    """
    cols = tree.label_cols
    merged = test_catalog[["id_str", *cols]].merge(predictions, on="id_str", how="inner", validate="one_to_one")
    if len(merged) != len(test_catalog):
        raise ValueError(f"Predictions cover {len(merged)} of {len(test_catalog)} test galaxies; rerun predict")
    observed, totals = vote_fractions(merged[cols].to_numpy(float), tree)
    predicted = merged[[f"{c}_fraction" for c in cols]].to_numpy(float)
    train_fractions, train_totals = vote_fractions(train_catalog[cols].to_numpy(float), tree)
    rows = []
    for q, (question, (first, last)) in enumerate(zip(tree.questions, tree.question_index_groups)):
        mask = totals[:, q] >= min_votes
        train_mask = train_totals[:, q] >= 1
        constant = train_fractions[train_mask, first : last + 1].mean(axis=0) if train_mask.any() else np.full(last - first + 1, 1 / (last - first + 1))
        obs, pred = observed[mask, first : last + 1], predicted[mask, first : last + 1]
        votes = totals[mask, q]
        winner = obs.argmax(axis=1)
        model_err, constant_err = np.abs(pred - obs).mean(axis=1), np.abs(constant[None, :] - obs).mean(axis=1)
        rows.append({
            "question": question.name,
            "n_galaxies": int(mask.sum()),
            "n_votes": int(votes.sum()),
            "model_mae": float(model_err.mean()) if mask.any() else np.nan,
            "constant_mae": float(constant_err.mean()) if mask.any() else np.nan,
            "model_mae_vote_weighted": float(np.average(model_err, weights=votes)) if mask.any() else np.nan,
            "constant_mae_vote_weighted": float(np.average(constant_err, weights=votes)) if mask.any() else np.nan,
            "model_accuracy": float((pred.argmax(axis=1) == winner).mean()) if mask.any() else np.nan,
            "constant_accuracy": float((constant.argmax() == winner).mean()) if mask.any() else np.nan,
        })
    table = pd.DataFrame(rows)
    headline = summary(table)
    log.info("Test vote-fraction MAE, vote-weighted: model %.4f vs constant %.4f; per galaxy and question: model %.4f vs constant %.4f",
             headline["vote_fraction_mae_vote_weighted"]["model"], headline["vote_fraction_mae_vote_weighted"]["constant"],
             headline["vote_fraction_mae"]["model"], headline["vote_fraction_mae"]["constant"])
    return table


def _pooled(metrics: pd.DataFrame, column: str, weight: str) -> float:
    valid = metrics[metrics[weight] > 0]
    return float(np.average(valid[column], weights=valid[weight]))


def summary(metrics: pd.DataFrame) -> dict:
    """Headline numbers for metrics.json: MAE pooled over every (galaxy, question) pair, plain and
    weighted by the pair's number of votes, and the first question's accuracy."""
    first = metrics.iloc[0]
    out = {}
    for key, suffix, weight in (("vote_fraction_mae", "", "n_galaxies"), ("vote_fraction_mae_vote_weighted", "_vote_weighted", "n_votes")):
        model, constant = _pooled(metrics, f"model_mae{suffix}", weight), _pooled(metrics, f"constant_mae{suffix}", weight)
        out[key] = {"model": model, "constant": constant, "ratio": model / constant if constant > 0 else None}
    out[f"{first['question']}_accuracy"] = {"model": float(first["model_accuracy"]), "constant": float(first["constant_accuracy"])}
    out["n_test"] = int(first["n_galaxies"])
    return out


def evaluate_files(
    predictions_path, shard_dir, tree: DecisionTree, metrics_path, per_question_path,
    confident_path, confusion_path, confident_fraction: float = 0.8, min_votes: int = 5,
) -> dict:
    """The evaluate rule: per-question metrics (CSV), headline numbers (JSON), and accuracy and
    confusion on galaxies volunteers were confident about (CSV tables; report_figures plots them), for the test split."""
    from pathlib import Path

    from zoobot_core.io import atomic_write_table, write_json

    shard_dir = Path(shard_dir)
    predictions, test_catalog = pd.read_parquet(predictions_path), pd.read_parquet(shard_dir / "test_catalog.parquet")
    metrics = evaluate_predictions(predictions, test_catalog, pd.read_parquet(shard_dir / "train_catalog.parquet"), tree)
    atomic_write_table(metrics, per_question_path)
    confident, confusion = confident_confusion(predictions, test_catalog, tree, confident_fraction, min_votes)
    atomic_write_table(confident, confident_path)
    atomic_write_table(confusion, confusion_path)
    headline = summary(metrics)
    first = confident.iloc[0]
    headline[f"{first['question']}_confident_accuracy"] = {
        "model": None if pd.isna(first["accuracy"]) else float(first["accuracy"]), "n": int(first["n_confident"]),
        "confident_fraction": confident_fraction, "min_votes": min_votes,
    }
    headline["posterior"] = posterior_label(predictions)
    write_json(headline, metrics_path)
    return headline


def posterior_label(predictions: pd.DataFrame) -> str:
    """Which posterior a predictions table holds: recalibrated (it then also has *_concentration_raw columns) or the raw network's."""
    if any(c.endswith("_concentration_raw") for c in predictions.columns):
        return "recalibrated on the validation split (vote fractions are the raw network's: recalibration keeps them)"
    return "raw network (no recalibration applied)"


def confident_confusion(
    predictions: pd.DataFrame, test_catalog: pd.DataFrame, tree: DecisionTree, confident_fraction: float = 0.8, min_votes: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy and confusion of the most-voted answer on galaxies where volunteers were confident.

    As in the GZ DECaLS paper's evaluation: per question, only test galaxies with at least
    `min_votes` votes on it whose most common answer got at least `confident_fraction` of them.
    Returns (per-question table: n_confident, accuracy; long confusion table: question,
    volunteers (the confident answer), model (its most likely answer), count).
    """
    cols = tree.label_cols
    merged = test_catalog[["id_str", *cols]].merge(predictions, on="id_str", how="inner", validate="one_to_one")
    observed, totals = vote_fractions(merged[cols].to_numpy(float), tree)
    predicted = merged[[f"{c}_fraction" for c in cols]].to_numpy(float)
    rows, cells = [], []
    for q, (question, (first, last)) in enumerate(zip(tree.questions, tree.question_index_groups)):
        obs, pred = observed[:, first : last + 1], predicted[:, first : last + 1]
        mask = (totals[:, q] >= min_votes) & (obs.max(axis=1) >= confident_fraction)
        truth, guess = obs[mask].argmax(axis=1), pred[mask].argmax(axis=1)
        rows.append({
            "question": question.name,
            "n_confident": int(mask.sum()),
            "accuracy": float((truth == guess).mean()) if mask.any() else np.nan,
        })
        counts = np.zeros((len(question.answers), len(question.answers)), dtype=int)
        np.add.at(counts, (truth, guess), 1)
        for i, true_answer in enumerate(question.answers):
            for j, model_answer in enumerate(question.answers):
                cells.append({"question": question.name, "volunteers": true_answer, "model": model_answer, "count": int(counts[i, j])})
    return pd.DataFrame(rows), pd.DataFrame(cells)
