"""The course website (``bash site/build.sh``) in real Chromium, served the way the README says
(``python -m http.server`` on 127.0.0.1), with every request to any other host refused and
recorded. For every page of the built site:

- it loads (HTTP 200) without a console error, a page error or a failed request of its own;
- no request leaves 127.0.0.1 (the page must work in a classroom without internet);
- every image is rendered (``naturalWidth > 0``), and the page of every notebook whose executed
  copy has a figure shows at least one;
- maths is typeset by the site's KaTeX: every ``.math`` element holds KaTeX output, no raw
  ``$$``, ``\\(``, ``\\[`` or ``\\begin{`` is left in the text, KaTeX's own font is loaded, and
  every page whose source has maths shows some;
- notebook pages: code is highlighted, every exercise solution cell is folded, no hidden test
  is shown, and the two download links serve the student and solution notebooks byte for byte;
- one full-page screenshot, ``site-<page>.png``, lands in the screenshot folder (conftest.py).

Then every internal link of every page resolves: HTTP 200, and its ``#anchor`` exists on the
target page. ``test_the_checks_catch_a_broken_page`` runs the same checks on a page broken on
purpose (a CDN script, a console error, a missing image, maths left raw, dead links) and on
its intact original, so a check that cannot fail would show.

Not skippable in CI: ``.ci/run`` builds the site in a step of its own and sets
``ATTN_SITE_REQUIRED=1``; then a missing or stale site, or a missing Chromium, fails here.
Without that variable the test builds the site itself (cached: quick when nothing changed).
"""

from __future__ import annotations

import hashlib
import html.parser
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import nbformat
import pytest

from grader import course

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]

CHROMIUM = os.environ.get("ATTN_CHROMIUM", "/usr/bin/chromium")  # as conftest.py
REPO = course.REPO
HTML = REPO / "site" / "_build" / "html"
REQUIRED = os.environ.get("ATTN_SITE_REQUIRED") == "1"
RAW_MATH = ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{", "\\frac")


def browser_missing() -> str | None:
    """Why Chromium cannot run here, or None (conftest.py's test, which its fixtures skip on)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium with apt-get)"
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (requirements.txt pins it)"
    return None


def _builder():
    """site/build.py as a module (its key function tells whether the built site is current)."""
    spec = importlib.util.spec_from_file_location("attn_site_build", REPO / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ what the sources say ----

def _markdown_has_maths(text: str) -> bool:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return bool(re.search(r"\$\$.+?\$\$|\$[^$\n]+\$", text, re.S))


def expectations(stamp: dict) -> dict[str, dict]:
    """Per page, from the sources (and the executed notebooks' outputs for figures)."""
    out = {page: {"notebook": False, "maths": False, "figure": False, "solutions": 0} for page in stamp["pages"]}
    for name in stamp["notebooks"]:
        nb = nbformat.read(REPO / "solutions" / f"{name}.ipynb", as_version=4)
        out[name] = {
            "notebook": True,
            "maths": any(c.cell_type == "markdown" and _markdown_has_maths(c.source) for c in nb.cells),
            "figure": stamp["figures"][name],
            "solutions": sum(1 for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")),
        }
    return out


# ------------------------------------------------------------------------------ fixtures ----

@pytest.fixture(scope="session")  # session: set up before conftest's session fixtures, which skip
def stamp():
    """The built site's record, current for these sources (built here unless CI built it)."""
    missing = browser_missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"ATTN_SITE_REQUIRED is set but the browser cannot run: {missing}")
        pytest.skip(missing)
    if not REQUIRED:
        proc = subprocess.run(["bash", str(REPO / "site" / "build.sh")], cwd=REPO, capture_output=True, text=True,
                              timeout=3600, env=dict(os.environ, PYTHON=sys.executable))
        assert proc.returncode == 0, f"bash site/build.sh failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    path = HTML / "attn-site.json"
    if not path.is_file():
        pytest.fail(f"no built site at {HTML} (.ci/run builds it in its 'site' step: bash site/build.sh)")
    data = json.loads(path.read_text())
    build = _builder()
    fingerprint = build.library_fingerprint()
    current = {n: build.notebook_key(n, fingerprint) for n in build.notebook_names()}
    stale = sorted(set(current) ^ set(data["notebooks"]) | {n for n in current if data["notebooks"].get(n) != current[n]})
    assert not stale, f"the built site is stale for {stale}: run bash site/build.sh"
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m http.server`` on 127.0.0.1 over a folder, as the README tells a classroom."""

    def __init__(self, root: pathlib.Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(root)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.base, timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("python -m http.server did not answer in 30 s")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def chromium(stamp, chromium):
    """conftest's Chromium, once the site's record is read: a missing site fails before a browser starts."""
    return chromium


# ----------------------------------------------------------------------------- the checks ----

_PAGE_FACTS = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) { img.loading = "eager"; }
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  await document.fonts.ready;
  const article = document.querySelector("article") || document.body;
  const text = article.cloneNode(true);
  text.querySelectorAll("pre, code, script, style, textarea, .katex, .highlight").forEach(e => e.remove());
  const maths = Array.from(document.querySelectorAll(".math"));
  const hidden = Array.from(document.querySelectorAll(".cell.tag_hide-input"));
  return {
    images: imgs.map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth, figure: !!i.closest(".cell_output, .output")})),
    maths: maths.length,
    untypeset: maths.filter(m => !m.querySelector(".katex")).map(m => m.textContent.slice(0, 60)),
    katex: document.querySelectorAll(".katex").length,
    katexFont: Array.from(document.fonts).some(f => f.family.replace(/"/g, "").startsWith("KaTeX_") && f.status === "loaded"),
    text: text.textContent,
    highlighted: document.querySelectorAll(".cell_input .highlight span[class]").length,
    folded: hidden.map(c => { const d = c.querySelector("details"); return d ? !d.open : false; }),
    downloads: Array.from(document.querySelectorAll("a.download.internal")).map(a => a.href),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    height: document.documentElement.scrollHeight,
  };
}"""


class Visitor:
    """One Chromium context on a served site; ``visit(page)`` returns the page's problems and
    its facts. Requests to any other origin are refused and recorded as problems."""

    def __init__(self, browser, server: Server, shots: pathlib.Path | None):
        self.base, self.shots = server.base, shots
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                                           service_workers="block")
        self.events: list[str] = []

        def route(r):
            if r.request.url.startswith(self.base):
                r.continue_()
            else:
                self.events.append(f"a request left 127.0.0.1: {r.request.url}")
                r.abort()
        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.events.append(f"console error: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.events.append(f"page error: {e}"))
        self.page.on("response", lambda r: self.events.append(f"HTTP {r.status} for {r.url}")
                     if r.status >= 400 and r.url.startswith(self.base) else None)
        self.page.on("requestfailed", lambda r: self.events.append(f"request failed: {r.url} ({r.failure})")
                     if r.url.startswith(self.base) else None)

    def visit(self, page: str, expect: dict) -> tuple[list[str], dict]:
        self.events.clear()
        problems = []
        response = self.page.goto(f"{self.base}{page}.html", wait_until="load")
        if response is None or response.status != 200:
            return [f"{page}.html: HTTP {response.status if response else 'no response'}"], {"links": []}
        try:
            self.page.wait_for_function("() => document.documentElement.dataset.attnMath === 'done'", timeout=15_000)
        except Exception:
            problems.append("the maths script never finished (data-attn-math is not 'done')")
        facts = self.page.evaluate(_PAGE_FACTS)
        if self.shots is not None:
            self.page.screenshot(path=str(self.shots / f"site-{page}.png"), full_page=True)
        problems += list(self.events)

        problems += [f"image not rendered: {i['src']}" for i in facts["images"] if i["width"] == 0]
        if expect["figure"] and not any(i["width"] > 0 and i["figure"] for i in facts["images"]):
            problems.append("the notebook draws a figure but the page shows none")
        problems += [f"maths not typeset: {t!r}" for t in facts["untypeset"]]
        problems += [f"raw maths left in the text: {s!r} near {facts['text'][max(0, facts['text'].find(s) - 40):facts['text'].find(s) + 40]!r}"
                     for s in RAW_MATH if s in facts["text"]]
        if expect["maths"] and not facts["katex"]:
            problems.append("the source has maths but the page shows no KaTeX output")
        if facts["katex"] and not facts["katexFont"]:
            problems.append("KaTeX's fonts did not load")
        if expect["notebook"]:
            if not facts["highlighted"]:
                problems.append("no highlighted code")
            if len(facts["folded"]) != expect["solutions"] or not all(facts["folded"]):
                problems.append(f"{expect['solutions']} exercise solution cells, {sum(facts['folded'])} folded "
                                f"of {len(facts['folded'])} foldable")
            if "BEGIN HIDDEN TESTS" in facts["text"] or "BEGIN SOLUTION" in facts["text"]:
                problems.append("nbgrader markers (hidden tests or solution marks) are shown")
            problems += self._downloads(page, facts["downloads"])
        return [f"{page}: {p}" for p in problems], facts

    def _downloads(self, page: str, hrefs: list[str]) -> list[str]:
        want = [REPO / "notebooks" / f"{page}.ipynb", REPO / "solutions" / f"{page}.ipynb"]
        got = [h for h in hrefs if h.endswith(f"/{page}.ipynb")]
        if len(got) != 2:
            return [f"want 2 download links to {page}.ipynb (student, solution), found {len(got)}"]
        out = []
        for href, path in zip(got, want):
            with urllib.request.urlopen(href, timeout=10) as r:
                if hashlib.sha256(r.read()).digest() != hashlib.sha256(path.read_bytes()).digest():
                    out.append(f"{href} is not {path.relative_to(REPO)}")
        return out

    def close(self):
        self.context.close()


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)


def check_links(links: dict[str, set[str]], base: str) -> list[str]:
    """Every internal link (``{url: pages linking to it}``) answers 200 and its anchor exists."""
    problems, ids = [], {}
    for url in sorted(links):
        doc, _, fragment = url.partition("#")
        if doc not in ids:
            try:
                with urllib.request.urlopen(doc, timeout=10) as r:
                    body = r.read()
                    parser = _Ids()
                    if "html" in r.headers.get("Content-Type", ""):
                        parser.feed(body.decode("utf-8", "replace"))
                    ids[doc] = parser.ids
            except urllib.error.HTTPError as e:
                ids[doc] = None
                problems.append(f"HTTP {e.code} for {doc[len(base):]} (linked from {', '.join(sorted(links[url])[:3])})")
        if ids[doc] is not None and fragment and urllib.parse.unquote(fragment) not in ids[doc]:
            problems.append(f"no #{fragment} in {doc[len(base):]} (linked from {', '.join(sorted(links[url])[:3])})")
    return problems


def visit_all(browser, root: pathlib.Path, pages: list[str], expect: dict, shots) -> tuple[dict, dict, float]:
    """{page: problems}, {internal url: pages linking to it}, seconds."""
    t0 = time.monotonic()
    server = Server(root)
    visitor = None
    try:
        visitor = Visitor(browser, server, shots)
        problems, links = {}, {}
        for page in pages:
            problems[page], facts = visitor.visit(page, expect[page])
            for href in facts["links"]:
                if href.startswith(server.base):
                    links.setdefault(href, set()).add(page)
        problems["(links)"] = check_links(links, server.base)
        return problems, links, time.monotonic() - t0
    finally:
        if visitor is not None:
            visitor.close()
        server.stop()


# ------------------------------------------------------------------------------- the tests ----

@pytest.fixture(scope="module")
def visited(stamp, chromium, shots):
    pages = sorted(p.stem for p in HTML.glob("*.html"))
    expect = expectations(stamp)
    for extra in set(pages) - set(expect):  # genindex, search: Sphinx's own pages
        expect[extra] = {"notebook": False, "maths": False, "figure": False, "solutions": 0}
    problems, links, seconds = visit_all(chromium, HTML, pages, expect, shots)
    print(f"site: {len(pages)} pages, {len(links)} internal links, {seconds:.1f} s; screenshots site-*.png in {shots}")
    return {"pages": pages, "problems": problems, "links": links, "shots": shots}


@pytest.mark.timeout(3600)
def test_every_notebook_and_guide_has_a_page(stamp, visited):
    names = sorted(p.stem for p in (REPO / "solutions").glob("*.ipynb"))
    assert sorted(stamp["notebooks"]) == names
    missing = sorted(set(stamp["pages"]) - set(visited["pages"]))
    assert not missing, f"pages not built: {missing}"
    assert set(names) <= set(visited["pages"])
    for page in ("index", "learner-path", "gpu-labs", "instructor-guide"):
        assert page in visited["pages"], page


def test_every_page_loads_offline_with_figures_and_typeset_maths(visited):
    bad = {page: p for page, p in visited["problems"].items() if p and page != "(links)"}
    assert not bad, "\n".join(line for p in bad.values() for line in p)


def test_every_internal_link_resolves(visited):
    assert len(visited["links"]) > 100  # the navigation alone links every page from every page
    assert not visited["problems"]["(links)"], "\n".join(visited["problems"]["(links)"])


def test_a_screenshot_per_page(visited):
    for page in visited["pages"]:
        shot = visited["shots"] / f"site-{page}.png"
        assert shot.is_file() and shot.stat().st_size > 10_000, shot


# A page broken in every way the checks look for; and its intact original as the control.
_BREAKAGE = [
    ("</head>", '<script src="https://cdn.jsdelivr.net/npm/katex@0.19.1/dist/katex.min.js"></script></head>'),
    ("</body>", '<script>console.error("planted error")</script></body>'),
    ('<article class="bd-article">', '<article class="bd-article"><p><a href="nowhere.html">dead</a> '
     '<a href="broken.html#no-such-anchor">no anchor</a> planted $$x^2$$ left raw</p>'),
]


def test_the_checks_catch_a_broken_page(stamp, chromium, tmp_path):
    page = next(n for n in sorted(stamp["notebooks"]) if stamp["figures"][n])
    root = tmp_path / "html"
    shutil.copytree(HTML, root)
    text = (root / f"{page}.html").read_text(encoding="utf-8")
    for old, new in _BREAKAGE:
        assert old in text
        text = text.replace(old, new, 1)
    text = re.sub(r'(<img[^>]*src=")_images/[^"]+"', r'\1_images/missing.png"', text)  # every figure gone
    text = text.replace('class="math notranslate nohighlight"', 'class="nomath"')  # maths left untypeset
    (root / "broken.html").write_text(text, encoding="utf-8")
    expect = expectations(stamp)[page]
    problems, _, _ = visit_all(chromium, root, [page, "broken"], {page: expect, "broken": expect}, None)

    assert problems[page] == []  # the intact page passes
    found = "\n".join(problems["broken"] + problems["(links)"])
    for wanted in ("a request left 127.0.0.1: https://cdn.jsdelivr.net", "console error: planted error",
                   "image not rendered", "draws a figure but the page shows none", "raw maths left in the text: '$$'",
                   "raw maths left in the text: '\\\\('", "no KaTeX output", "HTTP 404 for nowhere.html",
                   "no #no-such-anchor in broken.html", "/_images/missing.png"):
        assert wanted in found, f"{wanted!r} not reported; got:\n{found}"
