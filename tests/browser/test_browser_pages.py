"""The grader's own pages in real Chromium, offline: the class report and a feedback page's maths.

No Lab server here: each page is a file opened in a fresh, offline browser context whose every
request other than ``file:`` and ``data:`` is refused (and recorded, so a page that tried to
reach a CDN fails). Checked:

- ``attn-grade report``: no console or page error, no dialog (a hostile student id carries a
  ``<script>alert``), every plot loaded (``naturalWidth > 0``), the misconceptions listed;
- a feedback page: KaTeX typeset the maths (``.katex`` elements, display maths, no ``$$`` or raw
  ``\\frac`` left in the rendered markdown, KaTeX's own fonts loaded from the page), the summary
  (student text) and printed output left as text, no student script ran; and a copy of the page
  with a script planted past the sanitizer shows that the page's policy blocks it.

Screenshots: ``report.png`` and ``feedback-math.png`` in the screenshot folder (conftest.py).
"""

from __future__ import annotations

import pathlib

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]


class Opened:
    """A page opened offline, with what went wrong on it."""

    def __init__(self, browser, path: pathlib.Path, width: int = 1200):
        self.context = browser.new_context(offline=True, viewport={"width": width, "height": 900},
                                           device_scale_factor=1)
        self.errors, self.dialogs, self.refused = [], [], []

        def route(r):
            if r.request.url.startswith(("file:", "data:")):
                r.continue_()
            else:
                self.refused.append(r.request.url)
                r.abort()
        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def close(self):
        self.context.close()


@pytest.fixture
def opened(chromium):
    pages = []

    def open_(path, **kw):
        pages.append(Opened(chromium, path, **kw))
        return pages[-1]
    yield open_
    for p in pages:
        p.close()


def test_report_page_in_chromium(opened, shots, tmp_path):
    import test_report as data  # the synthetic class of tests/test_report.py (tests/ is on sys.path)
    from grader import course, gradebook, release
    from grader import report as rep

    db_url = course.sqlite_url(tmp_path / "gradebook.db")
    source = data._source(tmp_path)
    release.student_version(source, db_url=db_url)
    gradebook.record(db_url, data.ASSIGNMENT, data._class())
    page_path = rep.report(db_url, data.ASSIGNMENT, tmp_path / "report", nbformat.read(source, as_version=4))

    o = opened(page_path)
    images = o.page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({id: i.id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
    assert len(images) == len(rep.PLOTS), images
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    shares = o.page.eval_on_selector_all("li.misconception .share", "e => e.map(x => x.textContent)")
    assert shares == ["40% of the class", "20% of the class", "20% of the class", "10% of the class"]
    assert data.HOSTILE_ID in o.page.inner_text("body")  # shown as text, not run
    # the PNG files beside the page load too
    for name in rep.PLOTS.values():
        w = o.page.evaluate("""async (src) => { const i = new Image(); i.src = src; await i.decode();
                                                return i.naturalWidth; }""", (page_path.parent / name).as_uri())
        assert w > 0, name
    o.page.screenshot(path=str(shots / "report.png"), full_page=True)
    assert o.errors == [] and o.dialogs == [] and o.refused == [], (o.errors, o.dialogs, o.refused)


def _feedback_page(tmp_path) -> pathlib.Path:
    import test_feedback_math as math
    from grader import feedback
    path = tmp_path / "ada" / "02_softmax.html"
    feedback.write_html(math.math_notebook(), path)
    return path


TYPESET = "() => document.documentElement.getAttribute('data-attn-math') === 'done'"


def test_feedback_maths_rendered_offline(opened, shots, tmp_path):
    o = opened(_feedback_page(tmp_path))
    o.page.wait_for_function(TYPESET, timeout=15_000)
    o.page.evaluate("async () => { await document.fonts.ready; }")
    counts = o.page.evaluate("""() => ({
        katex: document.querySelectorAll('.katex').length,
        display: document.querySelectorAll('.katex-display').length,
        errors: document.querySelectorAll('.katex-error').length,
        fonts: [...document.fonts].filter(f => f.family.replace(/"/g, '').startsWith('KaTeX_') && f.status === 'loaded')
                                  .map(f => f.family.replace(/"/g, '')),
        pwned: window.__pwned === undefined ? null : window.__pwned})""")
    # inline: softmax, x in R^n, the student's y^2, md z_1, the LaTeX output; display: $$...$$, align
    assert counts["katex"] >= 7 and counts["display"] >= 2 and counts["errors"] == 0, counts
    assert "KaTeX_Main" in counts["fonts"] and "KaTeX_Math" in counts["fonts"], counts
    assert counts["pwned"] is None
    # what a reader sees: no maths source left in markdown, literal text left literal
    shown = o.page.evaluate("""() => [...document.querySelectorAll('.jp-RenderedMarkdown:not(.celltag_attn-literal),'
                                   + ' .jp-RenderedLatex')].map(e => {
        const c = e.cloneNode(true); c.querySelectorAll('.katex-mathml').forEach(m => m.remove());
        return c.innerText; }).join('\\n')""")
    for raw in ("$$", "\\frac", "\\mathrm", "$y^2$", "\\begin{align}", "\\alpha"):
        assert raw not in shown, (raw, shown)
    summary = o.page.inner_text(".celltag_attn-literal")
    assert "ada $x$" in summary and "$5 and $6" in summary  # student text, never typeset
    assert "printed $not maths$ stays text" in o.page.inner_text("body")
    o.page.screenshot(path=str(shots / "feedback-math.png"), full_page=True)
    assert o.errors == [] and o.dialogs == [] and o.refused == [], (o.errors, o.dialogs, o.refused)


def test_a_script_past_the_sanitizer_is_blocked_by_the_page_policy(opened, tmp_path):
    path = _feedback_page(tmp_path)
    text = path.read_text(encoding="utf-8")
    planted = path.with_name("planted.html")
    planted.write_text(text.replace("<main>", "<main><script>window.__planted = 1</script>"
                                              "<img src=\"data:,\" onerror=\"window.__planted = 2\">", 1),
                       encoding="utf-8")
    o = opened(planted)
    o.page.wait_for_function(TYPESET, timeout=15_000)  # the page's own scripts still run
    assert o.page.evaluate("() => window.__planted === undefined")
    assert o.page.evaluate("() => document.querySelectorAll('.katex').length") >= 7
    assert any("Content Security Policy" in e for e in o.errors), o.errors
