"""The console script as an instructor types it: demo, autograde, validate, bad arguments."""

import subprocess
import sys

import pytest

from grader import cli
from grading_helpers import ASSIGNMENT, answered, put


def test_demo_prints_the_table(capsys):
    from grader import demo
    results = demo.demo()
    out = capsys.readouterr().out
    assert "student_id,assignment,score,max_score,status,reason" in out
    by = {r.student_id: r for r in results}
    assert by["ada"].score == by["ada"].max_score
    assert by["ben"].score == 0 and by["ben"].status == "graded"
    assert 0 < by["cy"].score < by["cy"].max_score
    assert by["dee"].status == "failed" and by["fay"].status == "failed"
    assert "interrupted" in by["eli"].reason


def test_console_script_autograde_with_db_url(tmp_path):
    subs = tmp_path / "subs"
    put(subs, "s1", f"{ASSIGNMENT}.ipynb", answered())
    db = tmp_path / "elsewhere" / "course.db"
    db.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "grader", "autograde", str(subs), "--assignment", ASSIGNMENT,
                           "--out", str(tmp_path / "out"), "--jobs", "1", "--timeout", "60",
                           "--db-url", f"sqlite:///{db}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "s1,01_dot_products,3,3,graded," in (tmp_path / "out" / "grades.csv").read_text()
    assert db.exists() and not (tmp_path / "out" / "gradebook.db").exists()
    assert "1 graded" in proc.stderr  # the summary table


def test_unknown_assignment_and_missing_folder_are_clear(tmp_path, capsys):
    assert cli.main(["autograde", str(tmp_path), "--assignment", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown assignment 'nope'" in capsys.readouterr().err
    assert cli.main(["autograde", str(tmp_path / "missing"), "--assignment", ASSIGNMENT, "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["autograde", str(tmp_path), "--assignment", ASSIGNMENT, "--out", "o", "--jobs", "0"])
