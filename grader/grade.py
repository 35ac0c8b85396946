"""Grade one student's notebook: assemble, run, examine, score.

The learner's cells and the instructor's setup cells run in a sandboxed kernel
(:mod:`grader.kernel`), one cell at a time with a wall-clock limit. Test cells do not run
there: each is sent to the examiner (:mod:`grader.examiner`), a separate process with no
learner code in it, which runs the test (hidden part included) and reaches the learner's
functions only through a data-only channel this module relays. A test earns its points
when it finished without raising in the examiner.

A cell that runs past its limit is interrupted; one that ignores the interrupt, or a kernel
that dies (in a cell or while a test calls into it), is killed, restarted and brought back
to where it was by re-running the earlier non-test cells, so later exercises still get graded.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import traceback
from dataclasses import dataclass, field

import nbformat
from nbformat import NotebookNode

from . import assemble as assembly
from . import examiner as examiners
from . import kernel, sandbox
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
    status: str  # ok / partial (some of a checker's cases passed) / error / timeout / not run
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
    # set by the grading run, not by the worker: which file, when, how late
    file: str = ""
    submitted_at: str = ""  # ISO 8601, UTC
    late_days: float = 0.0
    penalty: float = 0.0
    raw_score: float | None = None

    def as_data(self) -> dict:
        """Plain data for the parent process (no cells: the worker writes the feedback)."""
        return {"student_id": self.student_id, "status": self.status, "score": self.score,
                "max_score": self.max_score, "reason": self.reason, "seconds": self.seconds,
                "tests": [[t.grade_id, t.points, t.max_points, t.status, t.message] for t in self.tests]}

    @classmethod
    def from_data(cls, student_id: str, data: dict, max_score: float) -> "Result":
        """Rebuild a worker's result, trusting nothing but types (the student id is the parent's)."""
        def number(x, default=0.0):
            return float(x) if type(x) in (int, float) and x == x and abs(x) < 1e12 else default

        status = data.get("status") if data.get("status") in ("graded", "failed") else "failed"
        tests = []
        for t in data.get("tests", [])[:1000] if isinstance(data.get("tests"), list) else []:
            if isinstance(t, list) and len(t) == 5:
                tests.append(TestOutcome(str(t[0])[:200], number(t[1]), number(t[2]), str(t[3])[:20], str(t[4])[:400]))
        score = number(data.get("score"), None) if status == "graded" else None
        if score is not None:
            score = min(score, max_score)
        return cls(student_id, status, score, max_score, str(data.get("reason", ""))[:1000], tests,
                   seconds=number(data.get("seconds")))


def max_score(source: NotebookNode) -> float:
    return sum(nbs.points(c) for c in source.cells if nbs.is_test(c))


def _failed(student_id: str, source: NotebookNode, reason: str, start: float) -> Result:
    return Result(student_id, "failed", None, max_score(source), reason, seconds=time.monotonic() - start)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grade_notebook(student_id: str, submission, source: NotebookNode, template: NotebookNode,
                   work: pathlib.Path, policy: sandbox.Policy, limits: Limits,
                   pool: examiners.ExaminerPool | None = None) -> Result:
    """Grade ``submission`` (a path, an already read notebook, or None when the folder held no
    notebook) in ``work``, a new folder only the grader can write; never raises.

    pool: where the examiner comes from (a grading run shares one); without it one is started."""
    start = time.monotonic()
    if submission is None:
        return _failed(student_id, source, "no notebook for this assignment found in the folder", start)
    if isinstance(submission, dict):  # already read (nbformat 3 upgrades come back as their own node class)
        nb = nbformat.from_dict(submission)
    else:
        try:
            nb = nbs.read_submission(pathlib.Path(submission))
        except nbs.SubmissionError as e:
            return _failed(student_id, source, str(e), start)
    try:
        built = assembly.assemble(source, template, nb)
    except Exception as e:  # a notebook shaped in a way we did not foresee must not stop the batch
        return _failed(student_id, source, f"could not assemble the notebook: {_one_line(e)}", start)
    owned = pool is None
    if policy.mode == "bwrap" and os.geteuid() == 0 and policy.uid is None:  # a uid of its own for the kernel
        uids = sandbox.UidPool()
        with uids.uid() as uid:
            return grade_notebook(student_id, nb, source, template, work, dataclasses.replace(policy, uid=uid),
                                  limits, pool)
    try:
        work = pathlib.Path(work)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owned:
            pool = examiners.ExaminerPool(policy, warm=examiners.plan(source).warm)
        return _run(student_id, built, source, work, policy, limits, start, pool)
    except Exception as e:
        return _failed(student_id, source, f"grader error: {type(e).__name__}: {_one_line(e)} "
                                           f"({_one_line(traceback.format_exc().splitlines()[-2])})", start)
    finally:
        if owned and pool is not None:
            pool.close()


class _Relay:
    """Carries the examiner's requests to the kernel within the current test's time limit."""

    def __init__(self, k: kernel.Kernel):
        self.k = k
        self.deadline = 0.0
        self.lost = ""  # why the kernel went away during this test ("" while it is fine)
        self.timed_out = False
        self.printed = 0

    def start(self, deadline: float) -> None:
        self.deadline, self.lost, self.timed_out, self.printed = deadline, "", False, 0

    def __call__(self, header: dict, buffers: list):
        remaining = self.deadline - time.monotonic()
        if self.lost:
            return {"channel_error": self.lost}, []
        if self.timed_out or remaining <= 0:
            self.timed_out = True
            return {"channel_error": "your code ran past this test's time limit"}, []
        r = self.k.comm_request(header, buffers, timeout=remaining)
        self.printed += r.printed_bytes
        if r.status == "ok":
            return r.header, r.buffers
        if r.status == "timeout":
            self.timed_out = True
            return {"channel_error": "your code ran past this test's time limit and was interrupted"}, []
        if r.status == "killed":
            self.lost = "your code ran past this test's time limit and ignored the interrupt: the kernel was stopped"
        elif r.status == "dead":
            self.lost = "the kernel died while a test was running your code"
        else:
            return {"channel_error": "your kernel gave no answer to the grader (was the grader's agent replaced?)"}, []
        return {"channel_error": self.lost}, []


def _run(student_id, built, source, work, policy, limits, start, pool) -> Result:
    plan = examiners.plan(source)
    notes = list(built.notes)
    result = Result(student_id, "graded", 0.0, max_score(source))
    deadline = start + limits.notebook_timeout
    k = kernel.Kernel(work, policy, exercises=tuple(plan.exercises))
    try:
        k.start()
    except Exception as e:
        return _failed(student_id, source, f"the kernel did not start: {_one_line(e)}", start)
    ex = None
    try:
        try:
            ex = pool.examiner()
            problems = ex.setup(plan)
        except Exception as e:  # noqa: BLE001 - the grader's own failure, said as such
            return _failed(student_id, source, f"the grader's examiner could not start: {_one_line(e)}", start)
        if problems:
            notes.append("setup for the tests failed: " + "; ".join(problems)[:200])
        relay = _Relay(k)
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
            limit = min(limits.cell_timeout, remaining)
            label = f"'{nbs.grade_id(cell)}'" if nbs.grade_id(cell) else f"{index + 1} (added by the student)"
            if test:
                relay.start(time.monotonic() + limit)
                try:
                    done = ex.run(nbs.grade_id(cell) or f"cell {index + 1}", cell.source, limit, relay)
                except examiners.ExaminerGone as e:
                    notes.append(f"the grader's examiner stopped at {label}: {_one_line(e)}")
                    _record_not_run(result, cells[index:])
                    break
                ok = done["status"] == "ok"
                cell.outputs = [{"output_type": "stream", "name": "stdout", "text": done.get("stdout", "")}] \
                    if done.get("stdout") else []
                if relay.timed_out or done["status"] == "timeout":
                    notes.append(f"test {label} exceeded {limit:.0f} s and was stopped")
                status = "ok" if ok else ("timeout" if relay.timed_out or done["status"] == "timeout" else "error")
                message = "" if ok else _one_line(f"{done.get('ename', '')}: {done.get('evalue', '')}", 300)
                earned = nbs.points(cell) if ok else 0.0
                if status == "error" and done.get("fraction"):  # a checker that passed some of its cases
                    earned = round(nbs.points(cell) * done["fraction"], 2)
                    status = "partial"
                result.tests.append(TestOutcome(nbs.grade_id(cell), earned, nbs.points(cell), status, message))
                if relay.lost:
                    notes.append(f"the kernel was restarted after test {label}: {relay.lost}")
                    if not _recover(k, cells[:index], limits, deadline):
                        notes.append("the kernel could not be brought back; later cells not run")
                        _record_not_run(result, cells[index + 1:])
                        result.cells.extend(cells[index + 1:])
                        break
                continue
            r = k.execute(cell.source, timeout=limit)
            cell.outputs = r.outputs
            if r.dropped_bytes:
                cell.outputs.append({"output_type": "stream", "name": "stderr",
                                     "text": f"[{r.dropped_bytes} bytes of output dropped by the grader]\n"})
            if r.status in ("timeout", "killed"):
                notes.append(f"cell {label} exceeded {limit:.0f} s and was "
                             + ("interrupted" if r.status == "timeout" else "killed (it ignored the interrupt)"))
            elif r.status == "dead":
                notes.append(f"the kernel died in cell {label}")
            if r.status in ("killed", "dead"):
                if not _recover(k, cells[:index], limits, deadline):
                    notes.append("the kernel could not be brought back; later cells not run")
                    _record_not_run(result, cells[index + 1:])
                    result.cells.extend(cells[index + 1:])
                    break
        result.score = sum(t.points for t in result.tests)
        result.reason = _one_line("; ".join(notes), 400)
        result.seconds = time.monotonic() - start
        return result
    finally:
        if ex is not None:
            ex.close()
            pool.release(ex.uid)
        k.shutdown()


def _record_not_run(result: Result, cells) -> None:
    for cell in cells:
        if nbs.is_test(cell):
            result.tests.append(TestOutcome(nbs.grade_id(cell) or "?", 0.0, nbs.points(cell), "not run",
                                            "not run (time limit or kernel failure)"))


def _recover(k: kernel.Kernel, earlier: list, limits: Limits, deadline: float) -> bool:
    """Restart the kernel and re-run the earlier non-test cells to rebuild the state.
    False when the kernel cannot come back."""

    def fresh() -> bool:
        try:
            k.restart()
        except Exception:  # noqa: BLE001
            return False
        return True

    if not fresh():
        return False
    for cell in earlier:
        if cell.cell_type != "code" or nbs.is_test(cell):
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        r = k.execute(cell.source, timeout=min(limits.cell_timeout, remaining))
        if r.status in ("killed", "dead") and not fresh():  # this earlier cell cannot be replayed: skip it
            return False
    return True
