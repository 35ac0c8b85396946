"""Did a Triton kernel actually run? A Triton exercise must launch a kernel; a wrapper around
``torch.softmax`` or ``F.scaled_dot_product_attention`` launches none.

:func:`count_launches` patches the launch path shared by compiled and interpreted kernels
(``fn[grid](...)`` calls ``run(grid=..., warmup=False, ...)``) for the duration of a block
and records the name of every kernel launched.
"""

from __future__ import annotations

import contextlib

import torch
from triton.runtime import jit as _jit


def padded(x: torch.Tensor, slack: int, fill: float) -> torch.Tensor:
    """``x``'s values, contiguous, followed in memory by ``slack`` elements of ``fill``.

    A kernel load that runs past the end of ``x`` then reads defined values (``fill``) rather
    than foreign memory, and a checker can tell from the output what the kernel read.
    """
    flat = torch.full((x.numel() + slack,), fill, dtype=x.dtype, device=x.device)
    flat[:x.numel()] = x.reshape(-1)
    return flat[:x.numel()].view(x.shape)


def _classes():
    classes = [_jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - older/newer Triton without the interpreter class
        pass
    return classes


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as launched: ...``; ``launched`` lists kernel names, one per launch."""
    launched: list[str] = []
    originals = {}
    for cls in _classes():
        original = cls.__dict__.get("run")
        if original is None:
            continue
        originals[cls] = original

        def run(self, *args, _original=original, **kwargs):
            if not kwargs.get("warmup", False):
                fn = getattr(self, "fn", None)
                launched.append(getattr(fn, "__name__", None) or getattr(self, "__name__", "kernel"))
            return _original(self, *args, **kwargs)

        cls.run = run
    try:
        yield launched
    finally:
        for cls, original in originals.items():
            cls.run = original
