"""Temperature scaling of a classifier's probabilities (Guo et al. 2017, "On calibration of modern neural
networks"), and the scores that say whether it helped: log loss, Brier score, expected calibration error
and the reliability curve behind it.

One temperature T > 0 divides the logits: sigmoid(logit(p) / T) (binary) or softmax(log p / T)
(multiclass). T > 1 softens an over-confident model, T < 1 sharpens an under-confident one. It is
monotone, so a binary model's ranking (its AUC) and a multiclass model's most probable class stay as
they were. Logits are recovered from the probabilities, clipped to [EPS, 1 - EPS].

Every score here weighs galaxies equally (no class weights): a calibrated probability is meant to be a
frequency among galaxies like the labelled ones. The finetuned head is fitted class-balanced, so its raw
probabilities lean towards a balanced prior; one temperature rescales them but cannot move their
intercept, and the scores below say how much that leaves.

Binary probabilities are P(class 1), shape (n,); multiclass ones are (n, classes); labels are class numbers.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before taking logits
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # the temperatures searched: 0.05 to 20
N_BINS = 10
MIN_GAIN = 1e-3  # nats of out-of-fold log loss temperature scaling must save for the final model to use it
CLASSIFICATION = ("binary", "multiclass")


def _check_task(task: str) -> None:
    if task not in CLASSIFICATION:
        raise ValueError(f"Temperature scaling needs a classification task ({CLASSIFICATION}), not {task!r}")


def logits(probabilities: np.ndarray, task: str) -> np.ndarray:
    """Logits of clipped probabilities: log(p / (1 - p)) (binary) or log p, defined up to a constant per galaxy (multiclass)."""
    _check_task(task)
    p = np.asarray(probabilities, np.float64)
    if task == "binary":
        p = np.clip(p, EPS, 1 - EPS)
        return np.log(p) - np.log1p(-p)
    return np.log(np.clip(p, EPS, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature: float, task: str) -> np.ndarray:
    """Probabilities with their logits divided by `temperature`: sigmoid(logit(p) / T) or softmax(log p / T) over the
    last axis (so MC-dropout samples (n, samples, classes) work too). T = 1 returns the probabilities unchanged."""
    from scipy.special import expit, softmax

    if not temperature > 0:
        raise ValueError(f"A temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return np.array(probabilities, np.float64)
    z = logits(probabilities, task) / temperature
    return expit(z) if task == "binary" else softmax(z, axis=-1)


def _true_class_probability(probabilities: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels).astype(int)
    return np.where(y == 1, p, 1 - p) if task == "binary" else p[np.arange(len(y)), y]


def log_loss(probabilities: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Mean negative log probability of the true class (clipped to EPS), in nats."""
    _check_task(task)
    return float(-np.log(np.clip(_true_class_probability(probabilities, labels, task), EPS, 1.0)).mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Binary: mean (p - y)^2 (0 best, 0.25 for a constant 0.5); multiclass: the mean over galaxies of the sum over
    classes of (p_k - [y == k])^2 (twice the binary number for two classes)."""
    _check_task(task)
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels).astype(int)
    if task == "binary":
        return float(((p - y) ** 2).mean())
    return float(((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1).mean())


def _confidence_and_outcome(probabilities: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability curve bins: binary, P(class 1) and whether the galaxy is class 1; multiclass, the top-class
    probability and whether the top class is the true one."""
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels).astype(int)
    if task == "binary":
        return p, (y == 1).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, task: str, n_bins: int = N_BINS) -> pd.DataFrame:
    """The reliability curve: per equal-width bin of [0, 1] (the last one closed), its edges, the number of galaxies,
    their mean predicted probability and the observed frequency (NaN for an empty bin). Binary: P(class 1) against
    the share of class 1; multiclass: the top-class probability against the share whose top class is right."""
    _check_task(task)
    confidence, outcome = _confidence_and_outcome(probabilities, labels, task)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(which, confidence, n_bins) / count
        observed = np.bincount(which, outcome, n_bins) / count
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
                         "mean_predicted": mean_predicted, "observed": observed})


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, task: str, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean over equal-width bins of |mean predicted - observed frequency| (reliability_bins:
    binary on P(class 1), multiclass on the top-class probability). 0 is perfectly calibrated."""
    bins = reliability_bins(probabilities, labels, task, n_bins)
    used = bins[bins["count"] > 0]
    return float((used["count"] * (used["mean_predicted"] - used["observed"]).abs()).sum() / max(int(used["count"].sum()), 1))


def calibration_scores(probabilities: np.ndarray, labels: np.ndarray, task: str, n_bins: int = N_BINS) -> dict[str, float]:
    """Log loss, Brier score and ECE of these probabilities (all: lower is better)."""
    return {"log_loss": log_loss(probabilities, labels, task), "brier": brier_score(probabilities, labels, task),
            "ece": expected_calibration_error(probabilities, labels, task, n_bins)}


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, task: str) -> float:
    """The temperature that minimises the log loss of the rescaled probabilities on these galaxies (a bounded
    search over log T, T in 0.05-20). Meant for out-of-fold scores, never those of the galaxies it will be scored on."""
    from scipy.optimize import minimize_scalar

    _check_task(task)
    if len(np.asarray(labels)) == 0:
        raise ValueError("fit_temperature needs at least one galaxy with a label")
    z = logits(probabilities, task)
    y = np.asarray(labels).astype(int)

    def loss(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        if task == "binary":
            return float(np.logaddexp(0.0, np.where(y == 1, -scaled, scaled)).mean())  # -log sigmoid(+-z), stably
        from scipy.special import logsumexp

        return float((logsumexp(scaled, axis=1) - scaled[np.arange(len(y)), y]).mean())

    result = minimize_scalar(loss, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def cross_fitted_temperatures(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, task: str) -> tuple[dict[int, float], np.ndarray]:
    """For each fold k, the temperature fitted on every other fold's galaxies only, and the probabilities with each
    galaxy rescaled by its own fold's temperature: fold k's labels never touch the temperature applied to fold k."""
    probabilities, labels, folds = np.asarray(probabilities, np.float64), np.asarray(labels), np.asarray(folds)
    scaled = np.array(probabilities)
    temperatures = {}
    for fold in sorted(set(folds.tolist())):
        scored = folds == fold
        temperatures[int(fold)] = fit_temperature(probabilities[~scored], labels[~scored], task)
        scaled[scored] = apply_temperature(probabilities[scored], temperatures[int(fold)], task)
    return temperatures, scaled


def temperature_report(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, task: str, n_bins: int = N_BINS) -> tuple[dict, np.ndarray]:
    """Does temperature scaling help these out-of-fold probabilities? Each fold is rescaled by a temperature fitted
    on the other folds (cross_fitted_temperatures); raw and rescaled log loss, Brier score and ECE pooled over all
    galaxies and per fold; and the temperature for a final model: fitted on every galaxy if the cross-validated
    log loss went down by more than MIN_GAIN nats (not on already-perfect scores, say, whose optimal temperature is 0),
    else 1 (with the reason). Returns (the report, the rescaled probabilities)."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    temperatures, scaled = cross_fitted_temperatures(probabilities, labels, folds, task)
    raw_scores, scaled_scores = calibration_scores(probabilities, labels, task, n_bins), calibration_scores(scaled, labels, task, n_bins)
    gain = raw_scores["log_loss"] - scaled_scores["log_loss"]
    helps = gain > MIN_GAIN
    if helps:
        final = fit_temperature(probabilities, labels, task)
        reason = f"fitted on every out-of-fold score: rescaling each fold by the other folds' temperature lowered the out-of-fold log loss by {gain:.4f} nats"
    else:
        final = 1.0
        reason = (f"kept at 1: rescaling each fold by the other folds' temperature changed the out-of-fold log loss by {-gain:+.5f} nats, "
                  f"not lowering it by more than {MIN_GAIN}")
    per_fold = {name: [] for name in ("log_loss_raw", "log_loss_scaled", "brier_raw", "brier_scaled", "ece_raw", "ece_scaled")}
    for fold in temperatures:
        rows = folds == fold
        for kind, p in (("raw", probabilities), ("scaled", scaled)):
            for name, value in calibration_scores(np.asarray(p)[rows], labels[rows], task, n_bins).items():
                per_fold[f"{name}_{kind}"].append(value)
    report = {
        "method": "temperature scaling: one T dividing the logits, fitted by minimising the log loss; each fold rescaled by the T of the other folds' out-of-fold scores",
        "ece_of": "P(class 1)" if task == "binary" else "the top-class probability",
        "n_bins": n_bins,
        "raw": raw_scores,
        "scaled": scaled_scores,
        "fold_temperatures": [temperatures[f] for f in sorted(temperatures)],
        "per_fold": per_fold,
        "log_loss_gain": gain,  # raw minus scaled, nats
        "min_gain": MIN_GAIN,
        "helps": bool(helps),
        "final_temperature": final,
        "final_temperature_reason": reason,
    }
    return report, scaled
