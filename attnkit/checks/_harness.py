"""What every checker shares: calling the learner's function safely, spotting shortcuts,
and turning a wrong answer into a sentence about the likely misconception.

A checker builds seeded cases, computes the expected answer with attnkit's reference in
float64, calls the learner's ``fn`` through :func:`call`, and compares with :func:`expect`.
``expect`` is given the outputs of known mistakes ("softmax over the query axis", "no
1/sqrt(d)"); when the learner's output matches one of them, that mistake's hint is the
message. Otherwise the message says which property broke, on which case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

from .._remote import InputChanged
from .._spy import Ban, KwargTrue, Spy, Watcher, paused  # noqa: F401 - re-exported for the checkers

TOLERANCE = {
    # Learner code runs on float32 inputs and is compared with a float64 reference. A plain
    # float32 implementation of these small problems lands within ~1e-6 relative; the
    # bounds leave room for a different but sound order of operations.
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float16: dict(rtol=2e-3, atol=2e-4),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def fmt_shape(t) -> str:
    if isinstance(t, torch.Tensor):
        return "(" + ", ".join(str(s) for s in t.shape) + ")"
    return type(t).__name__


# The shortcut ban and its spy live in attnkit._spy, which the grader's kernel agent imports
# without loading every checker.
_Spy = Spy


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(i) for i in x)
    return x


def _unchanged(before, after) -> bool:
    if isinstance(before, torch.Tensor):
        return before.shape == after.shape and torch.equal(before, after)
    if isinstance(before, (list, tuple)):
        return all(_unchanged(b, a) for b, a in zip(before, after))
    return True


# Partial credit. In a notebook a checker stops at the first failing case and names the
# misconception. Under the grader (``partial_credit()``) every case inside ``with c.case(...)``
# runs even after one failed: the checker still raises the first case's hint at the end, as a
# ``CheckFailed`` that carries how many cases passed, and the grader gives the test cell that
# fraction of its points. ``REPORTS`` collects one (name, passed, total) per finished checker.
_PARTIAL = [0]
REPORTS: list[tuple[str, int, int]] = []


class CheckResult(str):
    """A checker's success line, which also says which cases passed (``cases``: their labels)."""

    def __new__(cls, line: str, cases=()):
        obj = super().__new__(cls, line)
        obj.cases = list(cases)
        return obj

    @property
    def passed(self) -> int:
        return len(self.cases)


class CheckFailed(AssertionError):
    """A checker's verdict with its count: ``passed`` of ``total`` cases."""

    def __init__(self, message: str, passed: int, total: int):
        super().__init__(message)
        self.passed, self.total = passed, total


@contextlib.contextmanager
def partial_credit():
    """Run checkers in this block case by case (see above); yields ``REPORTS``, emptied first."""
    REPORTS.clear()
    _PARTIAL[0] += 1
    try:
        yield REPORTS
    finally:
        _PARTIAL[0] -= 1


class Checker:
    """The state of one run of one checker: its name, its bans and how many cases passed."""

    def __init__(self, name: str, fn: Callable, ban: Ban | None = None):
        if not callable(fn):
            raise TypeError(f"check_{name} expects your function, got {type(fn).__name__} "
                            f"(pass the function itself: check_{name}({name}), no parentheses after it)")
        self.name, self.fn, self.ban = name, fn, ban or Ban()
        self.cases = 0
        self.groups = 0  # cases run under case()
        self.failures: list[str] = []
        self.labels: list[str] = []  # the cases that passed

    @contextlib.contextmanager
    def case(self, label: str):
        """One case of the checker. In a notebook a failure raises at once; under the grader's
        partial credit it is recorded and the next case runs."""
        self.groups += 1
        try:
            yield
        except AssertionError as e:
            if not _PARTIAL[0] or "not implemented yet" in str(e):
                raise
            self.failures.append(str(e))
        else:
            self.labels.append(str(label))

    def fail(self, case: str, message: str) -> None:
        raise AssertionError(f"{self.name}: {message}\n  failing case: {case}")

    def call(self, case: str, *args, if_raises: str = "", **kwargs):
        """Run the learner's function on one case, under the shortcut spy.

        if_raises: a hint added to the message when the function raises on this case.
        """
        before = _clone(args)
        spy = _Spy(self.ban)
        try:
            with spy:
                result = self.fn(*args, **kwargs)
        except NotImplementedError:
            raise AssertionError(f"{self.name}: not implemented yet. Replace the "
                                 f"`raise NotImplementedError` in your function with your code.") from None
        except InputChanged as e:  # the grader's kernel saw the learner's function change its input
            self.fail(case, str(e))
        except AssertionError:
            raise
        except Exception as e:  # the learner's bug; keep the traceback chained for them
            hint = f" ({if_raises})" if if_raises else ""
            raise AssertionError(f"{self.name}: your function raised {type(e).__name__}: {e}{hint}\n"
                                 f"  failing case: {case}") from e
        if spy.seen:
            used = ", ".join(sorted(set(spy.seen)))
            raise AssertionError(f"{self.name}: your function calls {used}, which does the work this "
                                 f"exercise asks you to write. {self.ban.hint}".rstrip())
        if not _unchanged(before, args):
            self.fail(case, "your function changed its input in place; build new tensors instead "
                            "(e.g. x = x - m rather than x -= m)")
        self.cases += 1
        return result

    def expect(self, case: str, got, want: torch.Tensor, *, what: str = "output",
               wrong: Iterable[tuple[torch.Tensor, str]] = (), dtype: torch.dtype | None = None,
               tol: dict | None = None, otherwise: str | None = None) -> None:
        """Compare one output with the expected one; explain the first mismatch found.

        wrong: (output of a known mistake, hint) pairs, tried in order when ``got`` is wrong.
        dtype: the dtype the output must have (default: no requirement).
        otherwise: the hint to give when the values are wrong in no known way.
        """
        if not isinstance(got, torch.Tensor):
            self.fail(case, f"expected the {what} to be a torch.Tensor, got {type(got).__name__}")
        got = got.detach().cpu()  # a learner on a GPU runtime may hand back a CUDA tensor
        if got.shape != want.shape:
            for candidate, hint in wrong:
                if candidate.shape == got.shape and _close(got, candidate, tol):
                    self.fail(case, hint)
            self.fail(case, f"wrong shape for the {what}: got {fmt_shape(got)}, expected {fmt_shape(want)}")
        if dtype is not None and got.dtype != dtype:
            self.fail(case, f"wrong dtype for the {what}: got {got.dtype}, expected {dtype}")
        if want.dtype == torch.bool or got.dtype == torch.bool:
            if got.dtype != want.dtype:
                self.fail(case, f"wrong dtype for the {what}: got {got.dtype}, expected {want.dtype}")
            if torch.equal(got, want):
                return
            for candidate, hint in wrong:
                if candidate.shape == got.shape and torch.equal(got, candidate.to(got.dtype)):
                    self.fail(case, hint)
            idx = tuple(int(i) for i in (got != want).nonzero()[0])
            self.fail(case, f"wrong {what} at index {idx}: expected {bool(want[idx])}, "
                            f"got {bool(got[idx])}")
        if _close(got, want, tol):
            return
        for candidate, hint in wrong:
            if candidate.shape == got.shape and _close(got, candidate, tol):
                self.fail(case, hint)
        nan = torch.isnan(got.detach()) & ~torch.isnan(want)
        if nan.any() and not otherwise:
            idx = tuple(int(i) for i in nan.nonzero()[0])
            self.fail(case, f"NaN in the {what} (first at index {idx}) where a number was expected")
        err = (got.detach().double() - want.double()).abs().nan_to_num(float("inf"))
        idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        w, gv = float(want[idx]), float(got[idx])
        digits = next((n for n in (6, 9, 12, 17) if f"{w:.{n}g}" != f"{gv:.{n}g}"), 17)  # enough to tell them apart
        prefix = f"{otherwise} (" if otherwise else f"wrong {what}: "
        suffix = ")" if otherwise else ""
        self.fail(case, f"{prefix}largest difference {float(err[idx]):.3g} at index {idx} "
                        f"(expected {w:.{digits}g}, got {gv:.{digits}g}){suffix}")

    def passed(self, covered: str) -> str:
        total = max(self.groups, 1)
        if self.failures:
            ok = total - len(self.failures)
            REPORTS.append((self.name, ok, total))
            first, _, rest = self.failures[0].partition("\n")
            count = f" ({len(self.failures)} of {total} cases failed)"
            raise CheckFailed(first + count + (f"\n{rest}" if rest else ""), ok, total)
        REPORTS.append((self.name, total, total))
        line = f"check_{self.name} passed: {self.cases} cases ({covered})"
        print(line)
        return CheckResult(line, self.labels)


def _close(got: torch.Tensor, want: torch.Tensor, tol: dict | None) -> bool:
    if got.shape != want.shape:
        return False
    if got.dtype == torch.bool or want.dtype == torch.bool:
        return torch.equal(got.bool(), want.bool())
    if not (got.is_floating_point() or got.is_complex()):
        got = got.double()
    tol = tol or TOLERANCE.get(got.dtype, TOLERANCE[torch.float32])
    return torch.allclose(got.detach().to(torch.float64), want.detach().to(torch.float64),
                          equal_nan=True, **tol)
