"""The simple models finetuning must beat, fitted and scored on the same folds as the finetuned model.

- constant: the training folds' class frequencies (or mean);
- pixels: logistic (ridge) regression on downsampled greyscale pixels;
- radial profile: the same on the azimuthally averaged radial brightness profile per channel, which
  no rotation of the galaxy changes;
- linear probe: the same on the frozen base's pooled features (finetune computes them, averaged over
  the four 90-degree rotations).

The pixel and radial-profile baselines see the field of view the network sees: the centre crop of
`crop_fraction` of the width (centre_crop, as Keras' CenterCrop takes it), so "finetuned minus
baseline" compares methods on the same pixels.

Every linear model is standardised and class-balanced, with its regularisation chosen by an inner
cross-validation on the training folds only. The decision threshold of a binary model is chosen on
the training folds too (scores.balanced_threshold of inner out-of-fold scores), never on the scored fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zoobot_core.scores import balanced_threshold

C_GRID = np.logspace(-4, 2, 13)  # inverse L2 strength of logistic regression
ALPHA_GRID = np.logspace(-2, 5, 15)  # L2 strength of ridge regression


@dataclass
class Fitted:
    """A method's scores for the scored galaxies (P(class 1), (n, classes) probabilities, or values),
    its decision threshold (binary) and what the inner CV chose."""

    scores: np.ndarray
    threshold: float | None = None
    chosen: dict = field(default_factory=dict)
    estimator: object = None


def crop_px(size: int, crop_fraction: float) -> int:
    """The side in pixels of the centre crop the finetuned network sees of a size-px image."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"finetune.settings.crop_fraction must be in (0, 1], got {crop_fraction}")
    return max(1, int(round(size * crop_fraction)))


def centre_crop(images: np.ndarray, crop_fraction: float) -> np.ndarray:
    """The centre crop of each (n, h, w, c) image, at the offsets Keras' CenterCrop takes ((h - crop) // 2):
    exactly the pixels the finetuned network sees at inference."""
    images = np.asarray(images)
    height, width = images.shape[1:3]
    crop_h, crop_w = crop_px(height, crop_fraction), crop_px(width, crop_fraction)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[:, top : top + crop_h, left : left + crop_w]


def image_baseline_features(images: np.ndarray, crop_fraction: float, pixel_size: int = 16, greyscale: bool = False) -> dict[str, np.ndarray]:
    """The radial-profile and pixel baselines' features of 0-255 images, both from the network's centre crop."""
    cropped = np.ascontiguousarray(centre_crop(images, crop_fraction))
    return {"radial_profile": radial_profile_features(cropped, greyscale=greyscale), "pixels": pixel_features(cropped, pixel_size)}


def streamed_baseline_features(source, crop_fraction: float, pixel_size: int = 16, greyscale: bool = False, batch_size: int = 256) -> dict[str, np.ndarray]:
    """image_baseline_features of every row of an image source (image_source), a batch at a time: the features
    (n x a few hundred floats) are held, never the images."""
    from zoobot_core.image_source import gather_rows

    n_radial = {}

    def compute(images: np.ndarray) -> np.ndarray:
        features = image_baseline_features(images, crop_fraction, pixel_size, greyscale)
        n_radial["width"] = features["radial_profile"].shape[1]
        return np.concatenate([features["radial_profile"], features["pixels"]], axis=1)

    both = gather_rows(source, np.arange(len(source)), batch_size, compute)
    return {"radial_profile": both[:, : n_radial["width"]], "pixels": both[:, n_radial["width"] :]}


def pixel_features(images: np.ndarray, size: int = 16) -> np.ndarray:
    """Greyscale pixels downsampled to size x size (LANCZOS), one row per image, in [0, 1]."""
    from PIL import Image

    grey = np.asarray(images, np.float32).mean(axis=-1)
    return np.stack([
        np.asarray(Image.fromarray(g.astype(np.float32)).resize((size, size), Image.Resampling.LANCZOS), np.float32).ravel() / 255.0
        for g in grey
    ])


def radial_profile_features(images: np.ndarray, greyscale: bool = False) -> np.ndarray:
    """Mean brightness in 1-pixel-wide rings around the image centre (out to half the width), per
    channel (or of the greyscale image), in [0, 1]: a description no rotation of the galaxy changes."""
    images = np.asarray(images, np.float32) / 255.0
    if greyscale:
        images = images.mean(axis=-1, keepdims=True)
    n, height, width, channels = images.shape
    yy, xx = np.indices((height, width))
    radius = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2).ravel()
    n_bins = min(height, width) // 2
    ring = np.floor(radius).astype(int)
    inside = ring < n_bins
    averaging = np.zeros((n_bins, height * width), np.float32)  # row b: 1/count for the pixels of ring b
    averaging[ring[inside], np.flatnonzero(inside)] = 1.0
    averaging /= averaging.sum(axis=1, keepdims=True)
    flat = images.reshape(n, height * width, channels)
    return np.einsum("bp,npc->ncb", averaging, flat).reshape(n, channels * n_bins)


def splitter(labels: np.ndarray, task: str, folds: int, seed: int, keep: int = 1, what: str = "the inner cross-validation"):
    """K-fold splitter, stratified by class, with as many folds as asked (at most) such that every training
    part keeps at least `keep` galaxies of every class; plain k-fold for regression."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        if len(labels) < 2 * max(keep, 1):
            raise ValueError(f"{what} needs at least {2 * max(keep, 1)} galaxies; there are {len(labels)}")
        return KFold(min(folds, len(labels)), shuffle=True, random_state=seed)
    counts = np.unique(labels, return_counts=True)[1]
    smallest = int(counts.min())
    # a stratified test part holds at most ceil(m / n) of a class with m galaxies
    usable = [n for n in range(min(folds, smallest), 1, -1) if smallest - -(-smallest // n) >= keep]
    if not usable or len(counts) < 2:
        raise ValueError(
            f"{what} needs every class among these galaxies, with at least {keep + 1 if keep > 1 else 2} of each; "
            f"the class counts are {counts.tolist()}. Label more galaxies of the rare class."
        )
    return StratifiedKFold(usable[0], shuffle=True, random_state=seed)


PATIENCE = 2  # grid points past the best inner-CV score before the search stops (a factor 10 in C or alpha)


def linear_model(task: str):
    """Standardisation + class-balanced logistic regression (ridge for regression), regularisation to be set."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        return make_pipeline(StandardScaler(), Ridge())
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))


@dataclass
class Search:
    """What linear_search chose: the refitted model, the parameter and its value, every score computed."""

    best_estimator_: object
    best_params_: dict
    scores: dict[float, float]


def linear_search(task: str, cv, x: np.ndarray, y: np.ndarray, patience: int = PATIENCE) -> Search:
    """The regularisation of linear_model chosen by `cv` on (x, y), then the model refitted on all of them.

    GridSearchCV's choice, computed the same way (each grid point's fits on `cv`'s splits, scored by the same scorer,
    mean over splits, the first best), walking the grid from the strongest regularisation to the weakest and stopping
    `patience` points past the best so far: weakly regularised logistic regressions cost the most iterations (at
    12,000 galaxies x 1,280 features, C = 100 takes 5,000 against 1,245 at C = 1), and the held-out log loss of an
    L2 path has one minimum in practice, so the points skipped would not have been chosen. With patience >= the
    grid's length the whole grid is scored, exactly as GridSearchCV does.
    """
    from sklearn.base import clone
    from sklearn.metrics import get_scorer

    model = linear_model(task)
    if task == "regression":
        param, grid, scorer = "ridge__alpha", ALPHA_GRID[::-1], get_scorer("neg_mean_squared_error")  # weakest regularisation last
    else:
        param, grid, scorer = "logisticregression__C", C_GRID, get_scorer("neg_log_loss")
    splits = list(cv.split(x, y))
    scores: dict[float, float] = {}
    best, since_best = -np.inf, 0
    for value in grid:
        fold_scores = [scorer(clone(model).set_params(**{param: value}).fit(x[fit], y[fit]), x[held], y[held]) for fit, held in splits]
        scores[float(value)] = float(np.mean(fold_scores))
        best, since_best = (scores[float(value)], 0) if scores[float(value)] > best else (best, since_best + 1)
        if since_best >= patience:
            break
    # the first best in the grid's own order (GridSearchCV's rank 1 with ties to the earliest); the grid's own
    # np.float64, as GridSearchCV sets it: a Python float keeps float32 features' arithmetic in float32 (NEP 50)
    chosen = max((v for v in (np.sort(grid) if task == "regression" else grid) if float(v) in scores), key=lambda v: scores[float(v)])
    return Search(clone(model).set_params(**{param: chosen}).fit(x, y), {param: chosen}, scores)


def class_scores(estimator, features: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """P(class 1) for binary, (n, n_classes) probabilities for multiclass, values for regression."""
    if task == "regression":
        return estimator.predict(features).astype(np.float64)
    probabilities = estimator.predict_proba(features)
    full = np.zeros((len(features), n_classes))
    full[:, estimator.classes_.astype(int)] = probabilities
    return full[:, 1] if task == "binary" else full


def fit_linear(
    features: np.ndarray, labels: np.ndarray, train: np.ndarray, scored: np.ndarray, task: str, n_classes: int,
    inner_folds: int = 5, seed: int = 0, threshold: float | None = None,
) -> Fitted:
    """Fit on the `train` rows (regularisation by inner CV), score the `scored` rows; binary thresholds
    are `threshold` if given, else chosen on inner out-of-fold scores of the training rows."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    x, y = features[train], labels[train]
    cv = splitter(y, task, inner_folds, seed)
    search = linear_search(task, cv, x, y)
    scores = class_scores(search.best_estimator_, features[scored], task, n_classes) if len(scored) else np.zeros((0, n_classes) if task == "multiclass" else 0)
    fitted = Fitted(scores, chosen={k.split("__")[-1]: float(v) for k, v in search.best_params_.items()}, estimator=search.best_estimator_)
    if task == "binary":
        if threshold is None:
            inner = cross_val_predict(clone(search.best_estimator_), x, y, cv=cv, method="predict_proba")[:, 1]
            fitted.threshold = balanced_threshold(y, inner)
        else:
            fitted.threshold = float(threshold)
    return fitted


def fit_constant(labels: np.ndarray, train: np.ndarray, scored: np.ndarray, task: str, n_classes: int) -> Fitted:
    """The training rows' mean (regression) or class frequencies, for every scored row; binary
    threshold set so that it predicts the majority class."""
    y = labels[train]
    if task == "regression":
        return Fitted(np.full(len(scored), float(y.mean())))
    frequencies = np.bincount(y.astype(int), minlength=n_classes) / len(y)
    if task == "binary":
        return Fitted(np.full(len(scored), frequencies[1]), threshold=0.0 if frequencies[1] > 0.5 else 1.0 + 1e-9)
    return Fitted(np.tile(frequencies, (len(scored), 1)))
