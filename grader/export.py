"""Handing grades and feedback back to an LMS: ``attn-grade export`` and ``attn-grade feedback --zip``.

Both read the gradebook's view (:func:`grader.gradebook.rows`: every student, the score after
any late penalty, with a TA's manual points included) and what the intake learnt of each
student from the LMS download (name, e-mail, LMS id, the file as handed in).

``export --format``:

``canvas``  Canvas's gradebook import CSV: ``Student,ID,SIS User ID,SIS Login ID,Section`` and one
            column for the assignment (``--column`` names an existing Canvas column, e.g.
            ``"Homework 3 (12345)"``; without it Canvas creates one), a ``Points Possible`` row.
            Canvas matches a row by ``ID`` (its user id, from the download's file names or the
            roster's ``lms_id``) or ``SIS User ID`` (our student id). A row that failed is left blank.
``moodle``  Moodle's offline grading worksheet (``Identifier,Full name,Email address,Status,Grade,
            Maximum Grade,Grade can be changed,Last modified (submission),Feedback comments``);
            Moodle matches ``Identifier`` = ``Participant <id>``.
``csv``     every column of ``grades.csv`` plus name and e-mail.

``feedback --zip`` packs each student's feedback page under the name the LMS expects for a bulk
upload: Moodle's ``<Full name>_<participant>_assignsubmission_file_/`` folders, Canvas's
``<name>_<userid>_<submissionid>_`` prefix of the file handed in; one folder per student id for
the others. A ``README.txt`` in the archive says how to upload it.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import re
import zipfile

from . import gradebook, intake

FORMATS = ("canvas", "moodle", "csv")
_CANVAS = re.compile(r"^(?P<prefix>.+?_(?:LATE_)?\d+_\d+)_.+$", re.S)


def _when(iso: str) -> str:
    from .autograde import _when as when
    return when(iso)


def _score(x) -> str:
    return "" if x is None else f"{x:g}"


def _name(row) -> str:
    return str(row.lms.get("name") or "")


def _write(path: pathlib.Path, text: str) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def export(db_url: str, assignment: str, fmt: str, out: pathlib.Path, column: str | None = None) -> list[str]:
    """Write the LMS import file; return warnings (students the LMS will not be able to match)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = gradebook.rows(db_url, assignment)
    if not rows:
        raise ValueError(f"the gradebook has no grades for {assignment}")
    buf = io.StringIO()
    writer = csv.writer(buf)
    warnings = []
    if fmt == "canvas":
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", column or assignment])
        writer.writerow(["    Points Possible", "", "", "", "", _score(max(r.max_score for r in rows))])
        for r in rows:
            name = _name(r)
            first, _, last = name.rpartition(" ")
            writer.writerow([f"{last}, {first}" if first else name or r.student_id, r.lms.get("lms_id", ""),
                             r.student_id, "", "", _score(r.score)])
            if not r.lms.get("lms_id"):
                warnings.append(f"{r.student_id}: no Canvas user id known (Canvas will match the SIS User ID)")
    elif fmt == "moodle":
        writer.writerow(["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                         "Grade can be changed", "Last modified (submission)", "Feedback comments"])
        for r in rows:
            participant = r.lms.get("lms_id") or ""
            if not participant:
                warnings.append(f"{r.student_id}: no Moodle participant id known (give the roster an lms_id)")
            status = "Submitted for grading - Graded" if r.status == "graded" else "No submission"
            writer.writerow([f"Participant {participant or r.student_id}", _name(r) or r.student_id,
                             r.lms.get("email", ""), status, _score(r.score), _score(r.max_score), "Yes",
                             _when(r.submitted_at), intake.printable(r.reason)])
    else:
        writer.writerow(["student_id", "assignment", "score", "max_score", "status", "reason", "submitted_at",
                         "late_days", "penalty", "raw_score", "name", "email"])
        for r in rows:
            graded = r.status == "graded"
            writer.writerow([r.student_id, assignment, _score(r.score), _score(r.max_score), r.status,
                             " ".join(intake.printable(r.reason).split()), _when(r.submitted_at),
                             _score(r.late_days) if graded else "", _score(r.penalty) if graded else "",
                             _score(r.raw_score), _name(r), r.lms.get("email", "")])
    _write(out, buf.getvalue())
    return warnings


_HOW = {
    "moodle": "Moodle: Assignment > View all submissions > Grading action > Upload multiple feedback files in a "
              "zip. Each folder is named as in Moodle's download, so each page reaches its student.",
    "canvas": "Canvas: Assignment > Re-Upload Submissions, with this zip: each file keeps the prefix of the "
              "student's own download (name_userid_submissionid_), so Canvas attaches it to that student's "
              "submission as a comment.",
    "folders": "One folder per student id, each with the student's feedback page.",
}


def _entry_name(row, assignment: str, layout: str) -> str:
    page = f"{assignment}-feedback.html"
    if layout == "moodle" and row.lms.get("lms_id"):
        return f"{_name(row) or row.student_id}_{row.lms['lms_id']}_assignsubmission_file_/{page}"
    if layout == "canvas":
        m = _CANVAS.match(str(row.lms.get("file") or ""))
        if m:
            return f"{m.group('prefix')}_{page}"
    return f"{row.student_id}/{page}"


def feedback_zip(course_dir: pathlib.Path, db_url: str, assignment: str, out: pathlib.Path,
                 layout: str = "auto") -> tuple[int, list[str]]:
    """Pack ``course_dir/feedback/<student>/<assignment>.html`` for a bulk upload; return the
    number of pages and the students without one."""
    from .autograde import feedback_folder

    rows = gradebook.rows(db_url, assignment)
    if not rows:
        raise ValueError(f"the gradebook has no grades for {assignment}")
    if layout == "auto":
        layouts = {r.lms.get("layout") for r in rows if r.lms.get("layout")}
        layout = layouts.pop() if len(layouts) == 1 else "folders"
    if layout not in ("moodle", "canvas"):
        layout = "folders"
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    missing, count, names = [], 0, set()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for r in rows:
            page = pathlib.Path(course_dir) / "feedback" / feedback_folder(r.student_id) / f"{assignment}.html"
            if not page.is_file():
                missing.append(r.student_id)
                continue
            name = _entry_name(r, assignment, layout)
            if name in names:  # two students may never share an entry
                name = f"{r.student_id}/{assignment}-feedback.html"
            names.add(name)
            z.write(page, name)
            count += 1
        z.writestr("README.txt", f"Feedback pages for {assignment}, one per student ({count}).\n\n{_HOW[layout]}\n")
    os.replace(tmp, out)
    return count, missing
