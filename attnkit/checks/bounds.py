"""Did a Triton kernel touch memory outside its tensors? The interpreter does not say.

A kernel receives each tensor as a pointer to its first element, and nothing stops
``tl.load(X + offsets)`` from reading past the end when ``offsets`` runs beyond ``n``: on a GPU
it reads whatever lies there (or stops with an illegal memory access), and a ``tl.store`` past
the end overwrites someone else's data. Triton's interpreter reads and writes raw addresses in
the same way. For an element-wise kernel the damage is invisible in the output: the lanes past
the end are exactly the ones whose results are thrown away (or written where nobody looks).

:class:`Bounds` watches every ``tl.load`` and ``tl.store`` a call runs in the interpreter
(Triton-Puzzles, by Sasha Rush, checks its puzzles the same way). Each access must stay inside
the tensor it starts in: the elements from the tensor's first one to its last one, as its
shape and strides lay them out (a slice's neighbours in a larger storage count as outside,
past its last element). Lanes that fall outside are recorded and switched off before they
reach memory, so a missing mask can never corrupt the learner's process or the checker's
inputs. :meth:`Bounds.hint` turns what was seen into one sentence.

On a GPU nothing runs in the interpreter and nothing is watched; the checkers then fall back on
what their inputs' padding reveals. Under the grader the watcher is re-created in the learner's
kernel (:class:`attnkit._spy.Watcher`) and its findings come back as plain data.
"""

from __future__ import annotations

import inspect

from .. import _spy

MAX_EVENTS = 16


def _interpreter():
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - a Triton without the interpreter
        return None
    if not all(hasattr(interpreter, n) for n in ("InterpreterBuilder", "InterpretedFunction", "TensorHandle")):
        return None
    return interpreter


def _extent(t):
    """``(first byte, one past the last byte, item size)`` of the elements of tensor ``t``."""
    size = t.element_size()
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr(), size
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + span * size, size


class Bounds(_spy.Watcher):
    """Record (and switch off) the lanes of interpreted loads and stores that leave their tensor.

    ``events``: one ``{"kernel", "op", "tensor", "lanes", "past", "before", "size"}`` per
    (kernel, load or store, tensor argument): how many lanes left the tensor, the farthest one
    past its last element (``past``, in elements: 1 is the element right after it), the
    farthest before its first (``before``), and the tensor's number of elements (``size``)."""

    def __init__(self, limit: int = MAX_EVENTS):
        self.limit = int(limit)
        self.events: list[dict] = []
        self._launch: list = []  # [(kernel name, [(name, lo, hi, itemsize)])] of the launch running now
        self._patched: list = []

    def params(self) -> dict:
        return {"limit": self.limit}

    # -- watching ------------------------------------------------------------------------------

    def start(self) -> None:
        interp = _interpreter()
        if interp is None:
            return
        watcher = self
        builder, function = interp.InterpreterBuilder, interp.InterpretedFunction
        run0 = function.__dict__.get("run")
        load0 = builder.__dict__.get("create_masked_load")
        store0 = builder.__dict__.get("create_masked_store")
        if run0 is None or load0 is None or store0 is None:
            return

        def run(fn_self, *args, _original=run0, **kwargs):
            if kwargs.get("warmup", False) or _spy._PAUSE[0] or watcher not in _spy.ACTIVE:
                return _original(fn_self, *args, **kwargs)
            watcher._launch.append((_kernel_name(fn_self), _ranges(fn_self, args, kwargs)))
            try:
                return _original(fn_self, *args, **kwargs)
            finally:
                watcher._launch.pop()

        def create_masked_load(b_self, ptrs, mask, *rest, _original=load0, **kwargs):
            return _original(b_self, ptrs, watcher._inside(interp, "load", ptrs, mask), *rest, **kwargs)

        def create_masked_store(b_self, ptrs, value, mask, *rest, _original=store0, **kwargs):
            return _original(b_self, ptrs, value, watcher._inside(interp, "store", ptrs, mask), *rest, **kwargs)

        for owner, name, new, old in ((function, "run", run, run0), (builder, "create_masked_load", create_masked_load,
                                                                     load0),
                                      (builder, "create_masked_store", create_masked_store, store0)):
            setattr(owner, name, new)
            self._patched.append((owner, name, old))

    def stop(self) -> None:
        for owner, name, old in reversed(self._patched):
            setattr(owner, name, old)
        self._patched = []

    def _inside(self, interp, op, ptrs, mask):
        """``mask`` with the lanes that leave their tensor switched off (recorded in ``events``)."""
        if not self._launch:
            return mask
        try:
            import numpy as np

            kernel, ranges = self._launch[-1]
            addr = np.asarray(ptrs.data).astype(np.uint64)
            active = np.ones(addr.shape, dtype=bool) if mask is None else np.broadcast_to(
                np.asarray(mask.data).astype(bool), addr.shape)
            if not active.any() or not ranges:
                return mask
            itemsize = np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize
            live = addr[active].astype(np.int64)  # addresses fit in 63 bits on every platform Triton runs on
            first = int(live.min())
            name, lo, hi = _home(ranges, first, int(live.max()))
            outside = active & ((addr.astype(np.int64) < lo) | (addr.astype(np.int64) + itemsize > hi))
            if not outside.any():
                return mask
            bad = addr[outside].astype(np.int64)
            past = int(((bad.max() - hi) // itemsize) + 1) if (bad >= hi).any() else 0
            before = int(-((bad.min() - lo) // itemsize)) if (bad < lo).any() else 0
            self._record(kernel, op, name, int(outside.sum()), past, before, (hi - lo) // max(itemsize, 1))
            return interp.TensorHandle(active & ~outside, _int1(interp, mask))
        except Exception:  # noqa: BLE001 - an interpreter this cannot read: watch nothing, change nothing
            return mask

    def _record(self, kernel, op, tensor, lanes, past, before, size):
        for e in self.events:
            if (e["kernel"], e["op"], e["tensor"]) == (kernel, op, tensor):
                e["lanes"] += lanes
                e["past"], e["before"] = max(e["past"], past), max(e["before"], before)
                return
        if len(self.events) < self.limit:
            self.events.append({"kernel": kernel, "op": op, "tensor": tensor, "lanes": lanes, "past": past,
                                "before": before, "size": int(size)})

    # -- reporting -----------------------------------------------------------------------------

    def report(self) -> dict:
        return {"events": [dict(e) for e in self.events[:self.limit]]}

    def absorb(self, report: dict) -> None:
        for e in list(report.get("events") or ())[:self.limit]:
            if not isinstance(e, dict):
                continue
            try:
                self._record(str(e.get("kernel", ""))[:100], "store" if e.get("op") == "store" else "load",
                             str(e.get("tensor", ""))[:100], int(e.get("lanes", 0)), int(e.get("past", 0)),
                             int(e.get("before", 0)), int(e.get("size", 0)))
            except (TypeError, ValueError):
                continue

    def off_by_one(self) -> bool:
        """Every access outside reached exactly one element past the end (``offsets <= n``)."""
        return bool(self.events) and all(e["past"] == 1 and e["before"] == 0 for e in self.events)

    def hint(self, fix: str, one_past: str = "") -> str | None:
        """One sentence about the accesses outside a tensor (None when there was none): the
        farthest read and the farthest write. ``fix``: what the learner should mask, in the
        exercise's names; ``one_past``: the hint for an off-by-one mask (every access exactly one
        element past the end), when the exercise has one."""
        if not self.events:
            return None
        where = f" (in {self.events[0]['kernel']})" if self.events[0]["kernel"] else ""
        if one_past and self.off_by_one():
            return one_past + where
        parts = []
        for op, verb in (("load", "read"), ("store", "wrote")):
            mine = [e for e in self.events if e["op"] == op]
            if not mine:
                continue
            e = max(mine, key=lambda e: (e["past"], e["before"]))
            tensor = e["tensor"] or "a tensor"
            if e["before"] and not e["past"]:
                far = f"{e['before']} element{'s' if e['before'] > 1 else ''} before the start of {tensor}"
            else:
                far = f"{e['past']} element{'s' if e['past'] > 1 else ''} past the end of {tensor}"
            parts.append(f"{verb} up to {far} ({tensor} has {e['size']} elements)")
        harm = "on a GPU that reads or overwrites other data (or stops with an illegal memory access)"
        return f"your kernel {' and '.join(parts)}; {harm}, and the interpreter does not stop it. {fix}{where}"


def _kernel_name(fn_self) -> str:
    fn = getattr(fn_self, "fn", None)
    return str(getattr(fn, "__name__", None) or getattr(fn_self, "__name__", "kernel"))[:100]


def _ranges(fn_self, args, kwargs):
    """``[(argument name, first byte, end byte, item size)]`` for every tensor argument of a launch."""
    fn = getattr(fn_self, "fn", None)
    names = []
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    values = list(args) + [kwargs[k] for k in kwargs if k in params]
    names = params[:len(args)] + [k for k in kwargs if k in params]
    out = []
    for name, value in zip(names, values):
        if hasattr(value, "data_ptr") and hasattr(value, "element_size") and hasattr(value, "stride"):
            try:
                lo, hi, size = _extent(value)
            except Exception:  # noqa: BLE001 - not a tensor after all
                continue
            out.append((str(name), lo, hi, size))
    return out


def _home(ranges, first, last):
    """The tensor an access belongs to: the one holding its first address; else the one it ran
    past the end of (nearest below); else the one it starts before (nearest above)."""
    for name, lo, hi, _ in ranges:
        if lo <= first < hi:
            return name, lo, hi
    below = [r for r in ranges if r[2] <= first]
    if below:
        name, lo, hi, _ = max(below, key=lambda r: r[2])
        return name, lo, hi
    name, lo, hi, _ = min(ranges, key=lambda r: r[1] - last if r[1] > last else float("inf"))
    return name, lo, hi


def _int1(interp, mask):
    if mask is not None and getattr(mask, "dtype", None) is not None:
        return mask.dtype
    import triton.language as tl
    return tl.int1
