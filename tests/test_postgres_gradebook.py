"""--db-url with a real PostgreSQL server (nbgrader's multi-grader set-up), on a throwaway cluster."""

import glob
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from grader import autograde, grade
from grading_helpers import ASSIGNMENT, TRANSPOSED, answered, put

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(not BIN or shutil.which("setpriv") is None, reason="PostgreSQL server not installed")


def _as_nobody(*cmd):
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    subprocess.run(prefix + list(cmd), check=True, capture_output=True, timeout=120)


@pytest.fixture
def postgres():
    pytest.importorskip("psycopg")
    root = pathlib.Path(tempfile.mkdtemp(prefix="attn-pg-"))  # pytest's tmp_path is not traversable by nobody
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
    bindir = pathlib.Path(BIN[-1])
    _as_nobody(str(bindir / "initdb"), "-D", str(root / "data"), "--auth=trust", "-U", "grader")
    _as_nobody(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", f"-k {root} -c listen_addresses=''",
               "-l", str(root / "log"), "-w", "start")
    try:
        _as_nobody(str(bindir / "createdb"), "-h", str(root), "-U", "grader", "course")
        yield f"postgresql://grader@/course?host={root}"
    finally:
        _as_nobody(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_autograde_into_postgresql(tmp_path, postgres):
    subs = tmp_path / "subs"
    put(subs, "pat", f"{ASSIGNMENT}.ipynb", answered())
    put(subs, "sam", f"{ASSIGNMENT}.ipynb", answered(TRANSPOSED))
    settings = autograde.Settings(jobs=2, db_url=postgres, progress=False, limits=grade.Limits(cell_timeout=60))
    autograde.autograde(subs, ASSIGNMENT, tmp_path / "out", settings)
    assert not (tmp_path / "out" / "gradebook.db").exists()
    from nbgrader.api import Gradebook
    with Gradebook(postgres, course_id="attention-course") as gb:
        assert gb.find_submission(ASSIGNMENT, "pat").score == 3.0
        assert gb.find_submission(ASSIGNMENT, "sam").score == 0.0
    # grading twice replaces, never duplicates
    autograde.autograde(subs, ASSIGNMENT, tmp_path / "out2", settings)
    with Gradebook(postgres, course_id="attention-course") as gb:
        assert len(gb.assignment_submissions(ASSIGNMENT)) == 2
