"""``attn-grade release [--check]``: student notebooks from the one source in ``solutions/``.

Each solution notebook goes through nbgrader's ``generate_assignment`` (solution regions
stubbed, hidden tests removed, cells locked, outputs cleared, checksums computed), then is
written with sorted keys, stable cell ids and no outputs, so that two releases of the same
source are identical byte for byte.
"""

from __future__ import annotations

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


def release(check: bool = False, solutions: pathlib.Path | None = None,
            notebooks: pathlib.Path | None = None) -> list[str]:
    """Write (or, with ``check``, compare) every student notebook; return the names that differ."""
    solutions = solutions or course.SOLUTIONS
    notebooks = notebooks or course.NOTEBOOKS
    sources = course.assignments(solutions)
    texts = {name: student_version(path) for name, path in sources.items()}
    notebooks.mkdir(exist_ok=True)
    drifted = []
    for name, text in texts.items():
        target = notebooks / sources[name].name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            drifted.append(target.name)
            if not check:
                target.write_text(text, encoding="utf-8")
    for stale in sorted(set(p.name for p in notebooks.glob("*.ipynb")) - {p.name for p in sources.values()}):
        drifted.append(f"{stale} (no source in solutions/)")
        if not check:
            (notebooks / stale).unlink()
    return drifted
