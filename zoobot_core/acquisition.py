"""Which galaxies volunteers should label next: BALD mutual information from MC-dropout samples.

For one question, each dropout sample s gives Dirichlet concentrations alpha_s and so a
Dirichlet-Multinomial p_s(y) over how n volunteers would split their votes. BALD (Houlsby et al.
2011; Walmsley et al. 2020) scores a galaxy by the mutual information between those votes and the
model's weights,
    I = H[mean_s p_s] - mean_s H[p_s],
high where the samples are individually confident but disagree with each other: the votes would
teach the model the most. Equivalently, with w_s(y) = p_s(y) / sum_s' p_s'(y) the posterior over
samples once votes y are seen,
    I = sum_y pbar(y) (log S - H[w(y)]),
a sum of non-negative terms. That form is used here: it is exactly 0 when every sample agrees and
can never go negative through rounding or Monte Carlo noise.

Exact: every outcome y (C(n + K - 1, K - 1) of them: 41 for two answers at n = 40, 861 for three).
Questions with more outcomes than `exact_max_outcomes` (four to six answers at n = 40: 12 thousand
to 1.2 million) use Monte Carlo over outcomes: `mc_draws` vote splits drawn from pbar, stratified
evenly over the samples (Dirichlet, then multinomial), each scored exactly by log S - H[w(y)].
(The draws are rounded up to a multiple of the number of samples.) The estimate is unbiased; its
error against exact values is in docs/benchmarks.md (tests/benchmarks/bench_acquisition.py).

With test-time augmentation (predict.tta_views > 1) the views' samples are pooled like dropout
samples, so disagreement between rotated views also counts as information.

Weighting each question's information at n volunteers by its reach approximates computing it for
the n x reach volunteers expected to answer it (information grows less than linearly with votes,
so the weighting slightly favours questions late in the tree over that alternative).

A galaxy's total is the sum over questions of I, each weighted by the fraction of volunteers
expected to reach the question (the product of the predicted fractions of the answers leading to it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import gammaln
from tqdm import tqdm

from zoobot_core.dirichlet import expected_vote_fractions
from zoobot_core.images import ResizeConfig
from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)

BATCH = 1024  # galaxies per batch; fixed, so Monte Carlo draws (seeded per batch) do not depend on the machine
_EXACT_ELEMENTS = 4_000_000  # (galaxies x samples x outcomes) per exact block: ~100 MB of float64 temporaries


@dataclass(frozen=True)
class AcquireConfig:
    """Volunteers per galaxy, how many galaxies to list, and when to switch from exact to Monte Carlo."""

    n_volunteers: int = 40
    top_n: int = 100
    exact_max_outcomes: int = 1000
    mc_draws: int = 128
    montage: int = 24
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_volunteers < 1 or self.mc_draws < 1 or self.top_n < 0:
            raise ValueError(f"acquire needs n_volunteers >= 1, mc_draws >= 1 and top_n >= 0; got {self}")


def n_outcomes(n: int, k: int) -> int:
    """How many ways n volunteers can split their votes over k answers."""
    return math.comb(n + k - 1, k - 1)


def vote_outcomes(n: int, k: int) -> np.ndarray:
    """Every split of n votes over k answers, (C(n + k - 1, k - 1), k), by stars and bars."""
    rows = []
    for bars in combinations(range(n + k - 1), k - 1):
        edges = (-1, *bars, n + k - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(k)])
    return np.asarray(rows, dtype=np.int64)


def _count_terms(alpha: np.ndarray, n: int) -> np.ndarray:
    """log Gamma(y + alpha) - log Gamma(alpha) for y = 0..n: alpha (...) -> (..., n + 1), by a running sum of logs."""
    steps = np.log(alpha[..., None] + np.arange(n, dtype=np.float64))
    return np.concatenate([np.zeros((*alpha.shape, 1)), np.cumsum(steps, axis=-1)], axis=-1)


def _information_terms(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log S - H[w], log mean_s exp(log_weights)) per outcome, w the softmax over axis 1 (samples) of log_weights (G, S, ...).

    log S - H[w] = log S + sum_s w_s log w_s, computed from one exponential pass; never below 0.
    """
    n_samples = log_weights.shape[1]
    top = log_weights.max(axis=1, keepdims=True)
    shifted = log_weights - top
    e = np.exp(shifted)
    z = e.sum(axis=1)
    e *= shifted
    log_z = np.log(z)
    information = np.maximum(np.log(n_samples) + e.sum(axis=1) / z - log_z, 0.0)
    return information, top[:, 0] + log_z - np.log(n_samples)


def _exact(alpha: np.ndarray, n: int) -> np.ndarray:
    """Exact mutual information for one question: alpha (G, S, K) -> (G,)."""
    g, s, k = alpha.shape
    outcomes = vote_outcomes(n, k)  # (O, K)
    log_multinomial = gammaln(n + 1) - gammaln(outcomes + 1).sum(axis=1)  # (O,)
    out = np.empty(g)
    step = max(1, _EXACT_ELEMENTS // (s * len(outcomes)))
    for start in range(0, g, step):
        a = alpha[start : start + step]
        terms = _count_terms(a, n)  # (g, S, K, n + 1)
        log_w = np.zeros((len(a), s, len(outcomes)))
        for j in range(k):
            log_w += terms[:, :, j, outcomes[:, j]]
        total = a.sum(axis=-1)
        log_w += (gammaln(total) - gammaln(n + total))[..., None]  # log p_s(y) minus the multinomial coefficient
        information, log_mean = _information_terms(log_w)  # log_mean + log_multinomial = log pbar(y), (g, O)
        out[start : start + step] = (np.exp(log_mean + log_multinomial) * information).sum(axis=1)
    return out


def _monte_carlo(alpha: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Monte Carlo mutual information for one question: alpha (G, S, K) -> (G,); draws spread evenly over samples."""
    g, s, k = alpha.shape
    per_sample = max(1, -(-draws // s))
    gammas = rng.standard_gamma(np.broadcast_to(alpha[:, :, None, :], (g, s, per_sample, k)))
    probabilities = gammas / gammas.sum(axis=-1, keepdims=True)
    votes = rng.multinomial(n, probabilities).reshape(g, 1, s * per_sample, k)  # (G, 1, D, K): every draw first, so slicing changes nothing
    out = np.empty(g)
    step = max(1, _EXACT_ELEMENTS // (s * max(s * per_sample, k * (n + 1))))  # (galaxies x samples x draws) per block: flat in samples
    for start in range(0, g, step):
        a, v = alpha[start : start + step], votes[start : start + step]
        terms = _count_terms(a, n)  # (g, S, K, n + 1)
        log_w = np.zeros((len(a), s, s * per_sample))
        for j in range(k):
            log_w += np.take_along_axis(terms[:, :, j, :], v[..., j], axis=2)
        total = a.sum(axis=-1)
        log_w += (gammaln(total) - gammaln(n + total))[..., None]
        out[start : start + step] = _information_terms(log_w)[0].mean(axis=1)
    return out


def mutual_information(alpha: np.ndarray, n: int, exact_max_outcomes: int = 1000, draws: int = 128, rng: np.random.Generator | None = None) -> np.ndarray:
    """BALD mutual information of one question between n volunteers' votes and the model: alpha (G, S, K) -> (G,).

    Exact when the question has at most `exact_max_outcomes` vote outcomes, else Monte Carlo with `draws` draws.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 3:
        raise ValueError(f"alpha must be (galaxies, samples, answers), got shape {alpha.shape}")
    if alpha.shape[1] < 2 or alpha.shape[0] == 0:
        return np.zeros(alpha.shape[0])
    if n_outcomes(n, alpha.shape[2]) <= exact_max_outcomes:
        return _exact(alpha, n)
    return _monte_carlo(alpha, n, draws, rng if rng is not None else np.random.default_rng(0))


def reach_fractions(fractions: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """Expected fraction of volunteers asked each question: fractions (G, answers) -> (G, questions).

    A question asked only after answer a of question q is reached by reach(q) x fraction(a).
    """
    reach = np.ones((fractions.shape[0], len(tree.questions)))
    position = {q.name: i for i, q in enumerate(tree.questions)}
    columns = {c: i for i, c in enumerate(tree.label_cols)}
    for i, question in enumerate(tree.questions):
        if question.asked_if is not None:
            parent, answer = question.asked_if
            reach[:, i] = reach[:, position[parent]] * fractions[:, columns[tree.column(parent, answer)]]
    return reach


def bald_scores(ids: list[str], alpha: np.ndarray, tree: DecisionTree, config: AcquireConfig, first_batch: int = 0) -> pd.DataFrame:
    """Per galaxy: total and per-question mutual information, each question's reach, and the predicted vote fractions.

    alpha (G, S, answers) in the tree's column order. Rows in the order given (rank them with `rank`).
    `first_batch`: the BATCH-galaxy batches before these (galaxies streamed from a file: streamed_bald_scores), so
    the Monte Carlo draws are those of the whole table.
    """
    g = alpha.shape[0]
    groups = tree.question_index_groups
    mi = np.zeros((g, len(groups)))
    fractions = expected_vote_fractions(alpha, groups).mean(axis=1) if g else np.zeros((0, alpha.shape[-1]))
    exact = [n_outcomes(config.n_volunteers, last - first + 1) <= config.exact_max_outcomes for first, last in groups]
    log.info("BALD over %d galaxies x %d samples, %d volunteers: exact for %s; Monte Carlo (%d draws) for %s",
             g, alpha.shape[1] if g else 0, config.n_volunteers,
             [q.name for q, e in zip(tree.questions, exact) if e] or "none", config.mc_draws,
             [q.name for q, e in zip(tree.questions, exact) if not e] or "none")
    for batch, start in enumerate(tqdm(range(0, g, BATCH), desc="mutual information", unit="batch", mininterval=10, disable=g <= BATCH), first_batch):
        for q, (first, last) in enumerate(groups):
            rng = np.random.default_rng([config.seed, batch, q])
            mi[start : start + BATCH, q] = mutual_information(
                alpha[start : start + BATCH, :, first : last + 1], config.n_volunteers, config.exact_max_outcomes, config.mc_draws, rng,
            )
    reach = reach_fractions(fractions, tree)
    table = pd.DataFrame({"id_str": np.asarray(ids, dtype=object), "mutual_information": (mi * reach).sum(axis=1)})
    for q, question in enumerate(tree.questions):
        table[f"{question.name}_mi"] = mi[:, q]
    for q, question in enumerate(tree.questions):
        table[f"{question.name}_reach"] = reach[:, q]
    for j, col in enumerate(tree.label_cols):
        table[f"{col}_fraction"] = fractions[:, j]
    return table


STREAM_BATCHES = 8  # BATCH-galaxy batches read from the samples file at a time by streamed_bald_scores (fewer, at least one, where
# galaxies have more than dirichlet.READ_SAMPLES samples: at most STREAM_BATCHES x BATCH x READ_SAMPLES rows a read, so memory is flat in samples too)


def streamed_bald_scores(samples_path: Path | str, tree: DecisionTree, config: AcquireConfig) -> tuple[pd.DataFrame, int]:
    """bald_scores of a whole prediction_samples file, read STREAM_BATCHES x BATCH galaxies at a time (the same
    numbers: the draws are seeded per BATCH of the whole table); memory holds one such read (at most STREAM_BATCHES x
    BATCH x READ_SAMPLES sample rows, or one BATCH) plus the per-galaxy table. Returns (scores, samples per galaxy)."""
    from zoobot_core.dirichlet import READ_SAMPLES, iter_samples

    tables, batches, n_samples = [], 0, 0
    for ids, alpha in iter_samples(samples_path, tree.label_cols, STREAM_BATCHES * BATCH, max_rows=STREAM_BATCHES * BATCH * READ_SAMPLES, multiple=BATCH):
        tables.append(bald_scores(ids, alpha, tree, config, first_batch=batches))
        batches += -(-len(ids) // BATCH)
        n_samples = alpha.shape[1]
    if not tables:
        return bald_scores([], np.zeros((0, 1, len(tree.label_cols))), tree, config), 0
    return pd.concat(tables, ignore_index=True), n_samples


def rank(scores: pd.DataFrame) -> pd.DataFrame:
    """Most informative first (ties by id), with a 1-based `rank` column first."""
    ranked = scores.sort_values(["mutual_information", "id_str"], ascending=[False, True], kind="stable").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def acquire_files(
    samples_path: Path | str, ready_path: Path | str, ranked_path: Path | str, top_path: Path | str, montage_path: Path | str,
    tree: DecisionTree, config: AcquireConfig, resize: ResizeConfig | None = None, recalibration_path: Path | str | None = None,
) -> pd.DataFrame:
    """The acquire rule: rank one split's galaxies by BALD; write the ranked table (Parquet), the top
    `top_n` as an upload list (CSV: rank, id_str, file_loc, mutual_information) and a montage of the top ones.

    The samples are those predict wrote: the recalibrated posterior where the model has a recalibration
    (`recalibration_path`, its recalibration.json, says so in the log), else the raw network's."""
    from zoobot_core.figures import plot_acquisition_montage
    from zoobot_core.io import atomic_path, atomic_write_table

    if recalibration_path is not None:
        log.info("Ranking on the recalibrated posterior (%s, fitted on the validation split); calibration.recalibrate: false ranks the raw network's",
                 json.loads(Path(recalibration_path).read_text())["method"])
    else:
        log.info("Ranking on the raw network's posterior (calibration.recalibrate is off)")
    scores, n_samples = streamed_bald_scores(samples_path, tree, config)
    if len(scores) and n_samples < 2:
        log.warning("One prediction sample per galaxy: there is nothing for samples to disagree about, so every galaxy scores 0 "
                    "and the ranking is by id. Set predict.n_samples >= 2 (MC dropout) for a useful ranking.")
    ready = pd.read_parquet(ready_path, columns=["id_str", "file_loc"])
    ranked = rank(scores.merge(ready[["id_str", "file_loc"]], on="id_str", how="left", validate="one_to_one"))
    missing = ranked["file_loc"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} predicted galaxies (e.g. {ranked.loc[missing, 'id_str'].iloc[0]}) are not in {ready_path}; rerun the workflow")
    ranked = ranked[["rank", "id_str", "file_loc", *[c for c in ranked.columns if c not in ("rank", "id_str", "file_loc")]]]
    atomic_write_table(ranked, ranked_path)
    with atomic_path(top_path) as tmp:
        ranked.head(config.top_n)[["rank", "id_str", "file_loc", "mutual_information"]].to_csv(tmp, index=False)
    from zoobot_core.images import ImageViewer

    files = dict(zip(ready["id_str"], ready["file_loc"]))
    plot_acquisition_montage(ranked.head(config.montage), files, tree, montage_path, view=ImageViewer(resize or ResizeConfig()))
    if len(ranked):
        log.info("Ranked %d galaxies by mutual information (top %.3f nats, median %.3f); wrote the top %d to %s",
                 len(ranked), ranked["mutual_information"].iloc[0], ranked["mutual_information"].median(), min(config.top_n, len(ranked)), top_path)
    else:
        log.warning("No galaxies to rank: the split is empty (set acquire.split to a split with galaxies)")
    return ranked
