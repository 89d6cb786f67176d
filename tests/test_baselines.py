"""Baselines: a rotation-invariant radial profile, downsampled pixels, class-balanced linear models tuned on training rows only."""

import numpy as np
import pytest

from zoobot_core.baselines import fit_constant, fit_linear, pixel_features, radial_profile_features


def _rings(n=40, size=32, seed=0):
    """Discs (label 0) and discs with a bright ring (label 1) at random positions angles: only the radial structure tells them apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    radius = np.hypot(yy, xx)
    labels = np.tile([0, 1], n // 2)
    images = []
    for label in labels:
        image = 200 * np.exp(-radius / rng.uniform(2.5, 3.5)) + rng.normal(0, 6, (size, size))
        if label:
            image += 60 * np.exp(-((radius - rng.uniform(9, 11)) ** 2) / 2)
        images.append(np.repeat(np.clip(image, 0, 255)[..., None], 3, axis=-1))
    return np.asarray(images, np.uint8), labels


def test_radial_profile_is_unchanged_by_rotations_and_flips():
    images, _ = _rings(4)
    profile = radial_profile_features(images)
    assert profile.shape == (4, 3 * 16)
    for turned in (np.rot90(images, 1, axes=(1, 2)), images[:, ::-1], np.rot90(images, 3, axes=(1, 2))[:, :, ::-1]):
        np.testing.assert_allclose(radial_profile_features(np.ascontiguousarray(turned)), profile, atol=1e-6)
    assert radial_profile_features(images, greyscale=True).shape == (4, 16)
    assert pixel_features(images, 8).shape == (4, 64)


def test_the_radial_profile_baseline_finds_rings_and_its_threshold_ignores_the_scored_labels():
    images, labels = _rings(60)
    features = radial_profile_features(images)
    train, scored = np.arange(40), np.arange(40, 60)
    fitted = fit_linear(features, labels, train, scored, "binary", 2, inner_folds=3, seed=0)
    assert ((fitted.scores >= fitted.threshold) == labels[scored]).mean() >= 0.9
    assert 0 < fitted.threshold < 1 and "C" in fitted.chosen
    flipped = labels.copy()
    flipped[scored] = 1 - flipped[scored]  # nothing about the scored galaxies' labels may reach the fit
    again = fit_linear(features, flipped, train, scored, "binary", 2, inner_folds=3, seed=0)
    np.testing.assert_array_equal(again.scores, fitted.scores)
    assert again.threshold == fitted.threshold


def test_constant_predicts_the_training_majority_and_multiclass_probabilities_cover_every_class():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    constant = fit_constant(labels, np.arange(5), np.arange(5, 8), "binary", 2)
    assert constant.scores.tolist() == pytest.approx([0.4] * 3) and (constant.scores >= constant.threshold).sum() == 0
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1, 2], 10)
    features = rng.normal(0, 1, (30, 4)) + classes[:, None]
    fitted = fit_linear(features, classes, np.arange(0, 30, 2), np.arange(1, 30, 2), "multiclass", 3, inner_folds=3, seed=0)
    assert fitted.scores.shape == (15, 3) and np.allclose(fitted.scores.sum(axis=1), 1)
    reg = fit_linear(features, classes.astype(float), np.arange(0, 30, 2), np.arange(1, 30, 2), "regression", 1, inner_folds=3, seed=0)
    assert reg.scores.shape == (15,) and reg.threshold is None


def test_the_image_baselines_see_only_the_centre_crop_the_network_sees():
    """Finetuning's network sees the centre crop (crop_fraction of the width, as Keras' CenterCrop takes it):
    the radial profile and pixel baselines must see that field of view too, not the whole image."""
    import keras

    from zoobot_core.baselines import centre_crop, image_baseline_features

    images, _ = _rings(6, size=48)
    outside = np.ones((48, 48), bool)
    outside[6:42, 6:42] = False  # the centre 36 px = round(0.75 * 48) that the network sees
    other = images.copy()
    other[:, outside] = np.random.default_rng(1).integers(0, 256, (6, outside.sum(), 3), dtype=np.uint8)
    cropped = centre_crop(images, 0.75)
    np.testing.assert_array_equal(cropped, keras.ops.convert_to_numpy(keras.layers.CenterCrop(36, 36)(images.astype(np.float32))).astype(np.uint8))
    features, again = image_baseline_features(images, 0.75, pixel_size=8), image_baseline_features(other, 0.75, pixel_size=8)
    assert features["radial_profile"].shape == (6, 3 * 18) and features["pixels"].shape == (6, 64)
    for name in ("radial_profile", "pixels"):
        np.testing.assert_array_equal(again[name], features[name])
    assert not np.allclose(image_baseline_features(other, 1.0)["radial_profile"], image_baseline_features(images, 1.0)["radial_profile"])
    with pytest.raises(ValueError, match="crop_fraction"):
        image_baseline_features(images, 0.0)


def _grid_search(task: str, cv, x: np.ndarray, y: np.ndarray):
    """The search as it was before issue 25's stopped walk: scikit-learn's GridSearchCV over the whole grid."""
    from sklearn.model_selection import GridSearchCV

    from zoobot_core.baselines import ALPHA_GRID, C_GRID, linear_model

    if task == "regression":
        return GridSearchCV(linear_model(task), {"ridge__alpha": ALPHA_GRID}, cv=cv, scoring="neg_mean_squared_error").fit(x, y)
    return GridSearchCV(linear_model(task), {"logisticregression__C": C_GRID}, cv=cv, scoring="neg_log_loss").fit(x, y)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_stopped_search_chooses_what_the_whole_grid_search_chooses_and_scores_as_it_does(task):
    """linear_search walks the grid from the strongest regularisation and stops two points past the best: on
    features of rings with a fifth of the labels flipped (binary), three classes, and a regression, its scores are GridSearchCV's to the last bit, it
    chooses the same value, and its refitted model predicts the same numbers; scoring the whole grid is GridSearchCV."""
    from zoobot_core.baselines import linear_search, splitter

    images, labels = _rings(120)
    x = np.concatenate([radial_profile_features(images), pixel_features(images, 8)], axis=1)
    flipped = labels ^ (np.random.default_rng(2).random(len(labels)) < 0.2)  # noisy labels: the best C is inside the grid
    y = {"binary": flipped, "multiclass": np.arange(len(labels)) % 3, "regression": labels * 2.0 + np.random.default_rng(1).normal(0, 0.5, len(labels))}[task]
    cv = splitter(y, task, 3, seed=4)
    reference = _grid_search(task, cv, x, y)
    values = reference.cv_results_["param_" + next(iter(reference.best_params_))]
    whole = {float(v): float(s) for v, s in zip(values, reference.cv_results_["mean_test_score"])}
    for patience in (2, 100):
        search = linear_search(task, cv, x, y, patience=patience)
        assert search.best_params_ == reference.best_params_
        assert all(search.scores[v] == whole[v] for v in search.scores)  # each score computed is GridSearchCV's, bit for bit
        predict = "predict" if task == "regression" else "predict_proba"
        np.testing.assert_array_equal(getattr(search.best_estimator_, predict)(x), getattr(reference.best_estimator_, predict)(x))
    assert len(linear_search(task, cv, x, y, patience=100).scores) == len(whole)
    assert len(linear_search(task, cv, x, y).scores) < len(whole)  # the weakest regularisations, past the best, not fitted


@pytest.mark.slow
def test_the_probe_search_benchmark_runs_at_a_tiny_size(real_sample, tmp_path):
    """tests/benchmarks/bench_probe_search.py (docs/benchmarks.md: the probe's search), 150 galaxies, random weights."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    import bench_probe_search

    report = bench_probe_search.main(["--n", "150", "--base", "none", "--workdir", str(tmp_path)])
    row = report["rows"][0]
    assert row["same_choice"] and row["same_held_out_scores"] and row["stopped_points"] <= row["whole_points"] == 13
    assert row["whole_s"] > 0 and row["stopped_s"] > 0 and "| 150 (x 1,280) |" in report["table"]
