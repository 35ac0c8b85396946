"""The checkers' test library: for every exercise, known-wrong implementations (mutants) that
its checker must reject with the right hint, and correct implementations in different styles
that it must accept.

Each ``tests/library_<group>.py`` module defines ``EXERCISES: list[Exercise]``.
``tests/test_checker_library.py`` runs all of them (locally, and one correct implementation
per exercise through the grader's data-only proxy); ``python tests/checker_coverage.py`` prints
how many mutants each checker names (the first line of its AssertionError names the
misconception) and how many it only catches with a generic difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

# First lines that say only *that* the values differ, not *why*: caught, but not named.
GENERIC = re.compile(r"largest difference|wrong \w[\w -]* at index|NaN in the [\w -]+ \(first at index")


@dataclass
class Mutant:
    name: str  # what the learner did wrong, in their words ("softmax over the query axis")
    fn: Callable
    hint: str | None  # a substring the first line of the checker's AssertionError must contain; None: any rejection


@dataclass
class Exercise:
    name: str  # the contract name (or the notebook exercise's)
    check: Callable  # check_<name>
    mutants: list[Mutant] = field(default_factory=list)
    correct: list[Callable] = field(default_factory=list)  # accepted, each in a different style
    remote: bool = True  # run one correct implementation through the grader's proxy too


def first_line(error: BaseException) -> str:
    return str(error).split("\n", 1)[0]


def is_named(error: BaseException) -> bool:
    """Whether a rejection names a misconception (not a bare difference)."""
    return not GENERIC.search(first_line(error))


def run(exercise: Exercise, fn) -> BaseException | None:
    """The checker's rejection of ``fn`` (None when it passes)."""
    try:
        exercise.check(fn)
    except AssertionError as e:
        return e
    return None


def libraries() -> list[Exercise]:
    """Every exercise of every ``library_*.py`` module beside this one."""
    import importlib
    import pathlib
    found = []
    for path in sorted(pathlib.Path(__file__).parent.glob("library_*.py")):
        found += importlib.import_module(path.stem).EXERCISES
    return found
