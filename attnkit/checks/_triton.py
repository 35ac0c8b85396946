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
