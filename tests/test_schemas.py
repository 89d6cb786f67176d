import numpy as np
import pytest

from zoobot_core.schemas import TREES, get_tree


@pytest.mark.parametrize(("name", "n_questions", "n_answers"), [("gz_decals_dr5", 10, 34), ("gz_decals_dr8", 10, 34), ("gz2", 10, 29)])
def test_tree_sizes_match_galaxy_zoo(name, n_questions, n_answers):
    tree = get_tree(name)
    assert len(tree.questions) == n_questions
    assert len(tree.label_cols) == n_answers
    assert tree.answer_to_question.shape == (n_answers, n_questions)
    np.testing.assert_array_equal(tree.answer_to_question.sum(axis=1), np.ones(n_answers))


@pytest.mark.parametrize("name", sorted(TREES))
def test_every_dependency_names_a_real_earlier_answer(name):
    tree = get_tree(name)
    seen = {}
    for question in tree.questions:
        if question.asked_if:
            parent, answer = question.asked_if
            assert parent in seen, f"{question.name} depends on {parent}, which is not asked before it"
            assert answer in seen[parent]
        seen[question.name] = question.answers


def test_column_spelling_follows_suffix():
    assert get_tree("gz_decals_dr5").label_cols[0] == "smooth-or-featured_smooth"
    assert get_tree("gz_decals_dr5", "-dr5").label_cols[0] == "smooth-or-featured-dr5_smooth"
    assert "merging-dr8_merger" in get_tree("gz_decals_dr8", "-dr8").label_cols


def test_question_groups_are_contiguous():
    groups = get_tree("gz_decals_dr5").question_index_groups
    assert groups[0] == (0, 2)
    assert groups[-1] == (30, 33)
    assert all(b[0] == a[1] + 1 for a, b in zip(groups, groups[1:]))


def test_unknown_tree_is_a_clear_error():
    with pytest.raises(KeyError, match="gz_decals_dr5"):
        get_tree("gz3")
