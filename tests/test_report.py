"""``attn-grade report``: the class page's numbers come from the gradebook and add up.

A gradebook (SQLite in a temporary folder) is filled through ``grader.gradebook.record`` with
synthetic ``grade.Result`` objects for a small source notebook registered through nbgrader, as
autograde does; no kernel runs. The page is then read back (BeautifulSoup) and every number
compared with the data: histogram counts, per-test pass rates, the misconceptions' shares and
their grouping across failing cases, late counts and penalties, failed rows, timeouts; and a
hostile student id and message must come out escaped.
"""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest
from bs4 import BeautifulSoup

from grader import course, gradebook, release
from grader import report as rep
from grader.grade import Result
from grader.grade import TestOutcome as Outcome

ASSIGNMENT = "07_report_demo"
POINTS = {"test_softmax": 2.0, "test_attention": 3.0, "test_mask": 1.0}
HIDDEN = "assert_hidden_secret_check(softmax)"  # a hidden test line that must never reach the page
SUM_HINT = "weights do not sum to 1 over keys: did you take softmax over the query axis? Use dim=-1"
HOSTILE_ID = '<script>alert("id")</script>$x$ & "quoted"'
HOSTILE_MESSAGE = "AssertionError: softmax: <img src=x onerror=alert(1)> broke failing case: </td><b>x</b>"


def _source(tmp: pathlib.Path, name: str = ASSIGNMENT) -> pathlib.Path:
    """A small source notebook: one answer cell, three test cells (one with hidden tests)."""
    def test(gid, points, body):
        return nbformat.v4.new_code_cell(body, metadata={"nbgrader": {
            "grade": True, "solution": False, "locked": True, "points": points, "grade_id": gid,
            "schema_version": 3}})
    cells = [nbformat.v4.new_markdown_cell("# Report demo"),
             nbformat.v4.new_code_cell("def softmax(x, dim=-1):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION",
                                       metadata={"nbgrader": {"grade": False, "solution": True, "locked": False,
                                                              "grade_id": "answer", "schema_version": 3}}),
             test("test_softmax", POINTS["test_softmax"],
                  f"check_softmax(softmax)\n### BEGIN HIDDEN TESTS\n{HIDDEN}\n### END HIDDEN TESTS"),
             test("test_attention", POINTS["test_attention"], "check_scaled_dot_product_attention(sdpa)"),
             test("test_mask", POINTS["test_mask"], "check_causal_mask(causal_mask)")]
    path = tmp / f"{name}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def _message(exercise: str, hint: str, case: str) -> str:
    # as grade.py stores it: one line ("\n  failing case" folded to " failing case")
    return " ".join(f"AssertionError: {exercise}: {hint}\n  failing case: {case}".split())


def _graded(sid, outcomes: dict, seconds=10.0, late_days=0.0, penalty=0.0, reason="") -> Result:
    tests = []
    for gid, (status, message, points) in outcomes.items():
        tests.append(Outcome(gid, POINTS[gid] if points is None else points, POINTS[gid], status, message))
    raw = sum(t.points for t in tests)
    return Result(sid, "graded", max(0.0, raw - penalty), sum(POINTS.values()), reason, tests, [], seconds,
                  file=f"{ASSIGNMENT}.ipynb", submitted_at="2025-01-10T12:00:00+00:00", late_days=late_days,
                  penalty=penalty, raw_score=raw)


OK = ("ok", "", None)


def _fail(message, points=0.0, status="error"):
    return (status, message, points)


def _class() -> list[Result]:
    """Ten graded students and two failed rows, with known mistakes.

    score (after penalty) by student: ada 6, ben 6-1, cy/dee/eli/fay 2+0+1, gus 0+3+1-0.5, hal 1+3+0,
    ivy 2+3+0, the hostile id 0 (a timeout and a test not run)."""
    sum_cases = ["12 queries x 16 keys, d=8, dv=6, no mask", "d=64 (the scale matters)",
                 "batched (B=2, H=3), causal mask (12, 16) broadcast over B and H", "d=1, one key"]
    long_hint = "your scores are " + "very " * 60 + "wrong"
    return [
        _graded("ada", {"test_softmax": OK, "test_attention": OK, "test_mask": OK}, seconds=12.5),
        _graded("ben", {"test_softmax": OK, "test_attention": OK, "test_mask": OK}, seconds=8.0,
                late_days=1.5, penalty=1.0),
        # the same mistake on four different failing cases, four students: one group of 40%
        *[_graded(sid, {"test_softmax": OK,
                        "test_attention": _fail(_message("scaled_dot_product_attention", SUM_HINT, case)),
                        "test_mask": OK}, seconds=20.0 + i)
          for i, (sid, case) in enumerate(zip(["cy", "dee", "eli", "fay"], sum_cases))],
        # numbers in the hint differ, one mistake; hal's earned partial credit
        _graded("gus", {"test_softmax": _fail(_message(
            "softmax", "largest difference 0.5 at index (1, 2) (expected 0.25, got 0.75)", "x (4, 10), default dim")),
            "test_attention": OK, "test_mask": OK}, late_days=0.2, penalty=0.5),
        _graded("hal", {"test_softmax": _fail(_message(
            "softmax", "largest difference 3.1e+02 at index (0, 7) (expected 1, got 312)", "large logits"), points=1.0),
            "test_attention": OK, "test_mask": _fail(_message("causal_mask", long_hint, "n_q=5, n_k=9"))}),
        # the same message cut at 300 characters, as grade.py cuts it; a cell that ran out of time
        _graded("ivy", {"test_softmax": OK, "test_attention": OK,
                        "test_mask": _fail(_message("causal_mask", long_hint, "n_q=3")[:297] + "...")},
                reason="cell 'answer' exceeded 30 s and was interrupted"),
        # a hostile id and message; a test over its time limit and one that did not run
        _graded(HOSTILE_ID, {"test_softmax": _fail(HOSTILE_MESSAGE),
                             "test_attention": _fail("RuntimeError: your code ran past this test's time limit and was "
                                                     "interrupted", status="timeout"),
                             "test_mask": _fail("not run (time limit or kernel failure)", status="not run")},
                seconds=95.0),
        Result("lee", "failed", None, sum(POINTS.values()), "no notebook in the folder (it is empty)"),
        Result("mo", "failed", None, sum(POINTS.values()), f"{ASSIGNMENT}.ipynb is not valid JSON "
                                                           f"(line 1: <b>{HIDDEN}</b>)", file=f"{ASSIGNMENT}.ipynb"),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    db_url = course.sqlite_url(tmp / "gradebook.db")
    source_path = _source(tmp)
    release.student_version(source_path, db_url=db_url)  # registers the assignment, as autograde does
    results = _class()
    gradebook.record(db_url, ASSIGNMENT, results)
    source = nbformat.read(source_path, as_version=4)
    page = rep.report(db_url, ASSIGNMENT, tmp / "out", source=source)
    return {"db_url": db_url, "tmp": tmp, "page": page, "results": results, "source": source,
            "rows": gradebook.rows(db_url, ASSIGNMENT), "html": page.read_text(encoding="utf-8"),
            "soup": BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")}


def _table(soup, table_id) -> list[list[str]]:
    table = soup.find("table", id=table_id)
    assert table is not None, table_id
    return [[td.get_text(" ", strip=True) for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]


def _stat(soup, name) -> str:
    return soup.find("div", attrs={"data-stat": name}).find("b").get_text()


def test_the_page_and_its_plots_are_written(built):
    page = built["page"]
    assert page == built["tmp"] / "out" / "report.html"
    for name in rep.PLOTS.values():
        data = (page.parent / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000, name
    html = built["html"]
    assert html.count("data:image/png;base64,") == len(rep.PLOTS)  # the page stands alone
    assert "<script" not in html.lower().replace("&lt;script", "")  # no script of its own: nothing to load
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from the network


def test_counts_of_graded_and_failed(built):
    soup, rows = built["soup"], built["rows"]
    assert len(rows) == 12
    assert _stat(soup, "graded") == "10"
    assert _stat(soup, "did not submit / could not be graded") == "2"
    failed = _table(soup, "failed-table")
    assert [r[0] for r in failed] == ["lee", "mo"]
    assert "no notebook in the folder (it is empty)" in failed[0][1]
    assert "not valid JSON" in failed[1][1] and failed[1][2] == f"{ASSIGNMENT}.ipynb"


def test_histogram_counts_match_the_scores(built):
    """Failed rows are not in the score statistics; scores are after the late penalty."""
    rows = built["rows"]
    scores = {r.student_id: r.score for r in rows if r.status == "graded"}
    assert scores == {"ada": 6, "ben": 5, "cy": 3, "dee": 3, "eli": 3, "fay": 3, "gus": 3.5, "hal": 4, "ivy": 5,
                      HOSTILE_ID: 0}
    table = {score: int(n) for score, n in _table(built["soup"], "histogram")}
    assert list(table) == ["0", "1", "2", "3", "4", "5", "6"]  # one bin per point up to the maximum, 6
    assert table == {str(k): sum(1 for s in scores.values() if k - 0.5 <= s < k + 0.5) for k in range(7)}
    assert table == {"0": 1, "1": 0, "2": 0, "3": 4, "4": 2, "5": 2, "6": 1}  # gus's 3.5 is nearest 4
    assert _stat(built["soup"], "mean score") == "3.55 / 6" and _stat(built["soup"], "full marks") == "1"
    stats = dict(_table(built["soup"], "score-stats"))
    assert stats["graded students"] == "10" and stats["median"] == "3.25" and stats["lowest"] == "0"


def test_pass_rate_per_test_matches_the_outcomes(built):
    rows = [r for r in built["rows"] if r.status == "graded"]
    table = {r[0]: r for r in _table(built["soup"], "test-table")}
    assert list(table) == ["test_softmax", "test_attention", "test_mask"]  # the source's order
    for gid in POINTS:
        outcomes = [t for r in rows for t in r.tests if t[0] == gid]
        passed = sum(1 for t in outcomes if t[3] == "ok")
        partial = sum(1 for t in outcomes if t[3] != "ok" and 0 < t[1] < t[2])
        mean = sum(t[1] for t in outcomes) / len(outcomes)
        _, points, n, full, rate, part, mean_shown, timeouts, not_run = table[gid]
        assert (points, int(n), int(full), int(part)) == (f"{POINTS[gid]:g}", len(outcomes), passed, partial)
        assert rate == f"{100 * passed / len(outcomes):.0f}%"
        assert mean_shown == f"{mean:.3g}"
    assert table["test_softmax"][4:7] == ["70%", "1", "1.5"]  # gus, hal (1 of 2 points), the hostile id
    assert table["test_attention"][4] == "50%" and table["test_attention"][7] == "1"  # 4 mistakes, 1 timeout
    assert table["test_mask"][4] == "70%" and table["test_mask"][8] == "1"  # hal, ivy; 1 not run


def test_misconceptions_are_grouped_across_cases_and_ranked(built):
    items = built["soup"].select("li.misconception")
    texts = [" ".join(li.get_text().split()) for li in items]
    # four students, four different failing cases, one mistake: 40% of the ten graded students, first
    assert texts[0].startswith("40% of the class (4 students): scaled_dot_product_attention: " + SUM_HINT), texts[0]
    for case in ["12 queries x 16 keys", "d=64 (the scale matters)"]:
        assert case in texts[0]
    # numbers differ, one mistake: "largest difference ..." of gus and hal together
    softmax = [t for t in texts if "largest difference" in t]
    assert len(softmax) == 1 and softmax[0].startswith("20% of the class (2 students): softmax: "), softmax
    assert "(2 wordings)" in softmax[0]
    # a message cut at 300 characters groups with the full one it starts with
    cut = [t for t in texts if "causal_mask" in t]
    assert len(cut) == 1 and cut[0].startswith("20% of the class (2 students)"), cut
    # the hostile message is one misconception of one student; time-outs and "not run" are not misconceptions
    assert len(texts) == 4, texts
    assert texts[-1].startswith("10% of the class (1 student): softmax: <img src=x onerror=alert(1)> broke")
    assert not any("time limit" in t or "not run" in t for t in texts)
    shares = [int(t.split("%")[0]) for t in texts]
    assert shares == sorted(shares, reverse=True)


def test_misconceptions_from_the_gradebook_rows(built):
    found = rep.misconceptions(built["rows"])
    assert [(m.exercise, len(m.students)) for m in found] == [
        ("scaled_dot_product_attention", 4), ("causal_mask", 2), ("softmax", 2), ("softmax", 1)]
    assert found[0].hint == SUM_HINT and found[0].tests == {"test_attention"}


def test_late_and_penalties(built):
    soup = built["soup"]
    assert _stat(soup, "late") == "2"
    late = _table(soup, "late-table")
    assert [r[0] for r in late] == ["ben", "gus"]  # most days late first
    assert late[0][2:] == ["1.50", "1", "6", "5"] and late[1][2:] == ["0.20", "0.5", "4", "3.5"]
    text = soup.get_text(" ", strip=True)
    assert "2 of 10 graded students submitted late; penalties total 1.5 points." in text


def test_timeouts_and_notes(built):
    soup = built["soup"]
    rows = {r[0]: r for r in _table(soup, "timeout-table")}
    assert set(rows) == {"ivy", HOSTILE_ID}
    assert "test_attention" in rows[HOSTILE_ID][1] and rows[HOSTILE_ID][2] == "95.0"
    assert "exceeded 30 s and was interrupted" in rows["ivy"][1]
    assert _stat(soup, "timed out") == "2"


def test_hostile_text_is_escaped_and_hidden_lines_never_shown(built):
    html = built["html"]
    assert '<script>alert("id")</script>' not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;$x$ &amp; &quot;quoted&quot;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert HOSTILE_ID in built["soup"].get_text()  # shown, as text
    assert HIDDEN not in html and "[hidden test line removed]" in html  # mo's reason quoted the hidden line
    assert built["soup"].find("script") is None and built["soup"].find("img", src="x") is None


def test_empty_class(tmp_path):
    db_url = course.sqlite_url(tmp_path / "gradebook.db")
    page = rep.report(db_url, "never_graded", tmp_path / "out")
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    assert soup.find(id="empty-class") is not None and soup.find("img") is None
    assert "0 students: 0 graded, 0 did not submit" in soup.get_text(" ", strip=True)
    assert not any((tmp_path / "out" / name).exists() for name in rep.PLOTS.values())


def test_a_class_where_everyone_passes(tmp_path):
    db_url = course.sqlite_url(tmp_path / "gradebook.db")
    release.student_version(_source(tmp_path), db_url=db_url)
    gradebook.record(db_url, ASSIGNMENT, [_graded(s, {g: OK for g in POINTS}, seconds=5 + i)
                                          for i, s in enumerate(["ada", "ben", "cy"])])
    page = rep.report(db_url, ASSIGNMENT, tmp_path / "out")
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    assert soup.find(id="no-misconceptions") is not None and not soup.select("li.misconception")
    assert [r[4] for r in _table(soup, "test-table")] == ["100%"] * 3
    assert {k: int(n) for k, n in _table(soup, "histogram")}["6"] == 3
    assert _stat(soup, "full marks") == "3" and _stat(soup, "late") == "0"
    assert "Everyone's submission was graded." in soup.get_text()
    assert not (tmp_path / "out" / rep.PLOTS["misconceptions"]).exists()
    assert len(soup.find_all("img")) == len(rep.PLOTS) - 1


def test_only_failed_rows(tmp_path):
    """Nobody could be graded: no score statistics, every row listed with its reason."""
    db_url = course.sqlite_url(tmp_path / "gradebook.db")
    release.student_version(_source(tmp_path), db_url=db_url)
    gradebook.record(db_url, ASSIGNMENT, [Result("ada", "failed", None, 6.0, "no notebook in the folder")])
    page = rep.report(db_url, ASSIGNMENT, tmp_path / "out")
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    assert _stat(soup, "graded") == "0" and _stat(soup, "mean score") == "-"
    assert _table(soup, "failed-table")[0][:2] == ["ada", "no notebook in the folder"]


@pytest.mark.parametrize("message, expected", [
    ("AssertionError: softmax: the result does not sum to 1 along dim: divide failing case: x (4, 10)",
     ("softmax", "the result does not sum to 1 along dim: divide", "x (4, 10)", False)),
    ("AssertionError: softmax: hint\n  failing case: one element",  # two spaces, as the checker writes it
     ("softmax", "hint", "one element", False)),
    ("CheckFailed: softmax: hint failing case: c (2 of 5 cases failed)", ("softmax", "hint", "c", False)),
    ("NameError: name 'softmax' is not defined", ("test_x", "NameError: name 'softmax' is not defined", "", False)),
    ("AssertionError: softmax: a cut hi...", ("softmax", "a cut hi", "", True)),
])
def test_parse_message(message, expected):
    assert rep.parse_message(message, "test_x") == expected


def test_normalise_folds_numbers_and_student_text():
    assert rep.normalise("largest difference 0.5 at index (1, 2)") == rep.normalise("largest difference 3e+02 at index (0, 17)")
    assert rep.normalise("your function raised TypeError: 'int' object is my own text") == \
        rep.normalise("your function raised TypeError: something else (hint)") == "your function raised typeerror"
    assert rep.normalise("wrong dtype: got torch.float64") != rep.normalise("wrong dtype: got torch.int64")


def test_a_large_class_renders_without_a_gradebook(tmp_path):
    """300 students, 40 points: ten score bins, a time histogram instead of one bar each."""
    rows = [gradebook.Row(f"s{i:03d}", ASSIGNMENT, float(i % 41), 40.0, "graded", seconds=5.0 + i % 17,
                          tests=[["test_softmax", 0.0, 40.0, "error",
                                  _message("softmax", f"largest difference {i / 7:.3g} at index ({i}, 0)", f"case {i}")]]
                          if i % 3 else [["test_softmax", 40.0, 40.0, "ok", ""]])
            for i in range(300)]
    page, plots = rep.render(ASSIGNMENT, rows)
    soup = BeautifulSoup(page, "html.parser")
    bins = _table(soup, "histogram")
    assert len(bins) == 10 and bins[-1][0] == "36-40" and sum(int(n) for _, n in bins) == 300
    assert sum(1 for r in rows if r.score >= 36) == int(bins[-1][1])  # the top bin is closed: 40 is in it
    (item,) = soup.select("li.misconception")  # 200 students, 200 cases, one mistake
    assert item.select_one(".share").get_text() == "67% of the class" and "(200 students)" in item.get_text()
    assert set(plots) == set(rep.PLOTS)
