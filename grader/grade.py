"""Grade one student's notebook: assemble, execute in a sandboxed kernel, score, explain.

The verdict of a test cell is the kernel's ``execute_reply`` status for that cell (``ok``
earns its points), provided nothing the tests rely on was replaced before or during it
(:mod:`grader.integrity`). A cell that runs past its limit is interrupted; one that ignores
the interrupt, or a kernel that dies, is killed, restarted and brought back to where it was
by re-running the earlier non-test cells, so that later exercises still get graded.
"""

from __future__ import annotations

import pathlib
import shutil
import time
import traceback
from dataclasses import dataclass, field

from nbformat import NotebookNode

from . import assemble as assembly
from . import integrity, kernel, sandbox
from . import notebooks as nbs


@dataclass
class Limits:
    cell_timeout: float = 120.0
    notebook_timeout: float = 900.0
    memory_bytes: int = 3 * 2**30


@dataclass
class TestOutcome:
    grade_id: str
    points: float
    max_points: float
    status: str  # ok / error / timeout / killed / dead / not run / tampered
    message: str = ""


@dataclass
class Result:
    student_id: str
    status: str  # "graded" or "failed"
    score: float | None = None
    max_score: float = 0.0
    reason: str = ""
    tests: list[TestOutcome] = field(default_factory=list)
    cells: list = field(default_factory=list)  # executed cells with outputs (for feedback)
    seconds: float = 0.0


def max_score(source: NotebookNode) -> float:
    return sum(nbs.points(c) for c in source.cells if nbs.is_test(c))


def _failed(student_id: str, source: NotebookNode, reason: str, start: float) -> Result:
    return Result(student_id, "failed", None, max_score(source), reason, seconds=time.monotonic() - start)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grade_notebook(student_id: str, submission: pathlib.Path | None, source: NotebookNode,
                   template: NotebookNode, work: pathlib.Path, policy: sandbox.Policy,
                   limits: Limits) -> Result:
    """Grade ``submission`` (None when the folder held no notebook); never raises."""
    start = time.monotonic()
    if submission is None:
        return _failed(student_id, source, "no notebook for this assignment found in the folder", start)
    try:
        nb = nbs.read_submission(submission)
    except nbs.SubmissionError as e:
        return _failed(student_id, source, str(e), start)
    try:
        built = assembly.assemble(source, template, nb)
    except Exception as e:  # a notebook shaped in a way we did not foresee must not stop the batch
        return _failed(student_id, source, f"could not assemble the notebook: {_one_line(e)}", start)
    workspace, ipc = work / "workspace", work / "ipc"
    try:
        return _run(student_id, built, source, workspace, ipc, policy, limits, start)
    except Exception as e:
        return _failed(student_id, source, f"grader error: {type(e).__name__}: {_one_line(e)} "
                                           f"({_one_line(traceback.format_exc().splitlines()[-2])})", start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(student_id, built, source, workspace, ipc, policy, limits, start) -> Result:
    fp = integrity.Fingerprinter()
    notes = list(built.notes)
    result = Result(student_id, "graded", 0.0, max_score(source))
    deadline = start + limits.notebook_timeout
    k = kernel.Kernel(workspace, ipc, policy)
    try:
        k.start()
    except Exception as e:
        return _failed(student_id, source, f"the kernel did not start: {_one_line(e)}", start)

    def baseline() -> dict | None:
        r = k.execute(fp.code(), timeout=60, user_expressions=fp.expression())
        return integrity.Fingerprinter.parse(r.user_expressions) if r.status == "ok" else None

    try:
        base = baseline()
        if base is None:
            return _failed(student_id, source, "the grader could not prepare the kernel", start)
        tampered: list[str] = []
        cells = built.cells
        for index, cell in enumerate(cells):
            result.cells.append(cell)
            if cell.cell_type != "code":
                continue
            test = nbs.is_test(cell)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                notes.append(f"notebook time limit ({limits.notebook_timeout:.0f} s) reached at cell {index + 1}")
                _record_not_run(result, cells[index:])
                break
            if test:
                before = k.execute(fp.code(), timeout=60, user_expressions=fp.expression())
                changes = integrity.changed(base, integrity.Fingerprinter.parse(before.user_expressions))
            r = k.execute(cell.source, timeout=min(limits.cell_timeout, remaining))
            cell.outputs = r.outputs
            if r.dropped_bytes:
                cell.outputs.append({"output_type": "stream", "name": "stderr",
                                     "text": f"[{r.dropped_bytes} bytes of output dropped by the grader]\n"})
            if test and r.status == "ok" and not changes:
                after = k.execute(fp.code(), timeout=60, user_expressions=fp.expression())
                changes = integrity.changed(base, integrity.Fingerprinter.parse(after.user_expressions))
            label = f"'{nbs.grade_id(cell)}'" if nbs.grade_id(cell) else f"{index + 1} (added by the student)"
            if r.status in ("timeout", "killed"):
                notes.append(f"cell {label} exceeded {min(limits.cell_timeout, remaining):.0f} s and was "
                             + ("interrupted" if r.status == "timeout" else "killed (it ignored the interrupt)"))
            elif r.status == "dead":
                notes.append(f"the kernel died in cell {label}")
            if test:
                ok = r.status == "ok" and not changes
                tampered.extend(changes)
                if changes:
                    status, message = "tampered", f"replaced: {', '.join(changes[:3])}"
                elif ok:
                    status, message = "ok", ""
                else:
                    status, message = r.status, _one_line(f"{r.ename}: {r.evalue}" if r.ename else r.status, 300)
                result.tests.append(TestOutcome(nbs.grade_id(cell), nbs.points(cell) if ok else 0.0,
                                                nbs.points(cell), status, message))
            if r.status in ("killed", "dead"):
                base = _recover(k, cells[:index], limits, deadline, baseline)
                if base is None:
                    notes.append("the kernel could not be brought back; later cells not run")
                    _record_not_run(result, cells[index + 1:])
                    result.cells.extend(cells[index + 1:])
                    break
        if tampered:
            notes.insert(0, "tampering detected, affected tests score 0: replaced " + ", ".join(sorted(set(tampered))[:4]))
        result.score = sum(t.points for t in result.tests)
        result.reason = _one_line("; ".join(notes), 400)
        result.seconds = time.monotonic() - start
        return result
    finally:
        k.shutdown()


def _record_not_run(result: Result, cells) -> None:
    for cell in cells:
        if nbs.is_test(cell):
            result.tests.append(TestOutcome(nbs.grade_id(cell) or "?", 0.0, nbs.points(cell), "not run",
                                            "not run (time limit or kernel failure)"))


def _recover(k: kernel.Kernel, earlier: list, limits: Limits, deadline: float, baseline) -> dict | None:
    """Restart the kernel, fingerprint it fresh, then re-run the earlier non-test cells to
    rebuild the state. Returns the new baseline (None when the kernel cannot come back)."""

    def fresh() -> dict | None:
        try:
            k.restart()
        except Exception:
            return None
        return baseline()

    base = fresh()
    for cell in earlier:
        if base is None:
            return None
        if cell.cell_type != "code" or nbs.is_test(cell):
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r = k.execute(cell.source, timeout=min(limits.cell_timeout, remaining))
        if r.status in ("killed", "dead"):
            base = fresh()  # this earlier cell cannot be replayed: skip it
    return base
