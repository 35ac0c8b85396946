"""--db-url with a real PostgreSQL server (nbgrader's multi-grader set-up), on a throwaway cluster."""

from grader import autograde, grade
from grading_helpers import ASSIGNMENT, TRANSPOSED, answered, put

# the `postgres` fixture (a throwaway cluster; skips without the server) is in conftest.py


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
