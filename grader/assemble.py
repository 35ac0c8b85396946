"""Rebuild a submission around the instructor's source before grading.

nbgrader trusts the student's file for the cells it grades, which is how a deleted test
cell goes ungraded and a duplicated ``grade_id`` aborts a whole batch. Here the source
notebook is the skeleton and the student contributes only what is theirs:

* every locked cell (instructions, setup, every test cell with its hidden tests) comes from
  the source, whatever the student did to it: deleted, edited or duplicated;
* every solution cell comes from the student, matched by ``grade_id``, then by cell id, then
  by content (Colab and copy-paste lose metadata); a solution cell that cannot be found is
  graded as the unanswered stub;
* cells the student added stay, in their place relative to the source cells around them,
  so helper functions keep working. Extra copies of locked cells are dropped.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field

from nbformat import NotebookNode

from . import notebooks as nbs


@dataclass
class Assembly:
    cells: list  # NotebookNode cells, in execution order
    notes: list[str] = field(default_factory=list)


def _key(cell) -> str:
    return nbs.grade_id(cell) or cell.get("id") or ""


def _defined_names(source: str) -> set[str]:
    return set(re.findall(r"^\s*(?:def|class)\s+([A-Za-z_]\w*)", source, flags=re.M))


def _plain(cell) -> NotebookNode:
    """A student's extra cell, with any nbgrader role removed."""
    cell = copy.deepcopy(cell)
    cell.metadata.pop("nbgrader", None)
    cell["id"] = "extra-" + nbs.stable_id(cell.get("id") or "", cell.source)
    return cell


def assemble(source: NotebookNode, template: NotebookNode, submission: NotebookNode) -> Assembly:
    """The cells to execute: ``source`` with the student's answers and additions in place."""
    by_key = {_key(c): c for c in source.cells}
    ids = {c.get("id"): _key(c) for c in source.cells if c.get("id")}
    gids = {nbs.grade_id(c): _key(c) for c in source.cells if nbs.grade_id(c)}
    stubs = {_key(c): c for c in template.cells}

    matched: dict[str, object] = {}
    order: list[tuple[str | None, object]] = []  # (source key or None for an extra, student cell)
    duplicates = 0
    for cell in submission.cells:
        key = gids.get(nbs.grade_id(cell)) or ids.get(cell.get("id"))
        if key is not None and key not in matched:
            matched[key] = cell
            order.append((key, cell))
        elif key is not None and nbs.is_locked(by_key[key]):
            duplicates += 1  # a copy of a locked cell: the source version runs once, in its place
        else:
            duplicates += key is not None
            order.append((None, cell))

    # Content fallback for solution cells whose metadata was lost or renamed.
    for key, src in by_key.items():
        if not nbs.is_solution(src) or key in matched:
            continue
        stub = stubs.get(key, src).source
        wanted = _defined_names(stub)
        best, best_score = None, 0.0
        for i, (k, cell) in enumerate(order):
            if k is not None or cell.get("cell_type") != src.cell_type:
                continue
            if wanted and wanted & _defined_names(cell.source):
                score = 2.0
            else:
                # bounded: a student's cell may be megabytes, the comparison must stay cheap
                score = difflib.SequenceMatcher(None, stub[:20_000], cell.source[:20_000]).ratio()
            if score > best_score:
                best, best_score = i, score
        if best is not None and best_score >= 0.6:
            cell = order[best][1]
            matched[key] = cell
            order[best] = (key, cell)

    notes = []
    out: list = []
    anchors = {key: i for i, (key, _) in enumerate(order) if key is not None}
    pending: list = []
    placed_upto = -1
    restored = edited = missing_answers = 0
    for key, src in by_key.items():
        if key in anchors:
            # student cells added before this anchor (and after the previous one) go first
            for i in range(placed_upto + 1, anchors[key]):
                if order[i][0] is None:
                    pending.append(_plain(order[i][1]))
            placed_upto = max(placed_upto, anchors[key])
            out.extend(pending)
            pending = []
        if nbs.is_solution(src):
            if key in matched:
                cell = copy.deepcopy(src)
                cell.source = matched[key].source
            else:
                cell = copy.deepcopy(stubs.get(key, src))
                missing_answers += 1
        else:
            cell = copy.deepcopy(src)
            if nbs.is_test(src):
                if key not in matched:
                    restored += 1
                elif matched[key].source.strip() not in (nbs.strip_hidden(src.source).strip(), src.source.strip(),
                                                         stubs.get(key, src).source.strip()):
                    edited += 1
            elif not nbs.is_locked(src) and key in matched:
                cell.source = matched[key].source  # an unlocked, ungraded cell: the student may play
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        out.append(cell)
    out.extend(_plain(c) for k, c in order[placed_upto + 1:] if k is None)

    if restored:
        notes.append(f"restored {restored} deleted test cell{'s' * (restored > 1)}")
    if edited:
        notes.append(f"restored {edited} edited test cell{'s' * (edited > 1)}")
    if duplicates:
        notes.append(f"ignored {duplicates} duplicated cell{'s' * (duplicates > 1)}")
    if missing_answers:
        notes.append(f"{missing_answers} answer cell{'s' * (missing_answers > 1)} not found")
    return Assembly(out, notes)
