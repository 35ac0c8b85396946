"""Feedback HTML a student can read without learning the hidden tests.

Test cells show only their visible part; their outputs are replaced by one line saying what
passed or why not (the exception's message, never a traceback, since a traceback quotes
the hidden code it ran through). Every other output is scrubbed of any line of hidden test
code and truncated, so a huge print cannot produce a huge page; and the whole page has a hard
cap (:data:`MAX_PAGE`): past a budget, images, outputs and then whole non-test cells are
replaced by one-line notes, and the summary at the top counts what was left out.
"""

from __future__ import annotations

import copy
import html
import pathlib
import re
from dataclasses import dataclass

import nbformat
from nbconvert import HTMLExporter

from . import notebooks as nbs

MAX_TEXT = 10_000  # characters per output
MAX_IMAGE = 400_000  # base64 characters per image
MAX_OUTPUTS = 30  # outputs per cell
MAX_SOURCE_SHOWN = 50_000  # characters of one cell's source
MAX_PAGE = 5_000_000  # bytes of HTML in one feedback page, hard cap
PAGE_RESERVE = 800_000  # of MAX_PAGE, for the template (about 280 KB of CSS) and the summary
# What the lab template makes of content, per character or per item (measured, then rounded up):
_CELL_COST, _OUTPUT_COST = 1_000, 300
_CODE_FACTOR, _MARKDOWN_FACTOR = 10, 3  # syntax highlighting wraps every token; rendered markdown
_SURROGATE = re.compile("[\ud800-\udfff]")
_RICH = ("text/html", "text/markdown", "text/latex")


def _text(value) -> str:
    """A string as it may go into the page: lone surrogates (which UTF-8 cannot encode) as U+FFFD."""
    value = "".join(map(str, value)) if isinstance(value, list) else str(value)
    return _SURROGATE.sub("\ufffd", value)


def _limit_note(what: str, limit: int = MAX_PAGE) -> str:
    return f"[{what} not shown: the feedback page reached its {limit / 1e6:g} MB limit]"


def _truncate(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-limit // 3:]
    return f"{head}\n... [{len(text) - len(head) - len(tail)} characters cut by the grader] ...\n{tail}"


def _scrub(text: str, secrets: list[str], markup: bool = False) -> str:
    """``text`` with every line holding a hidden test line replaced; for HTML/markdown outputs
    also a line that holds one once its character references are decoded (``&#x27;``)."""
    if not secrets:
        return text

    def leaks(line: str) -> bool:
        return any(s in line for s in secrets) or (markup and any(s in html.unescape(line) for s in secrets))
    return "\n".join("[hidden test line removed]" if leaks(line) else line for line in text.split("\n"))


def _clean_output(out, secrets: list[str]) -> dict:
    """One output as the student may see it: scrubbed, truncated, only displayable kinds."""
    kind = out.get("output_type") if isinstance(out, dict) else None
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return {"output_type": "stream", "name": name, "text": _truncate(_scrub(_text(out.get("text", "")), secrets))}
    if kind == "error":
        message = _scrub(_text(f"{out.get('ename', '')}: {out.get('evalue', '')}"), secrets)
        return {"output_type": "stream", "name": "stderr", "text": _truncate(message) + "\n"}
    if kind in ("display_data", "execute_result"):
        data = {}
        raw = out.get("data") if isinstance(out.get("data"), dict) else {}
        for mime, value in raw.items():
            if not isinstance(mime, str):
                continue
            if mime.startswith("image/"):
                value = _text(value)
                if mime == "image/svg+xml":  # text the page draws (as an <img>): scrubbed like HTML
                    value = _scrub(value, secrets, markup=True)
                if len(value) <= MAX_IMAGE:
                    data[mime] = value
            elif mime in ("text/plain",) + _RICH:
                data[mime] = _truncate(_scrub(_text(value), secrets, markup=mime in _RICH))
        if not data:
            data = {"text/plain": "[output not shown: too large or not displayable]"}
        cleaned = {"output_type": kind, "data": data, "metadata": {}}
        if kind == "execute_result":
            cleaned["execution_count"] = None
        return cleaned
    return {"output_type": "stream", "name": "stderr", "text": "[output not shown: not displayable]\n"}


def _clean_outputs(outputs: list, secrets: list[str]) -> list:
    outputs = outputs if isinstance(outputs, list) else []
    cleaned = [_clean_output(out, secrets) for out in outputs[:MAX_OUTPUTS]]
    if len(outputs) > MAX_OUTPUTS:
        cleaned.append(_more(len(outputs) - MAX_OUTPUTS))
    return cleaned


def _more(n: int) -> dict:
    return {"output_type": "stream", "name": "stderr", "text": f"[{n} more outputs not shown]\n"}


@dataclass
class Dropped:
    """What the page budget left out of a feedback page."""
    images: int = 0
    outputs: int = 0
    sources: int = 0
    cells: int = 0

    def __bool__(self) -> bool:
        return bool(self.images or self.outputs or self.sources or self.cells)

    def sentence(self, limit: int = MAX_PAGE) -> str:
        parts = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in
                 ((self.images, "image"), (self.outputs, "other output"), (self.sources, "cell source"),
                  (self.cells, "whole cell")) if n]
        return (f"this page is capped at {limit / 1e6:g} MB: {', '.join(parts)} not shown "
                f"(each replaced by a one-line note)")


def _source_cost(cell) -> int:
    factor = _CODE_FACTOR if cell.get("cell_type") == "code" else _MARKDOWN_FACTOR
    attachments = cell.get("attachments") or {}
    extra = sum(len(str(v)) for a in attachments.values() if isinstance(a, dict) for v in a.values())
    return factor * len(cell.get("source", "")) + extra


def _output_cost(out) -> int:
    if out.get("output_type") == "stream":
        return _OUTPUT_COST + len(html.escape(out.get("text", ""), quote=False))
    cost = _OUTPUT_COST
    for mime, value in out.get("data", {}).items():
        if mime.startswith("image/") or mime == "text/html":
            cost += len(value)
        elif mime == "text/plain":
            cost += len(html.escape(value, quote=False))
        else:
            cost += _MARKDOWN_FACTOR * len(value)
    return cost


def _note(text: str) -> dict:
    return {"output_type": "stream", "name": "stderr", "text": text + "\n"}


def _is_image(out) -> bool:
    data = out.get("data") if isinstance(out, dict) else None
    return isinstance(data, dict) and any(isinstance(m, str) and m.startswith("image/") for m in data)


class _Page:
    """The running size of a page being built, against its budget (see :func:`fit`)."""

    def __init__(self, budget: int, limit: int):
        self.budget, self.limit, self.used, self.dropped = budget, limit, 0, Dropped()

    def take(self, cost: int, forced: bool = False) -> bool:
        if forced or self.used + cost <= self.budget:
            self.used += cost
            return True
        return False

    def source(self, cell, forced: bool) -> None:
        if not self.take(_source_cost(cell), forced):
            self.dropped.sources += 1
            cell.pop("attachments", None)
            prefix = "# " if cell.get("cell_type") == "code" else ""
            cell["source"] = prefix + _limit_note("source", self.limit)
            self.used += _MARKDOWN_FACTOR * len(cell["source"])

    def outputs(self, outputs: list, forced: bool, clean=lambda out: out) -> list:
        """``outputs`` (raw, cleaned one by one only while they can still be shown) within budget."""
        outputs = outputs if isinstance(outputs, list) else []
        kept, collapsed, note_cost = [], 0, _OUTPUT_COST + 100
        for out in outputs[:MAX_OUTPUTS]:
            if forced or self.used + _OUTPUT_COST <= self.budget:
                out = clean(out)
                if self.take(_output_cost(out), forced):
                    kept.append(out)
                    continue
            image = _is_image(out)
            if image:
                self.dropped.images += 1
            else:
                self.dropped.outputs += 1
            if self.take(note_cost):
                kept.append(_note(_limit_note("image" if image else "output", self.limit)))
            else:
                collapsed += 1
        if len(outputs) > MAX_OUTPUTS:
            kept.append(_more(len(outputs) - MAX_OUTPUTS))
        if collapsed:
            kept.append(_note(_limit_note(f"{collapsed} more output{'s' if collapsed > 1 else ''}", self.limit)))
            self.used += note_cost
        return kept

    def end(self, cells: list) -> list:
        if self.dropped.cells:
            cells.append(nbformat.v4.new_markdown_cell(_limit_note(f"{self.dropped.cells} more cells", self.limit)))
        return cells


def fit(cells: list, budget: int, keep=None, limit: int = MAX_PAGE) -> tuple[list, Dropped]:
    """``cells`` (feedback cells, already cleaned) cut to about ``budget`` bytes of page, in order:
    an image past the budget becomes a one-line note, as does any other output; a source past it
    too; a cell that no longer fits at all is left out (counted, with one note at the end), except
    where ``keep[i]`` (test cells: the instructor's, bounded, and what the student most needs)."""
    keep = keep or [False] * len(cells)
    page, kept = _Page(budget, limit), []
    for cell, forced in zip(cells, keep):
        if not page.take(_CELL_COST, forced):
            page.dropped.cells += 1
            continue
        page.source(cell, forced)
        if cell.get("cell_type") == "code":
            cell["outputs"] = page.outputs(cell.get("outputs", []), forced)
        kept.append(cell)
    return page.end(kept), page.dropped


def build(result, assignment: str, source, max_page: int = MAX_PAGE) -> nbformat.NotebookNode:
    """The feedback notebook for one graded result, within ``max_page`` bytes of HTML once
    rendered by :func:`write_html`."""
    secrets = [line for c in source.cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    outcome = {t.grade_id: t for t in result.tests}
    page, cells = _Page(max(0, max_page - PAGE_RESERVE), max_page), []
    for original in result.cells:
        kind = original.get("cell_type")
        test = kind == "code" and nbs.is_test(original)
        if not page.take(_CELL_COST, test):  # past the budget: not even copied
            page.dropped.cells += 1
            continue
        cell = nbformat.NotebookNode({k: copy.deepcopy(v) for k, v in original.items()
                                      if k not in ("outputs", "metadata", "source")})
        cell.metadata = {}
        cell.source = _text(original.get("source", ""))
        if len(cell.source) > MAX_SOURCE_SHOWN:
            cell.source = _truncate(cell.source, MAX_SOURCE_SHOWN)
        if kind == "code":
            cell.execution_count = None
            if test:
                cell.source = nbs.strip_hidden(original.source).rstrip()
                if nbs.hidden_lines(original.source) or nbs.HIDDEN_BEGIN in original.source:
                    cell.source += "\n# (hidden tests not shown)"
                t = outcome.get(nbs.grade_id(original) or "")
                if t is None:
                    text = "not run"
                elif t.status == "ok":
                    text = f"passed: {t.points:g} / {t.max_points:g} points"
                else:
                    text = f"failed ({t.points:g} / {t.max_points:g} points): {_scrub(_text(t.message), secrets)}"
                outputs = [{"output_type": "stream", "name": "stdout" if t and t.status == "ok" else "stderr",
                            "text": _truncate(text) + "\n"}]
                page.source(cell, True)
                cell.outputs = page.outputs(outputs, True)
            else:
                page.source(cell, False)
                cell.outputs = page.outputs(original.get("outputs", []), False,
                                            lambda out: _clean_output(out, secrets))
        else:
            page.source(cell, False)
        cells.append(cell)
    cells, dropped = page.end(cells), page.dropped

    def one_line(text, limit=200, markdown=True):  # student-controlled text, literal, on one line
        text = html.escape(" ".join(_scrub(_text(text), secrets).split())[:limit])
        return re.sub(r"([\\`*_\[\]()|#!~$])", r"\\\1", text) if markdown else text.replace("`", "'")
    score = "failed" if result.status == "failed" else f"{result.score:g} / {result.max_score:g}"
    rows = "".join(f"| `{one_line(t.grade_id, 80, markdown=False)}` | {t.points:g} / {t.max_points:g} | {one_line(t.status, 20)} | "
                   f"{one_line(t.message)} |\n" for t in result.tests)
    summary = (f"# Feedback: {html.escape(assignment)}\n\n**Student:** {one_line(result.student_id)}  \n"
               f"**Score:** {score}  \n" + (f"**Notes:** {one_line(result.reason, 2000)}  \n" if result.reason else "")
               + (f"**Page size:** {dropped.sentence(max_page)}  \n" if dropped else "") + "\n"
               + ("| test | points | result | message |\n|---|---|---|---|\n" + rows if rows else ""))
    cells.insert(0, nbformat.v4.new_markdown_cell(summary))
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})


def _render(nb) -> bytes:
    # sanitized: an instructor opens these pages too, and a student's markdown or output must not run script there
    body, _ = HTMLExporter(template_name="lab", sanitize_html=True).from_notebook_node(nb)
    return _text(body).encode("utf-8", "replace")


def _clean_strings(node):
    """Every string in a notebook with lone surrogates replaced (iteratively, in place)."""
    stack = [node]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, value in list(pairs):
            if isinstance(value, str):
                if _SURROGATE.search(value):
                    item[key] = _text(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return node


def write_html(nb: nbformat.NotebookNode, path: pathlib.Path, max_page: int = MAX_PAGE) -> None:
    """Render the feedback page; never more than ``max_page`` bytes. If the estimate in
    :func:`build` fell short, the cells after the summary are cut harder; as a last resort the
    page is the summary alone."""
    nb = _clean_strings(copy.deepcopy(nb))
    body = _render(nb)
    budget = max(0, max_page - PAGE_RESERVE)
    for _ in range(3):
        if len(body) <= max_page or len(nb.cells) <= 1:
            break
        budget = int(budget * max_page / len(body) * 0.7)
        rest, dropped = fit(nb.cells[1:], budget, None, max_page)
        summary = nb.cells[0]
        summary.source += f"\n\n**Page size:** cut again to fit: {dropped.sentence(max_page)}\n"
        nb.cells = [summary] + rest
        body = _render(nb)
    if len(body) > max_page:
        text = html.escape(nb.cells[0].source if nb.cells else "").encode()[: max_page // 2].decode("utf-8", "ignore")
        body = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Feedback</title></head><body><pre>"
                f"{text}\n\n{html.escape(_limit_note('the notebook', max_page))}</pre></body></html>\n").encode(
                    "utf-8", "replace")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
