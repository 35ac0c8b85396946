"""Where things are, and nbgrader's API on a throwaway course directory.

nbgrader wants a course directory (``source/``, ``release/``, ``submitted/``, a gradebook).
The repository keeps a simpler layout (``solutions/``, ``notebooks/``), so each command that
needs nbgrader builds a temporary course directory, runs nbgrader's API there and copies
out what it needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import sys
import tempfile

from traitlets.config import Config

def _course_root() -> pathlib.Path:
    """The course checkout: ``$ATTN_COURSE_ROOT``, else this package's parent (an editable
    install, as requirements.txt makes), else the current folder."""
    if os.environ.get("ATTN_COURSE_ROOT"):
        return pathlib.Path(os.environ["ATTN_COURSE_ROOT"]).resolve()
    beside = pathlib.Path(__file__).resolve().parents[1]
    return beside if (beside / "solutions").is_dir() else pathlib.Path.cwd().resolve()


REPO = _course_root()
SOLUTIONS = REPO / "solutions"
NOTEBOOKS = REPO / "notebooks"
# nbgrader's course id. SQLite does not enforce it, PostgreSQL does (assignments reference it).
COURSE_ID = "attention-course"


def assignments(solutions: pathlib.Path = SOLUTIONS) -> dict[str, pathlib.Path]:
    """Assignment name (the notebook's file stem) -> its source notebook."""
    return {p.stem: p for p in sorted(solutions.glob("*.ipynb"))}


def ensure_tools_on_path() -> None:
    """nbgrader shells out to ``alembic`` when it creates a gradebook; it lives beside python."""
    bindir = str(pathlib.Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def sqlite_url(path: pathlib.Path) -> str:
    return f"sqlite:///{pathlib.Path(path).resolve()}"


@contextlib.contextmanager
def nbgrader_course(db_url: str | None = None, root: pathlib.Path | None = None):
    """Yield ``(api, root)``: an ``NbGraderAPI`` on a temporary course directory."""
    ensure_tools_on_path()
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    owned = root is None
    root = pathlib.Path(tempfile.mkdtemp(prefix="attn-course-")) if owned else root
    try:
        config = Config()
        config.CourseDirectory.root = str(root)
        config.CourseDirectory.db_url = db_url or sqlite_url(root / "gradebook.db")
        config.CourseDirectory.course_id = COURSE_ID
        config.Exchange.root = str(root / "exchange")
        coursedir = CourseDirectory(config=config)
        api = NbGraderAPI(coursedir=coursedir, config=config)
        api.log.setLevel(logging.ERROR)
        yield api, root
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def add_source(root: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
    """Place ``source`` as the single notebook of assignment ``source.stem``."""
    folder = root / "source" / source.stem
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    return target
