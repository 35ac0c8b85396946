"""Where submissions really come from: one folder per student, nbgrader's ``submitted/`` tree, or
the bulk downloads of Canvas, Moodle, Blackboard and Gradescope; a roster; which notebook to grade.

Everything here reads the submissions folder the way :mod:`grader.intake` does: directory file
descriptors, ``O_NOFOLLOW``, ``lstat`` only, hard links judged by a census of the whole batch,
printable ids for any name. Nothing a student planted is followed or opened by path; a link or a
special file is reported, never read. One entry's trouble is that entry's one-line reason.

Layouts (``--layout``), and how ``auto`` recognises each from the top level of the folder:

``folders``     one folder per student (folder name = student id), the notebook anywhere inside.
``nbgrader``    ``<student>/<assignment>/...`` with nbgrader's ``timestamp.txt``
                (``2026-11-20 14:03:11.123456 UTC``; no zone = UTC, as nbgrader reads it).
``canvas``      a flat folder of ``<name>_<userid>_<id>_<original>`` files (``<name>_LATE_...`` for
                late ones; a resubmission's original name gets ``-1``, ``-2``).
``moodle``      ``<Full Name>_<participant>_assignsubmission_<plugin>_`` folders (or flat files
                ``..._assignsubmission_file_<original>``).
``blackboard``  a flat folder of ``<Assignment>_<user>_attempt_<YYYY-MM-DD-HH-MM-SS>.txt`` (metadata)
                and ``<Assignment>_<user>_attempt_<ts>_<original>`` files.
``gradescope``  ``submission_metadata.yml`` beside ``submission_<id>/`` folders.

Detection (:func:`detect`), on the non-hidden top-level entries, ``lstat`` only:

1. a regular file ``submission_metadata.yml`` -> gradescope;
2. otherwise count the entries each LMS pattern explains: Blackboard files (either name form),
   Canvas files, Moodle folders or files, nbgrader student folders (a folder holding a folder
   holding a regular ``timestamp.txt``). A layout qualifies when it explains at least one entry
   and at least half of them (for nbgrader: half of the folders);
3. exactly one qualifies -> that layout; none -> folders; several -> folders, with a note naming
   them (choose one with ``--layout``). A note also says when some entries looked like an LMS's
   but too few to be sure.

Student ids. Without a roster: the folder name (folders, nbgrader), Canvas's name part
(``smithjane``; ``smithjane_1001`` when two Canvas users share it), Moodle's participant number,
Blackboard's user name, Gradescope's SID (else e-mail, else name). With ``--roster``: the roster
id of the row whose id, LMS id or e-mail matches what the layout gives (Canvas user id and Moodle
participant against ``lms_id``). Entries are never merged: two entries that map to the same
roster id keep separate rows (the first by match strength keeps the roster id, the other its
own) and are reported in :attr:`Intake.duplicates`.

Times. Each candidate notebook carries an aware UTC time and its source: ``"lms"`` (Blackboard's
attempt time, Gradescope's ``created_at``), ``"timestamp.txt"`` (nbgrader) or ``"mtime"`` (the
file's modification time: folders, Canvas, Moodle; for a download that is whatever time the LMS
wrote into its zip, which ``unzip`` keeps, so unpack with a tool that keeps times). Blackboard's
names carry no zone: its metadata's zone is used when it is a known one (see
:data:`deadlines.ABBREVIATIONS`), else ``lms_timezone`` (default: this machine's local zone, noted).
Canvas's ``LATE`` flag is kept as information (:attr:`Candidate.late`, a note), never as the time.

Sequence for one batch::

    roster = layouts.read_roster(args.roster) if args.roster else None
    batch = layouts.collect(submissions, args.layout, roster=roster, assignment=assignment)
    for note in batch.notes + batch.duplicates: print(note)            # detection, unreadable metadata
    for entry in batch.entries:                                       # one row each, sorted by id
        choice = entry.choose(assignment)                             # problem / no notebook / the newest
        if not choice.ok: fail(entry.student_id, choice.reason); continue
        try:
            nb = notebooks.parse_submission(batch.read(choice.candidate), choice.candidate.parts[-1])
        except notebooks.SubmissionError as e: fail(entry.student_id, str(e)); continue
        which = layouts.identify(nb, released)                        # released = released_notebooks()
        if which and which != assignment: fail(entry.student_id, f"this is {which}, not {assignment}"); continue
        ...grade; reason starts with choice.reason; choice.submitted_at -> deadlines...
    for student in batch.missing: fail(student.id, "no submission")
    batch.unknown                                                    # ids graded but not on the roster
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo

from . import deadlines, intake
from . import notebooks as nbs

LAYOUTS = ("auto", "folders", "nbgrader", "canvas", "moodle", "blackboard", "gradescope")
LMS, TIMESTAMP_TXT, MTIME = "lms", "timestamp.txt", "mtime"
TIMESTAMP_BYTES = 4096  # nbgrader's timestamp.txt is one line
BLACKBOARD_TXT_BYTES = 1 << 20
GRADESCOPE_YAML_BYTES = 16 << 20
MAX_SUBMITTERS = 64  # per Gradescope submission
MAX_SUBMISSIONS = 100_000  # Gradescope metadata entries read
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_CANVAS = re.compile(r"^(?P<name>.+?)_(?:(?P<late>LATE)_)?(?P<uid>\d+)_(?P<sub>\d+)_(?P<orig>.+)$", re.S)
_MOODLE_DIR = re.compile(r"^(?P<name>.*)_(?P<pid>\d+)_assignsubmission_(?P<plugin>[a-z]+)_?$", re.S)
_MOODLE_FILE = re.compile(r"^(?P<name>.*)_(?P<pid>\d+)_assignsubmission_(?P<plugin>[a-z]+)_(?P<orig>.+)$", re.S)
_BB_STAMP = r"_attempt_(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})"
_BB_META = re.compile(r"^(?P<prefix>.+)" + _BB_STAMP + r"\.txt$", re.S)
_BB_FILE = re.compile(r"^(?P<prefix>.+)" + _BB_STAMP + r"_(?P<orig>.+)$", re.S)
_GS_ENTRY = re.compile(r"^submission_(?P<id>\d+)(?P<ext>\.[^/]+)?$", re.S)
_GS_METADATA = "submission_metadata.yml"
_RESUBMISSION = re.compile(r"-(\d+)$")  # Canvas: "03_attention-1.ipynb"


# ================================================================ roster ====

@dataclass(frozen=True)
class Student:
    """One roster row."""
    id: str
    name: str = ""
    email: str = ""
    lms_id: str = ""


def _norm_header(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name.strip().lstrip("\ufeff").lower()).split())


_ID_HEADERS = ("id", "student id", "studentid", "sis user id", "sis id", "student number", "id number",
               "sid", "username", "user name", "sis login id", "login id", "login")
_LMS_HEADERS = ("lms id", "lms user id", "canvas id", "canvas user id", "moodle id", "participant id",
                "participant", "identifier", "gradescope id", "user id")
_NAME_HEADERS = ("name", "student name", "full name", "fullname", "student", "display name")
_FIRST_HEADERS = ("first name", "firstname", "given name")
_LAST_HEADERS = ("last name", "lastname", "surname", "family name")
_EMAIL_HEADERS = ("email", "email address", "e mail", "e mail address", "mail", "sis email")


@dataclass
class Roster:
    """The class list: ``students`` in file order, lookups by id, LMS id and e-mail."""
    students: list[Student]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._by_id = {s.id: s for s in self.students}
        self._by_folded = {}
        for s in self.students:
            self._by_folded.setdefault(s.id.casefold(), []).append(s)
        self._by_lms = {s.lms_id: s for s in reversed(self.students) if s.lms_id}
        self._by_email = {s.email.casefold(): s for s in reversed(self.students) if s.email}

    def __contains__(self, student_id: str) -> bool:
        return student_id in self._by_id

    def get(self, student_id: str) -> Student | None:
        return self._by_id.get(student_id)

    def find(self, kind: str, value: str) -> Student | None:
        """The row whose ``kind`` (``"id"``, ``"lms_id"`` or ``"email"``) is ``value``; ids match
        exactly, else case-insensitively when only one row fits; e-mails case-insensitively."""
        if not value:
            return None
        if kind == "id":
            if value in self._by_id:
                return self._by_id[value]
            folded = self._by_folded.get(value.casefold(), [])
            return folded[0] if len(folded) == 1 else None
        if kind == "lms_id":
            return self._by_lms.get(value)
        if kind == "email":
            return self._by_email.get(value.casefold())
        raise ValueError(f"unknown roster key {kind!r}")


def parse_roster(text: str, name: str = "roster") -> Roster:
    """A :class:`Roster` from CSV text. Columns are found by header, in any order and case:
    id (``id``, ``Student ID``, ``SIS User ID``, ``username``, ...), name (``name``, ``Student``,
    or ``First name`` + ``Last name``), e-mail (``email``, ``Email Address``, ...), LMS id
    (``lms_id``, ``Canvas User ID``, ``Participant ID``, Moodle's ``Identifier`` "Participant
    1001", ...). In a Canvas gradebook export (``ID`` beside ``SIS User ID``) ``ID`` is the LMS id.
    Rows without an id are skipped (Canvas's "Points Possible" row), later duplicates ignored;
    notes say so. ``ValueError`` when no id column is found."""
    rows = [r for r in csv.reader(text.lstrip("\ufeff").splitlines()) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{name}: the roster is empty")
    headers: dict[str, int] = {}
    for i, h in enumerate(rows[0]):
        headers.setdefault(_norm_header(h), i)

    def col(options):
        return next((headers[o] for o in options if o in headers), None)

    lms = col(_LMS_HEADERS)
    id_options = _ID_HEADERS
    if "id" in headers and lms is None and ("sis user id" in headers or "sis login id" in headers):
        lms, id_options = headers["id"], tuple(h for h in _ID_HEADERS if h != "id")  # Canvas export
    sid = col(id_options)
    if sid is None:
        raise ValueError(f"{name}: no student id column (expected one of: id, Student ID, SIS User ID, "
                         f"username); found: {', '.join(rows[0])}")
    full, first, last, email = col(_NAME_HEADERS), col(_FIRST_HEADERS), col(_LAST_HEADERS), col(_EMAIL_HEADERS)
    lms_is_identifier = lms is not None and _norm_header(rows[0][lms]) == "identifier"
    students, notes, seen, skipped = [], [], set(), 0
    for line, row in enumerate(rows[1:], start=2):
        def get(c):
            return row[c].strip() if c is not None and c < len(row) else ""
        student_id = intake.printable(get(sid))
        if not student_id:
            skipped += 1
            continue
        if student_id in seen:
            notes.append(f"{name}, row {line}: {student_id} is listed again (ignored)")
            continue
        seen.add(student_id)
        person = get(full) or " ".join(p for p in (get(first), get(last)) if p)
        lms_id = get(lms)
        if lms_is_identifier:
            lms_id = re.sub(r"^\D+", "", lms_id)  # Moodle: "Participant 1001"
        students.append(Student(student_id, intake.printable(person), intake.printable(get(email)),
                                intake.printable(lms_id)))
    if skipped:
        notes.append(f"{name}: {skipped} row(s) without a student id skipped")
    return Roster(students, notes)


def read_roster(path) -> Roster:
    """:func:`parse_roster` of the instructor's CSV file (UTF-8, with or without a BOM)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return parse_roster(f.read(), name=pathlib.Path(path).name)


# ================================================================ results ===

@dataclass(frozen=True)
class Candidate:
    """A notebook a student handed in (or a link/special file posing as one)."""
    parts: tuple[str, ...]  # raw names relative to the submissions root, for Intake.read
    name: str  # printable, as the student named it (LMS prefix removed), for reasons
    submitted_at: datetime  # aware, UTC
    source: str  # "lms", "timestamp.txt" or "mtime"
    late: bool | None = None  # the LMS's own late flag (Canvas LATE), None when it gives none
    sequence: int = 0  # breaks ties between equal times: Canvas's -N, Blackboard's attempt order
    problem: str = ""  # "a symbolic link (not followed)", "a FIFO", ...: never read

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Choice:
    """The notebook to grade, or why there is none. ``reason`` is one line either way:
    ``"graded Copy of 03_attention (1).ipynb, submitted 2026-11-20 14:03 UTC"`` or the failure."""
    candidate: Candidate | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.candidate is not None

    @property
    def parts(self) -> tuple[str, ...] | None:
        return self.candidate.parts if self.candidate else None

    @property
    def submitted_at(self) -> datetime | None:
        return self.candidate.submitted_at if self.candidate else None


@dataclass
class Entry:
    """One student of the batch: one row of ``grades.csv``."""
    student_id: str  # printable; the roster id when the roster knows the student
    label: str  # how the layout names the entry (folder name, "smithjane (Canvas user 1001)"), printable
    name: str = ""
    email: str = ""
    lms_id: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # printable names of the non-notebook files
    problem: str = ""  # the entry cannot be graded at all (a link, not a folder)
    empty_reason: str = ""  # why there are no candidates, when the layout knows better than "empty"
    notes: list[str] = field(default_factory=list)  # for the row's reason (LATE flag, older attempts)
    on_roster: bool | None = None  # None without a roster

    def choose(self, assignment: str) -> Choice:
        if self.problem:
            return Choice(None, self.problem)
        return choose(self.candidates, assignment, others=self.others, empty_reason=self.empty_reason)


@dataclass
class Intake:
    """A whole batch: the layout used, one entry per student and what the caller must report."""
    layout: str
    root: pathlib.Path
    entries: list[Entry]
    census: intake.Census
    notes: list[str] = field(default_factory=list)  # detection, unreadable metadata, stray files
    missing: list[Student] = field(default_factory=list)  # on the roster, no entry: "no submission"
    unknown: list[str] = field(default_factory=list)  # entry ids not on the roster (still graded)
    duplicates: list[str] = field(default_factory=list)  # entries that map to the same roster id

    def read(self, candidate: Candidate, max_bytes: int = intake.MAX_BYTES) -> bytes:
        """The candidate's bytes, read as :func:`intake.read_submission_bytes` reads (no link
        followed, hard links by the census); ``notebooks.SubmissionError`` with a one-line reason."""
        if candidate.problem:
            raise nbs.SubmissionError(f"{candidate.name} is {candidate.problem}: not graded")
        return intake.read_submission_bytes(self.root, candidate.parts, self.census, max_bytes)


# ========================================================== choosing one ====

def _loose(stem: str) -> str:
    """The stem with every copy mangling removed: ``Copy of X``, ``X (1)``, ``X-Copy1``, ``X copy``
    (intake's rules) and Canvas's resubmission suffix ``X-1``."""
    name = stem
    while True:
        new = _RESUBMISSION.sub("", intake._normalised(name)).strip()
        if new == name:
            return name
        name = new


def matches(filename: str, assignment: str) -> int:
    """2 when ``filename`` is ``<assignment>.ipynb`` (any case), 1 when it is a copy-mangled form
    of it, 0 otherwise."""
    if not filename.lower().endswith(".ipynb"):
        return 0
    stem = filename[: -len(".ipynb")]
    if stem.strip().lower() == assignment.lower():
        return 2
    return 1 if _loose(stem.lower()) == assignment.lower() else 0


def _say_time(c: Candidate) -> str:
    when = deadlines.short_time(c.submitted_at)
    return f"file time {when}" if c.source == MTIME else f"submitted {when}"


def choose(candidates, assignment: str, *, others=(), empty_reason: str = "") -> Choice:
    """The notebook to grade among ``candidates``: the newest (by ``submitted_at``) of those named
    like the assignment, exactly or copy-mangled alike (``Copy of X``, ``X (1)``, ``X-Copy1``,
    Canvas ``X-1``); else the only notebook when there is just one. Ties go to the higher
    ``sequence``, then the exact name. A chosen link or special file is the reason, never read."""
    candidates = list(candidates)
    if not candidates:
        if empty_reason:
            return Choice(None, empty_reason)
        shown = ", ".join(sorted(others)[:5])
        return Choice(None, "no notebook in the submission" + (f" (found: {shown})" if shown else " (it is empty)"))
    named = [c for c in candidates if matches(c.filename, assignment)]
    pool = named or (candidates if len(candidates) == 1 else [])
    if not pool:
        names = ", ".join(sorted({c.name for c in candidates})[:5])
        return Choice(None, f"no notebook named like {assignment}.ipynb among {names}")
    best = max(pool, key=lambda c: (c.submitted_at, c.sequence, matches(c.filename, assignment), c.parts))
    if best.problem:
        return Choice(None, f"{best.name} is {best.problem}: not graded")
    newest = f" (newest of {len(pool)})" if len(pool) > 1 else ""
    late = " (marked LATE by the LMS)" if best.late else ""
    return Choice(best, f"graded {best.name}{newest}, {_say_time(best)}{late}")


# ============================================================= identify ====

def released_notebooks(folder: pathlib.Path | None = None) -> dict:
    """Assignment name -> released student notebook: by default those shipped with the grader
    (``grader/released``, a link to ``notebooks/`` in a checkout, copies in an installed wheel)."""
    import nbformat

    from . import course
    if folder is None:
        shipped = pathlib.Path(__file__).resolve().parent / "released"
        folder = shipped if shipped.is_dir() else course.NOTEBOOKS
    folder = pathlib.Path(folder)
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted(folder.glob("*.ipynb"))}


def _cells(nb):
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def _source(cell) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _keys(nb) -> set[str]:
    keys = set()
    for cell in _cells(nb):
        meta = cell.get("metadata")
        grading = meta.get("nbgrader") if isinstance(meta, dict) else None
        gid = grading.get("grade_id") if isinstance(grading, dict) else None
        if isinstance(gid, str) and gid:
            keys.add("g:" + gid)
        cid = cell.get("id")
        if isinstance(cid, str) and cid:
            keys.add("i:" + cid)
    return keys


def _lines(nb) -> set[str]:
    lines = set()
    for cell in _cells(nb):
        for line in _source(cell).split("\n"):
            line = " ".join(line.split())
            if len(line) >= 24:
                lines.add(line)
    return lines


def _best(found: set, owned: dict[str, set]) -> tuple[str | None, int]:
    scores = sorted(((len(found & keys), name) for name, keys in owned.items()), reverse=True)
    if not scores or scores[0][0] == 0:
        return None, 0
    if len(scores) > 1 and scores[1][0] == scores[0][0]:
        return None, scores[0][0]
    return scores[0][1], scores[0][0]


def _distinct(per: dict[str, set]) -> dict[str, set]:
    counts: dict[str, int] = {}
    for keys in per.values():
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
    return {name: {k for k in keys if counts[k] == 1} for name, keys in per.items()}


def identify(nb, released: dict) -> str | None:
    """Which released assignment ``nb`` is: the one with the most of its own cells' nbgrader
    ``grade_id``s and cell ids (those no other assignment has) in ``nb``; when no id tells (a
    copy whose metadata was stripped), the one with the most of its own source lines (24+
    characters, whitespace collapsed). ``None`` when nothing tells or two assignments tie."""
    if not released:
        return None
    name, _ = _best(_keys(nb), _distinct({a: _keys(r) for a, r in released.items()}))
    if name is not None:
        return name
    name, score = _best(_lines(nb), _distinct({a: _lines(r) for a, r in released.items()}))
    return name if score >= 2 else None


# ============================================================ the folder ====

class _Refused(Exception):
    """An entry that cannot be opened as a folder; the message is the reason's kind words."""


def _mtime(st: os.stat_result) -> datetime:
    try:
        return datetime.fromtimestamp(st.st_mtime, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return _EPOCH


def _problem_of(st: os.stat_result) -> str:
    """"" for a regular file, else what it is, in words for a reason."""
    if stat.S_ISREG(st.st_mode):
        return ""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link (not followed)"
    return intake._kind(st.st_mode)


class _Root:
    """The submissions folder opened once (the instructor's path); everything below it is opened
    relative to a descriptor, one level at a time, with ``O_NOFOLLOW`` and an inode check."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self):
        os.close(self.fd)

    def top(self) -> list[tuple[str, os.stat_result]]:
        """The non-hidden top-level entries, sorted, with their ``lstat``."""
        with os.scandir(self.fd) as it:
            names = [e.name for e in it if not intake._skipped(e.name)]
        out = []
        for name in sorted(names):
            try:
                out.append((name, os.stat(name, dir_fd=self.fd, follow_symlinks=False)))
            except OSError:
                continue
        return out

    def open_dir(self, parts) -> int:
        """A descriptor for the folder ``parts`` below the root; ``_Refused`` with what was in the way."""
        cur, opened = self.fd, []
        try:
            for part in parts:
                try:
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                except OSError as e:
                    raise _Refused(f"unreadable ({e.strerror or e})") from None
                if not stat.S_ISDIR(st.st_mode):
                    raise _Refused(_problem_of(st) or "a file")
                try:
                    fd = os.open(part, intake._DIR_FLAGS, dir_fd=cur)
                except OSError as e:
                    raise _Refused(f"unreadable ({e.strerror or e})") from None
                opened.append(fd)
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise _Refused("changed while it was being read")
                cur = fd
            return opened.pop() if opened else os.dup(self.fd)
        finally:
            for fd in opened:
                os.close(fd)

    def lstat(self, parts) -> os.stat_result | None:
        try:
            fd = self.open_dir(parts[:-1])
        except _Refused:
            return None
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    def walk(self, parts) -> tuple[list[tuple[tuple, os.stat_result]], str]:
        """Every entry below the folder ``parts`` (``lstat``, hidden and checkpoint folders skipped,
        intake's depth and entry limits) and a note when a limit cut the walk."""
        fd = self.open_dir(parts)
        walk = intake._Walk()
        try:
            found = list(walk.run(fd, tuple(parts)))
        finally:
            os.close(fd)
        note = ""
        if walk.too_deep:
            note = f"folders more than {walk.max_depth} levels deep not searched"
        if walk.too_many:
            note = f"more than {walk.max_entries:,} entries, the rest not searched"
        return found, note

    def census(self, top) -> intake.Census:
        """Links to every regular file of the batch: top-level files and everything inside the
        top-level folders (hidden ones inside included, per-folder limits as intake's census)."""
        result = intake.Census()
        for name, st in top:
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                result.counts[key] = result.counts.get(key, 0) + 1
            elif stat.S_ISDIR(st.st_mode):
                try:
                    fd = self.open_dir((name,))
                except _Refused:
                    continue
                walk = intake._Walk(skip_hidden=False)
                try:
                    for _, sub in walk.run(fd, (name,)):
                        if stat.S_ISREG(sub.st_mode):
                            key = (sub.st_dev, sub.st_ino)
                            result.counts[key] = result.counts.get(key, 0) + 1
                finally:
                    os.close(fd)
                if walk.too_deep or walk.too_many:
                    result.notes.append(f"{intake.printable(name)}: counted only in part (too deep or too many entries)")
        return result

    def read(self, parts, census, max_bytes) -> tuple[bytes | None, str]:
        """A small metadata file's bytes, or ``None`` and why (link, FIFO, too large, ...)."""
        try:
            return intake.read_submission_bytes(self.path, parts, census, max_bytes), ""
        except nbs.SubmissionError as e:
            return None, str(e)


# -------------------------------------------------------------- helpers ----

@dataclass
class _Found:
    """An entry before the roster gives it its id."""
    label: str
    fallback_id: str
    keys: list[tuple[str, str]] = field(default_factory=list)  # roster lookups, strongest first
    name: str = ""
    email: str = ""
    lms_id: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    problem: str = ""
    empty_reason: str = ""
    notes: list[str] = field(default_factory=list)


def _is_notebook(name: str) -> bool:
    return name.lower().endswith(".ipynb")


def _gather(root: _Root, found: _Found, parts, when=None, source=MTIME, display_from: int = 1) -> None:
    """Add the notebooks below folder ``parts`` to ``found`` (``when``/``source`` for their time,
    else each file's mtime); other files go to ``others``."""
    try:
        items, note = root.walk(parts)
    except _Refused as e:
        found.notes.append(f"{intake.display(parts[display_from:] or parts)} is {e} (not searched)")
        return
    for sub, st in items:
        if stat.S_ISDIR(st.st_mode):
            continue
        shown = intake.display(sub[display_from:])
        if _is_notebook(sub[-1]):
            at, src = (when, source) if when is not None else (_mtime(st), MTIME)
            found.candidates.append(Candidate(tuple(sub), shown, at, src, problem=_problem_of(st)))
        else:
            found.others.append(shown)
    if note:
        found.empty_reason = found.empty_reason or f"no notebook found ({note})"
        found.notes.append(note)


def _flat_candidate(name: str, st, original: str, when=None, source=MTIME, late=None, sequence=0) -> Candidate:
    at, src = (when, source) if when is not None else (_mtime(st), MTIME)
    return Candidate((name,), intake.printable(original), at, src, late, sequence, _problem_of(st))


def _clean_name(text: str) -> str:
    return intake.printable(unicodedata.normalize("NFC", text.strip()))


# ============================================================== detection ===

def _nbgrader_like(root: _Root, name: str) -> bool:
    try:
        fd = root.open_dir((name,))
    except _Refused:
        return False
    try:
        with os.scandir(fd) as it:
            subs = [e.name for e in it if not intake._skipped(e.name)][:200]
        for sub in subs:
            try:
                if not stat.S_ISDIR(os.stat(sub, dir_fd=fd, follow_symlinks=False).st_mode):
                    continue
                inner = os.open(sub, intake._DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.stat("timestamp.txt", dir_fd=inner, follow_symlinks=False).st_mode):
                    return True
            except OSError:
                pass
            finally:
                os.close(inner)
    finally:
        os.close(fd)
    return False


_LMS_NAMES = {"canvas": "Canvas", "moodle": "Moodle", "blackboard": "Blackboard"}


def _detect(root: _Root, top) -> tuple[str, str]:
    if any(n == _GS_METADATA and stat.S_ISREG(st.st_mode) for n, st in top):
        return "gradescope", f"layout gradescope: {_GS_METADATA} found"
    if not top:
        return "folders", "layout folders: the folder is empty"
    files = [n for n, st in top if not stat.S_ISDIR(st.st_mode)]
    dirs = [n for n, st in top if stat.S_ISDIR(st.st_mode)]
    counts = {
        "blackboard": sum(bool(_BB_META.match(n) or _BB_FILE.match(n)) for n in files),
        "canvas": sum(bool(_CANVAS.match(n)) and not _BB_FILE.match(n) and not _MOODLE_FILE.match(n) for n in files),
        "moodle": sum(bool(_MOODLE_DIR.match(n)) for n in dirs) + sum(bool(_MOODLE_FILE.match(n)) for n in files),
        "nbgrader": sum(_nbgrader_like(root, n) for n in dirs[:2000]),
    }
    totals = {"blackboard": len(top), "canvas": len(top), "moodle": len(top), "nbgrader": max(len(dirs), 1)}
    qualified = [k for k, n in counts.items() if n and 2 * n >= totals[k]]
    if len(qualified) == 1:
        k = qualified[0]
        if k == "nbgrader":
            return k, f"layout nbgrader: {counts[k]} of {len(dirs)} folders hold <assignment>/timestamp.txt"
        return k, f"layout {k}: {counts[k]} of {len(top)} entries are named as {_LMS_NAMES[k]} names downloads"
    if len(qualified) > 1:
        return "folders", ("layout folders: ambiguous, the entries look like " + " and ".join(qualified)
                           + "; choose one with --layout")
    partial = [f"{n} like {k}" for k, n in counts.items() if n]
    if partial:
        return "folders", (f"layout folders: some entries look like an LMS download ({', '.join(partial)} of "
                           f"{len(top)}), too few to be sure; choose one with --layout")
    return "folders", "layout folders"


def detect(submissions) -> tuple[str, str]:
    """``(layout, note)`` for the folder, by the rules in the module docstring."""
    root = _Root(submissions)
    try:
        return _detect(root, root.top())
    finally:
        root.close()


# ================================================================ readers ====

def _read_folders(root: _Root, top, ctx) -> list[_Found]:
    found = []
    for folder in intake.scan(root.path):
        f = _Found(folder.student_id, folder.student_id, [("id", folder.student_id), ("lms_id", folder.student_id),
                                                        ("email", folder.student_id)])
        if folder.problem:
            f.problem = folder.problem
        else:
            _gather(root, f, (folder.name,))
        found.append(f)
    stray = [intake.printable(n) for n, st in top if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)]
    if stray:
        ctx.notes.append(f"{len(stray)} file(s) at the top level are not student folders and were left out: "
                         + ", ".join(stray[:5]))
    return found


def _read_nbgrader(root: _Root, top, ctx) -> list[_Found]:
    found = []
    for folder in intake.scan(root.path):
        f = _Found(folder.student_id, folder.student_id, [("id", folder.student_id), ("lms_id", folder.student_id),
                                                        ("email", folder.student_id)])
        found.append(f)
        if folder.problem:
            f.problem = folder.problem
            continue
        try:
            fd = root.open_dir((folder.name,))
        except _Refused as e:
            f.problem = f"the student folder is {e}: not graded"
            continue
        try:
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it if not intake._skipped(e.name))
            subs = []
            for n in names:
                try:
                    subs.append((n, os.stat(n, dir_fd=fd, follow_symlinks=False)))
                except OSError:
                    pass
        finally:
            os.close(fd)
        assignments = [(n, st) for n, st in subs if stat.S_ISDIR(st.st_mode)]
        loose = [intake.printable(n) for n, st in subs if not stat.S_ISDIR(st.st_mode)]
        if ctx.assignment is not None:
            wanted = [(n, st) for n, st in subs if n == ctx.assignment]
            if not wanted:
                have = ", ".join(intake.printable(n) for n, _ in assignments[:5]) or "none"
                f.empty_reason = f"no {ctx.assignment} folder in the student's nbgrader folder (found: {have})"
                continue
            n, st = wanted[0]
            if not stat.S_ISDIR(st.st_mode):
                f.problem = f"{intake.printable(n)} is {_problem_of(st) or 'a file'}, not a folder: not graded"
                continue
            assignments = wanted
        elif loose:
            f.others.extend(loose)
        for n, _ in assignments:
            parts = (folder.name, n)
            when, why = _nbgrader_time(root, parts + ("timestamp.txt",), ctx)
            if why:
                f.notes.append(why)
            _gather(root, f, parts, when, TIMESTAMP_TXT, display_from=1 if ctx.assignment is None else 2)
    return found


def _nbgrader_time(root: _Root, parts, ctx) -> tuple[datetime | None, str]:
    st = root.lstat(parts)
    where = intake.display(parts[1:])
    if st is None:
        return None, f"no {where}: file times used"
    raw, why = root.read(parts, ctx.census, TIMESTAMP_BYTES)
    if raw is None:
        return None, f"{why}; file times used"
    text = raw.decode("utf-8", "replace").strip().splitlines()
    try:
        at, _ = deadlines.parse_time(text[0] if text else "", default_zone=timezone.utc, what=where)
        return at, ""
    except ValueError:
        shown = intake.printable((text[0] if text else "")[:60])
        return None, f"{where} does not hold a time ({shown!r}): file times used"


def _read_canvas(root: _Root, top, ctx) -> list[_Found]:
    users: dict[str, dict] = {}
    for name, st in top:
        m = _CANVAS.match(name)
        if not m or _BB_FILE.match(name):
            ctx.notes.append(f"{intake.printable(name)} is not named like a Canvas submission: left out")
            continue
        user = users.setdefault(m["uid"], {"names": [], "files": []})
        user["names"].append(m["name"])
        user["files"].append((name, st, m))
    by_name: dict[str, set] = {}
    for uid, user in users.items():
        by_name.setdefault(min(user["names"]), set()).add(uid)
    found = []
    for uid, user in sorted(users.items()):
        part = min(user["names"])
        ident = intake.printable(part) if len(by_name[part]) == 1 else intake.printable(f"{part}_{uid}")
        f = _Found(f"{intake.printable(part)} (Canvas user {uid})", ident, [("lms_id", uid), ("id", ident)],
                   lms_id=uid)
        if len(by_name[part]) > 1:
            f.notes.append(f"Canvas name {intake.printable(part)} is shared by users "
                           + ", ".join(sorted(by_name[part])) + ": id includes the user id")
        late = False
        for name, st, m in user["files"]:
            orig = m["orig"]
            if not _is_notebook(orig):
                f.others.append(intake.printable(orig))
                continue
            stem = orig[: -len(".ipynb")]
            seq = _RESUBMISSION.search(stem)
            f.candidates.append(_flat_candidate(name, st, orig, late=bool(m["late"]),
                                                sequence=int(seq[1]) if seq else 0))
            late = late or bool(m["late"])
        if late:
            f.notes.append("Canvas marked the submission LATE")
        found.append(f)
    return found


def _read_moodle(root: _Root, top, ctx) -> list[_Found]:
    people: dict[str, _Found] = {}
    bad: dict[str, list[str]] = {}
    for name, st in top:
        folder = _MOODLE_DIR.match(name)  # "Jane Smith_1001_assignsubmission_file_" (a folder)
        m = folder or _MOODLE_FILE.match(name)  # "..._assignsubmission_file_03_attention.ipynb" (flat)
        if not m:
            ctx.notes.append(f"{intake.printable(name)} is not named like a Moodle submission: left out")
            continue
        pid = m["pid"]
        person = _clean_name(m["name"])
        f = people.get(pid)
        if f is None:
            f = people[pid] = _Found(f"{person} (Moodle participant {pid})", pid, [("lms_id", pid), ("id", pid)],
                                     name=person, lms_id=pid)
        if folder is None:
            orig = m["orig"]
            if _is_notebook(orig):
                f.candidates.append(_flat_candidate(name, st, orig))
            else:
                f.others.append(intake.printable(orig))
        elif stat.S_ISDIR(st.st_mode):
            _gather(root, f, (name,))
        else:
            bad.setdefault(pid, []).append(f"{intake.printable(name)} is {_problem_of(st) or 'a file'}")
    for pid, words in bad.items():
        f = people[pid]
        if f.candidates:
            f.notes.extend(w + " (ignored)" for w in words)
        else:
            f.problem = f"{words[0]}, not a folder: not graded"
    return list(people.values())


_MONTHS = {m: i + 1 for i, m in enumerate(("january", "february", "march", "april", "may", "june", "july",
                                          "august", "september", "october", "november", "december"))}
_BB_DATE = [
    re.compile(r"(?P<month>[A-Za-z]+)\s+(?P<day>\d{1,2}),?\s+(?P<year>\d{4})\s+(?P<h>\d{1,2}):(?P<m>\d{2})"
               r"(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?\s*(?:o'clock\s*)?(?P<zone>\S+)?\s*$"),
    re.compile(r"(?P<day>\d{1,2})\s+(?P<month>[A-Za-z]+),?\s+(?P<year>\d{4})\s+(?P<h>\d{1,2}):(?P<m>\d{2})"
               r"(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?\s*(?:o'clock\s*)?(?P<zone>\S+)?\s*$"),
]


def _blackboard_date(text: str) -> datetime | None:
    """"Friday, November 20, 2026 2:03:11 PM CET" (or day-first) with a known zone, else None."""
    for pattern in _BB_DATE:
        m = pattern.search(text)
        if not m or not m["zone"]:
            continue
        month = next((v for k, v in _MONTHS.items() if k.startswith(m["month"].lower()[:3])), None)
        if month is None:
            continue
        hour = int(m["h"])
        if m["ampm"]:
            pm = m["ampm"][0].lower() == "p"
            hour = hour % 12 + (12 if pm else 0)
        try:
            zone = deadlines.zone_from_text(m["zone"])
            wall = datetime(int(m["year"]), month, int(m["day"]), hour, int(m["m"]), int(m["s"] or 0))
        except ValueError:
            continue
        return wall.replace(tzinfo=zone).astimezone(timezone.utc)
    return None


def _blackboard_meta(raw: bytes) -> dict:
    meta = {"files": {}}
    original = None
    for line in raw.decode("utf-8-sig", "replace").splitlines():
        key, _, value = line.strip().partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "name":
            m = re.match(r"^(?P<name>.*?)\s*\((?P<user>[^()]*)\)\s*$", value)
            meta["name"], meta["user"] = (m["name"], m["user"]) if m else (value, "")
        elif key == "date submitted":
            meta["date"] = value
        elif key == "original filename":
            original = value
        elif key == "filename" and original is not None:
            meta["files"][value] = original
            original = None
    return meta


def _read_blackboard(root: _Root, top, ctx) -> list[_Found]:
    metas: dict[tuple[str, str], dict] = {}
    files: list[tuple[str, os.stat_result, re.Match]] = []
    for name, st in top:
        m = _BB_META.match(name)
        if m:
            raw, why = root.read((name,), ctx.census, BLACKBOARD_TXT_BYTES)
            if raw is None:
                ctx.notes.append(f"{why} (its attempt is read from the file names)")
            metas[(m["prefix"], m["ts"])] = _blackboard_meta(raw) if raw is not None else {"files": {}}
            continue
        m = _BB_FILE.match(name)
        if not m:
            ctx.notes.append(f"{intake.printable(name)} is not named like a Blackboard submission: left out")
            continue
        files.append((name, st, m))

    def user_of(prefix: str, meta: dict | None) -> str:
        """The user name: the metadata's "(jsmith)" when the prefix ends with it (user names with
        underscores), else the last ``_`` part of ``<Assignment>_<user>``."""
        user = (meta or {}).get("user", "")
        if user and prefix.endswith("_" + user):
            return user
        return prefix.rsplit("_", 1)[-1]

    # user -> attempt time stamp -> {"meta": the attempt's metadata or None, "files": [...]}
    users: dict[str, dict[str, dict]] = {}
    for (prefix, ts), meta in metas.items():
        users.setdefault(user_of(prefix, meta), {}).setdefault(ts, {"meta": None, "files": []})["meta"] = meta
    for name, st, m in files:
        meta = metas.get((m["prefix"], m["ts"]))
        attempt = users.setdefault(user_of(m["prefix"], meta), {}).setdefault(m["ts"], {"meta": meta, "files": []})
        attempt["files"].append((name, st, m))
    zone_used = False
    found = []
    for user, attempts in sorted(users.items()):
        ident = intake.printable(user)
        person = next((_clean_name(a["meta"]["name"]) for a in attempts.values()
                       if a["meta"] and a["meta"].get("name")), "")
        f = _Found(f"{ident} (Blackboard)", ident, [("id", ident), ("lms_id", ident), ("email", ident)], name=person)
        found.append(f)
        stamps = sorted(attempts)  # YYYY-MM-DD-HH-MM-SS sorts in time order
        with_notebooks = [ts for ts in stamps if any(_is_notebook(m["orig"]) for _, _, m in attempts[ts]["files"])]
        chosen = (with_notebooks or stamps)[-1]
        if len(stamps) > 1:
            f.notes.append(f"{len(stamps)} Blackboard attempts: the newest with a notebook "
                           f"({_bb_words(chosen)}) is graded")
        attempt = attempts[chosen]
        meta = attempt["meta"] or {"files": {}}
        when = _blackboard_date(meta.get("date", ""))
        if when is None:
            wall = datetime.strptime(chosen, "%Y-%m-%d-%H-%M-%S")
            when = deadlines.localize(wall, ctx.lms_timezone).astimezone(timezone.utc)
            zone_used = True
        for name, st, m in attempt["files"]:
            orig = meta["files"].get(name, m["orig"])
            if _is_notebook(m["orig"]):
                f.candidates.append(_flat_candidate(name, st, orig, when, LMS, sequence=stamps.index(chosen)))
            else:
                f.others.append(intake.printable(orig))
    if zone_used:
        where = ("this machine's local time zone" if ctx.lms_timezone is None else str(ctx.lms_timezone))
        ctx.notes.append(f"Blackboard attempt times without a known zone were read in {where}")
    return found


def _bb_words(ts: str | None) -> str:
    if not ts:
        return "none"
    d = datetime.strptime(ts, "%Y-%m-%d-%H-%M-%S")
    return d.strftime("%Y-%m-%d %H:%M:%S")


def _yaml_key(k) -> str:
    return k.lstrip(":") if isinstance(k, str) else str(k) if isinstance(k, int) else ""


def _yaml_text(v) -> str:
    if isinstance(v, bool) or v is None:
        return ""
    if isinstance(v, (str, int)):
        return intake.printable(str(v).strip())
    return ""


def _yaml_time(v) -> datetime | None:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    if isinstance(v, str):
        try:
            return deadlines.parse_time(v, default_zone=timezone.utc)[0]
        except ValueError:
            return None
    return None


_YAML_BLOCK_PREFIX = re.compile(rb"^[ \t?:-]{256}", re.M)
_NOT_FLOW = bytes(b for b in range(256) if b not in b"[]{}")
_FLOW_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # depth after i brackets = sum of steps - i


def _yaml_too_deep(raw: bytes) -> str:
    """A reason when the YAML text could nest more than a few hundred levels, found without
    parsing (libyaml's loader crashes the process on very deep input, the Python one recurses):
    flow brackets counted everywhere (strings too: only ever an over-estimate) deeper than 64,
    or a line whose indentation and ``- ``/``? ``/``: `` run is 256 characters or longer (block
    nesting needs its column to grow)."""
    import itertools
    import operator
    flow = raw.translate(None, _NOT_FLOW)
    depth = max(map(operator.sub, itertools.accumulate(flow.translate(_FLOW_STEPS)), itertools.count(1)), default=0)
    if depth > 64:
        return "is nested more than 64 levels deep"
    if _YAML_BLOCK_PREFIX.search(raw):
        return "is indented more than 255 columns"
    return ""


def _gradescope_metadata(root: _Root, top, ctx) -> dict:
    present = dict(top)
    if _GS_METADATA not in present:
        ctx.notes.append(f"no {_GS_METADATA}: each submission folder is its own entry")
        return {}
    raw, why = root.read((_GS_METADATA,), ctx.census, GRADESCOPE_YAML_BYTES)
    if raw is None:
        ctx.notes.append(f"{why}: each submission folder is its own entry")
        return {}
    import yaml
    why = _yaml_too_deep(raw)
    if why:
        ctx.notes.append(f"{_GS_METADATA} {why}: each submission folder is its own entry")
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(raw, Loader=loader)  # noqa: S506 - a safe loader
    except Exception as e:  # noqa: BLE001 - YAMLError, RecursionError, MemoryError...: a note, not a crash
        ctx.notes.append(f"{_GS_METADATA} cannot be read ({type(e).__name__}): each submission folder is its own entry")
        return {}
    if not isinstance(data, dict):
        ctx.notes.append(f"{_GS_METADATA} is not a mapping of submissions: each submission folder is its own entry")
        return {}
    out = {}
    for i, (key, value) in enumerate(data.items()):
        if i >= MAX_SUBMISSIONS:
            ctx.notes.append(f"{_GS_METADATA}: more than {MAX_SUBMISSIONS:,} submissions, the rest ignored")
            break
        sub = _yaml_key(key)
        if not _GS_ENTRY.match(sub) or not isinstance(value, dict):
            continue
        fields = {_yaml_key(k): v for k, v in list(value.items())[:200]}
        people = fields.get("submitters")
        people = people[:MAX_SUBMITTERS] if isinstance(people, list) else []
        submitters = []
        for p in people:
            if isinstance(p, dict):
                p = {_yaml_key(k): v for k, v in list(p.items())[:50]}
                submitters.append({k: _yaml_text(p.get(k)) for k in ("name", "sid", "email")})
        out[sub] = {"submitters": submitters, "created_at": _yaml_time(fields.get("created_at"))}
    return out


def _read_gradescope(root: _Root, top, ctx) -> list[_Found]:
    meta = _gradescope_metadata(root, top, ctx)
    present = dict(top)
    people: dict[str, _Found] = {}
    order: list[str] = []
    for name, st in top:
        if name != _GS_METADATA and not _GS_ENTRY.match(name):
            ctx.notes.append(f"{intake.printable(name)} is not a Gradescope submission folder: left out")
    for sub in sorted(set(meta) | {n for n, _ in top if _GS_ENTRY.match(n)}):
        info = meta.get(sub)
        submitters = info["submitters"] if info else []
        when = info["created_at"] if info else None
        if not submitters:
            submitters = [{"name": "", "sid": "", "email": ""}]
        for p in submitters:
            ident = p["sid"] or p["email"] or p["name"] or sub
            key = (p["sid"] or p["email"] or p["name"]) or sub
            f = people.get(key)
            if f is None:
                label = p["name"] or ident
                keys = [("id", p["sid"]), ("lms_id", p["sid"]), ("email", p["email"])] if p["sid"] or p["email"] else []
                f = people[key] = _Found(f"{label} (Gradescope {sub})", ident, [k for k in keys if k[1]],
                                         name=p["name"], email=p["email"])
                order.append(key)
            if info is None:
                f.notes.append(f"{sub} is not in {_GS_METADATA}")
            if len(submitters) > 1:
                others = [q["name"] or q["sid"] or q["email"] for q in submitters if q is not p]
                f.notes.append(f"group submission {sub} with " + ", ".join(others))
            st = present.get(sub)
            if st is None:
                f.empty_reason = f.empty_reason or f"no folder {sub} in the Gradescope export"
            elif stat.S_ISDIR(st.st_mode):
                _gather(root, f, (sub,), when, LMS, display_from=1)
            elif _is_notebook(sub):  # an export of single files: submission_123.ipynb
                f.candidates.append(_flat_candidate(sub, st, sub, when, LMS))
            else:
                f.problem = f.problem or f"{intake.printable(sub)} is {_problem_of(st) or 'a file'}, not a folder: not graded"
    return [people[k] for k in order]


_READERS = {"folders": _read_folders, "nbgrader": _read_nbgrader, "canvas": _read_canvas, "moodle": _read_moodle,
            "blackboard": _read_blackboard, "gradescope": _read_gradescope}


# =================================================================== ids ====

def _settle(found: list[_Found], roster: Roster | None) -> tuple[list[Entry], list[str], list[str], list[Student]]:
    """Give every entry its id (the roster's when it matches); never merge two entries."""
    matched: list[tuple[Student | None, int]] = []
    for f in found:
        hit = (None, len(f.keys))
        if roster is not None:
            for strength, (kind, value) in enumerate(f.keys):
                s = roster.find(kind, value)
                if s is not None:
                    hit = (s, strength)
                    break
        matched.append(hit)
    claims: dict[str, list[int]] = {}
    for i, (s, _) in enumerate(matched):
        if s is not None:
            claims.setdefault(s.id, []).append(i)
    duplicates = []
    for sid, idx in claims.items():
        if len(idx) > 1:
            idx.sort(key=lambda i: (matched[i][1], found[i].label))
            keep, rest = idx[0], idx[1:]
            for i in rest:
                matched[i] = (None, matched[i][1])
            duplicates.append(f"{', '.join(found[i].label for i in idx)} all map to roster id {sid}: "
                              f"{found[keep].label} is graded as {sid}, the others under their own ids")
    entries = []
    taken = {s.id for s, _ in matched if s is not None}  # roster ids go first: a fallback id never takes one
    ordered = [i for i, (s, _) in enumerate(matched) if s is not None] + \
              [i for i, (s, _) in enumerate(matched) if s is None]
    for i in ordered:
        f, s = found[i], matched[i][0]
        if s is not None:
            sid = base = s.id
        else:
            sid = base = f.fallback_id or f.label or "unnamed"
        n = 2
        while s is None and sid in taken:
            sid = f"{base} ({f.label})" if n == 2 else f"{base} ({f.label}) #{n}"
            n += 1
        if sid != base:
            duplicates.append(f"{f.label} would share the id {base} with another entry: graded as {sid}")
        taken.add(sid)
        e = Entry(sid, f.label, f.name or (s.name if s else ""), f.email or (s.email if s else ""),
                  f.lms_id or (s.lms_id if s else ""), f.candidates, sorted(set(f.others)), f.problem,
                  f.empty_reason, f.notes)
        if roster is not None:
            e.on_roster = sid in roster
        entries.append(e)
    entries.sort(key=lambda e: e.student_id)
    unknown = [e.student_id for e in entries if e.on_roster is False]
    missing = [] if roster is None else [s for s in roster.students if s.id not in taken]
    return entries, duplicates, unknown, missing


# ================================================================ collect ===

@dataclass
class _Context:
    assignment: str | None
    lms_timezone: tzinfo | None
    census: intake.Census
    notes: list[str] = field(default_factory=list)


def collect(submissions, layout: str = "auto", *, roster: Roster | None = None, assignment: str | None = None,
            lms_timezone: tzinfo | None = None) -> Intake:
    """Read the submissions folder in ``layout`` (detected when ``"auto"``): one :class:`Entry` per
    student, sorted by id, with the roster applied. ``assignment`` narrows nbgrader's tree to
    ``<student>/<assignment>/``; ``lms_timezone`` is the zone of Blackboard's attempt times when its
    metadata names none (default: this machine's). ``ValueError`` for an unknown layout or a path
    that is not a folder; nothing inside the folder raises."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    submissions = pathlib.Path(submissions)
    try:
        root = _Root(submissions)
    except OSError as e:
        raise ValueError(f"{submissions} is not a folder of submissions ({e.strerror or e})") from None
    try:
        top = root.top()
        notes = []
        if layout == "auto":
            layout, note = _detect(root, top)
            notes.append(note)
        ctx = _Context(assignment, lms_timezone, root.census(top), notes)
        found = _READERS[layout](root, top, ctx)
    finally:
        root.close()
    entries, duplicates, unknown, missing = _settle(found, roster)
    notes = ctx.notes + ctx.census.notes + (roster.notes if roster is not None else [])
    return Intake(layout, submissions, entries, ctx.census, notes, missing, unknown, duplicates)
