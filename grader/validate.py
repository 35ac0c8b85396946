"""``attn-grade validate NOTEBOOK``: run a notebook the way the autograder will, before submitting.

Unlike ``nbgrader validate`` (which exits 0 on failure) this exits 1 when a visible test
fails and prints each failing test's message, i.e. the checker's hint. Which assignment the
notebook is comes from its cells (their nbgrader ids), not its file name, so a renamed copy is
still recognised; the visible test cells are then restored from the released student notebook
shipped with the grader (``grader/released``, present after any install), whatever the student
did to them, and the tests run in the grader's examiner as at grading time. Hidden tests are
not run (they are the instructor's): a pass here means the visible tests pass.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import nbformat

from . import grade, intake, layouts, sandbox
from . import notebooks as nbs


def released_notebooks(folder: pathlib.Path | None = None) -> dict[str, nbformat.NotebookNode]:
    """The released student notebooks, by assignment name (shipped in ``grader/released``)."""
    return layouts.released_notebooks(folder)


def _visible_code(source: str) -> bool:
    """Whether a released test cell still holds code (a hidden-only cell is comments alone)."""
    return any(line.strip() and not line.strip().startswith("#") for line in source.split("\n"))


def validate(path: pathlib.Path, limits: grade.Limits | None = None, sandbox_mode: str = "auto",
             notebooks: pathlib.Path | None = None, out=None) -> int:
    """Return the exit code: 0 all visible tests pass, 1 some fail, 2 the notebook cannot run."""
    limits = limits or grade.Limits()
    out = out or sys.stdout
    path = pathlib.Path(path)
    try:
        submission = nbs.read_submission(path)
    except nbs.SubmissionError as e:
        print(f"cannot validate: {e}", file=out)
        return 2
    released = released_notebooks(notebooks)
    name = layouts.identify(submission, released)
    if name is None:
        by_name = intake._normalised(path.stem)
        name = by_name if by_name in released else None
    if name is None:
        print(f"cannot validate {intake.printable(path.name)}: it is none of the course's notebooks "
              f"({', '.join(released) or 'none shipped'})", file=out)
        return 2
    template = released[name]
    mode = sandbox.resolve_mode(sandbox_mode)
    work = pathlib.Path(tempfile.mkdtemp(prefix="attn-validate-"))
    policy = sandbox.Policy(mode=mode, memory_bytes=limits.memory_bytes)
    try:
        result = grade.grade_notebook(path.stem, submission, template, template, work / "run", policy, limits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.status == "failed":
        print(f"{intake.printable(path.name)}: could not run: {result.reason}", file=out)
        return 2
    print(f"{intake.printable(path.name)} is {name}", file=out)
    hidden_only = {nbs.grade_id(c) for c in template.cells if nbs.is_test(c) and not _visible_code(c.source)}
    for t in [t for t in result.tests if t.grade_id in hidden_only]:
        print(f"HIDE  {t.grade_id}  ({t.max_points:g} point{'s' * (t.max_points != 1)}): its tests run only at grading",
              file=out)
    result.tests = [t for t in result.tests if t.grade_id not in hidden_only]
    result.score = sum(t.points for t in result.tests)
    result.max_score = sum(t.max_points for t in result.tests)
    for t in result.tests:
        mark = {"ok": "PASS", "partial": "PART"}.get(t.status, "FAIL")
        print(f"{mark}  {t.grade_id}  ({t.points:g}/{t.max_points:g})", file=out)
        if t.status != "ok":
            print("      " + (t.message or t.status), file=out)
    if result.reason:
        print(f"notes: {result.reason}", file=out)
    failed = [t for t in result.tests if t.status != "ok"]
    verdict = ("all visible tests pass (hidden tests run only at grading)" if not failed
               else f"{len(failed)} of {len(result.tests)} visible tests fail")
    print(f"{intake.printable(path.name)}: {verdict} ({result.score:g}/{result.max_score:g} visible points)", file=out)
    return 1 if failed else 0
