"""``attn-grade autograde``: grade a folder of student folders, one row per student, always.

Each student is graded in a process of its own (so a crash in one never reaches another),
at most ``jobs`` at a time, each with a sandboxed kernel. Results go to ``grades.csv``, to
nbgrader's gradebook (SQLite by default, any SQLAlchemy URL with ``--db-url``) and to one
feedback page per student.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import wait

import nbformat

from . import course, feedback, grade, release, sandbox

CSV_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason"]
_COPY_PATTERNS = [r"^copy of\s+", r"\s*\(\d+\)$", r"[-_ ]copy\d*$", r"\s+copy$"]
SKIP_DIRS = {".ipynb_checkpoints", "__MACOSX", "__pycache__"}


@dataclass
class Settings:
    jobs: int = 2
    limits: grade.Limits = field(default_factory=grade.Limits)
    sandbox: str = "auto"
    db_url: str | None = None
    progress: bool = True
    feedback: bool = True


def _normalised(stem: str) -> str:
    name = stem.strip().lower()
    changed = True
    while changed:
        changed = False
        for pattern in _COPY_PATTERNS:
            new = re.sub(pattern, "", name).strip()
            if new != name:
                name, changed = new, True
    return name


def find_notebook(folder: pathlib.Path, assignment: str) -> tuple[pathlib.Path | None, str]:
    """The student's notebook for ``assignment`` in ``folder`` (searched recursively), and a
    reason when there is none. Copy-mangled names (``Copy of X``, ``X (1)``, ``X-Copy1``) match."""
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        if any(part in SKIP_DIRS or part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_file():
            found.append(path)
    target = assignment.lower()
    exact = [p for p in found if p.stem.lower() == target]
    loose = [p for p in found if _normalised(p.stem) == target]
    for group in (exact, loose):
        if group:
            return max(group, key=lambda p: (p.stat().st_mtime, str(p))), ""
    if len(found) == 1:
        return found[0], ""
    if not found:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:5]
        return None, ("no notebook in the folder" + (f" (found: {', '.join(others)})" if others else " (it is empty)"))
    return None, f"no notebook named like {assignment}.ipynb among {', '.join(p.name for p in found[:5])}"


def _worker(conn, student_id, path, source, template, work, policy, limits, feedback_path, assignment):
    try:
        result = grade.grade_notebook(student_id, path, source, template, work, policy, limits)
        if feedback_path is not None:
            try:
                feedback.write_html(feedback.build(result, assignment, source), feedback_path)
            except Exception as e:  # feedback must never cost a student their grade
                result.reason = (result.reason + "; " if result.reason else "") + f"feedback not written: {e}"
        result.cells = []
        conn.send(result)
    except BaseException as e:  # report, do not hang the parent
        conn.send(grade.Result(student_id, "failed", None, grade.max_score(source),
                               f"grader error: {type(e).__name__}: {e}"))
    finally:
        conn.close()


def _write_csv(path: pathlib.Path, assignment: str, results: list[grade.Result]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(results, key=lambda r: r.student_id):
            score = "" if r.score is None else f"{r.score:g}"
            writer.writerow([r.student_id, assignment, score, f"{r.max_score:g}", r.status,
                             " ".join(r.reason.split())])


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


def _database_paths(db_url: str) -> list[pathlib.Path]:
    """Folders through which the gradebook could be reached: the SQLite file's folder, or a
    PostgreSQL server's Unix socket folders (TCP is already cut by the network namespace)."""
    from urllib.parse import parse_qs, urlsplit
    if db_url.startswith("sqlite:///"):
        return [pathlib.Path(db_url[len("sqlite:///"):]).parent]
    paths = [pathlib.Path("/run/postgresql"), pathlib.Path("/var/run/postgresql")]
    for host in parse_qs(urlsplit(db_url).query).get("host", []):
        paths.append(pathlib.Path(host))
    return [p for p in paths if p.is_absolute()]


def _register_assignment(source_path: pathlib.Path, db_url: str) -> nbformat.NotebookNode:
    """Release the assignment into the gradebook (its cells and points) and return the template."""
    text = release.student_version(source_path, db_url=db_url)
    return nbformat.reads(text, as_version=4)


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
    hidden = [submissions, out, course.REPO, solutions.resolve()]
    hidden += _database_paths(db_url)
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and p.name not in SKIP_DIRS
                      and not p.name.startswith("."))
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="attn-grade-"))
    os.chmod(run_dir, 0o711)
    policy = sandbox.Policy(mode=mode, memory_bytes=settings.limits.memory_bytes, hidden=hidden)
    results: list[grade.Result] = []
    start = time.monotonic()
    try:
        results = _run_all(students, assignment, source, template, run_dir, policy, settings, out)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    _write_csv(out / "grades.csv", assignment, results)
    _record_gradebook(db_url, assignment, results)
    if settings.progress:
        print(summary(results, assignment, mode, time.monotonic() - start), file=sys.stderr)
    return results


def _run_all(students, assignment, source, template, run_dir, policy, settings, out) -> list[grade.Result]:
    from tqdm import tqdm

    ctx = multiprocessing.get_context("fork")
    pending = list(students)
    running: dict = {}  # connection -> (process, student_id, started)
    results: list[grade.Result] = []
    bar = tqdm(total=len(students), desc=f"grading {assignment}", unit="student", disable=not settings.progress,
               file=sys.stderr)
    guard = settings.limits.notebook_timeout + 120  # a worker past this is stuck: kill it
    try:
        while pending or running:
            while pending and len(running) < max(1, settings.jobs):
                folder = pending.pop(0)
                path, why = find_notebook(folder, assignment)
                if path is None:
                    results.append(grade.Result(folder.name, "failed", None, grade.max_score(source), why))
                    if settings.feedback:
                        feedback.write_html(feedback.build(results[-1], assignment, source),
                                            out / "feedback" / folder.name / f"{assignment}.html")
                    bar.update()
                    continue
                receive, send = ctx.Pipe(duplex=False)
                fb = out / "feedback" / folder.name / f"{assignment}.html" if settings.feedback else None
                proc = ctx.Process(target=_worker, daemon=True, args=(
                    send, folder.name, path, source, template, run_dir / f"s{len(results) + len(running)}-{os.getpid()}",
                    policy, settings.limits, fb, assignment))
                proc.start()
                send.close()
                running[receive] = (proc, folder.name, time.monotonic())
            if not running:
                continue
            for conn in wait(list(running), timeout=1.0):
                proc, student_id, _ = running.pop(conn)
                try:
                    results.append(conn.recv())
                except EOFError:
                    proc.join(5)
                    results.append(grade.Result(student_id, "failed", None, grade.max_score(source),
                                                f"grader process crashed (exit code {proc.exitcode})"))
                proc.join(5)
                bar.update()
            for conn, (proc, student_id, started) in list(running.items()):
                if time.monotonic() - started > guard:
                    proc.kill()
                    proc.join(5)
                    running.pop(conn)
                    results.append(grade.Result(student_id, "failed", None, grade.max_score(source),
                                                f"grading took longer than {guard:.0f} s and was stopped"))
                    bar.update()
    finally:
        for proc, _, _ in running.values():
            proc.kill()
        bar.close()
    return results


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
