"""Recalibration of the predicted Dirichlets: fitted on validation votes, it recovers a known over-confidence and travels with the model."""

import numpy as np
import pytest

from zoobot_core.calibration import CalibrationConfig, calibrate
from zoobot_core.recalibration import (
    RecalibrationConfig,
    RecalibrationError,
    apply_recalibration,
    fit_recalibration,
    invert_recalibration,
    transform,
)
from zoobot_core.schemas import DecisionTree, Question

TREE = DecisionTree("made-up", (Question("shape", ("round", "flat", "odd")), Question("arms", ("yes", "no"), ("shape", "flat"))))


def _galaxies(g: int, rng: np.random.Generator, overconfidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(predicted alpha (G, 3 samples, 5), votes (G, 5)): votes drawn from each galaxy's true Dirichlet-Multinomial, the
    prediction `overconfidence` times more concentrated than the truth, with a little dropout-like jitter between samples."""
    truth = np.concatenate([rng.dirichlet([2, 2, 2], g), rng.dirichlet([2, 2], g)], axis=1) * rng.uniform(3, 20, (g, 1))
    n = rng.integers(10, 40, g)
    shape = np.stack([rng.multinomial(k, rng.dirichlet(a)) for a, k in zip(truth[:, :3], n)])
    arms = np.stack([rng.multinomial(k, rng.dirichlet(a)) for a, k in zip(truth[:, 3:], shape[:, 1])])
    alpha = (truth * overconfidence)[:, None, :] * np.exp(0.02 * rng.standard_normal((g, 3, 5)))
    return alpha, np.concatenate([shape, arms], axis=1).astype(float)


def test_the_fitted_scale_recovers_a_known_overconfidence():
    alpha, votes = _galaxies(1500, np.random.default_rng(0), overconfidence=4.0)
    fitted = fit_recalibration(alpha, votes, TREE, RecalibrationConfig(method="scale"))
    for name in ("shape", "arms"):
        entry = fitted["questions"][name]
        assert entry["status"] == "fitted" and entry["power"] == 1.0
        assert entry["scale"] == pytest.approx(0.25, rel=0.12)
        assert entry["nll_recalibrated"] < entry["nll_raw"]
    honest = fit_recalibration(*_galaxies(1500, np.random.default_rng(1), overconfidence=1.0), TREE, RecalibrationConfig(method="scale"))
    assert honest["questions"]["shape"]["scale"] == pytest.approx(1.0, rel=0.12)  # a calibrated prediction is left about as it is


def test_the_power_is_kept_only_where_it_earns_its_place_in_cross_validation():
    alpha, votes = _galaxies(600, np.random.default_rng(2), overconfidence=4.0)
    auto = fit_recalibration(alpha, votes, TREE, RecalibrationConfig(method="auto"))
    for entry in auto["questions"].values():
        assert entry["method"] == ("scale_power" if entry["cv_nll"]["scale_power"] < entry["cv_nll"]["scale"] else "scale")
    # votes whose spread does not follow the predicted total: every galaxy's truth has the same total, the prediction does not
    rng = np.random.default_rng(3)
    g = 800
    truth = rng.dirichlet([2, 2, 2], g) * 6.0
    n = rng.integers(10, 40, g)
    counts = np.stack([rng.multinomial(k, rng.dirichlet(a)) for a, k in zip(truth, n)]).astype(float)
    predicted = (truth * rng.uniform(0.5, 30, (g, 1)))[:, None, :]
    tree = DecisionTree("one", (Question("shape", ("round", "flat", "odd")),))
    fitted = fit_recalibration(predicted, counts, tree, RecalibrationConfig(method="auto"))["questions"]["shape"]
    assert fitted["method"] == "scale_power" and fitted["power"] < 0.2  # the total becomes nearly constant, as the truth's
    power_alpha = apply_recalibration(predicted, {"answers": tree.label_cols, "questions": {"shape": fitted}}, tree)
    np.testing.assert_allclose(invert_recalibration(power_alpha.astype(np.float32), {"answers": tree.label_cols, "questions": {"shape": fitted}}, tree),
                               predicted, rtol=2e-5)
    assert fitted["cv_nll"]["scale_power"] < fitted["cv_nll"]["scale"]


def test_a_question_with_too_few_validation_galaxies_keeps_scale_one_and_says_so():
    alpha, votes = _galaxies(200, np.random.default_rng(4), overconfidence=4.0)
    votes[:15, 3:] = np.maximum(votes[:15, 3:], 1)
    votes[15:, 3:] = 0  # only 15 galaxies have arms votes
    fitted = fit_recalibration(alpha, votes, TREE, RecalibrationConfig(min_galaxies=20))
    arms = fitted["questions"]["arms"]
    assert arms["scale"] == 1.0 and arms["n_galaxies"] == 15 and "fewer than min_galaxies=20" in arms["status"]
    assert fitted["questions"]["shape"]["status"] == "fitted"
    calibrated = apply_recalibration(alpha, fitted, TREE)
    np.testing.assert_array_equal(calibrated[..., 3:], alpha[..., 3:])


def test_apply_and_invert_round_trip_and_keep_every_samples_vote_fractions():
    alpha, votes = _galaxies(300, np.random.default_rng(5), overconfidence=3.0)
    for method in ("scale", "scale_power"):
        fitted = fit_recalibration(alpha, votes, TREE, RecalibrationConfig(method=method))
        calibrated = apply_recalibration(alpha, fitted, TREE)
        np.testing.assert_allclose(invert_recalibration(calibrated, fitted, TREE), alpha, rtol=1e-9)
        stored = calibrated.astype(np.float32)  # as predict writes the samples
        np.testing.assert_allclose(invert_recalibration(stored, fitted, TREE), alpha, rtol=5e-6)
        for first, last in TREE.question_index_groups:
            block, raw = calibrated[..., first : last + 1], alpha[..., first : last + 1]
            np.testing.assert_allclose(block / block.sum(-1, keepdims=True), raw / raw.sum(-1, keepdims=True), rtol=1e-12)
    assert apply_recalibration(alpha, None, TREE) is alpha
    np.testing.assert_allclose(transform(np.array([1.0, 3.0]), np.log(2.0), 0.5), np.array([1.0, 3.0]) * 2 * 4.0 ** -0.5)
    other = DecisionTree("other", (Question("shape", ("round", "flat", "odd")),))
    with pytest.raises(RecalibrationError, match="refit it"):
        apply_recalibration(alpha[..., :3], fitted, other)


def test_recalibration_fitted_on_validation_makes_held_out_intervals_hold_what_they_promise():
    rng = np.random.default_rng(6)
    val_alpha, val_votes = _galaxies(800, rng, overconfidence=4.0)
    test_alpha, test_votes = _galaxies(800, rng, overconfidence=4.0)
    fitted = fit_recalibration(val_alpha, val_votes, TREE, RecalibrationConfig(method="scale"))
    table, curve, headline, pit = calibrate(apply_recalibration(test_alpha, fitted, TREE), test_votes, val_votes, TREE,
                                            CalibrationConfig(), raw_alpha=test_alpha)
    for level in ("0.5", "0.8", "0.95"):
        by = headline["coverage"][level]
        assert by["raw"]["coverage"] < by["raw"]["expected"] - 0.05  # the raw posterior is over-confident
        assert by["model"]["coverage"] == pytest.approx(by["model"]["expected"], abs=0.02)
    assert headline["nll_per_galaxy"]["model"] < headline["nll_per_galaxy"]["raw"]
    for level in ("0.5", "0.8", "0.95"):
        assert np.abs(table[f"coverage_{level}"] - table[f"expected_{level}"]).max() < 0.035
    assert headline["questions_covering_promise"]["model"]["of"] == 2
    assert {"raw_coverage_0.8", "raw_coverage_0.8_low", "nll_raw", "raw_nll_difference"} <= set(table.columns)
    assert set(curve["predictor"]) == {"model", "raw", "constant"}
    # PIT: a U shape (too narrow) raw, about flat recalibrated
    raw = pit[(pit["question"] == "shape") & (pit["predictor"] == "raw")]["fraction"].to_numpy()
    recalibrated = pit[(pit["question"] == "shape") & (pit["predictor"] == "model")]["fraction"].to_numpy()
    assert len(raw) == 10 and raw.sum() == pytest.approx(1.0)
    assert raw[0] + raw[-1] > 0.3 and np.abs(recalibrated - 0.1).max() < 0.03


def test_an_empty_validation_split_fits_nothing_and_says_so():
    fitted = fit_recalibration(np.zeros((0, 3, 5)), np.zeros((0, 5)), TREE, RecalibrationConfig())
    assert all(q["scale"] == 1.0 and q["n_galaxies"] == 0 and q["status"].startswith("not fitted") for q in fitted["questions"].values())
    with pytest.raises(ValueError, match="at least calibration.folds"):
        RecalibrationConfig(method="auto", min_galaxies=3, folds=5)


def test_samples_record_the_map_they_carry_and_a_disagreeing_file_is_refused(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from zoobot_core.predict import sample_table
    from zoobot_core.recalibration import METADATA_KEY, raw_from_samples

    alpha, votes = _galaxies(100, np.random.default_rng(7), overconfidence=3.0)
    fitted = fit_recalibration(alpha, votes, TREE, RecalibrationConfig(method="scale"))
    calibrated = apply_recalibration(alpha, fitted, TREE)
    table = pa.Table.from_pandas(sample_table([f"G{i}" for i in range(100)], calibrated.astype(np.float32), TREE.label_cols), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(fitted)}), tmp_path / "samples.parquet")
    (tmp_path / "same.json").write_text(json.dumps(fitted))
    other = json.loads(json.dumps(fitted))
    other["questions"]["shape"]["log_scale"] += 0.5
    (tmp_path / "other.json").write_text(json.dumps(other))
    stored = calibrated.astype(np.float32)
    for given in (None, tmp_path / "same.json"):  # the record is used, and a file that agrees with it is accepted
        raw, applied = raw_from_samples(stored, tmp_path / "samples.parquet", TREE, given)
        np.testing.assert_allclose(raw, alpha, rtol=5e-6)
    with pytest.raises(RecalibrationError, match="another recalibration"):
        raw_from_samples(stored, tmp_path / "samples.parquet", TREE, tmp_path / "other.json")
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(None)}), tmp_path / "raw.parquet")
    with pytest.raises(RecalibrationError, match="no recalibration"):  # raw samples are never "undone" by a map they did not get
        raw_from_samples(stored, tmp_path / "raw.parquet", TREE, tmp_path / "same.json")
    assert raw_from_samples(stored, tmp_path / "raw.parquet", TREE)[1] is None
