"""Building submissions of a real course notebook for the grader tests."""

import copy

import nbformat

from grader import course
from grader import notebooks as nbs

ASSIGNMENT = "01_dot_products"
RIGHT = "def dot_product_scores(q, k):\n    return q @ k.transpose(-2, -1)\n"
TRANSPOSED = "def dot_product_scores(q, k):\n    return k @ q.transpose(-2, -1)\n"


def source():
    return nbformat.read(course.assignments()[ASSIGNMENT], as_version=4)


def template():
    return nbformat.read(course.NOTEBOOKS / f"{ASSIGNMENT}.ipynb", as_version=4)


def answered(code: str = RIGHT, extra_before_tests: str | None = None):
    """The student notebook with the answer cell set to ``code``."""
    nb = nbs.as_student_answer(template(), source(), {"dot_product_scores": code})
    if extra_before_tests is not None:
        i = next(i for i, c in enumerate(nb.cells) if nbs.grade_id(c) == "test_dot_product_scores")
        nb.cells.insert(i, nbformat.v4.new_code_cell(extra_before_tests))
    return nb


def cell_index(nb, gid):
    return next(i for i, c in enumerate(nb.cells) if nbs.grade_id(c) == gid)


put = nbs.write_submission


def deep(nb):
    return copy.deepcopy(nb)
