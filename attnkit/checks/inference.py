"""Checkers for notebook 08: a decode step with a KV cache, repeat_kv and grouped-query attention."""

from __future__ import annotations

import torch

from .. import gqa, kv_cache
from ._harness import Ban, Checker, KwargTrue, gen, randn
from .positions import _call, _dtype


def _attention(q, k, v, mask=None, scale=None, dim=-1, fill=float("-inf")):
    """Float64 attention; a fully masked row gives zeros. ``scale``, ``dim`` and ``fill`` reproduce mistakes."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (..., Nq, Nk)
    if mask is not None:
        s = s.masked_fill(~mask, fill)
    m = s.amax(dim, keepdim=True)
    e = torch.exp(s - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    total = e.sum(dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total)) @ v  # (..., Nq, dv)


def _causal(n_q, n_k, diagonal=None):
    """Key j allowed iff j <= i + diagonal (bottom right by default)."""
    diagonal = n_k - n_q if diagonal is None else diagonal
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=diagonal)


# ---------------------------------------------------------------------------- decode_step


def check_decode_step(fn) -> str:
    """Check ``fn(q_t, k_t, v_t, k_cache, v_cache) -> (out, k_cache', v_cache')``."""
    c = Checker("decode_step", fn, Ban(python=(kv_cache.decode_step,),
                                       hint="Concatenate the new key and value onto the caches, then attend."))
    g = gen(9)
    for B, H, T, d in [(2, 3, 5, 8), (1, 2, 0, 4), (2, 1, 1, 6), (1, 4, 11, 3)]:
        q_t, k_t, v_t = randn(g, B, H, 1, d), randn(g, B, H, 1, d), randn(g, B, H, 1, d)
        k_c, v_c = randn(g, B, H, T, d), randn(g, B, H, T, d)
        label = f"B={B}, H={H}, T={T} cached tokens, d={d}"
        with c.case(label):
            got = _call(c, label, q_t, k_t, v_t, k_c, v_c, raised=[
                (lambda e: "Sizes of tensors must match" in e, "append the new key and value along the token "
                 "axis, torch.cat((k_cache, k_t), dim=2): torch.cat without dim joins along dim 0, the batch")])
            if not (isinstance(got, tuple) and len(got) == 3):
                c.fail(label, "return three tensors: (out, k_cache, v_cache), the caches grown by one token")
            out, k_new, v_new = got
            k_all, v_all = torch.cat((k_c, k_t), 2), torch.cat((v_c, v_t), 2)
            stale = (f"return the caches grown by one token, (B, H, T+1, d): yours still hold the T={T} tokens "
                     "you were given")
            c.expect(label, k_new, k_all.double(), what="new key cache", tol=dict(rtol=0, atol=0), wrong=[
                (torch.cat((k_t, k_c), 2).double(), "the new key went to the front of the cache: append it at "
                                                     "the end of the token axis, torch.cat((k_cache, k_t), dim=2)"),
                (k_c.double(), stale),
                (v_all.double(), "the caches are swapped: return (out, k_cache, v_cache), keys first"),
            ])
            c.expect(label, v_new, v_all.double(), what="new value cache", tol=dict(rtol=0, atol=0), wrong=[
                (torch.cat((v_t, v_c), 2).double(), "the new value went to the front of the cache: append it "
                                                     "at the end, torch.cat((v_cache, v_t), dim=2)"),
                (v_c.double(), stale),
            ])
            want = _attention(q_t, k_all, v_all)
            wrong = [(_attention(q_t, k_all, v_all, scale=1.0), "the scores are not divided by sqrt(d)")]
            if T > 0:
                wrong[:0] = [
                    (_attention(q_t, k_c, v_c), "the new token attended only to the old cache: append k_t and "
                                                "v_t first, so it also attends to itself"),
                    (v_all[:, :, :1].double(), "is_causal=True in PyTorch's scaled_dot_product_attention aligns "
                     "the mask to the top left: your one query sat at position 0 and saw only the oldest token. "
                     "The newest token may attend to every cached token: pass no mask (or notebook 04's "
                     "bottom-right causal_mask(1, T + 1))"),
                    (v_t.double(), "the new token attended only to itself: attend over the whole cache, the T "
                                   "cached tokens and the new one"),
                    (v_all.double().sum(2, keepdim=True), "softmax over the query axis: with one query every "
                     "weight became 1; normalise the scores over the keys (dim=-1)"),
                ]
            wrong.append((want[:, :, 0], "keep the token axis: out is (B, H, 1, d), one row for the one new token"))
            c.expect(label, out, want, wrong=wrong, dtype=q_t.dtype)
    return c.passed("empty cache, one and many cached tokens")


# ---------------------------------------------------------------------------- repeat_kv


def check_repeat_kv(fn) -> str:
    """Check ``fn(x (B, Hkv, N, d), n_rep) -> (B, Hkv*n_rep, N, d)``; head h uses kv head h // n_rep."""
    c = Checker("repeat_kv", fn, Ban(python=(gqa.repeat_kv,),
                                     hint="Use repeat_interleave, or expand and reshape."))
    g = gen(10)
    for B, Hkv, N, d, n_rep, dtype in [(2, 2, 5, 4, 3, torch.float32), (1, 4, 3, 2, 1, torch.float32),
                                       (2, 1, 6, 3, 4, torch.float32), (1, 3, 2, 5, 2, torch.float32),
                                       (2, 2, 3, 4, 2, torch.float64)]:
        x = randn(g, B, Hkv, N, d, dtype=dtype)
        label = f"x {tuple(x.shape)}, n_rep={n_rep}" + (", float64" if dtype == torch.float64 else "")
        with c.case(label):
            got = _call(c, label, x, n_rep, raised=[
                (lambda e: "view size is not compatible" in e, "an expanded tensor cannot be .view()ed into "
                 "(B, Hkv * n_rep, N, d): use .reshape, which copies when it must")])
            want = x.repeat_interleave(n_rep, dim=1)
            tiled = ("you tiled the stack [a, b, a, b]; query head h uses kv head h // n_rep, so each head must be "
                     "repeated in place [a, a, b, b] (repeat_interleave)")
            tokens = "you repeated along the token axis; repeat the heads (dim 1)"
            features = "you repeated along the feature axis (the last one); repeat the heads (dim 1)"
            _dtype(c, label, got, x.dtype, "return x's dtype: build the result from x, or with dtype=x.dtype")
            c.expect(label, got, want, what="repeated heads", tol=dict(rtol=0, atol=0), wrong=[
                (x.repeat(1, n_rep, 1, 1), tiled),
                (x.repeat_interleave(n_rep, dim=2), tokens),
                (x.repeat(1, 1, n_rep, 1), tokens),
                (x.repeat_interleave(n_rep, dim=0), "you repeated along the batch axis (dim 0); repeat the heads "
                                                    "(dim 1)"),
                (x.repeat(n_rep, 1, 1, 1), "you repeated along the batch axis (dim 0); repeat the heads (dim 1)"),
                (x.repeat_interleave(n_rep, dim=-1), features),
                (x.repeat(1, 1, 1, n_rep), features),
                (x[:, :, None].expand(B, Hkv, n_rep, N, d), "merge the copies into the head axis: reshape "
                 "(B, Hkv, n_rep, N, d) to (B, Hkv * n_rep, N, d)"),
            ])
    return c.passed("n_rep=1, MQA (one kv head), several groups, float64")


# ---------------------------------------------------------------------------- grouped-query attention


def _gqa(q, k, v, is_causal, interleave=True, diagonal=None, scale=None, dim=-1, fill=float("-inf"),
         mean_queries=False):
    """mean_queries: one query per group, the mean of its query heads, its output shared by the group."""
    n_rep = q.shape[1] // k.shape[1]
    rep = (lambda t: t.repeat_interleave(n_rep, 1)) if interleave else (lambda t: t.repeat(1, n_rep, 1, 1))
    mask = _causal(q.shape[2], k.shape[2], diagonal) if is_causal else None
    if mean_queries:
        B, Hq, Nq, d = q.shape
        qm = q.double().reshape(B, k.shape[1], n_rep, Nq, d).mean(2)
        return rep(_attention(qm, k, v, mask, scale, dim, fill))
    return _attention(q, rep(k), rep(v), mask, scale, dim, fill)


def check_grouped_query_attention(fn) -> str:
    """Check ``fn(q (B, Hq, Nq, d), k, v (B, Hkv, Nk, d), is_causal=False) -> (B, Hq, Nq, d)``."""
    gqa_flag = {"torch.nn.functional.scaled_dot_product_attention": KwargTrue("enable_gqa")}
    c = Checker("grouped_query_attention", fn,
                Ban(gqa_flag, python=(gqa.grouped_query_attention,),
                    hint="Share each kv head with its group of query heads yourself (repeat_kv or a "
                         "reshape into groups); SDPA's enable_gqa does exactly that for you."))
    g = gen(11)
    cases = [
        ("Hq=8, Hkv=2, 12 queries x 16 keys", 2, 8, 2, 12, 16, 8, False),
        ("MQA: Hkv=1", 1, 4, 1, 6, 6, 4, False),
        ("Hkv = Hq (plain MHA)", 2, 3, 3, 5, 5, 4, False),
        ("causal, Nq = Nk, odd d=5", 1, 6, 3, 7, 7, 5, True),
        ("causal, 3 new queries after 9 cached keys", 2, 4, 2, 3, 12, 8, True),
        ("causal, more queries than keys (first rows fully masked)", 1, 2, 1, 6, 4, 4, True),
    ]
    for label, B, Hq, Hkv, Nq, Nk, d, causal in cases:
        with c.case(label):
            q, k, v = randn(g, B, Hq, Nq, d), randn(g, B, Hkv, Nk, d), randn(g, B, Hkv, Nk, d)
            got = _call(c, label, q, k, v, is_causal=causal, raised=[
                (lambda e, grouped=Hq != Hkv: grouped and "must match the size of tensor" in e,
                 f"q has Hq={Hq} heads but k and v only Hkv={Hkv}: share each kv head with its group of "
                 "query heads for both k and v (repeat_kv on both, or reshape q into groups)")])
            want = _gqa(q, k, v, causal)
            wrong = []
            if 1 < Hkv < Hq:
                wrong.append((_gqa(q, k, v, causal, interleave=False), "query head h must use kv head "
                              "h // (Hq/Hkv); you tiled the kv heads, which gives head h % Hkv"))
            if Hq > Hkv:
                wrong.append((_gqa(q, k, v, causal, mean_queries=True), "you averaged the query heads of each "
                              "group: only k and v are shared, every query head keeps its own queries and its own "
                              "output (repeat k and v to Hq heads instead)"))
            if causal and Nq > Nk:
                wrong.append((_gqa(q, k, v, True, fill=-1e9), "a query with no allowed key must get zeros: with "
                              "-1e9 instead of -inf its weights spread evenly over the masked keys. Fill with -inf "
                              "and give such a row zero weights"))
            if causal:
                wrong.append((_gqa(q, k, v, False), "is_causal was ignored: with is_causal=True, query i may "
                                                     "not see keys after its own position"))
                if Nq != Nk:
                    wrong.append((_gqa(q, k, v, True, diagonal=0), "the causal mask is aligned to the top left "
                                  "(PyTorch's is_causal=True does that): the Nq queries are the last tokens, query "
                                  "i sits at i + Nk - Nq; use notebook 04's causal_mask(Nq, Nk)"))
                wrong.append((_gqa(q, k, v, True, diagonal=Nk - Nq - 1), "a query may attend to its own position: "
                              "key j is allowed when j <= i + Nk - Nq (tril(diagonal=Nk - Nq)), not only when "
                              "j < i + Nk - Nq"))
            wrong += [
                (_gqa(q, k, v, causal, scale=1.0), "the scores are not divided by sqrt(d)"),
                *[(_gqa(q, k, v, causal, scale=(d * n) ** -0.5), f"the scores are divided by sqrt(d * {what}); the "
                   f"scale is 1/sqrt(d) with d = q.shape[-1], the head dimension") for n, what in
                  ((Hq // Hkv, "Hq/Hkv"), (Hq, "Hq")) if n > 1],
                (_gqa(q, k, v, causal, dim=-2), "softmax over the query axis: normalise the scores over the keys "
                                                "(dim=-1), so each query's weights sum to 1"),
            ]
            if causal and Nq > Nk and isinstance(got, torch.Tensor) and torch.isnan(got).any():
                c.fail(label, "NaN for queries with no allowed key: a fully masked row must give zeros")
            c.expect(label, got, want, wrong=wrong, dtype=q.dtype)
    return c.passed("GQA, MQA, MHA, causal with Nq != Nk, odd d")
