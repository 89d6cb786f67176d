import numpy as np
import pandas as pd
import pytest

from zoobot_core.evaluate import evaluate_predictions, summary, vote_fractions
from zoobot_core.schemas import DecisionTree, Question

TREE = DecisionTree("toy", (Question("shape", ("round", "long")), Question("arms", ("yes", "no"), ("shape", "long"))))


def _catalog(votes):
    df = pd.DataFrame(votes, columns=TREE.label_cols)
    df.insert(0, "id_str", [f"g{i}" for i in range(len(df))])
    return df


def _predictions(ids, fractions):
    df = pd.DataFrame(np.asarray(fractions, float), columns=[f"{c}_fraction" for c in TREE.label_cols])
    df.insert(0, "id_str", ids)
    return df


def test_vote_fractions_and_totals_per_question():
    fractions, totals = vote_fractions(np.array([[3.0, 1.0, 0.0, 0.0]]), TREE)
    np.testing.assert_allclose(fractions, [[0.75, 0.25, 0.0, 0.0]])
    np.testing.assert_allclose(totals, [[4.0, 0.0]])


def test_perfect_model_scores_zero_and_constant_is_the_train_mean():
    test = _catalog([[8, 2, 0, 2], [1, 9, 9, 0]])
    train = _catalog([[10, 0, 0, 0], [0, 10, 5, 5]])
    perfect = _predictions(test["id_str"], [[0.8, 0.2, 0.0, 1.0], [0.1, 0.9, 1.0, 0.0]])
    metrics = evaluate_predictions(perfect, test, train, TREE).set_index("question")
    assert metrics.loc["shape", "model_mae"] == 0 and metrics.loc["shape", "model_accuracy"] == 1
    # constant for shape = train mean fractions (0.5, 0.5): errors |0.5-0.8|, |0.5-0.1| averaged over answers
    assert metrics.loc["shape", "constant_mae"] == pytest.approx((0.3 + 0.4) / 2)
    # arms was asked of both test galaxies (2 and 9 votes); constant (0.5, 0.5) from the one train galaxy asked it
    assert metrics.loc["arms", "n_galaxies"] == 2 and metrics.loc["arms", "n_votes"] == 11
    assert metrics.loc["arms", "constant_mae_vote_weighted"] == pytest.approx((2 * 0.5 + 9 * 0.5) / 11)
    headline = summary(metrics.reset_index())
    assert headline["vote_fraction_mae"]["model"] == 0
    assert headline["shape_accuracy"] == {"model": 1.0, "constant": 0.5}


def test_questions_nobody_answered_are_left_out():
    test = _catalog([[5, 0, 0, 0]])
    metrics = evaluate_predictions(_predictions(["g0"], [[0.5, 0.5, 0.5, 0.5]]), test, test, TREE).set_index("question")
    assert metrics.loc["arms", "n_galaxies"] == 0 and np.isnan(metrics.loc["arms", "model_mae"])
    headline = summary(metrics.reset_index())
    assert headline["vote_fraction_mae"]["model"] == pytest.approx(0.5)
    assert headline["vote_fraction_mae"]["ratio"] is None  # the constant is exact here: no ratio, no crash


def test_missing_predictions_are_an_error():
    test = _catalog([[5, 0, 0, 0], [1, 1, 1, 0]])
    with pytest.raises(ValueError, match="1 of 2"):
        evaluate_predictions(_predictions(["g0"], [[0.5] * 4]), test, test, TREE)


def test_confusion_counts_only_galaxies_volunteers_were_confident_about(tmp_path):
    from zoobot_core.evaluate import confident_confusion
    from zoobot_core.figures import plot_confusion

    test = _catalog([
        [9, 1, 0, 0],   # shape: round, confident (0.9); model says round -> right
        [1, 9, 8, 2],   # shape: long, confident; model says round -> wrong; arms: yes (0.8), model yes
        [6, 4, 0, 0],   # shape: 0.6, not confident: left out
        [3, 0, 0, 0],   # too few votes (3 < 5): left out
    ])
    predictions = _predictions(test["id_str"], [[0.7, 0.3, 0.5, 0.5], [0.6, 0.4, 0.9, 0.1], [0.1, 0.9, 0.5, 0.5], [0.9, 0.1, 0.5, 0.5]])
    per_question, confusion = confident_confusion(predictions, test, TREE, confident_fraction=0.8, min_votes=5)
    per_question = per_question.set_index("question")
    assert per_question.loc["shape", "n_confident"] == 2 and per_question.loc["shape", "accuracy"] == 0.5
    assert per_question.loc["arms", "n_confident"] == 1 and per_question.loc["arms", "accuracy"] == 1.0
    shape = confusion[confusion["question"] == "shape"].set_index(["volunteers", "model"])["count"]
    assert shape.to_dict() == {("round", "round"): 1, ("round", "long"): 0, ("long", "round"): 1, ("long", "long"): 0}
    plot_confusion(confusion, per_question.reset_index(), tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 5000
