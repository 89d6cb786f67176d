"""Dirichlet-Multinomial numerics in NumPy/SciPy, for analysing predictions (the model's loss is in losses.py).

A prediction for one question is a vector of Dirichlet concentrations alpha; the probability that n
volunteers split their votes as y (sum y = n) is the Dirichlet-Multinomial
    p(y | alpha, n) = n! Gamma(A) / Gamma(n + A) * prod_k Gamma(y_k + alpha_k) / (y_k! Gamma(alpha_k)),  A = sum alpha,
and one answer's count alone follows the Beta-Binomial(n, alpha_k, A - alpha_k).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import gammaln

from zoobot_core.io import streamed_parquet
from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)



def _run_starts(ids: np.ndarray) -> np.ndarray:
    """The row where each run of equal ids begins."""
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)


def samples_array(samples: pd.DataFrame, label_cols: list[str]) -> tuple[list[str], np.ndarray]:
    """(ids, concentrations of shape (galaxies, samples, answers)) from a prediction_samples table.

    The table has one row per (galaxy, sample), each galaxy's samples together, as predict writes it.
    """
    if samples.empty:
        return [], np.zeros((0, 1, len(label_cols)))
    ids = samples["id_str"].to_numpy()
    starts = _run_starts(ids)
    counts = np.diff(np.r_[starts, len(ids)])
    if len(set(counts)) != 1 or len(starts) != len(set(ids[starts])):
        raise ValueError("prediction_samples must hold the same number of rows for every galaxy, each galaxy's rows together; rerun predict")
    n_samples = int(counts[0])
    values = samples[label_cols].to_numpy(np.float64).reshape(len(starts), n_samples, len(label_cols))
    return [str(i) for i in ids[starts]], values


def _id_hashes(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each galaxy id (pandas' SipHash: the same in every process)."""
    return pd.util.hash_array(np.asarray(ids, dtype=object))


class _SeenIds:
    """64-bit hashes of the galaxy ids met so far, 8 bytes a galaxy and no strings, as sorted runs whose lengths at
    least double from the newest to the oldest (a binary counter: a run is merged into the one before it once it is
    as long), so there are O(log n) runs, a lookup is a binary search in each, and each hash is merged O(log n)
    times: O(n log^2 n) in all for n galaxies, however small the batches."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted; the oldest (longest) first

    def met(self, hashes: np.ndarray) -> np.ndarray:
        """Whether each hash was added before (its id met before, or a different id with the same hash)."""
        found = np.zeros(len(hashes), bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[at] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        """Remember these hashes."""
        run = np.sort(np.asarray(hashes, np.uint64))
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            run = np.sort(np.concatenate([self._runs.pop(), run]))
        if len(run):
            self._runs.append(run)


def _first_id_before(path, ids: set[str], n_rows: int) -> str | None:
    """One of `ids` that occurs in the first `n_rows` rows of the samples file, or None: the exact re-check behind a hash match."""
    with streamed_parquet(path) as file:
        read = 0
        for batch in file.iter_batches(batch_size=65536, columns=["id_str"]):
            column = pd.Series(batch.column(0).to_pylist()[: n_rows - read], dtype=object).astype(str)
            hit = column.isin(ids)
            if hit.any():
                return str(column[hit.to_numpy()].iloc[0])
            read += batch.num_rows
            if read >= n_rows:
                break
    return None


class _SamplesCheck:
    """Whole-file checks of a prediction_samples file read in batches: every galaxy has the first galaxy's number
    of samples, and each galaxy's rows are together (no id in two places), remembered as 64-bit hashes."""

    def __init__(self, path) -> None:
        self.path = path
        self.n_samples: int | None = None
        self.first_id: str | None = None
        self.rows = 0  # rows of the file checked so far
        self.seen = _SeenIds()

    def _apart(self, galaxy) -> ValueError:
        return ValueError(f"{self.path}: the rows of galaxy {galaxy!r} are not together (its id appears in two places in the file); "
                          "predict writes each galaxy's samples together: rerun predict")

    def array(self, table: pd.DataFrame, bounds: np.ndarray, label_cols: list[str]) -> tuple[list[str], np.ndarray]:
        """(ids, (galaxies, samples, answers)) of the galaxies whose rows run from bounds[i] to bounds[i + 1], once checked."""
        ids = table["id_str"].to_numpy()[bounds[:-1]]
        lengths = np.diff(bounds)
        repeated = pd.Series(ids, dtype=object).duplicated().to_numpy()
        if repeated.any():
            raise self._apart(ids[repeated.argmax()])
        hashes = _id_hashes(ids)
        met = self.seen.met(hashes)
        if met.any():
            galaxy = _first_id_before(self.path, {str(i) for i in ids[met]}, self.rows)
            if galaxy is not None:
                raise self._apart(galaxy)
            log.debug("%s: %d galaxy ids share a 64-bit hash with earlier ones (checked: different ids)", self.path, int(met.sum()))
        self.seen.add(hashes)
        if self.n_samples is None:
            self.n_samples, self.first_id = int(lengths[0]), str(ids[0])
        wrong = np.flatnonzero(lengths != self.n_samples)
        if wrong.size:
            raise ValueError(f"{self.path}: galaxy {ids[wrong[0]]!r} has {lengths[wrong[0]]} sample rows, but the first galaxy ({self.first_id!r}) "
                             f"has {self.n_samples}; every galaxy needs the same number (dropout samples x TTA views): rerun predict")
        self.rows += int(bounds[-1] - bounds[0])
        rows = table.iloc[bounds[0] : bounds[-1]]
        return [str(i) for i in ids], rows[label_cols].to_numpy(np.float64).reshape(len(ids), self.n_samples, len(label_cols))


READ_SAMPLES = 5  # the samples per galaxy a streamed read is sized for: with more (views x dropout), readers pass
# max_rows = galaxies x READ_SAMPLES to iter_samples and get fewer galaxies a read, so memory stays flat in samples


def iter_samples(
    path: Path | str, label_cols: list[str], galaxies: int = 4096, rows_per_read: int = 65536, max_rows: int | None = None, multiple: int = 1,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """samples_array of a prediction_samples Parquet file, `galaxies` whole galaxies at a time (the last batch may
    hold fewer), read by record batches: memory holds one batch of galaxies whatever the file's size. A galaxy's
    samples are never split between batches. With `max_rows`, a batch holds at most that many rows where the
    galaxies have that many samples (fewer galaxies, a multiple of `multiple`, at least `multiple`): memory flat in
    the number of samples (dropout samples x views) too.

    The whole file is checked as it is read: a ValueError names the file and galaxy where a galaxy's number of
    samples differs from the first galaxy's, or where its rows are not together (its id appears again later)."""
    columns = ["id_str", *label_cols]
    check = _SamplesCheck(path)
    pending: pd.DataFrame | None = None  # rows not yielded yet: fewer than `galaxies` whole galaxies, then one maybe cut by the read
    with streamed_parquet(path) as file:
        missing = [c for c in columns if c not in file.schema_arrow.names]
        if missing:
            raise ValueError(f"{path} lacks columns {missing[:5]}; it must come from the predict rule of the same model")
        for batch in file.iter_batches(batch_size=rows_per_read, columns=columns):
            table = batch.to_pandas() if pending is None else pd.concat([pending, batch.to_pandas()], ignore_index=True)
            starts = _run_starts(table["id_str"].to_numpy())
            if max_rows is not None and len(starts) > 1:  # the first galaxy's samples are known: galaxies per batch within max_rows
                galaxies = min(galaxies, max(multiple, max_rows // int(starts[1] - starts[0]) // multiple * multiple))
                max_rows = None
            whole = max(len(starts) - 1, 0) // galaxies * galaxies  # the last galaxy begun may go on in the next read
            for first in range(0, whole, galaxies):
                yield check.array(table, starts[first : first + galaxies + 1], label_cols)
            pending = table.iloc[starts[whole] :].reset_index(drop=True) if len(starts) else None
    if pending is not None and len(pending):
        yield check.array(pending, np.r_[_run_starts(pending["id_str"].to_numpy()), len(pending)], label_cols)


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
