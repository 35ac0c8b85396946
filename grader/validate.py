"""``attn-grade validate NOTEBOOK``: run a notebook the way the autograder will, before submitting.

Unlike ``nbgrader validate`` (which exits 0 on failure) this exits 1 when a visible test
fails and prints each failing test's message, i.e. the checker's hint. It restores the
visible test cells from the released student notebook, so an edited test cannot pass
here and fail at grading; hidden tests are not run (they are the instructor's).
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import nbformat

from . import autograde, course, grade, sandbox
from . import notebooks as nbs


def validate(path: pathlib.Path, limits: grade.Limits | None = None, sandbox_mode: str = "auto",
             notebooks: pathlib.Path | None = None, out=None) -> int:
    """Return the exit code: 0 all visible tests pass, 1 some fail, 2 the notebook cannot run."""
    limits = limits or grade.Limits()
    out = out or sys.stdout
    notebooks = notebooks or course.NOTEBOOKS
    path = pathlib.Path(path)
    try:
        submission = nbs.read_submission(path)
    except nbs.SubmissionError as e:
        print(f"cannot validate: {e}", file=out)
        return 2
    name = autograde._normalised(path.stem)
    released = {p.stem.lower(): p for p in notebooks.glob("*.ipynb")}
    template = nbformat.read(released[name], as_version=4) if name in released else submission
    mode = sandbox.resolve_mode(sandbox_mode)
    work = pathlib.Path(tempfile.mkdtemp(prefix="attn-validate-"))
    policy = sandbox.Policy(mode=mode, memory_bytes=limits.memory_bytes)
    try:
        result = grade.grade_notebook(path.stem, submission, template, template, work / "run", policy, limits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.status == "failed":
        print(f"{path.name}: could not run: {result.reason}", file=out)
        return 2
    for t in result.tests:
        mark = "PASS" if t.status == "ok" else "FAIL"
        print(f"{mark}  {t.grade_id}  ({t.points:g}/{t.max_points:g})", file=out)
        if t.status != "ok":
            print("      " + (t.message or t.status), file=out)
    if result.reason:
        print(f"notes: {result.reason}", file=out)
    failed = [t for t in result.tests if t.status != "ok"]
    verdict = "all visible tests pass" if not failed else f"{len(failed)} of {len(result.tests)} visible tests fail"
    print(f"{path.name}: {verdict} ({result.score:g}/{result.max_score:g} visible points)", file=out)
    return 1 if failed else 0
