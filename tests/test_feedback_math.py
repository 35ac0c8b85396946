"""Feedback pages carry their maths renderer: KaTeX, vendored and inlined, no CDN.

A page built from a notebook with inline and display maths must hold no reference to a CDN
(MathJax, require.js, mermaid were loaded from cdnjs), must carry the bundled KaTeX (its
scripts, CSS and every font as a data URI) whose size is counted in the page budget, and must
stay under the cap. Sanitizing stays on: the page's only scripts are the renderer's own, each
allowed by hash in its Content-Security-Policy, and a student's markdown or output gets none in.
The browser half (KaTeX really typesets the maths, offline) is tests/browser/test_browser_pages.py.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import re
import tomllib
import types

import nbformat
import pytest
from bs4 import BeautifulSoup

from grader import feedback

ROOT = pathlib.Path(__file__).resolve().parents[1]
KATEX = ROOT / "grader" / "static" / "katex"
CDN = re.compile(r"cdnjs|jsdelivr|unpkg|googleapis|mathjax|require(\.min)?\.js|mermaid|cloudflare", re.I)
INLINE = r"The softmax is $\mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}$ for $x \in \mathbb{R}^n$."
DISPLAY = r"$$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\left(\frac{QK^\top}{\sqrt{d}}\right) V$$"
HOSTILE = ('A student cell: <script>window.__pwned = 1</script> <img src="x" onerror="window.__pwned = 2"> '
           '<a href="javascript:window.__pwned = 3">link</a> and $y^2$. '
           '[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/x) '
           '<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">')


def _source() -> nbformat.NotebookNode:
    test = nbformat.v4.new_code_cell("check_softmax(softmax)\n### BEGIN HIDDEN TESTS\nassert_secret_thing(softmax)\n"
                                     "### END HIDDEN TESTS", metadata={"nbgrader": {
                                         "grade": True, "solution": False, "locked": True, "points": 1,
                                         "grade_id": "test_softmax", "schema_version": 3}})
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# Softmax\n\n{INLINE}\n\n{DISPLAY}\n\n"
                                      r"\begin{align} a &= b \\ c &= d \end{align}"),
        nbformat.v4.new_code_cell("def softmax(x, dim=-1):\n    return x.exp() / x.exp().sum(dim, keepdim=True)"),
        test])


def math_notebook(extra_cells=(), message="AssertionError: softmax: the price is $5 and $6 failing case: x $a$",
                  max_page=feedback.MAX_PAGE):
    """The feedback notebook of a student with maths in markdown, in outputs and in a message."""
    source = _source()
    cells = [nbformat.from_dict(c) for c in source.cells] + [
        nbformat.v4.new_markdown_cell(HOSTILE),
        nbformat.v4.new_code_cell("show()", outputs=[
            nbformat.v4.new_output("display_data", data={"text/latex": r"$\alpha_t = \beta^2$", "text/plain": "a"}),
            nbformat.v4.new_output("display_data", data={"text/markdown": "md $z_1$", "text/plain": "m"}),
            nbformat.v4.new_output("display_data", data={
                "text/html": "<b>bold</b><script>window.__pwned = 4</script>", "text/plain": "h"}),
            nbformat.v4.new_output("stream", text="printed $not maths$ stays text\n")]),
        *extra_cells]
    tests = [types.SimpleNamespace(grade_id="test_softmax", points=0.0, max_points=1.0, status="error",
                                   message=message)]
    result = types.SimpleNamespace(student_id="ada $x$", status="graded", score=0.0, max_score=1.0,
                                   reason="note with $dollars$", tests=tests, cells=cells)
    return feedback.build(result, "02_softmax", source, max_page=max_page)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("math") / "ada" / "02_softmax.html"
    feedback.write_html(math_notebook(), path)
    return path


def _scripts(soup) -> list[str]:
    return [s.string or "" for s in soup.find_all("script")]


def test_no_cdn_left_in_the_page(page):
    text = page.read_text(encoding="utf-8")
    assert not CDN.search(text), CDN.search(text)
    soup = BeautifulSoup(text, "html.parser")
    assert not [s for s in soup.find_all("script") if s.get("src")]  # nothing loaded: every script inline
    assert not [link for link in soup.find_all("link") if link.get("href")]
    assert "url(fonts/" not in text  # no font file next to the page either
    # no image from elsewhere (the course's Colab badges): its alt text stays; data: images stay
    assert not [i for i in soup.find_all("img") if not str(i.get("src", "data:")).startswith("data:")]
    assert soup.find("img", alt="Open In Colab") and soup.find("img", alt="inline")["src"].startswith("data:image/png")


def test_the_bundled_renderer_is_in_the_page(page):
    text = page.read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    scripts = _scripts(soup)
    assert scripts[:2] == [(KATEX / "katex.min.js").read_text(encoding="utf-8"),
                           (KATEX / "auto-render.min.js").read_text(encoding="utf-8")]
    assert "renderMathInElement" in scripts[2] and len(scripts) == 3  # and nothing else runs
    fonts = sorted(p.name for p in (KATEX / "fonts").glob("*.woff2"))
    assert len(fonts) == 20 and text.count("data:font/woff2;base64,") == len(fonts)
    assert base64.b64encode((KATEX / "fonts" / "KaTeX_Main-Regular.woff2").read_bytes()).decode() in text
    assert ".katex{" in text.replace(" ", "")  # its CSS
    assert 'version:"0.19.1"' in scripts[0] and "0.19.1" in (KATEX / "README.md").read_text()
    assert (KATEX / "LICENSE").read_text().startswith("The MIT License")


def test_the_maths_is_left_for_the_renderer_and_markdown_is_markdown(page):
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    markdown = " ".join(d.get_text() for d in soup.select(".jp-RenderedMarkdown"))
    assert "$\\mathrm{softmax}(x)_i = \\frac{e^{x_i}}{\\sum_j e^{x_j}}$" in markdown
    assert DISPLAY in markdown and "\\begin{align}" in markdown
    assert soup.select_one(".jp-RenderedLatex").get_text().strip() == r"$\alpha_t = \beta^2$"
    # nbconvert's own sanitizer escaped every <p>, heading and table; they are markup again
    assert soup.select(".jp-RenderedMarkdown p") and soup.select(".jp-RenderedMarkdown h1")
    assert "&lt;p&gt;" not in page.read_text(encoding="utf-8")
    assert soup.select_one(".celltag_attn-literal table")  # the summary's table, which is never typeset


def test_sanitizing_is_still_on_and_only_the_renderer_runs(page):
    text = page.read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    assert "__pwned = 1" not in "".join(_scripts(soup)) and "__pwned = 4" not in "".join(_scripts(soup))
    for tag in soup.find_all(True):
        assert not [a for a in tag.attrs if a.lower().startswith("on")], tag
        assert not str(tag.get("href", "")).lower().startswith("javascript:"), tag
    csp = soup.find("meta", attrs={"http-equiv": "Content-Security-Policy"})["content"]
    hashes = set(re.findall(r"'sha256-([A-Za-z0-9+/=]+)'", csp))
    assert hashes == {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in _scripts(soup)}
    script_src = re.search(r"script-src ([^;]*)", csp).group(1)
    assert "unsafe-inline" not in script_src and "default-src 'none'" in csp
    assert text.index("Content-Security-Policy") < text.index("<script")


def test_the_page_stays_under_the_cap_with_the_renderer_counted(page, tmp_path):
    assert page.stat().st_size <= feedback.MAX_PAGE
    overhead = feedback.math_overhead()
    assert feedback.reserve() == feedback.PAGE_RESERVE + overhead
    assert 400_000 < overhead < 900_000  # what the report says: about 650 KB
    # a page of many large images: within a 2 MB cap, renderer included, every cell still there
    image = base64.b64encode(b"\x89PNG" + bytes(200_000)).decode()
    plots = [nbformat.v4.new_code_cell(f"plot({i})", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": image, "text/plain": "<Figure>"})
        for _ in range(3)]) for i in range(20)]
    nb = math_notebook(plots, max_page=2_000_000)
    small = tmp_path / "small.html"
    feedback.write_html(nb, small, max_page=2_000_000)
    text = small.read_text(encoding="utf-8")
    assert small.stat().st_size <= 2_000_000 and "renderMathInElement" in text
    assert "images not shown" in nb.cells[0].source and "whole cell" not in nb.cells[0].source
    shown = BeautifulSoup(text, "html.parser").get_text()
    assert all(f"plot({i})" in shown for i in range(20))


def test_a_cap_below_the_renderer_still_holds(tmp_path):
    nb = math_notebook()
    path = tmp_path / "tiny.html"
    feedback.write_html(nb, path, max_page=300_000)
    assert path.stat().st_size <= 300_000 and "Feedback: 02_softmax" in path.read_text(encoding="utf-8")


def test_student_text_in_the_summary_is_not_typeset():
    nb = math_notebook()
    summary = nb.cells[0]
    assert summary.metadata["tags"] == [feedback.LITERAL_TAG]
    assert "\\$x\\$" in summary.source and "\\$5 and \\$6" in summary.source
    assert f".celltag_{feedback.LITERAL_TAG}" in feedback.math_head()


def test_pyproject_ships_the_static_files():
    """Every vendored file matches a package-data pattern of the grader package."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["grader"]
    files = [p.relative_to(ROOT / "grader") for p in (ROOT / "grader" / "static").rglob("*") if p.is_file()]
    assert len(files) >= 25
    for f in files:
        assert any(f.match(p) for p in patterns), f
