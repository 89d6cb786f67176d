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
PIT_BINS = 10


def predictor_prefix(name: str) -> str:
    """Column prefix of a scored posterior in the calibration table: none for `model` (the one predictions use), `raw_` for `raw`."""
    return "" if name == "model" else f"{name}_"
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


def randomised_pit(cdf: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised probability integral transform of each count: F(y - 1) + V (F(y) - F(y - 1)), V ~ U(0, 1).

    cdf (..., n_max + 1) and integer counts (...). Uniform on [0, 1] exactly when the counts follow the
    predicted distribution, so its histogram shows how a posterior is wrong: a U (too narrow), a hump (too wide), a slope (biased).
    The calibration table pools every answer of a question, except the second of a two-answer question (its PIT mirrors the first's).
    """
    y = counts.astype(np.int64)[..., None]
    upper = np.take_along_axis(cdf, y, axis=-1)[..., 0]
    lower = np.where(y[..., 0] > 0, np.take_along_axis(cdf, np.maximum(y - 1, 0), axis=-1)[..., 0], 0.0)
    return lower + rng.uniform(size=upper.shape) * (upper - lower)


def _score(name: str, alpha: np.ndarray, counts: np.ndarray, nll: np.ndarray, constant_nll: np.ndarray, levels: tuple[float, ...],
           all_levels: tuple[float, ...], row: dict, curve: list, pit: list, question: str, rng: np.random.Generator) -> dict[float, np.ndarray]:
    """One predictor's figures on one question: fills `row` (prefixed columns), the curve and PIT rows; returns hits per galaxy per level."""
    prefix = predictor_prefix(name)
    difference = nll - constant_nll
    low, high = _bootstrap(difference, np.ones_like(difference))
    asked = len(counts) > 0
    row[f"nll_{name}"] = float(nll.mean()) if asked else np.nan
    row[f"{prefix}nll_difference"] = float(difference.mean()) if asked else np.nan
    row[f"{prefix}nll_difference_low"], row[f"{prefix}nll_difference_high"] = low, high
    cdf = mixture_cdf(alpha, counts.sum(axis=1))
    hits = {}
    for level in all_levels:
        hit, inside = interval_hits(cdf, counts, level)
        coverage_value, expected = (float(hit.mean()), float(inside.mean())) if hit.size else (np.nan, np.nan)
        curve.append({"question": question, "predictor": name, "level": level, "coverage": coverage_value, "expected": expected, "n_pairs": counts.size})
        if level in levels:
            per_galaxy = hit.sum(axis=1).astype(float)
            hits[level] = per_galaxy
            row[f"{prefix}coverage_{level:g}"], row[f"{prefix}expected_{level:g}"] = coverage_value, expected
            row[f"{prefix}coverage_{level:g}_low"], row[f"{prefix}coverage_{level:g}_high"] = _bootstrap(per_galaxy, np.full(len(per_galaxy), float(counts.shape[1])))
    u = randomised_pit(cdf, counts, rng)
    u = (u[:, :1] if counts.shape[1] == 2 else u).ravel()  # two answers: the second's PIT is about 1 - the first's, and would hide a slope
    histogram = np.histogram(u, bins=PIT_BINS, range=(0, 1))[0] / max(u.size, 1)
    pit.extend({"question": question, "predictor": name, "bin_low": b / PIT_BINS, "bin_high": (b + 1) / PIT_BINS, "fraction": float(f), "n_pairs": int(u.size)}
               for b, f in enumerate(histogram))
    return hits


def calibrate(
    alpha: np.ndarray, votes: np.ndarray, train_votes: np.ndarray, tree: DecisionTree, config: CalibrationConfig, raw_alpha: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """Per-question table, reliability curve, headline numbers and PIT histograms for test galaxies.

    alpha (G, S, answers) the concentrations predictions use (recalibrated where the model has a
    recalibration); raw_alpha, if given, the network's own, scored beside them as predictor `raw`
    (columns raw_*); votes (G, answers) the test galaxies' counts; train_votes the training
    galaxies' counts (for the constant predictor). Coverage and NLL differences from the constant
    get 95% bootstrap intervals over galaxies.
    """
    levels = tuple(sorted(set(config.levels)))
    all_levels = tuple(sorted(set(levels) | set(CURVE_LEVELS)))
    predictors = {"model": alpha, **({"raw": raw_alpha} if raw_alpha is not None else {})}
    g = len(votes)
    rng = np.random.default_rng(0)
    rows, curve, pit = [], [], []
    nll_all = {name: question_nll(votes, a, tree) for name, a in predictors.items()}
    total = {name: np.zeros(g) for name in [*predictors, "constant"]}
    hits_per_galaxy = {name: {level: np.zeros(g) for level in levels} for name in predictors}
    pairs_per_galaxy = np.zeros(g)
    for q, (question, (first, last)) in enumerate(zip(tree.questions, tree.question_index_groups)):
        observed = votes[:, first : last + 1]
        totals = observed.sum(axis=1)
        mask = totals >= config.min_votes
        constant_alpha = fit_constant(train_votes[:, first : last + 1])
        counts, n = observed[mask], totals[mask]
        constant_nll = -log_pmf(counts, constant_alpha[None, :]) if mask.any() else np.zeros(0)
        total["constant"][mask] += constant_nll
        pairs_per_galaxy[mask] += counts.shape[1]
        row = {"question": question.name, "n_galaxies": int(mask.sum()), "median_votes": float(np.median(n)) if mask.any() else np.nan}
        for name, a in predictors.items():
            nll = nll_all[name][mask, q]
            total[name][mask] += nll
            for level, per_galaxy in _score(name, a[mask, :, first : last + 1], counts, nll, constant_nll, levels, all_levels, row, curve, pit,
                                            question.name, rng).items():
                hits_per_galaxy[name][level][mask] += per_galaxy
        row["nll_constant"] = float(constant_nll.mean()) if mask.any() else np.nan
        constant_cdf = mixture_cdf(np.broadcast_to(constant_alpha, (len(n), 1, len(constant_alpha))), n)
        for level, (hit, inside) in coverage(constant_cdf, counts, all_levels).items():
            if level in levels:
                row[f"constant_coverage_{level:g}"], row[f"constant_expected_{level:g}"] = hit, inside
            curve.append({"question": question.name, "predictor": "constant", "level": level, "coverage": hit, "expected": inside, "n_pairs": counts.size})
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in [*predictors, "constant"]:
        for level in all_levels:
            parts = [r for r in curve if r["predictor"] == name and r["level"] == level and r["n_pairs"]]
            weights = [r["n_pairs"] for r in parts]
            curve.append({
                "question": "all", "predictor": name, "level": level, "n_pairs": int(sum(weights)),
                "coverage": float(np.average([r["coverage"] for r in parts], weights=weights)) if parts else np.nan,
                "expected": float(np.average([r["expected"] for r in parts], weights=weights)) if parts else np.nan,
            })
    curve_table = pd.DataFrame(curve)
    pooled_rows = curve_table[(curve_table["question"] == "all") & curve_table["level"].isin(levels)]
    coverage_headline = {}
    for level in levels:
        by = {p: {"coverage": float(r["coverage"]), "expected": float(r["expected"])}
              for p, r in pooled_rows[pooled_rows["level"] == level].set_index("predictor").iterrows()}
        for name in predictors:
            by.setdefault(name, {})["interval"] = list(_bootstrap(hits_per_galaxy[name][level], pairs_per_galaxy))
        coverage_headline[f"{level:g}"] = by
    nll_headline = None
    if g:
        nll_headline = {"constant": float(total["constant"].mean())}
        for name in predictors:
            prefix = predictor_prefix(name)
            difference = total[name] - total["constant"]
            nll_headline.update({name: float(total[name].mean()), f"{prefix}difference": float(difference.mean()),
                                 f"{prefix}difference_interval": list(_bootstrap(difference, np.ones(g)))})
    headline = {
        "n_test": int(g),
        "nll_per_galaxy": nll_headline,
        "coverage": coverage_headline,
        "questions_covering_promise": {name: _questions_covering(table, name, levels) for name in predictors},
        "n_samples": int(alpha.shape[1]) if alpha.ndim == 3 else 0,
        "min_votes": config.min_votes,
        "intervals": "95% bootstrap over test galaxies (1000 resamples)",
    }
    return table, curve_table, headline, pd.DataFrame(pit)


def _questions_covering(table: pd.DataFrame, name: str, levels: tuple[float, ...]) -> dict[str, int]:
    """How many questions' bootstrap coverage intervals hold the probability promised, per level (and at every level)."""
    prefix = predictor_prefix(name)
    held = {f"{level:g}": ((table[f"{prefix}coverage_{level:g}_low"] <= table[f"{prefix}expected_{level:g}"])
                           & (table[f"{prefix}expected_{level:g}"] <= table[f"{prefix}coverage_{level:g}_high"])) for level in levels}
    out = {level: int(h.sum()) for level, h in held.items()}
    out["every_level"] = int(np.logical_and.reduce(list(held.values())).sum()) if held else 0
    out["of"] = int(table["n_galaxies"].gt(0).sum())
    return out


def calibration_files(
    samples_path: Path | str, shard_dir: Path | str, tree: DecisionTree, table_path: Path | str, curve_path: Path | str,
    headline_path: Path | str, figure_path: Path | str, config: CalibrationConfig, recalibration_path: Path | str | None = None,
    pit_path: Path | str | None = None, pit_figure_path: Path | str | None = None,
) -> dict:
    """The calibration rule: coverage, held-out likelihood and PIT of the test split's predictions (CSV, CSV, JSON, figures).

    Where the samples are recalibrated (their Parquet metadata records the map predict applied; for files without
    that record, `recalibration_path`, the model's recalibration.json, says so) the network's raw posterior is
    recovered from them and scored beside it. A `recalibration_path` that disagrees with the record is refused.
    """
    from zoobot_core.dirichlet import samples_array
    from zoobot_core.figures import plot_calibration, plot_pit
    from zoobot_core.io import atomic_write_table, write_json
    from zoobot_core.recalibration import raw_from_samples

    shard_dir = Path(shard_dir)
    ids, alpha = samples_array(pd.read_parquet(samples_path), tree.label_cols)
    test = pd.read_parquet(shard_dir / "test_catalog.parquet", columns=["id_str", *tree.label_cols]).set_index("id_str")
    if set(ids) != set(test.index):
        raise ValueError(f"Prediction samples cover {len(set(ids) & set(test.index))} of {len(test)} test galaxies; rerun predict")
    votes = test.loc[ids, tree.label_cols].to_numpy(np.float64)
    train_votes = pd.read_parquet(shard_dir / "train_catalog.parquet", columns=tree.label_cols).to_numpy(np.float64)
    raw, recalibration = raw_from_samples(alpha, samples_path, tree, recalibration_path)
    raw = raw if recalibration is not None else None
    table, curve, headline, pit = calibrate(alpha, votes, train_votes, tree, config, raw_alpha=raw)
    headline["posterior"] = (f"recalibrated on the validation split ({recalibration['method']} per question; raw network beside it as 'raw')"
                             if recalibration is not None else "raw network (recalibration off)")
    if recalibration is not None:
        headline["recalibration"] = {name: {k: q[k] for k in ("scale", "power", "status")} for name, q in recalibration["questions"].items()}
    atomic_write_table(table, table_path)
    atomic_write_table(curve, curve_path)
    write_json(headline, headline_path)
    plot_calibration(table, curve, figure_path)
    if pit_path is not None:
        atomic_write_table(pit, pit_path)
    if pit_figure_path is not None:
        plot_pit(pit, pit_figure_path)
    for level, by in headline["coverage"].items():
        for name in ("raw", "model"):
            if name in by:
                log.info("Central %s intervals, %s: coverage %.3f (95%% interval %.3f-%.3f; promised %.3f); constant predictor %.3f (%.3f)",
                         level, "recalibrated" if name == "model" and recalibration else name, by[name]["coverage"], *by[name]["interval"],
                         by[name]["expected"], by["constant"]["coverage"], by["constant"]["expected"])
    if headline["nll_per_galaxy"]:
        nll = headline["nll_per_galaxy"]
        log.info("Held-out Dirichlet-Multinomial NLL per galaxy: model %.3f vs constant %.3f (difference %.3f, 95%% interval %.3f to %.3f)%s",
                 nll["model"], nll["constant"], nll["difference"], *nll["difference_interval"],
                 f"; raw network {nll['raw']:.3f} (difference {nll['raw_difference']:.3f})" if "raw" in nll else "")
    return headline
