"""Dirichlet-Multinomial numerics in NumPy/SciPy, for analysing predictions (the model's loss is in losses.py).

A prediction for one question is a vector of Dirichlet concentrations alpha; the probability that n
volunteers split their votes as y (sum y = n) is the Dirichlet-Multinomial
    p(y | alpha, n) = n! Gamma(A) / Gamma(n + A) * prod_k Gamma(y_k + alpha_k) / (y_k! Gamma(alpha_k)),  A = sum alpha,
and one answer's count alone follows the Beta-Binomial(n, alpha_k, A - alpha_k).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy.special import gammaln

from zoobot_core.schemas import DecisionTree


def samples_array(samples: pd.DataFrame, label_cols: list[str]) -> tuple[list[str], np.ndarray]:
    """(ids, concentrations of shape (galaxies, samples, answers)) from a prediction_samples table.

    The table has one row per (galaxy, sample), each galaxy's samples together, as predict writes it.
    """
    if samples.empty:
        return [], np.zeros((0, 1, len(label_cols)))
    ids = samples["id_str"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, len(ids)])
    if len(set(counts)) != 1 or len(starts) != len(set(ids[starts])):
        raise ValueError("prediction_samples must hold the same number of rows for every galaxy, each galaxy's rows together; rerun predict")
    n_samples = int(counts[0])
    values = samples[label_cols].to_numpy(np.float64).reshape(len(starts), n_samples, len(label_cols))
    return [str(i) for i in ids[starts]], values


def iter_samples(path, label_cols: list[str], galaxies: int = 4096, rows_per_read: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
    """samples_array of a prediction_samples Parquet file, `galaxies` whole galaxies at a time (the last batch may
    hold fewer), read by record batches: memory holds one batch of galaxies whatever the file's size. A galaxy's
    samples are never split between batches."""
    import pyarrow.parquet as pq

    columns = ["id_str", *label_cols]
    pending: list[pd.DataFrame] = []
    with pq.ParquetFile(path) as file:
        missing = [c for c in columns if c not in file.schema_arrow.names]
        if missing:
            raise ValueError(f"{path} lacks columns {missing[:5]}; it must come from the predict rule of the same model")
        for batch in file.iter_batches(batch_size=rows_per_read, columns=columns):
            pending.append(batch.to_pandas())
            table = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
            ids = table["id_str"].to_numpy()
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            while len(starts) > galaxies:  # more than `galaxies` galaxies begun: the first `galaxies` are whole
                cut = starts[galaxies]
                yield samples_array(table.iloc[:cut], label_cols)
                table = table.iloc[cut:].reset_index(drop=True)
                ids = table["id_str"].to_numpy()
                starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            pending = [table]
    if pending and len(pending[0]):
        yield samples_array(pending[0], label_cols)


def log_pmf(counts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log p(counts | alpha) of one question: counts (..., K), alpha (..., K) broadcast; returns (...)."""
    counts = np.asarray(counts, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    n, total = counts.sum(axis=-1), alpha.sum(axis=-1)
    return (
        gammaln(n + 1) + gammaln(total) - gammaln(n + total)
        + (gammaln(counts + alpha) - gammaln(alpha) - gammaln(counts + 1)).sum(axis=-1)
    )


def mixture_log_pmf(counts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log of the mean over samples of p(counts | alpha_s): counts (G, K), alpha (G, S, K) -> (G,)."""
    per_sample = log_pmf(counts[:, None, :], alpha)
    top = per_sample.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(per_sample - top).mean(axis=1, keepdims=True)))[:, 0]


def question_nll(votes: np.ndarray, alpha: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """Held-out negative log-likelihood of each question's votes under the sample-mixed predictive:
    votes (G, answers), alpha (G, S, answers) -> (G, questions); 0 where a galaxy has no votes on a question."""
    out = np.zeros((len(votes), len(tree.questions)))
    for q, (first, last) in enumerate(tree.question_index_groups):
        counts = votes[:, first : last + 1]
        asked = counts.sum(axis=1) > 0
        if asked.any():
            out[asked, q] = -mixture_log_pmf(counts[asked], alpha[asked, :, first : last + 1])
    return out


def beta_binomial_cdf(n: np.ndarray, a: np.ndarray, b: np.ndarray, n_max: int) -> np.ndarray:
    """CDF at y = 0..n_max of Beta-Binomial(n, a, b), shapes broadcast to (...); returns (..., n_max + 1).

    At y >= n the CDF is exactly 1.
    """
    n, a, b = (np.asarray(x, dtype=np.float64)[..., None] for x in (n, a, b))
    y = np.arange(n_max + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        log_p = (
            gammaln(n + 1) - gammaln(y + 1) - gammaln(np.maximum(n - y, 0) + 1)
            + gammaln(y + a) + gammaln(n - y + b) - gammaln(n + a + b)
            - gammaln(a) - gammaln(b) + gammaln(a + b)
        )
    pmf = np.where(y <= n, np.exp(np.where(y <= n, log_p, 0.0)), 0.0)
    return np.where(y >= n, 1.0, np.minimum(np.cumsum(pmf, axis=-1), 1.0))


def fit_constant(votes: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Maximum-likelihood Dirichlet-Multinomial concentrations of one question shared by every galaxy.

    The constant predictor: the best the model could do knowing nothing about the image.
    `votes` (G, K); galaxies with no votes are ignored. Fitted on log alpha with L-BFGS.
    """
    from scipy.optimize import minimize

    votes = np.asarray(votes, dtype=np.float64)
    votes = votes[votes.sum(axis=1) > 0]
    k = votes.shape[1]
    if len(votes) == 0:
        return np.ones(k)
    fractions = (votes.sum(axis=0) + 0.5) / (votes.sum() + 0.5 * k)

    def objective(log_alpha: np.ndarray) -> float:
        return -float(log_pmf(votes, np.exp(log_alpha)).sum())

    result = minimize(objective, np.log(fractions * 5.0), method="L-BFGS-B", bounds=[(-8, 8)] * k, options={"maxiter": max_iter})
    return np.exp(result.x)


def question_votes(votes: np.ndarray, tree: DecisionTree) -> list[np.ndarray]:
    """Each question's (G, K) block of vote counts, in tree order."""
    return [votes[:, first : last + 1] for first, last in tree.question_index_groups]


def expected_vote_fractions(concentrations: np.ndarray, question_index_groups: list[tuple[int, int]]) -> np.ndarray:
    """Mean of each question's Dirichlet: concentration / sum over that question's answers."""
    fractions = np.empty_like(concentrations, dtype=np.float64)
    for first, last in question_index_groups:
        block = concentrations[..., first : last + 1]
        fractions[..., first : last + 1] = block / block.sum(axis=-1, keepdims=True)
    return fractions
