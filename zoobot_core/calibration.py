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

The figures are accumulated BLOCK galaxies at a time, at fixed positions in the galaxies' order
(CalibrationAccumulator): the in-memory `calibrate` and the calibration rule, which streams the
samples file (`streamed_calibration`), share that code and give the same numbers however the file
is read. Kept per galaxy are only what the bootstraps resample (a few numbers per question).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.dirichlet import beta_binomial_cdf, fit_constant, log_pmf, question_nll
from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)

CURVE_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
PIT_BINS = 10
PIT_SEED = 0
BLOCK = 1024  # galaxies scored together, at fixed positions: sums and PIT draws do not depend on how the galaxies are fed
BOOTSTRAP_RESAMPLES = 1000
_BATCH_ELEMENTS = 4_000_000
_RESAMPLE_BUDGET = 1 << 20  # bootstrap resample indices held at once (8 MB, and as much for the values gathered)


def predictor_prefix(name: str) -> str:
    """Column prefix of a scored posterior in the calibration table: none for `model` (the one predictions use), `raw_` for `raw`."""
    return "" if name == "model" else f"{name}_"


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


def _bootstrap_many(pairs: list[tuple[np.ndarray, np.ndarray | float]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                    budget: int | None = None) -> list[tuple[float, float]]:
    """_bootstrap of several (numerator, denominator) of the same galaxies on the same resamples. A float denominator
    stands for that value at every galaxy. The resamples are the rows of default_rng(seed).integers(0, n, (resamples, n)),
    drawn at most `budget` indices at a time from the one generator: the same indices, so the same numbers, as one draw."""
    n = len(pairs[0][0]) if pairs else 0
    if n == 0:
        return [(np.nan, np.nan)] * len(pairs)
    rng = np.random.default_rng(seed)
    rows = max(1, (budget or _RESAMPLE_BUDGET) // n)
    ratios = np.empty((len(pairs), resamples))
    for start in range(0, resamples, rows):
        index = rng.integers(0, n, (min(rows, resamples - start), n))
        for j, (numerator, denominator) in enumerate(pairs):
            # a constant d summed over n galaxies is n d exactly (integers below 2^53, as vote and pair counts are)
            total = denominator * n if np.isscalar(denominator) else denominator[index].sum(axis=1)
            ratios[j, start : start + len(index)] = numerator[index].sum(axis=1) / np.maximum(total, 1e-300)
    return [(float(low), float(high)) for low, high in np.percentile(ratios, [2.5, 97.5], axis=1).T]


def _bootstrap(numerator: np.ndarray, denominator: np.ndarray | float, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
               budget: int | None = None) -> tuple[float, float]:
    """95% percentile interval of sum(numerator) / sum(denominator) over galaxies resampled with replacement."""
    return _bootstrap_many([(numerator, denominator)], resamples, seed, budget)[0]


def _pit_bounds(cdf: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F(y - 1), F(y)) of each integer count y under its CDF (..., n_max + 1)."""
    y = counts.astype(np.int64)[..., None]
    upper = np.take_along_axis(cdf, y, axis=-1)[..., 0]
    lower = np.where(y[..., 0] > 0, np.take_along_axis(cdf, np.maximum(y - 1, 0), axis=-1)[..., 0], 0.0)
    return lower, upper


def randomised_pit(cdf: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised probability integral transform of each count: F(y - 1) + V (F(y) - F(y - 1)), V ~ U(0, 1).

    cdf (..., n_max + 1) and integer counts (...). Uniform on [0, 1] exactly when the counts follow the
    predicted distribution, so its histogram shows how a posterior is wrong: a U (too narrow), a hump (too wide), a slope (biased).
    The calibration table pools every answer of a question, except the second of a two-answer question (its PIT mirrors the first's).
    """
    lower, upper = _pit_bounds(cdf, counts)
    return lower + rng.uniform(size=upper.shape) * (upper - lower)


@dataclass
class _Sums:
    """Running sums of one predictor on one question: NLL, interval hits and probability inside per curve level, PIT histogram."""

    levels: int
    nll: float = 0.0
    hits: np.ndarray = field(init=False)
    inside: np.ndarray = field(init=False)
    pit: np.ndarray = field(init=False)
    pit_pairs: int = 0

    def __post_init__(self) -> None:
        self.hits, self.inside, self.pit = np.zeros(self.levels, np.int64), np.zeros(self.levels), np.zeros(PIT_BINS, np.int64)


class CalibrationAccumulator:
    """What `calibrate` reports, from test galaxies fed in order a batch at a time (any batch sizes, `n_galaxies` in all).

    Galaxies are scored BLOCK at a time at fixed positions, and each block's PIT draws are seeded by (PIT_SEED,
    block, question, predictor), so sums and draws do not depend on the batches. Kept per galaxy: which questions
    count, each predictor's NLL difference from the constant and interval hits at the reported levels per question
    (uint8), and total NLLs: what the bootstraps resample. Everything else is a running sum.
    """

    def __init__(self, tree: DecisionTree, config: CalibrationConfig, train_votes: np.ndarray, n_galaxies: int, raw: bool = False) -> None:
        self.tree, self.config, self.n_galaxies = tree, config, n_galaxies
        self.levels = tuple(sorted(set(config.levels)))
        self.all_levels = tuple(sorted(set(self.levels) | set(CURVE_LEVELS)))
        self.predictors = ("model", "raw") if raw else ("model",)
        self.constant = [fit_constant(train_votes[:, first : last + 1]) for first, last in tree.question_index_groups]
        questions = len(tree.questions)
        self.mask = np.zeros((n_galaxies, questions), bool)
        self.difference = {name: np.zeros((n_galaxies, questions)) for name in self.predictors}
        self.hits = {name: np.zeros((n_galaxies, questions, len(self.levels)), np.uint8) for name in self.predictors}
        self.total = {name: np.zeros(n_galaxies) for name in (*self.predictors, "constant")}
        self.sums = {(name, q): _Sums(len(self.all_levels)) for name in (*self.predictors, "constant") for q in range(questions)}
        self.vote_totals: list[dict[float, int]] = [{} for _ in range(questions)]  # {votes: galaxies} per question, for the median
        self.n_samples: int | None = None
        self.n_added = 0
        self._scored = 0
        self._pending: deque[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = deque()
        self._n_pending = 0

    def add(self, alpha: np.ndarray, votes: np.ndarray, raw_alpha: np.ndarray | None = None) -> None:
        """The next galaxies: alpha (g, S, answers) as predictions use them, votes (g, answers), raw_alpha like alpha where raw is scored."""
        if (raw_alpha is not None) != ("raw" in self.predictors):
            raise ValueError(f"raw_alpha must be given exactly when the raw posterior is scored (predictors {self.predictors})")
        if self.n_samples is None:
            self.n_samples = int(alpha.shape[1])
        elif len(alpha) and alpha.shape[1] != self.n_samples:
            raise ValueError(f"Galaxies with {alpha.shape[1]} samples after galaxies with {self.n_samples}; every galaxy needs the same number")
        if self.n_added + len(votes) > self.n_galaxies:
            raise ValueError(f"More than the {self.n_galaxies} galaxies the accumulator was made for")
        self._pending.append((alpha, raw_alpha, np.asarray(votes, np.float64)))
        self._n_pending += len(votes)
        self.n_added += len(votes)
        while self._n_pending >= BLOCK:
            self._score_block(*self._take(BLOCK))

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The next n pending galaxies, as one (alpha, raw, votes)."""
        parts = []
        self._n_pending -= n
        while n or (self._pending and not len(self._pending[0][2])):
            alpha, raw, votes = self._pending[0]
            if len(votes) <= n:
                parts.append(self._pending.popleft())
                n -= len(votes)
            else:
                parts.append((alpha[:n], None if raw is None else raw[:n], votes[:n]))
                self._pending[0] = (alpha[n:], None if raw is None else raw[n:], votes[n:])
                n = 0
        if len(parts) == 1:
            return parts[0]
        return tuple(None if parts[0][i] is None else np.concatenate([p[i] for p in parts]) for i in range(3))

    def _intervals(self, sums: _Sums, cdf: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add interval hits and probability inside at every curve level; returns each galaxy's hits at the reported levels."""
        per_galaxy = np.zeros((len(counts), len(self.levels)), np.uint8)
        for i, level in enumerate(self.all_levels):
            hit, inside = interval_hits(cdf, counts, level)
            sums.hits[i] += int(hit.sum())
            sums.inside[i] += float(inside.sum())
            if level in self.levels:
                per_galaxy[:, self.levels.index(level)] = hit.sum(axis=1)
        return per_galaxy

    def _score_block(self, alpha: np.ndarray, raw: np.ndarray | None, votes: np.ndarray) -> None:
        """Score one block of galaxies: the next positions, BLOCK of them (fewer only at the end)."""
        start, g = self._scored, len(votes)
        alphas = {"model": alpha, **({"raw": raw} if raw is not None else {})}
        nll = {name: question_nll(votes, a, self.tree) for name, a in alphas.items()}
        for q, (first, last) in enumerate(self.tree.question_index_groups):
            observed = votes[:, first : last + 1]
            totals = observed.sum(axis=1)
            mask = totals >= self.config.min_votes
            self.mask[start : start + g, q] = mask
            if not mask.any():
                continue
            positions = start + np.flatnonzero(mask)
            counts, n = observed[mask], totals[mask]
            for value, galaxies in zip(*np.unique(n, return_counts=True)):
                self.vote_totals[q][float(value)] = self.vote_totals[q].get(float(value), 0) + int(galaxies)
            constant_nll = -log_pmf(counts, self.constant[q][None, :])
            self.total["constant"][positions] += constant_nll
            self.sums["constant", q].nll += float(constant_nll.sum())
            self._intervals(self.sums["constant", q], mixture_cdf(np.broadcast_to(self.constant[q], (len(n), 1, counts.shape[1])), n), counts)
            for p, name in enumerate(self.predictors):
                sums, this = self.sums[name, q], nll[name][mask, q]
                self.total[name][positions] += this
                self.difference[name][positions, q] = this - constant_nll
                sums.nll += float(this.sum())
                cdf = mixture_cdf(alphas[name][mask, :, first : last + 1], n)
                self.hits[name][positions, q] = self._intervals(sums, cdf, counts)
                draws = np.random.default_rng([PIT_SEED, start // BLOCK, q, p]).uniform(size=(BLOCK, counts.shape[1]))[:g][mask]
                lower, upper = _pit_bounds(cdf, counts)
                u = lower + draws * (upper - lower)
                u = (u[:, :1] if counts.shape[1] == 2 else u).ravel()  # two answers: the second's PIT is about 1 - the first's, and would hide a slope
                sums.pit += np.histogram(u, bins=PIT_BINS, range=(0, 1))[0]
                sums.pit_pairs += u.size
        self._scored += g

    def result(self) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
        """(per-question table, reliability curve, headline numbers, PIT histograms) of every galaxy added."""
        if self._n_pending:
            self._score_block(*self._take(self._n_pending))
        if self.n_added != self.n_galaxies:
            raise ValueError(f"{self.n_added} galaxies were added to a calibration of {self.n_galaxies}")
        rows, curve, pit = [], [], []
        for q, (question, (first, last)) in enumerate(zip(self.tree.questions, self.tree.question_index_groups)):
            rows.append(self._question(q, question.name, last - first + 1, curve, pit))
        table, curve_table = pd.DataFrame(rows), _with_pooled_curve(curve, (*self.predictors, "constant"), self.all_levels)
        return table, curve_table, self._headline(table, curve_table), pd.DataFrame(pit)

    def _question(self, q: int, question: str, k: int, curve: list, pit: list) -> dict:
        """One question's table row; appends its curve and PIT rows."""
        mask = self.mask[:, q]
        m, pairs = int(mask.sum()), int(mask.sum()) * k
        row = {"question": question, "n_galaxies": m, "median_votes": _median(self.vote_totals[q])}
        for name in (*self.predictors, "constant"):
            sums, prefix = self.sums[name, q], predictor_prefix(name)
            row[f"nll_{name}"] = sums.nll / m if m else np.nan
            coverages = sums.hits / pairs if pairs else np.full(len(self.all_levels), np.nan)
            expected = sums.inside / pairs if pairs else np.full(len(self.all_levels), np.nan)
            curve.extend({"question": question, "predictor": name, "level": level, "coverage": float(c), "expected": float(e), "n_pairs": pairs}
                         for level, c, e in zip(self.all_levels, coverages, expected))
            reported = [self.all_levels.index(level) for level in self.levels]
            if name == "constant":
                for level, i in zip(self.levels, reported):
                    row[f"constant_coverage_{level:g}"], row[f"constant_expected_{level:g}"] = float(coverages[i]), float(expected[i])
                continue
            difference, hits = self.difference[name][mask, q], self.hits[name][mask, q].astype(float)
            intervals = _bootstrap_many([(difference, 1.0), *((hits[:, j], float(k)) for j in range(len(self.levels)))])
            row[f"{prefix}nll_difference"] = float(difference.mean()) if m else np.nan
            row[f"{prefix}nll_difference_low"], row[f"{prefix}nll_difference_high"] = intervals[0]
            for level, i, interval in zip(self.levels, reported, intervals[1:]):
                row[f"{prefix}coverage_{level:g}"], row[f"{prefix}expected_{level:g}"] = float(coverages[i]), float(expected[i])
                row[f"{prefix}coverage_{level:g}_low"], row[f"{prefix}coverage_{level:g}_high"] = interval
            fractions = sums.pit / max(sums.pit_pairs, 1)
            pit.extend({"question": question, "predictor": name, "bin_low": b / PIT_BINS, "bin_high": (b + 1) / PIT_BINS, "fraction": float(f),
                        "n_pairs": int(sums.pit_pairs)} for b, f in enumerate(fractions))
        return row

    def _headline(self, table: pd.DataFrame, curve: pd.DataFrame) -> dict:
        """Pooled coverage and NLL per galaxy, with bootstrap intervals over galaxies, and how many questions keep their promise."""
        g = self.n_galaxies
        sizes = np.array([last - first + 1 for first, last in self.tree.question_index_groups], float)
        pairs_per_galaxy = (self.mask * sizes).sum(axis=1)
        pairs = [(self.hits[name][:, :, j].sum(axis=1).astype(float), pairs_per_galaxy) for name in self.predictors for j in range(len(self.levels))]
        differences = {name: self.total[name] - self.total["constant"] for name in self.predictors}
        intervals = iter(_bootstrap_many([*pairs, *((differences[name], 1.0) for name in self.predictors)]))
        pooled = curve[(curve["question"] == "all") & curve["level"].isin(self.levels)]
        coverage_headline = {f"{level:g}": {p: {"coverage": float(r["coverage"]), "expected": float(r["expected"])}
                                            for p, r in pooled[pooled["level"] == level].set_index("predictor").iterrows()} for level in self.levels}
        for name in self.predictors:
            for level in self.levels:
                coverage_headline[f"{level:g}"].setdefault(name, {})["interval"] = list(next(intervals))
        nll_headline = None
        if g:
            nll_headline = {"constant": float(self.total["constant"].mean())}
            for name in self.predictors:
                prefix = predictor_prefix(name)
                nll_headline.update({name: float(self.total[name].mean()), f"{prefix}difference": float(differences[name].mean()),
                                     f"{prefix}difference_interval": list(next(intervals))})
        return {
            "n_test": int(g),
            "nll_per_galaxy": nll_headline,
            "coverage": coverage_headline,
            "questions_covering_promise": {name: _questions_covering(table, name, self.levels) for name in self.predictors},
            "n_samples": self.n_samples or 0,
            "min_votes": self.config.min_votes,
            "intervals": f"95% bootstrap over test galaxies ({BOOTSTRAP_RESAMPLES} resamples)",
        }


def _median(counts: dict[float, int]) -> float:
    """np.median of values given as {value: how many times}."""
    if not counts:
        return np.nan
    values = np.array(sorted(counts))
    cumulative = np.cumsum([counts[v] for v in values])
    total = int(cumulative[-1])
    low, high = values[np.searchsorted(cumulative, (total - 1) // 2, side="right")], values[np.searchsorted(cumulative, total // 2, side="right")]
    return float(np.mean([low, high]))


def _with_pooled_curve(curve: list, predictors: tuple[str, ...], levels: tuple[float, ...]) -> pd.DataFrame:
    """The curve with, per predictor and level, the questions pooled (question `all`: weighted by counts)."""
    for name in predictors:
        for level in levels:
            parts = [r for r in curve if r["predictor"] == name and r["level"] == level and r["n_pairs"]]
            weights = [r["n_pairs"] for r in parts]
            curve.append({
                "question": "all", "predictor": name, "level": level, "n_pairs": int(sum(weights)),
                "coverage": float(np.average([r["coverage"] for r in parts], weights=weights)) if parts else np.nan,
                "expected": float(np.average([r["expected"] for r in parts], weights=weights)) if parts else np.nan,
            })
    return pd.DataFrame(curve)


def calibrate(
    alpha: np.ndarray, votes: np.ndarray, train_votes: np.ndarray, tree: DecisionTree, config: CalibrationConfig, raw_alpha: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """Per-question table, reliability curve, headline numbers and PIT histograms for test galaxies.

    alpha (G, S, answers) the concentrations predictions use (recalibrated where the model has a
    recalibration); raw_alpha, if given, the network's own, scored beside them as predictor `raw`
    (columns raw_*); votes (G, answers) the test galaxies' counts; train_votes the training
    galaxies' counts (for the constant predictor). Coverage and NLL differences from the constant
    get 95% bootstrap intervals over galaxies. The same numbers as `streamed_calibration` of a file holding these galaxies.
    """
    accumulator = CalibrationAccumulator(tree, config, train_votes, len(votes), raw=raw_alpha is not None)
    accumulator.add(np.asarray(alpha), votes, raw_alpha)
    return accumulator.result()


def _questions_covering(table: pd.DataFrame, name: str, levels: tuple[float, ...]) -> dict[str, int]:
    """How many questions' bootstrap coverage intervals hold the probability promised, per level (and at every level)."""
    prefix = predictor_prefix(name)
    held = {f"{level:g}": ((table[f"{prefix}coverage_{level:g}_low"] <= table[f"{prefix}expected_{level:g}"])
                           & (table[f"{prefix}expected_{level:g}"] <= table[f"{prefix}coverage_{level:g}_high"])) for level in levels}
    out = {level: int(h.sum()) for level, h in held.items()}
    out["every_level"] = int(np.logical_and.reduce(list(held.values())).sum()) if held else 0
    out["of"] = int(table["n_galaxies"].gt(0).sum())
    return out


def streamed_calibration(
    samples_path: Path | str, shard_dir: Path | str, tree: DecisionTree, config: CalibrationConfig, recalibration_path: Path | str | None = None,
    galaxies_per_read: int = BLOCK, rows_per_read: int = 65536,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame, dict | None]:
    """`calibrate` of the test split's prediction samples file, read `galaxies_per_read` galaxies at a time (dirichlet.iter_samples).

    Memory holds one read, the test and train catalogs' votes and a few numbers per galaxy and question (what the
    bootstraps resample), whatever the number of samples. Where the samples are recalibrated (recorded in their
    metadata, else `recalibration_path`: recalibration.raw_from_samples) the raw posterior is recovered a read at a
    time and scored beside them. Returns calibrate's four results and the recalibration undone (None: raw network).
    """
    from zoobot_core.dirichlet import iter_samples
    from zoobot_core.recalibration import invert_recalibration, raw_from_samples

    shard_dir = Path(shard_dir)
    test = pd.read_parquet(shard_dir / "test_catalog.parquet", columns=["id_str", *tree.label_cols])
    catalog_ids, votes = pd.Index(test["id_str"].astype(str)), test[tree.label_cols].to_numpy(np.float64)
    del test
    if not catalog_ids.is_unique:
        raise ValueError(f"{shard_dir / 'test_catalog.parquet'} lists galaxy {catalog_ids[catalog_ids.duplicated()][0]!r} twice; rerun write_shards")
    train_votes = pd.read_parquet(shard_dir / "train_catalog.parquet", columns=tree.label_cols).to_numpy(np.float64)
    _, recalibration = raw_from_samples(np.zeros((0, 1, len(tree.label_cols))), samples_path, tree, recalibration_path)  # checks the map only
    accumulator = CalibrationAccumulator(tree, config, train_votes, len(votes), raw=recalibration is not None)
    for ids, alpha in iter_samples(samples_path, tree.label_cols, galaxies_per_read, rows_per_read):
        rows = catalog_ids.get_indexer(ids)
        if (rows < 0).any():
            raise ValueError(f"{samples_path} holds galaxy {ids[int(np.argmax(rows < 0))]!r}, which is not in the test catalog; rerun predict")
        accumulator.add(alpha, votes[rows], invert_recalibration(alpha, recalibration, tree) if recalibration is not None else None)
    if accumulator.n_added != len(votes):
        raise ValueError(f"Prediction samples cover {accumulator.n_added} of {len(votes)} test galaxies; rerun predict")
    return (*accumulator.result(), recalibration)


def calibration_files(
    samples_path: Path | str, shard_dir: Path | str, tree: DecisionTree, table_path: Path | str, curve_path: Path | str,
    headline_path: Path | str, figure_path: Path | str, config: CalibrationConfig, recalibration_path: Path | str | None = None,
    pit_path: Path | str | None = None, pit_figure_path: Path | str | None = None, galaxies_per_read: int = BLOCK,
) -> dict:
    """The calibration rule: coverage, held-out likelihood and PIT of the test split's predictions (CSV, CSV, JSON, figures).

    Where the samples are recalibrated (their Parquet metadata records the map predict applied; for files without
    that record, `recalibration_path`, the model's recalibration.json, says so) the network's raw posterior is
    recovered from them and scored beside it. A `recalibration_path` that disagrees with the record is refused.
    The samples file is streamed (`streamed_calibration`): memory does not grow with the number of samples.
    """
    from zoobot_core.figures import plot_calibration, plot_pit
    from zoobot_core.io import atomic_write_table, write_json

    table, curve, headline, pit, recalibration = streamed_calibration(samples_path, shard_dir, tree, config, recalibration_path, galaxies_per_read)
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
