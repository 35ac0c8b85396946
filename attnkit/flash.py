"""FlashAttention in PyTorch: tiled attention that never holds the ``Nq x Nk`` score matrix
(Dao et al. 2022, "FlashAttention"; Dao 2023, "FlashAttention-2").

Forward: for each block of queries, stream over blocks of keys with the online softmax
(running max ``m``, running sum ``l``, an output accumulator rescaled whenever ``m`` grows),
then divide by ``l`` once at the end. It returns the output and the log-sum-exp
``lse = m + log(l)`` of every query row, which is all the backward pass needs.

Backward: recompute each score tile from ``q``, ``k`` and ``lse`` (``P = exp(S - lse)``),
then ``dV += P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - D)`` with ``D = rowsum(dO * O)``,
``dQ += dS K * scale``, ``dK += dS^T Q * scale``. Memory stays ``O(N d)``.

Causal masks are bottom-right aligned (query ``i`` at position ``i + Nk - Nq``); key blocks
entirely in a query block's future are skipped. Fully masked rows give zeros and ``lse = -inf``.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .attention import check_qkv


def _prepare(q, k, v, what):
    batch = check_qkv(q, k, v, what)
    q = q.expand(*batch, *q.shape[-2:])
    k = k.expand(*batch, *k.shape[-2:])
    v = v.expand(*batch, *v.shape[-2:])
    return q, k, v


def _tile_mask(qs, qe, ks, ke, offset, device):
    i = torch.arange(qs, qe, device=device).unsqueeze(1)  # (bq, 1)
    j = torch.arange(ks, ke, device=device).unsqueeze(0)  # (1, bk)
    return j <= i + offset  # (bq, bk)


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                            block_q: int = 64, block_k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention. ``q (..., Nq, d)``, ``k (..., Nk, d)``, ``v (..., Nk, dv)``.

    Returns ``out (..., Nq, dv)`` and ``lse (..., Nq)`` (natural log).
    """
    q, k, v = _prepare(q, k, v, "flash_attention_forward")
    block_q, block_k = chk.positive_int("block_q", block_q), chk.positive_int("block_k", block_k)
    Nq, d = q.shape[-2:]
    Nk, dv = k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(d)
    offset = Nk - Nq
    out = q.new_zeros(*q.shape[:-2], Nq, dv)
    lse = q.new_full((*q.shape[:-2], Nq), float("-inf"))
    for qs in range(0, Nq, block_q):
        qe = min(qs + block_q, Nq)
        qb = q[..., qs:qe, :] * scale  # (..., bq, d)
        m = q.new_full((*q.shape[:-2], qe - qs), float("-inf"))  # running max
        l = q.new_zeros((*q.shape[:-2], qe - qs))  # running sum
        acc = q.new_zeros((*q.shape[:-2], qe - qs, dv))  # unnormalised output
        k_end = min(Nk, qe + offset) if is_causal else Nk  # keys after this are in every query's future
        for ks in range(0, max(k_end, 0), block_k):
            ke = min(ks + block_k, Nk)
            s = qb @ k[..., ks:ke, :].transpose(-2, -1)  # (..., bq, bk)
            if is_causal and ke - 1 > qs + offset:
                s = s.masked_fill(~_tile_mask(qs, qe, ks, ke, offset, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))  # update running max
            shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - shift.unsqueeze(-1))  # (..., bq, bk)
            alpha = torch.exp(m - shift)  # rescale factor for what was accumulated so far
            l = alpha * l + p.sum(-1)
            acc = alpha.unsqueeze(-1) * acc + p @ v[..., ks:ke, :]  # rescale accumulator, add the tile
            m = m_new
        safe_l = torch.where(l > 0, l, torch.ones_like(l))
        out[..., qs:qe, :] = acc / safe_l.unsqueeze(-1)
        lse[..., qs:qe] = torch.where(l > 0, m + torch.log(safe_l), torch.full_like(l, float("-inf")))
    return out, lse


def flash_attention_backward(q, k, v, out, lse, d_out, is_causal: bool = False, *,
                             block_q: int = 64, block_k: int = 64):
    """Gradients ``(dq, dk, dv)`` of ``flash_attention_forward``, recomputed tile by tile from ``lse``."""
    q, k, v = _prepare(q, k, v, "flash_attention_backward")
    for name, t, shape in (("out", out, (*q.shape[:-1], v.shape[-1])), ("d_out", d_out, (*q.shape[:-1], v.shape[-1])),
                           ("lse", lse, q.shape[:-1])):
        chk.tensor(name, t, floating=True)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"flash_attention_backward: {name} must have shape {tuple(shape)}, got {chk.shape_str(t)}")
    Nq, d = q.shape[-2:]
    Nk = k.shape[-2]
    scale = 1.0 / math.sqrt(d)
    offset = Nk - Nq
    D = (d_out * out).sum(-1)  # (..., Nq): rowsum(dO * O)
    live = ~torch.isneginf(lse)  # fully masked rows contribute nothing
    lse_safe = torch.where(live, lse, torch.zeros_like(lse))
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for ks in range(0, Nk, block_k):
        ke = min(ks + block_k, Nk)
        kb, vb = k[..., ks:ke, :], v[..., ks:ke, :]
        q_start = max(0, ks - offset) if is_causal else 0  # queries before this see none of these keys
        for qs in range((q_start // block_q) * block_q, Nq, block_q):
            qe = min(qs + block_q, Nq)
            s = (q[..., qs:qe, :] @ kb.transpose(-2, -1)) * scale  # recompute the score tile
            allowed = live[..., qs:qe].unsqueeze(-1)  # (..., bq, 1): rows that saw some key
            if is_causal:
                allowed = allowed & _tile_mask(qs, qe, ks, ke, offset, q.device)
            # mask *before* exp: a masked score far above lse would overflow to inf, and inf * 0 = NaN
            p = torch.exp((s - lse_safe[..., qs:qe].unsqueeze(-1)).masked_fill(~allowed, float("-inf")))
            do = d_out[..., qs:qe, :]
            dv[..., ks:ke, :] += p.transpose(-2, -1) @ do
            dp = do @ vb.transpose(-2, -1)
            ds = p * (dp - D[..., qs:qe].unsqueeze(-1))
            dq[..., qs:qe, :] += (ds @ kb) * scale
            dk[..., ks:ke, :] += (ds.transpose(-2, -1) @ q[..., qs:qe, :]) * scale
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """``FlashAttention.apply(q, k, v, is_causal=False)``: tiled forward, tiled backward.

    Saves ``q, k, v, out`` and the log-sum-exp ``(..., N)`` for the backward pass.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        out, lse = flash_attention_forward(q, k, v, is_causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = is_causal
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, d_out.contiguous(), ctx.is_causal)
        return _unbroadcast(dq, q), _unbroadcast(dk, k), _unbroadcast(dv, v), None


def _unbroadcast(grad, like):
    """Sum a gradient over the batch dims that were broadcast in the forward pass."""
    while grad.ndim > like.ndim:
        grad = grad.sum(0)
    for dim, size in enumerate(like.shape[:-2]):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim, keepdim=True)
    return grad
