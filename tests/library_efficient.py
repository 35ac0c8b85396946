"""The exercises of notebooks 09 (online softmax, FlashAttention forward and backward) and 09b
(sliding-window masks, linear attention): realistic wrong implementations, each with the hint
its checker must give, and correct implementations written in different styles (see
tests/library.py)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

import attnkit
from attnkit.checks import (check_flash_attention_backward, check_flash_attention_forward, check_linear_attention,
                            check_online_softmax, check_sliding_window_mask)
from library import Exercise, Mutant

NEG = float("-inf")


# ---------------------------------------------------------------------------------- online softmax

def online_ok(x, block_size):
    """torch.full and nan_to_num for the safe max."""
    m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m2 = torch.maximum(m, b.max(-1).values)
        base = torch.nan_to_num(m2, neginf=0.0)
        l = l * torch.exp(m - base) + torch.exp(b - base[..., None]).sum(-1)
        m = m2
    base = torch.nan_to_num(m, neginf=0.0)
    p = torch.exp(x - base[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None]
    return p, m, l


def online_notebook(x, block_size):
    """The notebook's solution."""
    m = x.new_full(x.shape[:-1], float("-inf"))  # (...,)
    l = x.new_zeros(x.shape[:-1])  # (...,)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]  # (..., b)
        m_new = torch.maximum(m, block.amax(dim=-1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - safe) + torch.exp(block - safe.unsqueeze(-1)).sum(-1)
        m = m_new
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    probs = torch.exp(x - safe.unsqueeze(-1)) / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)
    return probs, m, l


def online_float64_split(x, block_size, dim=-1):
    """float64 inside, torch.split into blocks, probabilities assembled block by block, an extra
    keyword argument with a default."""
    xd = x.double()
    m = xd.new_full(xd.shape[:-1], -math.inf)
    l = xd.new_zeros(xd.shape[:-1])
    blocks = torch.split(xd, block_size, dim=dim)
    for b in blocks:
        m_new = torch.max(m, torch.amax(b, dim=-1))
        shift = m_new.masked_fill(m_new == -math.inf, 0.0)
        l = torch.exp(m - shift) * l + torch.exp(b - shift.unsqueeze(-1)).sum(dim=-1)
        m = m_new
    shift = m.masked_fill(m == -math.inf, 0.0).unsqueeze(-1)
    denom = torch.where(l == 0, torch.ones_like(l), l).unsqueeze(-1)
    probs = torch.cat([torch.exp(b - shift) / denom for b in blocks], dim=-1)
    return probs.to(x.dtype), m.to(x.dtype), l.to(x.dtype)


def online_rows_python(x, block_size):
    """One row at a time on flattened leading dimensions, plain Python floats for m and l."""
    n = x.shape[-1]
    rows = x.reshape(-1, n)  # (R, N)
    probs, ms, ls = [], [], []
    for row in rows:
        m, l = -math.inf, 0.0
        for start in range(0, n, block_size):
            block = row[start:start + block_size]
            m_new = max(m, float(block.max()))
            if m_new == -math.inf:
                continue
            l = l * math.exp(m - m_new) + float(torch.exp(block - m_new).sum())
            m = m_new
        ms.append(m)
        ls.append(l)
        probs.append(torch.zeros_like(row) if l == 0 else torch.exp(row - m) / l)
    shape = x.shape[:-1]
    return (torch.stack(probs).reshape(x.shape), torch.tensor(ms, dtype=x.dtype).reshape(shape),
            torch.tensor(ls, dtype=x.dtype).reshape(shape))


def online_padded_blocks(x, block_size):
    """The row padded with -inf to whole blocks and reshaped to (..., blocks, block_size); every
    block's max at once, then the running update block by block."""
    n = x.shape[-1]
    n_blocks = -(-n // block_size)
    blocks = F.pad(x, (0, n_blocks * block_size - n), value=NEG).reshape(*x.shape[:-1], n_blocks, block_size)
    block_max = blocks.amax(-1)  # (..., n_blocks)
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for b in range(n_blocks):
        m_new = torch.maximum(m, block_max[..., b])
        safe = torch.where(m_new.isneginf(), 0.0, m_new)
        l = l * (m - safe).exp() + (blocks[..., b, :] - safe[..., None]).exp().sum(-1)
        m = m_new
    safe = torch.where(m.isneginf(), 0.0, m)
    return (x - safe[..., None]).exp() / torch.where(l > 0, l, 1.0)[..., None], m, l


def online_no_rescale(x, block_size):
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_b = b.amax(-1)
        l = l + torch.exp(b - torch.nan_to_num(m_b, neginf=0.0)[..., None]).sum(-1)  # each block against its own max
        m = torch.maximum(m, m_b)
    base = torch.nan_to_num(m, neginf=0.0)
    return torch.nan_to_num(torch.exp(x - base[..., None]) / l[..., None]), m, l


def online_sum_not_rescaled(x, block_size):
    """The block's exponentials against the new max, but the sum so far added as it was."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m = torch.maximum(m, b.amax(-1))
        l = l + torch.exp(b - torch.nan_to_num(m, neginf=0.0)[..., None]).sum(-1)
    base = torch.nan_to_num(m, neginf=0.0)
    return torch.exp(x - base[..., None]) / torch.where(l > 0, l, 1.0)[..., None], m, l


def online_sum_replaced(x, block_size):
    """l = the block's sum: the running sum is overwritten at every block."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m = torch.maximum(m, b.amax(-1))
        l = torch.exp(b - torch.nan_to_num(m, neginf=0.0)[..., None]).sum(-1)
    base = torch.nan_to_num(m, neginf=0.0)
    return torch.exp(x - base[..., None]) / torch.where(l > 0, l, 1.0)[..., None], m, l


def online_returns_log_sum(x, block_size):
    """Hands back log(l) as l."""
    p, m, l = online_notebook(x, block_size)
    return p, m, torch.log(l)


def online_returns_lse_as_max(x, block_size):
    """Hands back the log-sum-exp m + log(l) as m."""
    p, m, l = online_notebook(x, block_size)
    return p, m + torch.log(l), l


def online_whole_row(x, block_size):
    """Max and sum over the whole row at once: block_size is never used."""
    m = x.amax(-1)  # (...,)
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(x - safe[..., None])
    l = e.sum(-1)
    return e / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_whole_row_max(x, block_size):
    """The max of the whole row first, then the sum block by block: two passes, not one."""
    m = x.amax(-1)
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        l = l + torch.exp(x[..., s:s + block_size] - safe[..., None]).sum(-1)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_2d_only(x, block_size):
    rows, n = x.shape  # written for a (rows, N) matrix
    m = torch.full((rows,), NEG, dtype=x.dtype)
    l = torch.zeros(rows, dtype=x.dtype)
    for s in range(0, n, block_size):
        b = x[:, s:s + block_size]
        m_new = torch.maximum(m, b.amax(1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - safe) + torch.exp(b - safe[:, None]).sum(1)
        m = m_new
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[:, None]) / torch.where(l > 0, l, torch.ones_like(l))[:, None], m, l


def online_inverted_first_block(x, block_size):
    """Starts from the first block, then multiplies by exp(m' - m): the factor upside down."""
    first = x[..., :block_size]
    m = first.amax(-1)
    l = torch.exp(first - torch.nan_to_num(m, neginf=0.0)[..., None]).sum(-1)
    for s in range(block_size, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.amax(-1))
        safe = torch.nan_to_num(m_new, neginf=0.0)
        l = l * torch.exp(safe - torch.nan_to_num(m, neginf=0.0)) + torch.exp(b - safe[..., None]).sum(-1)
        m = m_new
    safe = torch.nan_to_num(m, neginf=0.0)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_inverted(x, block_size):
    """exp(m' - m) instead of exp(m - m'): with m = -inf at the start that is inf * 0 = NaN."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.amax(-1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(safe - m) + torch.exp(b - safe[..., None]).sum(-1)
        m = m_new
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_no_safe_max(x, block_size):
    """No guard while m is still -inf: exp(-inf - (-inf)) = NaN on an all -inf row."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(b - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None], m, l


def online_unguarded_division(x, block_size):
    """Everything guarded but the final division: 0 / 0 on an all -inf row."""
    p, m, l = online_notebook(x, block_size)
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[..., None]) / l[..., None], m, l


def online_drops_last_block(x, block_size):
    """range(N // block_size) blocks: the last, shorter block is never read."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for i in range(x.shape[-1] // block_size):
        b = x[..., i * block_size:(i + 1) * block_size]
        m_new = torch.maximum(m, b.amax(-1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - safe) + torch.exp(b - safe[..., None]).sum(-1)
        m = m_new
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_probs_in_loop(x, block_size):
    """Writes each block's probabilities inside the loop, with the m and l of that moment."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    probs = torch.zeros_like(x)
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.amax(-1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        l = l * torch.exp(m - safe) + torch.exp(b - safe[..., None]).sum(-1)
        m = m_new
        denom = torch.where(l > 0, l, torch.ones_like(l))[..., None]
        probs[..., s:s + block_size] = torch.exp(b - safe[..., None]) / denom
    return probs, m, l


def online_float64_out(x, block_size):
    """Computes in float64 and forgets to cast back."""
    return online_notebook(x.double(), block_size)


def online_finfo_start(x, block_size):
    """Starts m at the most negative float instead of -inf."""
    m = x.new_full(x.shape[:-1], torch.finfo(x.dtype).min)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(b - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_l_without_max(x, block_size):
    """A running max, but l sums exp(x) as it is."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m = torch.maximum(m, b.amax(-1))
        l = l + torch.exp(b).sum(-1)
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_block_own_max(x, block_size):
    """Rescales l to the new max, but sums the new block against its own max."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        b_max = b.amax(-1)
        m_new = torch.maximum(m, b_max)
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        own = torch.where(torch.isneginf(b_max), torch.zeros_like(b_max), b_max)
        l = l * torch.exp(m - safe) + torch.exp(b - own[..., None]).sum(-1)
        m = m_new
    safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return torch.exp(x - safe[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None], m, l


def online_global_max(x, block_size):
    """block.max(): one max over every row of the block."""
    m = x.new_full(x.shape[:-1], NEG)
    l = x.new_zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m_new = torch.maximum(m, b.max())
        l = l * torch.exp(m - m_new) + torch.exp(b - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None], m, l


def online_calls_softmax(x, block_size):
    return torch.softmax(x, -1), x.amax(-1), torch.ones(x.shape[:-1])


def online_two_outputs(x, block_size):
    return online_ok(x, block_size)[:2]


# ---------------------------------------------------------------------------------- FlashAttention forward

def flash_notebook(q, k, v, is_causal=False, block_q=64, block_k=64):
    """The notebook's solution."""
    n_q, d = q.shape[-2:]
    n_k, d_v = k.shape[-2], v.shape[-1]
    offset = n_k - n_q
    batch = q.shape[:-2]
    out = q.new_zeros(*batch, n_q, d_v)
    lse = q.new_full((*batch, n_q), float("-inf"))
    for qs in range(0, n_q, block_q):
        qe = min(qs + block_q, n_q)
        q_b = q[..., qs:qe, :] / math.sqrt(d)  # (..., bq, d)
        m = q.new_full((*batch, qe - qs), float("-inf"))
        l = q.new_zeros((*batch, qe - qs))
        acc = q.new_zeros((*batch, qe - qs, d_v))
        k_stop = min(n_k, qe + offset) if is_causal else n_k
        for ks in range(0, max(k_stop, 0), block_k):
            ke = min(ks + block_k, n_k)
            s = q_b @ k[..., ks:ke, :].transpose(-2, -1)  # (..., bq, bk)
            if is_causal and ke - 1 > qs + offset:
                i = torch.arange(qs, qe, device=q.device).unsqueeze(1) + offset
                j = torch.arange(ks, ke, device=q.device).unsqueeze(0)
                s = s.masked_fill(j > i, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe.unsqueeze(-1))
            scale = torch.exp(m - safe)
            l = l * scale + p.sum(-1)
            acc = acc * scale.unsqueeze(-1) + p @ v[..., ks:ke, :]
            m = m_new
        seen = l > 0
        out[..., qs:qe, :] = acc / torch.where(seen, l, torch.ones_like(l)).unsqueeze(-1)
        lse[..., qs:qe] = torch.where(seen, m + torch.log(torch.where(seen, l, torch.ones_like(l))), lse[..., qs:qe])
    return out, lse


def _flash(q, k, v, is_causal=False, block_q=64, block_k=64, *, base=math.e, causal=None, skip=True,
           rescale_acc=True, rescale_l=True, divide=True, lse_max=True, scaled=True, top_left=False,
           guard=True, rows=None, cols=None, mask_value=-math.inf, last_q=True, last_k=True, strict=False,
           old_max=False, skip_ge=False, lse_is_max=False):
    """A tiled forward written the einsum way, with switches for the classic mistakes."""
    causal = is_causal if causal is None else causal
    rows, cols = rows or block_q, cols or block_k
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    offset = (0 if top_left else nk - nq) - strict
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)
    for qs in range(0, nq if last_q else nq // rows * rows, rows):
        qb = q[..., qs:qs + rows, :]
        qe = qs + qb.shape[-2]
        m = torch.full(qb.shape[:-1], -math.inf, dtype=q.dtype)
        l = torch.zeros(qb.shape[:-1], dtype=q.dtype)
        acc = torch.zeros(*qb.shape[:-1], v.shape[-1], dtype=q.dtype)
        for ks in range(0, nk if last_k else nk // cols * cols, cols):
            if causal and skip and (ks >= qe - 1 + offset if skip_ge else ks > qe - 1 + offset):
                break  # every key from here on is in the future of every query of the block
            s = torch.einsum("...id,...jd->...ij", qb, k[..., ks:ks + cols, :])
            if scaled:
                s = s / math.sqrt(d)
            if causal:
                i = torch.arange(qs, qe)[:, None] + offset
                j = torch.arange(ks, ks + s.shape[-1])[None, :]
                s = s.masked_fill(j > i, mask_value)
            m2 = torch.maximum(m, s.max(-1).values)
            b = torch.nan_to_num(m2, neginf=0.0) if guard else m2
            p = torch.exp(s - (torch.where(torch.isneginf(m), b, m) if old_max else b)[..., None])
            a = torch.exp(m - b)
            l = (a * l if rescale_l else l) + p.sum(-1)
            acc = (a[..., None] * acc if rescale_acc else acc) + p @ v[..., ks:ks + cols, :]
            m = m2
        if divide:
            out[..., qs:qe, :] = acc / (torch.where(l > 0, l, torch.ones_like(l)) if guard else l)[..., None]
        else:
            out[..., qs:qe, :] = acc
        safe_l = torch.where(l > 0, l, torch.ones_like(l))
        total = torch.nan_to_num(m, neginf=0.0) + torch.log(safe_l) if lse_max else torch.log(safe_l)
        if lse_is_max:
            total = m
        lse[..., qs:qe] = torch.where(l > 0, total / math.log(base), torch.full_like(l, -math.inf))
    return out, lse


def flash_einsum(q, k, v, is_causal=False, block_q=64, block_k=64):
    """einsum tiles, a break out of the key loop at the first future tile."""
    return _flash(q, k, v, is_causal, block_q, block_k)


def flash_float64_logaddexp(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Each tile finished with torch.logsumexp, tiles merged with torch.logaddexp (exact, never the
    full matrix), float64 inside."""
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    nq, nk = q.shape[-2], k.shape[-2]
    offset = nk - nq
    outs, lses = [], []
    for qs in range(0, nq, block_q):
        qb = q[..., qs:qs + block_q, :] * q.shape[-1] ** -0.5
        qe = qs + qb.shape[-2]
        lse = qb.new_full(qb.shape[:-1], -math.inf)
        acc = qb.new_zeros(*qb.shape[:-1], v.shape[-1])
        for ks in range(0, nk, block_k):
            if is_causal and ks > qe - 1 + offset:
                continue
            s = qb @ k[..., ks:ks + block_k, :].transpose(-1, -2)
            if is_causal:
                allowed = torch.arange(ks, ks + s.shape[-1]) <= (torch.arange(qs, qe) + offset)[:, None]
                s = torch.where(allowed, s, torch.tensor(-math.inf, dtype=s.dtype))
            tile_lse = torch.logsumexp(s, dim=-1)  # (..., bq)
            tile_out = torch.exp(s - torch.nan_to_num(tile_lse, neginf=0.0)[..., None]) @ v[..., ks:ks + block_k, :]
            new = torch.logaddexp(lse, tile_lse)
            safe = torch.nan_to_num(new, neginf=0.0)
            acc = torch.exp(lse - safe)[..., None] * acc + torch.exp(tile_lse - safe)[..., None] * tile_out
            lse = new
        outs.append(acc)
        lses.append(lse)
    return torch.cat(outs, -2).to(dtype), torch.cat(lses, -1).to(dtype)


def flash_flat_batch(q, k, v, is_causal=False, block_q=64, block_k=64, *, scale=None):
    """Leading dimensions flattened to one, keys outer-bounded per query block by a precomputed
    stop, an extra keyword argument with a default."""
    *batch, nq, d = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    q3, k3, v3 = q.reshape(-1, nq, d), k.reshape(-1, nk, d), v.reshape(-1, nk, dv)  # (BH, N, d)
    out = torch.empty(q3.shape[0], nq, dv, dtype=q.dtype)
    lse = torch.empty(q3.shape[0], nq, dtype=q.dtype)
    for qs in range(0, nq, block_q):
        qe = min(nq, qs + block_q)
        last_key = qe - 1 + nk - nq if is_causal else nk - 1
        m = torch.full((q3.shape[0], qe - qs), -math.inf, dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(q3.shape[0], qe - qs, dv, dtype=q.dtype)
        for ks in range(0, last_key + 1, block_k):
            ke = min(nk, ks + block_k)
            s = torch.bmm(q3[:, qs:qe], k3[:, ks:ke].transpose(1, 2)) * scale  # (BH, bq, bk)
            if is_causal:
                future = torch.arange(ks, ke)[None, :] > torch.arange(qs, qe)[:, None] + nk - nq
                s = s.masked_fill(future, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            ref = m_new.clamp_min(-1e30)  # a finite stand-in while nothing has been seen
            p = (s - ref[..., None]).exp()
            alpha = (m - ref).exp()
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + torch.bmm(p, v3[:, ks:ke])
            m = m_new
        out[:, qs:qe] = torch.where(l[..., None] > 0, acc / l.clamp_min(1e-30)[..., None], torch.zeros_like(acc))
        lse[:, qs:qe] = torch.where(l > 0, m + l.clamp_min(1e-30).log(), torch.full_like(l, -math.inf))
    return out.reshape(*batch, nq, dv), lse.reshape(*batch, nq)


def flash_keys_outside(q, k, v, is_causal=False, block_q=64, block_k=64):
    """FlashAttention-1's loop order: key blocks outside, query blocks inside; m, l and the
    normalised output of every query kept between key blocks."""
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    off = nk - nq
    o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    m = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)
    l = torch.zeros(q.shape[:-1], dtype=q.dtype)
    for ks in range(0, nk, block_k):
        ke = min(nk, ks + block_k)
        kb, vb = k[..., ks:ke, :], v[..., ks:ke, :]
        for qs in range(0, nq, block_q):
            qe = min(nq, qs + block_q)
            if is_causal and ks > qe - 1 + off:
                continue  # every key of this block comes after every query of that one
            s = q[..., qs:qe, :] @ kb.mT * d ** -0.5
            if is_causal:
                s = s.masked_fill(torch.arange(ks, ke)[None, :] > torch.arange(qs, qe)[:, None] + off, -math.inf)
            m_old, l_old = m[..., qs:qe], l[..., qs:qe]
            m_new = torch.maximum(m_old, s.amax(-1))
            safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe[..., None])
            kept = torch.exp(m_old - safe) * l_old
            l_new = kept + p.sum(-1)
            denom = torch.where(l_new > 0, l_new, torch.ones_like(l_new))
            o[..., qs:qe, :] = (o[..., qs:qe, :] * kept[..., None] + p @ vb) / denom[..., None]
            m[..., qs:qe], l[..., qs:qe] = m_new, l_new
    lse = torch.where(l > 0, m + torch.log(torch.where(l > 0, l, torch.ones_like(l))), torch.full_like(l, -math.inf))
    return o, lse


def flash_exp2(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Base-2 exponentials inside, as GPU kernels do (log2(e) folded into the scale); lse turned
    back into the natural log at the end."""
    log2e = 1.4426950408889634
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    out, lse = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype), torch.empty(q.shape[:-1], dtype=q.dtype)
    for qs in range(0, nq, block_q):
        qe = min(nq, qs + block_q)
        qb = q[..., qs:qe, :] * (log2e / math.sqrt(d))
        m = torch.full(qb.shape[:-1], -math.inf, dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(*qb.shape[:-1], v.shape[-1], dtype=q.dtype)
        stop = min(nk, qe + nk - nq) if is_causal else nk
        for ks in range(0, max(stop, 0), block_k):
            ke = min(nk, ks + block_k)
            s = qb @ k[..., ks:ke, :].transpose(-2, -1)  # scores in base 2
            if is_causal:
                s = torch.where(torch.arange(ks, ke)[None, :] <= torch.arange(qs, qe)[:, None] + nk - nq, s, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(m_new == -math.inf, 0.0, m_new)
            p = torch.exp2(s - safe[..., None])
            alpha = torch.exp2(m - safe)
            l, acc, m = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v[..., ks:ke, :], m_new
        ok = l > 0
        out[..., qs:qe, :] = acc / torch.where(ok, l, 1.0)[..., None]
        lse[..., qs:qe] = torch.where(ok, (m + torch.log2(torch.where(ok, l, 1.0))) / log2e, -math.inf)
    return out, lse


def flash_row_bias(q, k, v, is_causal=False, block_q=64, block_k=64):
    """The causal mask of a query block as a float bias over all keys, (block_q, Nk), sliced per tile."""
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    outs, lses = [], []
    for qs in range(0, nq, block_q):
        qe = min(nq, qs + block_q)
        bias = torch.zeros(qe - qs, nk, dtype=q.dtype)
        if is_causal:
            bias = bias.masked_fill(torch.arange(nk)[None, :] > torch.arange(qs, qe)[:, None] + nk - nq, -math.inf)
        m = q.new_full(q.shape[:-2] + (qe - qs,), -math.inf)
        l = torch.zeros_like(m)
        acc = q.new_zeros(q.shape[:-2] + (qe - qs, v.shape[-1]))
        for ks in range(0, nk, block_k):
            ke = min(nk, ks + block_k)
            if is_causal and ks > qe - 1 + nk - nq:
                break
            s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) / math.sqrt(d) + bias[:, ks:ke]
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.nan_to_num(m_new, neginf=0.0)
            p = torch.exp(s - safe[..., None])
            alpha = torch.exp(m - safe)
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[..., ks:ke, :]
            m = m_new
        outs.append(acc / l.clamp_min(torch.finfo(l.dtype).tiny)[..., None])
        lses.append(torch.where(l > 0, m + torch.log(l.clamp_min(torch.finfo(l.dtype).tiny)), -math.inf))
    return torch.cat(outs, -2), torch.cat(lses, -1)


def flash_mask_large_negative(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Masks with -1e9 instead of -inf: a query that sees no key averages the values it should not see."""
    return _flash(q, k, v, is_causal, block_q, block_k, mask_value=-1e9)


def flash_drops_last_query_block(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, last_q=False)


def flash_drops_last_key_block(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, last_k=False)


def flash_loop_over_heads(q, k, v, is_causal=False, block_q=64, block_k=64):
    """One (N, d) problem at a time: a loop over every index of the leading dimensions."""
    lead = q.shape[:-2]
    out = q.new_empty(*lead, q.shape[-2], v.shape[-1])
    lse = q.new_empty(*lead, q.shape[-2])
    for idx in itertools.product(*(range(n) for n in lead)):
        out[idx], lse[idx] = flash_notebook(q[idx], k[idx], v[idx], is_causal, block_q, block_k)
    return out, lse


def flash_base2(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, base=2)


def flash_ignores_causal(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, causal=False)


def flash_materialises(q, k, v, is_causal=False, block_q=64, block_k=64):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(~attnkit.causal_mask(q.shape[-2], k.shape[-2]), -math.inf)
    m = s.max(-1, keepdim=True).values
    e = torch.exp(s - m)
    return e @ v / e.sum(-1, keepdim=True), (m + torch.log(e.sum(-1, keepdim=True))).squeeze(-1)


def flash_calls_sdpa(q, k, v, is_causal=False, block_q=64, block_k=64):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), None


def flash_ignores_block_q(q, k, v, is_causal=False, block_q=64, block_k=64):
    """All queries at once against each block of keys."""
    return _flash(q, k, v, is_causal, block_q, block_k, rows=q.shape[-2])


def flash_ignores_block_k(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Blocks of queries against all keys at once."""
    return _flash(q, k, v, is_causal, block_q, block_k, cols=k.shape[-2])


def flash_swapped_blocks(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_k, block_q)


def flash_4d_only(q, k, v, is_causal=False, block_q=64, block_k=64):
    B, H, N, d = q.shape  # written for (B, H, N, d) only
    return flash_notebook(q, k, v, is_causal, block_q, block_k)


def flash_no_skip(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Masks every tile, even those entirely in the future."""
    return _flash(q, k, v, is_causal, block_q, block_k, skip=False)


def flash_acc_not_rescaled(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, rescale_acc=False)


def flash_l_not_rescaled(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, rescale_l=False)


def flash_no_division(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, divide=False)


def flash_lse_without_max(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, lse_max=False)


def flash_no_scale(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, scaled=False)


def flash_top_left(q, k, v, is_causal=False, block_q=64, block_k=64):
    return _flash(q, k, v, is_causal, block_q, block_k, top_left=True)


def flash_no_guard(q, k, v, is_causal=False, block_q=64, block_k=64):
    """No safe max and no guarded division: NaN for a query that sees no key."""
    return _flash(q, k, v, is_causal, block_q, block_k, guard=False)


def flash_strict_mask(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Masks j >= i': the key at the query's own position is masked too."""
    return _flash(q, k, v, is_causal, block_q, block_k, strict=True)


def flash_p_with_old_max(q, k, v, is_causal=False, block_q=64, block_k=64):
    """P = exp(S - m) with the max before this tile (the new one at the first tile)."""
    return _flash(q, k, v, is_causal, block_q, block_k, old_max=True)


def flash_skip_on_diagonal(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Breaks out at ks >= qe - 1 + offset: the key block starting on the last query's position is lost."""
    return _flash(q, k, v, is_causal, block_q, block_k, skip_ge=True)


def flash_nothing_rescaled(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Neither l nor acc multiplied by exp(m - m')."""
    return _flash(q, k, v, is_causal, block_q, block_k, rescale_acc=False, rescale_l=False)


def flash_lse_is_max(q, k, v, is_causal=False, block_q=64, block_k=64):
    """Returns the running max m as the log-sum-exp."""
    return _flash(q, k, v, is_causal, block_q, block_k, lse_is_max=True)


def flash_lse_keepdim(q, k, v, is_causal=False, block_q=64, block_k=64):
    out, lse = flash_notebook(q, k, v, is_causal, block_q, block_k)
    return out, lse.unsqueeze(-1)


# ---------------------------------------------------------------------------------- FlashAttention backward

def _backward(q, k, v, out, lse, d_out, is_causal, drop_d=False, drop_mask=False, mask_after_exp=False, block=32,
              guard=True, grad_scale=True, score_scale=True, top_left=False, local_d=False, strict=False,
              skip_ge=False):
    """A tiled backward, both loops over blocks of ``block``, with switches for classic mistakes.

    skip_ge: future key blocks skipped with >= instead of >."""
    nq, nk, scale = q.shape[-2], k.shape[-2], 1 / math.sqrt(q.shape[-1])
    offset = (0 if top_left else nk - nq) - strict
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    D = torch.zeros_like(lse) if drop_d else (d_out * out).sum(-1)
    live = ~torch.isneginf(lse)
    lse0 = torch.where(live, lse, torch.zeros_like(lse)) if guard else lse
    for qs in range(0, nq, block):
        for ks in range(0, nk, block):
            if is_causal and skip_ge and ks >= min(qs + block, nq) - 1 + offset:
                break
            qb, do = q[..., qs:qs + block, :], d_out[..., qs:qs + block, :]
            kb, vb = k[..., ks:ks + block, :], v[..., ks:ks + block, :]
            s = qb @ kb.transpose(-2, -1)
            if score_scale:
                s = s * scale
            i = torch.arange(qs, qs + qb.shape[-2])[:, None] + offset
            allowed = torch.arange(ks, ks + kb.shape[-2])[None, :] <= i
            if is_causal and not drop_mask and not mask_after_exp:
                if guard:
                    keep = allowed & live[..., qs:qs + block, None]
                    s = (s - lse0[..., qs:qs + block, None]).masked_fill(~keep, NEG)
                else:
                    s = s.masked_fill(~allowed, NEG) - lse0[..., qs:qs + block, None]  # -inf - (-inf) = NaN
            else:
                s = s - lse0[..., qs:qs + block, None]
            p = torch.exp(s)
            if is_causal and mask_after_exp:
                p = p * allowed  # exp of a masked score may already be inf: inf * 0 = NaN
            dv[..., ks:ks + block, :] += p.transpose(-2, -1) @ do
            dp = do @ vb.transpose(-2, -1)
            ds = p * (dp - ((p * dp).sum(-1, keepdim=True) if local_d else D[..., qs:qs + block, None]))
            g = scale if grad_scale else 1.0
            dq[..., qs:qs + block, :] += ds @ kb * g
            dk[..., ks:ks + block, :] += ds.transpose(-2, -1) @ qb * g
    return dq, dk, dv


def backward_tiles_of_8(q, k, v, out, lse, d_out, is_causal=False):
    """Queries outside, keys inside, small tiles."""
    return _backward(q, k, v, out, lse, d_out, is_causal, block=8)


def backward_autograd_of_tiles(q, k, v, out, lse, d_out, is_causal=False):
    """Autograd through a tiled forward: correct, if not what the exercise teaches."""
    with torch.enable_grad():
        q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = _flash(q2, k2, v2, is_causal, 32, 32)[0]
        return torch.autograd.grad(o, (q2, k2, v2), d_out)


def backward_notebook(q, k, v, out, lse, d_out, is_causal=False):
    """The notebook's solution: keys outside, queries inside, tiles of 64."""
    block = 64
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    offset = n_k - n_q
    D = (d_out * out).sum(-1)
    live = ~torch.isneginf(lse)
    lse0 = torch.where(live, lse, torch.zeros_like(lse))
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for ks in range(0, n_k, block):
        ke = min(ks + block, n_k)
        for qs in range(0, n_q, block):
            qe = min(qs + block, n_q)
            s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) / math.sqrt(d)
            allowed = live[..., qs:qe].unsqueeze(-1)
            if is_causal:
                i = torch.arange(qs, qe, device=q.device).unsqueeze(1) + offset
                allowed = allowed & (torch.arange(ks, ke, device=q.device).unsqueeze(0) <= i)
            p = torch.exp((s - lse0[..., qs:qe].unsqueeze(-1)).masked_fill(~allowed, float("-inf")))
            do = d_out[..., qs:qe, :]
            dv[..., ks:ke, :] += p.transpose(-2, -1) @ do
            ds = p * (do @ v[..., ks:ke, :].transpose(-2, -1) - D[..., qs:qe].unsqueeze(-1))
            dq[..., qs:qe, :] += ds @ k[..., ks:ke, :] / math.sqrt(d)
            dk[..., ks:ke, :] += ds.transpose(-2, -1) @ q[..., qs:qe, :] / math.sqrt(d)
    return dq, dk, dv


def backward_einsum_float32_tiles(q, k, v, out, lse, d_out, is_causal=False, block_q=48, block_k=40):
    """einsum, non-square tiles given as keyword arguments with defaults, queries outside, the
    future key tiles skipped, gradients of a key tile summed into lists and concatenated."""
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    off = nk - nq
    D = torch.einsum("...id,...id->...i", d_out, out)
    lse_safe = lse.masked_fill(torch.isneginf(lse), 0.0)
    dq_parts = []
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    for qs in range(0, nq, block_q):
        qe = min(nq, qs + block_q)
        dq_b = torch.zeros_like(q[..., qs:qe, :])
        for ks in range(0, nk, block_k):
            ke = min(nk, ks + block_k)
            if is_causal and ks > qe - 1 + off:
                break
            s = torch.einsum("...id,...jd->...ij", q[..., qs:qe, :], k[..., ks:ke, :]) / math.sqrt(d)
            keep = ~torch.isneginf(lse[..., qs:qe])[..., None]
            if is_causal:
                keep = keep & (torch.arange(ks, ke)[None, :] <= torch.arange(qs, qe)[:, None] + off)
            p = torch.where(keep, torch.exp(torch.where(keep, s - lse_safe[..., qs:qe, None], torch.zeros_like(s))),
                            torch.zeros_like(s))
            dv[..., ks:ke, :] += torch.einsum("...ij,...ie->...je", p, d_out[..., qs:qe, :])
            dp = torch.einsum("...ie,...je->...ij", d_out[..., qs:qe, :], v[..., ks:ke, :])
            ds = p * (dp - D[..., qs:qe, None]) / math.sqrt(d)
            dq_b = dq_b + torch.einsum("...ij,...jd->...id", ds, k[..., ks:ke, :])
            dk[..., ks:ke, :] += torch.einsum("...ij,...id->...jd", ds, q[..., qs:qe, :])
        dq_parts.append(dq_b)
    return torch.cat(dq_parts, -2), dk, dv


def backward_tile_local_d(q, k, v, out, lse, d_out, is_causal=False):
    """D = rowsum(P * dP) of the tile in hand, tiles of 64: only that tile's keys."""
    return _backward(q, k, v, out, lse, d_out, is_causal, local_d=True, block=64)


def backward_tile_local_d_48(q, k, v, out, lse, d_out, is_causal=False):
    """D from the tile in hand, tiles of 48."""
    return _backward(q, k, v, out, lse, d_out, is_causal, local_d=True, block=48)


def backward_skip_on_diagonal(q, k, v, out, lse, d_out, is_causal=False):
    """Tiles of 64, key blocks skipped from ks >= the last query's position on."""
    return _backward(q, k, v, out, lse, d_out, is_causal, block=64, skip_ge=True)


def backward_skip_on_diagonal_16(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, block=16, skip_ge=True)


def backward_in_float32(q, k, v, out, lse, d_out, is_causal=False):
    """Casts everything to float32 and back: right only to float32 precision."""
    grads = _backward(*(t.float() for t in (q, k, v, out, lse, d_out)), is_causal)
    return tuple(t.to(q.dtype) for t in grads)


def backward_dk_dv_swapped(q, k, v, out, lse, d_out, is_causal=False):
    dq, dk, dv = _backward(q, k, v, out, lse, d_out, is_causal)
    return dq, dv, dk


def backward_keys_outside(q, k, v, out, lse, d_out, is_causal=False, block=48):
    """Keys outside, starting each key block at the first query block that can see it."""
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    off, scale = nk - nq, d ** -0.5
    D = (d_out * out).sum(-1)
    live = ~lse.isneginf()
    lse0 = torch.where(live, lse, 0.0)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for ks in range(0, nk, block):
        ke = min(nk, ks + block)
        first = max(0, ks - off) if is_causal else 0  # queries before this one see none of these keys
        for qs in range(first // block * block, nq, block):
            qe = min(nq, qs + block)
            z = q[..., qs:qe, :] @ k[..., ks:ke, :].mT * scale - lse0[..., qs:qe, None]
            keep = live[..., qs:qe, None]
            if is_causal:
                keep = keep & (torch.arange(ks, ke) <= torch.arange(qs, qe)[:, None] + off)
            p = torch.where(keep, z, NEG).exp()
            dv[..., ks:ke, :] += p.mT @ d_out[..., qs:qe, :]
            ds = p * (d_out[..., qs:qe, :] @ v[..., ks:ke, :].mT - D[..., qs:qe, None]) * scale
            dq[..., qs:qe, :] += ds @ k[..., ks:ke, :]
            dk[..., ks:ke, :] += ds.mT @ q[..., qs:qe, :]
    return dq, dk, dv


def backward_drops_d(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, drop_d=True)


def backward_ignores_causal(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, drop_mask=True)


def backward_mask_after_exp(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, mask_after_exp=True)


def backward_two_outputs(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal)[:2]


def backward_no_lse_guard(q, k, v, out, lse, d_out, is_causal=False):
    """Masks the scores, then subtracts lse: -inf - (-inf) = NaN for a query that saw no key."""
    return _backward(q, k, v, out, lse, d_out, is_causal, guard=False)


def backward_no_grad_scale(q, k, v, out, lse, d_out, is_causal=False):
    """dQ = dS K and dK = dS^T Q, without the 1/sqrt(d) of S = Q K^T / sqrt(d)."""
    return _backward(q, k, v, out, lse, d_out, is_causal, grad_scale=False)


def backward_unscaled_scores(q, k, v, out, lse, d_out, is_causal=False):
    """Recomputes S = Q K^T without the 1/sqrt(d) the forward used."""
    return _backward(q, k, v, out, lse, d_out, is_causal, score_scale=False)


def backward_top_left(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, top_left=True)


def backward_strict_mask(q, k, v, out, lse, d_out, is_causal=False):
    return _backward(q, k, v, out, lse, d_out, is_causal, strict=True)


def backward_4d_only(q, k, v, out, lse, d_out, is_causal=False):
    B, H, N, d = q.shape  # written for (B, H, N, d) only
    return _backward(q, k, v, out, lse, d_out, is_causal)


def backward_materialises(q, k, v, out, lse, d_out, is_causal=False):
    """Rebuilds the whole P at once: correct values, the memory FlashAttention exists to save."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(~attnkit.causal_mask(q.shape[-2], k.shape[-2]), NEG)
    p = torch.exp(s - lse.masked_fill(torch.isneginf(lse), 0.0)[..., None])
    ds = p * (d_out @ v.transpose(-2, -1) - (d_out * out).sum(-1, keepdim=True))
    scale = 1 / math.sqrt(q.shape[-1])
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ d_out


def backward_autograd_of_sdpa(q, k, v, out, lse, d_out, is_causal=False):
    with torch.enable_grad():
        q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = F.scaled_dot_product_attention(q2, k2, v2, is_causal=is_causal)
        return torch.autograd.grad(o, (q2, k2, v2), d_out)


# ---------------------------------------------------------------------------------- sliding window

def window_ok(n_q, n_k, window):
    i = torch.arange(n_q)[:, None] + n_k - n_q
    j = torch.arange(n_k)[None, :]
    return (j <= i) & (i - j < window)


def window_tril(n_q, n_k, window):
    """Two triangles: the causal band minus everything more than window - 1 behind."""
    ones = torch.ones(n_q, n_k, dtype=torch.bool)
    return ones.tril(n_k - n_q) & ~ones.tril(n_k - n_q - window)


def window_loops(n_q, n_k, window, dtype=torch.bool):
    """Plain loops, an extra keyword argument with a default."""
    mask = torch.zeros(n_q, n_k, dtype=dtype)
    for i in range(n_q):
        pos = i + n_k - n_q
        for j in range(max(0, pos - window + 1), min(n_k, pos + 1)):
            mask[i, j] = True
    return mask


def window_wider(n_q, n_k, window):
    return window_ok(n_q, n_k, window + 1)


def window_narrower(n_q, n_k, window):
    """(j <= i) & (i - j < window - 1): the query itself was not counted in the window."""
    return window_ok(n_q, n_k, window - 1)


def window_ignored(n_q, n_k, window):
    return window_ok(n_q, n_k, 10**6)


def window_top_left(n_q, n_k, window):
    i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None]
    return (j <= i) & (i - j < window)


def window_both_ways(n_q, n_k, window):
    i = torch.arange(n_q)[:, None] + n_k - n_q
    return (i - torch.arange(n_k)[None]).abs() < window


def window_no_causal(n_q, n_k, window):
    i = torch.arange(n_q)[:, None] + n_k - n_q
    return torch.arange(n_k)[None] > i - window


def window_inverted(n_q, n_k, window):
    return ~window_ok(n_q, n_k, window)


def window_transposed(n_q, n_k, window):
    return window_ok(n_q, n_k, window).T


def window_float(n_q, n_k, window):
    return window_ok(n_q, n_k, window).float()


def window_square(n_q, n_k, window):
    """Written for n_q == n_k: n_k is never used."""
    ones = torch.ones(n_q, n_q, dtype=torch.bool)
    return ones.tril() & ~ones.tril(-window)


def window_calls_attnkit(n_q, n_k, window):
    return attnkit.sliding_window_mask(n_q, n_k, window)


# ---------------------------------------------------------------------------------- linear attention

def linear_ok(q, k, v, causal=False):
    """einsum for the non-causal form, the RNN loop for the causal one."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return torch.einsum("...nd,...de->...ne", fq, fk.transpose(-2, -1) @ v) / (fq @ fk.sum(-2)[..., None])
    nq, nk = q.shape[-2], k.shape[-2]
    outs = [torch.zeros(*q.shape[:-2], v.shape[-1], dtype=q.dtype)] * max(nq - nk, 0)
    state = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1], dtype=q.dtype)
    norm = torch.zeros(*q.shape[:-2], q.shape[-1], dtype=q.dtype)
    for t in range(nk):
        state = state + fk[..., t, :, None] * v[..., t, None, :]
        norm = norm + fk[..., t, :]
        i = t + nq - nk
        if i >= 0:
            outs.append((fq[..., i, None, :] @ state).squeeze(-2) / (fq[..., i, :] * norm).sum(-1, keepdim=True))
    return torch.stack(outs, -2)


def linear_notebook(q, k, v, causal=False):
    """The notebook's solution: cumulative sums."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        S = fk.transpose(-2, -1) @ v
        z = fk.sum(-2)
        return (fq @ S) / (fq @ z.unsqueeze(-1))
    n_q, n_k = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-2)
    last = torch.arange(n_q, device=q.device) + (n_k - n_q)
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)
    return num / den * (last >= 0).unsqueeze(-1)


def linear_float64_flat(q, k, v, causal=False, eps=0.0):
    """float64 inside, leading dimensions flattened, a loop over them, a non-contiguous result,
    an extra keyword argument with a default."""
    dtype, lead = q.dtype, q.shape[:-2]
    q3, k3, v3 = (t.double().reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    nq, nk = q3.shape[-2], k3.shape[-2]
    outs = []
    for qh, kh, vh in zip(q3, k3, v3):
        fq, fk = F.elu(qh) + 1, F.elu(kh) + 1  # (Nq, d), (Nk, d)
        if causal:
            seen = (torch.arange(nq) + nk - nq >= 0)[:, None]  # (Nq, 1): queries after the first key
            s_kv = torch.cumsum(torch.einsum("jd,je->jde", fk, vh), 0)
            z = torch.cumsum(fk, 0)
            idx = (torch.arange(nq) + nk - nq).clamp_min(0)
            num = torch.einsum("id,ide->ie", fq, s_kv[idx])
            den = torch.einsum("id,id->i", fq, z[idx])[:, None] + eps
            o = torch.where(seen, num / den, torch.zeros_like(num))
        else:
            o = (fq @ (fk.T @ vh)) / (fq @ fk.sum(0) + eps)[:, None]
        outs.append(o.T)  # (dv, Nq): transposed back below, so the result is not contiguous
    return torch.stack(outs).reshape(*lead, v.shape[-1], nq).transpose(-2, -1).to(dtype)


def linear_eps(q, k, v, causal=False, eps=1e-6):
    """An eps in the denominator, as in the paper's code; queries that see no key get zeros."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        kv = torch.einsum("...jd,...je->...de", fk, v)
        den = torch.einsum("...id,...d->...i", fq, fk.sum(-2)) + eps
        return torch.einsum("...id,...de->...ie", fq, kv) / den[..., None]
    nq, nk = q.shape[-2], k.shape[-2]
    kv = torch.cumsum(torch.einsum("...jd,...je->...jde", fk, v), -3)
    z = torch.cumsum(fk, -2)
    pos = torch.arange(nq) + nk - nq
    idx = pos.clamp_min(0)
    num = torch.einsum("...id,...ide->...ie", fq, kv[..., idx, :, :])
    den = torch.einsum("...id,...id->...i", fq, z[..., idx, :]) + eps
    return num / den[..., None] * (pos >= 0)[:, None]


def linear_per_query(q, k, v, causal=False):
    """The definition, one query at a time: the sums over the keys it may see."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    nq, nk = q.shape[-2], k.shape[-2]
    outs = []
    for i in range(nq):
        upto = i + nk - nq + 1 if causal else nk  # keys 0 .. upto - 1
        if upto <= 0:
            outs.append(q.new_zeros(*q.shape[:-2], v.shape[-1]))
            continue
        S = fk[..., :upto, :].mT @ v[..., :upto, :]  # (..., d, dv)
        z = fk[..., :upto, :].sum(-2)  # (..., d)
        outs.append((fq[..., i:i + 1, :] @ S).squeeze(-2) / (fq[..., i, :] * z).sum(-1, keepdim=True))
    return torch.stack(outs, -2)


def linear_no_denominator(q, k, v, causal=False):
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    return fq @ (fk.transpose(-2, -1) @ v)


def linear_no_denominator_causal(q, k, v, causal=False):
    """The numerator only, in both forms."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return fq @ (fk.transpose(-2, -1) @ v)
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    last = torch.arange(nq) + nk - nq
    return (fq.unsqueeze(-2) @ S[..., last.clamp_min(0), :, :]).squeeze(-2) * (last >= 0).unsqueeze(-1)


def linear_full_normaliser(q, k, v, causal=False):
    """Causal prefix sums in the numerator, the sum over all keys in the normaliser."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return _kernelised(fq, fk, v, False)
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    last = torch.arange(nq) + nk - nq
    num = (fq.unsqueeze(-2) @ S[..., last.clamp_min(0), :, :]).squeeze(-2) * (last >= 0).unsqueeze(-1)
    return num / (fq @ fk.sum(-2).unsqueeze(-1))


def linear_causal_flipped(q, k, v, causal=False):
    return linear_ok(q, k, v, not causal)


def linear_softmax(q, k, v, causal=False):
    return torch.softmax(q @ k.transpose(-2, -1), -1) @ v


def linear_forms_weights(q, k, v, causal=False):
    w = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)
    return w @ v / w.sum(-1, keepdim=True)


def linear_4d_only(q, k, v, causal=False):
    B, H, N, d = q.shape  # written for (B, H, N, d) only
    return linear_notebook(q, k, v, causal)


def linear_exp_features(q, k, v, causal=False):
    """phi = exp instead of elu + 1."""
    return _kernelised(torch.exp(q), torch.exp(k), v, causal)


def _kernelised(fq, fk, v, causal):
    nq, nk = fq.shape[-2], fk.shape[-2]
    if not causal:
        return (fq @ (fk.transpose(-2, -1) @ v)) / (fq @ fk.sum(-2)[..., None])
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-2)
    last = torch.arange(nq) + nk - nq
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)
    return num / den * (last >= 0).unsqueeze(-1)


def linear_elu_without_one(q, k, v, causal=False):
    """phi = elu, the + 1 forgotten: weights can be negative."""
    return _kernelised(F.elu(q), F.elu(k), v, causal)


def linear_scaled(q, k, v, causal=False):
    """Scales the queries by 1/sqrt(d) first, as in softmax attention."""
    return linear_notebook(q / math.sqrt(q.shape[-1]), k, v, causal)


def linear_top_left(q, k, v, causal=False):
    """Causal prefix sums read at position i, not i + Nk - Nq."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return _kernelised(fq, fk, v, False)
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-2)
    idx = torch.arange(nq).clamp_max(nk - 1)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)
    return num / (fq * z[..., idx, :]).sum(-1, keepdim=True)


def linear_exclusive(q, k, v, causal=False):
    """Exclusive prefix sums: query i does not see its own key."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return _kernelised(fq, fk, v, False)
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-2)
    last = torch.arange(nq) + nk - nq - 1  # one key too few
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)
    return num / den * (last >= 0).unsqueeze(-1)


def linear_relu_plus_one(q, k, v, causal=False):
    return _kernelised(F.relu(q) + 1, F.relu(k) + 1, v, causal)


def linear_sigmoid_features(q, k, v, causal=False):
    return _kernelised(torch.sigmoid(q), torch.sigmoid(k), v, causal)


def linear_softplus_features(q, k, v, causal=False):
    return _kernelised(F.softplus(q), F.softplus(k), v, causal)


def linear_phi_queries_only(q, k, v, causal=False):
    """The feature map applied to the queries only: raw keys."""
    return _kernelised(F.elu(q) + 1, k, v, causal)


def linear_normaliser_cumsum_over_features(q, k, v, causal=False):
    """The numerator's prefix sum over keys is right, the normaliser's cumsum runs over dim=-1."""
    if not causal:
        return linear_notebook(q, k, v, causal)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-1)
    last = torch.arange(nq) + nk - nq
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)
    return num / den * (last >= 0).unsqueeze(-1)


def linear_phi_keys_only(q, k, v, causal=False):
    """The feature map applied to the keys only."""
    return _kernelised(q, F.elu(k) + 1, v, causal)


def linear_no_guard(q, k, v, causal=False):
    """No zeros for a query that sees no key: 0 / 0 there."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return _kernelised(fq, fk, v, False)
    nq, nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(fk, dim=-2)
    last = torch.arange(nq) + nk - nq
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2) * (last >= 0).unsqueeze(-1)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True) * (last >= 0).unsqueeze(-1)
    return num / den


EXERCISES = [
    Exercise("online_softmax", check_online_softmax, mutants=[
        Mutant("the running sum is never rescaled", online_no_rescale, "not rescaled"),
        Mutant("calls torch.softmax", online_calls_softmax, "calls"),
        Mutant("returns two tensors", online_two_outputs, "three tensors"),
        Mutant("max and sum of the whole row at once: block_size ignored", online_whole_row, "whole row"),
        Mutant("the max of the whole row first, then the sum in blocks", online_whole_row_max, "whole row"),
        Mutant("written for 2-D input only", online_2d_only, "leading dimensions"),
        Mutant("rescale factor inverted (started from the first block)", online_inverted_first_block, "inverted"),
        Mutant("rescale factor inverted (m = -inf at the start: NaN)", online_inverted, "inverted"),
        Mutant("no safe max while m is -inf: NaN on an all -inf row", online_no_safe_max, "all -inf"),
        Mutant("divides by l = 0 on an all -inf row", online_unguarded_division, "all -inf"),
        Mutant("the last, shorter block is skipped", online_drops_last_block, "last block"),
        Mutant("probabilities written inside the loop with the m and l of the moment", online_probs_in_loop,
               "inside the loop"),
        Mutant("returns float64 for float32 input", online_float64_out, "dtype"),
        Mutant("m starts at the most negative float, not -inf", online_finfo_start, "-inf"),
        Mutant("l sums exp(x) without the max", online_l_without_max, "against the running max"),
        Mutant("the new block summed against its own max, l rescaled to the new one", online_block_own_max,
               "not against the block's own max"),
        Mutant("block.max(): one max for every row", online_global_max, "block.amax(dim=-1)"),
        Mutant("exp against the new max, the old sum not rescaled", online_sum_not_rescaled, "not rescaled"),
        Mutant("l overwritten by each block's sum", online_sum_replaced, "last block's sum"),
        Mutant("returns log(l) as l", online_returns_log_sum, "not its log"),
        Mutant("returns m + log(l) as m", online_returns_lse_as_max, "not the log-sum-exp"),
    ], correct=[online_ok, online_notebook, online_float64_split, online_rows_python, online_padded_blocks]),
    Exercise("flash_attention_forward", check_flash_attention_forward, mutants=[
        Mutant("lse in base 2", flash_base2, "base 2"),
        Mutant("is_causal ignored", flash_ignores_causal, "is_causal was ignored"),
        Mutant("builds the full score matrix", flash_materialises, "score matrix"),
        Mutant("calls SDPA", flash_calls_sdpa, "calls"),
        Mutant("ignores block_q: all queries against each key block", flash_ignores_block_q, "block_q"),
        Mutant("ignores block_k: each query block against all keys", flash_ignores_block_k, "block_k"),
        Mutant("block_q and block_k swapped", flash_swapped_blocks, "swapped"),
        Mutant("written for 4-D input only", flash_4d_only, "leading dimensions"),
        Mutant("never skips key blocks entirely in the future", flash_no_skip, "skip"),
        Mutant("accumulator not rescaled", flash_acc_not_rescaled, "accumulator"),
        Mutant("running sum not rescaled", flash_l_not_rescaled, "running sum l"),
        Mutant("no final division by l", flash_no_division, "divide"),
        Mutant("lse = log(l), without the max", flash_lse_without_max, "m + log(l)"),
        Mutant("no 1/sqrt(d)", flash_no_scale, "sqrt(d)"),
        Mutant("causal mask aligned to the top left", flash_top_left, "top left"),
        Mutant("no guard: NaN for a query that sees no key", flash_no_guard, "sees no key"),
        Mutant("lse keeps a trailing dimension of 1", flash_lse_keepdim, "(..., Nq)"),
        Mutant("masks with -1e9 instead of -inf", flash_mask_large_negative, "sees no key"),
        Mutant("the last, shorter query block is skipped", flash_drops_last_query_block, "last, shorter query block"),
        Mutant("the last, shorter key block is skipped", flash_drops_last_key_block, "last, shorter key block"),
        Mutant("strict causal mask (j < i')", flash_strict_mask, "strict"),
        Mutant("P against the max before the tile", flash_p_with_old_max, "new running max"),
        Mutant("skips the key block that starts on the diagonal (>= for >)", flash_skip_on_diagonal, "> not >="),
        Mutant("neither l nor acc rescaled", flash_nothing_rescaled, "neither l nor the accumulator"),
        Mutant("lse is the running max m", flash_lse_is_max, "max m alone"),
    ], correct=[flash_notebook, flash_einsum, flash_float64_logaddexp, flash_flat_batch, flash_keys_outside, flash_exp2,
                flash_row_bias, flash_loop_over_heads]),
    Exercise("flash_attention_backward", check_flash_attention_backward, mutants=[
        Mutant("rowsum(dO * O) missing", backward_drops_d, "rowsum"),
        Mutant("is_causal ignored", backward_ignores_causal, "ignored in the backward"),
        Mutant("masks after exp", backward_mask_after_exp, "before exp"),
        Mutant("returns two gradients", backward_two_outputs, "(dq, dk, dv)"),
        Mutant("no guard for lse = -inf", backward_no_lse_guard, "saw no key"),
        Mutant("dq and dk without 1/sqrt(d)", backward_no_grad_scale, "dq and dk"),
        Mutant("scores recomputed without 1/sqrt(d)", backward_unscaled_scores, "recomputed"),
        Mutant("causal mask aligned to the top left", backward_top_left, "top left"),
        Mutant("written for 4-D input only", backward_4d_only, "leading dimensions"),
        Mutant("rebuilds the whole P", backward_materialises, "score matrix"),
        Mutant("D summed inside each tile from P and dP", backward_tile_local_d, "whole row"),
        Mutant("strict causal mask (j < i')", backward_strict_mask, "strict"),
        Mutant("autograd through SDPA", backward_autograd_of_sdpa, "calls"),
        Mutant("D summed inside each tile, tiles of 48", backward_tile_local_d_48, "whole row"),
        Mutant("skips the key block that starts on the diagonal, tiles of 64", backward_skip_on_diagonal, "> not >="),
        Mutant("skips the key block that starts on the diagonal, tiles of 16", backward_skip_on_diagonal_16,
               "> not >="),
        Mutant("computes in float32 inside", backward_in_float32, "float32 precision"),
        Mutant("dk and dv swapped", backward_dk_dv_swapped, "swapped"),
    ], correct=[backward_notebook, backward_tiles_of_8, backward_autograd_of_tiles, backward_einsum_float32_tiles,
                backward_keys_outside]),
    Exercise("sliding_window_mask", check_sliding_window_mask, mutants=[
        Mutant("window + 1 keys", window_wider, "off by one"),
        Mutant("window - 1 keys", window_narrower, "off by one"),
        Mutant("window ignored", window_ignored, "ignored"),
        Mutant("aligned to the top left", window_top_left, "top left"),
        Mutant("looks both ways", window_both_ways, "future"),
        Mutant("no causal bound", window_no_causal, "future"),
        Mutant("True where masked", window_inverted, "inverted"),
        Mutant("transposed", window_transposed, "transposed"),
        Mutant("float mask", window_float, "bool"),
        Mutant("written for n_q == n_k", window_square, "(n_q, n_k)"),
        Mutant("calls attnkit", window_calls_attnkit, "calls"),
    ], correct=[window_ok, window_tril, window_loops]),
    Exercise("linear_attention", check_linear_attention, mutants=[
        Mutant("no normaliser (non-causal form only)", linear_no_denominator, "normaliser"),
        Mutant("no normaliser in either form", linear_no_denominator_causal, "normaliser"),
        Mutant("causal flag inverted", linear_causal_flipped, "causal flag"),
        Mutant("causal numerator, normaliser over all keys", linear_full_normaliser, "same keys"),
        Mutant("softmax attention", linear_softmax, "instead of forming"),
        Mutant("forms the (Nq, Nk) weights", linear_forms_weights, "instead of forming"),
        Mutant("written for 4-D input only", linear_4d_only, "leading dimensions"),
        Mutant("phi = exp", linear_exp_features, "elu(x) + 1"),
        Mutant("phi = elu without + 1", linear_elu_without_one, "elu(x) + 1"),
        Mutant("queries scaled by 1/sqrt(d)", linear_scaled, "sqrt(d)"),
        Mutant("causal prefix sums aligned to the top left", linear_top_left, "top left"),
        Mutant("exclusive prefix sums: a query misses its own key", linear_exclusive, "its own"),
        Mutant("phi applied to the keys only", linear_phi_keys_only, "queries"),
        Mutant("NaN for a query that sees no key", linear_no_guard, "sees no key"),
        Mutant("phi = relu(x) + 1", linear_relu_plus_one, "not relu(x) + 1"),
        Mutant("phi = sigmoid", linear_sigmoid_features, "not sigmoid"),
        Mutant("phi = softplus", linear_softplus_features, "not softplus"),
        Mutant("phi on the queries only", linear_phi_queries_only, "queries only"),
        Mutant("normaliser cumsum over the features", linear_normaliser_cumsum_over_features, "over the features"),
    ], correct=[linear_ok, linear_notebook, linear_float64_flat, linear_eps, linear_per_query]),
]
