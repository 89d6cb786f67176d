"""Galaxy Zoo decision trees as data: questions, answers and which answer each question depends on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Question:
    """One Galaxy Zoo question, its answers, and the (question, answer) that must be voted for it to be asked."""

    name: str
    answers: tuple[str, ...]
    asked_if: tuple[str, str] | None = None  # (question name, answer) or None when always asked


@dataclass(frozen=True)
class DecisionTree:
    """A Galaxy Zoo decision tree; column names are `<question><suffix>_<answer>`."""

    name: str
    questions: tuple[Question, ...]
    suffix: str = ""

    def with_suffix(self, suffix: str) -> "DecisionTree":
        """Same tree whose columns are spelled with `suffix` after each question (e.g. '-dr5')."""
        return DecisionTree(self.name, self.questions, suffix)

    @property
    def question_names(self) -> list[str]:
        return [q.name for q in self.questions]

    def column(self, question: str, answer: str) -> str:
        """Vote-count column name of one answer."""
        return f"{question}{self.suffix}_{answer}"

    @property
    def label_cols(self) -> list[str]:
        """Every answer's vote-count column, in tree order (the order of the model's outputs)."""
        return [self.column(q.name, a) for q in self.questions for a in q.answers]

    @property
    def question_index_groups(self) -> list[tuple[int, int]]:
        """(first, last) output index of each question's answers, inclusive, in tree order."""
        groups, start = [], 0
        for q in self.questions:
            groups.append((start, start + len(q.answers) - 1))
            start += len(q.answers)
        return groups

    @property
    def answer_to_question(self) -> np.ndarray:
        """One-hot matrix (n_answers, n_questions): which question each answer belongs to."""
        groups = self.question_index_groups
        matrix = np.zeros((groups[-1][1] + 1, len(groups)), dtype=np.float32)
        for q_index, (first, last) in enumerate(groups):
            matrix[first : last + 1, q_index] = 1.0
        return matrix

    @property
    def question_totals(self) -> list[tuple[str, tuple[str, ...]]]:
        """(total-votes column, answer columns) per question, as GZ DECaLS catalogs spell them."""
        return [(f"{q.name}{self.suffix}_total-votes", tuple(self.column(q.name, a) for a in q.answers)) for q in self.questions]

    def question(self, name: str) -> Question:
        """Look a question up by name."""
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(f"Question {name!r} is not in decision tree {self.name!r}; it has {self.question_names}")


def _q(name: str, answers: str, asked_if: tuple[str, str] | None = None) -> Question:
    return Question(name, tuple(answers.split()), asked_if)


_DECALS_QUESTIONS = (
    _q("smooth-or-featured", "smooth featured-or-disk artifact"),
    _q("disk-edge-on", "yes no", ("smooth-or-featured", "featured-or-disk")),
    _q("has-spiral-arms", "yes no", ("disk-edge-on", "no")),
    _q("bar", "strong weak no", ("disk-edge-on", "no")),
    _q("bulge-size", "dominant large moderate small none", ("disk-edge-on", "no")),
    _q("how-rounded", "round in-between cigar-shaped", ("smooth-or-featured", "smooth")),
    _q("edge-on-bulge", "boxy none rounded", ("disk-edge-on", "yes")),
    _q("spiral-winding", "tight medium loose", ("has-spiral-arms", "yes")),
    _q("spiral-arm-count", "1 2 3 4 more-than-4 cant-tell", ("has-spiral-arms", "yes")),
    _q("merging", "none minor-disturbance major-disturbance merger"),
)

_GZ2_QUESTIONS = (
    _q("smooth-or-featured", "smooth featured-or-disk"),
    _q("disk-edge-on", "yes no", ("smooth-or-featured", "featured-or-disk")),
    _q("has-spiral-arms", "yes no", ("disk-edge-on", "no")),
    _q("bar", "yes no", ("disk-edge-on", "no")),
    _q("bulge-size", "dominant obvious just-noticeable no", ("disk-edge-on", "no")),
    _q("something-odd", "yes no"),
    _q("how-rounded", "round in-between cigar", ("smooth-or-featured", "smooth")),
    _q("bulge-shape", "round boxy no-bulge", ("disk-edge-on", "yes")),
    _q("spiral-winding", "tight medium loose", ("has-spiral-arms", "yes")),
    _q("spiral-count", "1 2 3 4 more-than-4 cant-tell", ("has-spiral-arms", "yes")),
)

TREES: dict[str, DecisionTree] = {
    "gz_decals_dr5": DecisionTree("gz_decals_dr5", _DECALS_QUESTIONS),
    "gz_decals_dr8": DecisionTree("gz_decals_dr8", _DECALS_QUESTIONS),
    "gz2": DecisionTree("gz2", _GZ2_QUESTIONS),
}


def get_tree(name: str, suffix: str = "") -> DecisionTree:
    """Decision tree by name ('gz_decals_dr5', 'gz_decals_dr8', 'gz2'), columns spelled with `suffix`."""
    try:
        return TREES[name].with_suffix(suffix)
    except KeyError:
        raise KeyError(f"Unknown decision tree {name!r}; choose one of {sorted(TREES)}") from None
