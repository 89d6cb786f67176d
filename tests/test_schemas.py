"""Decision trees: the shipped Galaxy Zoo trees (resources/trees/), users' own tree files, and refusing malformed ones."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from zoobot_core.schemas import TREE_DIR, TREES, TreeError, get_tree, load_tree_file, shipped_trees, tree_from_dict


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


# --- trees as data: resources/trees/*.yaml and users' own files ---

MADE_UP = Path(__file__).parent / "configs" / "made_up_tree.yaml"


def test_shipped_trees_are_the_yaml_files_in_resources():
    assert shipped_trees() == ["gz2", "gz_decals_dr5", "gz_decals_dr8"]
    for name in shipped_trees():
        assert (TREE_DIR / f"{name}.yaml").is_file() and get_tree(name).name == name


@pytest.mark.parametrize("name", ["gz2", "gz_decals_dr5", "gz_decals_dr8"])
def test_a_tree_survives_the_round_trip_through_its_definition(name):
    tree = get_tree(name, "-dr5")
    again = get_tree(tree.to_dict(), "-dr5")
    assert again.questions == tree.questions and again.label_cols == tree.label_cols and again.name == name
    assert yaml.safe_load(yaml.safe_dump(tree.to_dict())) == tree.to_dict()


def test_a_users_tree_file_is_read_by_path():
    tree = get_tree(str(MADE_UP), "-v1")
    assert tree.name == "made_up_rings" and tree.question_names == ["smooth-or-featured", "ring", "ring-kind", "lens"]
    assert tree.question("ring-kind").asked_if == ("ring", "yes")
    assert tree.label_cols[3] == "ring-v1_yes" and len(tree.label_cols) == 12
    assert get_tree(MADE_UP).questions == tree.questions  # a Path works too


def _made_up() -> dict:
    return yaml.safe_load(MADE_UP.read_text())


def _broken(edit) -> dict:
    data = _made_up()
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["questions"][2].update(asked_if={"question": "rings", "answer": "yes"}), "'rings', which is not in the tree"),
        (lambda d: d["questions"][2].update(asked_if={"question": "ring", "answer": "maybe"}), "has no such answer"),
        (lambda d: d["questions"][0].update(asked_if={"question": "ring-kind", "answer": "inner"}), "dependency cycle: "),
        (lambda d: d["questions"][1].update(answers=["yes", "no", "yes"]), "lists answer(s) ['yes'] twice"),
        (lambda d: d["questions"].append({"name": "lens", "answers": ["a", "b"]}), "question 'lens' is listed twice"),
        (lambda d: d["questions"].insert(0, d["questions"].pop(2)), "listed after it: list 'ring' first"),
        (lambda d: d["questions"][1].update(answers=[True, False]), "quote the answer"),
        (lambda d: d["questions"][1].update(answers=["yes"]), "is too short"),
        (lambda d: d["questions"][1].update(name="has_ring"), "does not match"),
        (lambda d: d["questions"][1].pop("answers"), "'answers' is a required property"),
        (lambda d: d["questions"][1].update(asked_after="smooth"), "Additional properties"),
    ],
    ids=["unknown-question", "unknown-answer", "cycle", "answer-twice", "question-twice", "out-of-order",
         "unquoted-yes-no", "one-answer", "underscore", "no-answers", "unknown-key"],
)
def test_a_malformed_tree_is_refused_naming_the_problem(edit, message):
    with pytest.raises(TreeError, match="not a valid decision tree") as raised:
        tree_from_dict(_broken(edit), "my tree")
    assert message in str(raised.value) and "my tree" in str(raised.value)


def test_answers_that_would_share_a_column_are_refused():
    """'_' is not allowed in names, so columns are unique; an answer called total-votes would be the question's total column."""
    data = {"name": "clash", "questions": [{"name": "a-b", "answers": ["c", "d"]}, {"name": "a", "answers": ["b-c", "e"]}]}
    assert tree_from_dict(data).label_cols == ["a-b_c", "a-b_d", "a_b-c", "a_e"]  # distinct: no clash
    data["questions"][1]["answers"] = ["total-votes", "e"]
    with pytest.raises(TreeError, match="'total-votes', which is the name of its vote-total column"):
        tree_from_dict(data)


def test_tree_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "tree.yaml"
    bad.write_text("name: t\nquestions:\n  - name: q\n    answers: [yes, no]\n")  # YAML 1.1 booleans
    with pytest.raises(TreeError, match=f"(?s){bad}.*quote the answer"):
        get_tree(str(bad))
    bad.write_text("name: t\nquestions: [\n")
    with pytest.raises(TreeError, match=f"{bad} is not valid YAML"):
        load_tree_file(bad)
    with pytest.raises(KeyError, match="name a shipped tree, one of .*gz_decals_dr5.* or give the path") as raised:
        get_tree(str(tmp_path / "missing.yaml"))
    assert isinstance(raised.value, TreeError) and str(raised.value).startswith("Unknown decision tree")  # not a quoted repr
