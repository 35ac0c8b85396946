"""site/build.py, the course website's build, without a browser: the README cut into pages, the
notebooks turned into pages (solutions folded, hidden tests out, no image from another host),
the execution cache's key, a failing notebook failing the build by name, and the audit that
refuses a page fetching from another host. The built site itself is checked in Chromium by
tests/browser/test_site.py."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("attn_site_build", ROOT / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = _load()
README = (ROOT / "README.md").read_text(encoding="utf-8")
NAMES = B.notebook_names()


def test_every_page_of_the_readme_is_found_and_starts_at_a_title():
    for page, heading, without, _ in B.README_PAGES:
        text = B.cut(README, heading, without)
        assert text.startswith("# " + heading), page
        for sub in without:
            assert not re.search(rf"^#+ {re.escape(sub)}", text, re.M), (page, sub)
    for heading in B.HOME_SECTIONS:
        assert B.cut(README, heading, top=2).startswith("## " + heading)
    guide = B.cut(README, "For instructors")
    assert "attn-grade demo" in guide and "\n## A term, in order" in guide
    # a comment inside a code fence is no heading: kept as it is, not shifted
    assert "\n# next to the gradebook" in guide
    with pytest.raises(SystemExit, match="no section 'Nowhere'"):
        B.cut(README, "Nowhere")


def test_cut_shifts_headings_outside_code_fences_only():
    text = "# T\n\n## A\n\ntext\n\n```bash\n# a comment\n```\n\n### A.1\n\nx\n\n### A.2\n\ny\n\n## B\n\nz\n"
    assert B.cut(text, "A", ("A.2",)) == "# A\n\ntext\n\n```bash\n# a comment\n```\n\n## A.1\n\nx\n"


def test_readme_pages_link_the_notebook_pages_and_fetch_nothing_remote():
    page_of = {"docs/colab-parity.md": "colab-parity.md"}
    text = B.site_markdown(B.cut(README, "Taking the course", ("GPU labs", "The shipped model")), ".", NAMES, page_of)
    assert "colab-badge" not in text and not B.EXTERNAL_IMAGE.search(text)
    for name in NAMES:
        assert f"]({name}.ipynb)" in text, name  # the table's first column links the notebook's page
        assert f"/notebooks/{name}.ipynb)" in text and f"/solutions/{name}.ipynb)" in text  # Colab, as links
    gpu = B.site_markdown(B.cut(README, "GPU labs"), ".", NAMES, page_of)
    assert "](colab-parity.md)" in gpu  # a docs/ page of the site
    tests = B.site_markdown(B.cut(README, "Tests"), ".", NAMES, page_of)
    assert f"](https://github.com/{B.GITHUB}/blob/{B._release_tag()}/results/checker-coverage.md)" in tests


@pytest.mark.parametrize("name", NAMES)
def test_notebook_page_folds_solutions_and_leaves_out_hidden_tests(name):
    source = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)
    nb = B.page_notebook(name, ROOT / "solutions" / f"{name}.ipynb")
    intro = nb.cells[0].source
    assert "colab-badge" not in intro and not B.EXTERNAL_IMAGE.search(intro)
    assert f"<_notebooks/student/{name}.ipynb>" in intro and f"<_notebooks/solutions/{name}.ipynb>" in intro
    assert B.colab_url("notebooks", name) in intro and B.colab_url("solutions", name) in intro
    solutions = [c for c in source.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
    folded = [c for c in nb.cells if "hide-input" in c.metadata.get("tags", [])]
    assert len(folded) == len(solutions) and (solutions or name == "00_welcome")
    text = "\n".join(c.source for c in nb.cells)
    assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    for before, after in zip(source.cells, nb.cells):  # a graded test keeps its visible part
        if before.metadata.get("nbgrader", {}).get("grade") and "BEGIN HIDDEN TESTS" not in before.source:
            assert after.source == before.source.rstrip("\n")


def test_widget_views_are_dropped_and_their_state_with_them(tmp_path):
    nb = nbformat.read(ROOT / "solutions" / "02_softmax.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("display_data", data={B.WIDGET_VIEW: {"model_id": "x"}, "text/plain": "0%"}),
                    nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": {}}}}
    path = tmp_path / "02_softmax.ipynb"
    nbformat.write(nb, path)
    page = B.page_notebook("02_softmax", path)
    outputs = next(c for c in page.cells if c.cell_type == "code").outputs
    assert [o.output_type for o in outputs] == ["stream"] and "widgets" not in page.metadata


def test_the_cache_key_follows_the_notebook_the_library_and_the_stack(tmp_path, monkeypatch):
    lib = tmp_path / "attnkit"
    (lib / "__pycache__").mkdir(parents=True)
    (lib / "a.py").write_text("x = 1\n")
    (tmp_path / "solutions").mkdir()
    nb = tmp_path / "solutions" / "01_x.ipynb"
    nb.write_text("{}")
    monkeypatch.setattr(sys.modules[B.library_fingerprint.__module__], "REPO", tmp_path)  # site/execute.py
    first = B.library_fingerprint()
    key = B.notebook_key("01_x", first, tmp_path / "solutions")
    (lib / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")  # bytecode is not a source
    assert B.library_fingerprint() == first
    (lib / "a.py").write_text("x = 2\n")
    assert B.library_fingerprint() != first
    (lib / "a.py").write_text("x = 1\n")
    assert B.library_fingerprint() == first
    nb.write_text('{"cells": []}')
    assert B.notebook_key("01_x", first, tmp_path / "solutions") != key
    monkeypatch.setitem(B.KERNEL_ENV, "OMP_NUM_THREADS", "2")
    assert B.library_fingerprint() != first


def _notebook(path: pathlib.Path, *sources: str) -> None:
    cells = [nbformat.v4.new_code_cell(s, id=f"c{i}") for i, s in enumerate(sources)]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                         "language": "python"}})
    nbformat.write(nb, path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_notebook_fails_the_build_with_its_name(tmp_path, capsys):
    solutions, executed = tmp_path / "solutions", tmp_path / "executed"
    solutions.mkdir()
    _notebook(solutions / "01_good.ipynb",
              "import os, matplotlib\n"
              "print({k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'TRITON_INTERPRET', 'ATTNKIT_WIDGETS', "
              "'CUDA_VISIBLE_DEVICES')}, matplotlib.get_backend())")
    _notebook(solutions / "02_raises.ipynb", "x = 1", "raise ValueError('planted')")
    _notebook(solutions / "03_slow.ipynb", "import time\ntime.sleep(60)")
    names = ["01_good", "02_raises", "03_slow"]
    with pytest.raises(SystemExit) as exit_:
        B.execute_all(names, jobs=2, timeout=5, solutions=solutions, executed=executed)
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "error: notebook 02_raises failed: cell 1 (c1): ValueError: planted" in out
    assert "error: notebook 03_slow failed: cell 0 (c0) ran past 5 s" in out
    assert "notebook 01_good failed" not in out
    assert (executed / "02_raises.failed.ipynb").is_file() and not (executed / "02_raises.ipynb").exists()

    good = json.loads((executed / "01_good.ipynb").read_text())
    printed = "".join(good["cells"][0]["outputs"][0]["text"])
    assert "'OMP_NUM_THREADS': '1', 'TRITON_INTERPRET': '1', 'ATTNKIT_WIDGETS': '0', 'CUDA_VISIBLE_DEVICES': ''" in printed
    assert "inline" in printed  # plt.show() reaches the page, as in the grader's kernel
    # the good one is kept: the next build runs only what failed or changed
    done = B.execute_all(["01_good"], jobs=2, timeout=5, solutions=solutions, executed=executed)
    assert done["01_good"]["cached"] and "1 of 1 notebooks unchanged" in capsys.readouterr().out


def test_the_audit_refuses_pages_that_fetch_from_other_hosts(tmp_path, monkeypatch):
    html = tmp_path / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text(
        '<html><head><script src="_static/ok.js"></script>'
        '<script src="https://cdn.jsdelivr.net/npm/x.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">'
        '<link rel="canonical" href="https://example.org/">'  # not fetched
        '</head><body><a href="https://github.com/x">a link is not a fetch</a>'
        '<img src="http://example.org/badge.svg"><div style="background:url(https://example.org/bg.png)"></div>'
        '</body></html>')
    (html / "_static" / "theme.css").write_text("@import url('https://fonts.googleapis.com/css2?family=Lato');")
    monkeypatch.setattr(B, "HTML", html)
    problems = B.audit([], ["index", "learner-path"])
    assert sorted(problems) == sorted([
        "learner-path.html was not built",
        "index.html: fetches https://cdn.jsdelivr.net/npm/x.js",
        "index.html: fetches //fonts.googleapis.com/css?family=Roboto",
        "index.html: fetches http://example.org/badge.svg",
        "index.html: a style fetches https://example.org/bg.png",
        "_static/theme.css: fetches https://fonts.googleapis.com/css2?family=Lato",
    ])
