"""Feedback HTML a student can read without learning the hidden tests.

Test cells show only their visible part; their outputs are replaced by one line saying what
passed or why not (the exception's message, never a traceback, since a traceback quotes
the hidden code it ran through). Every other output is scrubbed of any line of hidden test
code and truncated, so a huge print cannot produce a huge page; and the whole page has a hard
cap (:data:`MAX_PAGE`): past a budget, images, outputs and then whole non-test cells are
replaced by one-line notes, and the summary at the top counts what was left out.

Pages open offline: maths (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``, LaTeX
environments) is rendered in the browser by KaTeX, vendored in ``grader/static/katex`` and
inlined into every page (scripts, CSS, fonts as ``data:`` URIs; :func:`math_head`), its size
counted in the page budget (:func:`reserve`). Nothing is fetched from a CDN. Markdown and
outputs are sanitized with an allowlist of tags (:func:`clean_html`); a Content-Security-Policy
lets only the page's own scripts run, by hash, should anything get past the sanitizer. The
summary at the top quotes student text and is never typeset.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
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
# ... plus the maths renderer inlined in every page (about 650 KB): see reserve()
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


_NOTE_COST = _OUTPUT_COST + 100  # a one-line note in place of an output
_SOURCE_NOTE_COST = 250  # a one-line note in place of a source


def _skeleton(cell) -> int:
    """What ``cell`` costs at least once its source and outputs are one-line notes."""
    outputs = cell.get("outputs") if cell.get("cell_type") == "code" else None
    n = min(len(outputs), MAX_OUTPUTS + 1) if isinstance(outputs, list) else 0
    return _CELL_COST + min(_source_cost(cell), _SOURCE_NOTE_COST) + n * _NOTE_COST


class _Page:
    """The running size of a page being built, against its budget (see :func:`fit`).

    When every cell fits as a skeleton (a cell whose source and outputs are one-line notes),
    content is taken only while the skeleton of the cells after it still fits: a page shows
    all its cells, some as notes, rather than its first images and none of its last cells."""

    def __init__(self, budget: int, limit: int, cells: list = ()):
        self.budget, self.limit, self.used, self.dropped = budget, limit, 0, Dropped()
        skeletons = [_skeleton(c) for c in cells]
        self.tails = [0] * (len(skeletons) + 1)
        if sum(skeletons) <= budget:
            for i in range(len(skeletons) - 1, -1, -1):
                self.tails[i] = self.tails[i + 1] + skeletons[i]
        self.held = 0  # bytes held back for the cells after the current one

    def at(self, index: int) -> None:
        """The next cell handled is ``cells[index]`` of those given to the constructor."""
        self.held = self.tails[index + 1] if index + 1 < len(self.tails) else 0

    def take(self, cost: int, forced: bool = False, content: bool = False) -> bool:
        if forced or self.used + cost + (self.held if content else 0) <= self.budget:
            self.used += cost
            return True
        return False

    def source(self, cell, forced: bool) -> None:
        if not self.take(_source_cost(cell), forced, content=True):
            self.dropped.sources += 1
            cell.pop("attachments", None)
            prefix = "# " if cell.get("cell_type") == "code" else ""
            cell["source"] = prefix + _limit_note("source", self.limit)
            self.used += _MARKDOWN_FACTOR * len(cell["source"])

    def outputs(self, outputs: list, forced: bool, clean=lambda out: out) -> list:
        """``outputs`` (raw, cleaned one by one only while they can still be shown) within budget."""
        outputs = outputs if isinstance(outputs, list) else []
        kept, collapsed, note_cost = [], 0, _NOTE_COST
        for out in outputs[:MAX_OUTPUTS]:
            if forced or self.used + _OUTPUT_COST + self.held <= self.budget:
                out = clean(out)
                if self.take(_output_cost(out), forced, content=True):
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
    page, kept = _Page(budget, limit, cells), []
    for index, (cell, forced) in enumerate(zip(cells, keep)):
        page.at(index)
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
    page, cells = _Page(max(0, max_page - reserve()), max_page, result.cells), []
    for index, original in enumerate(result.cells):
        page.at(index)
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
    cells.insert(0, nbformat.v4.new_markdown_cell(summary, metadata={"tags": [LITERAL_TAG]}))
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})


# ------------------------------------------------------------------ the page itself ----

KATEX = pathlib.Path(__file__).resolve().parent / "static" / "katex"
LITERAL_TAG = "attn-literal"  # a markdown cell with this tag is never typeset (the summary quotes student text)
_FONT = re.compile(r"src:url\(fonts/(KaTeX_[A-Za-z0-9_-]+)\.woff2\) format\(\"woff2\"\)[^;}]*")
# Where maths is typeset: markdown cells, markdown/HTML/LaTeX outputs; never code, streams or
# test results (their <pre> is skipped by KaTeX anyway), never the summary.
_MATH_INIT = r"""(function () {
  "use strict";
  var options = {
    delimiters: [
      {left: "$$", right: "$$", display: true},
      {left: "\\[", right: "\\]", display: true},
      {left: "\\begin{equation}", right: "\\end{equation}", display: true},
      {left: "\\begin{equation*}", right: "\\end{equation*}", display: true},
      {left: "\\begin{align}", right: "\\end{align}", display: true},
      {left: "\\begin{align*}", right: "\\end{align*}", display: true},
      {left: "\\begin{gather}", right: "\\end{gather}", display: true},
      {left: "\\begin{gather*}", right: "\\end{gather*}", display: true},
      {left: "\\(", right: "\\)", display: false},
      {left: "$", right: "$", display: false}
    ],
    ignoredClasses: ["celltag_%(tag)s"],
    throwOnError: false, strict: "ignore", trust: false, maxSize: 20, maxExpand: 500
  };
  function typeset() {
    var parts = document.querySelectorAll(".jp-RenderedMarkdown, .jp-RenderedHTML, .jp-RenderedLatex");
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].closest(".celltag_%(tag)s")) continue;
      try { window.renderMathInElement(parts[i], options); } catch (e) { /* leave that part's source as it is */ }
    }
    document.documentElement.setAttribute("data-attn-math", "done");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", typeset);
  else typeset();
})();
""" % {"tag": LITERAL_TAG}

_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}
{{ resources.attn_csp }}
{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
{{ resources.attn_math }}
{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _script(js: str) -> str:
    if "</script" in js.lower() or "<!--" in js:
        raise ValueError("a bundled script cannot be inlined as it is")
    return f"<script>{js}</script>"


def _hash(js: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode() + "'"


@functools.lru_cache(maxsize=1)
def _math_parts() -> tuple[str, str]:
    """(the Content-Security-Policy meta tag, KaTeX's CSS and scripts inlined) for every page."""
    css = (KATEX / "katex.min.css").read_text(encoding="utf-8")

    def font(m: re.Match) -> str:
        data = base64.b64encode((KATEX / "fonts" / f"{m.group(1)}.woff2").read_bytes()).decode()
        return f'src:url(data:font/woff2;base64,{data}) format("woff2")'
    css, fonts = _FONT.subn(font, css)
    if not fonts or "url(fonts/" in css:
        raise RuntimeError(f"{KATEX / 'katex.min.css'}: its @font-face rules are not the ones this code inlines")
    scripts = [(KATEX / "katex.min.js").read_text(encoding="utf-8"),
               (KATEX / "auto-render.min.js").read_text(encoding="utf-8"), _MATH_INIT]
    head = f"<style>{css}</style>\n" + "\n".join(_script(js) for js in scripts) + "\n"
    csp = ("default-src 'none'; script-src " + " ".join(_hash(js) for js in scripts)
           + "; style-src 'unsafe-inline'; font-src data:; img-src data:; base-uri 'none'; form-action 'none'")
    return f'<meta http-equiv="Content-Security-Policy" content="{csp}">', head


def math_head() -> str:
    """What every page carries in its head to typeset maths offline: KaTeX's CSS (fonts as
    ``data:`` URIs), ``katex.min.js``, ``auto-render.min.js`` and the call that runs them."""
    return _math_parts()[1]


def math_overhead() -> int:
    """Bytes the maths renderer and the policy tag add to every page."""
    csp, head = _math_parts()
    return len(csp.encode("utf-8")) + len(head.encode("utf-8"))


def reserve() -> int:
    """Bytes of a page kept back from content: the template, the summary, the maths renderer."""
    return PAGE_RESERVE + math_overhead()


# Sanitizing: nbconvert's own clean_html allows too few tags (no <p>, headings or table header),
# and escapes the rest, so every paragraph showed as "<p>...". This allowlist keeps what
# markdown makes and nothing that runs or loads: no script, style, iframe, form, event attribute or
# ``javascript:`` URL; images only as ``data:`` URIs (a page opens offline and calls nobody).
_TAGS = frozenset({
    "a", "abbr", "acronym", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "details", "div",
    "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
    "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var"})
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*\Z", re.I)


def _allowed(tag: str, name: str, value: str) -> bool:
    if name in ("class", "id", "title"):
        return True
    if tag == "a":
        return name == "href" and not value.strip().lower().startswith("data:")
    if tag == "img":
        # no image from elsewhere: the page opens offline, and a student's <img> must not call home
        return name in ("alt", "width", "height") or (name == "src" and bool(_DATA_IMAGE.match(value.strip())))
    if tag in ("td", "th"):
        return name in ("colspan", "rowspan", "align", "style")
    if tag == "ol":
        return name == "start"
    return False


@functools.lru_cache(maxsize=1)
def _css_sanitizer():
    try:
        from bleach.css_sanitizer import CSSSanitizer
    except ImportError:  # tinycss2 missing: no style attribute at all
        return None
    return CSSSanitizer(allowed_css_properties=["text-align"])


def clean_html(element) -> str:
    """Student-derived HTML as the page may show it (nbconvert's ``clean_html`` filter, replaced)."""
    import bleach
    element = element.decode("utf-8", "replace") if isinstance(element, bytes) else str(element)
    css = _css_sanitizer()
    return bleach.clean(element, tags=_TAGS, attributes=_allowed if css else
                        (lambda tag, name, value: name != "style" and _allowed(tag, name, value)),
                        protocols={"http", "https", "mailto", "data"}, css_sanitizer=css)


def _exporter() -> HTMLExporter:
    import jinja2
    return HTMLExporter(template_name="lab", sanitize_html=True, template_file="attn_feedback.html.j2",
                        extra_loaders=[jinja2.DictLoader({"attn_feedback.html.j2": _TEMPLATE})],
                        filters={"clean_html": clean_html})


def _render(nb) -> bytes:
    # sanitized: an instructor opens these pages too, and a student's markdown or output must not run script there
    csp, head = _math_parts()
    body, _ = _exporter().from_notebook_node(nb, resources={"attn_csp": csp, "attn_math": head})
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
    budget = max(0, max_page - reserve())
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
