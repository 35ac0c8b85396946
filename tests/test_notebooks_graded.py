"""For every notebook: the solution runs top to bottom without an error output, passes all its
tests (hidden ones too) and earns full marks when autograded as a pretend student; the
untouched student notebook fails only in its exercises and earns nothing.

These gradings are also the suite's only full executions of the notebooks (in the grader's
sandboxed kernel, as an instructor's run would do them), so the run time of each is printed.
"""


import nbformat
import pytest

from grader import course, grade, sandbox, validate
from grader import notebooks as nbs

SOURCES = course.assignments()
LIMITS = grade.Limits(cell_timeout=300, notebook_timeout=600)


def _policy():
    return sandbox.Policy(mode=sandbox.resolve_mode("auto"))


def _errors(result):
    for cell in result.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                yield cell, out


def _grade(tmp_path, name, nb):
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    source = nbformat.read(SOURCES[name], as_version=4)
    template = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return grade.grade_notebook("pretend", path, source, template, tmp_path / "work", _policy(), LIMITS), source


@pytest.mark.parametrize("name", SOURCES)
def test_solution_earns_full_marks_hidden_tests_included(tmp_path, name):
    source = nbformat.read(SOURCES[name], as_version=4)
    template = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    result, _ = _grade(tmp_path, name, nbs.as_student_answer(template, source))
    print(f"{name} solution: {result.seconds:.1f} s")
    assert result.status == "graded", result.reason
    assert not [(c.get("id"), o.get("ename"), o.get("evalue")) for c, o in _errors(result)]
    assert result.tests and all(t.status == "ok" for t in result.tests), [(t.grade_id, t.message) for t in result.tests]
    assert result.score == result.max_score == grade.max_score(source) > 0
    assert not result.reason


@pytest.mark.parametrize("name", SOURCES)
def test_student_notebook_passes_no_graded_test(tmp_path, name):
    template = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    result, source = _grade(tmp_path, name, template)
    print(f"{name} student version: {result.seconds:.1f} s")
    assert result.status == "graded"
    for cell, out in _errors(result):
        assert nbs.is_test(cell) or nbs.is_solution(cell), f"error outside an exercise: {cell.source[:80]!r}"
        assert out["ename"] == "NotImplementedError" or (
            out["ename"] == "AssertionError" and "not implemented yet" in out["evalue"]), (out["ename"], out["evalue"])
    assert len(result.tests) == sum(nbs.is_test(c) for c in source.cells)
    assert all(t.status != "ok" for t in result.tests), [(t.grade_id, t.status) for t in result.tests]
    assert result.score == 0


@pytest.mark.parametrize("name", list(SOURCES)[:1])
def test_validate_exit_codes_and_hints(tmp_path, name, capsys):
    source = nbformat.read(SOURCES[name], as_version=4)
    template = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    good, bad, broken = tmp_path / f"{name}.ipynb", tmp_path / f"Copy of {name}.ipynb", tmp_path / "broken.ipynb"
    nbformat.write(nbs.as_student_answer(template, source), good)
    nbformat.write(template, bad)
    broken.write_text("{")
    assert validate.validate(good, LIMITS) == 0
    assert "all visible tests pass" in capsys.readouterr().out
    assert validate.validate(bad, LIMITS) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "not implemented yet" in out  # the checker's hint reaches the student
    assert validate.validate(broken, LIMITS) == 2
