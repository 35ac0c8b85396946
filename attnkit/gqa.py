"""Grouped-query attention, GQA (Ainslie et al. 2023, "GQA: Training Generalized
Multi-Query Transformer Models from Multi-Head Checkpoints"), and its extreme, multi-query
attention, MQA (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need").

At inference the KV cache, not the weights, fills the memory. GQA keeps ``Hq`` query heads
but only ``Hkv`` key/value heads; query heads come in ``Hq / Hkv`` consecutive groups that
share one key/value head: query head ``h`` reads kv head ``h // n_rep``. ``Hkv = Hq`` is
ordinary multi-head attention, ``Hkv = 1`` is MQA.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .masks import causal_mask
from .softmax import softmax


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, Hkv, N, d) -> (B, Hkv*n_rep, N, d)``: kv head ``g`` becomes heads ``g*n_rep ... g*n_rep + n_rep - 1``.

    Repeats each head in place (``[a, a, b, b]``), not the whole stack (``[a, b, a, b]``),
    so that query head ``h`` meets kv head ``h // n_rep``.
    """
    chk.tensor("x", x, ndim=4)
    n_rep = chk.positive_int("n_rep", n_rep)
    B, Hkv, N, d = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, N, d).reshape(B, Hkv * n_rep, N, d)  # (B, Hkv*n_rep, N, d)


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            is_causal: bool = False) -> torch.Tensor:
    """Attention where ``Hq / Hkv`` query heads share each key/value head.

    Args:
        q: ``(B, Hq, Nq, d)``.
        k, v: ``(B, Hkv, Nk, d)`` (``v`` may have its own last dim ``dv``); ``Hkv`` divides ``Hq``.
        is_causal: causal mask aligned to the bottom right (query ``i`` at ``i + Nk - Nq``).

    Returns:
        ``(B, Hq, Nq, dv)``. Computed per group, without copying the keys ``n_rep`` times.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(name, t, ndim=4, floating=True)
    chk.same_dtype(q=q, k=k, v=v)
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"grouped_query_attention: expected q (B, Hq, Nq, d), k (B, Hkv, Nk, d) and "
                         f"v (B, Hkv, Nk, dv), got q {chk.shape_str(q)}, k {chk.shape_str(k)} and "
                         f"v {chk.shape_str(v)}")
    if Hq % Hkv:
        raise ValueError(f"grouped_query_attention: the number of kv heads Hkv={Hkv} must divide the "
                         f"number of query heads Hq={Hq} (q {chk.shape_str(q)}, k {chk.shape_str(k)})")
    n_rep = Hq // Hkv
    qg = q.view(B, Hkv, n_rep, Nq, d)  # (B, Hkv, n_rep, Nq, d): consecutive query heads share a kv head
    scores = qg @ k.unsqueeze(2).transpose(-2, -1) / math.sqrt(d)  # (B, Hkv, n_rep, Nq, Nk)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(Nq, Nk).to(q.device), float("-inf"))
    out = softmax(scores, dim=-1) @ v.unsqueeze(2)  # (B, Hkv, n_rep, Nq, dv)
    return out.reshape(B, Hq, Nq, v.shape[-1])  # (B, Hq, Nq, dv)
