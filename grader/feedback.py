"""Feedback HTML a student can read without learning the hidden tests.

Test cells show only their visible part; their outputs are replaced by one line saying what
passed or why not (the exception's message, never a traceback, since a traceback quotes
the hidden code it ran through). Every other output is scrubbed of any line of hidden test
code and truncated, so a huge print cannot produce a huge page.
"""

from __future__ import annotations

import copy
import html
import pathlib

import nbformat
from nbconvert import HTMLExporter

from . import notebooks as nbs

MAX_TEXT = 10_000  # characters per output
MAX_IMAGE = 400_000  # base64 characters per image
MAX_OUTPUTS = 30  # outputs per cell


def _truncate(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-limit // 3:]
    return f"{head}\n... [{len(text) - len(head) - len(tail)} characters cut by the grader] ...\n{tail}"


def _scrub(text: str, secrets: list[str]) -> str:
    if not secrets:
        return text
    return "\n".join("[hidden test line removed]" if any(s in line for s in secrets) else line
                     for line in text.split("\n"))


def _clean_outputs(outputs: list, secrets: list[str]) -> list:
    cleaned = []
    for out in outputs[:MAX_OUTPUTS]:
        out = copy.deepcopy(out)
        kind = out.get("output_type")
        if kind == "stream":
            out["text"] = _truncate(_scrub(str(out.get("text", "")), secrets))
        elif kind == "error":
            message = _scrub(f"{out.get('ename', '')}: {out.get('evalue', '')}", secrets)
            out = {"output_type": "stream", "name": "stderr", "text": _truncate(message) + "\n"}
        elif kind in ("display_data", "execute_result"):
            data = {}
            for mime, value in out.get("data", {}).items():
                value = "".join(value) if isinstance(value, list) else value
                if mime.startswith("image/"):
                    if isinstance(value, str) and len(value) <= MAX_IMAGE:
                        data[mime] = value
                elif mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
                    data[mime] = _truncate(_scrub(str(value), secrets))
            if not data:
                data = {"text/plain": "[output not shown: too large or not displayable]"}
            out["data"] = data
            out.setdefault("metadata", {})
            if kind == "execute_result":
                out["execution_count"] = None
        cleaned.append(out)
    if len(outputs) > MAX_OUTPUTS:
        cleaned.append({"output_type": "stream", "name": "stderr",
                        "text": f"[{len(outputs) - MAX_OUTPUTS} more outputs not shown]\n"})
    return cleaned


def build(result, assignment: str, source) -> nbformat.NotebookNode:
    """The feedback notebook for one graded result."""
    secrets = [line for c in source.cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    outcome = {t.grade_id: t for t in result.tests}
    cells = []
    score = "failed" if result.status == "failed" else f"{result.score:g} / {result.max_score:g}"
    rows = "".join(f"| `{t.grade_id}` | {t.points:g} / {t.max_points:g} | {t.status} | "
                   f"{html.escape(t.message).replace('|', '/')[:200]} |\n" for t in result.tests)
    summary = (f"# Feedback: {assignment}\n\n**Student:** {html.escape(result.student_id)}  \n"
               f"**Score:** {score}  \n" + (f"**Notes:** {html.escape(result.reason)}\n\n" if result.reason else "\n")
               + ("| test | points | result | message |\n|---|---|---|---|\n" + rows if rows else ""))
    cells.append(nbformat.v4.new_markdown_cell(summary))
    for original in result.cells:
        cell = copy.deepcopy(original)
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.execution_count = None
            if nbs.is_test(original):
                cell.source = nbs.strip_hidden(original.source).rstrip()
                if nbs.hidden_lines(original.source) or nbs.HIDDEN_BEGIN in original.source:
                    cell.source += "\n# (hidden tests not shown)"
                t = outcome.get(nbs.grade_id(original) or "")
                if t is None:
                    text = "not run"
                elif t.status == "ok":
                    text = f"passed: {t.points:g} / {t.max_points:g} points"
                else:
                    text = f"failed ({t.points:g} / {t.max_points:g} points): {_scrub(t.message, secrets)}"
                cell.outputs = [{"output_type": "stream", "name": "stdout" if t and t.status == "ok" else "stderr",
                                 "text": _truncate(text) + "\n"}]
            else:
                cell.outputs = _clean_outputs(original.get("outputs", []), secrets)
        cells.append(cell)
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})


def write_html(nb: nbformat.NotebookNode, path: pathlib.Path) -> None:
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
