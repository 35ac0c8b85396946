"""Watching *how* a learner's function computes: banned shortcuts and Triton launches.

A checker compares values, which says *what* a function returns. Two exercises also care
*how*: a softmax exercise should not call ``torch.softmax``, a Triton exercise must launch a
kernel. Both can only be seen inside the process where the learner's code runs:

* :class:`Ban` lists the shortcuts; :class:`Spy` records the banned calls made while it is
  active (torch functions through a ``TorchFunctionMode``, attnkit's own references through
  a profile hook, and results shaped like a full score matrix);
* :func:`count_launches` records every Triton kernel launched.

When a check runs in the learner's own notebook, both watch the call directly. When the
autograder runs it, the checks run in a separate examiner process and the learner's function
in the learner's kernel: every watcher active in the examiner (``ACTIVE``) is described as
plain data (``remote_spec``), re-created around the call in the kernel, and what it saw comes
back as plain data (``remote_report``). Code in the learner's kernel could forge that report,
so these observations are a teaching aid, never a security boundary: the score rests on the
values the examiner compares.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode, resolve_name

ACTIVE: list = []  # watchers active in this process, innermost last
_PAUSE = [0]  # > 0 while the grader's own transport code runs (not the learner's)


@contextlib.contextmanager
def paused():
    """Watchers ignore what happens inside (encoding and decoding of remote calls)."""
    _PAUSE[0] += 1
    try:
        yield
    finally:
        _PAUSE[0] -= 1


@dataclass(frozen=True)
class KwargTrue:
    """A ban predicate as plain data: banned when keyword ``name`` is passed and true."""

    name: str

    def __call__(self, args, kwargs) -> bool:
        return bool(kwargs.get(self.name, False))


@dataclass
class Ban:
    """Shortcuts an exercise may not call while being checked.

    functions: qualified torch names as ``torch.overrides.resolve_name`` gives them
        (``"torch.nn.functional.softmax"``), each mapped to ``None`` (always banned) or a
        :class:`KwargTrue` (banned when that keyword is set).
    aten: prefixes of ATen operator names (``"aten._softmax"``) called through ``torch.ops``.
    python: Python functions (attnkit's own references) whose code may not run.
    hint: what to do instead, in the learner's terms.
    forbid_shape: no torch result may end in this ``(Nq, Nk)`` shape (a full score matrix).
    """

    functions: dict[str, Callable | None] = field(default_factory=dict)
    aten: tuple[str, ...] = ()
    python: tuple[Callable, ...] = ()
    hint: str = ""
    forbid_shape: tuple[int, int] | None = None

    def spec(self) -> dict:
        """This ban as plain data (see :func:`ban_from_spec`)."""
        functions = {}
        for name, predicate in self.functions.items():
            if predicate is None:
                functions[name] = None
            elif isinstance(predicate, KwargTrue):
                functions[name] = {"kwarg_true": predicate.name}
            else:
                raise TypeError(f"ban predicate for {name} must be None or KwargTrue to be sent to a kernel")
        return {"functions": functions, "aten": list(self.aten), "python": [qualified(f) for f in self.python],
                "hint": self.hint, "forbid_shape": list(self.forbid_shape) if self.forbid_shape else None}


def qualified(f) -> str:
    """``module:qualname`` of a function or method (what :func:`resolve` takes back)."""
    f = getattr(f, "__func__", f)
    return f"{getattr(f, '__module__', '') or ''}:{getattr(f, '__qualname__', '')}"


def resolve(name: str):
    """The object named ``module:qualname``; None when it cannot be found."""
    module_name, _, qualname = str(name).partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


def ban_from_spec(spec: dict) -> Ban:
    """The :class:`Ban` described by ``Ban.spec()``; references that do not resolve are skipped."""
    functions = {}
    for name, predicate in dict(spec.get("functions") or {}).items():
        if predicate is None:
            functions[str(name)] = None
        elif isinstance(predicate, dict) and isinstance(predicate.get("kwarg_true"), str):
            functions[str(name)] = KwargTrue(predicate["kwarg_true"])
    python = tuple(f for f in (resolve(n) for n in spec.get("python") or ()) if callable(f))
    shape = spec.get("forbid_shape")
    return Ban(functions, tuple(str(a) for a in spec.get("aten") or ()), python, str(spec.get("hint") or ""),
               tuple(int(s) for s in shape) if shape else None)


class _FunctionSpy(TorchFunctionMode):
    def __init__(self, ban: Ban, seen: list[str]):
        super().__init__()
        self.ban, self.seen = ban, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _PAUSE[0]:
            return func(*args, **kwargs)
        name = resolve_name(func) or getattr(func, "__qualname__", repr(func))
        if name in self.ban.functions:
            predicate = self.ban.functions[name]
            if predicate is None or predicate(args, kwargs):
                self.seen.append(name)
        elif self.ban.aten and name.startswith(self.ban.aten):
            self.seen.append(name)
        result = func(*args, **kwargs)
        shape = self.ban.forbid_shape
        if shape is not None and isinstance(result, torch.Tensor) and tuple(result.shape[-2:]) == shape:
            self.seen.append(f"{name} (it builds a full {shape[0]} x {shape[1]} score matrix)")
        return result


class Spy:
    """Records banned calls made while active: torch functions (``torch.ops`` included) and
    Python code. A ``TorchFunctionMode`` sees every torch call however it was reached (a name
    imported before the check, a method, ``torch.ops.aten``); a dispatch-level mode would see
    more but costs a second of ``torch._dynamo`` import in every fresh kernel."""

    def __init__(self, ban: Ban):
        self.ban = ban
        self.seen: list[str] = []
        self._codes = {getattr(getattr(f, "__func__", f), "__code__", None): _qualname(f) for f in ban.python}
        self._codes.pop(None, None)
        self._modes = []

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code in self._codes:
            self.seen.append(self._codes[frame.f_code])

    def remote_spec(self) -> dict:
        return {"ban": self.ban.spec()}

    def remote_report(self, observed: dict) -> None:
        self.seen.extend(str(s)[:200] for s in list(observed.get("banned") or ())[:50])

    def __enter__(self):
        self._modes = []
        if self.ban.functions or self.ban.aten or self.ban.forbid_shape:
            self._modes.append(_FunctionSpy(self.ban, self.seen))
        for mode in self._modes:
            mode.__enter__()
        # Calls into attnkit's references are seen through a profile hook. Under another
        # profiler (cProfile, a debugger) the hook is left alone: it could not be restored.
        self._profiling = bool(self._codes) and sys.getprofile() is None
        if self._profiling:
            sys.setprofile(self._profile)
        ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        if self in ACTIVE:
            ACTIVE.remove(self)
        if self._profiling:
            sys.setprofile(None)
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False


def _qualname(f) -> str:
    f = getattr(f, "__func__", f)
    module = getattr(f, "__module__", "") or ""
    return f"{module}.{getattr(f, '__qualname__', repr(f))}".lstrip(".")


def _launch_classes():
    try:
        from triton.runtime import jit as _jit
    except ImportError:
        return []
    classes = [_jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - a Triton without the interpreter class
        pass
    return classes


class _LaunchCounter:
    def __init__(self):
        self.launched: list[str] = []

    def remote_spec(self) -> dict:
        return {"launches": True}

    def remote_report(self, observed: dict) -> None:
        self.launched.extend(str(s)[:200] for s in list(observed.get("launches") or ())[:10_000])


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as launched: ...``; ``launched`` lists kernel names, one per launch.

    Patches the launch path shared by compiled and interpreted kernels (``fn[grid](...)``
    calls ``run(grid=..., warmup=False, ...)``) for the duration of the block."""
    counter = _LaunchCounter()
    launched = counter.launched
    originals = {}
    for cls in _launch_classes():
        original = cls.__dict__.get("run")
        if original is None:
            continue
        originals[cls] = original

        def run(self, *args, _original=original, **kwargs):
            if not kwargs.get("warmup", False) and not _PAUSE[0]:
                fn = getattr(self, "fn", None)
                launched.append(getattr(fn, "__name__", None) or getattr(self, "__name__", "kernel"))
            return _original(self, *args, **kwargs)

        cls.run = run
    ACTIVE.append(counter)
    try:
        yield launched
    finally:
        if counter in ACTIVE:
            ACTIVE.remove(counter)
        for cls, original in originals.items():
            cls.run = original


class Watcher:
    """Watching one more thing about *how* a call computes (a checker's own kind of watch: tile
    shapes, a compile check). Subclass it: ``start()``/``stop()`` bracket the call, ``report()``
    returns what was seen as plain data, ``absorb(report)`` takes a report in. Locally the
    watcher watches directly (``with Watcher(...) as w:``). Under the grader the examiner sends
    ``params()`` with the class's ``module:qualname``; the learner's kernel re-creates it with
    ``cls(**params)`` around the call, and its ``report()`` comes back to the examiner's
    ``absorb()``. Like the ban, a teaching aid: the kernel could forge a report."""

    def params(self) -> dict:
        return {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def report(self) -> dict:
        return {}

    def absorb(self, report: dict) -> None:
        pass

    def __enter__(self):
        ACTIVE.append(self)
        self.start()
        return self

    def __exit__(self, *exc):
        if self in ACTIVE:
            ACTIVE.remove(self)
        self.stop()
        return False

    def remote_spec(self) -> dict:
        return {"watcher": [qualified(type(self)), self.params()]}

    def remote_report(self, observed: dict) -> None:
        reports = observed.get("watchers")
        index = getattr(self, "_remote_index", None)
        if isinstance(reports, list) and index is not None and index < len(reports) and isinstance(reports[index], dict):
            self.absorb(reports[index])


def remote_observe() -> dict:
    """What the active watchers ask a remote kernel to observe around the next call."""
    spec: dict = {}
    for watcher in ACTIVE:
        part = watcher.remote_spec()
        if "ban" in part:
            spec.setdefault("bans", []).append(part["ban"])
        if part.get("launches"):
            spec["launches"] = True
        if "watcher" in part:
            watcher._remote_index = len(spec.setdefault("watchers", []))
            spec["watchers"].append(part["watcher"])
    return spec


def remote_report(observed: dict) -> None:
    """Hand what a remote kernel observed to the active watchers."""
    if not isinstance(observed, dict):
        return
    for watcher in ACTIVE:
        watcher.remote_report(observed)


def _watcher_from_spec(entry) -> Watcher | None:
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
        return None
    cls = resolve(str(entry[0]))
    if not (isinstance(cls, type) and issubclass(cls, Watcher)):
        return None
    try:
        return cls(**entry[1])
    except Exception:  # noqa: BLE001 - a watcher that cannot be made here watches nothing
        return None


@contextlib.contextmanager
def observing(spec: dict):
    """In the learner's kernel: watch one call as ``spec`` (from :func:`remote_observe`) asks.
    Yields a dict that holds, after the block, what was observed (plain data)."""
    observed: dict = {}
    with contextlib.ExitStack() as stack:
        spies = [stack.enter_context(Spy(ban_from_spec(b))) for b in (spec.get("bans") or ()) if isinstance(b, dict)]
        launches = stack.enter_context(count_launches()) if spec.get("launches") else None
        watchers = [_watcher_from_spec(e) for e in (spec.get("watchers") or ())[:16]]
        for w in watchers:
            if w is not None:
                stack.enter_context(w)
        try:
            yield observed
        finally:
            banned = [s for spy in spies for s in spy.seen]
            if banned:
                observed["banned"] = sorted(set(banned))
            if launches is not None:
                observed["launches"] = list(launches)
            if watchers:
                observed["watchers"] = [_plain_report(w) for w in watchers]


def _plain_report(w) -> dict:
    if w is None:
        return {}
    try:
        report = w.report()
    except Exception:  # noqa: BLE001
        return {}
    return report if isinstance(report, dict) else {}
