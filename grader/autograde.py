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

import copy
import csv
import datetime as dt
import json
import os
import pathlib
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import nbformat

from . import course, deadlines, examiner, feedback, grade, gradebook, intake, layouts, release, sandbox
from . import notebooks as nbs

CSV_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason"]
EXTRA_COLUMNS = ["submitted_at", "late_days", "penalty", "raw_score"]
SKIP_DIRS = intake.SKIP_DIRS
MAX_RESULT = 1 << 20  # bytes a worker's result may have
WORKER_MEMORY = 6 << 30  # address space of one worker (the grader's side of one student): a flood costs its own row


@dataclass
class Settings:
    jobs: int = 2
    limits: grade.Limits = field(default_factory=grade.Limits)
    sandbox: str = "auto"
    db_url: str | None = None
    progress: bool = True
    feedback: bool = True
    students: tuple[str, ...] = ()  # regrade only these ids (empty: everyone)
    layout: str = "auto"
    roster: pathlib.Path | None = None
    due: str | None = None
    extensions: pathlib.Path | None = None
    late_policy: str | None = None
    scheduler: str | None = None  # a Dask scheduler (tcp://HOST:PORT or a scheduler file): grade on its workers


def _normalised(stem: str) -> str:
    return intake._normalised(stem)


def _number(x) -> str:
    return "" if x is None else f"{x:g}"


def _when(iso: str) -> str:
    """A submission time for the CSV: UTC to the second (the gradebook keeps it exact)."""
    if not iso:
        return ""
    try:
        return deadlines.format_time(dt.datetime.fromisoformat(iso))
    except ValueError:
        return ""


def write_csv(path: pathlib.Path, rows: list) -> None:
    """``grades.csv`` from the gradebook's view (:func:`grader.gradebook.rows`), written to a
    temporary file and renamed over the old one: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS + EXTRA_COLUMNS)
        for r in sorted(rows, key=lambda r: r.student_id):
            graded = r.status == "graded"
            writer.writerow([r.student_id, r.assignment, _number(r.score), _number(r.max_score), r.status,
                             " ".join(intake.printable(r.reason).split()), _when(r.submitted_at),
                             _number(r.late_days) if graded else "", _number(r.penalty) if graded else "",
                             _number(r.raw_score)])
    os.replace(tmp, path)


def write_course_files(out: pathlib.Path, assignment: str, source_path: pathlib.Path, template_text: str,
                       db_url: str) -> None:
    """Make ``out`` an nbgrader course folder formgrader can open: ``source/`` and
    ``release/`` for the assignment, and an ``nbgrader_config.py`` (never overwritten)."""
    for tree, text in (("source", source_path.read_text(encoding="utf-8")), ("release", template_text)):
        folder = out / tree / assignment
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{assignment}.ipynb.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / f"{assignment}.ipynb")
    config = out / "nbgrader_config.py"
    if not config.exists():
        lines = ["# Written by attn-grade: formgrader (jupyter lab in this folder) opens this course.",
                 "c = get_config()  # noqa: F821", f"c.CourseDirectory.course_id = {course.COURSE_ID!r}"]
        if db_url != course.sqlite_url(out / "gradebook.db"):
            lines.append(f"c.CourseDirectory.db_url = {db_url!r}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_submitted(out: pathlib.Path, student_id: str, assignment: str, raw: bytes, submitted_at: str = "") -> None:
    """``submitted/<student>/<assignment>/``: the file as the student handed it in (and its
    ``timestamp.txt``), so formgrader counts the submission as nbgrader would."""
    folder = out / "submitted" / feedback_folder(student_id) / assignment
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{assignment}.ipynb.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / f"{assignment}.ipynb")
    stamp = folder / "timestamp.txt"
    if submitted_at:
        when = dt.datetime.fromisoformat(submitted_at).astimezone(dt.timezone.utc)
        stamp.write_text(when.strftime("%Y-%m-%d %H:%M:%S.%f %Z").replace("UTC", "UTC"), encoding="utf-8")
    elif stamp.exists():
        stamp.unlink()


_INERT = ("text/plain", "image/png", "image/jpeg", "image/gif")


def _inert(out: dict) -> dict:
    """An output formgrader can render without running anything the student wrote: text and
    raster images only (HTML, JavaScript, SVG, widgets dropped)."""
    out = dict(out)
    if out.get("output_type") in ("display_data", "execute_result"):
        data = {k: v for k, v in dict(out.get("data", {})).items() if k in _INERT}
        out["data"] = data or {"text/plain": "[output not shown here: see the feedback page]"}
        out["metadata"] = {}
    return out


def write_autograded(out: pathlib.Path, student_id: str, assignment: str, source, result) -> None:
    """``autograded/<student>/<assignment>/<assignment>.ipynb``: the notebook as graded, with
    its outputs and each test's score in the cell's nbgrader metadata (what formgrader opens)."""
    if not result.cells:
        return
    points = {t.grade_id: t for t in result.tests}
    cells = []
    for cell in result.cells:
        cell = nbformat.from_dict(copy.deepcopy(dict(cell)))
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and meta.get("grade_id") in points:
            t = points[meta["grade_id"]]
            meta["score"], meta["attn_grade_status"] = t.points, t.status
        if nbs.is_test(cell):  # nbgrader's own feedback is made from these: no hidden test in them
            cell.source = nbs.strip_hidden(cell.source).rstrip() + "\n# (hidden tests not shown)"
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(_inert(o)) for o in cell.get("outputs", [])]
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells, metadata=dict(source.metadata))
    nb.metadata["attn_grade"] = {"score": result.score, "max_score": result.max_score, "status": result.status,
                                 "reason": result.reason}
    folder = out / "autograded" / feedback_folder(student_id) / assignment
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{assignment}.ipynb.tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, folder / f"{assignment}.ipynb")


def _register_assignment(source_path: pathlib.Path, db_url: str) -> str:
    """Release the assignment into the gradebook (its cells and points); the student version's text."""
    try:
        return release.student_version(source_path, db_url=db_url)
    except RuntimeError as e:
        raise RuntimeError(f"cannot register {source_path.stem} in the gradebook: {e} (the gradebook has "
                           "submissions of an earlier version of this notebook with other graded cells)") from None


@dataclass
class _Job:
    entry: layouts.Entry
    parts: tuple | None = None
    why: str = ""  # when there is nothing to grade: the row's reason
    file: str = ""  # "graded Copy of 03_attention (1).ipynb, submitted ..."
    say_file: bool = False  # the file graded is worth naming in the row's reason
    submitted_at: str = ""  # ISO 8601 in UTC, when the layout or a timestamp says

    @property
    def student_id(self) -> str:
        return self.entry.student_id


def autograde(submissions: pathlib.Path, assignment: str, out: pathlib.Path,
              settings: Settings | None = None, solutions: pathlib.Path = course.SOLUTIONS) -> list[grade.Result]:
    """Grade the submissions in ``submissions`` (any layout); merge into the gradebook and write
    ``out/grades.csv`` (the gradebook's view), ``out/feedback/`` and the course folders."""
    settings = settings or Settings()
    submissions, out = pathlib.Path(submissions).resolve(), pathlib.Path(out).resolve()
    sources = course.assignments(solutions)
    if assignment not in sources:
        raise ValueError(f"unknown assignment {assignment!r}; the course has: {', '.join(sources) or 'none'}")
    if not submissions.is_dir():
        raise ValueError(f"{submissions} is not a folder of student folders")
    # everything the instructor typed is checked before anything is graded
    late = deadlines.parse_policy(settings.late_policy or "none")
    notes: list[str] = []
    due = None
    if settings.due:
        due, note = deadlines.parse_time(settings.due, what="--due")
        notes += [note] if note else []
    elif late.kind != "none":
        raise ValueError("--late-policy needs --due (when is the assignment due?)")
    extensions = deadlines.read_extensions(settings.extensions, due) if settings.extensions else deadlines.Extensions(due)
    roster = layouts.read_roster(settings.roster) if settings.roster else None
    batch = layouts.collect(submissions, settings.layout, roster=roster, assignment=assignment)
    notes += [n for n in batch.notes + batch.duplicates if n]
    if batch.unknown:
        notes.append(f"not on the roster (graded anyway): {', '.join(batch.unknown[:10])}"
                     + (f" and {len(batch.unknown) - 10} more" if len(batch.unknown) > 10 else ""))
    extra = extensions.unknown([e.student_id for e in batch.entries] + [s.id for s in batch.missing])
    if extra:
        notes.append(f"extensions for students with no submission here: {', '.join(extra[:10])}")
    entries, missing = batch.entries, batch.missing
    if settings.students:
        wanted = set(settings.students)
        known = {e.student_id for e in entries} | {s.id for s in missing}
        unknown = wanted - known
        if unknown:
            raise ValueError(f"no submission for student(s) {', '.join(sorted(unknown))} in {submissions}")
        entries = [e for e in entries if e.student_id in wanted]
        missing = [s for s in missing if s.id in wanted]
    out.mkdir(parents=True, exist_ok=True)
    db_url = settings.db_url or course.sqlite_url(out / "gradebook.db")
    source = nbformat.read(sources[assignment], as_version=4)
    template_text = _register_assignment(sources[assignment], db_url)
    template = nbformat.reads(template_text, as_version=4)
    write_course_files(out, assignment, sources[assignment], template_text, db_url)
    released = layouts.released_notebooks()
    # on a cluster the workers sandbox the kernels: bubblewrap there unless the run says none
    mode = ("none" if settings.sandbox == "none" else "bwrap") if settings.scheduler \
        else sandbox.resolve_mode(settings.sandbox)
    jobs = []
    for entry in entries:
        choice = entry.choose(assignment)
        job = _Job(entry)
        if choice.ok:
            job.parts, job.file = choice.parts, choice.reason
            job.submitted_at = choice.submitted_at.isoformat() if choice.submitted_at else ""  # full precision: formgrader compares it with timestamp.txt
            plain = len(entry.candidates) == 1 and choice.candidate.filename == f"{assignment}.ipynb"
            job.say_file = not plain or choice.candidate.late
        else:
            job.why = choice.reason
        jobs.append(job)
    start = time.monotonic()
    cluster_error = None
    if settings.scheduler:
        from . import cluster

        def feedback_for(result):
            if settings.feedback:
                _write_feedback(result, assignment, source, _feedback_path(out, result.student_id, assignment))
        results, cluster_error = cluster.run(jobs, batch.root, batch.census, assignment, sources[assignment], source,
                                             settings, out, mode, feedback_for)
    else:
        results = _grade_here(jobs, batch, assignment, source, template, settings, out, mode, released)
    total = grade.max_score(source)
    by_id = {job.student_id: job for job in jobs}
    for r in results:
        job = by_id.get(r.student_id)
        if job is None:
            continue
        r.file, r.submitted_at = job.file, job.submitted_at
        if job.say_file and job.file and r.status == "graded":
            r.reason = job.file + (f"; {r.reason}" if r.reason else "")
        if r.status == "graded":
            when = dt.datetime.fromisoformat(job.submitted_at) if job.submitted_at else None
            p = late.penalty(r.score, total, when, extensions.due_for(r.student_id))
            r.raw_score, r.score, r.late_days, r.penalty = p.raw_score, p.score, p.late_days, p.penalty
            if p.note:
                r.reason = (r.reason + "; " if r.reason else "") + p.note
    for student in ([] if cluster_error else missing):
        results.append(grade.Result(student.id, "failed", None, total, "no submission"))
        if settings.feedback:
            _write_feedback(results[-1], assignment, source, _feedback_path(out, student.id, assignment))
    people = {e.student_id: {"first_name": e.name, "email": e.email} for e in batch.entries if e.name or e.email}
    people.update({s.id: {"first_name": s.name, "email": s.email} for s in (roster.students if roster else [])})
    on_roster = {st.id: st for st in (roster.students if roster else [])}

    def known(sid, **fields):
        st = on_roster.get(sid)
        info = {"layout": batch.layout, **{k: v for k, v in fields.items() if v}}
        for key in ("name", "email", "lms_id"):  # the roster fills what the LMS's names did not say
            if st is not None and not info.get(key) and getattr(st, key):
                info[key] = getattr(st, key)
        return info

    lms = {e.student_id: known(e.student_id, label=e.label, name=e.name, email=e.email, lms_id=e.lms_id,
                               file=(by_id[e.student_id].parts or ("",))[-1] if by_id.get(e.student_id) else "")
           for e in entries}
    lms.update({st.id: known(st.id) for st in missing})
    gradebook.record(db_url, assignment, results, students=people, lms=lms)
    write_csv(out / "grades.csv", gradebook.rows(db_url, assignment))
    if cluster_error is not None:
        raise cluster_error
    if settings.progress:
        where = [f"graded on the Dask cluster at {settings.scheduler}"] if settings.scheduler else []
        header = where + [f"layout: {batch.layout}"] + ([f"late policy: {late.describe()}"] if due else []) + notes
        print(summary(results, assignment, mode, time.monotonic() - start, header), file=sys.stderr)
    return results


def _grade_here(jobs, batch, assignment, source, template, settings, out, mode, released) -> list[grade.Result]:
    """Grade ``jobs`` on this machine, ``settings.jobs`` at a time."""
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="attn-grade-"))
    os.chmod(run_dir, 0o700)
    policy = sandbox.Policy(mode=mode, memory_bytes=settings.limits.memory_bytes)
    uids = sandbox.UidPool() if mode == "bwrap" and os.geteuid() == 0 else None
    pool = None
    try:
        pool = examiner.ExaminerPool(policy, warm=examiner.plan(source).warm, uids=uids)
        return _run_all(jobs, batch.root, batch.census, assignment, source, template, run_dir, policy, settings,
                        out, pool, uids, released)
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def feedback_folder(student_id: str) -> str:
    """The folder name of a student's feedback: the id itself, shortened (with a hash, so two
    ids never share a folder) when it would not fit a file name."""
    if len(student_id.encode("utf-8")) <= 120:
        return student_id
    import hashlib
    return student_id[:60] + "-" + hashlib.sha1(student_id.encode("utf-8")).hexdigest()[:12]


def _feedback_path(out: pathlib.Path, student_id: str, assignment: str) -> pathlib.Path:
    return out / "feedback" / feedback_folder(student_id) / f"{assignment}.html"


class _Late(Exception):
    pass


def _write_feedback(result: grade.Result, assignment: str, source, path: pathlib.Path, seconds: float = 120.0) -> str:
    """Write the page within ``seconds``; past that, a page with the summary alone. (The time
    limit needs the main thread; elsewhere, e.g. autograde called from a thread, only rows with
    no cells reach here and the page is written without one.)"""
    def late(signum, frame):
        raise _Late()

    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, late)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 5.0))
    try:
        feedback.write_html(feedback.build(result, assignment, source), path)
        return ""
    except _Late:
        cells, result.cells = result.cells, []
        try:
            feedback.write_html(feedback.build(result, assignment, source), path)
        except Exception:  # noqa: BLE001
            pass
        result.cells = cells
        return "feedback page cut to the summary (it took too long to render)"
    except Exception as e:  # noqa: BLE001 - feedback must never cost a student their grade
        return f"feedback not written: {type(e).__name__}: {e}"
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _worker(write_fd: int, job: _Job, submissions, counts, assignment, source, template, work, policy, limits,
            fb_path, pool_examiner, out=None, released=None, siblings=()) -> None:
    """The forked worker: grade one student, write feedback, send plain JSON, exit."""
    close_siblings(siblings)
    fresh_event_loop()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    limit_memory(WORKER_MEMORY)
    started = time.monotonic()
    sid = job.student_id
    try:
        raw = None
        try:
            raw = intake.read_submission_bytes(submissions, job.parts, counts)
            nb = nbs.parse_submission(raw, job.parts[-1])
            which = layouts.identify(nb, released) if released else None
            if which is not None and which != assignment:
                raise nbs.SubmissionError(f"this is {which}, not {assignment}: {job.file or 'the notebook'}")
        except nbs.SubmissionError as e:
            result = grade.Result(sid, "failed", None, grade.max_score(source), str(e))
        else:
            result = grade.grade_notebook(sid, nb, source, template, work, policy, limits,
                                          pool=_OneExaminer(pool_examiner))
        if fb_path is not None:
            budget = limits.notebook_timeout + 60 - (time.monotonic() - started)
            problem = _write_feedback(result, assignment, source, fb_path, budget)
            if problem:
                result.reason = (result.reason + "; " if result.reason else "") + problem
        if result.status == "graded" and out is not None:
            try:
                if submissions != out / "submitted":
                    write_submitted(out, sid, assignment, raw, job.submitted_at)
                write_autograded(out, sid, assignment, source, result)
            except Exception as e:  # noqa: BLE001 - the grade stands without the copy
                result.reason = (result.reason + "; " if result.reason else "") + f"autograded copy not written: {e}"
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

    def release(self, uid) -> None:
        pass  # the parent gives the examiner's uid back when this worker has ended

    def close(self) -> None:
        self.ex.close()


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def limit_memory(nbytes: int) -> None:
    """A soft address-space limit for this worker (its kernel sets its own, lower one)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > nbytes:
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))


def close_inherited(keep: set[int]) -> None:
    """Close every descriptor but ``keep`` (for a process that uses no library state inherited
    from its parent)."""
    close_siblings([fd for fd in _open_fds() if fd not in keep])


def close_siblings(fds) -> None:
    """In a forked worker: close the parent's channels to everything else (other workers'
    result pipes, the zygote's control socket, the uid locks), so nothing this worker or its
    kernel does can reach another student's channel. (The kernel itself starts with only its
    standard streams: Popen closes the rest.)"""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def fresh_event_loop() -> None:
    """jupyter_client runs on an asyncio loop jupyter_core caches per context; a forked worker
    must not share the parent's (its epoll set and wake-up pipe are the parent's)."""
    import asyncio
    try:
        from jupyter_core import utils
        utils._loop.set(None)
    except (ImportError, AttributeError):
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def _run_all(jobs, submissions, counts, assignment, source, template, run_dir, policy, settings, out, pool,
             uids, released=None) -> list[grade.Result]:
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
        pool.release(w.get("examiner_uid"))
        sandbox.remove_cgroups(f"attn-grade-{w['pid']}-")  # a killed worker's kernel left them behind
        shutil.rmtree(w["work"], ignore_errors=True)
        bar.update()

    try:
        while pending or running:
            while pending and len(running) < max(1, settings.jobs):
                job = pending.pop(0)
                sid = job.student_id
                if job.parts is None:
                    results.append(grade.Result(sid, "failed", None, total, job.why))
                    if settings.feedback:
                        _write_feedback(results[-1], assignment, source, _feedback_path(out, sid, assignment))
                    bar.update()
                    continue
                try:
                    ex = pool.examiner()
                except examiner.ExaminerGone:  # the zygote died: start another once, else this row fails
                    try:
                        pool.restart()
                        ex = pool.examiner()
                    except (examiner.ExaminerGone, OSError) as e:
                        results.append(grade.Result(sid, "failed", None, total,
                                                    f"grader error: the examiner could not start ({e})"))
                        bar.update()
                        continue
                serial += 1
                work = sandbox.private_dir(run_dir, f"s{serial}")
                uid = uids.acquire() if uids is not None else None
                worker_policy = sandbox.Policy(**{**policy.__dict__, "uid": uid})
                read_fd, write_fd = os.pipe()
                fb = _feedback_path(out, sid, assignment) if settings.feedback else None
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        os.close(read_fd)
                        siblings = [fd for fd in running] + pool.private_fds() + (uids.private_fds() if uids else [])
                        _worker(write_fd, job, submissions, counts, assignment, source, template, work,
                                worker_policy, settings.limits, fb, ex, out, released, siblings)
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
                os.close(write_fd)
                ex.close()  # the parent's copy; the examiner's uid is given back when the worker ends
                running[read_fd] = {"pid": pid, "sid": sid, "started": time.monotonic(), "data": bytearray(),
                                    "uid": uid, "work": work, "examiner_uid": ex.uid}
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


def summary(results: list[grade.Result], assignment: str, mode: str, seconds: float, notes=()) -> str:
    graded = [r for r in results if r.status == "graded"]
    failed = [r for r in results if r.status != "graded"]
    lines = [f"\n{assignment}: {len(results)} students, {len(graded)} graded, {len(failed)} failed, "
             f"{seconds:.1f} s; sandbox: {sandbox.describe(mode)}"]
    lines += [f"  {intake.printable(n)}" for n in notes]
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
