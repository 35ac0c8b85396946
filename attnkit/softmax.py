"""A numerically stable softmax.

``softmax(x)_i = exp(x_i) / sum_j exp(x_j)``. Computed literally, ``exp(1000)`` overflows
to ``inf`` and the result is ``inf / inf = nan``. Softmax does not change when the same
constant is subtracted from every entry, so we subtract the row maximum first: the largest
exponent becomes ``exp(0) = 1`` and nothing overflows (see Goodfellow, Bengio and Courville,
*Deep Learning*, 2016, section 4.1).

Masked entries arrive as ``-inf`` and must get probability exactly 0. A row that is all
``-inf`` (a query with nothing it may attend to) has maximum ``-inf`` and
``-inf - (-inf) = nan``; we give such a row all zeros instead, the convention FlashAttention
and PyTorch's ``_safe_softmax`` use for fully masked rows.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Stable softmax of ``x`` along ``dim``; ``-inf`` entries get 0, all ``-inf`` rows give zeros.

    Args:
        x: any floating tensor.
        dim: the axis that sums to 1.

    Returns:
        a tensor of ``x.shape`` and ``x.dtype``.
    """
    chk.tensor("x", x, floating=True)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for x of shape {chk.shape_str(x)}")
    m = x.amax(dim=dim, keepdim=True)  # row maximum, same rank as x
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all -inf row: shift by 0
    e = torch.exp(x - m)  # every entry <= 1, masked entries exactly 0
    total = e.sum(dim=dim, keepdim=True)
    # An all -inf row has e == 0 everywhere; dividing by 1 keeps it 0 and its gradient finite.
    return e / torch.where(total > 0, total, torch.ones_like(total))
