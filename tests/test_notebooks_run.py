"""What every notebook shares: the same setup cell, Colab badges, no shell magics.

Executing the notebooks (solution: no error anywhere; student: errors only in the exercise
stubs) happens once per notebook version in tests/test_notebooks_graded.py, through the grader."""

import nbformat

from grader import course
from grader import notebooks as nbs

SOURCES = course.assignments()


def test_every_notebook_starts_with_the_same_setup_cell():
    import attnkit
    setups = set()
    for name, path in SOURCES.items():
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        setups.add(first_code.source)
        assert f"@v{attnkit.__version__}" in first_code.source and attnkit.env.COURSE_REPO in first_code.source
        assert "torch" not in first_code.source.split("attnkit.report")[0].replace("never touches torch", "")
        intro = nb.cells[0].source
        assert f"notebooks/{name}.ipynb" in intro and f"solutions/{name}.ipynb" in intro, "Colab badges"
    assert len(setups) == 1


def test_no_shell_magics_anywhere():
    for path in list(SOURCES.values()):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not any(l.lstrip().startswith(("!", "%")) for l in cell.source.splitlines()), path.name


PREDICT = "**Predict, then run.**"
# Issue 18 adds the prompts notebook by notebook; the rest join this set as theirs land.


def test_every_notebook_asks_for_predictions_before_experiments():
    """At least two ungraded "Predict, then run." prompts, each right before the code cell it is about."""
    for name in SOURCES:
        cells = nbformat.read(SOURCES[name], as_version=4).cells
        prompts = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith(PREDICT)]
        assert len(prompts) >= 2, f"{name}: {len(prompts)} '{PREDICT}' prompts, want at least 2"
        for i in prompts:
            after = cells[i + 1] if i + 1 < len(cells) else None
            assert after is not None and after.cell_type == "code", f"{name}: a prompt must be followed by a code cell"
            assert not nbs.is_test(after) and not nbs.is_solution(after), (
                f"{name}: the cell after a prompt runs an experiment, not an exercise or a graded test")


def test_readme_lists_both_badges_for_every_notebook():
    readme = (course.REPO / "README.md").read_text()
    for name in SOURCES:
        assert f"notebooks/{name}.ipynb" in readme and f"solutions/{name}.ipynb" in readme, name
