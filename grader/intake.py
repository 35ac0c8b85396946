"""Reading a folder of student folders without ever following what a student planted.

Submissions are files students control: a notebook may be a symbolic link to the solutions,
a folder on the way may be a link to another student's, a "notebook" may be a FIFO (opening
it would block), a hard link may point at a file outside the batch, a folder name may not be
UTF-8. The grader may run as root, which can read anything, so everything here works from
directory file descriptors with ``O_NOFOLLOW`` and ``lstat``; nothing is resolved by path.

The sequence for one batch::

    folders = intake.scan(submissions)                 # one Folder per student entry
    counts = intake.census(submissions, folders)        # hard links inside the batch
    for folder in folders:
        if folder.problem:                              # a symlink or not a folder
            fail(folder.student_id, folder.problem); continue
        parts, why = intake.find_notebook(folder, assignment)
        if parts is None:
            fail(folder.student_id, why); continue
        try:
            raw = intake.read_submission_bytes(submissions, parts, counts)
            nb = notebooks.parse_submission(raw, parts[-1])
        except notebooks.SubmissionError as e:
            fail(folder.student_id, str(e)); continue
        ...grade nb...

A failure is always a one-line reason for that student's row; nothing here raises for one
student's folder in a way that could cost the others theirs.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import stat
from dataclasses import dataclass, field

from . import notebooks as nbs

SKIP_DIRS = frozenset({".ipynb_checkpoints", "__MACOSX", "__pycache__"})
MAX_DEPTH = 32  # folder levels below a student folder that are searched
MAX_ENTRIES = 100_000  # directory entries looked at per student folder
MAX_BYTES = nbs.MAX_BYTES  # the largest notebook read

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_COPY_PATTERNS = [r"^copy of\s+", r"\s*\(\d+\)$", r"[-_ ]copy\d*$", r"\s+copy$"]
_KINDS = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")]


# ---------------------------------------------------------------- names ----

def _escape(name: str, full: bool) -> str:
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0x80 <= code < 0xA0 or code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif full and ch == "\\":
            out.append("\\x5c")
        else:
            out.append(ch)
    return "".join(out)


def printable(name: str) -> str:
    """``name`` (as ``os`` gives it, undecodable bytes as surrogates) safe to print, write to
    CSV and store in a database: valid UTF-8 without control characters is unchanged; bytes
    that are not UTF-8 become ``\\xNN``, control characters ``\\xNN`` or ``\\uNNNN``. Never raises."""
    return _escape(str(name), full=False)


def display(parts) -> str:
    """A printable relative path for reasons."""
    return printable("/".join(parts))


def _kind(mode: int) -> str:
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


# -------------------------------------------------------------- folders ----

@dataclass(frozen=True)
class Folder:
    """One entry of the submissions folder that gets a row."""
    name: str  # the raw entry name as os gives it (surrogateescape), for paths
    student_id: str  # printable, CSV/SQL-safe: the name itself when it is clean UTF-8
    path: pathlib.Path  # submissions / name (never to be opened by path: use the functions here)
    problem: str = ""  # one-line reason when the entry cannot be graded (a symlink, not a folder)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS


def scan(submissions: pathlib.Path) -> list[Folder]:
    """The student folders in ``submissions``, sorted by name, one per entry that is a folder
    or a symbolic link / special file posing as one (those carry a ``problem`` and still get a
    row). Regular files at the top level are not students and are left out. Only ``lstat``:
    no link is followed."""
    submissions = pathlib.Path(submissions)
    folders: list[Folder] = []
    root = os.open(submissions, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the instructor's path
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if not _skipped(e.name)]
        for name in sorted(names):
            try:
                st = os.stat(name, dir_fd=root, follow_symlinks=False)
            except OSError:
                continue  # vanished since it was listed
            if stat.S_ISREG(st.st_mode):
                continue
            problem = ""
            if stat.S_ISLNK(st.st_mode):
                problem = "the student folder is a symbolic link (not followed): not graded"
            elif not stat.S_ISDIR(st.st_mode):
                problem = f"the student folder is {_kind(st.st_mode)}, not a folder: not graded"
            folders.append(Folder(name, printable(name), submissions / name, problem))
    finally:
        os.close(root)
    ids: dict[str, int] = {}
    for f in folders:
        ids[f.student_id] = ids.get(f.student_id, 0) + 1
    if any(n > 1 for n in ids.values()):  # a clean name that spells another's escape: escape both fully
        folders = [Folder(f.name, _escape(f.name, full=True), f.path, f.problem) if ids[f.student_id] > 1 else f
                   for f in folders]
    return folders


# --------------------------------------------------------------- walking ----

@dataclass
class _Walk:
    max_depth: int = MAX_DEPTH
    max_entries: int = MAX_ENTRIES
    skip_hidden: bool = True
    entries: int = 0
    too_deep: bool = False
    too_many: bool = False

    def run(self, dir_fd: int, parts: tuple, depth: int = 0):
        """Yield ``(parts, lstat)`` for every entry below ``dir_fd``, depth first, descending
        only into real folders (opened with O_NOFOLLOW and checked to be the one lstat saw)."""
        try:
            it = os.scandir(dir_fd)
        except OSError:
            return
        with it:
            subdirs = []
            for entry in it:
                if self.entries >= self.max_entries:
                    self.too_many = True
                    break
                self.entries += 1
                name = entry.name
                if self.skip_hidden and _skipped(name):
                    continue
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                yield parts + (name,), st
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((name, st))
        for name, st in sorted(subdirs):
            if self.too_many:
                return
            if depth + 1 > self.max_depth:
                self.too_deep = True
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    yield from self.run(fd, parts + (name,), depth + 1)
            finally:
                os.close(fd)


def _open_folder(folder) -> tuple[int | None, str, tuple]:
    """A descriptor for the student folder (no link followed), or a reason."""
    if isinstance(folder, Folder):
        if folder.problem:
            return None, folder.problem, (folder.name,)
        path, name = folder.path, folder.name
    else:
        path = pathlib.Path(folder)
        name = path.name
    root = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=root), "", (name,)
    except OSError as e:
        try:
            st = os.stat(name, dir_fd=root, follow_symlinks=False)
            what = _kind(st.st_mode)
        except OSError:
            what = ""
        if what == "a symbolic link":
            return None, "the student folder is a symbolic link (not followed): not graded", (name,)
        if what and what != "a folder":
            return None, f"the student folder is {what}, not a folder: not graded", (name,)
        return None, f"cannot open the student folder: {e.strerror or e}", (name,)
    finally:
        os.close(root)


# ---------------------------------------------------------------- census ----

@dataclass
class Census:
    """How many links to each regular file (by device and inode) lie inside the batch."""
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be counted, and why

    def links(self, st: os.stat_result) -> int:
        return self.counts.get((st.st_dev, st.st_ino), 0)


def census(submissions: pathlib.Path, folders: list[Folder] | None = None, *,
           max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> Census:
    """Count the links to every regular file in the student folders (hidden folders inside
    them included), by ``lstat`` only. A folder deeper than ``max_depth`` levels or with more
    than ``max_entries`` entries is counted only in part and a note says so: a hard-linked file
    it holds is then refused, never wrongly accepted (a count can only fall short)."""
    folders = scan(submissions) if folders is None else folders
    result = Census()
    for folder in folders:
        if folder.problem:
            continue
        fd, why, parts = _open_folder(folder)
        if fd is None:
            continue
        walk = _Walk(max_depth=max_depth, max_entries=max_entries, skip_hidden=False)
        try:
            for _, st in walk.run(fd, parts):
                if stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    result.counts[key] = result.counts.get(key, 0) + 1
        finally:
            os.close(fd)
        if walk.too_deep:
            result.notes.append(f"{folder.student_id}: folders more than {max_depth} levels deep not searched")
        if walk.too_many:
            result.notes.append(f"{folder.student_id}: more than {max_entries:,} entries, the rest not searched")
    return result


# ---------------------------------------------------------- the notebook ----

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


def find_notebook(folder: Folder | pathlib.Path, assignment: str) -> tuple[tuple[str, ...] | None, str]:
    """The student's notebook for ``assignment``: its path as parts relative to the submissions
    folder (the first part is the student folder's raw name), for :func:`read_submission_bytes`;
    or ``None`` and a one-line reason. The rules are those nbgrader users expect: the exact name,
    then copy-mangled names (``Copy of X``, ``X (1)``, ``X-Copy1``), then a single notebook of
    any name; hidden and checkpoint folders are skipped; the newest (mtime) wins within a group.
    Nothing is followed: a symbolic link or special file that would be chosen is reported as the
    reason, never read; linked folders are not searched."""
    fd, why, base = _open_folder(folder)
    if fd is None:
        return None, why
    walk = _Walk()
    found: list[tuple[tuple[str, ...], os.stat_result]] = []
    others: list[str] = []
    try:
        for parts, st in walk.run(fd, base):
            if stat.S_ISDIR(st.st_mode):
                continue
            if parts[-1].lower().endswith(".ipynb"):
                found.append((parts, st))
            else:
                others.append(parts[-1])
    finally:
        os.close(fd)
    found.sort(key=lambda f: f[0])
    target = assignment.lower()

    def stem(parts):
        return parts[-1][: -len(".ipynb")]

    exact = [f for f in found if stem(f[0]).lower() == target]
    loose = [f for f in found if _normalised(stem(f[0])) == target]
    chosen = None
    for group in (exact, loose):
        if group:
            chosen = max(group, key=lambda f: (f[1].st_mtime, f[0]))
            break
    if chosen is None and len(found) == 1:
        chosen = found[0]
    if chosen is not None:
        parts, st = chosen
        if stat.S_ISREG(st.st_mode):
            return parts, ""
        what = _kind(st.st_mode)
        suffix = " (not followed)" if what == "a symbolic link" else ""
        return None, f"{display(parts[1:])} is {what}{suffix}: not graded"
    limit = ""
    if walk.too_deep:
        limit = f"; folders more than {walk.max_depth} levels deep not searched"
    if walk.too_many:
        limit = f"; more than {walk.max_entries:,} entries, the rest not searched"
    if not found:
        shown = ", ".join(printable(n) for n in sorted(others)[:5])
        return None, ("no notebook in the folder" + (f" (found: {shown})" if shown else " (it is empty)") + limit)
    names = ", ".join(printable(p[-1]) for p, _ in found[:5])
    return None, f"no notebook named like {assignment}.ipynb among {names}{limit}"


def _check_part(part: str) -> None:
    if not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\0" in part:
        raise nbs.SubmissionError(f"{printable(str(part))!r} is not a plain file name")


def read_submission_bytes(root: pathlib.Path, relative_parts, census: Census | dict | None,
                          max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``root/relative_parts...``, read without following anything: every folder
    on the way is opened with ``O_NOFOLLOW`` from the one before it (``root`` itself is the
    instructor's and may be a link), the file is ``lstat``-ed first (nothing but a regular file
    is ever opened: no FIFO, socket or device), opened ``O_NOFOLLOW | O_NONBLOCK`` and checked
    again with ``fstat``. A file with several hard links is read only when all its links are
    inside the batch (``census``). Raise :class:`notebooks.SubmissionError` with a one-line reason."""
    parts = tuple(relative_parts)
    if not parts:
        raise nbs.SubmissionError("no file named")
    for part in parts:
        _check_part(part)
    name = display(parts[1:] or parts)
    counts = census.counts if isinstance(census, Census) else (census or {})
    fds: list[int] = []
    try:
        fds.append(os.open(pathlib.Path(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for i, part in enumerate(parts[:-1]):
            try:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as e:
                where = "the student folder" if i == 0 else f"folder {display(parts[1:i + 1])} (in {name})"
                try:
                    what = _kind(os.stat(part, dir_fd=fds[-1], follow_symlinks=False).st_mode)
                except OSError:
                    what = ""
                if what == "a symbolic link":
                    raise nbs.SubmissionError(f"{where} is a symbolic link (not followed): not graded") from None
                if what and what != "a folder":
                    raise nbs.SubmissionError(f"{where} is {what}, not a folder: not graded") from None
                raise nbs.SubmissionError(f"cannot open {where}: {e.strerror or e}") from None
        parent = fds[-1]
        try:
            before = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            raise nbs.SubmissionError(f"cannot read {name}: {e.strerror or e}") from None
        _check_file(before, name, counts, max_bytes)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise nbs.SubmissionError(f"{name} is a symbolic link (not followed): not graded") from None
            raise nbs.SubmissionError(f"cannot read {name}: {e.strerror or e}") from None
        fds.append(fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise nbs.SubmissionError(f"{name} changed while it was being read: not graded")
        _check_file(st, name, counts, max_bytes)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise nbs.SubmissionError(f"{name} is larger than {_mib(max_bytes)}: not graded")
        return b"".join(chunks)
    except OSError as e:  # anything else the file system says, as a reason, not a crash
        raise nbs.SubmissionError(f"cannot read {name}: {e.strerror or e}") from None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def _check_file(st: os.stat_result, name: str, counts: dict, max_bytes: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise nbs.SubmissionError(f"{name} is a symbolic link (not followed): not graded")
    if not stat.S_ISREG(st.st_mode):
        raise nbs.SubmissionError(f"{name} is not a regular file ({_kind(st.st_mode)}): not graded")
    if st.st_nlink != 1 and counts.get((st.st_dev, st.st_ino), 0) != st.st_nlink:
        raise nbs.SubmissionError(f"{name} is a hard link to a file outside the submissions: not graded")
    if st.st_size > max_bytes:
        raise nbs.SubmissionError(f"{name} is larger than {_mib(max_bytes)}: not graded")
