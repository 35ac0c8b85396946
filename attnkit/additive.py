"""Additive attention (Bahdanau, Cho and Bengio 2014, "Neural Machine Translation by
Jointly Learning to Align and Translate").

Before the dot product took over, attention scores came from a tiny one-hidden-layer
network: ``score(q, k) = w^T tanh(W_q q + W_k k)``. It can compare queries and keys of
different sizes and learns its own notion of similarity, but it costs a ``tanh`` of an
``(Nq, Nk, hidden)`` tensor instead of one matrix multiplication, which is why
Transformers use scaled dot products (Vaswani et al. 2017, section 3.2.1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _validate as chk
from .softmax import softmax


def additive_scores(q: torch.Tensor, k: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_score: torch.Tensor) -> torch.Tensor:
    """Bahdanau scores ``w_score . tanh(W_q q_i + W_k k_j)``.

    Args:
        q: queries ``(..., Nq, dq)``.
        k: keys ``(..., Nk, dk)``; ``dk`` may differ from ``dq``.
        w_q: ``(hidden, dq)``; w_k: ``(hidden, dk)``; w_score: ``(hidden,)``.

    Returns:
        scores ``(..., Nq, Nk)``.
    """
    chk.tensor("q", q, min_ndim=2, floating=True)
    chk.tensor("k", k, min_ndim=2, floating=True)
    chk.tensor("w_q", w_q, ndim=2, floating=True)
    chk.tensor("w_k", w_k, ndim=2, floating=True)
    chk.tensor("w_score", w_score, ndim=1, floating=True)
    chk.same_dtype(q=q, k=k, w_q=w_q, w_k=w_k, w_score=w_score)
    hidden = w_score.shape[0]
    if w_q.shape != (hidden, q.shape[-1]) or w_k.shape != (hidden, k.shape[-1]):
        raise ValueError(f"additive_scores: expected w_q ({hidden}, dq={q.shape[-1]}) and "
                         f"w_k ({hidden}, dk={k.shape[-1]}) for w_score {chk.shape_str(w_score)}, "
                         f"got w_q {chk.shape_str(w_q)} and w_k {chk.shape_str(w_k)}")
    chk.broadcast_batch("additive_scores", ("q", q.shape[:-2]), ("k", k.shape[:-2]))
    pq = q @ w_q.T  # (..., Nq, hidden)
    pk = k @ w_k.T  # (..., Nk, hidden)
    h = torch.tanh(pq.unsqueeze(-2) + pk.unsqueeze(-3))  # (..., Nq, Nk, hidden)
    return h @ w_score  # (..., Nq, Nk)


def additive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_q: torch.Tensor,
                       w_k: torch.Tensor, w_score: torch.Tensor,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with additive scores; same conventions as ``scaled_dot_product_attention``.

    Returns ``out (..., Nq, dv)`` and ``weights (..., Nq, Nk)``; fully masked rows give zeros.
    """
    scores = additive_scores(q, k, w_q, w_k, w_score)  # (..., Nq, Nk)
    chk.tensor("v", v, min_ndim=2, floating=True)
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"additive_attention: k and v must have the same number of keys, got "
                         f"k {chk.shape_str(k)} and v {chk.shape_str(v)}")
    if mask is not None:
        chk.bool_mask("mask", mask, tuple(scores.shape), "(..., Nq, Nk)")
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = softmax(scores, dim=-1)  # (..., Nq, Nk)
    return weights @ v, weights  # (..., Nq, dv), (..., Nq, Nk)


class AdditiveAttention(nn.Module):
    """Bahdanau attention as a module with learned ``W_q``, ``W_k`` and ``w``."""

    def __init__(self, d_query: int, d_key: int, d_hidden: int):
        super().__init__()
        self.w_q = nn.Parameter(torch.empty(d_hidden, d_query))
        self.w_k = nn.Parameter(torch.empty(d_hidden, d_key))
        self.w_score = nn.Parameter(torch.empty(d_hidden))
        nn.init.xavier_uniform_(self.w_q)
        nn.init.xavier_uniform_(self.w_k)
        nn.init.uniform_(self.w_score, -1 / math.sqrt(d_hidden), 1 / math.sqrt(d_hidden))

    def forward(self, q, k, v, mask=None):
        return additive_attention(q, k, v, self.w_q, self.w_k, self.w_score, mask)
