"""Finding induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads";
Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits").

On a sequence that repeats with period ``p`` (BOS at position 0, then a segment of ``p``
tokens repeated), the token at position ``i`` (inside a repeat) last appeared at
``i - p``, and what followed it sits at ``i - p + 1``. An *induction head* attends from
``i`` to exactly that position and copies it; a *previous-token head* attends from ``i`` to
``i - 1``. Averaging the attention weight on those diagonals scores every head.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def _check(weights, period):
    chk.tensor("weights", weights, ndim=4, floating=True)
    period = chk.positive_int("period", period)
    B, H, N, Nk = weights.shape
    if N != Nk:
        raise ValueError(f"weights must be self-attention (B, H, N, N), got {chk.shape_str(weights)}")
    if N <= period + 1:
        raise ValueError(f"sequence of {N} tokens has no repeat for period {period} (need N > period + 1)")
    return period, N


def induction_score(weights: torch.Tensor, period: int) -> torch.Tensor:
    """``(H,)``: mean weight from query ``i`` to key ``i - period + 1`` over queries
    ``i = period + 1 .. N - 1`` (the repeats) and the batch.

    Args:
        weights: attention weights ``(B, H, N, N)`` on sequences made of BOS followed by a
            segment of ``period`` tokens repeated.
        period: the segment length.
    """
    period, N = _check(weights, period)
    i = torch.arange(period + 1, N)  # queries inside a repeat
    return weights[:, :, i, i - period + 1].mean(dim=(0, 2))  # (H,)


def previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    """``(H,)``: mean weight from every query ``i >= 1`` to key ``i - 1``."""
    chk.tensor("weights", weights, ndim=4, floating=True)
    N = weights.shape[-1]
    i = torch.arange(1, N)
    return weights[:, :, i, i - 1].mean(dim=(0, 2))  # (H,)
