#!/usr/bin/env python3
"""Build the course website: every solution notebook executed, with the README's guides, as one
Jupyter Book (1.x: Sphinx, MyST-NB, sphinx-book-theme) that works from a file server offline.

    bash site/build.sh            # the one documented command (runs this file under nice)
    python -m http.server -d site/_build/html 8000

What it does, in order:

1. **Execute** (``site/execute.py``) every ``solutions/*.ipynb`` (outputs are never committed) on a fresh kernel, in the
   test suite's environment: one thread (``OMP_NUM_THREADS=1``), Triton's interpreter, no GPU,
   matplotlib's inline backend (figures that ``plt.show()`` draws reach the page, as in the
   grader's kernel), widgets as their still figure (``ATTNKIT_WIDGETS=0``), 120 s per cell (the
   grader's default), ``--jobs`` notebooks at a time (2: the CI machine's cores), each in a
   worker process of its own. A notebook is executed again only when its key changed: the
   notebook's bytes, every file of ``attnkit/``, the versions of the stack and this executor's
   settings (``site/_build/executed/``). A notebook that raises, or a cell that times out,
   fails the build with the notebook's name and cell; the others are kept for the next build.
2. **Stage** the book's sources in ``site/_build/src/``: the executed notebooks (exercise cells
   folded, hidden tests left out, widget views left out: attnkit's explorers drew their still
   figure; the Colab badges turned into plain links plus download links to the student and
   solution notebooks: a badge image is a request to another host), pages cut
   from the README by heading (the learner path, the GPU labs, the shipped model, the instructor
   guide) and ``docs/*.md``, the table of contents, and KaTeX from ``grader/static/katex`` (the
   renderer the grader's feedback pages use) in ``_static``. Only files whose bytes changed are
   rewritten, so Sphinx rebuilds only what changed.
3. **Build** with Jupyter Book into ``site/_build/html`` (no execution there: the notebooks come
   executed; a Sphinx warning fails the build unless ``--lenient``), maths rendered in the
   browser by the local KaTeX (``site/_ext/attn_site.py``), never MathJax from a CDN, and
   without sphinx-thebe (its "run this page" button loads Thebe from a CDN).
4. **Audit** the HTML: no script, style sheet, font, image or frame from another host, every
   notebook has its page; then write ``site/_build/html/attn-site.json`` (pages, keys, times),
   which ``tests/browser/test_site.py`` reads.

Exit status: 0 built; 1 a notebook failed (its name is printed) or the build or audit failed.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import pathlib
import re
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # site/: execute.py beside this file
from execute import (CELL_TIMEOUT, EXECUTED, KERNEL_ENV, SOLUTIONS, execute_all, library_fingerprint,  # noqa: E402
                     log, notebook_key, notebook_names)  # the key's parts, re-exported for the tests

REPO = pathlib.Path(__file__).resolve().parent.parent
SITE = REPO / "site"
BUILD = SITE / "_build"
SRC = BUILD / "src"
HTML = BUILD / "html"
DOCTREES = BUILD / ".doctrees"
STAMP_NAME = "attn-site.json"
NOTEBOOKS = REPO / "notebooks"
KATEX = REPO / "grader" / "static" / "katex"

GITHUB = "attention-course/attention-course"  # attnkit.env.COURSE_REPO (read without importing torch)
TITLE = "The attention course"

# Pages cut from the README: (page, heading it starts at, subsections left out, nav title).
# A heading is matched by its start; a missing one fails the build, so the README can be
# reorganised but never silently drop a page.
README_PAGES = [
    ("learner-path", "Taking the course", ("GPU labs", "The shipped model"), "Taking the course"),
    ("gpu-labs", "GPU labs", (), "GPU labs"),
    ("shipped-model", "The shipped model", (), "The shipped model"),
    ("instructor-guide", "For instructors", (), "For instructors: grading"),
]
HOME_SECTIONS = ("Quick start", "The course as a website")  # after the README's preamble, on the home page
# Notebook groups in the navigation, by the notebook's number (a new number lands in the last group).
GROUPS = [
    ("Foundations", ("00", "01", "02", "03", "04", "05", "06")),
    ("Models", ("07",)),
    ("Inference and efficient attention", ("08", "09")),
    ("GPU kernels and beyond one device", ("10", "11", "12", "13")),
    ("Attention in today's models", ()),
]

BADGE = re.compile(r"\[!\[[^\]]*\]\((https?://[^)\s]*colab-badge[^)\s]*)\)\]\((https?://[^)\s]+)\)")
EXTERNAL_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:https?:)?//[^)\s]+\)")


def log(msg: str) -> None:
    print(msg, flush=True)

# -------------------------------------------------------------------------- 2. staging ----

def write_if_changed(path: pathlib.Path, data: bytes | str) -> bool:
    data = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _release_tag() -> str:
    """v<attnkit version>, read from pyproject.toml (no torch import at build time)."""
    import tomllib
    return "v" + tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def colab_url(kind: str, name: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB}/blob/{_release_tag()}/{kind}/{name}.ipynb"


def github_url(path: str) -> str:
    return f"https://github.com/{GITHUB}/blob/{_release_tag()}/{path}"


HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*(\n|$)", re.S | re.M)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SOLUTION_MARK = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*(\n|$)", re.M)


def page_notebook(name: str, executed: pathlib.Path):
    """The executed notebook as its page shows it."""
    import nbformat
    nb = nbformat.read(executed, as_version=4)
    intro = nb.cells[0]
    links = (
        f"**Exercises** (the student notebook): [open in Colab]({colab_url('notebooks', name)}) · "
        f"{{download}}`download <_notebooks/student/{name}.ipynb>`  \n"
        f"**Solutions** (this notebook, outputs cleared): [open in Colab]({colab_url('solutions', name)}) · "
        f"{{download}}`download <_notebooks/solutions/{name}.ipynb>`  \n"
        "*On this page the notebook has been run on a CPU (one thread, Triton's interpreter, widgets as their "
        "still figure); the exercise solutions are folded: click* Show code cell source *to open one.*")
    lines = intro.source.splitlines()
    badge_lines = [i for i, l in enumerate(lines) if BADGE.search(l)]
    if intro.cell_type != "markdown" or not badge_lines:
        raise SystemExit(f"error: notebook {name}: its first cell has no Colab badges to turn into links")
    lines[badge_lines[0]:badge_lines[-1] + 1] = links.splitlines()
    intro.source = "\n".join(lines)
    for cell in nb.cells:
        grading = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "markdown":
            cell.source = EXTERNAL_IMAGE.sub(lambda m: m.group(1), BADGE.sub(r"[Colab](\2)", cell.source))
        if cell.cell_type != "code":
            continue
        # A widget view cannot render on a static page; what is left of one is the text of its
        # first state (a progress bar at 0%). attnkit's explorers drew their still figure instead.
        cell.outputs = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
        if grading.get("solution"):
            cell.source = SOLUTION_MARK.sub("", cell.source).rstrip("\n")
            tags = cell.metadata.setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
        if grading.get("grade"):
            cell.source = HIDDEN.sub("", cell.source).rstrip("\n")
    nb.metadata.pop("widgets", None)  # widget state would make myst-nb load the widget manager
    return nb


def _markdown_lines(text: str):
    """(line, is_heading_level or 0) with fenced code skipped for headings."""
    fence = None
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            yield line, 0
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            yield line, 0
            continue
        h = re.match(r"^(#{1,6})\s+\S", line)
        yield line, (len(h.group(1)) if h else 0)


def readme_sections(text: str) -> list[tuple[int, str, int, int]]:
    """(level, title, first line, end line) of every heading, outside code fences."""
    lines = list(_markdown_lines(text))
    heads = [(i, lvl, line.lstrip("#").strip()) for i, (line, lvl) in enumerate(lines) if lvl]
    out = []
    for j, (i, lvl, title) in enumerate(heads):
        end = next((k for k, l2, _ in heads[j + 1:] if l2 <= lvl), len(lines))
        out.append((lvl, title, i, end))
    return out


def cut(text: str, heading: str, without: tuple[str, ...] = (), top: int = 1) -> str:
    """The README section whose title starts with ``heading``, minus the subsections whose titles
    start with one of ``without``, its headings shifted so that it starts at level ``top``."""
    lines = text.splitlines()
    sections = readme_sections(text)
    found = [s for s in sections if s[1].startswith(heading)]
    if not found:
        raise SystemExit(f"error: the README has no section '{heading}' (site/build.py: README_PAGES)")
    lvl, _, start, end = found[0]
    keep = set(range(start, end))
    for name in without:
        sub = [s for s in sections if s[1].startswith(name) and start < s[2] < end]
        if not sub:
            raise SystemExit(f"error: the README section '{heading}' has no subsection '{name}'")
        keep -= set(range(sub[0][2], sub[0][3]))
    shift = lvl - top
    out = []
    for i, (line, hl) in enumerate(_markdown_lines(text)):
        if i in keep:
            out.append(("#" * (hl - shift) + line[hl:]) if hl else line)
    return "\n".join(out).strip() + "\n"


def preamble(text: str) -> str:
    first = next(s[2] for s in readme_sections(text) if s[0] == 2)
    return "\n".join(text.splitlines()[:first]).strip() + "\n"


def site_markdown(text: str, here: str, names: list[str], page_of: dict[str, str]) -> str:
    """README (or docs/) markdown as a page of the site: badge images become plain links (an
    image from another host is a request the offline page cannot make), links to repository
    files point at the release on GitHub unless the file is a page of the site, and the notebook
    table links each row to its page. ``here``: the folder the text's links are relative to."""
    text = BADGE.sub(r"[Colab](\2)", text)
    text = EXTERNAL_IMAGE.sub(lambda m: m.group(1), text)

    def link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo_path = os.path.normpath(os.path.join(here, path)).replace(os.sep, "/")
        if repo_path in page_of:
            return f"[{label}]({page_of[repo_path]}{'#' + anchor if anchor else ''})"
        return f"[{label}]({github_url(repo_path)}{'#' + anchor if anchor else ''})"
    text = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", link, text)

    def row(m: re.Match) -> str:  # after the links: these are pages, not repository files
        line = m.group(0)
        nm = re.search(r"/notebooks/([\w-]+)\.ipynb", line)
        if nm and nm.group(1) in names:
            line = re.sub(r"^\|\s*([^|]+?)\s*\|", lambda c: f"| [{c.group(1)}]({nm.group(1)}.ipynb) |", line, count=1)
        return line
    return re.sub(r"^\|[^\n]*colab\.research\.google\.com/[^\n]*/notebooks/[^\n]*$", row, text, flags=re.M)


def group_of(name: str) -> str:
    number = re.match(r"\d+", name).group(0)
    for title, numbers in GROUPS:
        if number in numbers:
            return title
    return GROUPS[-1][0]


def stage(names: list[str]) -> dict:
    """Write the book's sources into site/_build/src; returns what the stamp records."""
    import nbformat
    import yaml

    SRC.mkdir(parents=True, exist_ok=True)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docs = sorted((REPO / "docs").glob("*.md"))
    page_of = {f"docs/{d.name}": f"{d.stem}.md" for d in docs}
    page_of.update({f"solutions/{n}.ipynb": f"{n}.ipynb" for n in names})
    page_of["README.md"] = "index.md"
    wanted = set()

    def put(rel: str, data) -> None:
        wanted.add(rel)
        write_if_changed(SRC / rel, data)

    # the notebooks, and the student and solution notebooks to download
    for name in names:
        nb = page_notebook(name, EXECUTED / f"{name}.ipynb")
        put(f"{name}.ipynb", nbformat.writes(nb) + "\n")
        put(f"_notebooks/student/{name}.ipynb", (NOTEBOOKS / f"{name}.ipynb").read_bytes())
        put(f"_notebooks/solutions/{name}.ipynb", (SOLUTIONS / f"{name}.ipynb").read_bytes())

    # the README's pages
    home = [preamble(readme)] + [cut(readme, h, top=2) for h in HOME_SECTIONS]
    home.append("## Contents\n\n" + "\n".join(
        [f"- [{title}]({page}.md)" for page, _, _, title in README_PAGES[:3]]
        + [f"- the notebooks, executed: [{names[0]}]({names[0]}.ipynb) to [{names[-1]}]({names[-1]}.ipynb)"]
        + [f"- [{README_PAGES[3][3]}]({README_PAGES[3][0]}.md)"]
        + [f"- [{d.stem.replace('-', ' ').capitalize()}]({d.stem}.md)" for d in docs]) + "\n")
    put("index.md", site_markdown("\n".join(home), ".", names, page_of))
    for page, heading, without, _ in README_PAGES:
        put(f"{page}.md", site_markdown(cut(readme, heading, without), ".", names, page_of))
    for d in docs:
        put(f"{d.stem}.md", site_markdown(d.read_text(encoding="utf-8"), "docs", names, page_of))

    # KaTeX, as vendored for the grader (fonts: the woff2 files only, which is all it ships)
    for f in ("katex.min.js", "auto-render.min.js", "LICENSE"):
        put(f"_static/katex/{f}", (KATEX / f).read_bytes())
    css = (KATEX / "katex.min.css").read_text(encoding="utf-8")
    css, n = re.subn(r'(src:url\(fonts/KaTeX_[A-Za-z0-9_-]+\.woff2\) format\("woff2"\))[^;}]*', r"\1", css)
    if not n:
        raise SystemExit(f"error: {KATEX / 'katex.min.css'}: no @font-face rule with a woff2 font")
    put("_static/katex/katex.min.css", css)
    for font in sorted((KATEX / "fonts").glob("*.woff2")):
        put(f"_static/katex/fonts/{font.name}", font.read_bytes())
    for f in sorted((SITE / "static").iterdir()):
        put(f"_static/{f.name}", f.read_bytes())

    # table of contents and configuration
    parts = [{"caption": "Taking the course",
              "chapters": [{"file": p} for p, *_ in README_PAGES[:3]] + [{"file": d.stem} for d in docs]}]
    for title, _ in GROUPS:
        members = [n for n in names if group_of(n) == title]
        if members:
            parts.append({"caption": title, "chapters": [{"file": n} for n in members]})
    parts.append({"caption": "For instructors", "chapters": [{"file": README_PAGES[3][0]}]})
    toc = {"format": "jb-book", "root": "index", "parts": parts}
    put("_toc.yml", yaml.safe_dump(toc, sort_keys=False))
    put("_config.yml", yaml.safe_dump(book_config(), sort_keys=False))

    # whatever an earlier build staged and this one does not (a notebook renamed, a page dropped)
    for path in sorted(SRC.rglob("*"), reverse=True):
        rel = path.relative_to(SRC).as_posix()
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    pages = ["index"] + [p for p, *_ in README_PAGES] + [d.stem for d in docs] + names
    return {"pages": pages}


def book_config() -> dict:
    return {
        "title": TITLE,
        "author": "the attention course",
        "copyright": "the attention course, MIT licence",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", "_notebooks", "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off"},  # executed by site/build.py, keyed and cached
        "parse": {
            "myst_enable_extensions": ["amsmath", "colon_fence", "dollarmath", "substitution", "tasklist"],
            "myst_url_schemes": ["mailto", "http", "https"],
        },
        "html": {
            "use_repository_button": True,
            "use_issues_button": False,
            "use_edit_page_button": False,
            "home_page_in_navbar": True,
            "use_multitoc_numbering": False,
            "extra_footer": "Built from the solution notebooks, executed at build time; "
                            "maths by KaTeX, served from this site.",
        },
        "launch_buttons": {"notebook_interface": "jupyterlab"},
        "repository": {"url": f"https://github.com/{GITHUB}", "branch": _release_tag(), "path_to_book": "solutions"},
        "latex": {"use_jupyterbook_latex": False},
        "sphinx": {
            "local_extensions": {"attn_site": str(SITE / "_ext")},
            "recursive_update": True,
            "config": {
                "html_math_renderer": "attn_katex",  # site/_ext/attn_site.py: KaTeX from _static
                # (Jupyter Book passes only some of parse:'s keys on; these go to Sphinx directly)
                "myst_dmath_double_inline": True,  # $$...$$ inside a paragraph, as Jupyter renders it
                "myst_heading_anchors": 3,
                "nb_ipywidgets_js": {},  # never the widget manager from a CDN
                # a widget view (a tqdm bar) shows its text fallback; the still figure is already there
                "nb_mime_priority_overrides": [["html", "application/vnd.jupyter.widget-view+json", None],
                                               ["html", "application/vnd.jupyter.widget-state+json", None]],
                "nb_merge_streams": True,
                # a fence without a language (an ASCII diagram, a CSV) is text, not Python guessed
                "highlight_language": "text",
                "html_theme_options": {"use_download_button": True, "show_toc_level": 2,
                                       "use_fullscreen_button": False},
                # a light page: the figures are drawn on white (and an empty mode is a console error)
                "html_context": {"default_mode": "light"},
                "html_show_sourcelink": False,
                "suppress_warnings": ["mystnb.unknown_mime_type"],
            },
        },
    }


# ---------------------------------------------------------------------- 3. build, 4. audit ----

# Jupyter Book's extensions less sphinx_thebe (a "run this page" button whose script comes from
# unpkg.com, and whose inline set-up is written twice: a page error on every page); plus this
# site's own. (sphinx_comments stays: it adds nothing while Hypothesis and utterances are off.)
DROPPED_EXTENSIONS = ("sphinx_thebe",)


def build_html(strict: bool) -> None:
    from jupyter_book.config import get_default_sphinx_config
    from jupyter_book.sphinx import build_sphinx
    extensions = [e for e in get_default_sphinx_config()["extensions"] if e not in DROPPED_EXTENSIONS] + ["attn_site"]
    result = build_sphinx(SRC, HTML, noconfig=True, path_config=str(SRC / "_config.yml"),
                          confoverrides={"external_toc_path": (SRC / "_toc.yml").as_posix(),
                                         "latex_individualpages": False, "extensions": extensions},
                          doctreedir=DOCTREES, warningiserror=strict, keep_going=strict, quiet=True)
    if result != 0:
        raise SystemExit(f"error: Sphinx failed ({result}); the warnings above say where")


class _Resources(html.parser.HTMLParser):
    """Every URL an HTML page makes the browser fetch (not the links a reader may follow)."""

    FETCHED = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
               "video": ("src", "poster"), "audio": ("src",), "embed": ("src",), "object": ("data",),
               "input": ("src",)}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in self.FETCHED.get(tag, ()):
            if a.get(attr):
                self.urls.extend(u.strip().split()[0] for u in a[attr].split(",") if u.strip())
        if tag == "link" and a.get("href") and set((a.get("rel") or "").lower().split()) & {
                "stylesheet", "preload", "prefetch", "preconnect", "dns-prefetch", "icon", "modulepreload", "manifest"}:
            self.urls.append(a["href"])
        if a.get("style"):
            self.styles.append(a["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _remote(url: str) -> bool:
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url.strip(), re.I)) and not url.startswith("file:")


def audit(names: list[str], pages: list[str]) -> list[str]:
    """What would make the site reach another host when viewed, or miss a page."""
    problems = []
    for page in pages:
        if not (HTML / f"{page}.html").is_file():
            problems.append(f"{page}.html was not built")
    for path in sorted(HTML.rglob("*.html")):
        p = _Resources()
        p.feed(path.read_text(encoding="utf-8", errors="replace"))
        rel = path.relative_to(HTML)
        problems += [f"{rel}: fetches {u}" for u in p.urls if _remote(u)]
        problems += [f"{rel}: a style fetches {u}" for s in p.styles for u in re.findall(r"url\(\s*['\"]?([^'\")]+)", s) if _remote(u)]
    for path in sorted(HTML.rglob("*.css")):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(HTML)
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", text) + re.findall(r"@import\s+['\"]([^'\"]+)", text)
        problems += [f"{rel}: fetches {u}" for u in urls if _remote(u)]
    for path in sorted(HTML.rglob("*.js")):  # a script that adds a remote script or font at run time
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"https://(fonts\.googleapis\.com|fonts\.gstatic\.com|cdn\.jsdelivr\.net|unpkg\.com"
                             r"|cdnjs\.cloudflare\.com|www\.googletagmanager\.com|plausible\.io)[^\s'\"]*", text):
            problems.append(f"{path.relative_to(HTML)}: names {m.group(0)}")
    return problems


def figures(names: list[str]) -> dict[str, bool]:
    """Which notebooks draw at least one figure (an image output), from the executed copies."""
    out = {}
    for n in names:
        nb = json.loads((EXECUTED / f"{n}.ipynb").read_text(encoding="utf-8"))
        out[n] = any(k.startswith("image/") for c in nb["cells"] for o in c.get("outputs", [])
                     for k in o.get("data", {}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bash site/build.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("ATTN_SITE_JOBS", "2")),
                    help="notebooks executed at a time (default 2, or $ATTN_SITE_JOBS)")
    ap.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell (default %(default)s)")
    ap.add_argument("--fresh", action="store_true", help="forget the executed notebooks and the built site first")
    ap.add_argument("--lenient", action="store_true",
                    help="Sphinx warnings (a broken cross-reference, a bad directive) do not fail the build")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    if args.fresh:
        shutil.rmtree(BUILD, ignore_errors=True)
    names = notebook_names()
    if not names:
        raise SystemExit(f"error: no notebooks in {SOLUTIONS}")
    executed = execute_all(names, args.jobs, args.timeout)
    t1 = time.monotonic()
    staged = stage(names)
    stamp_path = HTML / STAMP_NAME
    stamp_path.unlink(missing_ok=True)  # no stamp while the site is half built
    log("build: Jupyter Book (Sphinx) into " + str(HTML.relative_to(REPO)))
    build_html(strict=not args.lenient)
    t2 = time.monotonic()
    problems = audit(names, staged["pages"])
    if problems:
        for p in problems:
            log(f"error: {p}")
        raise SystemExit(f"error: the site would reach other hosts or lacks pages ({len(problems)} problems)")
    stamp = {"pages": staged["pages"], "notebooks": {n: executed[n]["key"] for n in names},
             "figures": figures(names), "executed_now": sorted(n for n in names if not executed[n]["cached"]),
             "seconds": {"execute": round(t1 - t0, 1), "sphinx": round(t2 - t1, 1)}}
    write_if_changed(stamp_path, json.dumps(stamp, indent=1) + "\n")
    log(f"site: {len(staged['pages'])} pages in {HTML.relative_to(REPO)} "
        f"({len(stamp['executed_now'])} notebooks executed, {len(names) - len(stamp['executed_now'])} cached; "
        f"{time.monotonic() - t0:.0f} s). Serve it: python -m http.server -d {HTML.relative_to(REPO)} 8000")
    return 0


if __name__ == "__main__":
    sys.exit(main())