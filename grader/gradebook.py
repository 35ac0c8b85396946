"""The gradebook as the store of record: every write a merge, every CSV a view.

nbgrader's gradebook (SQLite by default, PostgreSQL through ``--db-url``) holds what
formgrader shows and a TA edits: students, submissions, one grade per graded cell with an
``auto_score`` (ours), a ``manual_score`` and ``extra_credit`` (a human's), comments. Next to
nbgrader's tables, in the same database, ``attn_grade_row`` keeps what nbgrader has no place
for: the row's status and one-line reason, the file graded, the submission time, late days
and penalty, the per-test outcomes and their messages (what ``attn-grade report`` reads).

:func:`record` merges one grading run in, one student per transaction:

* a graded result updates the ``auto_score`` of the autograded cells only: manual scores,
  extra credit and comments a human entered are never touched, whatever happens;
* a result that could not be graded never removes anything: a student graded before keeps
  that grade, and the row's reason says the newer submission could not be graded and why.

:func:`rows` is the view ``grades.csv`` is written from: every student of the assignment
(graded now, earlier, or by plain nbgrader), with nbgrader's current score, so a TA's work
shows in the next CSV.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from dataclasses import dataclass, field

from . import course

TABLE = "attn_grade_row"


@dataclass
class Row:
    student_id: str
    assignment: str
    score: float | None
    max_score: float
    status: str
    reason: str = ""
    submitted_at: str = ""
    late_days: float = 0.0
    penalty: float = 0.0
    raw_score: float | None = None
    file: str = ""
    tests: list = field(default_factory=list)  # [grade_id, points, max_points, status, message]
    seconds: float = 0.0
    graded_at: str = ""
    lms: dict = field(default_factory=dict)  # layout, label, name, email, lms_id, file as handed in


def _table():
    from sqlalchemy import Column, Float, MetaData, String, Table, Text
    meta = MetaData()
    return Table(TABLE, meta,
                 Column("assignment", String(128), primary_key=True),
                 Column("student_id", String(512), primary_key=True),
                 Column("status", String(16), nullable=False),
                 Column("reason", Text, default=""),
                 Column("submitted_at", String(64), default=""),
                 Column("late_days", Float, default=0.0),
                 Column("penalty", Float, default=0.0),
                 Column("raw_score", Float),
                 Column("max_score", Float, default=0.0),
                 Column("file", Text, default=""),
                 Column("tests", Text, default="[]"),
                 Column("seconds", Float, default=0.0),
                 Column("graded_at", String(64), default=""),
                 Column("lms", Text, default="{}"))  # layout, label, name, email, lms_id, file as handed in


def open_gradebook(db_url: str):
    course.ensure_tools_on_path()
    from nbgrader.api import Gradebook
    gb = Gradebook(db_url, course_id=course.COURSE_ID)
    table = _table()
    table.metadata.create_all(gb.engine)
    _add_missing_columns(gb.engine, table)
    return gb, table


def _add_missing_columns(engine, table) -> None:
    """A gradebook made by an earlier version of attn-grade gets the columns added since."""
    from sqlalchemy import inspect, text
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    with engine.begin() as conn:
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _ledger(gb, table, assignment: str, student_id: str):
    from sqlalchemy import select
    return gb.db.execute(select(table).where(table.c.assignment == assignment,
                                             table.c.student_id == student_id)).mappings().first()


def _upsert(gb, table, values: dict) -> None:
    from sqlalchemy import delete, insert
    gb.db.execute(delete(table).where(table.c.assignment == values["assignment"],
                                      table.c.student_id == values["student_id"]))
    gb.db.execute(insert(table).values(**values))


def _submission(gb, assignment: str, student_id: str):
    from nbgrader.api import MissingEntry
    try:
        return gb.find_submission(assignment, student_id)
    except MissingEntry:
        return None


def _names(info: dict) -> dict:
    """nbgrader's first_name/last_name/email from a full name and an e-mail."""
    out = {}
    full = str(info.get("first_name") or "").strip()
    if full:
        first, _, last = full.rpartition(" ")
        out.update(first_name=first or last, last_name=last if first else "")
    if info.get("email"):
        out["email"] = str(info["email"])
    return out


def record(db_url: str, assignment: str, results, students: dict | None = None, lms: dict | None = None) -> None:
    """Merge a run's results (``grade.Result`` with the run's late fields set) into the
    gradebook. ``students``: id -> {"first_name" (a full name), "email"} from a roster or the
    LMS; ``lms``: id -> what the layout knows of the student (kept for export and hand-back)."""
    from nbgrader.api import MissingEntry

    students = students or {}
    lms = lms or {}
    gb, table = open_gradebook(db_url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbgrader's own SQLAlchemy autoflush warnings
            for r in results:
                try:
                    gb.update_or_create_student(r.student_id, **_names(students.get(r.student_id, {})))
                    earlier = _submission(gb, assignment, r.student_id)
                    if r.status != "graded":
                        if earlier is not None:  # keep the grade that stands; say why it was not replaced
                            old = _ledger(gb, table, assignment, r.student_id)
                            values = dict(old) if old else {
                                "assignment": assignment, "student_id": r.student_id, "status": "graded",
                                "max_score": r.max_score}
                            values.update(status="graded", graded_at=_now(),
                                          reason=f"a newer submission could not be graded ({r.reason}); "
                                                 "the earlier grade stands")
                            _upsert(gb, table, values)
                        else:
                            _upsert(gb, table, _values(assignment, r, "failed", lms.get(r.student_id)))
                        gb.db.commit()
                        continue
                    submission = earlier
                    if submission is None:
                        submission = gb.add_submission(assignment, r.student_id)
                    if r.submitted_at:
                        submission.timestamp = dt.datetime.fromisoformat(r.submitted_at).astimezone(
                            dt.timezone.utc).replace(tzinfo=None)
                    autograded = {t.grade_id: t for t in r.tests}
                    for nb in submission.notebooks:
                        nb.late_submission_penalty = r.penalty or None
                        for grade in nb.grades:
                            t = autograded.get(grade.name)
                            if t is not None:
                                grade.auto_score = t.points
                                grade.needs_manual_grade = False
                            elif grade.manual_score is not None:
                                grade.needs_manual_grade = False
                    _upsert(gb, table, _values(assignment, r, "graded", lms.get(r.student_id)))
                    gb.db.commit()
                except MissingEntry as e:  # the assignment is not in the gradebook: a grader error
                    gb.db.rollback()
                    raise RuntimeError(f"{assignment} is not in the gradebook: {e}") from None
                except Exception:
                    gb.db.rollback()
                    raise
    finally:
        gb.close()


def _values(assignment: str, r, status: str, lms: dict | None = None) -> dict:
    return {"assignment": assignment, "student_id": r.student_id, "status": status,
            "reason": r.reason, "submitted_at": r.submitted_at or "", "late_days": float(r.late_days or 0.0),
            "penalty": float(r.penalty or 0.0), "raw_score": r.raw_score if status == "graded" else None,
            "max_score": float(r.max_score), "file": r.file or "",
            "tests": json.dumps([[t.grade_id, t.points, t.max_points, t.status, t.message] for t in r.tests]),
            "seconds": float(r.seconds or 0.0), "graded_at": _now(), "lms": json.dumps(lms or {})}


def rows(db_url: str, assignment: str) -> list[Row]:
    """Every student of ``assignment`` in the gradebook, with nbgrader's current scores."""
    from sqlalchemy import select

    gb, table = open_gradebook(db_url)
    try:
        try:
            max_score = float(gb.find_assignment(assignment).max_score)
        except Exception:  # noqa: BLE001 - an assignment never registered: nothing graded
            max_score = 0.0
        ledger = {m["student_id"]: dict(m) for m in gb.db.execute(
            select(table).where(table.c.assignment == assignment)).mappings()}
        submissions = {}
        try:
            for s in gb.assignment_submissions(assignment):
                submissions[s.student.id] = s
        except Exception:  # noqa: BLE001
            pass
        out = []
        for sid in sorted(set(ledger) | set(submissions)):
            led = ledger.get(sid, {})
            sub = submissions.get(sid)
            tests = json.loads(led.get("tests") or "[]")
            if sub is not None:
                raw = float(sub.score)
                penalty = float(led.get("penalty") or 0.0)
                out.append(Row(sid, assignment, max(0.0, raw - penalty), float(sub.max_score or max_score), "graded",
                               led.get("reason") or "", led.get("submitted_at") or _iso(sub.timestamp),
                               float(led.get("late_days") or 0.0), penalty, raw, led.get("file") or "", tests,
                               float(led.get("seconds") or 0.0), led.get("graded_at") or "", _json(led.get("lms"))))
            else:
                out.append(Row(sid, assignment, None, float(led.get("max_score") or max_score), "failed",
                               led.get("reason") or "", led.get("submitted_at") or "", 0.0, 0.0, None,
                               led.get("file") or "", tests, float(led.get("seconds") or 0.0),
                               led.get("graded_at") or "", _json(led.get("lms"))))
        return out
    finally:
        gb.close()


def _json(text) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _iso(timestamp) -> str:
    if timestamp is None:
        return ""
    return timestamp.replace(tzinfo=dt.timezone.utc).isoformat(timespec="seconds")
