"""What recalibration changes in a finished run (make recalibration-study): each map fitted on validation, scored on test, and BALD's picks.

For each method (raw, scale, scale_power, auto) the map is fitted on the run's validation samples and
scored on its test samples exactly as the calibration rule scores them: coverage of the central
50/80/95% intervals against what each promises, held-out NLL against the constant predictor, and the
vote-fraction error and most-voted-answer accuracy (the maps keep vote fractions, so these two are
the raw model's; they are computed, not assumed). Then the acquisition split is ranked by BALD on the
raw and on the run's recalibrated posterior: overlap of the top N, rank correlation, and what each top
N holds (first-question class, true where the catalog has it, else predicted) against the pool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.acquisition import AcquireConfig, bald_scores, rank
from zoobot_core.calibration import CalibrationConfig, calibrate
from zoobot_core.dirichlet import expected_vote_fractions, samples_array
from zoobot_core.evaluate import vote_fractions
from zoobot_core.recalibration import (
    RECALIBRATION_FILE,
    RecalibrationConfig,
    applied_recalibration,
    apply_recalibration,
    fit_recalibration,
    raw_from_samples,
    read_recalibration,
)
from zoobot_core.schemas import DecisionTree, get_tree

log = logging.getLogger(__name__)

STUDY_METHODS = ("raw", "scale", "scale_power", "auto")


def raw_samples(run_dir: Path, split: str, tree: DecisionTree) -> tuple[list[str], np.ndarray]:
    """A split's raw network samples (undoing the recalibration predict applied, as the file records it)."""
    path = run_dir / "prediction_samples" / f"{split}.parquet"
    ids, alpha = samples_array(pd.read_parquet(path), tree.label_cols)
    model_file = run_dir / "model" / RECALIBRATION_FILE
    return ids, raw_from_samples(alpha, path, tree, model_file if model_file.is_file() and not applied_recalibration(path)[0] else None)[0]


def _votes(run_dir: Path, split: str, ids: list[str], tree: DecisionTree) -> np.ndarray:
    catalog = pd.read_parquet(run_dir / "shards" / f"{split}_catalog.parquet", columns=["id_str", *tree.label_cols]).set_index("id_str")
    return catalog.loc[ids, tree.label_cols].to_numpy(np.float64)


def fraction_scores(alpha: np.ndarray, votes: np.ndarray, tree: DecisionTree, min_votes: int = 1) -> dict[str, float]:
    """Vote-fraction MAE (mean over asked galaxy-answer pairs) and most-voted-answer accuracy, pooled over questions."""
    predicted = expected_vote_fractions(alpha, tree.question_index_groups).mean(axis=1)
    observed, totals = vote_fractions(votes, tree)
    errors, hits = [], []
    for q, (first, last) in enumerate(tree.question_index_groups):
        asked = totals[:, q] >= min_votes
        errors.append(np.abs(predicted[asked, first : last + 1] - observed[asked, first : last + 1]).ravel())
        hits.append(predicted[asked, first : last + 1].argmax(axis=1) == observed[asked, first : last + 1].argmax(axis=1))
    return {"vote_fraction_mae": float(np.concatenate(errors).mean()), "most_voted_accuracy": float(np.concatenate(hits).mean())}


def draw_from_posterior(alpha: np.ndarray, votes: np.ndarray, tree: DecisionTree, rng: np.random.Generator) -> np.ndarray:
    """Votes drawn from each galaxy's sample-mixed predictive for its observed number of volunteers per question: what a
    posterior that is calibrated by construction would be scored against."""
    drawn = np.zeros_like(votes)
    g, s, _ = alpha.shape
    for first, last in tree.question_index_groups:
        totals = votes[:, first : last + 1].sum(axis=1).astype(np.int64)
        chosen = alpha[np.arange(g), rng.integers(0, s, g), first : last + 1]
        p = rng.gamma(chosen)
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        drawn[:, first : last + 1] = [rng.multinomial(n, row) for n, row in zip(totals, p)]
    return drawn


def calibrated_reference(alpha: np.ndarray, votes: np.ndarray, train_votes: np.ndarray, tree: DecisionTree, config: CalibrationConfig,
                         replicates: int = 20, seed: int = 0) -> dict:
    """How a calibrated-by-construction posterior scores on the same galaxies: votes drawn from `alpha` itself, `replicates` times.

    The per-question criterion (the bootstrap interval holds the promise at every level) fails by chance for a calibrated
    posterior too, more often the more questions and levels there are; this says how often on this many galaxies.
    """
    rng = np.random.default_rng(seed)
    covering, gaps = [], {f"{level:g}": [] for level in config.levels}
    for _ in range(replicates):
        table, _, headline, _ = calibrate(alpha, draw_from_posterior(alpha, votes, tree, rng), train_votes, tree, config)
        covering.append(headline["questions_covering_promise"]["model"]["every_level"])
        for level, by in headline["coverage"].items():
            gaps[level].append(by["model"]["coverage"] - by["model"]["expected"])
    return {"replicates": replicates, "questions_covering_promise": {"median": float(np.median(covering)), "min": int(min(covering)), "max": int(max(covering))},
            "pooled_coverage_minus_promised_abs_max": {level: float(np.abs(v).max()) for level, v in gaps.items()}}


def compare_methods(run_dir: Path, tree: DecisionTree, config: RecalibrationConfig, levels: tuple[float, ...] = (0.5, 0.8, 0.95)) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(pooled table: one row per method; per-question table: one row per method and question; the calibrated reference of the
    last method's posterior), each map fitted on val and scored on test."""
    val_ids, val_alpha = raw_samples(run_dir, "val", tree)
    val_votes = _votes(run_dir, "val", val_ids, tree)
    test_ids, test_alpha = raw_samples(run_dir, "test", tree)
    test_votes = _votes(run_dir, "test", test_ids, tree)
    train_votes = pd.read_parquet(run_dir / "shards" / "train_catalog.parquet", columns=tree.label_cols).to_numpy(np.float64)
    pooled, per_question = [], []
    for method in STUDY_METHODS:
        fitted = None if method == "raw" else fit_recalibration(val_alpha, val_votes, tree, replace(config, method=method))
        alpha = apply_recalibration(test_alpha, fitted, tree)
        table, _, headline, _ = calibrate(alpha, test_votes, train_votes, tree, CalibrationConfig(levels=levels, min_votes=config.min_votes))
        row = {"method": method, "n_val": len(val_ids), "n_test": len(test_ids), "nll_per_galaxy": headline["nll_per_galaxy"]["model"],
               "nll_minus_constant": headline["nll_per_galaxy"]["difference"],
               "nll_minus_constant_low": headline["nll_per_galaxy"]["difference_interval"][0],
               "nll_minus_constant_high": headline["nll_per_galaxy"]["difference_interval"][1],
               "questions_no_worse_than_constant": int((table["nll_difference_low"] <= 0).sum()), "n_questions": len(table),
               "questions_covering_promise": headline["questions_covering_promise"]["model"]["every_level"],
               **fraction_scores(alpha, test_votes, tree, config.min_votes)}
        for level in levels:
            by = headline["coverage"][f"{level:g}"]["model"]
            row[f"coverage_{level:g}"], row[f"promised_{level:g}"] = by["coverage"], by["expected"]
            row[f"coverage_{level:g}_low"], row[f"coverage_{level:g}_high"] = by["interval"]
        pooled.append(row)
        keep = ["question", "n_galaxies", "nll_model", "nll_constant", "nll_difference_low", "nll_difference_high",
                *[f"{kind}_{level:g}{end}" for level in levels for kind, end in (("coverage", ""), ("expected", ""), ("coverage", "_low"), ("coverage", "_high"))]]
        part = table[keep].copy()
        part.insert(0, "method", method)
        if fitted is not None:
            part["scale"] = [fitted["questions"][q]["scale"] for q in part["question"]]
            part["power"] = [fitted["questions"][q]["power"] for q in part["question"]]
        per_question.append(part)
    reference = calibrated_reference(alpha, test_votes, train_votes, tree, CalibrationConfig(levels=levels, min_votes=config.min_votes))
    reference["posterior"] = STUDY_METHODS[-1]
    return pd.DataFrame(pooled), pd.concat(per_question, ignore_index=True), reference


def _composition(ids: list[str], classes: pd.Series) -> dict[str, float]:
    return classes.loc[ids].value_counts(normalize=True).round(4).to_dict() if ids else {}


def compare_bald(run_dir: Path, tree: DecisionTree, split: str, config: AcquireConfig, top_n: int = 100) -> dict:
    """BALD on the raw and on the run's recalibrated posterior of one split: top-N overlap, rank correlation, and what each picks."""
    from scipy.stats import spearmanr

    recalibration = read_recalibration(run_dir / "model")
    ids, raw = raw_samples(run_dir, split, tree)
    rankings = {name: rank(bald_scores(ids, alpha, tree, config)) for name, alpha in
                (("raw", raw), ("recalibrated", apply_recalibration(raw, recalibration, tree)))}
    tops = {name: r["id_str"].head(top_n).tolist() for name, r in rankings.items()}
    first = tree.questions[0]
    catalog = pd.read_parquet(run_dir / "catalog" / "ready.parquet").set_index("id_str")
    truth_column = f"true_{first.name}"
    if truth_column in catalog.columns:
        classes, source = catalog[truth_column].astype(str), f"true class ({truth_column})"
    else:
        fractions = rankings["raw"].set_index("id_str")[[tree.column(first.name, a) + "_fraction" for a in first.answers]]
        classes, source = pd.Series(np.asarray(first.answers)[fractions.to_numpy().argmax(axis=1)], index=fractions.index), "predicted most-voted answer (raw)"
    merged = rankings["raw"][["id_str", "rank"]].merge(rankings["recalibrated"][["id_str", "rank"]], on="id_str", suffixes=("_raw", "_recalibrated"))
    return {
        "split": split, "n_pool": len(ids), "top_n": min(top_n, len(ids)), "recalibration": recalibration["method"] if recalibration else None,
        "top_overlap": len(set(tops["raw"]) & set(tops["recalibrated"])),
        "top_overlap_at": {n: len(set(tops["raw"][:n]) & set(tops["recalibrated"][:n])) for n in (10, 25, 50, top_n) if n <= min(top_n, len(ids))},
        "rank_correlation": float(spearmanr(merged["rank_raw"], merged["rank_recalibrated"]).statistic) if len(merged) > 2 else np.nan,
        "mean_mutual_information": {name: float(r["mutual_information"].mean()) for name, r in rankings.items()},
        "composition_source": f"{first.name}: {source}",
        "composition": {"pool": _composition(ids, classes), **{f"top_{name}": _composition(top, classes) for name, top in tops.items()}},
    }


def recalibration_study(run_dir: Path | str, out_dir: Path | str, config: RecalibrationConfig | None = None, acquire: AcquireConfig | None = None,
                        split: str = "unlabelled", top_n: int = 100) -> dict:
    """The whole study on one finished run: methods.csv, per_question.csv, bald.json and summary.json in out_dir."""
    from zoobot_core.io import atomic_write_table, write_json

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model_config = json.loads((run_dir / "model" / "model_config.json").read_text())
    tree = get_tree(model_config.get("tree_definition", model_config["tree"]), model_config["question_suffix"])
    recorded = read_recalibration(run_dir / "model")
    if config is None:  # the run's own settings (seed, folds, min_galaxies), so `auto` here is the pipeline's
        config = RecalibrationConfig(**recorded["settings"]) if recorded and "settings" in recorded else RecalibrationConfig()
    methods, per_question, reference = compare_methods(run_dir, tree, config)
    bald = compare_bald(run_dir, tree, split, acquire or AcquireConfig(), top_n)
    atomic_write_table(methods, out_dir / "methods.csv")
    atomic_write_table(per_question, out_dir / "per_question.csv")
    write_json(bald, out_dir / "bald.json")
    summary = {"run": str(run_dir), "methods": methods.to_dict(orient="records"), "calibrated_reference": reference, "bald": bald}
    write_json(summary, out_dir / "summary.json")
    for row in summary["methods"]:
        log.info("%-12s NLL - constant %+.3f; coverage 50/80/95%%: %.3f/%.3f/%.3f promised %.3f/%.3f/%.3f; %d of %d questions cover every promise",
                 row["method"], row["nll_minus_constant"], row["coverage_0.5"], row["coverage_0.8"], row["coverage_0.95"],
                 row["promised_0.5"], row["promised_0.8"], row["promised_0.95"], row["questions_covering_promise"], row["n_questions"])
    log.info("A posterior calibrated by construction (votes drawn from %s's own, %d times): %s questions cover every promise",
             reference["posterior"], reference["replicates"], reference["questions_covering_promise"])
    log.info("BALD top %d: %d in common between raw and recalibrated (rank correlation %.3f)", bald["top_n"], bald["top_overlap"], bald["rank_correlation"])
    return summary
