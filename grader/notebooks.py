"""Notebook plumbing shared by every command: reading untrusted files, nbgrader cell roles,
and writing notebooks byte for byte reproducibly."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import operator
import os
import pathlib
import re
import stat

import nbformat
from nbformat import NotebookNode
from traitlets.log import get_logger

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"


class SubmissionError(Exception):
    """A file that cannot be graded at all; the message is the one-line reason."""


def nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def grade_id(cell) -> str | None:
    gid = nbgrader_meta(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def is_solution(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_test(cell) -> bool:
    """An autograded test cell: graded and not a solution cell."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def is_locked(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("locked")) or (bool(meta.get("grade")) and not meta.get("solution"))


def points(cell) -> float:
    try:
        return float(nbgrader_meta(cell).get("points", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def _regions(source: str):
    """Yield ``(line, hidden)`` for every line outside the BEGIN/END HIDDEN TESTS markers."""
    hidden = False
    for line in source.split("\n"):
        if HIDDEN_BEGIN in line:
            hidden = True
        elif HIDDEN_END in line:
            hidden = False
        else:
            yield line, hidden


def strip_hidden(source: str) -> str:
    """The source with hidden-test regions removed (what a student may see)."""
    return "\n".join(line for line, hidden in _regions(source) if not hidden)


def hidden_lines(source: str) -> list[str]:
    """The non-trivial lines inside hidden-test regions (to scrub from feedback)."""
    return [line.strip() for line, hidden in _regions(source) if hidden and len(line.strip()) >= 6]


def write_submission(root: pathlib.Path, student: str, name: str, nb: NotebookNode | None = None,
                     text: str | None = None, raw: bytes | None = None) -> pathlib.Path:
    """Put one student's file in ``root/student/name`` (a notebook, text or bytes); return the folder."""
    folder = root / student
    folder.mkdir(parents=True, exist_ok=True)
    if nb is not None:
        nbformat.write(nb, folder / name)
    elif text is not None:
        (folder / name).write_text(text)
    elif raw is not None:
        (folder / name).write_bytes(raw)
    return folder


MAX_BYTES = 64 * 2**20  # the largest notebook read
MAX_DEPTH = 100  # JSON nesting a notebook never needs (a real one stays under 20)
MAX_CELLS = 5_000
MAX_SOURCE = 5_000_000  # characters in one cell's source
MAX_BRACKETS = 1_000_000  # JSON lists and objects in one notebook, all told
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # depth after i brackets = sum of steps - i
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_submission(path: pathlib.Path) -> NotebookNode:
    """Read a student's file; raise SubmissionError with a one-line reason when impossible.
    (The autograder reads through :func:`grader.intake.read_submission_bytes`, which follows no
    link; this is for a file the user named, as ``attn-grade validate`` does.)"""
    path = pathlib.Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SubmissionError(f"{path.name} is a symbolic link (not followed): not graded") from None
        raise SubmissionError(f"cannot read {path.name}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SubmissionError(f"{path.name} is not a regular file: not graded")
        if st.st_size > MAX_BYTES:
            raise SubmissionError(f"{path.name} is larger than {MAX_BYTES // 2**20} MiB: not graded")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SubmissionError(f"cannot read {path.name}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        raise SubmissionError(f"{path.name} is larger than {MAX_BYTES // 2**20} MiB: not graded")
    return parse_submission(raw, path.name)


def _too_deep(raw: bytes, limit: int) -> str:
    """A reason when the JSON text nests lists/objects more than ``limit`` deep (or holds absurdly
    many), found without parsing: strings removed, brackets counted; linear, no recursion."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) > 2 * MAX_BRACKETS:
        return f"holds more than {MAX_BRACKETS:,} JSON lists and objects: not a notebook"
    depth = max(map(operator.sub, itertools.accumulate(brackets.translate(_STEPS)), itertools.count(1)), default=0)
    return f"is nested more than {limit} levels deep: not a notebook" if depth > limit else ""


def _without_surrogates(value):
    """``value`` with every lone surrogate (from a ``\\ud800`` escape) in its strings, keys included,
    replaced by U+FFFD. Iterative: the depth was checked, but no recursion is needed at all."""
    fix = lambda s: _SURROGATE.sub("\ufffd", s)  # noqa: E731
    if isinstance(value, str):
        return fix(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = fix(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
                if isinstance(key, str) and _SURROGATE.search(key):
                    del node[key]
                    key = fix(key)
                node[key] = item
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = fix(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
    return value


def parse_submission(raw: bytes, name: str) -> NotebookNode:
    """A student's notebook from its bytes (``name`` only words the reasons); raise SubmissionError
    with a one-line reason when it cannot be graded. Lone surrogates become U+FFFD, notebooks older
    than v4 (nbformat 3's worksheets) are upgraded, absurd nesting and sizes are refused."""
    if not raw.strip():
        raise SubmissionError(f"{name} is empty (0 bytes of notebook)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SubmissionError(f"{name} is not a text file (not UTF-8): not a notebook") from None
    why = _too_deep(raw, MAX_DEPTH)
    if why:
        raise SubmissionError(f"{name} {why}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (RecursionError, MemoryError, ValueError) as e:
        what = "nested too deep" if isinstance(e, RecursionError) else type(e).__name__
        raise SubmissionError(f"{name} cannot be read as JSON ({what}): not a notebook") from None
    del text
    if _SURROGATE_ESCAPE.search(raw):
        data = _without_surrogates(data)
    if not isinstance(data, dict):
        raise SubmissionError(f"{name} is JSON but not a notebook (no list of cells)")
    version = data.get("nbformat", 4 if "cells" in data else 3)
    if isinstance(data.get("cells"), list):
        cells = data["cells"]
    elif isinstance(data.get("worksheets"), list) and isinstance(version, int) and version < 4:
        cells = [c for ws in data["worksheets"] if isinstance(ws, dict)
                 for c in (ws.get("cells") if isinstance(ws.get("cells"), list) else [])]
        data.setdefault("nbformat", 3)
        data.setdefault("metadata", {})
    else:
        raise SubmissionError(f"{name} is JSON but not a notebook (no list of cells)")
    if len(cells) > MAX_CELLS:
        raise SubmissionError(f"{name} has {len(cells):,} cells (more than {MAX_CELLS:,}): not graded")
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise SubmissionError(f"{name} is not a readable notebook: cell {index + 1} is not a JSON object")
        for key in ("source", "input"):
            value = cell.get(key)
            if isinstance(value, list):
                if not all(isinstance(line, str) for line in value):
                    raise SubmissionError(f"{name} is not a readable notebook: cell {index + 1}'s {key} "
                                          f"is not text")
                size = sum(len(line) for line in value)
            else:
                size = len(value) if isinstance(value, str) else 0
            if size > MAX_SOURCE:
                raise SubmissionError(f"{name} has a cell (number {index + 1}) of {size:,} characters "
                                      f"(more than {MAX_SOURCE:,}): not graded")
        if not isinstance(cell.get("metadata", {}), dict):
            cell["metadata"] = {}
    try:
        major, minor = nbformat.reader.get_version(data)
        if major not in nbformat.versions:
            raise ValueError(f"unsupported nbformat version {major}")
        nb = nbformat.versions[major].to_notebook_json(data, minor=minor)
        nb = nbformat.convert(nb, 4)
    except Exception as e:  # nbformat raises several kinds for malformed notebooks
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SubmissionError(f"{name} is not a readable notebook: {first[:120]}") from None
    try:
        nbformat.validate(nb)
    except Exception as e:  # as nbformat.reads does: an invalid notebook is logged, still graded
        get_logger().error("Notebook JSON is invalid: %s", str(e).splitlines()[0][:200])
    if not isinstance(nb.get("cells"), list):
        raise SubmissionError(f"{name} is JSON but not a notebook (no list of cells)")
    for cell in nb.cells:
        if not isinstance(cell, dict):
            raise SubmissionError(f"{name} is not a readable notebook: a cell is not a JSON object")
        if not isinstance(cell.get("source", ""), str):
            source = cell.get("source") or []
            cell["source"] = "".join(source) if isinstance(source, list) else str(source)
        cell.setdefault("metadata", {})
        if not isinstance(cell.get("cell_type"), str):
            cell["cell_type"] = "raw"
    return nb


def stable_id(*parts: str) -> str:
    """A short id derived from content, identical on every machine and run."""
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:12]


def normalise(nb: NotebookNode) -> NotebookNode:
    """Outputs and execution counts cleared, every cell with a stable id, notebook v4.5."""
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
        cid = cell.get("id")
        if not cid or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cid) or cid in seen:
            cid = stable_id(grade_id(cell) or "", str(index), cell.source)
        cell["id"] = cid
        seen.add(cid)
    return nb


def dumps(nb: NotebookNode) -> str:
    """Deterministic JSON: sorted keys, one-space indent, trailing newline."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write(nb: NotebookNode, path: pathlib.Path) -> None:
    path.write_text(dumps(nb), encoding="utf-8")


def strip_solution_markers(source: str) -> str:
    return "\n".join(line for line in source.split("\n")
                     if SOLUTION_BEGIN not in line and SOLUTION_END not in line)


def as_student_answer(template: NotebookNode, source: NotebookNode, answers: dict[str, str] | None = None) -> NotebookNode:
    """The released ``template`` with its solution cells answered: by ``answers[grade_id]``
    where given, otherwise by the source's solution (what a perfect student would hand in)."""
    import copy
    answers = answers or {}
    solutions = {grade_id(c): strip_solution_markers(c.source) for c in source.cells if is_solution(c)}
    nb = copy.deepcopy(template)
    for cell in nb.cells:
        gid = grade_id(cell)
        if is_solution(cell) and gid in solutions:
            cell.source = answers.get(gid, solutions[gid])
    return nb
