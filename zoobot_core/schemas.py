"""Galaxy Zoo decision trees as data: questions, answers and which answer each question depends on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

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

    def to_dict(self) -> dict:
        """The tree as data (the YAML file's layout, without the column suffix); get_tree accepts it back."""
        questions = []
        for q in self.questions:
            entry = {"name": q.name, "answers": list(q.answers)}
            if q.asked_if:
                entry["asked_if"] = {"question": q.asked_if[0], "answer": q.asked_if[1]}
            questions.append(entry)
        return {"name": self.name, "questions": questions}

    def question(self, name: str) -> Question:
        """Look a question up by name."""
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(f"Question {name!r} is not in decision tree {self.name!r}; it has {self.question_names}")


TREE_DIR = Path(__file__).resolve().parents[1] / "resources" / "trees"
TREE_SCHEMA = Path(__file__).resolve().parents[1] / "resources" / "schemas" / "tree.schema.yaml"


class TreeError(ValueError):
    """A decision tree file or definition that cannot be used; the message names the problem and the file."""


class UnknownTreeError(TreeError, KeyError):
    """A tree name that is neither shipped nor a file (a KeyError too, as unknown names always were)."""

    def __str__(self) -> str:
        return str(self.args[0])  # not KeyError's quoted repr


def _schema_errors(data: object) -> list[str]:
    """Every JSON-schema violation of a tree definition, as readable lines."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(TREE_SCHEMA.read_text())
    messages = []
    for error in sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(top level)"
        hint = ""
        if isinstance(error.instance, bool):
            hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the answer, e.g. \"yes\")"
        elif isinstance(error.instance, (int, float)):
            hint = " (quote numbers used as answers, e.g. \"1\")"
        messages.append(f"{where}: {error.message}{hint}")
    return messages


def _cycle(parents: dict[str, str]) -> list[str] | None:
    """A dependency cycle among questions (each question's parent question), as a path, or None."""
    for start in parents:
        path, current = [start], parents.get(start)
        while current is not None:
            if current in path:
                return path[path.index(current):] + [current]
            path.append(current)
            current = parents.get(current)
    return None


def tree_from_dict(data: Mapping, source: str = "tree definition") -> DecisionTree:
    """Validate a tree definition (as read from YAML) and build the DecisionTree; TreeError names every problem.

    Checked: the schema; question names unique; each question's answers unique; every `asked_if`
    names an existing question and one of its answers; no dependency cycles; each question listed
    after the question it depends on; no two answers sharing a vote-count column name.
    """
    problems = _schema_errors(data)
    if problems:
        raise TreeError(f"{source} is not a valid decision tree:\n  " + "\n  ".join(problems))
    questions = data["questions"]
    answers = {}
    for q in questions:
        if q["name"] in answers:
            problems.append(f"question {q['name']!r} is listed twice")
        repeated = sorted({a for a in q["answers"] if q["answers"].count(a) > 1})
        if repeated:
            problems.append(f"question {q['name']!r} lists answer(s) {repeated} twice")
        answers.setdefault(q["name"], q["answers"])
    parents = {}
    for q in questions:
        if "asked_if" not in q:
            continue
        parent, answer = q["asked_if"]["question"], q["asked_if"]["answer"]
        if parent not in answers:
            problems.append(f"question {q['name']!r} is asked_if question {parent!r}, which is not in the tree (questions: {list(answers)})")
        elif answer not in answers[parent]:
            problems.append(f"question {q['name']!r} is asked_if answer {answer!r} of {parent!r}, which has no such answer (answers: {answers[parent]})")
        else:
            parents[q["name"]] = parent
    cycle = _cycle(parents)
    if cycle:
        problems.append("dependency cycle: " + " -> ".join(cycle) + " (each question must be reachable from one asked of every galaxy)")
    else:
        order = {q["name"]: i for i, q in enumerate(questions)}
        for child, parent in parents.items():
            if order[parent] > order[child]:
                problems.append(f"question {child!r} depends on {parent!r}, which is listed after it: list {parent!r} first")
    for q in questions:  # GZ catalogs spell each question's total as <question>_total-votes
        if "total-votes" in q["answers"]:
            problems.append(f"question {q['name']!r} has an answer 'total-votes', which is the name of its vote-total column: rename it")
    if problems:
        raise TreeError(f"{source} is not a valid decision tree:\n  " + "\n  ".join(problems))
    built = tuple(
        Question(q["name"], tuple(q["answers"]), (q["asked_if"]["question"], q["asked_if"]["answer"]) if "asked_if" in q else None)
        for q in questions
    )
    return DecisionTree(data["name"], built)


def load_tree_file(path: Path | str) -> DecisionTree:
    """Read and validate a decision tree YAML file (format: resources/trees/README.md)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise TreeError(f"Cannot read decision tree file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise TreeError(f"Decision tree file {path} is not valid YAML: {err}") from None
    return tree_from_dict(data, f"Decision tree file {path}")


def shipped_trees() -> list[str]:
    """Names of the trees shipped in resources/trees/."""
    return sorted(p.stem for p in TREE_DIR.glob("*.yaml"))


def get_tree(spec: str | Path | Mapping | DecisionTree, suffix: str = "") -> DecisionTree:
    """A decision tree, its columns spelled with `suffix` (e.g. '-dr5').

    `spec` is a shipped tree's name ('gz_decals_dr5', 'gz_decals_dr8', 'gz2': resources/trees/),
    the path of your own tree YAML file, a tree definition (a dict, as DecisionTree.to_dict gives),
    or a DecisionTree.
    """
    if isinstance(spec, DecisionTree):
        return spec.with_suffix(suffix)
    if isinstance(spec, Mapping):
        return tree_from_dict(spec).with_suffix(suffix)
    shipped = TREE_DIR / f"{spec}.yaml"
    if "/" not in str(spec) and not str(spec).endswith((".yaml", ".yml")) and shipped.exists():
        return load_tree_file(shipped).with_suffix(suffix)
    if Path(spec).is_file():
        return load_tree_file(spec).with_suffix(suffix)
    raise UnknownTreeError(
        f"Unknown decision tree {str(spec)!r}: name a shipped tree, one of {shipped_trees()}, or give the path of a tree YAML file "
        f"(a relative path is read from the working directory, {Path.cwd()})"
    )


class _ShippedTrees(Mapping):
    """The shipped trees by name, read from resources/trees/ when first asked for (kept for older code: TREES[name])."""

    def __getitem__(self, name: str) -> DecisionTree:
        if name not in shipped_trees():
            raise KeyError(name)
        return get_tree(name)

    def __iter__(self) -> Iterator[str]:
        return iter(shipped_trees())

    def __len__(self) -> int:
        return len(shipped_trees())


TREES: Mapping[str, DecisionTree] = _ShippedTrees()
