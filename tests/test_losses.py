import keras
import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import dirichlet_multinomial

from zoobot_core.losses import DirichletMultinomialLoss, expected_vote_fractions, log_gamma
from zoobot_core.schemas import get_tree


def test_log_gamma_matches_scipy_over_the_range_used():
    x = np.concatenate([np.linspace(0.5, 10, 300), np.geomspace(10, 1e5, 300)])
    ours = keras.ops.convert_to_numpy(log_gamma(keras.ops.convert_to_tensor(x, dtype="float64")))
    np.testing.assert_allclose(ours, gammaln(x), rtol=1e-12, atol=1e-9)


def _scipy_loss(counts, concentrations, groups):
    total = 0.0
    for first, last in groups:
        n = counts[first : last + 1].sum()
        if n > 0:
            total -= dirichlet_multinomial.logpmf(counts[first : last + 1], concentrations[first : last + 1], n)
    return total


def test_loss_matches_scipy_dirichlet_multinomial_on_fixed_numbers():
    groups = [(0, 2), (3, 4), (5, 8)]
    counts = np.array([[12, 5, 3, 4, 1, 0, 0, 0, 0], [0, 20, 0, 7, 13, 2, 2, 1, 9], [1, 1, 1, 0, 0, 3, 0, 0, 0]], dtype=np.float32)
    concentrations = np.array([[5.0, 2.0, 1.5, 3.0, 1.2, 1.1, 1.1, 1.1, 1.1], [1.1, 40.0, 1.3, 2.0, 6.0, 3.0, 3.0, 2.0, 8.0], [2, 2, 2, 9, 9, 50, 1.01, 1.01, 1.01]], dtype=np.float32)
    expected = [_scipy_loss(c, a, groups) for c, a in zip(counts.astype(int), concentrations.astype(float))]
    exact = DirichletMultinomialLoss(groups, reduction=None, dtype="float64")
    ours64 = keras.ops.convert_to_numpy(exact(counts.astype(np.float64), concentrations.astype(np.float64)))
    np.testing.assert_allclose(ours64, expected, rtol=1e-9)
    ours32 = keras.ops.convert_to_numpy(DirichletMultinomialLoss(groups, reduction=None)(counts, concentrations))
    np.testing.assert_allclose(ours32, expected, atol=1e-4)  # float32 rounding of lgamma differences


def test_question_without_votes_contributes_exactly_zero():
    groups = [(0, 1), (2, 4)]
    loss = DirichletMultinomialLoss(groups, reduction=None)
    only_first = keras.ops.convert_to_numpy(loss(np.array([[3.0, 4.0, 0, 0, 0]]), np.array([[2.0, 3.0, 7.0, 50.0, 1.5]])))
    first_alone = keras.ops.convert_to_numpy(DirichletMultinomialLoss([(0, 1)], reduction=None)(np.array([[3.0, 4.0]]), np.array([[2.0, 3.0]])))
    assert only_first[0] == pytest.approx(first_alone[0], abs=1e-5)
    nothing = keras.ops.convert_to_numpy(loss(np.zeros((1, 5)), np.array([[2.0, 3.0, 7.0, 50.0, 1.5]])))
    assert nothing[0] == 0.0


def test_loss_prefers_concentrations_that_match_the_votes():
    groups = get_tree("gz_decals_dr5").question_index_groups
    counts = np.zeros((1, 34), np.float32)
    counts[0, :3] = [30, 2, 1]
    good, bad = np.ones((1, 34), np.float32) * 2, np.ones((1, 34), np.float32) * 2
    good[0, :3] = [60, 4, 2]
    bad[0, :3] = [2, 60, 4]
    loss = DirichletMultinomialLoss(groups)
    assert float(loss(counts, good)) < float(loss(counts, bad))


def test_loss_survives_keras_serialisation():
    loss = DirichletMultinomialLoss([(0, 2), (3, 4)])
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.question_index_groups == [(0, 2), (3, 4)]


def test_expected_vote_fractions_sum_to_one_per_question():
    groups = [(0, 2), (3, 4)]
    fractions = expected_vote_fractions(np.array([[1.0, 2.0, 1.0, 3.0, 1.0]]), groups)
    np.testing.assert_allclose(fractions, [[0.25, 0.5, 0.25, 0.75, 0.25]])
