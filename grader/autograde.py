"""``attn-grade autograde``: grade a folder of student folders, one row per student, always.

The parent process reads the submissions folder without following anything a student
planted (:mod:`grader.intake`), starts one examiner zygote for the run and, for each student,
forks a worker (at most ``jobs`` at a time) with a uid of its own for the student's kernel.
A worker reads and grades one notebook (:func:`grader.grade.grade_notebook`), writes the
feedback page and sends its result back as a small JSON document over a pipe; the parent
keeps only numbers and strings from it, checked, and never unpickles anything. A worker that
crashes or hangs costs only its own student a ``failed`` row. Results go to ``grades.csv``,
to nbgrader's gradebook (SQLite by default, any SQLAlchemy URL with ``--db-url``) and to one
feedback page per student.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import select
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import nbformat

from . import course, examiner, feedback, grade, intake, release, sandbox
from . import notebooks as nbs

CSV_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason"]
SKIP_DIRS = intake.SKIP_DIRS
MAX_RESULT = 1 << 20  # bytes a worker's result may have


@dataclass
class Settings:
    jobs: int = 2
    limits: grade.Limits = field(default_factory=grade.Limits)
    sandbox: str = "auto"
    db_url: str | None = None
    progress: bool = True
    feedback: bool = True


def _normalised(stem: str) -> str:
    return intake._normalised(stem)


def _write_csv(path: pathlib.Path, assignment: str, results: list[grade.Result]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(results, key=lambda r: r.student_id):
            score = "" if r.score is None else f"{r.score:g}"
            writer.writerow([r.student_id, assignment, score, f"{r.max_score:g}", r.status,
                             " ".join(intake.printable(r.reason).split())])
    os.replace(tmp, path)


def _record_gradebook(db_url: str, assignment: str, results: list[grade.Result]) -> None:
    course.ensure_tools_on_path()
    from nbgrader.api import Gradebook, MissingEntry

    with warnings.catch_warnings(), Gradebook(db_url, course_id=course.COURSE_ID) as gb:
        warnings.simplefilter("ignore")  # nbgrader's own SQLAlchemy autoflush warnings
        for r in results:
            gb.update_or_create_student(r.student_id)
            try:
                gb.remove_submission(assignment, r.student_id)
            except MissingEntry:
                pass
            if r.status != "graded":
                continue  # no submission row: a failed grading is not a zero
            gb.add_submission(assignment, r.student_id)
            for t in r.tests:
                try:
                    g = gb.find_grade(t.grade_id, assignment, assignment, r.student_id)
                except MissingEntry:
                    continue
                g.auto_score = t.points
            gb.db.commit()


def _register_assignment(source_path: pathlib.Path, db_url: str) -> nbformat.NotebookNode:
    """Release the assignment into the gradebook (its cells and points) and return the template."""
    text = release.student_version(source_path, db_url=db_url)
    return nbformat.reads(text, as_version=4)


@dataclass
class _Job:
    folder: intake.Folder
    parts: tuple | None = None
    why: str = ""


def autograde(submissions: pathlib.Path, assignment: str, out: pathlib.Path,
              settings: Settings | None = None, solutions: pathlib.Path = course.SOLUTIONS) -> list[grade.Result]:
    """Grade every folder in ``submissions``; write ``out/grades.csv`` and ``out/feedback/``."""
    settings = settings or Settings()
    submissions, out = pathlib.Path(submissions).resolve(), pathlib.Path(out).resolve()
    sources = course.assignments(solutions)
    if assignment not in sources:
        raise ValueError(f"unknown assignment {assignment!r}; the course has: {', '.join(sources) or 'none'}")
    if not submissions.is_dir():
        raise ValueError(f"{submissions} is not a folder of student folders")
    out.mkdir(parents=True, exist_ok=True)
    db_url = settings.db_url or course.sqlite_url(out / "gradebook.db")
    source = nbformat.read(sources[assignment], as_version=4)
    template = _register_assignment(sources[assignment], db_url)
    mode = sandbox.resolve_mode(settings.sandbox)
    folders = intake.scan(submissions)
    counts = intake.census(submissions, folders)
    jobs = []
    for folder in folders:
        job = _Job(folder)
        if folder.problem:
            job.why = folder.problem
        else:
            job.parts, job.why = intake.find_notebook(folder, assignment)
        jobs.append(job)
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="attn-grade-"))
    os.chmod(run_dir, 0o700)
    policy = sandbox.Policy(mode=mode, memory_bytes=settings.limits.memory_bytes)
    uids = sandbox.UidPool() if mode == "bwrap" and os.geteuid() == 0 else None
    start = time.monotonic()
    pool = None
    try:
        pool = examiner.ExaminerPool(policy, warm=examiner.plan(source).warm, uids=uids)
        results = _run_all(jobs, submissions, counts, assignment, source, template, run_dir, policy, settings,
                           out, pool, uids)
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    _write_csv(out / "grades.csv", assignment, results)
    _record_gradebook(db_url, assignment, results)
    if settings.progress:
        print(summary(results, assignment, mode, time.monotonic() - start), file=sys.stderr)
    return results


def _feedback_path(out: pathlib.Path, student_id: str, assignment: str) -> pathlib.Path:
    return out / "feedback" / student_id / f"{assignment}.html"


def _write_feedback(result: grade.Result, assignment: str, source, path: pathlib.Path) -> str:
    try:
        feedback.write_html(feedback.build(result, assignment, source), path)
        return ""
    except Exception as e:  # noqa: BLE001 - feedback must never cost a student their grade
        return f"feedback not written: {type(e).__name__}: {e}"


def _worker(write_fd: int, job: _Job, submissions, counts, assignment, source, template, work, policy, limits,
            fb_path, pool_examiner) -> None:
    """The forked worker: grade one student, write feedback, send plain JSON, exit."""
    close_inherited({0, 1, 2, write_fd, pool_examiner.sock.fileno()})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sid = job.folder.student_id
    try:
        try:
            raw = intake.read_submission_bytes(submissions, job.parts, counts)
            nb = nbs.parse_submission(raw, job.parts[-1])
        except nbs.SubmissionError as e:
            result = grade.Result(sid, "failed", None, grade.max_score(source), str(e))
        else:
            result = grade.grade_notebook(sid, nb, source, template, work, policy, limits,
                                          pool=_OneExaminer(pool_examiner))
        if fb_path is not None:
            problem = _write_feedback(result, assignment, source, fb_path)
            if problem:
                result.reason = (result.reason + "; " if result.reason else "") + problem
        data = result.as_data()
    except BaseException as e:  # noqa: BLE001 - report, do not hang the parent
        data = {"status": "failed", "reason": f"grader error: {type(e).__name__}: {e}"[:300]}
    payload = json.dumps(data, allow_nan=False, default=str).encode("utf-8")[:MAX_RESULT]
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os.close(write_fd)


class _OneExaminer:
    """A pool that hands out the one examiner the parent made for this worker."""

    def __init__(self, ex: examiner.Examiner):
        self.ex = ex

    def examiner(self) -> examiner.Examiner:
        return self.ex

    def close(self) -> None:
        self.ex.close()


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def close_inherited(keep: set[int]) -> None:
    """In a forked worker: close every descriptor but ``keep`` (other workers' result pipes,
    their examiners' sockets, the zygote's control socket, the gradebook...), so nothing a
    worker starts can reach another student's channel."""
    for fd in _open_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _run_all(jobs, submissions, counts, assignment, source, template, run_dir, policy, settings, out, pool,
             uids) -> list[grade.Result]:
    from tqdm import tqdm

    pending = list(jobs)
    running: dict[int, dict] = {}  # read fd -> worker
    results: list[grade.Result] = []
    total = grade.max_score(source)
    bar = tqdm(total=len(jobs), desc=f"grading {assignment}", unit="student", disable=not settings.progress,
               file=sys.stderr)
    guard = settings.limits.notebook_timeout + 120  # a worker past this is stuck: kill it
    serial = 0

    def finish(w: dict, result: grade.Result) -> None:
        results.append(result)
        try:
            os.waitpid(w["pid"], 0)
        except ChildProcessError:
            pass
        if w.get("uid") is not None:
            uids.release(w["uid"])
        shutil.rmtree(w["work"], ignore_errors=True)
        bar.update()

    try:
        while pending or running:
            while pending and len(running) < max(1, settings.jobs):
                job = pending.pop(0)
                sid = job.folder.student_id
                if job.parts is None:
                    results.append(grade.Result(sid, "failed", None, total, job.why))
                    if settings.feedback:
                        _write_feedback(results[-1], assignment, source, _feedback_path(out, sid, assignment))
                    bar.update()
                    continue
                serial += 1
                work = sandbox.private_dir(run_dir, f"s{serial}")
                uid = uids.acquire() if uids is not None else None
                worker_policy = sandbox.Policy(**{**policy.__dict__, "uid": uid})
                ex = pool.examiner()
                read_fd, write_fd = os.pipe()
                fb = _feedback_path(out, sid, assignment) if settings.feedback else None
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        os.close(read_fd)
                        _worker(write_fd, job, submissions, counts, assignment, source, template, work,
                                worker_policy, settings.limits, fb, ex)
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
                os.close(write_fd)
                ex.close()
                running[read_fd] = {"pid": pid, "sid": sid, "started": time.monotonic(), "data": bytearray(),
                                    "uid": uid, "work": work}
            if not running:
                continue
            ready, _, _ = select.select(list(running), [], [], 1.0)
            for fd in ready:
                w = running[fd]
                chunk = os.read(fd, 65536)
                if chunk and len(w["data"]) <= MAX_RESULT:
                    w["data"] += chunk
                    continue
                if chunk:
                    continue  # past the limit: keep draining, the result will be refused
                os.close(fd)
                del running[fd]
                finish(w, _result_from(w, total))
            for fd, w in list(running.items()):
                if time.monotonic() - w["started"] > guard:
                    try:
                        os.kill(w["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    os.close(fd)
                    del running[fd]
                    finish(w, grade.Result(w["sid"], "failed", None, total,
                                           f"grading took longer than {guard:.0f} s and was stopped"))
    finally:
        for fd, w in running.items():
            try:
                os.kill(w["pid"], signal.SIGKILL)
                os.waitpid(w["pid"], 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(fd)
        bar.close()
    return results


def _result_from(w: dict, total: float) -> grade.Result:
    try:
        data = json.loads(bytes(w["data"])) if len(w["data"]) <= MAX_RESULT else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        try:
            _, status = os.waitpid(w["pid"], os.WNOHANG)
            code = os.waitstatus_to_exitcode(status) if status else None
        except ChildProcessError:
            code = None
        return grade.Result(w["sid"], "failed", None, total,
                            "grader process crashed" + (f" (exit code {code})" if code is not None else ""))
    return grade.Result.from_data(w["sid"], data, total)


def summary(results: list[grade.Result], assignment: str, mode: str, seconds: float) -> str:
    graded = [r for r in results if r.status == "graded"]
    failed = [r for r in results if r.status != "graded"]
    lines = [f"\n{assignment}: {len(results)} students, {len(graded)} graded, {len(failed)} failed, "
             f"{seconds:.1f} s; sandbox: {sandbox.describe(mode)}"]
    if graded:
        mean = sum(r.score for r in graded) / len(graded)
        full = sum(r.score == r.max_score for r in graded)
        lines.append(f"mean score {mean:.2f} / {graded[0].max_score:g}; full marks: {full}")
    width = max([len(r.student_id) for r in results] + [7])
    lines.append(f"{'student':<{width}}  {'score':>9}  {'status':<6}  reason")
    for r in sorted(results, key=lambda r: r.student_id):
        score = "-" if r.score is None else f"{r.score:g}/{r.max_score:g}"
        lines.append(f"{r.student_id:<{width}}  {score:>9}  {r.status:<6}  {r.reason[:90]}")
    return "\n".join(lines)
