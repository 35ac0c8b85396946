"""Did a Triton kernel actually run? A Triton exercise must launch a kernel; a wrapper around
``torch.softmax`` or ``F.scaled_dot_product_attention`` launches none.

:func:`count_launches` (from :mod:`attnkit._spy`) patches the launch path shared by compiled
and interpreted kernels for the duration of a block and records the name of every kernel
launched; under the autograder it counts in the learner's kernel.
"""

from __future__ import annotations

import torch

from .. import _spy


def padded(x: torch.Tensor, slack: int, fill: float) -> torch.Tensor:
    """``x``'s values, contiguous, followed in memory by ``slack`` elements of ``fill``.

    A kernel load that runs past the end of ``x`` then reads defined values (``fill``) rather
    than foreign memory, and a checker can tell from the output what the kernel read.
    """
    flat = torch.full((x.numel() + slack,), fill, dtype=x.dtype, device=x.device)
    flat[:x.numel()] = x.reshape(-1)
    return flat[:x.numel()].view(x.shape)


# Counting launches lives in attnkit._spy (the grader's kernel agent counts them too).
count_launches = _spy.count_launches


def call_kernel(c, label: str, *args):
    """``c.call`` for a Triton exercise. Two failures are not about the learner's kernel and are
    said so first: their Triton/NumPy versions (one sentence naming them and the fix, from
    :func:`attnkit._triton.version_problem`); then a stub (``raise NotImplementedError`` in a
    ``@triton.jit`` body reaches us wrapped in the interpreter's error, or on a GPU as a
    compilation error that quotes it) is reported as not implemented."""
    from .. import _remote, _triton

    if not _remote.is_remote(c.fn):
        _triton.fix_interpreter()  # Triton < 3.7 with NumPy >= 2.4 (idempotent; the grader's kernel does it too)
    try:
        return c.call(label, *args)
    except AssertionError as e:
        problem = _triton.version_problem(e)
        if problem is not None:
            raise AssertionError(f"{c.name}: {problem}\n  failing case: {label}") from e
        cause = e.__cause__
        while cause is not None:
            if isinstance(cause, NotImplementedError) or "NotImplementedError" in str(cause):
                raise AssertionError(f"{c.name}: not implemented yet. Your kernel still raises NotImplementedError: "
                                     f"replace it with the kernel's body.") from None
            cause = cause.__cause__
        raise
