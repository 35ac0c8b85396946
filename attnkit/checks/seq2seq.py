"""Checker for notebook 07b: cross-attention, the decoder reading the encoder."""

from __future__ import annotations

import math

import torch

from .. import mha as mha_module
from .. import seq2seq
from ._harness import Ban, Checker, gen, randn
from .basics import _call, _expect, _sdpa
from .heads import MHA_FUNCTIONS, _merge, _merge_strided, _merge_straight, _split, _split_straight, _split_strided

ROLES = ("in cross-attention the queries come from x (the decoder) and the keys and values from memory "
         "(the encoder's output)")


def _xattn(x, memory, ws, H, mask=None, *, q_from=None, k_from=None, v_from=None, transpose_w=True,
           out_proj=True, scale_dim=None, heads=None, split=_split, merge=_merge, softmax_dim=-1,
           fill=float("-inf"), which=(0, 1, 2), causal=None):
    """A float64 cross-attention with knobs that reproduce common mistakes; None when a mistake
    cannot be reproduced on this case (shapes that do not fit)."""
    x, memory = x.double(), memory.double()
    q_src = x if q_from is None else q_from.double()
    k_src = memory if k_from is None else k_from.double()
    v_src = memory if v_from is None else v_from.double()
    ws = [w.double().T if transpose_w else w.double() for w in ws]
    D = x.shape[-1]
    Hs = H if heads is None else heads
    try:
        q = split(q_src @ ws[which[0]], Hs)  # (B, H, Nq, d)
        k = split(k_src @ ws[which[1]], Hs)  # (B, H, Nk, d)
        v = split(v_src @ ws[which[2]], Hs)  # (B, H, Nk, d)
        Nq, Nk = q.shape[-2], k.shape[-2]
        if causal == "top-left":
            causal_m = torch.ones(Nq, Nk, dtype=torch.bool).tril()
            mask = causal_m if mask is None else mask & causal_m
        elif causal == "bottom-right":
            causal_m = torch.ones(Nq, Nk, dtype=torch.bool).tril(Nk - Nq)
            mask = causal_m if mask is None else mask & causal_m
        out, _ = _sdpa(q, k, v, mask, scale=1 / math.sqrt(scale_dim or D // Hs), fill=fill,
                       softmax_dim=softmax_dim)
        out = merge(out)  # (B, Nq, D)
    except RuntimeError:
        return None
    return out @ ws[3] if out_proj else out


def _cases(g):
    """(label, x, memory, weights, H, mask): Nq != Nk almost always, so that transposes cannot hide."""
    cases = []
    specs = [
        (2, 12, 16, 16, 4, None),
        (3, 5, 9, 12, 3, "padding"),
        (2, 7, 3, 15, 5, "empty source"),
        (2, 1, 11, 8, 1, None),
        (2, 6, 10, 12, 6, "per-head"),
        (2, 4, 13, 16, 2, "float64"),
        (2, 8, 8, 12, 3, "padding"),
    ]
    for B, Nq, Nk, D, H, kind in specs:
        dtype = torch.float64 if kind == "float64" else torch.float32
        x = randn(g, B, Nq, D, dtype=dtype)
        memory = randn(g, B, Nk, D, dtype=dtype)
        ws = tuple(randn(g, D, D, dtype=dtype) / math.sqrt(D) for _ in range(4))
        if kind == "padding":
            lengths = torch.tensor([Nk, 2, Nk - 3][:B])
            mask = (torch.arange(Nk)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
            what = f"padding mask (B, 1, 1, Nk), source lengths {lengths.tolist()}"
        elif kind == "empty source":
            mask = torch.tensor([[True, True, False], [False, False, False]])[:, None, None, :]  # (B, 1, 1, Nk)
            what = "padding mask (B, 1, 1, Nk) in which sequence 1's source is empty (its queries see nothing)"
        elif kind == "per-head":
            mask = torch.rand(B, H, Nq, Nk, generator=g) > 0.4  # (B, H, Nq, Nk)
            mask[..., 0] = True
            what = "a different mask per head (B, H, Nq, Nk)"
        else:
            mask, what = None, "no mask" + (", float64" if kind == "float64" else "")
        label = f"x {tuple(x.shape)}, memory {tuple(memory.shape)}, n_heads={H} (d={D // H}), {what}"
        cases.append((label, x, memory, ws, H, mask))
    return cases


def check_cross_attention(fn) -> str:
    """Check ``fn(x (B, Nq, D), memory (B, Nk, D), w_q, w_k, w_v, w_o, n_heads, mask=None) -> (B, Nq, D)``."""
    c = Checker("cross_attention", fn,
                Ban(MHA_FUNCTIONS, python=(seq2seq.cross_attention, seq2seq.CrossAttention.forward,
                                           mha_module.MultiHeadAttention.forward,
                                           torch.nn.MultiheadAttention.forward),
                    hint="Project x to queries and memory to keys and values, split into heads, attend, "
                         "merge and project back."))
    g = gen(18)
    for label, x, memory, ws, H, mask in _cases(g):
        with c.case(label):
            got = _call(c, label, x, memory, *ws, H, mask,
                        hint="x (B, Nq, D) and memory (B, Nk, D) have different lengths: queries come from x, "
                             "keys and values from memory, so the weights are (B, H, Nq, Nk)")
            B, Nq, D = x.shape
            Nk = memory.shape[1]
            want = _xattn(x, memory, ws, H, mask)
            if isinstance(got, (tuple, list)) and got and isinstance(got[0], torch.Tensor) \
                    and tuple(got[0].shape) == tuple(want.shape):
                c.fail(label, "return only the output tensor (B, Nq, D), not (out, weights)")
            dead = None
            if mask is not None:
                dead = ~mask.expand(B, H, Nq, Nk).any(-1).any(1)  # (B, Nq): a query some head lets see nothing
            if isinstance(got, torch.Tensor) and got.shape == want.shape and dead is not None and dead.any():
                nan = torch.isnan(got.detach().cpu()).any(-1)  # (B, Nq)
                if nan.any() and not (nan & ~dead).any():
                    c.fail(label, "a query whose source is all padding gave NaN: softmax over scores that are all "
                                  "-inf is 0/0. Such a query must get a zero output (notebooks 03 and 04): use a "
                                  "softmax that returns zeros for an all -inf row (attnkit.softmax does)")
            wrong = [
                (_xattn(x, memory, ws, H, mask, k_from=x, v_from=x), f"that is self-attention on x: {ROLES}"),
                (_xattn(x, memory, ws, H, mask, q_from=memory, k_from=x, v_from=x),
                 f"queries and keys swapped places: {ROLES}; the output has one row per query, (B, Nq, D)"),
                (_xattn(x, memory, ws, H, mask, q_from=memory),
                 f"the queries were computed from memory: {ROLES}; the output has one row per query, (B, Nq, D)"),
                (_xattn(x, memory, ws, H, mask, v_from=x), f"the values were computed from x: {ROLES}"),
                (_xattn(x, memory, ws, H, mask, transpose_w=False), "projections must be x @ w.T (as nn.Linear "
                 "stores its weight (out, in)), not x @ w"),
                (_xattn(x, memory, ws, H, mask, out_proj=False), "you forgot the output projection: merge the "
                 "heads, then multiply by w_o.T"),
                (_xattn(x, memory, ws, H, mask, scale_dim=1), "you forgot to divide the scores by sqrt(d), where "
                 "d = D / n_heads is the head dimension"),
                (_xattn(x, memory, ws, H, mask, softmax_dim=-2), "the softmax is over the query axis: each query's "
                 "weights must sum to 1 over the source positions, the keys (dim=-1)"),
                (_xattn(x, memory, ws, H, mask, which=(0, 0, 2)), "the keys were projected with w_q: "
                 "k = memory @ w_k.T"),
                (_xattn(x, memory, ws, H, mask, which=(0, 1, 1)), "the values were projected with w_k: "
                 "v = memory @ w_v.T"),
                (_xattn(x, memory, ws, H, mask, causal="top-left"), "cross-attention takes no causal mask: the "
                 "whole source is known before decoding starts, so every output position may read every source "
                 "position (only the decoder's self-attention is causal)"),
                (_xattn(x, memory, ws, H, mask, causal="bottom-right"), "cross-attention takes no causal mask: the "
                 "whole source is known before decoding starts, so every output position may read every source "
                 "position (only the decoder's self-attention is causal)"),
            ]
            if Nk not in (1, D, D // H):
                wrong.append((_xattn(x, memory, ws, H, mask, scale_dim=Nk), "scores were divided by sqrt(Nk), the "
                              "number of source positions; divide by sqrt(d), the head dimension D / n_heads"))
            if H > 1:
                wrong += [
                    (_xattn(x, memory, ws, H, mask, scale_dim=D), "scores were scaled by 1/sqrt(D); each head has "
                     "its own head dimension d = D / n_heads, scale by 1/sqrt(d)"),
                    (_xattn(x, memory, ws, H, None if mask is None else mask.any(-3, keepdim=True), heads=1),
                     "this is single-head attention over all D features: split q, k and v into n_heads heads "
                     "before attending"),
                    (_xattn(x, memory, ws, H, mask, split=_split_strided, merge=_merge_strided), "head h must own "
                     "features h*d:(h+1)*d of each projection: split with reshape(B, N, H, d) (not (B, N, d, H)) "
                     "and merge back the same way"),
                    (_xattn(x, memory, ws, H, mask, split=_split_straight, merge=_merge_straight), "split the heads "
                     "with reshape(B, N, H, d) then transpose(1, 2), and merge with transpose(1, 2) then reshape: a "
                     "straight reshape to (B, H, N, d) and back mixes positions and heads"),
                    (_xattn(x, memory, ws, H, mask, merge=_merge_straight), "your merge mixes positions and heads: "
                     "merge with transpose(1, 2), then reshape to (B, Nq, D)"),
                ]
            if mask is not None:
                wrong += [
                    (_xattn(x, memory, ws, H), "the mask was ignored: pass it to every head's attention (True = may "
                                               "attend); it broadcasts to (B, H, Nq, Nk)"),
                    (_xattn(x, memory, ws, H, ~mask), "the mask is inverted: True means 'may attend', so fill the "
                                                      "scores with -inf where the mask is False"),
                ]
            if dead is not None and dead.any():
                wrong.append((_xattn(x, memory, ws, H, mask, fill=-1e9), "a query whose source is all padding must "
                              "get a zero output: with -1e9 instead of -inf its weights spread evenly over the "
                              "padding and it averages their values. Fill with -inf and give such a query zero "
                              "weights"))
            _expect(c, label, got, want, wrong=wrong, dtype=x.dtype, what="output",
                    shape_hint="cross_attention returns (B, Nq, D): one row per query of x, whatever Nk is")
    return c.passed("Nq != Nk, Nq = 1, Nq > Nk, H = 1 and d = 2, padding and per-head masks, an empty source, "
                    "float64")
