"""How well the checkers name mistakes: ``python tests/checker_coverage.py``.

For every exercise of the library (tests/library.py): mutants, how many the checker rejects,
how many of those with a named misconception (the first line of its AssertionError names what
went wrong) rather than a generic difference, and correct implementations accepted. The goal:
at least 90% named over the whole library, at least 75% for every exercise.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from library import is_named, libraries, run  # noqa: E402


def table() -> tuple[list[tuple], float]:
    rows, named_all, total_all = [], 0, 0
    for ex in libraries():
        caught = named = 0
        for m in ex.mutants:
            error = run(ex, m.fn)
            if error is not None:
                caught += 1
                named += is_named(error)
        accepted = sum(run(ex, fn) is None for fn in ex.correct)
        rows.append((ex.name, len(ex.mutants), caught, named, accepted, len(ex.correct)))
        named_all += named
        total_all += len(ex.mutants)
    return rows, named_all / total_all if total_all else 0.0


def main() -> int:
    rows, share = table()
    print("| exercise | mutants | rejected | named | named % | correct accepted |")
    print("|---|---|---|---|---|---|")
    for name, n, caught, named, accepted, correct in rows:
        pct = 100 * named / n if n else 0
        print(f"| {name} | {n} | {caught} | {named} | {pct:.0f}% | {accepted}/{correct} |")
    print(f"\nnamed over the whole library: {100 * share:.1f}%")
    worst = min((100 * r[3] / r[1] for r in rows if r[1]), default=0)
    print(f"lowest exercise: {worst:.0f}%")
    return 0 if share >= 0.9 and worst >= 75 else 1


if __name__ == "__main__":
    sys.exit(main())
