"""Recalibrate the predicted Dirichlets on the validation split: a positive scale of the concentrations per question.

An over-confident model predicts concentrations that are too large: its Dirichlets, and the vote counts
they imply, are too narrow. For each question q the recalibrated prediction of every dropout sample is

    scale:        alpha'_k = s_q * alpha_k
    scale_power:  alpha'_k = s_q * A^(p_q - 1) * alpha_k     (A = sum_k alpha_k: the total becomes s_q * A^p_q)

Both keep each sample's expected vote fractions (alpha_k / A), so vote-fraction errors and the most-voted
answer are the raw model's; they change only how sure the prediction is. s_q (and p_q) maximise the
Dirichlet-Multinomial likelihood of the validation galaxies' votes, mixed over the MC-dropout samples
exactly as the calibration rule scores test. `auto` keeps the power for a question only where it lowers
the validation NLL in cross-validation (folds over validation galaxies; the gain and its standard error
are recorded); otherwise the scale alone.
A question with fewer than `min_galaxies` validation galaxies with votes keeps scale 1 and says so.
The power stays within [0.05, 3], so the map can be undone: the raw network's posterior is recovered
from the recalibrated samples predict stores (calibration scores both).

The fitted parameters are written beside model.keras (recalibration.json, with the SHA-256 of the
weights of the network they were fitted for) and applied by every prediction from that model folder
(predict.predict_shards, the predict rule), unless switched off. Predictions record what they applied in
their Parquet metadata (key `zoobot_recalibration`), so the raw posterior is recovered with the same map.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from zoobot_core.dirichlet import mixture_log_pmf
from zoobot_core.schemas import DecisionTree

if TYPE_CHECKING:
    from zoobot_core.predict import PredictConfig

log = logging.getLogger(__name__)

RECALIBRATION_FILE = "recalibration.json"
METADATA_KEY = b"zoobot_recalibration"  # Parquet key-value metadata of predictions and samples: the map they carry (JSON; null: raw)
METHODS = ("scale", "scale_power", "auto")
_LOG_SCALE_BOUNDS = (-9.0, 9.0)
_POWER_BOUNDS = (0.05, 3.0)  # p > 0 keeps the map invertible: the raw posterior is recovered from stored samples (to ~1e-6 in float32)


class RecalibrationError(ValueError):
    """A recalibration file that cannot be applied to this model's answers."""


@dataclass(frozen=True)
class RecalibrationConfig:
    """How to map the concentrations, the fewest validation galaxies a question needs to be fitted, CV folds for `auto`."""

    method: str = "auto"
    min_galaxies: int = 20
    min_votes: int = 1
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration.recalibration.method must be one of {METHODS}, not {self.method!r}")
        if self.min_galaxies < 1 or self.min_votes < 1 or self.folds < 2:
            raise ValueError("calibration: min_galaxies and min_votes must be >= 1 and folds >= 2")
        if self.method == "auto" and self.min_galaxies < self.folds:
            raise ValueError(f"calibration.min_galaxies ({self.min_galaxies}) must be at least calibration.folds ({self.folds}) for method auto: "
                             "every fold needs validation galaxies to fit on")


def transform(alpha: np.ndarray, log_scale: float, power: float = 1.0) -> np.ndarray:
    """One question's concentrations (..., K) recalibrated: times exp(log_scale) * A^(power - 1), A their sum."""
    alpha = np.asarray(alpha, dtype=np.float64)
    factor = np.exp(log_scale)
    if power != 1.0:
        factor = factor * alpha.sum(axis=-1, keepdims=True) ** (power - 1.0)
    return alpha * factor


def _nll(counts: np.ndarray, alpha: np.ndarray, log_scale: float, power: float = 1.0) -> float:
    """Total NLL of one question's votes (G, K) under the sample-mixed, recalibrated predictive of alpha (G, S, K)."""
    return -float(mixture_log_pmf(counts, transform(alpha, log_scale, power)).sum())


def fit_question(counts: np.ndarray, alpha: np.ndarray, method: str) -> tuple[float, float]:
    """(log scale, power) maximising the likelihood of one question's votes (G, K) given raw alpha (G, S, K)."""
    from scipy.optimize import minimize, minimize_scalar

    scale = minimize_scalar(lambda x: _nll(counts, alpha, x), bounds=_LOG_SCALE_BOUNDS, method="bounded", options={"xatol": 1e-6})
    if method == "scale" or len(counts) == 0:
        return float(scale.x), 1.0
    # fitted as log A' = c + p (log A - m), m the mean log total: c and p are then nearly uncorrelated, so the optimum found
    # does not hinge on rounding; stored as log_scale = c - p m, the same map
    m = float(np.log(alpha.sum(axis=-1)).mean())
    result = minimize(lambda x: _nll(counts, alpha, x[0] - x[1] * m, x[1]), np.array([scale.x + m, 1.0]), method="L-BFGS-B",
                      bounds=[(None, None), _POWER_BOUNDS], options={"ftol": 1e-13, "gtol": 1e-9})
    log_scale, power = float(result.x[0] - result.x[1] * m), float(result.x[1])
    if not np.isfinite(result.fun) or result.fun > scale.fun or not _LOG_SCALE_BOUNDS[0] <= log_scale <= _LOG_SCALE_BOUNDS[1]:
        return float(scale.x), 1.0
    return log_scale, power


def _cross_validated_nll(counts: np.ndarray, alpha: np.ndarray, method: str, folds: int, seed: int) -> np.ndarray:
    """Each validation galaxy's held-out NLL under `method` fitted on the other folds."""
    order = np.random.default_rng(seed).permutation(len(counts))
    out = np.zeros(len(counts))
    for fold in np.array_split(order, folds):
        rest = np.setdiff1d(order, fold)
        log_scale, power = fit_question(counts[rest], alpha[rest], method)
        out[fold] = -mixture_log_pmf(counts[fold], transform(alpha[fold], log_scale, power))
    return out


def fit_recalibration(alpha: np.ndarray, votes: np.ndarray, tree: DecisionTree, config: RecalibrationConfig) -> dict:
    """Per-question parameters fitted on validation galaxies: alpha (G, S, answers) raw concentrations, votes (G, answers)."""
    questions = {}
    for question, (first, last) in zip(tree.questions, tree.question_index_groups):
        counts = votes[:, first : last + 1]
        asked = counts.sum(axis=1) >= config.min_votes
        a, c = alpha[asked, :, first : last + 1], counts[asked]
        entry: dict = {"n_galaxies": int(asked.sum()), "log_scale": 0.0, "scale": 1.0, "power": 1.0}
        if len(c) < config.min_galaxies:
            entry["status"] = f"not fitted: {len(c)} validation galaxies with votes, fewer than min_galaxies={config.min_galaxies}; scale 1"
            questions[question.name] = entry
            continue
        method = config.method
        if method == "auto":
            cv = {m: _cross_validated_nll(c, a, m, config.folds, config.seed) for m in ("scale", "scale_power")}
            gain = cv["scale"] - cv["scale_power"]
            standard_error = float(gain.std(ddof=1) / np.sqrt(len(gain)))
            entry["cv_nll"] = {m: float(v.mean()) for m, v in cv.items()}
            entry["cv_gain_of_power"] = {"mean": float(gain.mean()), "standard_error": standard_error}
            method = "scale_power" if gain.mean() > 0 else "scale"
        log_scale, power = fit_question(c, a, method)
        checked = {"log_scale": (log_scale, _LOG_SCALE_BOUNDS), **({"power": (power, _POWER_BOUNDS)} if method == "scale_power" else {})}
        at_bound = [name for name, (value, bounds) in checked.items() if min(abs(value - bound) for bound in bounds) < 1e-3]
        entry.update({
            "status": "fitted", "method": method, "log_scale": log_scale, "scale": float(np.exp(log_scale)), "power": power,
            "nll_raw": _nll(c, a, 0.0) / len(c), "nll_recalibrated": _nll(c, a, log_scale, power) / len(c),
            **({"at_bound": at_bound} if at_bound else {}),
        })
        questions[question.name] = entry
    return {"method": config.method, "fitted_on": "val", "answers": list(tree.label_cols), "questions": questions, "settings": asdict(config)}


def _parameters(recalibration: dict, tree: DecisionTree) -> list[tuple[int, int, float, float]]:
    """(first, last, log scale, power) per question, checking the file was fitted for these answers."""
    if list(recalibration.get("answers", [])) != list(tree.label_cols):
        raise RecalibrationError(
            f"The recalibration was fitted for answers {recalibration.get('answers')}, but this model predicts {tree.label_cols}; "
            f"refit it (delete {RECALIBRATION_FILE} from the model folder and rerun the recalibrate rule)")
    questions = recalibration["questions"]
    parameters = [(first, last, float(questions[q.name]["log_scale"]), float(questions[q.name]["power"]))
                  for q, (first, last) in zip(tree.questions, tree.question_index_groups)]
    for q, (_, _, log_scale, power) in zip(tree.questions, parameters):
        if not (np.isfinite(log_scale) and _POWER_BOUNDS[0] <= power <= _POWER_BOUNDS[1]):
            raise RecalibrationError(f"The recalibration of {q.name} (log scale {log_scale}, power {power}) is outside what this version fits "
                                     f"(power {_POWER_BOUNDS[0]} to {_POWER_BOUNDS[1]}); refit it (delete {RECALIBRATION_FILE} and rerun the recalibrate rule)")
    return parameters


def apply_recalibration(alpha: np.ndarray, recalibration: dict | None, tree: DecisionTree) -> np.ndarray:
    """Recalibrated concentrations (..., answers) from raw ones; the raw ones themselves when `recalibration` is None."""
    if recalibration is None:
        return np.asarray(alpha)
    out = np.array(alpha, dtype=np.float64)
    for first, last, log_scale, power in _parameters(recalibration, tree):
        out[..., first : last + 1] = transform(out[..., first : last + 1], log_scale, power)
    return out.astype(np.asarray(alpha).dtype, copy=False)


def invert_recalibration(alpha: np.ndarray, recalibration: dict | None, tree: DecisionTree) -> np.ndarray:
    """The raw concentrations that `apply_recalibration` mapped to `alpha`."""
    if recalibration is None:
        return np.asarray(alpha)
    out = np.array(alpha, dtype=np.float64)
    for first, last, log_scale, power in _parameters(recalibration, tree):
        block = out[..., first : last + 1]
        raw_total = (block.sum(axis=-1, keepdims=True) / np.exp(log_scale)) ** (1.0 / power)
        out[..., first : last + 1] = block / block.sum(axis=-1, keepdims=True) * raw_total
    return out


def read_recalibration(model_dir: Path | str) -> dict | None:
    """The model folder's recalibration.json, or None where the model has none."""
    path = Path(model_dir) / RECALIBRATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def model_fingerprint(model) -> str:
    """SHA-256 of a Keras model's weights, in order: which network a recalibration was fitted for. (Not of the
    model.keras file, whose zip entries carry timestamps: two identical trainings write different bytes.)"""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def check_recalibration(recalibration: dict, model, model_dir: Path | str, tree: DecisionTree, n_samples: int, tta_views: int) -> None:
    """Refuse a recalibration fitted for another network (`model`, loaded from `model_dir`) or other answers; warn where
    the samples are drawn otherwise than it was fitted on."""
    _parameters(recalibration, tree)
    fitted_for = recalibration.get("model_weights_sha256")
    if fitted_for is not None and fitted_for != model_fingerprint(model):
        raise RecalibrationError(
            f"{Path(model_dir) / RECALIBRATION_FILE} was fitted for another model.keras (the model was retrained or replaced since); "
            f"rerun the recalibrate rule, delete the file, or predict with recalibrate=False")
    fitted = recalibration.get("predict", {})
    if (fitted.get("n_samples"), fitted.get("tta_views")) not in ((n_samples, tta_views), (None, None)):
        log.warning("The recalibration was fitted on %s dropout samples x %s views; these predictions draw %d x %d (refit it for them)",
                    fitted.get("n_samples"), fitted.get("tta_views"), n_samples, tta_views)


def applied_recalibration(parquet_path: Path | str) -> tuple[bool, dict | None]:
    """(whether the file says, the map it carries or None for raw) from a predictions or samples Parquet's metadata."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(parquet_path).metadata or {}
    if METADATA_KEY not in metadata:
        return False, None
    return True, json.loads(metadata[METADATA_KEY])


def raw_from_samples(alpha: np.ndarray, samples_path: Path | str, tree: DecisionTree, recalibration_path: Path | str | None = None) -> tuple[np.ndarray, dict | None]:
    """The raw network's samples and the map undone, from samples predict wrote: by the map their metadata records
    (refusing a `recalibration_path` that disagrees), or for files without that record, by `recalibration_path`'s."""
    recorded, applied = applied_recalibration(samples_path)
    given = json.loads(Path(recalibration_path).read_text()) if recalibration_path is not None else None
    if recorded:
        if recalibration_path is not None and (applied is None or _parameters(applied, tree) != _parameters(given, tree)):
            raise RecalibrationError(f"{samples_path} was predicted with {'no' if applied is None else 'another'} recalibration than {recalibration_path}; "
                                     "rerun predict (the workflow does when the recalibration changes)")
    else:
        applied = given
    return invert_recalibration(alpha, applied, tree), applied


def recalibrate_files(model_dir: Path | str, shard_dir: Path | str, out_path: Path | str, predict_config: PredictConfig,
                      config: RecalibrationConfig) -> dict:
    """The recalibrate rule: predict the validation split with the model's raw posterior (as predict samples it), fit, write JSON."""
    from dataclasses import replace

    from zoobot_core.dirichlet import samples_array
    from zoobot_core.io import write_json
    from zoobot_core.predict import predict_shards
    from zoobot_core.runtime import MODEL_FILE, load_keras_model, load_model_config
    from zoobot_core.schemas import get_tree

    model_config = load_model_config(model_dir)
    tree = get_tree(model_config.get("tree_definition", model_config["tree"]), model_config["question_suffix"])
    _, _, samples = predict_shards(model_dir, shard_dir, "val", replace(predict_config, recalibrate=False))
    ids, alpha = samples_array(samples, tree.label_cols)
    val = pd.read_parquet(Path(shard_dir) / "val_catalog.parquet", columns=["id_str", *tree.label_cols]).set_index("id_str")
    votes = val.loc[ids, tree.label_cols].to_numpy(np.float64) if ids else np.zeros((0, len(tree.label_cols)))
    recalibration = fit_recalibration(alpha, votes, tree, config)
    recalibration.update({"n_val": len(ids), "n_samples": predict_config.n_samples * predict_config.tta_views,
                          "model_weights_sha256": model_fingerprint(load_keras_model(Path(model_dir) / MODEL_FILE)),
                          "predict": {"n_samples": predict_config.n_samples, "tta_views": predict_config.tta_views, "seed": predict_config.seed}})
    write_json(recalibration, out_path)
    for name, entry in recalibration["questions"].items():
        if entry["status"] == "fitted":
            log.info("%s: scale %.3f, power %.3f (%s) on %d validation galaxies; NLL %.3f -> %.3f", name, entry["scale"], entry["power"],
                     entry["method"], entry["n_galaxies"], entry["nll_raw"], entry["nll_recalibrated"])
        else:
            log.warning("%s: %s", name, entry["status"])
    return recalibration
