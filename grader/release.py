"""``attn-grade release [NAME ...] [--check] [--course DIR]``: student notebooks from the one
source in ``solutions/``.

Each solution notebook goes through nbgrader's ``generate_assignment`` (solution regions
stubbed, hidden tests removed, cells locked, outputs cleared, checksums computed), then is
written with sorted keys, stable cell ids and no outputs, so that two releases of the same
source are identical byte for byte. Names select assignments (all by default); notebooks are
generated two at a time.

With ``--course DIR`` the release also lays out nbgrader's course folder: ``DIR/source/<a>/``
(the instructor's notebook), ``DIR/release/<a>/`` (the student version), the assignment
registered in ``DIR``'s gradebook and an ``nbgrader_config.py``, so nbgrader's exchange
(``nbgrader release_assignment``, ``collect``) and formgrader work on it.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib

import nbformat

from . import course
from . import notebooks as nbs


class ReleaseError(Exception):
    pass


def student_version(source: pathlib.Path, db_url: str | None = None) -> str:
    """The student notebook generated from ``source``, as the exact text to commit."""
    with course.nbgrader_course(db_url) as (api, root):
        course.add_source(root, source)
        result = api.generate_assignment(source.stem)
        if not result["success"]:
            detail = (result.get("error") or result.get("log") or "").strip().splitlines()
            raise ReleaseError(f"nbgrader could not release {source.name}: {detail[-1] if detail else 'unknown error'}")
        nb = nbformat.read(root / "release" / source.stem / source.name, as_version=4)
    return nbs.dumps(nbs.normalise(nb))


def _select(sources: dict, names) -> dict:
    if not names:
        return sources
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise ReleaseError(f"unknown assignment(s) {', '.join(unknown)}; the course has: {', '.join(sources)}")
    return {n: sources[n] for n in names}


def release(check: bool = False, solutions: pathlib.Path | None = None, notebooks: pathlib.Path | None = None,
            names=None, course_dir: pathlib.Path | None = None, jobs: int = 2) -> list[str]:
    """Write (or, with ``check``, compare) the student notebooks; return the names that differ."""
    solutions = solutions or course.SOLUTIONS
    notebooks = notebooks or course.NOTEBOOKS
    sources = _select(course.assignments(solutions), names)
    if jobs > 1 and len(sources) > 1:  # nbgrader's apps are not thread-safe: one process each
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs,
                                                    mp_context=multiprocessing.get_context("fork")) as pool:
            texts = dict(zip(sources, pool.map(student_version, sources.values())))
    else:
        texts = {name: student_version(path) for name, path in sources.items()}
    notebooks.mkdir(exist_ok=True)
    drifted = []
    for name, text in texts.items():
        target = notebooks / sources[name].name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            drifted.append(target.name)
            if not check:
                target.write_text(text, encoding="utf-8")
    if not names:
        for stale in sorted(set(p.name for p in notebooks.glob("*.ipynb")) - {p.name for p in sources.values()}):
            drifted.append(f"{stale} (no source in solutions/)")
            if not check:
                (notebooks / stale).unlink()
    if course_dir is not None and not check:
        lay_out_course(pathlib.Path(course_dir), sources, texts)
    return drifted


def lay_out_course(root: pathlib.Path, sources: dict, texts: dict, db_url: str | None = None) -> None:
    """nbgrader's ``source/`` and ``release/`` trees, the gradebook entries and a config in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    db_url = db_url or course.sqlite_url(root / "gradebook.db")
    for name, path in sources.items():
        for tree, text in (("source", path.read_text(encoding="utf-8")), ("release", texts[name])):
            folder = root / tree / name
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.ipynb.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, folder / f"{name}.ipynb")
        student_version(path, db_url=db_url)  # registers the assignment's cells and points in the gradebook
    config = root / "nbgrader_config.py"
    if not config.exists():
        config.write_text("# Written by attn-grade release: nbgrader's exchange and formgrader use this course.\n"
                          "c = get_config()  # noqa: F821\n"
                          f"c.CourseDirectory.course_id = {course.COURSE_ID!r}\n", encoding="utf-8")
