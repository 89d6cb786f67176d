"""Calibration: intervals hold what they claim on data drawn from the prediction, and not on over-confident ones."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import betabinom, dirichlet_multinomial

from zoobot_core.calibration import CalibrationConfig, calibrate, calibration_files, central_intervals, coverage, mixture_cdf
from zoobot_core.dirichlet import beta_binomial_cdf, fit_constant, log_pmf, mixture_log_pmf, samples_array
from zoobot_core.predict import sample_table
from zoobot_core.schemas import DecisionTree, Question

TREE = DecisionTree("made-up", (Question("shape", ("round", "flat", "odd")), Question("arms", ("yes", "no"), ("shape", "flat"))))


def _draw_votes(alpha: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Votes drawn from each galaxy's Dirichlet-Multinomial: alpha (G, K), n (G,)."""
    return np.stack([rng.multinomial(k, rng.dirichlet(a)) for a, k in zip(alpha, n)])


def test_beta_binomial_cdf_matches_scipy():
    n, a, b = np.array([5, 12, 40]), np.array([0.7, 3.0, 20.0]), np.array([2.0, 1.5, 4.0])
    ours = beta_binomial_cdf(n, a, b, 45)
    for i in range(3):
        np.testing.assert_allclose(ours[i, : n[i] + 1], betabinom.cdf(np.arange(n[i] + 1), n[i], a[i], b[i]), rtol=1e-10)
        assert (ours[i, n[i]:] == 1).all()


def test_log_pmf_matches_scipy():
    rng = np.random.default_rng(9)
    alpha, counts = rng.uniform(0.3, 40, (20, 4)), rng.integers(0, 15, (20, 4))
    expected = [dirichlet_multinomial.logpmf(c, a, c.sum()) for c, a in zip(counts, alpha)]
    np.testing.assert_allclose(log_pmf(counts, alpha), expected, rtol=1e-12)


def test_mixture_log_pmf_is_the_log_of_the_mean():
    rng = np.random.default_rng(0)
    alpha, counts = rng.uniform(0.5, 20, (4, 6, 3)), rng.integers(0, 9, (4, 3))
    expected = np.log(np.exp(log_pmf(counts[:, None, :], alpha)).mean(axis=1))
    np.testing.assert_allclose(mixture_log_pmf(counts, alpha), expected, rtol=1e-12)


def test_constant_fit_recovers_the_concentrations_votes_were_drawn_from():
    rng = np.random.default_rng(1)
    truth = np.array([6.0, 2.0, 0.8])
    votes = _draw_votes(np.tile(truth, (3000, 1)), rng.integers(20, 45, 3000), rng)
    np.testing.assert_allclose(fit_constant(votes), truth, rtol=0.15)
    assert fit_constant(np.zeros((5, 3))).tolist() == [1.0, 1.0, 1.0]


def test_central_interval_holds_at_least_its_level_and_is_the_shortest_central_one():
    cdf = beta_binomial_cdf(np.array([30]), np.array([4.0]), np.array([9.0]), 30)
    lower, upper, inside = central_intervals(cdf, 0.8)
    assert inside[0] >= 0.8
    assert cdf[0, lower[0] - 1] < 0.1 <= cdf[0, lower[0]] and cdf[0, upper[0] - 1] < 0.9 <= cdf[0, upper[0]]
    assert inside[0] == pytest.approx(cdf[0, upper[0]] - cdf[0, lower[0] - 1])


def test_predictions_that_generated_the_votes_are_calibrated_and_overconfident_ones_are_not():
    rng = np.random.default_rng(2)
    g = 1500
    means = rng.dirichlet([2, 2, 2], g)
    alpha = means * rng.uniform(3, 30, (g, 1))
    samples = alpha[:, None, :] * np.exp(0.1 * rng.standard_normal((g, 4, 3)))
    mixture_component = rng.integers(0, 4, g)  # votes drawn from the sample-mixed predictive itself
    votes_shape = _draw_votes(samples[np.arange(g), mixture_component], rng.integers(10, 40, g), rng)
    cdf = mixture_cdf(samples, votes_shape.sum(axis=1))
    for level, (hit, expected) in coverage(cdf, votes_shape, (0.5, 0.8, 0.95)).items():
        assert expected >= level
        assert hit == pytest.approx(expected, abs=0.03)
    overconfident = mixture_cdf(samples * 20, votes_shape.sum(axis=1))
    for hit, expected in coverage(overconfident, votes_shape, (0.5, 0.8)).values():
        assert hit < expected - 0.1


def test_calibrate_table_and_headline_on_a_made_up_tree():
    rng = np.random.default_rng(3)
    g = 400
    alpha_shape = rng.dirichlet([2, 2, 2], g) * 15
    alpha_arms = rng.dirichlet([2, 2], g) * 15
    n = rng.integers(20, 40, g)
    shape = _draw_votes(alpha_shape, n, rng)
    arms = _draw_votes(alpha_arms, shape[:, 1], rng)
    votes = np.concatenate([shape, arms], axis=1).astype(float)
    alpha = np.concatenate([alpha_shape, alpha_arms], axis=1)[:, None, :].repeat(3, axis=1)
    table, curve, headline, pit = calibrate(alpha, votes, votes[: g // 2], TREE, CalibrationConfig(levels=(0.5, 0.9)))
    assert table["question"].tolist() == ["shape", "arms"]
    assert table.loc[1, "n_galaxies"] == int((shape[:, 1] >= 1).sum())  # galaxies nobody asked about arms do not count
    assert (table["nll_model"] < table["nll_constant"]).all()  # knowing each galaxy's truth beats one constant
    assert {"coverage_0.5", "expected_0.5", "constant_coverage_0.9", "constant_expected_0.9"} <= set(table.columns)
    assert set(curve["question"]) == {"shape", "arms", "all"} and set(curve["predictor"]) == {"model", "constant"}
    assert headline["nll_per_galaxy"]["model"] < headline["nll_per_galaxy"]["constant"]
    assert "raw" not in headline["nll_per_galaxy"] and set(pit["predictor"]) == {"model"}  # no raw posterior given: none scored
    assert headline["coverage"]["0.9"]["model"]["coverage"] == pytest.approx(headline["coverage"]["0.9"]["model"]["expected"], abs=0.05)
    with pytest.raises(ValueError, match="between 0 and 1"):
        CalibrationConfig(levels=(0.5, 1.0))


def test_calibration_files_matches_ids_and_writes_every_output(tmp_path):
    rng = np.random.default_rng(4)
    ids = [f"G{i}" for i in range(60)]
    alpha = rng.uniform(1, 20, (60, 5, 5)) * rng.uniform(0.2, 5, (60, 1, 1))
    counts = np.concatenate([_draw_votes(alpha[:, 0, :3], rng.integers(5, 30, 60), rng), _draw_votes(alpha[:, 0, 3:], rng.integers(5, 30, 60), rng)], axis=1)
    votes = pd.DataFrame(counts, columns=TREE.label_cols).assign(id_str=ids)
    shards = tmp_path / "shards"
    shards.mkdir()
    votes.sample(frac=1, random_state=0).to_parquet(shards / "test_catalog.parquet")  # another order than the samples'
    votes.to_parquet(shards / "train_catalog.parquet")
    sample_table(ids[::-1], alpha[::-1].astype(np.float32), TREE.label_cols).to_parquet(tmp_path / "samples.parquet")
    assert samples_array(pd.read_parquet(tmp_path / "samples.parquet"), TREE.label_cols)[0] == ids[::-1]
    out = tmp_path / "out"
    headline = calibration_files(tmp_path / "samples.parquet", shards, TREE, out / "c.csv", out / "curve.csv", out / "c.json", out / "c.png", CalibrationConfig())
    stored = alpha.astype(np.float32).astype(np.float64)
    direct = -(mixture_log_pmf(counts[:, :3], stored[:, :, :3]) + mixture_log_pmf(counts[:, 3:], stored[:, :, 3:])).mean()
    assert headline["n_test"] == 60 and headline["nll_per_galaxy"]["model"] == pytest.approx(direct, rel=1e-9)  # each galaxy's votes met its own samples
    low, high = headline["nll_per_galaxy"]["difference_interval"]
    assert low <= headline["nll_per_galaxy"]["difference"] <= high
    table = pd.read_csv(out / "c.csv")
    assert len(table) == 2 and (table["coverage_0.5_low"] <= table["coverage_0.5"]).all() and (table["coverage_0.5"] <= table["coverage_0.5_high"]).all()
    assert (out / "c.png").stat().st_size > 0
    votes.iloc[1:].to_parquet(shards / "test_catalog.parquet")
    with pytest.raises(ValueError, match="rerun predict"):
        calibration_files(tmp_path / "samples.parquet", shards, TREE, out / "c.csv", out / "curve.csv", out / "c.json", out / "c.png", CalibrationConfig())
