"""Checkers for notebook 05: splitting and merging heads, multi-head attention."""

from __future__ import annotations

import math

import torch

from .. import heads as heads_module
from .. import mha as mha_module
from ._harness import Ban, Checker, gen, randn
from .basics import _sdpa

MHA_FUNCTIONS = {"torch.nn.functional.multi_head_attention_forward": None}


def _split(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, N, n_heads, D // n_heads).permute(0, 2, 1, 3)


def _merge(x):
    B, H, N, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, N, H * d)


def check_split_heads(fn) -> str:
    """Check ``fn(x (B, N, H*d), n_heads) -> (B, H, N, d)``; head h takes features h*d:(h+1)*d."""
    c = Checker("split_heads", fn, Ban(python=(heads_module.split_heads,),
                                       hint="Use view/reshape and transpose."))
    g = gen(5)
    for B, N, H, d in [(2, 12, 4, 4), (1, 5, 3, 2), (3, 7, 1, 6), (2, 4, 6, 1)]:
        x = randn(g, B, N, H * d)
        label = f"x {tuple(x.shape)}, n_heads={H}"
        with c.case(label):
            got = c.call(label, x, H)
            c.expect(label, got, _split(x, H), what="heads", tol=dict(rtol=0, atol=0), wrong=[
                (x.reshape(B, H, N, d), "you reshaped straight to (B, H, N, d): reshape reads memory in "
                 "order, so tokens and heads get mixed. Reshape to (B, N, H, d), then transpose(1, 2)"),
                (x.reshape(B, N, d, H).permute(0, 3, 1, 2), "head h took every H-th feature; it must take "
                 "the contiguous block h*d:(h+1)*d (reshape to (B, N, H, d), not (B, N, d, H))"),
                (x.reshape(B, N, H, d), "you forgot to move the head axis: (B, N, H, d) needs transpose(1, 2) "
                 "to become (B, H, N, d)"),
            ])
    return c.passed("H=1, d=1, several batch sizes")


def check_merge_heads(fn) -> str:
    """Check ``fn(x (B, H, N, d)) -> (B, N, H*d)``, the inverse of split_heads."""
    c = Checker("merge_heads", fn, Ban(python=(heads_module.merge_heads,),
                                       hint="Use transpose and reshape."))
    g = gen(6)
    for B, H, N, d in [(2, 4, 12, 4), (1, 3, 5, 2), (3, 1, 7, 6), (2, 6, 4, 1)]:
        x = randn(g, B, H, N, d)
        label = f"x {tuple(x.shape)}"
        with c.case(label):
            got = c.call(label, x)
            c.expect(label, got, _merge(x), what="merged tensor", tol=dict(rtol=0, atol=0), wrong=[
                (x.reshape(B, N, H * d), "you reshaped (B, H, N, d) straight to (B, N, H*d), which mixes "
                 "tokens and heads: transpose(1, 2) first, then reshape"),
                (x.permute(0, 2, 3, 1).reshape(B, N, H * d), "the features come out ordered (d, H): head h "
                 "must own the contiguous block h*d:(h+1)*d, so transpose to (B, N, H, d) before reshaping"),
            ])
    return c.passed("H=1, d=1, several batch sizes")


def _mha(x, ws, H, mask=None, transpose_w=True, out_proj=True, scale_dim=None, heads=True):
    x = x.double()
    wq, wk, wv, wo = (w.double().T if transpose_w else w.double() for w in ws)
    D = x.shape[-1]
    Hs = H if heads else 1
    q, k, v = (_split(x @ w, Hs) for w in (wq, wk, wv))
    scale = 1 / math.sqrt(scale_dim or D // Hs)
    out, _ = _sdpa(q, k, v, mask, scale=scale)
    out = _merge(out)
    return out @ wo if out_proj else out


def check_multi_head_attention(fn) -> str:
    """Check ``fn(x (B, N, D), w_q, w_k, w_v, w_o, n_heads, mask=None) -> (B, N, D)``."""
    c = Checker("multi_head_attention", fn,
                Ban(MHA_FUNCTIONS, python=(heads_module.multi_head_attention,
                                          mha_module.MultiHeadAttention.forward,
                                          torch.nn.MultiheadAttention.forward),
                    hint="Project, split into heads, attend (your scaled_dot_product_attention), "
                         "merge and project back."))
    g = gen(7)
    cases = []
    for B, N, D, H, kind in [(2, 7, 16, 4, None), (1, 5, 12, 3, "causal"), (2, 6, 15, 5, "padding"),
                             (3, 4, 8, 1, None), (2, 5, 6, 6, "causal")]:
        x = randn(g, B, N, D)
        ws = tuple(randn(g, D, D) / math.sqrt(D) for _ in range(4))
        if kind == "causal":
            mask = torch.ones(N, N, dtype=torch.bool).tril()  # (N, N)
        elif kind == "padding":
            mask = (torch.arange(N)[None, :] < torch.tensor([N, 2])[:, None])[:, None, None, :]  # (B, 1, 1, N)
        else:
            mask = None
        cases.append((f"x {tuple(x.shape)}, n_heads={H} (d={D // H}), mask={kind}", x, ws, H, mask))
    for label, x, ws, H, mask in cases:
        with c.case(label):
            got = c.call(label, x, *ws, H, mask)
            D = x.shape[-1]
            wrong = [
                (_mha(x, ws, H, mask, transpose_w=False), "projections must be x @ w.T (as nn.Linear stores "
                 "its weight (out, in)), not x @ w"),
                (_mha(x, ws, H, mask, out_proj=False), "you forgot the output projection: merge the heads, "
                 "then multiply by w_o.T"),
            ]
            if H > 1:
                wrong += [
                    (_mha(x, ws, H, mask, scale_dim=D), "scores were scaled by 1/sqrt(D); each head has its "
                     "own head dimension d = D / n_heads, scale by 1/sqrt(d)"),
                    (_mha(x, ws, H, mask, heads=False), "this is single-head attention over all D features: "
                     "split q, k and v into n_heads heads before attending"),
                ]
            c.expect(label, got, _mha(x, ws, H, mask), wrong=wrong, dtype=x.dtype)
    return c.passed("H=1, H=D, odd head dim, causal and padding masks")
