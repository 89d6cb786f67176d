"""Are the predicted posteriors over volunteer votes calibrated? Interval coverage and held-out likelihood.

For each test galaxy and question, the model's predictive distribution of the votes is the
Dirichlet-Multinomial for the galaxy's actual number of volunteers on that question, mixed over
the dropout (and test-time augmentation) samples. One answer's count then follows a mixture of
Beta-Binomials. Its central interval at level L runs from the first count whose CDF reaches
(1 - L) / 2 to the first whose CDF reaches (1 + L) / 2.

Coverage is the fraction of (galaxy, answer) pairs whose observed count falls inside. Counts are
discrete, so an interval usually holds a little more than L of the model's own probability: that
mass (the coverage a perfectly calibrated model would get) is reported beside it as `expected`.
Calibrated means coverage == expected, not coverage == L.

The held-out negative log-likelihood is the training objective: -log p(votes), mixed over samples,
per galaxy and question. The constant predictor is the single Dirichlet-Multinomial per question
that fits the training galaxies' votes best: what could be said without looking at the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.dirichlet import beta_binomial_cdf, fit_constant, log_pmf, question_nll
from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)

CURVE_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
_BATCH_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class CalibrationConfig:
    """Interval levels to report, and the fewest votes a question needs for a galaxy to count on it."""

    levels: tuple[float, ...] = (0.5, 0.8, 0.95)
    min_votes: int = 1

    def __post_init__(self) -> None:
        if not self.levels or not all(0 < level < 1 for level in self.levels):
            raise ValueError(f"calibration.levels must be between 0 and 1 (exclusive), got {self.levels}")
        if self.min_votes < 1:
            raise ValueError(f"calibration.min_votes must be at least 1, got {self.min_votes}")


def mixture_cdf(alpha: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """CDF of each answer's count under the sample-mixed predictive: alpha (G, S, K), totals (G,) -> (G, K, n_max + 1)."""
    g, s, k = alpha.shape
    n_max = int(totals.max()) if g else 0
    out = np.empty((g, k, n_max + 1))
    step = max(1, _BATCH_ELEMENTS // max(1, s * k * (n_max + 1)))
    for start in range(0, g, step):
        a = alpha[start : start + step]
        n = totals[start : start + step, None, None]
        cdf = beta_binomial_cdf(n, a, a.sum(axis=-1, keepdims=True) - a, n_max)  # (g, S, K, n_max + 1)
        out[start : start + step] = cdf.mean(axis=1)
    return out


def central_intervals(cdf: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, probability inside) of the central `level` interval of each CDF over its last axis."""
    lower = np.argmax(cdf >= (1 - level) / 2 - 1e-12, axis=-1)
    upper = np.argmax(cdf >= (1 + level) / 2 - 1e-12, axis=-1)
    below = np.where(lower > 0, np.take_along_axis(cdf, np.maximum(lower - 1, 0)[..., None], axis=-1)[..., 0], 0.0)
    inside = np.take_along_axis(cdf, upper[..., None], axis=-1)[..., 0] - below
    return lower, upper, inside


def interval_hits(cdf: np.ndarray, counts: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(whether each count lies in its central `level` interval, the probability the interval holds), both shaped like counts."""
    lower, upper, inside = central_intervals(cdf, level)
    return (counts >= lower) & (counts <= upper), inside


def coverage(cdf: np.ndarray, counts: np.ndarray, levels: tuple[float, ...]) -> dict[float, tuple[float, float]]:
    """{level: (fraction of counts inside their interval, mean probability inside)} over every (galaxy, answer)."""
    out = {}
    for level in levels:
        hit, inside = interval_hits(cdf, counts, level)
        out[level] = (float(hit.mean()) if hit.size else np.nan, float(inside.mean()) if inside.size else np.nan)
    return out


def _bootstrap(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of sum(numerator) / sum(denominator) over galaxies resampled with replacement."""
    if len(numerator) == 0:
        return np.nan, np.nan
    index = np.random.default_rng(seed).integers(0, len(numerator), (resamples, len(numerator)))
    ratios = numerator[index].sum(axis=1) / np.maximum(denominator[index].sum(axis=1), 1e-300)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def calibrate(alpha: np.ndarray, votes: np.ndarray, train_votes: np.ndarray, tree: DecisionTree, config: CalibrationConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per-question table, reliability curve and headline numbers for test galaxies.

    alpha (G, S, answers) predicted concentrations; votes (G, answers) the test galaxies' counts;
    train_votes the training galaxies' counts (for the constant predictor). The model's coverage
    and its NLL difference from the constant get 95% bootstrap intervals over galaxies.
    """
    levels = tuple(sorted(set(config.levels)))
    all_levels = tuple(sorted(set(levels) | set(CURVE_LEVELS)))
    g = len(votes)
    rows, curve = [], []
    pooled: dict[str, dict[float, list]] = {"model": {lv: [] for lv in all_levels}, "constant": {lv: [] for lv in all_levels}}
    model_nll_all = question_nll(votes, alpha, tree)
    total_model, total_constant = np.zeros(g), np.zeros(g)
    hits_per_galaxy = {level: np.zeros(g) for level in levels}
    pairs_per_galaxy = np.zeros(g)
    for q, (question, (first, last)) in enumerate(zip(tree.questions, tree.question_index_groups)):
        observed = votes[:, first : last + 1]
        totals = observed.sum(axis=1)
        mask = totals >= config.min_votes
        constant_alpha = fit_constant(train_votes[:, first : last + 1])
        a = alpha[mask, :, first : last + 1]
        counts, n = observed[mask], totals[mask]
        model_nll = model_nll_all[mask, q]
        constant_nll = -log_pmf(counts, constant_alpha[None, :]) if mask.any() else np.zeros(0)
        total_model[mask] += model_nll
        total_constant[mask] += constant_nll
        difference = model_nll - constant_nll
        low, high = _bootstrap(difference, np.ones_like(difference))
        row = {
            "question": question.name, "n_galaxies": int(mask.sum()), "median_votes": float(np.median(n)) if mask.any() else np.nan,
            "nll_model": float(model_nll.mean()) if mask.any() else np.nan,
            "nll_constant": float(constant_nll.mean()) if mask.any() else np.nan,
            "nll_difference": float(difference.mean()) if mask.any() else np.nan, "nll_difference_low": low, "nll_difference_high": high,
        }
        model_cdf = mixture_cdf(a, n)
        constant_cdf = mixture_cdf(np.broadcast_to(constant_alpha, (len(n), 1, len(constant_alpha))), n)
        pairs_per_galaxy[mask] += counts.shape[1]
        for level in all_levels:
            hit, inside = interval_hits(model_cdf, counts, level)
            coverage_value, expected = (float(hit.mean()), float(inside.mean())) if hit.size else (np.nan, np.nan)
            pooled["model"][level].append((coverage_value, expected, counts.size))
            curve.append({"question": question.name, "predictor": "model", "level": level, "coverage": coverage_value, "expected": expected, "n_pairs": counts.size})
            if level in levels:
                per_galaxy = hit.sum(axis=1).astype(float)
                hits_per_galaxy[level][mask] += per_galaxy
                row[f"coverage_{level:g}"], row[f"expected_{level:g}"] = coverage_value, expected
                row[f"coverage_{level:g}_low"], row[f"coverage_{level:g}_high"] = _bootstrap(per_galaxy, np.full(len(per_galaxy), float(counts.shape[1])))
        for level, (hit, inside) in coverage(constant_cdf, counts, all_levels).items():
            pooled["constant"][level].append((hit, inside, counts.size))
            if level in levels:
                row[f"constant_coverage_{level:g}"], row[f"constant_expected_{level:g}"] = hit, inside
            curve.append({"question": question.name, "predictor": "constant", "level": level, "coverage": hit, "expected": inside, "n_pairs": counts.size})
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in ("model", "constant"):
        for level in all_levels:
            parts = [(h, e, w) for h, e, w in pooled[name][level] if w]
            weights = [w for _, _, w in parts]
            curve.append({
                "question": "all", "predictor": name, "level": level, "n_pairs": int(sum(weights)),
                "coverage": float(np.average([h for h, _, _ in parts], weights=weights)) if parts else np.nan,
                "expected": float(np.average([e for _, e, _ in parts], weights=weights)) if parts else np.nan,
            })
    curve_table = pd.DataFrame(curve)
    pooled_rows = curve_table[(curve_table["question"] == "all") & curve_table["level"].isin(levels)]
    coverage_headline = {}
    for level in levels:
        by = {p: {"coverage": float(r["coverage"]), "expected": float(r["expected"])}
              for p, r in pooled_rows[pooled_rows["level"] == level].set_index("predictor").iterrows()}
        by.setdefault("model", {})["interval"] = list(_bootstrap(hits_per_galaxy[level], pairs_per_galaxy))
        coverage_headline[f"{level:g}"] = by
    difference = total_model - total_constant
    headline = {
        "n_test": int(g),
        "nll_per_galaxy": {
            "model": float(total_model.mean()), "constant": float(total_constant.mean()),
            "difference": float(difference.mean()), "difference_interval": list(_bootstrap(difference, np.ones(g))),
        } if g else None,
        "coverage": coverage_headline,
        "n_samples": int(alpha.shape[1]) if alpha.ndim == 3 else 0,
        "min_votes": config.min_votes,
        "intervals": "95% bootstrap over test galaxies (1000 resamples)",
    }
    return table, curve_table, headline


def calibration_files(
    samples_path: Path | str, shard_dir: Path | str, tree: DecisionTree, table_path: Path | str, curve_path: Path | str,
    headline_path: Path | str, figure_path: Path | str, config: CalibrationConfig,
) -> dict:
    """The calibration rule: coverage and held-out likelihood of the test split's predictions (CSV, CSV, JSON, figure)."""
    from zoobot_core.dirichlet import samples_array
    from zoobot_core.figures import plot_calibration
    from zoobot_core.io import atomic_write_table, write_json

    shard_dir = Path(shard_dir)
    ids, alpha = samples_array(pd.read_parquet(samples_path), tree.label_cols)
    test = pd.read_parquet(shard_dir / "test_catalog.parquet", columns=["id_str", *tree.label_cols]).set_index("id_str")
    if set(ids) != set(test.index):
        raise ValueError(f"Prediction samples cover {len(set(ids) & set(test.index))} of {len(test)} test galaxies; rerun predict")
    votes = test.loc[ids, tree.label_cols].to_numpy(np.float64)
    train_votes = pd.read_parquet(shard_dir / "train_catalog.parquet", columns=tree.label_cols).to_numpy(np.float64)
    table, curve, headline = calibrate(alpha, votes, train_votes, tree, config)
    atomic_write_table(table, table_path)
    atomic_write_table(curve, curve_path)
    write_json(headline, headline_path)
    plot_calibration(table, curve, figure_path)
    for level, by in headline["coverage"].items():
        log.info("Central %s intervals: coverage %.3f (95%% interval %.3f-%.3f; a calibrated model: %.3f); constant predictor %.3f (%.3f)",
                 level, by["model"]["coverage"], *by["model"]["interval"], by["model"]["expected"], by["constant"]["coverage"], by["constant"]["expected"])
    if headline["nll_per_galaxy"]:
        nll = headline["nll_per_galaxy"]
        log.info("Held-out Dirichlet-Multinomial NLL per galaxy: model %.3f vs constant %.3f (difference %.3f, 95%% interval %.3f to %.3f)",
                 nll["model"], nll["constant"], nll["difference"], *nll["difference_interval"])
    return headline
