"""Online softmax: the normaliser in one pass over blocks (Milakov and Gimelshein 2018,
"Online normalizer calculation for softmax").

A stable softmax needs the row maximum before it can sum ``exp(x - max)``: two passes over
the data. Keeping a *running* maximum ``m`` and a running sum ``l = sum exp(x - m)`` lets one
pass do both: when a new block raises the maximum from ``m`` to ``m'``, every term summed so
far was too large by ``exp(m' - m)``, so rescale: ``l <- l * exp(m - m') + sum(exp(block - m'))``.
FlashAttention is this trick applied to attention scores.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def online_softmax(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the last axis computed block by block.

    Returns ``(probs x.shape, m (...,), l (...,))``: the final running max and running sum
    ``l = sum(exp(x - m))``. A row that is all ``-inf`` gives ``m = -inf``, ``l = 0`` and zeros.
    """
    chk.tensor("x", x, min_ndim=1, floating=True)
    block_size = chk.positive_int("block_size", block_size)
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)  # (...,)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)  # (...,)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]  # (..., b)
        m_new = torch.maximum(m, block.amax(dim=-1))  # update running max
        shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - shift) + torch.exp(block - shift.unsqueeze(-1)).sum(-1)  # rescale, then add
        m = m_new
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    probs = torch.exp(x - shift.unsqueeze(-1)) / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)
    return probs, m, l
