"""Checkers for notebook 14 (attention in today's LLMs): paged attention, MLA scores, learned
sinks, YaRN frequencies, split-KV decoding."""

from __future__ import annotations

import math

import torch

from .. import decoding, latent, paging, sinks, yarn
from ..chunked import merge_partials as chunked_merge_partials
from ..distributed import merge_partials as ring_merge_partials
from ._harness import Ban, Checker, gen, randn


def _is_tuple(got, n):
    return isinstance(got, tuple) and len(got) == n


# --------------------------------------------------------------------------- paged attention

def _paged(q, kp, vp, table, lens, *, tables="right", lengths="right", heads="grouped", scale=True,
           flatten="right", per_page=False, scale_dim=None):
    """A float64 loop over sequences with switches for the classic mistakes (scale_dim: 1/sqrt(scale_dim)
    instead of 1/sqrt(d); tables="contiguous": sequence b's pages taken as b * max_pages + i)."""
    q, kp, vp = q.double(), kp.double(), vp.double()
    B, H, _, d = q.shape
    P, Hkv, ps, _ = kp.shape
    out = torch.zeros(B, H, 1, vp.shape[-1], dtype=torch.float64)
    for b in range(B):
        n = int(lens[b])
        n = {"right": n, "plus1": n + 1, "minus1": max(n - 1, 0)}.get(lengths, n)
        n_pages = math.ceil(n / ps)
        if lengths == "whole_pages":
            n = n_pages * ps
        row = table[0] if tables == "first_row" else table[b]
        if tables == "identity":
            pages = list(range(n_pages))
        elif tables == "contiguous":
            pages = [(b * table.shape[1] + i) % P for i in range(n_pages)]
        elif lengths == "whole_row":
            pages = [int(p) for p in row]  # -1 in Python indexing is the last page
            n = len(pages) * ps
        else:
            pages = [int(p) for p in row[:n_pages]]
        if not pages or n == 0:
            continue
        kb, vb = kp[pages], vp[pages]  # (n_pages, Hkv, ps, d)
        if flatten == "right":
            kb = kb.transpose(0, 1).reshape(Hkv, -1, d)[:, :n]
            vb = vb.transpose(0, 1).reshape(Hkv, -1, vb.shape[-1])[:, :n]
        else:  # reshaped without moving the head axis first: heads and pages mixed up
            kb = kb.reshape(Hkv, -1, d)[:, :n]
            vb = vb.reshape(Hkv, -1, vb.shape[-1])[:, :n]
        for h in range(H):
            g = h // (H // Hkv) if heads == "grouped" else h % Hkv
            s = kb[g] @ q[b, h, 0] / (math.sqrt(scale_dim or d) if scale else 1.0)  # (n,)
            if per_page:  # each page normalised on its own, then averaged
                parts = [torch.softmax(s[i:i + ps], 0) @ vb[g, i:i + ps] for i in range(0, n, ps)]
                out[b, h, 0] = torch.stack(parts).mean(0)
            else:
                out[b, h, 0] = torch.softmax(s, 0) @ vb[g]
    return out


def _paged_case(g, B, H, Hkv, ps, d, dv, lens, P, shared=False):
    """Pages scattered over the pool; slots past each sequence's end and pages no table uses hold
    conspicuous values, so a function that reads them cannot pass."""
    q = randn(g, B, H, 1, d)
    kp, vp = randn(g, P, Hkv, ps, d), randn(g, P, Hkv, ps, dv)
    max_pages = max(math.ceil(n / ps) for n in lens) + 1
    perm = torch.randperm(P, generator=g).tolist()
    table = torch.full((B, max_pages), -1, dtype=torch.int64)
    taken = 0
    for b, n in enumerate(lens):
        need = math.ceil(n / ps)
        if shared and b == 1:
            table[1, :need] = table[0, :need]  # a forked prompt: the same physical pages
            continue
        table[b, :need] = torch.tensor(perm[taken:taken + need], dtype=torch.int64)
        taken += need
    used = set(table[table >= 0].tolist())
    for p in range(P):
        if p not in used:  # pages nobody owns: garbage
            kp[p] = kp[p] * 3 + 2
            vp[p] = vp[p] + 50
    for b, n in enumerate(lens):
        if n % ps:  # the slack at the end of the last page: garbage too
            last = int(table[b, math.ceil(n / ps) - 1])
            kp[last, :, n % ps:] = kp[last, :, n % ps:] * 3 + 2
            vp[last, :, n % ps:] = vp[last, :, n % ps:] - 50
    return q, kp, vp, table, torch.tensor(lens, dtype=torch.int64)


def check_paged_attention(fn) -> str:
    """Check ``fn(q (B, H, 1, d), k_pages, v_pages (P, Hkv, page_size, d/dv), block_table (B, max_pages),
    seq_lens (B,)) -> (B, H, 1, dv)``."""
    c = Checker("paged_attention", fn, Ban(python=(paging.paged_attention,),
                                           hint="Gather each sequence's pages through its row of block_table, keep "
                                                "its first seq_lens[b] positions, then attend."))
    g = gen(140)
    cases = [  # label, B, H, Hkv, page_size, d, dv, lengths, pool pages, shared
        ("3 sequences of 5, 9 and 12 tokens, pages of 4 scattered over the pool, H=4, Hkv=2", 3, 4, 2, 4, 8, 6,
         [5, 9, 12], 16, False),
        ("MHA (Hkv = H = 3), full and partly filled last pages", 2, 3, 3, 4, 6, 6, [8, 3], 10, False),
        ("MQA (Hkv = 1), a sequence of one token", 2, 4, 1, 4, 8, 5, [1, 7], 8, False),
        ("two sequences sharing the pages of a forked prompt", 2, 2, 2, 4, 8, 8, [10, 10], 10, False),
        ("forked prompt (same physical pages in both rows), H=6, Hkv=3", 2, 6, 3, 4, 8, 4, [7, 6], 9, True),
        ("a sequence with no cached token yet (seq_lens = 0)", 2, 2, 1, 4, 8, 8, [0, 6], 6, False),
        ("odd sizes: page_size 3, d=5, dv=3", 3, 2, 2, 3, 5, 3, [4, 2, 9], 12, False),
    ]
    for label, B, H, Hkv, ps, d, dv, lens, P, shared in cases:
        with c.case(label):
            q, kp, vp, table, seq_lens = _paged_case(g, B, H, Hkv, ps, d, dv, lens, P, shared)
            got = c.call(label, q, kp, vp, table, seq_lens)
            want = paging.paged_attention(q.double(), kp.double(), vp.double(), table, seq_lens)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.isnan(got).any():
                c.fail(label, "NaN in the output: a sequence with seq_lens = 0 has no key, so it must get zeros "
                              "(guard the max and the division by a zero sum)" if 0 in lens else
                              "NaN in the output where a number was expected")
            args = (q, kp, vp, table, seq_lens)
            wrong = [
                (_paged(*args, tables="identity"), "the pages were read in the order of the pool: logical page i of "
                 "sequence b is physical page block_table[b, i], so gather k_pages[block_table[b, i]]"),
                (_paged(*args, tables="first_row"), "every sequence read the first row of block_table: sequence b "
                 "uses row b"),
                (_paged(*args, lengths="whole_pages"), "positions past seq_lens[b] were attended: the last page is "
                 "only partly filled; mask its slots at and after seq_lens[b]"),
                (_paged(*args, lengths="whole_row"), "every entry of the block-table row was used: entries past the "
                 "sequence's last page (ceil(seq_lens[b] / page_size) pages) are padding, and positions past "
                 "seq_lens[b] must be masked"),
                (_paged(*args, lengths="plus1"), "off by one: the sequence holds positions 0 .. seq_lens[b] - 1"),
                (_paged(*args, lengths="minus1"), "off by one: the sequence holds positions 0 .. seq_lens[b] - 1, "
                 "the last one included"),
                (_paged(*args, flatten="wrong"), "pages were merged with the head axis still in front of the page "
                 "axis: move Hkv first, (n_pages, Hkv, page_size, d) -> (Hkv, n_pages, page_size, d), then flatten "
                 "pages and slots"),
                (_paged(*args, per_page=True), "each page was normalised on its own and the results averaged: the "
                 "softmax runs over all the sequence's positions (or merge pages with their log-sum-exp weights)"),
                (_paged(*args, scale=False), "the scores are not divided by sqrt(d)"),
                (_paged(*args, tables="contiguous"), "the pages were assumed to lie one after another (sequence b "
                 "from page b * max_pages on): look each logical page i up in the table, physical page "
                 "block_table[b, i]"),
            ]
            if dv != d:
                wrong.append((_paged(*args, scale_dim=dv), "the scores were divided by sqrt(dv); the scale is "
                              "1/sqrt(d), with d = q.shape[-1], the query/key head dim"))
            if 1 < Hkv < H:
                wrong.insert(0, (_paged(*args, heads="tiled"), "query head h reads kv head h // (H // Hkv); you used "
                                 "h % Hkv"))
            c.expect(label, got, want, wrong=wrong, dtype=q.dtype)
    return c.passed("scattered and shared pages, partly filled last pages, GQA/MQA/MHA, empty sequences")


# --------------------------------------------------------------------------- MLA scores

def check_mla_scores(fn) -> str:
    """Check ``fn(q_nope (B, H, Nq, dn), c_kv (B, Nk, r), w_uk (H, dn, r)) -> (B, H, Nq, Nk)``, in
    the latent space."""
    c = Checker("mla_scores", fn)
    g = gen(141)
    cases = [  # label, B, H, Nq, Nk, dn, r, dtype
        ("dn = r = 5 (square w_uk[h]), 4 queries x 6 latents", 1, 2, 4, 6, 5, 5, torch.float32),
        ("B=2, H=3, 5 queries x 7 latents, dn=4, r=6", 2, 3, 5, 7, 4, 6, torch.float32),
        ("one decode query over 9 latents, H=4, dn=8, r=3", 2, 4, 1, 9, 8, 3, torch.float32),
        ("float64, H=1, 3 queries x 10 latents", 1, 1, 3, 10, 6, 4, torch.float64),
        ("B=3, H=4, 6 queries x 33 latents, dn=6, r=10", 3, 4, 6, 33, 6, 10, torch.float32),
    ]
    for label, B, H, Nq, Nk, dn, r, dtype in cases:
        with c.case(label):
            forbid = None if dn == r or Nk == Nq else (Nk, dn)  # an (Nk, dn) result is a head's keys
            keys = f"A result ending in ({Nk}, {dn}) = (Nk, dn) is the per-head keys. " if forbid else ""
            c.ban = Ban(python=(latent.mla_scores, latent.mla_attention), forbid_shape=forbid,
                        hint=keys + "Absorb w_uk into the query, q_nope @ w_uk[h] (shape (B, H, Nq, r)), and score that "
                                    "against the latents c_kv; never build the per-head keys.")
            q, ckv, w = randn(g, B, H, Nq, dn, dtype=dtype), randn(g, B, Nk, r, dtype=dtype), randn(g, H, dn, r, dtype=dtype)
            got = c.call(label, q, ckv, w, if_raises="c_kv (B, Nk, r) has no head axis: c_kv.unsqueeze(1) is (B, 1, Nk, r) "
                                                     "and broadcasts over the heads of q_nope @ w_uk (B, H, Nq, r)")
            qd, cd, wd = q.double(), ckv.double(), w.double()
            want = torch.einsum("bhqd,hdr,bkr->bhqk", qd, wd, cd)
            wrong = [
                (want / math.sqrt(dn), f"the scores are divided by sqrt(dn){' = sqrt(r)' if dn == r else ''}: "
                                       f"mla_scores returns the raw content scores (the scale is applied later, to "
                                       f"content + RoPE scores together)"),
                (want / math.sqrt(r), "the scores are divided by sqrt(r): mla_scores returns raw, unscaled scores"),
                (want.transpose(-2, -1), "the scores are transposed: (B, H, Nq, Nk), one row per query"),
                (torch.softmax(want, -1), "these are attention weights: return the raw scores, before any softmax"),
                (want.sum(1), "the heads were summed: keep the head index in the result, (B, H, Nq, Nk)"),
                (torch.einsum("bhqd,dr,bkr->bhqk", qd, wd[0], cd), "every head used w_uk[0]: head h absorbs its own "
                                                                   "w_uk[h]"),
                (torch.einsum("bhqd,hdr,kr->bhqk", qd, wd, cd[0]), "every batch element was scored against c_kv[0]: "
                                                                   "sequence b uses its own latents c_kv[b]"),
                (torch.einsum("bhqd,dr,bkr->bhqk", qd, wd.sum(0), cd), "w_uk was summed over the heads: head h "
                 "absorbs its own w_uk[h] (give the head index of w_uk the same letter as q_nope's in the einsum)"),
                (torch.einsum("bhqd,hdr,kr->bhqk", qd, wd, cd.mean(0)), "every sequence was scored against the "
                 "latents of the whole batch (averaged): sequence b uses its own c_kv[b] (same batch letter in the "
                 "einsum)"),
                (torch.einsum("bhqd,hdr,kr->bhqk", qd, wd, cd.sum(0)), "every sequence was scored against the "
                 "latents of the whole batch (summed): sequence b uses its own c_kv[b] (same batch letter in the "
                 "einsum)"),
            ]
            if dn == r:
                wrong.append((torch.einsum("bhqd,hrd,bkr->bhqk", qd, wd, cd), "w_uk[h] was transposed: it is (dn, r) "
                              "and maps a latent to a key, k = c_kv @ w_uk[h]^T, so the query absorbs it as "
                              "q_nope @ w_uk[h]"))
            c.expect(label, got, want, wrong=wrong, dtype=dtype)
    return c.passed("decode and prefill shapes, square w_uk, float64, no per-head keys")


# --------------------------------------------------------------------------- learned sinks

def _sinked(q, k, v, s, causal, *, offset=None, sink="right", scale_sink=False):
    q, k, v, s = q.double(), k.double(), v.double(), s.double()
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    Nq, Nk = scores.shape[-2:]
    if causal:
        off = Nk - Nq if offset is None else offset
        allowed = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + off
        scores = scores.masked_fill(~allowed, float("-inf"))
    if sink == "none":
        w = torch.nan_to_num(torch.softmax(scores, -1))
        return w @ v
    col = {"right": s.view(-1, 1, 1), "per_query": s.view(-1, 1), "negated": -s.view(-1, 1, 1),
           "zero": torch.zeros(1, 1, 1, dtype=torch.float64), "valued": s.view(-1, 1, 1),
           "first_head": s[:1].view(1, 1, 1).expand(s.shape[0], 1, 1),
           "batch": s.view(-1, *[1] * (scores.ndim - 1))}[sink]
    if scale_sink:
        col = col / math.sqrt(d)
    col = col.expand(*scores.shape[:-1], 1)
    w = torch.softmax(torch.cat((col, scores), -1), -1)
    if sink == "valued":  # the sink's weight spent on the mean value
        return w[..., 1:] @ v + w[..., :1] * v.mean(-2, keepdim=True)
    return w[..., 1:] @ v


def _sink_linear(q, k, v, s, causal):
    """The sink added to the denominator as is, without exp."""
    q, k, v, s = q.double(), k.double(), v.double(), s.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    Nq, Nk = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(torch.arange(Nk)[None, :] > torch.arange(Nq)[:, None] + Nk - Nq, float("-inf"))
    e = torch.exp(scores)
    return e @ v / (e.sum(-1, keepdim=True) + s.view(-1, 1, 1))


def check_sink_attention(fn) -> str:
    """Check ``fn(q (..., H, Nq, d), k, v (..., H, Nk, d/dv), sinks (H,), is_causal=False) -> (..., H, Nq, dv)``."""
    c = Checker("sink_attention", fn, Ban(python=(sinks.sink_attention, sinks.sink_weights),
                                          hint="Add exp(sinks[h]) to each softmax denominator of head h yourself."))
    g = gen(142)
    cases = [  # label, q shape, Nk, dv, sinks, causal, q multiplier
        ("B=2, H=3, 5 queries x 7 keys, sinks -1, 0.5, 2", (2, 3, 5, 8), 7, 6, [-1.0, 0.5, 2.0], False, 1.0),
        ("causal, 6 x 6", (1, 2, 6, 4), 6, 4, [0.0, 1.5], True, 1.0),
        ("causal, 3 new queries after 8 cached keys", (2, 2, 3, 8), 11, 5, [0.3, -0.7], True, 1.0),
        ("causal, 6 queries but 4 keys: the first 2 queries see only the sink", (1, 3, 6, 8), 4, 8,
         [1.0, -2.0, 0.0], True, 1.0),
        ("H = Nq = 4, 6 keys", (2, 4, 4, 8), 6, 3, [-3.0, 0.0, 1.0, 3.0], False, 1.0),
        ("no batch axis: q (H, Nq, d) = (3, 5, 4)", (3, 5, 4), 9, 4, [0.5, 2.5, -1.5], False, 1.0),
        ("a sink of 60: almost all the weight goes to it", (1, 2, 4, 8), 5, 4, [60.0, -1.0], False, 1.0),
        ("huge scores (queries x 200)", (1, 2, 5, 8), 7, 4, [1.0, 4.0], True, 200.0),
    ]
    for label, qshape, Nk, dv, s, causal, mult in cases:
        with c.case(label):
            q = randn(g, *qshape) * mult
            k, v = randn(g, *qshape[:-2], Nk, qshape[-1]), randn(g, *qshape[:-2], Nk, dv)
            sk = torch.tensor(s, dtype=q.dtype)
            got = c.call(label, q, k, v, sk, is_causal=causal,
                         if_raises="sinks has one logit per head, the axis -3 of the scores: reshape it to (H, 1, 1) "
                                   "so it broadcasts over queries and keys")
            want = sinks.sink_attention(q.double(), k.double(), v.double(), sk.double(), causal)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.isnan(got).any():
                if mult > 1:
                    c.fail(label, "not numerically stable: exp overflowed. Subtract the row maximum, taken over the "
                                  "scores and the sink, before exp")
                c.fail(label, "NaN for a query that sees no key: with a sink every row has one finite logit; take the "
                              "max over the scores and the sink together, and that query gets zeros")
            args = (q, k, v, sk, causal)
            wrong = [
                (_sinked(*args, sink="none"), "the sink took no weight: add exp(sinks[h]) to the softmax denominator "
                 "of head h (the weights over the real keys then sum to less than 1)"),
                (_sink_linear(*args), "the sink is a logit: add exp(sinks[h]) to the denominator, not sinks[h]"),
                (_sinked(*args, scale_sink=True), "the sink was divided by sqrt(d): only q . k is scaled, the sink "
                 "logit enters as it is"),
                (_sinked(*args, sink="negated"), "the sink enters with its sign: exp(+sinks[h])"),
                (_sinked(*args, sink="zero"), "that is softmax + 1 (a sink of 0 for every head): use each head's own "
                 "logit sinks[h]"),
            ]
            wrong += [(_sinked(*args, sink="valued"), "the sink takes weight but adds no value: multiply only the real "
                       "keys' weights by v (drop the sink's column), so rows sum to less than 1"),
                      (_sinked(*args, sink="first_head"), "every head used sinks[0]: head h uses its own logit "
                       "sinks[h]")]
            if len(qshape) == 4 and qshape[0] == qshape[-3]:
                wrong.append((_sinked(*args, sink="batch"), "sinks[h] belongs to head h, the axis -3 of the scores: "
                              "reshape sinks to (H, 1, 1), not (H, 1, 1, 1), which pairs it with the batch axis"))
            if qshape[-3] == qshape[-2]:
                wrong.append((_sinked(*args, sink="per_query"), "sinks[h] belongs to head h, the axis -3 of the scores: "
                              "reshape sinks to (H, 1, 1), not (H, 1), which pairs it with query h"))
            if causal:
                wrong.append((_sinked(q, k, v, sk, False), "is_causal was ignored"))
                if qshape[-2] != Nk:
                    wrong.append((_sinked(*args, offset=0), "the causal mask is aligned to the top left: query i sits "
                                  "at position i + Nk - Nq"))
            c.expect(label, got, want, wrong=wrong, dtype=q.dtype)
    return c.passed("several heads, causal with Nq != Nk, rows with only the sink, huge sinks and scores")


# --------------------------------------------------------------------------- YaRN

def _yarn(d, theta, scale, L, bf, bs, *, exponent=2.0, first=0, rot=2 * math.pi, invert=False, clamp=True,
          reverse=False, mul=False, dtype=torch.float64):
    i = torch.arange(d // 2, dtype=dtype) + first
    f = theta ** (-exponent * i / d)
    r = L * f / rot
    if invert:
        r = 1 / r
    gmm = (r - bs) / (bf - bs)
    if clamp:
        gmm = gmm.clamp(0, 1)
    if reverse:
        gmm = 1 - gmm
    slow = f * scale if mul else f / scale
    return ((1 - gmm) * slow + gmm * f).to(torch.float64)


def _yarn_hf(d, theta, scale, L, bf, bs):
    """YaRN as Hugging Face computes it: a linear ramp over pair indices between floor/ceil bounds."""
    def dim_of(n_rot):  # the pair index that turns n_rot times over L
        return d * math.log(L / (n_rot * 2 * math.pi)) / (2 * math.log(theta))
    low, high = max(math.floor(dim_of(bf)), 0), min(math.ceil(dim_of(bs)), d - 1)
    high = high + 0.001 if low == high else high
    i = torch.arange(d // 2, dtype=torch.float64)
    keep = 1 - ((i - low) / (high - low)).clamp(0, 1)  # 1: the pair keeps f_i
    f = theta ** (-2 * i / d)
    return f / scale * (1 - keep) + f * keep


def check_yarn_inv_freq(fn) -> str:
    """Check ``fn(d, theta, scale, original_max_position, beta_fast=32.0, beta_slow=1.0) -> (d//2,) float64``."""
    c = Checker("yarn_inv_freq", fn, Ban(python=(yarn.yarn_inv_freq,),
                                         hint="Compute f_i, the rotations r_i, the ramp g_i and the blend yourself."))
    cases = [  # label, args, kwargs
        ("gpt-oss: d=64, theta=150000, scale=32, L=4096", (64, 150000.0, 32.0, 4096), {}),
        ("d=128, theta=10000, scale=8 (an int), L=2048", (128, 10000.0, 8, 2048), {}),
        ("beta_fast=64, beta_slow=2 given by keyword, d=32, scale=16, L=8192",
         (32, 10000.0, 16.0, 8192), dict(beta_fast=64.0, beta_slow=2.0)),
        ("beta_fast=16, beta_slow=0.5 given by position, d=48, theta=500000, L=1024",
         (48, 500000.0, 4.0, 1024, 16.0, 0.5), {}),
        ("scale=1: nothing to extend, the frequencies stay RoPE's", (16, 10000.0, 1.0, 4096), {}),
        ("d=6, theta=500, scale=2, L=64", (6, 500.0, 2.0, 64), {}),
    ]
    for label, args, kwargs in cases:
        with c.case(label):
            d, theta, scale, L = args[:4]
            bf = kwargs.get("beta_fast", args[4] if len(args) > 4 else 32.0)
            bs = kwargs.get("beta_slow", args[5] if len(args) > 5 else 1.0)
            got = c.call(label, *args, **kwargs)
            want = yarn.yarn_inv_freq(d, theta, scale, L, bf, bs)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype != torch.float64:
                c.fail(label, f"the frequencies are {got.dtype}: return float64 (build them in float64 from the start, "
                              f"torch.arange(..., dtype=torch.float64)); angles p * f_i at p ~ 10^5 need the precision")
            f = yarn.rope_inv_freq(d, theta)
            wrong = [
                (_yarn(d, theta, scale, L, bf, bs, dtype=torch.float32), "computed in float32 and converted at the "
                 "end: build the frequencies in float64 from the start (torch.arange(..., dtype=torch.float64))"),
                (_yarn(d, theta, scale, L, bf, bs, reverse=True), "the ramp is reversed (or beta_fast and beta_slow "
                 "swapped): g_i = (r_i - beta_slow) / (beta_fast - beta_slow), so pairs that turned many times (g_i = 1) "
                 "keep f_i and pairs that turned less than beta_slow times (g_i = 0) are divided by scale"),
                (_yarn(d, theta, scale, L, bf, bs, rot=1.0), "r_i counts full rotations over the original context: "
                 "r_i = L * f_i / (2 pi)"),
                (_yarn(d, theta, scale, L, bf, bs, rot=math.pi), "a full rotation is 2 pi radians: "
                 "r_i = L * f_i / (2 pi), not / pi"),
                (_yarn_hf(d, theta, scale, L, bf, bs), "that is the ramp over dimension indices with floor/ceil "
                 "bounds (Hugging Face's yarn_find_correction_range): the contract's ramp is per pair on the "
                 "rotations, g_i = clamp((r_i - beta_slow) / (beta_fast - beta_slow), 0, 1)"),
                (_yarn(d, theta, scale, L, bf, bs, invert=True), "r_i is the number of turns L * f_i / (2 pi) "
                 "(context length over wavelength), not the wavelength over the context length"),
                (_yarn(d, theta, scale, L, bf, bs, clamp=False), "g_i must be clamped to [0, 1]: outside the ramp a "
                 "pair is either kept or fully interpolated"),
                (f / scale, "every frequency was divided by scale: that is position interpolation; YaRN keeps the fast "
                            "pairs (many rotations) unchanged"),
                (yarn.ntk_inv_freq(d, theta, scale), "that is NTK-aware scaling (a larger theta); YaRN blends f_i and "
                                                     "f_i / scale pair by pair with the ramp g_i"),
                (_yarn(d, theta, scale, L, bf, bs, exponent=1.0), "f_i = theta^(-2i/d): the exponent has a 2"),
                (_yarn(d, theta, scale, L, bf, bs, first=1), "pairs are numbered from 0: f_0 = theta^0 = 1"),
                (_yarn(d, theta, scale, L, bf, bs, mul=True), "slow pairs must turn slower: divide their frequency "
                                                              "by scale, do not multiply"),
                (want.repeat_interleave(2), "one frequency per pair: return d // 2 values, not one per feature"),
                (torch.cat((want, want)), "one frequency per pair: return d // 2 values, not the list twice"),
            ]
            c.expect(label, got, want, what="frequencies", wrong=wrong, dtype=torch.float64)
    return c.passed("gpt-oss's settings, betas by keyword and by position, scale 1, tiny d")


# --------------------------------------------------------------------------- split-KV decoding

def _split(q, k, v, n, *, merge="right", lse_kind="right", scale=True, drop_tail=False):
    q, k, v = q.double(), k.double(), v.double()
    Nk, d = k.shape[2], q.shape[-1]
    size = Nk // n if drop_tail else max(math.ceil(Nk / n), 1)
    outs, lses, ms, ls = [], [], [], []
    for s in range(n):
        a, b = min(s * size, Nk), min((s + 1) * size, Nk)
        if drop_tail and s == n - 1:
            b = min((s + 1) * size, Nk)
        if b <= a:
            continue
        sc = q @ k[:, :, a:b].transpose(-2, -1) / (math.sqrt(d) if scale else 1.0)  # (B, H, 1, n_s)
        m = sc.amax(-1, keepdim=True)
        p = torch.exp(sc - m)
        l = p.sum(-1, keepdim=True)
        outs.append(p @ v[:, :, a:b] / l)
        ms.append(m)
        ls.append(l)
        lses.append(m + torch.log(l))
    O, M, Lh, LSE = torch.stack(outs), torch.stack(ms), torch.stack(ls), torch.stack(lses)  # (S, B, H, 1, ...)
    lse = torch.logsumexp(LSE, 0)  # (B, H, 1, 1)
    if merge == "right":
        out = (torch.exp(LSE - lse) * O).sum(0)
    elif merge == "mean":
        out = O.mean(0)
    elif merge == "max_only":
        w = torch.exp(M - M.amax(0))
        out = (w * O).sum(0) / w.sum(0)
    elif merge == "sum_only":
        out = (Lh * O).sum(0) / Lh.sum(0)
    else:  # "unnormalised": no division by the total weight
        out = (torch.exp(LSE - LSE.amax(0)) * O).sum(0)
    if lse_kind == "base2":
        lse = lse / math.log(2)
    elif lse_kind == "no_log":
        lse = torch.logsumexp(M, 0)
    return out, lse.squeeze(-1)


def check_flash_decode(fn) -> str:
    """Check ``fn(q (B, H, 1, d), k, v (B, H, Nk, d/dv), n_splits) -> (out (B, H, 1, dv), lse (B, H, 1))``."""
    c = Checker("flash_decode", fn)
    g = gen(143)
    cases = [  # label, B, H, Nk, d, dv, n_splits, q multiplier, dtype
        ("B=2, H=3, 37 keys in 4 splits (the last one shorter)", 2, 3, 37, 8, 6, 4, 1.0, torch.float32),
        ("48 keys in 6 equal splits", 1, 4, 48, 8, 8, 6, 1.0, torch.float32),
        ("n_splits = 1 (no split at all)", 2, 2, 20, 8, 4, 1, 1.0, torch.float32),
        ("one key per split (n_splits = Nk = 9)", 1, 2, 9, 4, 4, 9, 1.0, torch.float32),
        ("more splits than keys (5 keys, 8 splits: 3 are empty)", 2, 2, 5, 8, 3, 8, 1.0, torch.float32),
        ("large scores, the top key in the last split (the merge must rescale)", 1, 2, 40, 8, 8, 3, 20.0,
         torch.float32),
        ("float64, odd d=5, 23 keys in 5 splits", 2, 1, 23, 5, 7, 5, 1.0, torch.float64),
    ]
    for label, B, H, Nk, d, dv, n, mult, dtype in cases:
        with c.case(label):
            c.ban = Ban({}, (), (decoding.flash_decode, ring_merge_partials, chunked_merge_partials),
                        hint="Compute each split's partial output and log-sum-exp, then merge them yourself; never score "
                             "all the keys at once.", forbid_shape=(1, Nk) if n > 1 else None)
            q = randn(g, B, H, 1, d, dtype=dtype) * mult
            k, v = randn(g, B, H, Nk, d, dtype=dtype), randn(g, B, H, Nk, dv, dtype=dtype)
            if mult > 1:
                k[:, :, -3] = q[:, :, 0] / mult  # the best key, in the last split
            got = c.call(label, q, k, v, n, if_raises="with more splits than keys some splits are empty: skip them "
                                                      "(an empty split contributes nothing)" if n > Nk else "")
            if not _is_tuple(got, 2):
                c.fail(label, "return (out, lse)")
            out, lse = got
            want_out, want_lse = decoding.flash_decode(q.double(), k.double(), v.double(), 1)
            for t in (out, lse):
                if isinstance(t, torch.Tensor) and torch.isnan(t).any():
                    c.fail(label, "NaN: an empty split (more splits than keys) must contribute nothing; its lse is "
                                  "-inf and its weight exp(-inf) = 0, so guard max = -inf and sums of 0"
                           if n > Nk else "NaN in the result where a number was expected")
            args = (q, k, v, n)
            wrong_out = [
                (_split(*args, merge="mean")[0], "the partial outputs were averaged: weight split s by "
                 "exp(lse_s - lse), its share of the whole softmax denominator"),
                (_split(*args, merge="max_only")[0], "each split was weighted by exp(m_s) only: its weight is its "
                 "whole normaliser exp(lse_s) = exp(m_s) * l_s"),
                (_split(*args, merge="sum_only")[0], "each split was weighted by its sum l_s only: every split "
                 "subtracted its own max m_s, so weigh by exp(lse_s) = exp(m_s) * l_s"),
                (_split(*args, merge="unnormalised")[0], "the merged output is not normalised: divide by the sum of the "
                 "split weights"),
                (_split(*args, scale=False)[0], "the scores are not divided by sqrt(d)"),
            ]
            if Nk % n and Nk >= n:
                wrong_out.append((_split(*args, drop_tail=True)[0], "keys of the last, shorter split are missing: "
                                  "use ceil(Nk / n_splits) keys per split, the last split takes what is left"))
            c.expect(label, out, want_out, what="output", wrong=wrong_out, dtype=dtype)
            c.expect(label, lse, want_lse, what="log-sum-exp", dtype=dtype, wrong=[
                (want_lse.squeeze(-1), "lse has shape (B, H, 1): one value per query, and there is one query"),
                (_split(*args, lse_kind="base2")[1], "lse is in base 2; the contract asks for the natural log"),
                (_split(*args, lse_kind="no_log")[1], "lse = log(sum_s exp(lse_s)) with lse_s = m_s + log(l_s): the "
                 "log of each split's sum is missing"),
            ])
    return c.passed("uneven, equal, single, empty splits, large scores, never all scores at once")
