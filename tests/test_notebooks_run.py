"""What every notebook shares: the same setup cell, Colab badges, no shell magics.

Executing the notebooks (solution: no error anywhere; student: errors only in the exercise
stubs) happens once per notebook version in tests/test_notebooks_graded.py, through the grader."""

import nbformat

from grader import course

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


def test_readme_lists_both_badges_for_every_notebook():
    readme = (course.REPO / "README.md").read_text()
    for name in SOURCES:
        assert f"notebooks/{name}.ipynb" in readme and f"solutions/{name}.ipynb" in readme, name
