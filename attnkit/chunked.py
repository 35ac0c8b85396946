"""Chunked (memory-efficient) attention (Rabe and Staats 2021, "Self-attention Does Not Need
O(n^2) Memory").

Exact attention, computed a slice at a time so the full ``Nq x Nk`` score matrix never exists:

- **query chunks**: each chunk of ``query_chunk`` rows is independent of the others, so
  computing ``softmax(q_c k^T) v`` chunk by chunk needs only ``query_chunk x Nk`` scores at a
  time. Peak memory ``O(query_chunk * Nk)`` instead of ``O(Nq * Nk)``.
- **key chunks** (optional): within a query chunk, split the keys too and merge the partial
  results with their log-sum-exps: a partial result over keys ``A`` with ``lse_A`` and one
  over keys ``B`` with ``lse_B`` combine to ``lse = logaddexp(lse_A, lse_B)`` and
  ``out = exp(lse_A - lse) out_A + exp(lse_B - lse) out_B``. Peak memory
  ``O(query_chunk * key_chunk)``: the same idea FlashAttention schedules for the GPU.

Causal masks are bottom-right aligned like every mask in the course; a chunk that lies
entirely in a query's future is skipped, and a query with no visible key gets zeros.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .flash import _prepare


def _partial(qc, kc, vc, allowed):
    """Attention of scaled queries ``qc`` over one key chunk: ``(out, lse)``, both exact."""
    s = qc @ kc.transpose(-2, -1)  # (..., cq, ck)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (..., cq); -inf where every key is masked
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))  # (..., cq, ck): normalised within this chunk
    return p @ vc, lse  # (..., cq, dv), (..., cq)


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Combine attention over two disjoint key sets from their outputs and log-sum-exps."""
    lse = torch.logaddexp(lse_a, lse_b)  # (..., Nq)
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    w_a = torch.exp(lse_a - safe).unsqueeze(-1)  # share of the first set, 0 where it saw nothing
    w_b = torch.exp(lse_b - safe).unsqueeze(-1)
    return w_a * out_a + w_b * out_b, lse


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False, *,
                      query_chunk: int = 1024, key_chunk: int | None = None) -> torch.Tensor:
    """Exact attention ``(..., Nq, dv)`` computed ``query_chunk`` rows (and, optionally,
    ``key_chunk`` keys) at a time; the scale is ``1/sqrt(d)``."""
    q, k, v = _prepare(q, k, v, "chunked_attention")
    query_chunk = chk.positive_int("query_chunk", query_chunk)
    if key_chunk is not None:
        key_chunk = chk.positive_int("key_chunk", key_chunk)
    Nq, d = q.shape[-2:]
    Nk, dv = k.shape[-2], v.shape[-1]
    offset = Nk - Nq  # query i sits at absolute position i + offset
    out = q.new_zeros(*q.shape[:-2], Nq, dv)
    for qs in range(0, Nq, query_chunk):
        qe = min(qs + query_chunk, Nq)
        qc = q[..., qs:qe, :] / math.sqrt(d)  # (..., cq, d)
        k_end = min(Nk, qe + offset) if is_causal else Nk  # later keys are in every query's future
        if k_end <= 0:
            continue  # every query of the chunk comes before the first key: zeros
        if key_chunk is None:  # one pass over all visible keys: an ordinary softmax of a (cq, k_end) slice
            s = qc @ k[..., :k_end, :].transpose(-2, -1)  # (..., cq, k_end)
            allowed = _allowed(qs, qe, 0, k_end, offset, q.device) if is_causal else None
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s, dim=-1)  # (..., cq, k_end)
            if is_causal and qs + offset < 0:  # some queries of this chunk see no key: their NaN rows -> 0
                p = p.nan_to_num(nan=0.0)
            out[..., qs:qe, :] = p @ v[..., :k_end, :]
            continue
        acc = lse = None
        for ks in range(0, k_end, key_chunk):
            ke = min(ks + key_chunk, Nk)
            allowed = _allowed(qs, qe, ks, ke, offset, q.device) if is_causal and ke - 1 > qs + offset else None
            part, part_lse = _partial(qc, k[..., ks:ke, :], v[..., ks:ke, :], allowed)
            acc, lse = (part, part_lse) if acc is None else merge_partials(acc, lse, part, part_lse)
        out[..., qs:qe, :] = acc
    return out


def _allowed(qs, qe, ks, ke, offset, device):
    """Bottom-right causal mask of one (query chunk, key chunk) tile: ``(cq, ck)``."""
    i = torch.arange(qs, qe, device=device).unsqueeze(1) + offset  # (cq, 1) absolute positions
    return torch.arange(ks, ke, device=device).unsqueeze(0) <= i  # (cq, ck)
