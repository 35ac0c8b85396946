"""attn-grade release: one source, reproducible student notebooks, drift detected."""

import json
import shutil

import nbformat
import pytest

from grader import cli, course, release
from grader import notebooks as nbs

SOURCES = course.assignments()


def test_committed_student_notebooks_match_the_sources():
    assert release.release(check=True) == []
    assert sorted(p.name for p in course.NOTEBOOKS.glob("*.ipynb")) == sorted(p.name for p in SOURCES.values())


@pytest.mark.parametrize("name", SOURCES)
def test_student_notebook_is_the_stripped_source(name):
    source = nbformat.read(SOURCES[name], as_version=4)
    text = (course.NOTEBOOKS / SOURCES[name].name).read_text()
    student = nbformat.reads(text, as_version=4)
    assert nbs.HIDDEN_BEGIN not in text and nbs.SOLUTION_BEGIN not in text
    assert [c.get("id") for c in student.cells] == [c.get("id") for c in source.cells]
    for src, stu in zip(source.cells, student.cells):
        assert nbs.grade_id(src) == nbs.grade_id(stu)
        if stu.cell_type == "code":
            assert stu.outputs == [] and stu.execution_count is None
        if nbs.is_solution(src):
            assert "raise NotImplementedError" in stu.source
            solution = nbs.strip_solution_markers(src.source)
            body = [l for l in solution.splitlines() if l.strip() and l not in stu.source]
            assert body, "the solution must not survive into the student notebook"
        if nbs.is_test(src):
            assert nbs.nbgrader_meta(stu)["locked"] and stu.source.strip() == nbs.strip_hidden(src.source).strip()
            for line in nbs.hidden_lines(src.source):
                assert line not in stu.source


@pytest.mark.parametrize("name", SOURCES)
def test_sources_are_committed_clean(name):
    nb = json.loads(SOURCES[name].read_text())
    for cell in nb["cells"]:
        assert cell.get("id"), "every cell needs a stable id"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    gids = [nbs.grade_id(c) for c in nb["cells"] if nbs.grade_id(c)]
    assert len(gids) == len(set(gids)), "duplicated grade_ids"


def test_release_is_byte_for_byte_reproducible():
    name = next(iter(SOURCES))
    assert release.student_version(SOURCES[name]) == release.student_version(SOURCES[name])


def test_check_names_the_drifted_notebook(tmp_path, capsys, monkeypatch):
    source = next(iter(SOURCES.values()))
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    notebooks.mkdir()
    shutil.copy(source, solutions / source.name)
    victim = notebooks / source.name
    nb = json.loads((course.NOTEBOOKS / source.name).read_text())
    nb["cells"][0]["source"] += " (edited by hand)"
    victim.write_text(json.dumps(nb))
    (notebooks / "99_orphan.ipynb").write_text(victim.read_text())
    monkeypatch.setattr(course, "SOLUTIONS", solutions)
    monkeypatch.setattr(course, "NOTEBOOKS", notebooks)
    assert cli.main(["release", "--check"]) == 1
    out = capsys.readouterr().out
    assert victim.name in out and "99_orphan" in out
    assert cli.main(["release"]) == 0
    assert victim.read_text() == (course.REPO / "notebooks" / source.name).read_text()
    assert not (notebooks / "99_orphan.ipynb").exists()
    assert cli.main(["release", "--check"]) == 0
