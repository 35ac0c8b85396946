"""Checkers of notebook 14's exercises. Their correct styles and realistic mutants live in the
mutant library tests/library_modern.py, which tests/test_checker_library.py runs (each mutant
rejected with its hint, each style accepted, one style through the grader's proxy); here, what
that library must hold."""

from library_modern import EXERCISES

NAMES = ("paged_attention", "mla_scores", "sink_attention", "yarn_inv_freq", "flash_decode")
MINE = [e for e in EXERCISES if e.name in NAMES]

# (exercise, function[, hint]) as tests/test_checks.py counts them
CORRECT = [(e.name, fn) for e in MINE for fn in e.correct]
WRONG = [(e.name, m.fn, m.hint) for e in MINE for m in e.mutants]


def test_every_checker_has_eight_mutants_and_three_styles():
    assert {e.name for e in MINE} == set(NAMES)
    for e in MINE:
        assert sum(1 for m in e.mutants if m.hint and m.hint != "calls") >= 8, e.name
        assert any(m.hint == "calls" for m in e.mutants), f"{e.name}: no shortcut mutant"
        assert len(e.correct) >= 3, e.name
