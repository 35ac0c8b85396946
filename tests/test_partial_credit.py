"""Partial credit: a near miss earns part of a test's points.

In a notebook a checker stops at the first failing case and names the misconception. Under
the grader every case runs; the test cell earns the fraction of cases that passed, and the
message is still the first case's hint.
"""

import nbformat
import pytest
import torch

from attnkit.checks import _harness, check_causal_mask, check_softmax
from grader import course, grade, sandbox
from grader import notebooks as nbs


def unstable_softmax(x, dim=-1):  # right for ordinary inputs, NaN for huge logits and -inf rows
    e = torch.exp(x)
    return e / e.sum(dim, keepdim=True)


def strict_causal(n_q, n_k):  # off by one on the diagonal
    i = torch.arange(n_q)[:, None] + (n_k - n_q)
    return torch.arange(n_k)[None, :] < i


def test_in_a_notebook_the_first_failure_stops_the_checker():
    with pytest.raises(AssertionError) as err:
        check_softmax(unstable_softmax)
    assert not isinstance(err.value, _harness.CheckFailed)
    assert "numerically stable" in str(err.value) or "-inf" in str(err.value)


def test_under_the_grader_every_case_runs_and_the_fraction_is_counted():
    with _harness.partial_credit() as reports:
        with pytest.raises(_harness.CheckFailed) as err:
            check_softmax(unstable_softmax)
    failed = err.value
    assert 0 < failed.passed < failed.total and reports == [("softmax", failed.passed, failed.total)]
    assert "cases failed" in str(failed)
    # the first line is still the first failing case's hint, with the count after it
    with pytest.raises(AssertionError) as strict:
        check_softmax(unstable_softmax)
    assert str(failed).splitlines()[0] == str(strict.value).splitlines()[0] + \
        f" ({failed.total - failed.passed} of {failed.total} cases failed)"


def test_a_correct_function_reports_every_case_passed():
    with _harness.partial_credit() as reports:
        check_causal_mask(lambda n_q, n_k: torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q))
    ((name, passed, total),) = reports
    assert name == "causal_mask" and passed == total > 1


def test_a_stub_earns_nothing():
    def stub(n_q, n_k):
        raise NotImplementedError
    with _harness.partial_credit() as reports:
        with pytest.raises(AssertionError, match="not implemented yet"):
            check_causal_mask(stub)
    assert reports == []


def test_graded_near_miss_earns_part_of_the_points(tmp_path):
    name = "02_softmax"
    source = nbformat.read(course.assignments()[name], as_version=4)
    template = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "import torch\n\ndef softmax(x, dim=-1):\n    e = torch.exp(x)\n    return e / e.sum(dim, keepdim=True)\n"
    nb = nbs.as_student_answer(template, source, {"softmax": code})
    result = grade.grade_notebook("near", nb, source, template, tmp_path / "w",
                                  sandbox.Policy(mode=sandbox.resolve_mode("auto")), grade.Limits(cell_timeout=120))
    assert result.status == "graded", result.reason
    partial = [t for t in result.tests if t.status == "partial"]
    assert partial and 0 < partial[0].points < partial[0].max_points, result.tests
    assert 0 < result.score < result.max_score
