"""Notebook plumbing shared by every command: reading untrusted files, nbgrader cell roles,
and writing notebooks byte for byte reproducibly."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

import nbformat
from nbformat import NotebookNode

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


def read_submission(path: pathlib.Path) -> NotebookNode:
    """Read a student's file; raise SubmissionError with a one-line reason when impossible."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SubmissionError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not raw.strip():
        raise SubmissionError(f"{path.name} is empty (0 bytes of notebook)")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SubmissionError(f"{path.name} is not a text file (not UTF-8): not a notebook") from None
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path.name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise SubmissionError(f"{path.name} is JSON but not a notebook (no list of cells)")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as e:  # nbformat raises several kinds for malformed notebooks
        raise SubmissionError(f"{path.name} is not a readable notebook: {str(e).splitlines()[0][:120]}") from None
    for cell in nb.cells:
        if not isinstance(cell.get("source", ""), str):
            cell["source"] = "".join(cell.get("source") or [])
        cell.setdefault("metadata", {})
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
