"""An instructor's whole term with attn-grade, end to end, on SQLite and on PostgreSQL.

release into an nbgrader course -> students fetch and submit through nbgrader's exchange ->
collect -> autograde with a roster, a due time, an extension and a late policy -> a TA grades
by hand in the gradebook formgrader uses -> a student resubmits and only they are regraded ->
export to Canvas and Moodle -> feedback zip -> class report; formgrader's API sees all of it.
Nothing a human entered is lost on the way.
"""

import csv
import datetime as dt
import io
import os
import time
import zipfile

import nbformat
import pytest
from traitlets.config import Config

from grader import autograde, course, export, grade, gradebook, release
from grader import notebooks as nbs
from grading_helpers import ASSIGNMENT, RIGHT, TRANSPOSED, source

N = 30
SCALED = "def dot_product_scores(q, k):\n    return (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5\n"
LIMITS = grade.Limits(cell_timeout=60, notebook_timeout=180)


def _cfg(root, exchange, **extra):
    cfg = Config()
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.course_id = course.COURSE_ID
    cfg.CourseDirectory.assignment_id = ASSIGNMENT
    cfg.Exchange.root = str(exchange)
    for key, value in extra.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _exchange(kind, cfg):
    """One of nbgrader's exchange steps, as its own command-line app runs it."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.exchange import default as ex
    app = getattr(ex, kind)(coursedir=CourseDirectory(config=cfg), authenticator=Authenticator(config=cfg), config=cfg)
    app.start()


def _answer(sid: int) -> str:
    return RIGHT if sid % 3 == 0 else TRANSPOSED if sid % 3 == 1 else SCALED


def _term(tmp_path, db_url):
    course_dir, exchange, homes = tmp_path / "course", tmp_path / "exchange", tmp_path / "homes"
    exchange.mkdir(mode=0o777)
    os.chmod(exchange, 0o777)
    # 1. release into an nbgrader course and to the exchange
    release.release(names=[ASSIGNMENT], course_dir=course_dir)
    assert (course_dir / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").exists()
    _exchange("ExchangeReleaseAssignment", _cfg(course_dir, exchange))
    # 2. N students fetch, answer and submit, and s31, who is not on the roster; s30 never submits
    students = [f"s{i:02d}" for i in range(N + 1)] + ["s31"]
    for i, sid in enumerate(students):
        if sid == "s30":
            continue
        home = homes / sid
        home.mkdir(parents=True)
        cfg = _cfg(home, exchange, CourseDirectory__student_id=sid, Exchange__assignment_dir=str(home))
        _exchange("ExchangeFetchAssignment", cfg)
        path = home / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        nb = nbformat.read(path, as_version=4)
        nb = nbs.as_student_answer(nb, source(), {"dot_product_scores": _answer(i)})
        nbformat.write(nb, path)
        _exchange("ExchangeSubmit", cfg)
    _exchange("ExchangeCollect", _cfg(course_dir, exchange))
    submitted = course_dir / "submitted"
    assert len(list(submitted.iterdir())) == N + 1
    # 3. a roster, a due time, one extension, a late policy; two students were late
    now = dt.datetime.now(dt.timezone.utc)
    due = now + dt.timedelta(days=1)  # everyone on time but the two whose timestamps are moved past it
    (tmp_path / "roster.csv").write_text("id,name,email,lms_id\n" + "".join(
        f"s{i:02d},Student {i},s{i}@uni.example,{1000 + i}\n" for i in range(N + 1)), encoding="utf-8")
    (tmp_path / "extensions.csv").write_text("student_id,days\ns03,10\n", encoding="utf-8")
    for sid, late_by in (("s03", 1.5), ("s06", 1.5), ("s09", 10)):
        stamp = submitted / sid / ASSIGNMENT / "timestamp.txt"
        stamp.write_text((due + dt.timedelta(days=late_by)).strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
    settings = autograde.Settings(jobs=2, limits=LIMITS, progress=False, db_url=db_url, layout="auto",
                                  roster=tmp_path / "roster.csv", due=due.isoformat(), late_policy="10%/day, max 3 days, then 0",
                                  extensions=tmp_path / "extensions.csv")
    started = time.monotonic()
    autograde.autograde(submitted, ASSIGNMENT, course_dir, settings)
    first_run = time.monotonic() - started
    rows = {r["student_id"]: r for r in csv.DictReader((course_dir / "grades.csv").open(encoding="utf-8"))}
    assert len(rows) == N + 2 and rows["s30"]["status"] == "failed" and rows["s30"]["reason"] == "no submission"
    assert "s31" in rows  # not on the roster: graded anyway, reported
    assert float(rows["s00"]["score"]) == 3 and float(rows["s01"]["score"]) == 0
    assert 0 < float(rows["s02"]["score"]) < 3  # the scaled near miss earns part
    assert rows["s03"]["late_days"] == "0" and float(rows["s03"]["score"]) == 3  # its extension covers it
    assert rows["s06"]["late_days"] == "2" and float(rows["s06"]["penalty"]) == pytest.approx(0.6)
    assert float(rows["s06"]["score"]) == pytest.approx(2.4) and float(rows["s06"]["raw_score"]) == 3
    assert float(rows["s09"]["score"]) == 0 and float(rows["s09"]["raw_score"]) == 3  # past 3 days: 0
    # 4. a TA grades by hand, in the store formgrader writes to
    from nbgrader.api import Gradebook
    with Gradebook(db_url, course_id=course.COURSE_ID) as gb:
        g = gb.find_grade("test_dot_product_properties", ASSIGNMENT, ASSIGNMENT, "s01")
        g.manual_score, g.extra_credit = 1.0, 0.5
        gb.find_comment("dot_product_scores", ASSIGNMENT, ASSIGNMENT, "s01").manual_comment = "k @ q.T: transposed"
        gb.db.commit()
    # 5. s04 resubmits a right answer through the exchange; only s04 is regraded
    home = homes / "s04"
    cfg = _cfg(home, exchange, CourseDirectory__student_id="s04", Exchange__assignment_dir=str(home))
    path = home / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    nbformat.write(nbs.as_student_answer(nbformat.read(path, as_version=4), source(), {"dot_product_scores": RIGHT}),
                   path)
    time.sleep(1.1)  # nbgrader's exchange names submissions by the second
    _exchange("ExchangeSubmit", cfg)
    _exchange("ExchangeCollect", _cfg(course_dir, exchange, ExchangeCollect__update=True))
    regrade = autograde.Settings(**{**settings.__dict__, "students": ("s04",)})
    autograde.autograde(submitted, ASSIGNMENT, course_dir, regrade)
    rows = {r["student_id"]: r for r in csv.DictReader((course_dir / "grades.csv").open(encoding="utf-8"))}
    assert len(rows) == N + 2 and float(rows["s04"]["score"]) == 3
    assert float(rows["s01"]["score"]) == 1.5  # the TA's 1 + 0.5 extra credit survived the regrade
    with Gradebook(db_url, course_id=course.COURSE_ID) as gb:
        assert gb.find_comment("dot_product_scores", ASSIGNMENT, ASSIGNMENT, "s01").manual_comment.startswith("k @ q.T")
    # 6. formgrader sees the course: every submission autograded, nothing waiting for a human
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    cfg = _cfg(course_dir, exchange)
    cfg.CourseDirectory.db_url = db_url
    api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
    (assignment,) = [a for a in api.get_assignments() if a["name"] == ASSIGNMENT]
    assert assignment["num_submissions"] == N + 1
    subs = [s for s in api.get_submissions(ASSIGNMENT) if s["submitted"]]
    assert len(subs) == N + 1 and all(s["autograded"] and not s["needs_manual_grade"] for s in subs)
    # 7. hand back: Canvas and Moodle imports, the feedback zip, the class report
    export.export(db_url, ASSIGNMENT, "canvas", tmp_path / "canvas.csv")
    canvas = list(csv.reader(io.StringIO((tmp_path / "canvas.csv").read_text(encoding="utf-8"))))
    assert canvas[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"] and canvas[1][-1] == "3"
    assert ["0, Student", "1000", "s00", "", "", "3"] in canvas
    export.export(db_url, ASSIGNMENT, "moodle", tmp_path / "moodle.csv")
    moodle = {r["Identifier"]: r for r in csv.DictReader((tmp_path / "moodle.csv").open(encoding="utf-8"))}
    assert moodle["Participant 1001"]["Grade"] == "1.5" and moodle["Participant 1030"]["Status"] == "No submission"
    count, missing = export.feedback_zip(course_dir, db_url, ASSIGNMENT, tmp_path / "fb.zip")
    assert count == N + 2 and not missing
    with zipfile.ZipFile(tmp_path / "fb.zip") as z:
        assert f"s00/{ASSIGNMENT}-feedback.html" in z.namelist() and "README.txt" in z.namelist()
    from grader import report
    page = report.report(db_url, ASSIGNMENT, tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert ASSIGNMENT in text and "transposed" in text.lower()
    return first_run


@pytest.mark.slow
def test_a_term_on_sqlite(tmp_path):
    seconds = _term(tmp_path, course.sqlite_url(tmp_path / "course" / "gradebook.db"))
    print(f"30-student autograde with roster and late policy: {seconds:.1f} s")


@pytest.mark.slow
def test_a_term_on_postgresql(tmp_path, postgres):
    _term(tmp_path, postgres)


def test_a_failed_regrade_keeps_the_earlier_grade(tmp_path):
    """A corrupt re-upload never turns a graded row into a failure, and grades.csv stays whole."""
    from grading_helpers import answered, put
    subs, out = tmp_path / "subs", tmp_path / "out"
    name = f"{ASSIGNMENT}.ipynb"
    put(subs, "ada", name, answered())
    put(subs, "ben", name, answered(TRANSPOSED))
    settings = autograde.Settings(jobs=2, limits=LIMITS, progress=False)
    autograde.autograde(subs, ASSIGNMENT, out, settings)
    (subs / "ada" / name).write_text("{broken")
    autograde.autograde(subs, ASSIGNMENT, out, autograde.Settings(**{**settings.__dict__, "students": ("ada",)}))
    rows = {r["student_id"]: r for r in csv.DictReader((out / "grades.csv").open(encoding="utf-8"))}
    assert set(rows) == {"ada", "ben"}
    assert rows["ada"]["status"] == "graded" and float(rows["ada"]["score"]) == 3
    assert "could not be graded" in rows["ada"]["reason"] and "earlier grade stands" in rows["ada"]["reason"]
    # grading another assignment into the same folder keeps this one's rows in its gradebook
    assert [r.student_id for r in gradebook.rows(course.sqlite_url(out / "gradebook.db"), ASSIGNMENT)] == ["ada", "ben"]


def test_validate_cannot_be_fooled_by_a_renamed_notebook_with_its_tests_replaced(tmp_path, capsys):
    from grader import validate
    from grading_helpers import answered
    nb = answered(TRANSPOSED)
    for cell in nb.cells:
        if nbs.is_test(cell):
            cell.source = "pass"
    path = tmp_path / "my_notebook.ipynb"
    nbformat.write(nb, path)
    assert validate.validate(path, LIMITS) == 1
    out = capsys.readouterr().out
    assert f"is {ASSIGNMENT}" in out and "FAIL" in out and "all visible tests pass" not in out


def test_the_released_notebooks_ship_with_the_grader():
    from grader import layouts
    shipped = layouts.released_notebooks()
    assert set(shipped) == set(course.assignments())
    import pathlib
    import grader
    assert (pathlib.Path(grader.__file__).parent / "released" / f"{ASSIGNMENT}.ipynb").is_file()
