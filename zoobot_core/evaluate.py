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
        winner = obs.argmax(axis=1)
        rows.append({
            "question": question.name,
            "n_galaxies": int(mask.sum()),
            "model_mae": float(np.abs(pred - obs).mean()) if mask.any() else np.nan,
            "constant_mae": float(np.abs(constant[None, :] - obs).mean()) if mask.any() else np.nan,
            "model_accuracy": float((pred.argmax(axis=1) == winner).mean()) if mask.any() else np.nan,
            "constant_accuracy": float((constant.argmax() == winner).mean()) if mask.any() else np.nan,
        })
    table = pd.DataFrame(rows)
    log.info("Test vote-fraction MAE (galaxy-weighted over questions): model %.4f vs constant %.4f",
             *weighted_mae(table))
    return table


def weighted_mae(metrics: pd.DataFrame) -> tuple[float, float]:
    """Model and constant MAE averaged over questions, weighted by how many galaxies answered each."""
    valid = metrics[metrics["n_galaxies"] > 0]
    w = valid["n_galaxies"].to_numpy(float)
    return float(np.average(valid["model_mae"], weights=w)), float(np.average(valid["constant_mae"], weights=w))


def summary(metrics: pd.DataFrame) -> dict:
    """Headline numbers for metrics.json."""
    model_mae, constant_mae = weighted_mae(metrics)
    first = metrics.iloc[0]
    return {
        "vote_fraction_mae": {"model": model_mae, "constant": constant_mae, "ratio": model_mae / constant_mae},
        f"{first['question']}_accuracy": {"model": float(first["model_accuracy"]), "constant": float(first["constant_accuracy"])},
        "n_test": int(first["n_galaxies"]),
    }


def evaluate_files(predictions_path, shard_dir, tree: DecisionTree, metrics_path, per_question_path) -> dict:
    """The evaluate rule: per-question metrics table (CSV) and headline numbers (JSON) for the test split."""
    from pathlib import Path

    from zoobot_core.catalog import write_json
    from zoobot_core.io import atomic_write_table

    shard_dir = Path(shard_dir)
    metrics = evaluate_predictions(
        pd.read_parquet(predictions_path),
        pd.read_parquet(shard_dir / "test_catalog.parquet"),
        pd.read_parquet(shard_dir / "train_catalog.parquet"),
        tree,
    )
    atomic_write_table(metrics, per_question_path)
    headline = summary(metrics)
    write_json(headline, metrics_path)
    return headline
