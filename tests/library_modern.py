"""The mutant library of notebooks 14 and 15 (tests/library.py): paged_attention, mla_scores,
sink_attention, yarn_inv_freq, flash_decode, gated_delta_rule and gated_delta_rule_chunked.

Correct implementations are written in other styles than attnkit's (Python loops, einsum,
float64 inside, extra keyword arguments with defaults, vLLM's per-page partials, SDPA where the
exercise is the paging); mutants are realistic mistakes, each with the words its hint must
contain, and the shortcuts each checker refuses."""

import math

import numpy as np
import torch
import torch.nn.functional as F

import attnkit
from attnkit.checks import CHECKS, NOTEBOOK_CHECKS
from library import Exercise, Mutant

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
            if kw.get("contiguous"):  # block_table ignored: sequence b's pages assumed to start at b * max_pages
                pages = (b * block_table.shape[1] + torch.arange(n_pages)) % k_pages.shape[0]
            if n <= 0:
                continue
            k, v = k_pages[pages], v_pages[pages]  # (n_pages, Hkv, ps, d)
            if kw.get("no_permute"):
                k, v = k.reshape(Hkv, -1, d)[:, :n], v.reshape(Hkv, -1, v.shape[-1])[:, :n]
            else:
                k, v = k.transpose(0, 1).flatten(1, 2)[:, :n], v.transpose(0, 1).flatten(1, 2)[:, :n]
            for h in range(H):
                kv = h % Hkv if kw.get("tiled") else h // (H // Hkv)
                s = k[kv] @ q[b, h, 0] / (1.0 if kw.get("no_scale") else math.sqrt(v.shape[-1] if kw.get("dv") else d))
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
                "negated": -sinks.view(-1, 1, 1), "plus_one": torch.zeros(1, 1, 1),
                "first_head": sinks[0].view(1, 1, 1),
                # (H, 1, 1, 1): lines up with the batch axis of 4-D scores (fails to broadcast unless B = H or 1)
                "batch_axis": sinks.view(-1, *[1] * (s.ndim - 1)) if s.ndim == 4 and s.shape[0] == sinks.shape[0]
                else sinks.view(-1, 1, 1)}.get(kind, sinks.view(-1, 1, 1))
        col = sink.expand(*s.shape[:-1], 1)
        w = torch.softmax(torch.cat([col, s], -1), -1)
        if kind == "sink_value":  # the sink's share spent on the mean of the values
            return w[..., 1:] @ v + w[..., :1] * v.mean(-2, keepdim=True)
        return w[..., 1:] @ v
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
        if kind == "hf_ramp":  # the ramp over pair indices between floor/ceil bounds
            def pair(n_rot):
                return d * math.log(original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(theta))
            lo, hi = max(math.floor(pair(beta_fast)), 0), min(math.ceil(pair(beta_slow)), d - 1)
            keep = 1 - ((i - lo) / (hi - lo if hi != lo else 0.001)).clamp(0, 1)
            return f / scale * (1 - keep) + f * keep
        r = original_max_position * f / {"no_2pi": 1.0, "half_turn": math.pi}.get(kind, 2 * math.pi)
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


# ------------------------------------------------------------------ the recurrent rule

def delta_einsum(q, k, v, beta, g, initial_state=None):
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=q.dtype) if initial_state is None else initial_state
    outs = []
    for t in range(N):
        S = g[:, :, t, None, None] * S
        error = v[:, :, t] - torch.einsum("bhvk,bhk->bhv", S, k[:, :, t])
        S = S + torch.einsum("bhv,bhk->bhvk", beta[:, :, t, None] * error, k[:, :, t])
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, :, t]))
    return torch.stack(outs, 2), S


def delta_householder_f64(q, k, v, beta, g, initial_state=None, scale=1.0):
    """S_t = g S (I - beta k k^T) + beta v k^T, float64 inside, an extra keyword with a default."""
    dtype = q.dtype
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if initial_state is None else initial_state.double()
    eye = torch.eye(dk, dtype=torch.float64)
    out = torch.empty(B, H, N, v.shape[-1], dtype=torch.float64)
    for t in range(N):
        kt = k[:, :, t, :, None]  # (B, H, dk, 1)
        b = beta[:, :, t, None, None]
        S = g[:, :, t, None, None] * S @ (eye - b * kt @ kt.transpose(-2, -1)) + b * v[:, :, t, :, None] @ kt.transpose(-2, -1)
        out[:, :, t] = (S @ q[:, :, t, :, None])[..., 0] * scale
    return out.to(dtype), S.to(dtype)


def delta_scalar_loops(q, k, v, beta, g, initial_state=None):
    """One (batch, head) at a time, matrices as Python lists of rows."""
    B, H, N, dk = k.shape
    dv = v.shape[-1]
    out = torch.zeros(B, H, N, dv, dtype=q.dtype)
    final = torch.zeros(B, H, dv, dk, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            S = [[0.0] * dk for _ in range(dv)] if initial_state is None else initial_state[b, h].double().tolist()
            for t in range(N):
                gt, bt = float(g[b, h, t]), float(beta[b, h, t])
                kt, vt, qt = k[b, h, t].tolist(), v[b, h, t].tolist(), q[b, h, t].tolist()
                S = [[gt * x for x in row] for row in S]
                for i in range(dv):
                    err = vt[i] - sum(S[i][j] * kt[j] for j in range(dk))
                    S[i] = [S[i][j] + bt * err * kt[j] for j in range(dk)]
                out[b, h, t] = torch.tensor([sum(S[i][j] * qt[j] for j in range(dk)) for i in range(dv)],
                                            dtype=torch.float64)
            final[b, h] = torch.tensor(S, dtype=torch.float64)
    return out, final


def delta_inplace(q, k, v, beta, g, initial_state=None):
    """Preallocated outputs written in place (the state is a fresh tensor, so inputs stay untouched)."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state.clone()
    out = q.new_empty(B, H, N, v.shape[-1])
    for t in range(N):
        S.mul_(g[:, :, t, None, None])
        pred = (S @ k[:, :, t, :, None]).squeeze(-1)
        S.add_((beta[:, :, t, None] * (v[:, :, t] - pred))[..., None] * k[:, :, t, None, :])
        torch.matmul(S, q[:, :, t, :, None], out=out[:, :, t, :, None])
    return out, S


def _delta_mutant(kind):
    def fn(q, k, v, beta, g, initial_state=None):
        B, H, N, dk = k.shape
        S = torch.zeros(B, H, v.shape[-1], dk, dtype=q.dtype)
        if initial_state is not None and kind != "ignore_state":
            S = initial_state.clone()
        if kind == "exp_gate":
            g = torch.exp(g)
        outs, previous = [], S
        for t in range(N):
            previous = S
            gt, bt = g[:, :, t, None, None], beta[:, :, t, None]
            kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
            if kind == "read_before":
                outs.append(torch.einsum("bhvk,bhk->bhv", gt * S, qt))
            if kind == "gate_after":
                err = vt - torch.einsum("bhvk,bhk->bhv", S, kt)
                S = gt * (S + torch.einsum("bhv,bhk->bhvk", bt * err, kt))
            else:
                faded = S if kind == "no_gate" else gt * S
                memory = S if kind == "gate_outside" else faded
                pred = torch.einsum("bhvk,bhk->bhv", memory, kt)
                if kind == "additive":
                    write = bt * vt
                elif kind == "beta_on_v":
                    write = bt * vt - pred
                else:
                    write = bt * (vt - pred)
                S = faded + torch.einsum("bhv,bhk->bhvk", write, kt)
            if kind != "read_before":
                outs.append(torch.einsum("bhvk,bhk->bhv", S, qt))
        final = previous if kind == "stale_final" else S
        if kind == "transposed_state":
            final = final.transpose(-2, -1)
        return torch.stack(outs, 2), final
    return fn


def delta_reads_previous_state(q, k, v, beta, g, initial_state=None):
    """o_t = S_{t-1} q_t: the read comes first, before the fade and the write."""
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=q.dtype) if initial_state is None else initial_state.clone()
    outs = []
    for t in range(N):
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, :, t]))
        S = g[:, :, t, None, None] * S
        error = v[:, :, t] - torch.einsum("bhvk,bhk->bhv", S, k[:, :, t])
        S = S + torch.einsum("bhv,bhk->bhvk", beta[:, :, t, None] * error, k[:, :, t])
    return torch.stack(outs, 2), S


def delta_normalises_inputs(q, k, v, beta, g, initial_state=None):
    """L2-normalises q and k inside the rule."""
    unit = torch.nn.functional.normalize
    return delta_einsum(unit(q, dim=-1), unit(k, dim=-1), v, beta, g,
                        None if initial_state is None else initial_state.clone())


def delta_normalises_keys(q, k, v, beta, g, initial_state=None):
    return delta_einsum(q, torch.nn.functional.normalize(k, dim=-1), v, beta, g,
                        None if initial_state is None else initial_state.clone())


def delta_modifies_state(q, k, v, beta, g, initial_state=None):
    out, S = delta_einsum(q, k, v, beta, g, None if initial_state is None else initial_state.clone())
    if initial_state is not None:
        initial_state.copy_(S)  # overwrites the caller's tensor
    return out, S


# ------------------------------------------------------------------ the chunked form

def chunked_cumprod(q, k, v, beta, g, initial_state=None, chunk_size=64):
    """Decays as ratios of products of gates built by explicit loops (no logs), solve_triangular."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state
    outs = []
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        n = e - s
        qc, kc, vc, bc, gc = (t[:, :, s:e] for t in (q, k, v, beta, g))
        G = q.new_zeros(B, H, n, n)
        for i in range(n):
            prod = q.new_ones(B, H)
            G[:, :, i, i] = 1
            for j in range(i - 1, -1, -1):
                prod = prod * gc[:, :, j + 1]
                G[:, :, i, j] = prod
        gamma = torch.cumprod(gc, -1)
        A = (bc[..., None] * (kc @ kc.transpose(-2, -1)) * G).tril(-1)
        rhs = bc[..., None] * vc - (bc * gamma)[..., None] * (kc @ S.transpose(-2, -1))
        U = torch.linalg.solve_triangular(torch.eye(n, dtype=q.dtype) + A, rhs, upper=False)
        outs.append(gamma[..., None] * (qc @ S.transpose(-2, -1)) + ((qc @ kc.transpose(-2, -1)) * G) @ U)
        S = gamma[..., -1, None, None] * S + U.transpose(-2, -1) @ (G[:, :, -1, :, None] * kc)
    return torch.cat(outs, 2), S


def chunked_forward_substitution_f64(q, k, v, beta, g, initial_state=None, chunk_size=64, eps=0.0):
    """float64, log-space decays, (I + A)^-1 by forward substitution row by row (as kernels do)."""
    dtype = q.dtype
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if initial_state is None else initial_state.double()
    log_g = torch.log(g.clamp_min(1e-300))
    outs = []
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        n = e - s
        qc, kc, vc, bc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], beta[:, :, s:e]
        c = log_g[:, :, s:e].cumsum(-1)
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        G = torch.where(mask, torch.exp((c[..., :, None] - c[..., None, :]).masked_fill(~mask, 0)), 0.0)
        A = torch.where(mask.tril(-1), bc[..., None] * (kc @ kc.transpose(-2, -1)) * G, 0.0)
        rhs = bc[..., None] * vc - (bc * c.exp())[..., None] * (kc @ S.transpose(-2, -1))
        U = torch.zeros_like(rhs)
        for i in range(n):  # forward substitution: u_i = rhs_i - sum_{j<i} A_ij u_j
            U[:, :, i] = rhs[:, :, i] - (A[:, :, i, :i, None] * U[:, :, :i]).sum(2)
        outs.append(c.exp()[..., None] * (qc @ S.transpose(-2, -1)) + ((qc @ kc.transpose(-2, -1)) * G) @ U)
        S = c[..., -1:].exp()[..., None] * S + U.transpose(-2, -1) @ ((c[..., -1:] - c).exp()[..., None] * kc)
    return torch.cat(outs, 2).to(dtype), S.to(dtype)


def chunked_einsum_inverse(q, k, v, beta, g, initial_state=None, chunk_size=64):
    """einsum everywhere, torch.linalg.inv for the UT transform, decays from a padded log-gate tensor."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state
    lg = torch.log(g).clamp_min(-60.0)
    outs = []
    for s in range(0, N, chunk_size):
        sl = slice(s, min(s + chunk_size, N))
        qc, kc, vc, bc, c = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], lg[:, :, sl].cumsum(-1)
        n = c.shape[-1]
        tri = torch.ones(n, n, dtype=torch.bool).tril()
        G = torch.exp(torch.where(tri, c[..., :, None] - c[..., None, :], torch.tensor(-torch.inf)))
        A = torch.einsum("bhi,bhid,bhjd,bhij->bhij", bc, kc, kc, G) * tri.tril(-1)
        T = torch.linalg.inv(torch.eye(n, dtype=q.dtype) + A)
        U = torch.einsum("bhij,bhjv->bhiv", T, bc[..., None] * vc - torch.einsum("bhi,bhid,bhvd->bhiv", bc * c.exp(), kc, S))
        outs.append(torch.einsum("bhi,bhid,bhvd->bhiv", c.exp(), qc, S)
                    + torch.einsum("bhid,bhjd,bhij,bhjv->bhiv", qc, kc, G, U))
        S = c[..., -1, None, None].exp() * S + torch.einsum("bhjv,bhj,bhjd->bhvd", U, (c[..., -1:] - c).exp(), kc)
    return torch.cat(outs, 2), S


def _chunked_mutant(**kw):
    def fn(q, k, v, beta, g, initial_state=None, chunk_size=64):
        B, H, N, dk = k.shape
        S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None or kw.get("ignore_state") else initial_state
        lg = torch.log(g).clamp_min(-60.0)
        outs = []
        stop = N - N % chunk_size if kw.get("drop_tail") else N
        for s in range(0, stop, chunk_size):
            sl = slice(s, min(s + chunk_size, N))
            qc, kc, vc, bc, c = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], lg[:, :, sl].cumsum(-1)
            n = c.shape[-1]
            tri = torch.ones(n, n, dtype=torch.bool).tril()
            diff = c[..., :, None] - c[..., None, :]
            if kw.get("inverted"):
                diff = -diff
            G = torch.exp(diff.masked_fill(~tri, -torch.inf))
            A = (bc[..., None] * (kc @ kc.transpose(-2, -1)) * G).masked_fill(~tri.tril(0 if kw.get("a_diag") else -1), 0)
            rhs = bc[..., None] * vc
            if not kw.get("no_carry_u"):
                rhs = rhs - (bc * c.exp())[..., None] * (kc @ S.transpose(-2, -1))
            if kw.get("no_solve"):
                U = rhs
            elif kw.get("a_diag"):  # a general solve: the diagonal of A now counts
                U = torch.linalg.solve(torch.eye(n, dtype=q.dtype) + A, rhs)
            else:
                U = torch.linalg.solve_triangular(torch.eye(n, dtype=q.dtype) + A, rhs, upper=False, unitriangular=True)
            P = (qc @ kc.transpose(-2, -1)) * G
            if kw.get("strict_out"):
                P = P.tril(-1)
            o = P @ U
            if not kw.get("no_carry_out"):
                o = o + c.exp()[..., None] * (qc @ S.transpose(-2, -1))
            outs.append(o)
            w = torch.ones_like(c) if kw.get("no_tail") else (c[..., -1:] - c).exp()
            fade = 1.0 if kw.get("no_fade") else c[..., -1, None, None].exp()
            S = fade * S + U.transpose(-2, -1) @ (w[..., None] * kc)
        return torch.cat(outs, 2), S
    return fn


def _mla_scaled_by_dn(q, c, w):
    return mla_einsum(q, c, w) / math.sqrt(q.shape[-1])


def _mla_scaled_by_r(q, c, w):
    return mla_einsum(q, c, w) / math.sqrt(c.shape[-1])


def _mla_transposed(q, c, w):
    return mla_einsum(q, c, w).transpose(-2, -1)


def _mla_softmaxed(q, c, w):
    return torch.softmax(mla_einsum(q, c, w), -1)


def _mla_heads_summed(q, c, w):
    return torch.einsum("bhqd,hdr,bkr->bqk", q, w, c)


def _mla_first_head_weights(q, c, w):
    return (q @ w[0]) @ c.unsqueeze(1).transpose(-2, -1)


def _mla_first_batch_latents(q, c, w):
    return torch.einsum("bhqr,kr->bhqk", torch.einsum("bhqd,hdr->bhqr", q, w), c[0])


def _mla_w_transposed(q, c, w):
    return torch.einsum("bhqd,hrd,bkr->bhqk", q, w, c)


def _mla_heads_of_w_summed(q, c, w):
    return torch.einsum("bhqr,bkr->bhqk", torch.einsum("bhqd,gdr->bhqr", q, w), c)  # g: every head's w_uk


def _mla_latents_summed_over_batch(q, c, w):
    return torch.einsum("bhqr,ckr->bhqk", torch.einsum("bhqd,hdr->bhqr", q, w), c)  # c: every sequence's latents


def _yarn_betas_swapped(d, t, s, L, beta_fast=32.0, beta_slow=1.0):
    return yarn_torch(d, t, s, L, beta_slow, beta_fast)


def _decode_merged_by_attnkit(q, k, v, n):
    half = k.shape[2] // 2
    return attnkit.merge_partials(*decode_loop(q, k[:, :, :half], v[:, :, :half], 1),
                                  *decode_loop(q, k[:, :, half:], v[:, :, half:], 1))


def _delta_via_chunks_of_4(q, k, v, beta, g, initial_state=None):
    return chunked_cumprod(q, k, v, beta, g, initial_state, 4)


EXERCISES = [
    Exercise("paged_attention", CHECKS["paged_attention"], [
        Mutant("pages read in logical order, block_table ignored", _paged_mutant(identity=True), "block_table[b, i]"),
        Mutant("every sequence reads the first row of block_table", _paged_mutant(first_row=True),
               "first row of block_table"),
        Mutant("whole last page attended, seq_lens ignored inside it", _paged_mutant(whole_pages=True),
               "past seq_lens[b] were attended"),
        Mutant("one position too many", _paged_mutant(extra=1), "off by one"),
        Mutant("one position too few", _paged_mutant(extra=-1), "off by one"),
        Mutant("kv head h % Hkv (tiled) instead of h // (H // Hkv)", _paged_mutant(tiled=True), "h // (H // Hkv)"),
        Mutant("no 1/sqrt(d)", _paged_mutant(no_scale=True), "sqrt(d)"),
        Mutant("pages flattened with the head axis still in front", _paged_mutant(no_permute=True),
               "head axis still in front"),
        Mutant("each page normalised on its own, then averaged", _paged_mutant(per_page=True),
               "normalised on its own"),
        Mutant("NaN for an empty sequence", paged_nan_on_empty, "seq_lens = 0"),
        Mutant("block_table ignored, pages assumed contiguous per sequence", _paged_mutant(contiguous=True),
               "one after another"),
        Mutant("scaled by 1/sqrt(dv)", _paged_mutant(dv=True), "sqrt(dv)"),
        Mutant("calls attnkit.paged_attention", attnkit.paged_attention, "calls"),
    ], [paged_loop, paged_gather, paged_f64, paged_online, paged_sdpa]),
    Exercise("mla_scores", CHECKS["mla_scores"], [
        Mutant("scaled by 1/sqrt(dn)", _mla_scaled_by_dn, "sqrt(dn)"),
        Mutant("scaled by 1/sqrt(r)", _mla_scaled_by_r, "sqrt(r)"),
        Mutant("queries and keys swapped", _mla_transposed, "transposed"),
        Mutant("softmax applied", _mla_softmaxed, "before any softmax"),
        Mutant("heads summed by the einsum", _mla_heads_summed, "heads were summed"),
        Mutant("w_uk[0] for every head", _mla_first_head_weights, "w_uk[0]"),
        Mutant("c_kv[0] for every sequence", _mla_first_batch_latents, "c_kv[0]"),
        Mutant("w_uk[h] transposed", _mla_w_transposed, "w_uk[h] was transposed"),
        Mutant("w_uk summed over the heads by the einsum", _mla_heads_of_w_summed, "summed over the heads"),
        Mutant("latents summed over the batch by the einsum", _mla_latents_summed_over_batch, "whole batch"),
        Mutant("per-head keys materialised", mla_materialised, "calls"),
        Mutant("calls attnkit.mla_scores", attnkit.mla_scores, "calls"),
    ], [mla_einsum, mla_heads_loop, mla_f64]),
    Exercise("sink_attention", CHECKS["sink_attention"], [
        Mutant("weights renormalised after dropping the sink", _sink_mutant("renormalised"), "took no weight"),
        Mutant("sink added to every score", _sink_mutant("bias_on_scores"), "took no weight"),
        Mutant("sink added to the sum without exp", _sink_mutant("not_exp"), "is a logit"),
        Mutant("sink divided by sqrt(d)", _sink_mutant("scaled"), "divided by sqrt(d)"),
        Mutant("sinks broadcast per query", _sink_mutant("per_query"), "(H, 1, 1)"),
        Mutant("sink negated", _sink_mutant("negated"), "its sign"),
        Mutant("a zero sink (softmax + 1)", _sink_mutant("plus_one"), "softmax + 1"),
        Mutant("is_causal ignored", _sink_mutant("no_causal"), "is_causal was ignored"),
        Mutant("causal mask top-left", _sink_mutant("top_left"), "top left"),
        Mutant("no max subtracted", _sink_mutant("no_max"), "not numerically stable"),
        Mutant("max over the scores only", _sink_mutant("max_over_scores"), "sees no key"),
        Mutant("the sink carries the mean value", _sink_mutant("sink_value"), "adds no value"),
        Mutant("sinks[0] for every head", _sink_mutant("first_head"), "sinks[0]"),
        Mutant("sinks reshaped to (H, 1, 1, 1): the batch axis", _sink_mutant("batch_axis"), "batch axis"),
        Mutant("calls attnkit.sink_attention", attnkit.sink_attention, "calls"),
    ], [sink_concat, sink_manual, sink_loops, sink_sdpa]),
    Exercise("yarn_inv_freq", CHECKS["yarn_inv_freq"], [
        Mutant("computed in float32", _yarn_mutant("float32"), "float32"),
        Mutant("ramp reversed", _yarn_mutant("reversed"), "ramp is reversed"),
        Mutant("beta_fast and beta_slow swapped", _yarn_betas_swapped, "swapped"),
        Mutant("r_i = L f_i / pi", _yarn_mutant("half_turn"), "2 pi radians"),
        Mutant("Hugging Face's ramp over pair indices", _yarn_mutant("hf_ramp"), "dimension indices"),
        Mutant("rotations without 2 pi", _yarn_mutant("no_2pi"), "(2 pi)"),
        Mutant("ramp not clamped", _yarn_mutant("no_clamp"), "clamped"),
        Mutant("plain position interpolation", _yarn_mutant("pi"), "position interpolation"),
        Mutant("NTK-aware scaling", _yarn_mutant("ntk"), "NTK-aware"),
        Mutant("exponent without the 2", _yarn_mutant("no_two"), "has a 2"),
        Mutant("frequencies numbered from 1", _yarn_mutant("from_one"), "numbered from 0"),
        Mutant("multiplied by scale", _yarn_mutant("times_scale"), "do not multiply"),
        Mutant("one value per feature", _yarn_mutant("per_feature"), "d // 2 values"),
        Mutant("calls attnkit.yarn_inv_freq", lambda *a, **kw: attnkit.yarn_inv_freq(*a, **kw), "calls"),
    ], [yarn_loop, yarn_torch, yarn_numpy_wavelengths]),
    Exercise("flash_decode", CHECKS["flash_decode"], [
        Mutant("partials averaged", _decode_mutant("mean"), "averaged"),
        Mutant("partials weighted by exp(m_s) only", _decode_mutant("max_only"), "exp(m_s) only"),
        Mutant("partials weighted by l_s only", _decode_mutant("sum_only"), "sum l_s only"),
        Mutant("merged output not normalised", _decode_mutant("unnormalised"), "not normalised"),
        Mutant("no 1/sqrt(d)", _decode_mutant("no_scale"), "sqrt(d)"),
        Mutant("split size Nk // n_splits drops the tail", _decode_mutant("floor"), "last, shorter split"),
        Mutant("lse in base 2", _decode_mutant("base2"), "base 2"),
        Mutant("lse without each split's log-sum", _decode_mutant("lse_no_log"), "log of each split's sum"),
        Mutant("lse squeezed to (B, H)", _decode_mutant("lse_squeezed"), "(B, H, 1)"),
        Mutant("NaN from an empty split", _decode_mutant("nan_empty"), "empty split"),
        Mutant("all scores at once", decode_all_at_once, "calls"),
        Mutant("calls attnkit.flash_decode", lambda q, k, v, n: attnkit.flash_decode(q, k, v, n), "calls"),
        Mutant("merges with attnkit.merge_partials", _decode_merged_by_attnkit, "calls"),
    ], [decode_loop, decode_vectorised, decode_online_f64, decode_with_flash_partials]),
    Exercise("gated_delta_rule", CHECKS["gated_delta_rule"], [
        Mutant("prediction from the unfaded memory", _delta_mutant("gate_outside"), "faded memory"),
        Mutant("gate ignored", _delta_mutant("no_gate"), "gate g was ignored"),
        Mutant("gate applied after the write", _delta_mutant("gate_after"), "after the write"),
        Mutant("read before the write", _delta_mutant("read_before"), "after this token's write"),
        Mutant("additive write, no delta correction", _delta_mutant("additive"), "delta correction is missing"),
        Mutant("beta on v only", _delta_mutant("beta_on_v"), "whole correction"),
        Mutant("gate exponentiated", _delta_mutant("exp_gate"), "not its logarithm"),
        Mutant("initial_state ignored", _delta_mutant("ignore_state"), "initial_state was ignored"),
        Mutant("final state from before the last token", _delta_mutant("stale_final"), "after the last token"),
        Mutant("state returned transposed", _delta_mutant("transposed_state"), "transposed"),
        Mutant("initial_state overwritten in place", delta_modifies_state, "in place"),
        Mutant("reads S_{t-1} before the fade and the write", delta_reads_previous_state, "not S_{t-1} q_t"),
        Mutant("q and k normalised inside", delta_normalises_inputs, "normalised q and k"),
        Mutant("k normalised inside", delta_normalises_keys, "normalised k"),
        Mutant("calls attnkit.gated_delta_rule", attnkit.gated_delta_rule, "calls"),
        Mutant("calls attnkit.gated_delta_rule_chunked",
               lambda *a, **kw: attnkit.gated_delta_rule_chunked(*a, **kw), "calls"),
    ], [delta_einsum, delta_householder_f64, delta_scalar_loops, delta_inplace, _delta_via_chunks_of_4]),
    Exercise("gated_delta_rule_chunked", NOTEBOOK_CHECKS["gated_delta_rule_chunked"], [
        Mutant("no triangular solve", _chunked_mutant(no_solve=True), "solve (I + A)"),
        Mutant("decay ratios inverted", _chunked_mutant(inverted=True), "inverted"),
        Mutant("A keeps its diagonal", _chunked_mutant(a_diag=True), "strictly lower"),
        Mutant("output drops the diagonal", _chunked_mutant(strict_out=True), "keep the diagonal"),
        Mutant("U without the carried state", _chunked_mutant(no_carry_u=True), "S0 k_i"),
        Mutant("output without the carried state", _chunked_mutant(no_carry_out=True), "S0 q_i"),
        Mutant("state not faded across the chunk", _chunked_mutant(no_fade=True), "fade across the chunk"),
        Mutant("state update without gamma_C / gamma_j", _chunked_mutant(no_tail=True), "gamma_C / gamma_j"),
        Mutant("last, shorter chunk dropped", _chunked_mutant(drop_tail=True), "last, shorter chunk"),
        Mutant("initial_state ignored", _chunked_mutant(ignore_state=True), "initial_state was ignored"),
        Mutant("calls attnkit.gated_delta_rule",
               lambda q, k, v, b, g, s=None, c=64: attnkit.gated_delta_rule(q, k, v, b, g, s), "calls"),
        Mutant("calls attnkit.gated_delta_rule_chunked", attnkit.gated_delta_rule_chunked, "calls"),
    ], [chunked_cumprod, chunked_forward_substitution_f64, chunked_einsum_inverse]),
]
