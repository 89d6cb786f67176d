"""Finetune a base on a new label and score it honestly: stratified k-fold cross-validation with the
baselines on the same folds, then a final model trained on every labelled galaxy.

The procedure is linear probing, then optional finetuning (LP-FT; Kumar et al. 2022, "Fine-tuning can
distort pretrained features"):

1. The frozen base's pooled features of every galaxy, averaged over its four 90-degree rotations.
2. The head: a standardised, class-balanced logistic regression (ridge for regression) on them, its
   strength chosen by an inner CV on the training galaxies. With `unfreeze_blocks: 0` the finetuned
   model is exactly this: the base's linear probe, as a Keras model with MC dropout.
3. With `unfreeze_blocks` > 0: the head goes into the network, the base's last blocks (EfficientNet's
   blocks, a ConvNeXt's stages) are unfrozen and everything trains at a low learning rate with Zoobot's augmentations and class
   weights, early-stopped on an inner validation split of the training galaxies; if no epoch beats
   the head-only starting point, the starting point is kept.

Galaxies the base was trained on are never scored (they may help train). Thresholds (binary) come
from training galaxies only. Every method sees the same field of view: the network's centre crop.
With `temperature_scaling`, classification probabilities are rescaled by one temperature (temperature.py):
each fold's out-of-fold scores by one fitted on the other folds' only, the final model's by one fitted on all
of them (or 1, where that did not lower the cross-validated log loss). Classes and thresholds stay the raw ones'.

Modules: this one holds the procedure (cross-validation, the final model); unfreeze.py the Keras training loop of
step 3; image_source.py where the images are read from (an array, or the workflow's shards a batch at a time);
finetune_io.py the files (the workflow's catalog and shards in, the outputs written, the base's training ids).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.baselines import Fitted, crop_px, fit_constant, fit_linear, splitter, streamed_baseline_features
from zoobot_core.bases import ENCODER, ENCODER_SIZE, HEAD, STANDARDISE, BaseSpec, base_channels, build_network, efficientnet_of
from zoobot_core.finetune_io import base_overlap, seen_by, write_outputs  # noqa: F401 (seen_by: the API)
from zoobot_core.finetuned import ROTATIONS, feature_extractor, head_outputs, rotation_features, scores_from_outputs
from zoobot_core.image_source import ImageSource, as_source, gather_rows
from zoobot_core.runtime import leaves_process_state
from zoobot_core.scores import balanced_threshold, classify, paired_difference, score_predictions, summary_table
from zoobot_core.unfreeze import check_unfreeze_blocks, inner_split, train_unfrozen, unfreezable_units, unfreeze_last_blocks  # noqa: F401 (the API)

log = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "regression")
METHODS = ("finetuned", "linear_probe", "radial_profile", "pixels", "constant")
EXCLUDED_FOLD = -1  # galaxies the base was trained on: in every training set, never scored


@dataclass(frozen=True)
class FinetuneConfig:
    """The task, the cross-validation, the network's input, and the optional unfreezing stage."""

    task: str = "binary"  # binary (labels 0/1), multiclass (0..n_classes-1), regression (numbers)
    n_classes: int = 2
    folds: int = 5  # stratified k-fold over the labelled galaxies; every galaxy scored once
    inner_folds: int = 5  # inner CV on the training folds: regularisation and thresholds
    decision_threshold: float | None = None  # binary: None chooses it on training galaxies (max balanced accuracy)
    crop_fraction: float = 0.75  # centre crop at inference (random crop in training), as in training the base
    resize_size: int | None = None  # the base network's input after cropping; None: the crop size (224 for a Zoobot 2 encoder)
    greyscale: bool | None = None  # None: as the base takes them (colour for imagenet / none)
    dropout_rate: float = 0.2  # before the head; on at prediction time for MC-dropout samples
    n_samples: int = 5  # MC-dropout samples per galaxy when predicting
    unfreeze_blocks: int = 0  # > 0: then train the base's last N stages (EfficientNet's blocks, a ConvNeXt's stages) with the head
    unfreeze_epochs: int = 20
    unfreeze_learning_rate: float = 1e-4
    patience: int = 5
    batch_size: int = 16
    val_fraction: float = 0.2  # of the training galaxies, for early stopping of the unfreezing stage
    pixel_size: int = 16  # the pixel baseline's downsampled size
    temperature_scaling: bool = True  # classes: rescale probabilities by a temperature fitted on out-of-fold scores (temperature.py)
    seed: int = 42

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"finetune task must be one of {TASKS}, got {self.task!r}")
        if (self.task == "binary" and self.n_classes != 2) or (self.task == "multiclass" and self.n_classes < 3):
            raise ValueError(f"A {self.task} task needs n_classes {'2' if self.task == 'binary' else '>= 3'}, not {self.n_classes}")
        if self.folds < 2 or self.inner_folds < 2:
            raise ValueError(f"folds and inner_folds must be at least 2; got {self.folds}, {self.inner_folds}")

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.task == "multiclass" else 1


def assign_folds(ids: np.ndarray, labels: np.ndarray, excluded: np.ndarray, config: FinetuneConfig) -> np.ndarray:
    """Fold number per galaxy (stratified by label for classes), EXCLUDED_FOLD for galaxies the base saw.

    Every fold's training part keeps at least 2 of every class (for the inner cross-validation);
    fewer folds than asked are used when the rarest class needs it. Folds depend on the ids,
    labels and seed only, not on the catalog's row order.
    """
    folds = np.full(len(ids), EXCLUDED_FOLD)
    eligible = np.flatnonzero(~excluded)
    eligible = eligible[np.argsort(ids[eligible], kind="stable")]
    y = labels[eligible]
    cv = splitter(y, config.task, config.folds, config.seed, keep=2, what="Cross-validation of the scorable galaxies")
    if cv.get_n_splits() < config.folds:
        log.warning("Only %d folds, not %d: the rarest class has %d scorable galaxies", cv.get_n_splits(), config.folds, np.bincount(y.astype(int)).min())
    for fold, (_, scored) in enumerate(cv.split(eligible, y if config.task != "regression" else None)):
        folds[eligible[scored]] = fold
    return folds


def network_input_size(base: BaseSpec, size: int, config: FinetuneConfig) -> int:
    """The base network's input after the crop: resize_size, else the crop size (224 px for a Zoobot 2 encoder, its training size)."""
    return config.resize_size or (ENCODER_SIZE if base.kind == ENCODER else crop_px(size, config.crop_fraction))


def _network(base: BaseSpec, size: int, channels: int, config: FinetuneConfig):
    crop = crop_px(size, config.crop_fraction)
    activation = {"binary": "sigmoid", "multiclass": "softmax", "regression": None}[config.task]
    return build_network(base, size, channels, crop, network_input_size(base, size, config), config.n_outputs, activation, config.dropout_rate, config.seed)


def _copy_of(network):
    """A fresh copy of a built network (same weights), so each fold starts from the same base."""
    import keras

    from zoobot_core.bases import refresh_normalization

    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    refresh_normalization(efficientnet_of(copy))
    return copy


def set_head(model, estimator, task: str) -> None:
    """Put a fitted scikit-learn pipeline (StandardScaler + logistic/ridge regression) into the network's
    standardisation and Dense head, so the network computes exactly the same scores."""
    scaler, linear = estimator[0], estimator[-1]
    model.get_layer(STANDARDISE).set_statistics(scaler.mean_, scaler.scale_)
    coef = np.atleast_2d(linear.coef_).astype(np.float32)
    intercept = np.atleast_1d(linear.intercept_).astype(np.float32)
    if task == "multiclass" and coef.shape[0] != model.output_shape[-1]:
        raise ValueError(f"The head saw {coef.shape[0]} classes in training but the task has {model.output_shape[-1]}; every class needs training galaxies")
    model.get_layer(HEAD).set_weights([coef.T, intercept])


def _head_only(network, features, labels, train, scored, config: FinetuneConfig, seed: int, head: Fitted | None = None) -> tuple[Fitted, object]:
    """The network with the linear probe fitted on `train` (or the one given) as its head."""
    head = head or fit_linear(features, labels, train, scored, config.task, config.n_classes, config.inner_folds, seed, config.decision_threshold)
    model = _copy_of(network)
    set_head(model, head.estimator, config.task)
    return head, model


def fit_finetuned(
    network, features: np.ndarray, images: ImageSource, labels: np.ndarray, train: np.ndarray, scored: np.ndarray,
    channels: int, config: FinetuneConfig, seed: int, probe: Fitted | None = None,
) -> tuple[Fitted, object, pd.DataFrame]:
    """The finetuned model trained on the `train` rows: (its scores on `scored` with its threshold, the Keras model, history).
    `probe`: the linear probe already fitted on the same rows with the same seed, if there is one.

    Unfreezing: the number of epochs (0, head only, included) is chosen on an inner split of the
    training rows, then the model is refitted on all of them for that many epochs: with 0 it is the
    linear probe. The threshold comes from the inner split's validation galaxies.
    """
    import keras

    # the copies made below rebuild EfficientNet's unseeded drop-connect layers, which draw their seeds from Python's
    # generator: seeded here, this fit is the same whatever ran before it
    keras.utils.set_random_seed(seed)
    head, model = _head_only(network, features, labels, train, scored, config, seed, probe)
    if config.unfreeze_blocks == 0:
        return head, model, pd.DataFrame()
    probe_kept = Fitted(head.scores, head.threshold, {**head.chosen, "unfreeze_epochs": 0}, head.estimator)
    if config.task != "regression" and np.bincount(labels[train].astype(int), minlength=config.n_classes).min() < 4:
        log.warning("Fewer than 4 training galaxies of a class: too few to choose unfreezing epochs on a split of them; keeping the linear probe")
        return probe_kept, model, pd.DataFrame()
    fit, val = inner_split(labels, train, config, seed)
    _, trial = _head_only(network, features, labels, fit, fit[:0], config, seed)
    history = train_unfrozen(trial, images, labels, fit, channels, config, seed, config.unfreeze_epochs, val).assign(stage="choose epochs")
    epochs = int(history.loc[history["kept"], "epoch"].iloc[0])
    if epochs == 0:
        return probe_kept, model, history
    threshold = None
    if config.task == "binary":
        val_scores = source_scores(trial, images, val, channels, config.task, config.batch_size)
        threshold = balanced_threshold(labels[val], val_scores) if config.decision_threshold is None else float(config.decision_threshold)
    refit = train_unfrozen(model, images, labels, train, channels, config, seed, epochs).assign(stage="refit")
    scores = source_scores(model, images, scored, channels, config.task, config.batch_size) if len(scored) else head.scores
    return Fitted(scores, threshold, {**head.chosen, "unfreeze_epochs": epochs}), model, pd.concat([history, refit], ignore_index=True)


def source_scores(model, images: ImageSource, rows: np.ndarray, channels: int, task: str, batch_size: int) -> np.ndarray:
    """The model's scores (dropout off) for `rows` of an image source, read a batch at a time, in `rows`' order
    (finetuned.model_scores, with the feature extractor built once: building it per batch traces it again each time)."""
    extractor = feature_extractor(model)
    units = model.output_shape[-1]

    def compute(batch: np.ndarray) -> np.ndarray:
        return scores_from_outputs(head_outputs(model, rotation_features(extractor, batch, channels, batch_size)), task)

    return gather_rows(images, rows, batch_size, compute, empty=(units,) if task == "multiclass" else ())


def source_features(network, images: ImageSource, channels: int, batch_size: int) -> np.ndarray:
    """The frozen base's rotation-averaged pooled features of every row (n x features floats), a batch at a time."""
    extractor = feature_extractor(network)
    rows = np.arange(len(images))
    desc = tqdm(total=len(images), desc="base features", unit="galaxy", mininterval=10, disable=len(images) < 1000)

    def compute(batch: np.ndarray) -> np.ndarray:
        desc.update(len(batch))
        return rotation_features(extractor, batch, channels, batch_size)

    with desc:
        return gather_rows(images, rows, batch_size, compute)


@leaves_process_state
def cross_validate(
    images: np.ndarray | ImageSource, ids: np.ndarray, labels: np.ndarray, base: BaseSpec, config: FinetuneConfig,
    excluded: np.ndarray | None = None, threads: int | None = None,
) -> tuple[pd.DataFrame, dict, pd.DataFrame, object]:
    """Out-of-fold scores of the finetuned model and every baseline on the same folds.

    Returns (one row per galaxy: id_str, label, fold, <method>_score (or _p<k>), <method>_predicted;
    metrics per method; the unfreezing histories; the frozen starting network, for the final model).
    """
    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(config.seed, True, threads)
    images = as_source(images)
    ids, labels = np.asarray(ids).astype(str), np.asarray(labels)
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images: give one id and label per image")
    excluded = np.zeros(len(ids), bool) if excluded is None else np.asarray(excluded, bool)
    channels = base_channels(base, config.greyscale)
    network = _network(base, images.size, channels, config)
    check_unfreeze_blocks(network, config.unfreeze_blocks)  # before any work, not in the first fold
    started = time.perf_counter()
    features = source_features(network, images, channels, config.batch_size)
    log.info("Frozen base features of %d galaxies x %d rotations: %.0f s", len(images), ROTATIONS, time.perf_counter() - started)
    inputs = {"linear_probe": features, **streamed_baseline_features(images, config.crop_fraction, config.pixel_size, greyscale=channels == 1)}
    field_of_view = {"crop_fraction": config.crop_fraction, "crop_px": crop_px(images.size, config.crop_fraction), "image_px": images.size}
    log.info("Every method sees the centre %d of %d px (crop_fraction %.2f), as the network does", field_of_view["crop_px"], images.size, config.crop_fraction)
    folds = assign_folds(ids, labels, excluded, config)
    n_folds = int(folds.max()) + 1
    shape = (len(ids), config.n_classes) if config.task == "multiclass" else (len(ids),)
    scores = {m: np.full(shape, np.nan) for m in METHODS}
    predicted = {m: np.full(len(ids), -1) for m in METHODS}
    thresholds: dict[str, list] = {m: [] for m in METHODS}
    unfreeze_epochs: list[int] = []  # per fold: epochs of unfreezing kept (0: the linear probe kept)
    histories = []
    for fold in range(n_folds):
        started = time.perf_counter()
        train, scored = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        seed = config.seed + fold
        results = {name: fit_linear(x, labels, train, scored, config.task, config.n_classes, config.inner_folds, seed, config.decision_threshold)
                   for name, x in inputs.items()}
        results["constant"] = fit_constant(labels, train, scored, config.task, config.n_classes)
        if config.unfreeze_blocks == 0:
            results["finetuned"] = results["linear_probe"]  # a frozen base with a linear head is its linear probe
        else:
            results["finetuned"], _, history = fit_finetuned(network, features, images, labels, train, scored, channels, config, seed, results["linear_probe"])
            histories.append(history.assign(fold=fold))
            unfreeze_epochs.append(int(results["finetuned"].chosen["unfreeze_epochs"]))
        for name, fitted in results.items():
            scores[name][scored] = fitted.scores
            thresholds[name].append(fitted.threshold)
            if config.task != "regression":
                predicted[name][scored] = classify(fitted.scores, config.task, 0.5 if fitted.threshold is None else fitted.threshold)
        log.info("Fold %d/%d (%d scored): %.0f s; this fold's accuracy: %s", fold + 1, n_folds, len(scored), time.perf_counter() - started,
                 ", ".join(f"{m} {np.mean(predicted[m][scored] == labels[scored]):.2f}" for m in METHODS) if config.task != "regression" else "n/a")
    table = pd.DataFrame({"id_str": ids, "label": labels, "fold": folds})
    for name in METHODS:
        if config.task == "multiclass":
            for k in range(config.n_classes):
                table[f"{name}_p{k}"] = scores[name][:, k]
        else:
            table[f"{name}_score"] = scores[name]
        if config.task != "regression":
            table[f"{name}_predicted"] = predicted[name]
    scored_rows = folds != EXCLUDED_FOLD
    metrics = {}
    for name in METHODS:
        metrics[name] = score_predictions(
            labels[scored_rows], scores[name][scored_rows], predicted[name][scored_rows] if config.task != "regression" else None,
            folds[scored_rows], config.task, config.n_classes, seed=config.seed,
        )
        if config.task == "binary":
            metrics[name]["thresholds"] = thresholds[name]
        metrics[name]["field_of_view"] = field_of_view
    if config.unfreeze_blocks > 0:
        metrics["finetuned"]["unfreeze_epochs"] = unfreeze_epochs
    finetuned = (scores["finetuned"][scored_rows], predicted["finetuned"][scored_rows] if config.task != "regression" else None)
    for name in METHODS[1:]:
        # does the finetuned model beat this method on the same galaxies, beyond what resampling them could do?
        metrics[name]["finetuned_minus_this"] = paired_difference(
            labels[scored_rows], finetuned, (scores[name][scored_rows], predicted[name][scored_rows] if config.task != "regression" else None),
            config.task, config.n_classes, seed=config.seed,
        )
    if config.temperature_scaling and config.task != "regression":
        add_temperature_scaling(table, metrics, scores, thresholds["finetuned"], labels, folds, config.task)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["fold", "epoch", "loss", "val_loss", "kept"])
    return table, metrics, history, (network, features, channels)


def add_temperature_scaling(
    table: pd.DataFrame, metrics: dict, scores: dict[str, np.ndarray], thresholds: list, labels: np.ndarray, folds: np.ndarray, task: str,
) -> None:
    """Temperature scaling of every method's out-of-fold probabilities, each fold by a temperature fitted on the
    other folds only (temperature.temperature_report): metrics[m]["calibration"] (raw and scaled log loss, Brier,
    ECE; the final model's temperature for the finetuned model), and the finetuned model's rescaled scores in the
    table (finetuned_score_scaled, or finetuned_p<k>_scaled). Classes and thresholds stay those of the raw scores:
    a binary fold's threshold, mapped through its temperature, is reported as thresholds_scaled."""
    from zoobot_core.temperature import apply_temperature, temperature_report

    scored = folds != EXCLUDED_FOLD
    for name in METHODS:
        report, scaled = temperature_report(scores[name][scored], labels[scored], folds[scored], task)
        if name != "finetuned":  # no final model of a baseline to rescale
            report = {k: v for k, v in report.items() if not k.startswith("final_")}
        metrics[name]["calibration"] = report
        if name == "finetuned":
            full = np.full(scores[name].shape, np.nan)
            full[scored] = scaled
            if task == "binary":
                table["finetuned_score_scaled"] = full
                report["thresholds_scaled"] = [float(apply_temperature(np.array([t]), temp, task)[0])
                                               for t, temp in zip(thresholds, report["fold_temperatures"])]
            else:
                for k in range(full.shape[1]):
                    table[f"finetuned_p{k}_scaled"] = full[:, k]
    report = metrics["finetuned"]["calibration"]
    log.info("Temperature scaling (each fold by the other folds' T: %s): out-of-fold log loss %.4f -> %.4f, Brier %.4f -> %.4f, ECE %.4f -> %.4f; "
             "final model T = %.3f (%s)", ", ".join(f"{t:.2f}" for t in report["fold_temperatures"]), report["raw"]["log_loss"], report["scaled"]["log_loss"],
             report["raw"]["brier"], report["scaled"]["brier"], report["raw"]["ece"], report["scaled"]["ece"], report["final_temperature"],
             report["final_temperature_reason"])


def final_temperature_settings(calibration: dict, threshold: float | None) -> dict:
    """What finetune_config.json keeps of temperature scaling: the final model's temperature (fitted on every
    out-of-fold score, or 1 where that did not help), why, and a binary threshold mapped through it."""
    from zoobot_core.temperature import apply_temperature

    temperature = float(calibration["final_temperature"])
    out = {"temperature": temperature, "temperature_reason": calibration["final_temperature_reason"]}
    if threshold is not None:
        out["threshold_scaled"] = float(apply_temperature(np.array([threshold]), temperature, "binary")[0])
    return out


def train_final(start, images: ImageSource, labels: np.ndarray, oof: pd.DataFrame, config: FinetuneConfig) -> tuple[object, float | None, pd.DataFrame, int]:
    """The model to use: the same procedure on every labelled galaxy. Its binary threshold is the one that
    maximises balanced accuracy on the cross-validation's out-of-fold scores (or the configured one).
    Returns (model, threshold, history, epochs of unfreezing kept: 0 when it is the linear probe)."""
    network, features, channels = start
    everyone = np.arange(len(labels))
    fitted, model, history = fit_finetuned(network, features, images, labels, everyone, everyone[:0], channels, config, config.seed + 1000)
    threshold = None
    if config.task == "binary":
        scored = oof[oof["fold"] != EXCLUDED_FOLD]
        threshold = balanced_threshold(scored["label"].to_numpy(), scored["finetuned_score"].to_numpy()) if config.decision_threshold is None else float(config.decision_threshold)
    return model, threshold, history, int(fitted.chosen.get("unfreeze_epochs", 0))


@leaves_process_state
def finetune(
    images: np.ndarray | ImageSource, ids, labels, base: BaseSpec, out_dir: Path | str, config: FinetuneConfig,
    label_col: str = "label", seen_by_base: set[str] | frozenset | None = None, threads: int | None = None, catalog: dict | None = None,
) -> dict:
    """Cross-validate, then train the final model on every galaxy; write into `out_dir`:
    model.keras and finetune_config.json (the final model), cv_predictions.parquet (out-of-fold scores
    of every method), cv_metrics.csv (one row per method), history.csv (unfreezing), metrics.json.
    With `temperature_scaling` (classes): metrics.json's methods[m]["calibration"] compares raw and
    temperature-scaled out-of-fold probabilities, and finetune_config.json keeps the final model's temperature.

    `images` are 0-255 RGB (n, size, size, 3) resized by the pipeline's resize (images.load_rgb), or an image source
    (image_source.ShardImages: the workflow's shards, read a batch at a time);
    `seen_by_base` are ids the base was trained on: never scored (matched by id). None (the default): read
    them from the trained_on.parquet beside a pipeline base (see base_overlap); metrics.json's
    `base_overlap` says whether that was possible and how many labelled ids matched. `catalog` (the row
    accounting) goes into metrics.json.
    """
    out_dir = Path(out_dir)
    images = as_source(images)
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels, np.float64 if config.task == "regression" else np.int64)
    excluded, overlap = base_overlap(ids, base, seen_by_base)
    timings, started = {}, time.perf_counter()
    log.info("Finetuning %s on %d galaxies (%d px, task %s): %d-fold CV, then a final model; %d never scored (the base was trained on them)",
             base.label, len(ids), images.size, config.task, config.folds, excluded.sum())
    oof, metrics, history, start = cross_validate(images, ids, labels, base, config, excluded, threads)
    timings["cross_validation"] = time.perf_counter() - started
    started = time.perf_counter()
    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(config.seed, True, threads)  # cross_validate put the caller's state back; finetune restores it at the end
    model, threshold, final_history, final_epochs = train_final(start, images, labels, oof, config)
    timings["final_model"] = time.perf_counter() - started
    history = pd.concat([history, final_history.assign(fold="final")], ignore_index=True) if len(final_history) else history
    channels = start[2]
    from zoobot_core.encoders import encoder_fingerprint

    settings = {
        "task": config.task, "n_classes": config.n_classes, "label": label_col, "threshold": threshold, "channels": channels,
        "input_size": images.size, "rotations": ROTATIONS, "n_samples": config.n_samples, "base": base.label,
        "kept": "unfrozen" if final_epochs else "linear_probe", "unfreeze_epochs": final_epochs, "config": asdict(config),
    }
    calibration = metrics["finetuned"].get("calibration")
    if calibration is not None:  # survey predictions rescale by it (finetuned.calibrate); `threshold` stays on the raw probability
        settings.update(final_temperature_settings(calibration, threshold))
    summary = {
        "task": config.task,
        "label": label_col,
        "base": base.label,
        **({"base_encoder": encoder_fingerprint(base.path)} if base.kind == ENCODER else {}),  # which weights: SHA-256, HF commit
        "n_galaxies": int(len(ids)),
        "n_scored": int((oof["fold"] != EXCLUDED_FOLD).sum()),
        "base_overlap": overlap,
        "n_folds": int(oof["fold"].max()) + 1,
        "methods": metrics,
        "final_model": {"threshold": threshold, "kept": settings["kept"], "unfreeze_epochs": final_epochs,
                        "unfrozen_blocks": config.unfreeze_blocks if final_epochs else 0,
                        **{k: settings[k] for k in ("temperature", "temperature_reason", "threshold_scaled") if k in settings}},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "config": asdict(config),
        **({"catalog": catalog} if catalog is not None else {}),
    }
    write_outputs(out_dir, model, settings, oof, summary_table(metrics, config.task), history, summary)
    headline = "balanced_accuracy" if config.task != "regression" else "mae"
    log.info("Out-of-fold %s: %s", headline, ", ".join(f"{m} {metrics[m][headline]['pooled']:.3f}" for m in METHODS))
    for name in METHODS[1:]:
        diff = metrics[name]["finetuned_minus_this"][headline]
        log.info("Finetuned minus %s: %+.3f (paired bootstrap 95%%: %+.3f to %+.3f)", name, diff["difference"], *diff["ci95"])
    return summary
