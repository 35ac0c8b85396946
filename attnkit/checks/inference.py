"""Checkers for notebook 08: a decode step with a KV cache, repeat_kv and grouped-query attention."""

from __future__ import annotations

import torch

from .. import gqa, kv_cache
from ._harness import Ban, KwargTrue, Checker, gen, randn
from .basics import _sdpa
from .masks import _causal


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
            got = c.call(label, q_t, k_t, v_t, k_c, v_c)
            if not (isinstance(got, tuple) and len(got) == 3):
                c.fail(label, "return three tensors: (out, k_cache, v_cache), the caches grown by one token")
            out, k_new, v_new = got
            k_all, v_all = torch.cat((k_c, k_t), 2), torch.cat((v_c, v_t), 2)
            c.expect(label, k_new, k_all.double(), what="new key cache", tol=dict(rtol=0, atol=0), wrong=[
                (torch.cat((k_t, k_c), 2).double(), "the new key went to the front of the cache: append it at "
                                                     "the end of the token axis, torch.cat((k_cache, k_t), dim=2)"),
            ])
            c.expect(label, v_new, v_all.double(), what="new value cache", tol=dict(rtol=0, atol=0), wrong=[
                (torch.cat((v_t, v_c), 2).double(), "the new value went to the front of the cache: append it "
                                                     "at the end, torch.cat((v_cache, v_t), dim=2)"),
            ])
            wrong = [(_sdpa(q_t, k_all, v_all, scale=1.0)[0], "the scores are not divided by sqrt(d)")]
            if T > 0:
                wrong.insert(0, (_sdpa(q_t, k_c, v_c)[0], "the new token attended only to the old cache: append "
                                 "k_t and v_t first, so it also attends to itself"))
            c.expect(label, out, _sdpa(q_t, k_all, v_all)[0], wrong=wrong, dtype=q_t.dtype)
    return c.passed("empty cache, one and many cached tokens")


def check_repeat_kv(fn) -> str:
    """Check ``fn(x (B, Hkv, N, d), n_rep) -> (B, Hkv*n_rep, N, d)``; head h uses kv head h // n_rep."""
    c = Checker("repeat_kv", fn, Ban(python=(gqa.repeat_kv,),
                                     hint="Use repeat_interleave, or expand and reshape."))
    g = gen(10)
    for B, Hkv, N, d, n_rep in [(2, 2, 5, 4, 3), (1, 4, 3, 2, 1), (2, 1, 6, 3, 4), (1, 3, 2, 5, 2)]:
        x = randn(g, B, Hkv, N, d)
        label = f"x {tuple(x.shape)}, n_rep={n_rep}"
        with c.case(label):
            got = c.call(label, x, n_rep)
            want = x.repeat_interleave(n_rep, dim=1)
            c.expect(label, got, want, what="repeated heads", tol=dict(rtol=0, atol=0), wrong=[
                (x.repeat(1, n_rep, 1, 1), "you tiled the stack [a, b, a, b]; query head h uses kv head "
                 "h // n_rep, so each head must be repeated in place [a, a, b, b] (repeat_interleave)"),
                (x.repeat_interleave(n_rep, dim=2), "you repeated along the token axis; repeat the heads (dim 1)"),
            ])
    return c.passed("n_rep=1, MQA (one kv head), several groups")


def _gqa(q, k, v, is_causal, interleave=True, offset=None):
    n_rep = q.shape[1] // k.shape[1]
    rep = (lambda t: t.repeat_interleave(n_rep, 1)) if interleave else (lambda t: t.repeat(1, n_rep, 1, 1))
    mask = _causal(q.shape[2], k.shape[2], offset) if is_causal else None
    return _sdpa(q, rep(k), rep(v), mask)[0]


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
            got = c.call(label, q, k, v, is_causal=causal)
            want = _gqa(q, k, v, causal)
            wrong = []
            if 1 < Hkv < Hq:
                wrong.append((_gqa(q, k, v, causal, interleave=False), "query head h must use kv head "
                              "h // (Hq/Hkv); you tiled the kv heads, which gives head h % Hkv"))
            if causal:
                wrong.append((_gqa(q, k, v, False), "is_causal was ignored: with is_causal=True, query i may "
                                                     "not see keys after its own position"))
                if Nq != Nk:
                    wrong.append((_gqa(q, k, v, True, offset=0), "the causal mask is aligned to the top left: "
                                  "the Nq queries are the last tokens, query i sits at i + Nk - Nq"))
            wrong.append((_sdpa(q, k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1),
                                _causal(Nq, Nk) if causal else None, scale=1.0)[0],
                          "the scores are not divided by sqrt(d)"))
            if causal and Nq > Nk and isinstance(got, torch.Tensor) and torch.isnan(got).any():
                c.fail(label, "NaN for queries with no allowed key: a fully masked row must give zeros")
            c.expect(label, got, want, wrong=wrong, dtype=q.dtype)
    return c.passed("GQA, MQA, MHA, causal with Nq != Nk, odd d")
