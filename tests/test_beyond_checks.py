"""Checkers of notebook 15's exercises (the gated delta rule, recurrent and chunked). Their
correct styles and realistic mutants live in the mutant library tests/library_modern.py, which
tests/test_checker_library.py runs; here, what that library must hold."""

from library_modern import EXERCISES

NAMES = ("gated_delta_rule", "gated_delta_rule_chunked")
MINE = [e for e in EXERCISES if e.name in NAMES]

# (exercise, function[, hint]) as tests/test_checks.py counts them
CORRECT = [(e.name, fn) for e in MINE for fn in e.correct]
WRONG = [(e.name, m.fn, m.hint) for e in MINE for m in e.mutants]


def test_every_checker_has_eight_mutants_and_three_styles():
    assert {e.name for e in MINE} == set(NAMES)
    for e in MINE:
        assert sum(1 for m in e.mutants if m.hint and m.hint != "calls") >= 8, e.name
        assert len(e.correct) >= 3, e.name
