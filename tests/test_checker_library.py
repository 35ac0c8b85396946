"""Every checker against its library (tests/library.py): each mutant rejected, with its
misconception named on the first line where the library says which; each correct
implementation accepted; and one correct implementation per exercise accepted through the
grader's data-only proxy (tests/remote_loopback.py)."""

import pytest

from library import first_line, libraries, run
from remote_loopback import remote

EXERCISES = libraries()
MUTANTS = [(ex, m) for ex in EXERCISES for m in ex.mutants]
CORRECT = [(ex, i, fn) for ex in EXERCISES for i, fn in enumerate(ex.correct)]


@pytest.mark.parametrize("exercise,mutant", MUTANTS, ids=[f"{e.name}:{m.name}" for e, m in MUTANTS])
def test_mutant_is_rejected_with_its_hint(exercise, mutant):
    error = run(exercise, mutant.fn)
    assert error is not None, f"check_{exercise.name} accepted: {mutant.name}"
    if mutant.hint is not None:
        assert mutant.hint in first_line(error), (mutant.name, first_line(error))


@pytest.mark.parametrize("exercise,index,fn", CORRECT, ids=[f"{e.name}:{i}" for e, i, _ in CORRECT])
def test_correct_implementation_is_accepted(exercise, index, fn):
    error = run(exercise, fn)
    assert error is None, f"check_{exercise.name} refused correct style #{index}: {first_line(error)}"


@pytest.mark.parametrize("exercise", [e for e in EXERCISES if e.remote and e.correct], ids=lambda e: e.name)
def test_checker_works_through_the_graders_proxy(exercise):
    fn = exercise.correct[0]
    with remote(fn, exercise.name) as proxy:
        assert run(exercise, proxy) is None


def test_every_exercise_has_a_library():
    from attnkit.checks import CHECKS, NOTEBOOK_CHECKS
    covered = {e.name for e in EXERCISES}
    missing = sorted((set(CHECKS) | set(NOTEBOOK_CHECKS)) - covered)
    assert not missing, f"no mutant library for: {', '.join(missing)}"
