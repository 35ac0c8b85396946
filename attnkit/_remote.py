"""The learner's objects as seen from the grader's examiner: proxies over a data-only channel.

Under the autograder the tests of a notebook run in an examiner process in which no learner
code ever runs. A name the learner's notebook defines (an exercise function, a class, a
value) reaches a test as one of:

* plain data (a tensor, a number, a string, a tuple of tensors, ...), decoded by
  :mod:`attnkit._wire`, a copy the test can compare at will;
* a :class:`Remote` proxy for anything else (a function, a class, a module, an object):
  calling it, or reading an attribute of it, sends the request to the learner's kernel and
  decodes the reply. Arguments cross as plain data; a result that is itself not data comes
  back as another proxy (a ``mask_mod`` returned by a factory, a module instance).

A tensor argument that the learner's function changes in place is *not* changed here (a test's
expected values are computed from its inputs; the learner's code must never rewrite them): the
call fails with :class:`InputChanged`, the same hint a checker gives in a notebook. An exception the
learner's code raises arrives with its type name, its message and its cause chain, rebuilt
as an exception of the same builtin class where there is one (``ValueError``,
``NotImplementedError``, ...) and otherwise a :class:`RemoteError` subclass named after it.

:func:`there` runs a helper where an object lives: ``there(mask_mod, create_mask, B, H, N, N)``
is ``create_mask(mask_mod, B, H, N, N)`` in the same process for a local function, and runs in
the learner's kernel for a proxy (FlexAttention's ``torch.vmap`` cannot call across processes).

The transport (:func:`set_transport`) is installed by the grader's examiner; without one,
there are no proxies and everything here is a no-op for local objects.
"""

from __future__ import annotations

import builtins
import inspect
import keyword

import torch

from . import _spy, _wire

_transport = None


def set_transport(transport) -> None:
    """``transport.request(header: dict, buffers: list) -> (header, buffers)``; None removes it."""
    global _transport
    _transport = transport


class RemoteError(Exception):
    """An exception raised by the learner's code that has no builtin counterpart here."""

    remote_type = "RemoteError"


_BUILTIN_ERRORS = {name: getattr(builtins, name) for name in (
    "ArithmeticError", "AssertionError", "AttributeError", "BufferError", "EOFError", "FloatingPointError",
    "ImportError", "IndexError", "KeyError", "LookupError", "MemoryError", "ModuleNotFoundError", "NameError",
    "NotImplementedError", "OSError", "OverflowError", "RecursionError", "RuntimeError", "SyntaxError",
    "TimeoutError", "TypeError", "UnboundLocalError", "UnicodeError", "ValueError", "ZeroDivisionError",
    "IndentationError", "Exception")}
_classes: dict[str, type] = {}


def _error_class(name: str) -> type:
    """An exception class named ``name``: the builtin's subclass, or a RemoteError subclass."""
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) and len(name) <= 80):
        name = "RemoteError"
    cls = _classes.get(name)
    if cls is None:
        base = _BUILTIN_ERRORS.get(name)
        bases = (base, RemoteError) if base is not None else (RemoteError,)
        cls = type(name, bases, {"remote_type": name, "__module__": "learner",
                                 "__str__": lambda self: self.args[0] if self.args else ""})
        if len(_classes) < 1000:
            _classes[name] = cls
    return cls


def remote_exception(error, depth: int = 0) -> BaseException:
    """The exception described by the plain-data ``error`` ({"type", "message", "cause"})."""
    if not isinstance(error, dict):
        return RemoteError("the learner's kernel reported an error without a description")
    message = error.get("message")
    message = message[:4000] if isinstance(message, str) else ""
    exc = _error_class(error.get("type"))(message)
    cause = error.get("cause")
    if cause is not None and depth < 8:
        exc.__cause__ = remote_exception(cause, depth + 1)
    return exc


INPUT_CHANGED = ("your function changed its input in place; build new tensors instead "
                 "(e.g. x = x - m rather than x -= m)")


class InputChanged(AssertionError):
    """The learner's function changed a tensor it was given (reported by the kernel)."""


class GradingChannelError(RuntimeError):
    """The grader could not reach the learner's kernel (time limit, the kernel died)."""


class Remote:
    """An object that lives in the learner's kernel: read its attributes, iterate over it;
    :class:`RemoteCallable` (a function, a class, a module instance) can be called too."""

    __slots__ = ("_attn_ref", "_attn_kind", "_attn_name", "_attn_sig")

    def __init__(self, ref, kind: str, name: str, sig):
        object.__setattr__(self, "_attn_ref", ref)
        object.__setattr__(self, "_attn_kind", kind)
        object.__setattr__(self, "_attn_name", name)
        object.__setattr__(self, "_attn_sig", sig)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return request("getattr", self, (name,), {})

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set attributes of the learner's {self._attn_kind} {self._attn_name}")

    def __repr__(self) -> str:
        return f"<learner's {self._attn_kind} {self._attn_name}>"

    def __bool__(self) -> bool:
        return True

    @property
    def __signature__(self):
        sig = self._attn_sig
        if not isinstance(sig, list):
            raise ValueError(f"no signature for {self._attn_name}")
        params = []
        for entry in sig[:64]:
            try:
                name, kind, has_default = entry
                params.append(inspect.Parameter(name, inspect._ParameterKind(kind),
                                                default=None if has_default else inspect.Parameter.empty))
            except (TypeError, ValueError):
                raise ValueError(f"no signature for {self._attn_name}") from None
        try:
            return inspect.Signature(params)
        except ValueError:
            raise ValueError(f"no signature for {self._attn_name}") from None

    def __iter__(self):
        items = request("call", self, (), {}, op="iter")
        return iter(items if isinstance(items, (list, tuple)) else [])


class RemoteCallable(Remote):
    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return request("call", self, args, kwargs)


def is_remote(obj) -> bool:
    return isinstance(obj, Remote)


def there(obj, helper, *args, **kwargs):
    """``helper(obj, *args, **kwargs)``, run where ``obj`` lives (see the module docstring).
    ``helper`` must be importable by its module and qualified name in the learner's kernel."""
    if isinstance(obj, Remote):
        return request("apply", obj, args, kwargs, helper=_spy.qualified(helper))
    return helper(obj, *args, **kwargs)


def _send_ref(obj):
    if isinstance(obj, Remote):
        return {"h": list(obj._attn_ref[:2])}
    raise _wire.WireError(f"a {type(obj).__name__} cannot be sent to the learner's code (only plain data can)")


def _proxy(body):
    if not isinstance(body, list) or len(body) < 5:
        raise _wire.WireError("malformed handle")
    ref_id, token, kind, name, sig = body[:5]
    if type(ref_id) is not int or not isinstance(token, str) or kind not in ("function", "class", "module", "object"):
        raise _wire.WireError("malformed handle")
    cls = RemoteCallable if len(body) < 6 or body[5] is True else Remote
    return cls((ref_id, token[:64]), kind, str(name)[:120], sig if isinstance(sig, list) else None)


def request(op: str, target, args=(), kwargs=None, *, helper: str | None = None, names=None):
    """Send one request to the learner's kernel and decode the reply (or raise what it raised)."""
    if _transport is None:
        raise GradingChannelError("no connection to the learner's kernel")
    with _spy.paused():
        enc = _wire.Encoder(handle=_send_ref)
        fields = {"op": op}
        if target is not None:
            fields["h"] = _send_ref(target)["h"]
        if names is not None:
            fields["names"] = [str(n) for n in names]
        if helper is not None:
            fields["helper"] = helper
        fields["args"] = enc.encode(list(args))
        fields["kwargs"] = enc.encode(dict(kwargs or {}))
        if op in ("call", "apply", "iter"):
            fields["observe"] = _spy.remote_observe()
        header, buffers = _transport.request(enc.header(**fields), enc.buffers)
        if not isinstance(header, dict):
            raise GradingChannelError("a malformed reply from the learner's kernel")
        if header.get("channel_error"):
            raise GradingChannelError(str(header["channel_error"])[:500])
        observed = header.get("observed")
        dec = _wire.Decoder(header, buffers, handle=_proxy)
        if not header.get("ok"):
            _spy_report(observed)
            raise remote_exception(header.get("error"))
        value = dec.decode(header.get("value"))
        mutated = header.get("mutated") or []
    _spy_report(observed)
    if mutated:
        # Never copied into the examiner's tensors: a test's expected values are computed from its
        # inputs, and the learner's code must not be able to rewrite them. A change is a failure.
        raise InputChanged(INPUT_CHANGED)
    return value


def _spy_report(observed) -> None:
    if isinstance(observed, dict):
        _spy.remote_report(observed)


def lookup(names) -> dict:
    """The learner's values for ``names`` (missing names are absent): data or proxies."""
    values = request("lookup", None, (), {}, names=list(names))
    return values if isinstance(values, dict) else {}


def release() -> None:
    """Let the learner's kernel drop every object it holds for the examiner."""
    if _transport is not None:
        try:
            request("release", None)
        except (GradingChannelError, _wire.WireError, RemoteError):  # the kernel may be gone: nothing to release
            pass
