"""Decoding is memory-bound; split-KV decoding (Flash-Decoding) keeps a GPU busy anyway (Dao,
Haziza, Massa and Sizov 2023, "Flash-Decoding for long-context inference", PyTorch blog; the
split-K idea of FlashAttention-2's inference path).

A decode step has **one** query per sequence and head. It reads every cached key and value once
and does two multiply-adds with each number read (``q . k_j`` and ``w_j v_j``), so its
arithmetic intensity is about ``H / Hkv`` FLOP per byte in 16-bit: far left of any GPU's ridge
point (notebook 10). Time is bytes read divided by bandwidth; GQA and MLA help because several
query heads share what is read.

FlashAttention parallelises over batch, heads and *query* blocks. With one query there are only
``B x H`` independent pieces of work, often fewer than the GPU's SMs (132 on an H100), so most of
the chip idles while a few programs walk the long cache. Flash-Decoding also splits the *keys*:
``n_splits`` contiguous chunks are processed in parallel, each giving a partial output and its
log-sum-exp, and a small reduction merges them exactly,

    lse = log sum_s exp(lse_s),        out = sum_s exp(lse_s - lse) out_s,

the same merge as ring attention's (notebook 13), over ``n_splits`` parts at once.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk


def _check_decode(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(name, t, ndim=4, floating=True)
    chk.same_dtype(q=q, k=k, v=v)
    if q.shape[2] != 1 or k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[3] != q.shape[3]:
        raise ValueError(f"flash_decode: expected q (B, H, 1, d), k (B, H, Nk, d), v (B, H, Nk, dv); got q "
                         f"{chk.shape_str(q)}, k {chk.shape_str(k)}, v {chk.shape_str(v)}")


def split_bounds(n_keys: int, n_splits: int) -> list[tuple[int, int]]:
    """``n_splits`` contiguous ``[start, end)`` ranges of ``ceil(n_keys / n_splits)`` keys; the last
    ones may be shorter or empty."""
    n_keys = chk.positive_int("n_keys", n_keys, allow_zero=True)
    n_splits = chk.positive_int("n_splits", n_splits)
    size = max(math.ceil(n_keys / n_splits), 1)
    return [(min(s * size, n_keys), min((s + 1) * size, n_keys)) for s in range(n_splits)]


def flash_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_splits: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step with the keys split into ``n_splits`` chunks, merged exactly.

    Args:
        q: ``(B, H, 1, d)``; k: ``(B, H, Nk, d)``; v: ``(B, H, Nk, dv)``.
        n_splits: number of contiguous key chunks of ``ceil(Nk / n_splits)`` keys (the last may be
            shorter; with more splits than keys, the extra ones are empty and contribute nothing).

    Returns:
        ``out (B, H, 1, dv)`` and ``lse (B, H, 1)``, the natural-log log-sum-exp of the scaled scores.
    """
    _check_decode(q, k, v)
    n_splits = chk.positive_int("n_splits", n_splits)
    B, H, _, d = q.shape
    Nk, dv = k.shape[2], v.shape[3]
    size = max(math.ceil(Nk / n_splits), 1)
    pad = n_splits * size - Nk
    # lay the keys out as (B, H, n_splits, size, d); padded slots are masked below
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(B, H, n_splits, size, d)
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(B, H, n_splits, size, dv)
    real = (torch.arange(n_splits * size, device=q.device) < Nk).view(n_splits, size)  # (n_splits, size)
    # 1. every split on its own (on a GPU: one program per (b, h, split))
    s = (q.unsqueeze(2) @ kp.transpose(-2, -1)).squeeze(-2) / math.sqrt(d)  # (B, H, n_splits, size)
    s = s.masked_fill(~real, float("-inf"))
    m = s.amax(-1)  # (B, H, n_splits)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # an empty split has nothing to subtract
    p = torch.exp(s - m_safe.unsqueeze(-1))  # (B, H, n_splits, size)
    l = p.sum(-1)  # (B, H, n_splits)
    part_out = (p.unsqueeze(-2) @ vp).squeeze(-2) / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)  # (B, H, n_splits, dv)
    part_lse = torch.where(l > 0, m_safe + torch.log(torch.where(l > 0, l, torch.ones_like(l))),
                           torch.full_like(l, float("-inf")))  # (B, H, n_splits)
    # 2. the reduction: weight each split by its share of the total normaliser
    top = part_lse.amax(-1, keepdim=True)  # (B, H, 1)
    top_safe = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    w = torch.exp(part_lse - top_safe)  # (B, H, n_splits), 0 for empty splits
    total = w.sum(-1, keepdim=True)  # (B, H, 1)
    out = (w.unsqueeze(-1) * part_out).sum(-2, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    lse = torch.where(total > 0, top_safe + torch.log(torch.where(total > 0, total, torch.ones_like(total))),
                      torch.full_like(total, float("-inf")))  # (B, H, 1)
    return out, lse  # (B, H, 1, dv), (B, H, 1)


# --------------------------------------------------------------------------- counting

def decode_step_cost(n_heads: int, n_kv_heads: int, head_dim: int, seq_len: int, *, n_queries: int = 1,
                     bytes_per_value: int = 2, latent_dim: int | None = None, rope_dim: int = 0
                     ) -> tuple[float, float]:
    """``(FLOPs, bytes)`` of attention for ``n_queries`` new tokens of one sequence in one layer,
    reading a cache of ``seq_len`` positions (the cache dominates the traffic; the query and
    output are ignored).

    Each query head does ``2 * seq_len * head_dim`` FLOPs for its scores and as many for its
    output. With ``latent_dim`` (MLA, absorbed): every head scores against the shared
    ``latent_dim + rope_dim`` numbers per position and sums ``latent_dim``-wide latents.
    ``n_queries > 1`` is prefill (or speculative decoding): the same bytes, more FLOPs.
    """
    for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("n_queries", n_queries), ("bytes_per_value", bytes_per_value)):
        chk.positive_int(name, value)
    if latent_dim is not None:
        per_position = chk.positive_int("latent_dim", latent_dim) + chk.positive_int("rope_dim", rope_dim, allow_zero=True)
        flops = 2.0 * n_queries * n_heads * seq_len * (per_position + latent_dim)
        return flops, float(seq_len * per_position * bytes_per_value)
    flops = 4.0 * n_queries * n_heads * seq_len * head_dim
    return flops, float(2 * seq_len * n_kv_heads * head_dim * bytes_per_value)


def busy_fraction(batch: int, n_heads: int, n_splits: int, n_sms: int) -> float:
    """Share of ``n_sms`` streaming multiprocessors with work when ``batch * n_heads * n_splits``
    equal programs run in waves of ``n_sms`` (the last wave may be partial)."""
    programs = chk.positive_int("batch", batch) * chk.positive_int("n_heads", n_heads) * chk.positive_int("n_splits", n_splits)
    n_sms = chk.positive_int("n_sms", n_sms)
    waves = math.ceil(programs / n_sms)
    return programs / (waves * n_sms)
