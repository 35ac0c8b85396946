"""Scaled dot-product attention (Vaswani et al. 2017, equation 1).

``Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V``. Each query scores every key, the
scores become weights that sum to 1 over the keys, and the output is the weighted average
of the values: a *soft* dictionary lookup in which every key matches a little.

Why ``1/sqrt(d)``: with independent unit-variance entries, ``q . k`` is a sum of ``d``
terms and has variance ``d``. Without the scale, large ``d`` pushes softmax into a near
one-hot regime whose gradients vanish; dividing by ``sqrt(d)`` brings the variance back to 1.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .similarity import dot_product_scores
from .softmax import softmax


def check_qkv(q, k, v, what: str) -> torch.Size:
    """Validate ``q (..., Nq, d)``, ``k (..., Nk, d)``, ``v (..., Nk, dv)``; return the batch shape."""
    chk.tensor("q", q, min_ndim=2, floating=True)
    chk.tensor("k", k, min_ndim=2, floating=True)
    chk.tensor("v", v, min_ndim=2, floating=True)
    chk.same_dtype(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{what}: q and k must share the head dimension d, got "
                         f"q {chk.shape_str(q)} and k {chk.shape_str(k)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{what}: k and v must have the same number of keys Nk, got "
                         f"k {chk.shape_str(k)} and v {chk.shape_str(v)}")
    return chk.broadcast_batch(what, ("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2]))


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(d)) v``, returning the output and the attention weights.

    Args:
        q: queries ``(..., Nq, d)``.
        k: keys ``(..., Nk, d)``.
        v: values ``(..., Nk, dv)``; leading (batch) dimensions of q, k, v broadcast.
        mask: optional bool, broadcastable to ``(..., Nq, Nk)``; ``True`` = may attend.

    Returns:
        ``out (..., Nq, dv)`` and ``weights (..., Nq, Nk)``. A query whose keys are all
        masked gets all-zero weights and an all-zero output, never NaN.
    """
    batch = check_qkv(q, k, v, "scaled_dot_product_attention")
    if mask is not None:
        chk.bool_mask("mask", mask, (*batch, q.shape[-2], k.shape[-2]), "(..., Nq, Nk)")
    scores = dot_product_scores(q, k) / math.sqrt(q.shape[-1])  # (..., Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (..., Nq, Nk)
    weights = softmax(scores, dim=-1)  # (..., Nq, Nk), rows sum to 1 (or 0 if fully masked)
    return weights @ v, weights  # (..., Nq, dv), (..., Nq, Nk)
