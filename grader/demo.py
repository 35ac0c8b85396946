"""``attn-grade demo [--keep DIR]``: an instructor's first five minutes.

Releases one assignment, writes a handful of typical submissions (right, wrong, broken,
stuck in a loop, a Colab-renamed copy, an empty folder, untouched) and grades them on the
embedded SQLite gradebook, printing the table an instructor would get. By default it all
happens in a temporary folder that is removed at the end (and the output says so); with
``--keep DIR`` the folder stays, and every path printed exists afterwards: open
``DIR/graded`` with ``jupyter lab`` to see the same submissions in formgrader.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import nbformat

from . import autograde, course, grade, release
from . import notebooks as nbs

DEMO_ASSIGNMENT = "01_dot_products"


def _submissions(root: pathlib.Path, source, template) -> pathlib.Path:
    subs = root / "submitted"

    def put(student, name, nb=None, text=None):
        nbs.write_submission(subs, student, name, nb, text)

    name = f"{DEMO_ASSIGNMENT}.ipynb"
    put("ada", name, nbs.as_student_answer(template, source))
    put("ben", name, nbs.as_student_answer(template, source, {
        "dot_product_scores": "def dot_product_scores(q, k):\n    return k @ q.transpose(-2, -1)  # transposed"}))
    put("cy", f"Copy of {name}", nbs.as_student_answer(template, source, {
        "dot_product_scores": "def dot_product_scores(q, k):\n    return (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # scaled"}))
    put("dee", name, text='{"cells": [')
    put("eli", name, nbs.as_student_answer(template, source, {
        "dot_product_scores": "while True:\n    pass  # stuck"}))
    (subs / "fay").mkdir(parents=True)
    put("gus", name, template)  # handed in untouched
    return subs


def demo(out=None, keep: pathlib.Path | None = None) -> list:
    out = out or sys.stdout
    if keep is not None:
        root = pathlib.Path(keep).resolve()
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"{root} is not empty: give --keep a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = pathlib.Path(tempfile.mkdtemp(prefix="attn-demo-"))
    try:
        source_path = course.assignments()[DEMO_ASSIGNMENT]
        print(f"1. release: generating the student version of {DEMO_ASSIGNMENT} with nbgrader", file=out)
        template = nbformat.reads(release.student_version(source_path), as_version=4)
        source = nbformat.read(source_path, as_version=4)
        print(f"2. collect: sample submissions in {root / 'submitted'}: ada (right), ben (wrong), "
              "cy (Colab copy, scaled by mistake), dee (broken JSON), eli (infinite loop), fay (empty folder), "
              "gus (untouched)", file=out)
        subs = _submissions(root, source, template)
        print("3. grade: attn-grade autograde submitted --assignment "
              f"{DEMO_ASSIGNMENT} --out graded --jobs 2 --timeout 10", file=out)
        settings = autograde.Settings(jobs=2, limits=grade.Limits(cell_timeout=10, notebook_timeout=120))
        results = autograde.autograde(subs, DEMO_ASSIGNMENT, root / "graded", settings)
        print(f"4. results: {root / 'graded' / 'grades.csv'}\n", file=out)
        print((root / "graded" / "grades.csv").read_text(), file=out)
        print(f"feedback pages: {root / 'graded' / 'feedback'}/<student>/{DEMO_ASSIGNMENT}.html", file=out)
        if keep is not None:
            print(f"formgrader: cd {root / 'graded'} && jupyter lab  (then Nbgrader > Formgrader)", file=out)
        else:
            print("(this was a temporary folder, removed now; `attn-grade demo --keep DIR` keeps it)", file=out)
        return results
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
