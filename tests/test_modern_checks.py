"""Checkers of notebook 14's exercises: correct code written in other styles passes; known-wrong
code (realistic mistakes) is rejected with the hint that names the mistake; shortcuts are refused."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.checks import CHECKS


# ------------------------------------------------------------------ paged_attention

def paged_loop(q, k_pages, v_pages, block_table, seq_lens):
    """Python numbers, one position at a time."""
    B, H, _, d = q.shape
    _, Hkv, ps, _ = k_pages.shape
    out = torch.zeros(B, H, 1, v_pages.shape[-1], dtype=q.dtype)
    for b in range(B):
        n = int(seq_lens[b])
        for h in range(H):
            kv = h // (H // Hkv)
            scores, values = [], []
            for t in range(n):
                page = int(block_table[b, t // ps])
                scores.append(float(q[b, h, 0].double() @ k_pages[page, kv, t % ps].double()) / math.sqrt(d))
                values.append(v_pages[page, kv, t % ps].double())
            if n:
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                out[b, h, 0] = sum(w * x for w, x in zip(e, values)) / sum(e)
    return out


def paged_gather(q, k_pages, v_pages, block_table, seq_lens):
    """Vectorised: gather every page of every row, mask by position, einsum over groups."""
    B, H, _, d = q.shape
    P, Hkv, ps, _ = k_pages.shape
    T = block_table.shape[1] * ps
    table = block_table.clamp(0, P - 1)
    k = k_pages[table].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, d)
    v = v_pages[table].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, -1)
    qg = q.view(B, Hkv, H // Hkv, d)
    s = torch.einsum("bgrd,bgtd->bgrt", qg, k) / math.sqrt(d)
    keep = torch.arange(T)[None, :] < seq_lens[:, None]
    s = s.masked_fill(~keep[:, None, None], float("-inf"))
    w = torch.nan_to_num(torch.softmax(s, -1))
    return torch.einsum("bgrt,bgtv->bgrv", w, v).reshape(B, H, 1, -1)


def paged_f64(q, k_pages, v_pages, block_table, seq_lens, scale=None):
    """float64 inside, an extra keyword with a default, one sequence at a time with SDPA-free math."""
    B, H, _, d = q.shape
    _, Hkv, ps, _ = k_pages.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    rows = []
    for b in range(B):
        n = int(seq_lens[b])
        pages = block_table[b, :math.ceil(n / ps)]
        k = k_pages[pages].double().transpose(0, 1).flatten(1, 2)[:, :n]  # (Hkv, n, d)
        v = v_pages[pages].double().transpose(0, 1).flatten(1, 2)[:, :n]
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        s = (q[b].double() @ k.transpose(-2, -1)) * scale  # (H, 1, n)
        if n == 0:
            rows.append(torch.zeros(H, 1, v_pages.shape[-1], dtype=torch.float64))
            continue
        e = torch.exp(s - s.amax(-1, keepdim=True))
        rows.append(e @ v / e.sum(-1, keepdim=True))
    return torch.stack(rows).to(q.dtype)


def paged_online(q, k_pages, v_pages, block_table, seq_lens):
    """vLLM's V2 style: one partial per page, merged by log-sum-exp."""
    B, H, _, d = q.shape
    _, Hkv, ps, _ = k_pages.shape
    out = torch.zeros(B, H, 1, v_pages.shape[-1], dtype=q.dtype)
    for b in range(B):
        n = int(seq_lens[b])
        m = torch.full((H, 1), -math.inf, dtype=q.dtype)
        l = torch.zeros(H, 1, dtype=q.dtype)
        acc = torch.zeros(H, 1, v_pages.shape[-1], dtype=q.dtype)
        for i in range(math.ceil(n / ps)):
            page = block_table[b, i]
            fill = min(ps, n - i * ps)
            k = k_pages[page, :, :fill].repeat_interleave(H // Hkv, 0)  # (H, fill, d)
            v = v_pages[page, :, :fill].repeat_interleave(H // Hkv, 0)
            s = q[b] @ k.transpose(-2, -1) / math.sqrt(d)  # (H, 1, fill)
            m2 = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m2[..., None])
            l = l * torch.exp(m - m2) + p.sum(-1)
            acc = acc * torch.exp(m - m2)[..., None] + p @ v
            m = m2
        if n:
            out[b] = acc / l[..., None]
    return out


def paged_sdpa(q, k_pages, v_pages, block_table, seq_lens):
    """Gather, then PyTorch's SDPA with a boolean mask and enable_gqa (allowed: the paging is the exercise)."""
    B, H, _, d = q.shape
    P, Hkv, ps, _ = k_pages.shape
    T = block_table.shape[1] * ps
    table = torch.where(block_table < 0, 0, block_table)
    k = k_pages[table].transpose(1, 2).reshape(B, Hkv, T, d)
    v = v_pages[table].transpose(1, 2).reshape(B, Hkv, T, -1)
    mask = (torch.arange(T)[None, :] < seq_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return torch.where(seq_lens[:, None, None, None] > 0, out, torch.zeros_like(out))


def _paged_mutant(**kw):
    def fn(q, k_pages, v_pages, block_table, seq_lens):
        B, H, _, d = q.shape
        _, Hkv, ps, _ = k_pages.shape
        out = torch.zeros(B, H, 1, v_pages.shape[-1], dtype=q.dtype)
        for b in range(B):
            n = int(seq_lens[b]) + kw.get("extra", 0)
            n_pages = math.ceil(n / ps)
            if kw.get("whole_pages"):
                n = n_pages * ps
            row = block_table[0] if kw.get("first_row") else block_table[b]
            pages = torch.arange(n_pages) if kw.get("identity") else row[:n_pages]
            if n <= 0:
                continue
            k, v = k_pages[pages], v_pages[pages]  # (n_pages, Hkv, ps, d)
            if kw.get("no_permute"):
                k, v = k.reshape(Hkv, -1, d)[:, :n], v.reshape(Hkv, -1, v.shape[-1])[:, :n]
            else:
                k, v = k.transpose(0, 1).flatten(1, 2)[:, :n], v.transpose(0, 1).flatten(1, 2)[:, :n]
            for h in range(H):
                kv = h % Hkv if kw.get("tiled") else h // (H // Hkv)
                s = k[kv] @ q[b, h, 0] / (1.0 if kw.get("no_scale") else math.sqrt(d))
                if kw.get("per_page"):
                    parts = [torch.softmax(s[i:i + ps], 0) @ v[kv, i:i + ps] for i in range(0, n, ps)]
                    out[b, h, 0] = torch.stack(parts).mean(0)
                else:
                    out[b, h, 0] = torch.softmax(s, 0) @ v[kv]
        return out
    return fn


def paged_nan_on_empty(q, k_pages, v_pages, block_table, seq_lens):
    B, H, _, d = q.shape
    P, Hkv, ps, _ = k_pages.shape
    T = block_table.shape[1] * ps
    k = k_pages[block_table.clamp(0)].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, d).repeat_interleave(H // Hkv, 1)
    v = v_pages[block_table.clamp(0)].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, -1).repeat_interleave(H // Hkv, 1)
    s = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(
        ~(torch.arange(T)[None, :] < seq_lens[:, None])[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v  # NaN for a sequence of length 0


# ------------------------------------------------------------------ mla_scores

def mla_einsum(q_nope, c_kv, w_uk):
    return torch.einsum("bhqr,bkr->bhqk", torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk), c_kv)


def mla_heads_loop(q_nope, c_kv, w_uk):
    out = []
    for h in range(q_nope.shape[1]):
        q_lat = q_nope[:, h] @ w_uk[h]  # (B, Nq, r)
        out.append(q_lat @ c_kv.transpose(1, 2))  # (B, Nq, Nk)
    return torch.stack(out, 1)


def mla_f64(q_nope, c_kv, w_uk, scale=1.0):
    q_lat = torch.matmul(q_nope.double().unsqueeze(-2), w_uk.double().unsqueeze(0).unsqueeze(2)).squeeze(-2)
    return (scale * q_lat @ c_kv.double()[:, None].transpose(-2, -1)).to(q_nope.dtype)


def mla_materialised(q_nope, c_kv, w_uk):
    k = torch.einsum("bkr,hdr->bhkd", c_kv, w_uk)  # (B, H, Nk, dn): the keys MLA never builds
    return q_nope @ k.transpose(-2, -1)


# ------------------------------------------------------------------ sink_attention

def _causal_keep(nq, nk):
    return torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + nk - nq


def sink_concat(q, k, v, sinks, is_causal=False):
    """The Hugging Face gpt-oss way: a sink column, a softmax, drop the column."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(~_causal_keep(*s.shape[-2:]), float("-inf"))
    col = sinks.reshape(-1, 1, 1).expand(*s.shape[:-1], 1)
    return torch.softmax(torch.cat([col, s], -1), -1)[..., 1:] @ v


def sink_manual(q, k, v, sinks, is_causal=False):
    s = torch.einsum("...qd,...kd->...qk", q, k) / q.shape[-1] ** 0.5
    if is_causal:
        s = torch.where(_causal_keep(*s.shape[-2:]), s, torch.tensor(-math.inf))
    sink = sinks[:, None, None]
    m = torch.maximum(s.max(-1, keepdim=True).values, sink)
    e = torch.exp(s - m)
    return e @ v / (e.sum(-1, keepdim=True) + torch.exp(sink - m))


def sink_loops(q, k, v, sinks, is_causal=False, eps=0.0):
    """float64 loops over every (batch..., head, query), an extra keyword with a default."""
    *batch, H, Nq, d = q.shape
    kk, vv = k.expand(*batch, H, *k.shape[-2:]), v.expand(*batch, H, *v.shape[-2:])
    Nk = k.shape[-2]
    out = torch.zeros(*batch, H, Nq, v.shape[-1], dtype=torch.float64)
    for idx in np.ndindex(*batch, H):
        h = idx[-1]
        for i in range(Nq):
            seen = [j for j in range(Nk) if not is_causal or j <= i + Nk - Nq]
            logits = [float(sinks[h])] + [float(q[idx][i].double() @ kk[idx][j].double()) / math.sqrt(d) for j in seen]
            m = max(logits)
            e = [math.exp(x - m) for x in logits]
            z = sum(e) + eps
            for w, j in zip(e[1:], seen):
                out[idx][i] += w / z * vv[idx][j].double()
    return out.to(q.dtype)


def sink_sdpa(q, k, v, sinks, is_causal=False):
    """An extra key of zeros (score 0) whose bias is the sink, and whose value is zero."""
    *batch, H, Nq, d = q.shape
    Nk = k.shape[-2]
    k0 = torch.cat([torch.zeros(*k.shape[:-2], 1, d, dtype=k.dtype), k], -2)
    v0 = torch.cat([torch.zeros(*v.shape[:-2], 1, v.shape[-1], dtype=v.dtype), v], -2)
    bias = torch.zeros(H, Nq, Nk + 1, dtype=q.dtype)
    bias[..., 0] = sinks[:, None]
    if is_causal:
        bias[..., 1:] = bias[..., 1:].masked_fill(~_causal_keep(Nq, Nk), float("-inf"))
    return F.scaled_dot_product_attention(q, k0.expand(*batch, H, Nk + 1, d), v0.expand(*batch, H, Nk + 1, v.shape[-1]),
                                          attn_mask=bias)


def _sink_mutant(kind):
    def fn(q, k, v, sinks, is_causal=False):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        Nq, Nk = s.shape[-2:]
        if is_causal and kind != "no_causal":
            keep = (torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None]) if kind == "top_left" else _causal_keep(Nq, Nk)
            s = s.masked_fill(~keep, float("-inf"))
        if kind == "renormalised":
            w = torch.softmax(torch.cat([sinks.view(-1, 1, 1).expand(*s.shape[:-1], 1), s], -1), -1)[..., 1:]
            return w / w.sum(-1, keepdim=True) @ v
        if kind == "bias_on_scores":
            return torch.softmax(s + sinks.view(-1, 1, 1), -1) @ v
        if kind == "not_exp":
            e = torch.exp(s)
            return e @ v / (e.sum(-1, keepdim=True) + sinks.view(-1, 1, 1))
        if kind == "no_max":
            e = torch.exp(s)
            return e @ v / (e.sum(-1, keepdim=True) + torch.exp(sinks.view(-1, 1, 1)))
        if kind == "max_over_scores":
            m = s.amax(-1, keepdim=True)
            e = torch.exp(s - m)
            return e @ v / (e.sum(-1, keepdim=True) + torch.exp(sinks.view(-1, 1, 1) - m))
        sink = {"scaled": sinks.view(-1, 1, 1) / math.sqrt(q.shape[-1]), "per_query": sinks.view(-1, 1),
                "negated": -sinks.view(-1, 1, 1), "plus_one": torch.zeros(1, 1, 1)}.get(kind, sinks.view(-1, 1, 1))
        col = sink.expand(*s.shape[:-1], 1)
        return torch.softmax(torch.cat([col, s], -1), -1)[..., 1:] @ v
    return fn


# ------------------------------------------------------------------ yarn_inv_freq

def yarn_loop(d, theta, scale, original_max_position, beta_fast=32.0, beta_slow=1.0):
    out = []
    for i in range(d // 2):
        f = theta ** (-2 * i / d)
        r = original_max_position * f / (2 * math.pi)
        g = min(max((r - beta_slow) / (beta_fast - beta_slow), 0.0), 1.0)
        out.append((1 - g) * f / scale + g * f)
    return torch.tensor(out, dtype=torch.float64)


def yarn_torch(d, theta, scale, original_max_position, beta_fast=32.0, beta_slow=1.0):
    f = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    r = original_max_position * f / (2 * math.pi)
    g = torch.clamp((r - beta_slow) / (beta_fast - beta_slow), min=0, max=1)
    return torch.lerp(f / scale, f, g)


def yarn_numpy_wavelengths(d, theta, scale, original_max_position, beta_fast=32.0, beta_slow=1.0, truncate=False):
    """Wavelengths in numpy, an extra keyword with a default."""
    f = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    wavelength = 2 * np.pi / f
    turns = original_max_position / wavelength
    keep = np.clip((turns - beta_slow) / (beta_fast - beta_slow), 0, 1)
    return torch.from_numpy(f / scale * (1 - keep) + f * keep)


def _yarn_mutant(kind):
    def fn(d, theta, scale, original_max_position, beta_fast=32.0, beta_slow=1.0):
        dtype = torch.float32 if kind == "float32" else torch.float64
        i = torch.arange(d // 2, dtype=dtype) + (1 if kind == "from_one" else 0)
        f = theta ** (-(1 if kind == "no_two" else 2) * i / d)
        if kind == "ntk":
            f = (theta * scale ** (d / (d - 2))) ** (-2 * i / d)
            return f
        if kind == "pi":
            return f / scale
        r = original_max_position * f / (1.0 if kind == "no_2pi" else 2 * math.pi)
        bf, bs = (beta_slow, beta_fast) if kind == "swapped" else (beta_fast, beta_slow)
        g = (r - bs) / (bf - bs)
        if kind != "no_clamp":
            g = g.clamp(0, 1)
        if kind == "reversed":
            g = 1 - g
        slow = f * scale if kind == "times_scale" else f / scale
        out = ((1 - g) * slow + g * f).double()
        return out.repeat_interleave(2) if kind == "per_feature" else out
    return fn


# ------------------------------------------------------------------ flash_decode

def decode_loop(q, k, v, n_splits):
    Nk = k.shape[2]
    size = math.ceil(Nk / n_splits)
    outs, lses = [], []
    for s in range(n_splits):
        a, b = s * size, min((s + 1) * size, Nk)
        if b <= a:
            continue
        sc = q @ k[:, :, a:b].transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, 1, n_s)
        lse = torch.logsumexp(sc, -1)  # (B, H, 1)
        outs.append(torch.exp(sc - lse[..., None]) @ v[:, :, a:b])
        lses.append(lse)
    lse = torch.logsumexp(torch.stack(lses), 0)
    return sum(torch.exp(l - lse)[..., None] * o for l, o in zip(lses, outs)), lse


def decode_vectorised(q, k, v, n_splits):
    B, H, Nk, d = k.shape
    size = -(-Nk // n_splits)
    pad = size * n_splits - Nk
    kp = F.pad(k, (0, 0, 0, pad)).view(B, H, n_splits, size, d)
    vp = F.pad(v, (0, 0, 0, pad)).view(B, H, n_splits, size, -1)
    s = torch.einsum("bhd,bhstd->bhst", q[:, :, 0], kp) / math.sqrt(d)
    s = s.masked_fill((torch.arange(n_splits * size) >= Nk).view(n_splits, size), -math.inf)
    m = s.amax(-1).nan_to_num(neginf=0.0)
    p = torch.exp(s - m[..., None])
    l = p.sum(-1)
    o = torch.einsum("bhst,bhstv->bhsv", p, vp) / l.clamp_min(torch.finfo(l.dtype).tiny)[..., None]
    lse_s = torch.where(l > 0, m + torch.log(l.clamp_min(torch.finfo(l.dtype).tiny)), torch.tensor(-math.inf))
    lse = torch.logsumexp(lse_s, -1, keepdim=True)
    return (torch.exp(lse_s - lse)[..., None] * o).sum(2, keepdim=True), lse


def decode_online_f64(q, k, v, n_splits, debug=False):
    """float64 inside; the splits folded into a running (max, sum, output) one after another."""
    qd, kd, vd = q.double(), k.double(), v.double()
    Nk = k.shape[2]
    size = math.ceil(Nk / n_splits)
    m = torch.full(q.shape[:3], -math.inf, dtype=torch.float64)
    l = torch.zeros(q.shape[:3], dtype=torch.float64)
    acc = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    for a in range(0, Nk, size):
        sc = qd @ kd[:, :, a:a + size].transpose(-2, -1) / math.sqrt(q.shape[-1])
        m2 = torch.maximum(m, sc.amax(-1))
        p = torch.exp(sc - m2[..., None])
        alpha = torch.exp(m - m2)
        l, acc, m = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ vd[:, :, a:a + size], m2
    return (acc / l[..., None]).to(q.dtype), (m + torch.log(l)).to(q.dtype)


def decode_with_flash_partials(q, k, v, n_splits):
    """Each split's partial from attnkit's FlashAttention forward (notebook 09), merged here."""
    size = math.ceil(k.shape[2] / n_splits)
    parts = [attnkit.flash_attention_forward(q, k[:, :, a:a + size], v[:, :, a:a + size])
             for a in range(0, k.shape[2], size)]
    lse = torch.logsumexp(torch.stack([l for _, l in parts]), 0)
    return sum(torch.exp(l - lse)[..., None] * o for o, l in parts), lse


def _decode_mutant(kind):
    def fn(q, k, v, n_splits):
        Nk, d = k.shape[2], q.shape[-1]
        size = Nk // n_splits if kind == "floor" else math.ceil(Nk / n_splits)
        outs, ms, ls = [], [], []
        for s in range(n_splits):
            a, b = s * size, min((s + 1) * size, Nk)
            if b <= a and kind != "nan_empty":
                continue
            sc = q @ k[:, :, a:b].transpose(-2, -1) / (1.0 if kind == "no_scale" else math.sqrt(d))
            m = sc.amax(-1, keepdim=True) if b > a else torch.full((*sc.shape[:3], 1), -math.inf)
            p = torch.exp(sc - m)
            l = p.sum(-1, keepdim=True)
            outs.append(p @ v[:, :, a:b] / l)
            ms.append(m[..., 0])
            ls.append(l[..., 0])
        O, M, L = torch.stack(outs), torch.stack(ms), torch.stack(ls)
        lse_s = M + torch.log(L)
        lse = torch.logsumexp(lse_s, 0)
        if kind == "mean":
            out = O.mean(0)
        elif kind == "max_only":
            w = torch.exp(M - M.amax(0))
            out = (w[..., None] * O).sum(0) / w.sum(0)[..., None]
        elif kind == "sum_only":
            out = (L[..., None] * O).sum(0) / L.sum(0)[..., None]
        elif kind == "unnormalised":
            out = (torch.exp(lse_s - lse_s.amax(0))[..., None] * O).sum(0)
        else:
            out = (torch.exp(lse_s - lse)[..., None] * O).sum(0)
        if kind == "base2":
            lse = lse / math.log(2)
        if kind == "lse_no_log":
            lse = torch.logsumexp(M, 0)
        if kind == "lse_squeezed":
            lse = lse[..., 0]
        return out, lse
    return fn


def decode_all_at_once(q, k, v, n_splits):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, 1, Nk): every score at once
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse[..., None]) @ v, lse


CORRECT = [
    ("paged_attention", paged_loop), ("paged_attention", paged_gather), ("paged_attention", paged_f64),
    ("paged_attention", paged_online), ("paged_attention", paged_sdpa),
    ("mla_scores", mla_einsum), ("mla_scores", mla_heads_loop), ("mla_scores", mla_f64),
    ("sink_attention", sink_concat), ("sink_attention", sink_manual), ("sink_attention", sink_loops),
    ("sink_attention", sink_sdpa),
    ("yarn_inv_freq", yarn_loop), ("yarn_inv_freq", yarn_torch), ("yarn_inv_freq", yarn_numpy_wavelengths),
    ("flash_decode", decode_loop), ("flash_decode", decode_vectorised), ("flash_decode", decode_online_f64),
    ("flash_decode", decode_with_flash_partials),
]

WRONG = [
    ("paged_attention", _paged_mutant(identity=True), "block_table[b, i]"),
    ("paged_attention", _paged_mutant(first_row=True), "first row of block_table"),
    ("paged_attention", _paged_mutant(whole_pages=True), "past seq_lens[b] were attended"),
    ("paged_attention", _paged_mutant(extra=1), "off by one"),
    ("paged_attention", _paged_mutant(extra=-1), "off by one"),
    ("paged_attention", _paged_mutant(tiled=True), "h // (H // Hkv)"),
    ("paged_attention", _paged_mutant(no_scale=True), "sqrt(d)"),
    ("paged_attention", _paged_mutant(no_permute=True), "head axis still in front"),
    ("paged_attention", _paged_mutant(per_page=True), "normalised on its own"),
    ("paged_attention", paged_nan_on_empty, "seq_lens = 0"),
    ("paged_attention", attnkit.paged_attention, "calls"),
    ("mla_scores", lambda q, c, w: mla_einsum(q, c, w) / math.sqrt(q.shape[-1]), "sqrt(dn)"),
    ("mla_scores", lambda q, c, w: mla_einsum(q, c, w) / math.sqrt(c.shape[-1]), "sqrt(r)"),
    ("mla_scores", lambda q, c, w: mla_einsum(q, c, w).transpose(-2, -1), "transposed"),
    ("mla_scores", lambda q, c, w: torch.softmax(mla_einsum(q, c, w), -1), "before any softmax"),
    ("mla_scores", lambda q, c, w: torch.einsum("bhqd,hdr,bkr->bqk", q, w, c), "heads were summed"),
    ("mla_scores", lambda q, c, w: (q @ w[0]) @ c.unsqueeze(1).transpose(-2, -1), "w_uk[0]"),
    ("mla_scores", lambda q, c, w: torch.einsum("bhqr,kr->bhqk", torch.einsum("bhqd,hdr->bhqr", q, w), c[0]), "c_kv[0]"),
    ("mla_scores", lambda q, c, w: torch.einsum("bhqd,hrd,bkr->bhqk", q, w, c), "w_uk[h] was transposed"),
    ("mla_scores", mla_materialised, "calls"),
    ("mla_scores", attnkit.mla_scores, "calls"),
    ("sink_attention", _sink_mutant("renormalised"), "took no weight"),
    ("sink_attention", _sink_mutant("bias_on_scores"), "took no weight"),
    ("sink_attention", _sink_mutant("not_exp"), "is a logit"),
    ("sink_attention", _sink_mutant("scaled"), "divided by sqrt(d)"),
    ("sink_attention", _sink_mutant("per_query"), "(H, 1, 1)"),
    ("sink_attention", _sink_mutant("negated"), "its sign"),
    ("sink_attention", _sink_mutant("plus_one"), "softmax + 1"),
    ("sink_attention", _sink_mutant("no_causal"), "is_causal was ignored"),
    ("sink_attention", _sink_mutant("top_left"), "top left"),
    ("sink_attention", _sink_mutant("no_max"), "not numerically stable"),
    ("sink_attention", _sink_mutant("max_over_scores"), "sees no key"),
    ("sink_attention", attnkit.sink_attention, "calls"),
    ("yarn_inv_freq", _yarn_mutant("float32"), "float32"),
    ("yarn_inv_freq", _yarn_mutant("reversed"), "ramp is reversed"),
    ("yarn_inv_freq", lambda d, t, s, L, beta_fast=32.0, beta_slow=1.0: yarn_torch(d, t, s, L, beta_slow, beta_fast),
     "swapped"),
    ("yarn_inv_freq", _yarn_mutant("no_2pi"), "(2 pi)"),
    ("yarn_inv_freq", _yarn_mutant("no_clamp"), "clamped"),
    ("yarn_inv_freq", _yarn_mutant("pi"), "position interpolation"),
    ("yarn_inv_freq", _yarn_mutant("ntk"), "NTK-aware"),
    ("yarn_inv_freq", _yarn_mutant("no_two"), "has a 2"),
    ("yarn_inv_freq", _yarn_mutant("from_one"), "numbered from 0"),
    ("yarn_inv_freq", _yarn_mutant("times_scale"), "do not multiply"),
    ("yarn_inv_freq", _yarn_mutant("per_feature"), "d // 2 values"),
    ("yarn_inv_freq", lambda *a, **kw: attnkit.yarn_inv_freq(*a, **kw), "calls"),
    ("flash_decode", _decode_mutant("mean"), "averaged"),
    ("flash_decode", _decode_mutant("max_only"), "exp(m_s) only"),
    ("flash_decode", _decode_mutant("sum_only"), "sum l_s only"),
    ("flash_decode", _decode_mutant("unnormalised"), "not normalised"),
    ("flash_decode", _decode_mutant("no_scale"), "sqrt(d)"),
    ("flash_decode", _decode_mutant("floor"), "last, shorter split"),
    ("flash_decode", _decode_mutant("base2"), "base 2"),
    ("flash_decode", _decode_mutant("lse_no_log"), "log of each split's sum"),
    ("flash_decode", _decode_mutant("lse_squeezed"), "(B, H, 1)"),
    ("flash_decode", _decode_mutant("nan_empty"), "empty split"),
    ("flash_decode", decode_all_at_once, "calls"),
    ("flash_decode", lambda q, k, v, n: attnkit.flash_decode(q, k, v, n), "calls"),
    ("flash_decode", lambda q, k, v, n: attnkit.merge_partials(
        *decode_loop(q, k[:, :, :k.shape[2] // 2], v[:, :, :k.shape[2] // 2], 1),
        *decode_loop(q, k[:, :, k.shape[2] // 2:], v[:, :, k.shape[2] // 2:], 1)), "calls"),
]


@pytest.mark.parametrize("name,fn", CORRECT, ids=[f"{n}-{f.__name__}" for n, f in CORRECT])
def test_checker_accepts(name, fn, capsys):
    CHECKS[name](fn)
    assert capsys.readouterr().out.startswith(f"check_{name} passed")


@pytest.mark.parametrize("name,fn,words", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_checker_rejects_with_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    first = str(info.value).splitlines()[0]
    assert first.startswith(name + ":") and words in first, str(info.value)


def test_every_checker_has_eight_mutants():
    counts = {name: sum(1 for n, f, w in WRONG if n == name and w != "calls") for name, _ in CORRECT}
    assert min(counts.values()) >= 8, counts
    styles = {name: sum(1 for n, _ in CORRECT if n == name) for name, _ in CORRECT}
    assert min(styles.values()) >= 3, styles
