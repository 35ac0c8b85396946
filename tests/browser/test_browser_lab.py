"""Notebooks in a real JupyterLab, driven by headless Chromium.

For each solution notebook that carries a widget and the student notebooks of the first two
assignments with exercises (``ATTN_BROWSER_SOLUTIONS`` and ``ATTN_BROWSER_STUDENTS`` choose
others: ``all``, ``none`` or names separated by commas), the test opens it in Lab, runs its
cells one by one through Lab's own "run cell" command, saves it, and checks:

- no error output (student notebooks: errors only in exercise cells, and only the stubs'
  NotImplementedError), no uncaught error in the page, no widget that failed to display;
- in a real Lab attnkit takes the live widget path: a notebook that builds an explorer shows
  a widget view, not the still figure;
- every interactive widget (a slider or a dropdown with a picture under it) reacts: the test
  clicks on the slider's track and picks another dropdown entry, as a learner would, and the
  picture drawn by the kernel must change each time;
- a screenshot of each widget before and after, and one of the page, land in the screenshot
  folder (see conftest.py).

The nbgrader extension is checked in the same Lab: its formgrader lists a generated
assignment and its assignment list shows it released.
"""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest

from grader import course
from grader import notebooks as nbs

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]

SOURCES = course.assignments()
CELL_TIMEOUT_S = 300
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
VIEWS = ".jp-OutputArea-output > .jupyter-widgets"  # the root element of each displayed widget


def _carries_widgets(path) -> bool:
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return any("attnkit.widgets" in src or "ipywidgets" in src for src in code[1:])  # the setup cell only installs ipywidgets


def _has_exercises(path) -> bool:
    return any(nbs.is_solution(c) for c in nbformat.read(path, as_version=4).cells)


def _chosen(variable: str, default: list[str]) -> list[str]:
    """``$variable``: ``all``, ``none`` or comma-separated assignment names; else the default."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if value in ("all", "none"):
        return list(SOURCES) if value == "all" else []
    unknown = set(value.split(",")) - set(SOURCES)
    if unknown:
        raise ValueError(f"{variable}: no such assignment {sorted(unknown)}; known: {list(SOURCES)}")
    return [name for name in SOURCES if name in value.split(",")]


def _cases():
    """Solution notebooks that carry widgets (``ATTN_BROWSER_SOLUTIONS`` to choose others);
    student notebooks of the first two assignments with exercises (``ATTN_BROWSER_STUDENTS``)."""
    solutions = _chosen("ATTN_BROWSER_SOLUTIONS", [n for n, p in SOURCES.items() if _carries_widgets(p)])
    students = _chosen("ATTN_BROWSER_STUDENTS", [n for n, p in SOURCES.items() if _has_exercises(p)][:2])
    return [("solutions", n) for n in solutions] + [("notebooks", n) for n in students]


OPEN = """async ([path, kernel]) => {
    const app = window.jupyterapp;
    const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook', kernel: {name: kernel}});
    await panel.context.ready;
    await panel.sessionContext.ready;
    app.shell.activateById(panel.id);
    await panel.revealed;
    window.__attnPanel = panel;
    return {cells: panel.content.widgets.length, kernel: panel.sessionContext.session.kernel.name};
}"""

RUN_CELL = """async ([i, timeoutMs]) => {
    const app = window.jupyterapp, panel = window.__attnPanel, nb = panel.content;
    if (nb.widgets[i].model.type !== 'code') return 'skipped';
    nb.activeCellIndex = i;
    const timer = new Promise(resolve => setTimeout(() => resolve('timeout'), timeoutMs));
    const result = await Promise.race([app.commands.execute('notebook:run-cell'), timer]);
    if (result === 'timeout') {
        await panel.sessionContext.session.kernel.interrupt();
        return 'timeout';
    }
    return 'ran';
}"""

SAVE = "async () => { await window.__attnPanel.context.save(); }"

CLOSE = """async () => {
    const panel = window.__attnPanel;
    window.__attnPanel = null;
    if (!panel || panel.isDisposed) return;
    await panel.sessionContext.shutdown();
    panel.dispose();
}"""

IDLE = "() => window.__attnPanel.sessionContext.session.kernel.status === 'idle'"


def _place(lab, version, name):
    """Copy the notebook into the Lab root; return its path relative to the root."""
    src = (course.SOLUTIONS if version == "solutions" else course.NOTEBOOKS) / f"{name}.ipynb"
    target = lab.root / version / src.name
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, target)
    return f"{version}/{src.name}"


def _run_all(page, n_cells):
    for i in range(n_cells):
        status = page.evaluate(RUN_CELL, [i, CELL_TIMEOUT_S * 1000])
        assert status != "timeout", f"cell {i} ran past {CELL_TIMEOUT_S} s in Lab"
    page.wait_for_function(IDLE, timeout=60_000)


def _error_problems(nb, version):
    problems, stub_failures = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            where = nbs.grade_id(cell) or cell.source.strip().splitlines()[0][:60]
            stub = out["ename"] == "NotImplementedError" or (
                out["ename"] == "AssertionError" and "not implemented yet" in out["evalue"])
            if version == "notebooks" and stub and (nbs.is_test(cell) or nbs.is_solution(cell)):
                stub_failures += 1
            else:
                problems.append(f"{where!r}: {out['ename']}: {out['evalue'][:300]}")
    return problems, stub_failures


def _pick_other_option(select):
    values = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    current = select.input_value()
    others = [v for v in values if v != current]
    return others[-1] if values.index(current) == 0 else others[0]


def _move_slider(page, widget):
    handle = widget.locator(".widget-slider .noUi-handle").first
    track = widget.locator(".widget-slider .noUi-target").first
    lo, hi, now = (float(handle.get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax", "aria-valuenow"))
    box = track.bounding_box()
    fraction = 0.1 if now > (lo + hi) / 2 else 0.9  # click far from where the handle is
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
    return f"slider {now:g} -> click at {fraction:.0%}"


def _wait_redrawn(page, output, before, what):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(
            "([el, before]) => el.innerHTML !== before && el.querySelector('img') !== null",
            arg=[output.element_handle(), before], timeout=60_000)
    except PlaywrightTimeout:
        raise AssertionError(f"{what}: the picture under the widget did not change within 60 s") from None


def _exercise_widgets(page, version, name, shots):
    """Move a slider and a dropdown of every interactive widget; the kernel's picture must change."""
    views = page.locator(VIEWS)
    moved = []
    for k in range(views.count()):
        view = views.nth(k)
        output = view.locator(".widget-output").first
        has_slider = view.locator(".widget-slider .noUi-target").count() > 0
        has_dropdown = view.locator(".widget-dropdown select").count() > 0
        if output.count() == 0 or not (has_slider or has_dropdown):
            continue  # a progress bar or another passive widget
        view.scroll_into_view_if_needed()
        output.locator("img").first.wait_for(timeout=60_000)
        view.screenshot(path=str(shots / f"{version}-{name}-w{k}-before.png"))
        if has_slider:
            before = output.inner_html()
            how = _move_slider(page, view)
            _wait_redrawn(page, output, before, f"widget {k}, {how}")
            moved.append(f"w{k} {how}")
        if has_dropdown:
            select = view.locator(".widget-dropdown select").first
            before = output.inner_html()
            choice = _pick_other_option(select)
            select.select_option(choice)
            _wait_redrawn(page, output, before, f"widget {k}, dropdown -> {choice}")
            moved.append(f"w{k} dropdown -> {choice}")
        page.wait_for_function(IDLE, timeout=60_000)
        view.screenshot(path=str(shots / f"{version}-{name}-w{k}-after.png"))
        page.screenshot(path=str(shots / f"{version}-{name}-lab.png"))
    return moved


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version,name", _cases(), ids=[f"{v}-{n}" for v, n in _cases()])
def test_notebook_runs_and_widgets_react_in_lab(version, name, lab, browser_page, shots):
    page = browser_page
    page.errors.take()
    rel = _place(lab, version, name)
    try:
        opened = page.evaluate(OPEN, [rel, "python3"])
        _run_all(page, opened["cells"])
        page.evaluate(SAVE)
        nb = nbformat.read(lab.root / rel, as_version=4)

        problems, stub_failures = _error_problems(nb, version)
        assert not problems, "errors in Lab:\n" + "\n".join(problems)
        if version == "notebooks" and _has_exercises(course.SOLUTIONS / f"{name}.ipynb"):
            assert stub_failures, "a student notebook with stubs must fail in its exercises"

        views = [o for c in nb.cells for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {})]
        if _carries_widgets(course.SOLUTIONS / f"{name}.ipynb"):
            assert views, "attnkit drew still figures in a real Lab: has_frontend() missed the front end"
        # every widget output is rendered by the widget manager as a live view
        page.wait_for_function(f"n => document.querySelectorAll('{VIEWS}').length >= n", arg=len(views), timeout=60_000)
        assert page.get_by_text("Error displaying widget").count() == 0

        moved = _exercise_widgets(page, version, name, shots) if views else []
        if _carries_widgets(course.SOLUTIONS / f"{name}.ipynb"):
            assert moved, "no widget could be moved"
        print(f"{version}/{name}: {len(views)} widget views; moved: {'; '.join(moved) or 'none'}")
        errors = page.errors.take()
        assert not errors, "\n".join(errors)
    finally:
        if not (shots / f"{version}-{name}-lab.png").exists():
            page.screenshot(path=str(shots / f"{version}-{name}-lab.png"))
        page.evaluate(CLOSE)


def test_lab_answers_only_with_the_token_on_localhost(lab):
    import urllib.error
    status, _ = lab.api("/api/status")
    assert status == 200
    with pytest.raises(urllib.error.HTTPError) as denied:
        lab.api("/api/contents", token=False)
    assert denied.value.code == 403
    assert lab.base.startswith("http://127.0.0.1:")


@pytest.mark.timeout(300)
def test_nbgrader_formgrader_and_assignment_list_render(lab, browser_page, shots):
    """The nbgrader extension in the same Lab: formgrader lists a generated assignment; the
    assignment list shows it released."""
    page = browser_page
    name = next(iter(SOURCES))
    with course.nbgrader_course(root=lab.course) as (api, root):
        course.add_source(root, SOURCES[name])
        assert api.generate_assignment(name)["success"]
        assert api.release_assignment(name)["success"]

    page.errors.take()
    formgrader = page.context.new_page()
    try:
        formgrader.goto(lab.url("/formgrader"))
        row = formgrader.locator("tr", has_text=name).first
        row.wait_for(timeout=60_000)
        assert "released" in row.inner_text()
    finally:
        formgrader.screenshot(path=str(shots / "nbgrader-formgrader.png"))
        formgrader.close()

    page.evaluate("async () => { await window.jupyterapp.commands.execute('nbgrader:open-assignment-list'); }")
    try:
        page.locator("#released_assignments_list").get_by_text(name).first.wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(shots / "nbgrader-assignment-list.png"))
        page.evaluate("() => { const w = window.jupyterapp.shell.currentWidget; if (w) w.close(); }")
    errors = page.errors.take()
    assert not errors, "\n".join(errors)
