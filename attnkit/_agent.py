"""The grader's agent inside a learner's kernel: answers the examiner's requests with plain data.

When a notebook is graded, the grader installs this agent in the learner's kernel before any
of the learner's code runs (:func:`install`). It registers a Jupyter comm target; the grader
relays the examiner's requests over that comm:

* ``lookup``: the values of names the tests use (data, or a handle for anything else);
* ``call`` / ``getattr`` / ``iter``: call an object the examiner holds a handle on, read one
  of its attributes, list what it iterates over;
* ``apply``: run a named helper (``module:qualname``, e.g. FlexAttention's ``create_mask``)
  on such an object, here, where it lives;
* ``release``: forget every handle.

Around ``call`` and ``apply`` the watchers the examiner asked for (a shortcut ban, a Triton
launch count, see :mod:`attnkit._spy`) run here and report what they saw. Tensor arguments
the call changed in place are reported back so the examiner's copies change too.

Nothing here is trusted by the grader: the learner's code shares this process and could
replace the agent. The grader only ever reads plain data from it (:mod:`attnkit._wire`),
and the score is decided in the examiner from that data.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import secrets

import torch

from . import _spy, _wire

TARGET = "attn-grade"
MAX_ITEMS = 10_000


class Agent:
    def __init__(self, namespace: dict, exercises: tuple[str, ...] = ()):
        self.ns = namespace
        self.exercises = set(exercises)
        self.token = secrets.token_hex(8)
        self.objects: dict[int, object] = {}
        self._ids: dict[int, int] = {}  # id(obj) -> handle id, so one object keeps one handle
        self._next = 1

    # ------------------------------------------------------------------ handles
    def _handle(self, obj) -> dict:
        key = id(obj)
        ref = self._ids.get(key)
        if ref is None or self.objects.get(ref) is not obj:
            ref = self._next
            self._next += 1
            self.objects[ref] = obj
            self._ids[key] = ref
        if inspect.ismodule(obj):
            kind = "module"
        elif isinstance(obj, type):
            kind = "class"
        elif callable(obj) and (inspect.isroutine(obj) or not hasattr(obj, "__dict__") or inspect.isfunction(obj)):
            kind = "function"
        else:
            kind = "object"
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
        return {"h": [ref, self.token, kind, str(name)[:120], _signature(obj), callable(obj)]}

    def _resolve(self, body):
        if not (isinstance(body, list) and len(body) >= 2 and type(body[0]) is int and body[1] == self.token):
            raise _wire.WireError("a handle from an earlier kernel (it was restarted) or a malformed one")
        if body[0] not in self.objects:
            raise _wire.WireError("a handle that was released")
        return self.objects[body[0]]

    @contextlib.contextmanager
    def _hiding(self, target):
        """While an exercise function is being checked, ``attnkit.<its name>`` refuses to run:
        the reference is not the learner's to call. (Not a security boundary: attnkit's source
        is public; the shortcut ban reports a call of the reference's code as well.)"""
        import attnkit

        name = getattr(target, "__name__", None)
        if not (isinstance(name, str) and name in self.exercises and hasattr(attnkit, name)):
            yield
            return
        original = getattr(attnkit, name)
        setattr(attnkit, name, _hidden(name))
        try:
            yield
        finally:
            setattr(attnkit, name, original)

    # ------------------------------------------------------------------ requests
    def handle(self, header: dict, buffers: list) -> tuple[dict, list]:
        """One request -> one reply; never raises."""
        enc = _wire.Encoder(handle=self._handle)
        try:
            op = header.get("op")
            dec = _wire.Decoder(header, buffers, handle=self._resolve)
            args = dec.decode(header.get("args", []))
            kwargs = dec.decode(header.get("kwargs", {"D": []}))
            if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise _wire.WireError("malformed arguments")
            target = self._resolve(header["h"]) if header.get("h") is not None else None
            observed: dict = {}
            mutated: list = []
            if op == "lookup":
                names = [n for n in header.get("names", []) if isinstance(n, str)]
                value = {n: self.ns[n] for n in names[:1000] if n in self.ns}
            elif op == "getattr":
                value = getattr(target, str(args[0]))
            elif op == "release":
                self.objects.clear()
                self._ids.clear()
                value = None
            elif op in ("call", "apply", "iter"):
                before = _snapshot(args, kwargs)
                spec = header.get("observe") if isinstance(header.get("observe"), dict) else {}
                with _spy.observing(spec) as observed, self._hiding(target):
                    if op == "call":
                        value = target(*args, **kwargs)
                    elif op == "iter":
                        value = list(itertools.islice(iter(target), MAX_ITEMS))
                    else:
                        helper = _spy.resolve(str(header.get("helper", "")))
                        if not callable(helper):
                            raise LookupError(f"the grader's helper {header.get('helper')!r} is not available here")
                        value = helper(target, *args, **kwargs)
                mutated = [[path, enc.encode(after)] for path, after in _changed(before, args, kwargs)]
            else:
                raise _wire.WireError(f"unknown request {op!r}")
            if inspect.isgenerator(value) or type(value).__name__ in ("generator", "dict_values", "dict_keys",
                                                                       "dict_items", "map", "filter", "zip"):
                value = list(itertools.islice(value, MAX_ITEMS))
            reply = {"ok": True, "value": enc.encode(value), "mutated": mutated, "observed": observed}
            return enc.header(**reply), enc.buffers
        except BaseException as e:  # noqa: BLE001 - the learner's exception, described as data
            fresh = _wire.Encoder()
            observed = locals().get("observed") if isinstance(locals().get("observed"), dict) else {}
            return fresh.header(ok=False, error=describe(e), observed=_plain_observed(observed)), fresh.buffers


def _plain_observed(observed: dict) -> dict:
    try:
        return {k: [str(s)[:200] for s in v][:MAX_ITEMS] for k, v in observed.items() if isinstance(v, list)}
    except Exception:  # noqa: BLE001
        return {}


def describe(e: BaseException, depth: int = 0) -> dict:
    """An exception as plain data: its type's name, its message, its cause."""
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        message = f"<{type(e).__name__} whose message could not be read>"
    cause = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return {"type": type(e).__name__[:80], "message": message[:4000],
            "cause": describe(cause, depth + 1) if cause is not None and depth < 8 else None}


def _signature(obj):
    if not callable(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, int(p.kind), p.default is not inspect.Parameter.empty] for p in list(sig.parameters.values())[:64]]


def _tensors(value, path, out, depth=0):
    if depth > 8:
        return
    if isinstance(value, torch.Tensor):
        out.append((path, value))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value[:256]):
            _tensors(v, path + [i], out, depth + 1)
    elif isinstance(value, dict):
        for k, v in list(value.items())[:256]:
            if isinstance(k, (str, int)):
                _tensors(v, path + [k], out, depth + 1)


def _snapshot(args, kwargs):
    found: list = []
    _tensors(args, ["args"], found)
    _tensors(kwargs, ["kwargs"], found)
    return [(path, t, t.detach().clone()) for path, t in found]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _changed(before, args, kwargs):
    for path, tensor, copy in before:
        if not _same(tensor.detach(), copy):
            yield path, tensor


def install(shell, exercises: tuple[str, ...] = ()) -> Agent:
    """Register the agent's comm target on ``shell``'s kernel. ``exercises``: the names the
    notebook's exercises define (their attnkit references are hidden while they are checked)."""
    agent = Agent(shell.user_ns, tuple(exercises))

    def on_open(comm, open_msg):
        @comm.on_msg
        def _message(msg):
            header, buffers = agent.handle(msg["content"].get("data") or {}, list(msg.get("buffers") or []))
            comm.send(header, buffers=[memoryview(b) if not isinstance(b, memoryview) else b for b in buffers])

    shell.kernel.comm_manager.register_target(TARGET, on_open)
    return agent


def _hidden(name: str):
    def hidden(*args, **kwargs):
        raise RuntimeError(f"attnkit.{name} is the exercise being graded in this notebook: use your own {name}")
    hidden.__name__ = hidden.__qualname__ = name
    return hidden
