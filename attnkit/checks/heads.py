"""Checkers for notebook 05: splitting and merging heads, multi-head attention."""

from __future__ import annotations

import math

import torch

from .. import heads as heads_module
from .. import mha as mha_module
from ._harness import Ban, Checker, gen, randn
from .basics import _call, _expect, _sdpa

MHA_FUNCTIONS = {"torch.nn.functional.multi_head_attention_forward": None}


def _split(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, N, n_heads, D // n_heads).permute(0, 2, 1, 3)  # (B, H, N, d)


def _merge(x):
    B, H, N, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, N, H * d)  # (B, N, H*d)


def _split_strided(x, n_heads):  # head h takes features h, h + H, h + 2H, ...
    B, N, D = x.shape
    return x.reshape(B, N, D // n_heads, n_heads).permute(0, 3, 1, 2)  # (B, H, N, d)


def _merge_strided(x):
    B, H, N, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, N, H * d)  # features ordered (d, H)


def _split_straight(x, n_heads):  # reshape with no transpose: tokens and heads mixed
    B, N, D = x.shape
    return x.reshape(B, n_heads, N, D // n_heads)


def _merge_straight(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


def _dtype_case(g, shape):
    return randn(g, *shape, dtype=torch.float64)


def check_split_heads(fn) -> str:
    """Check ``fn(x (B, N, H*d), n_heads) -> (B, H, N, d)``; head h takes features h*d:(h+1)*d."""
    c = Checker("split_heads", fn, Ban(python=(heads_module.split_heads,),
                                       hint="Use view/reshape and transpose."))
    g = gen(5)
    cases = [(randn(g, B, N, H * d), H) for B, N, H, d in [(2, 12, 4, 4), (1, 5, 3, 2), (3, 7, 1, 6), (2, 4, 6, 1)]]
    cases.append((_dtype_case(g, (2, 3, 10)), 2))
    for x, H in cases:
        B, N, D = x.shape
        d = D // H
        label = f"x {tuple(x.shape)}{' float64' if x.dtype == torch.float64 else ''}, n_heads={H}"
        with c.case(label):
            got = c.call(label, x, H)
            wrong = [
                (x.reshape(B, H, N, d), "you reshaped straight to (B, H, N, d): reshape reads memory in "
                 "order, so tokens and heads get mixed. Reshape to (B, N, H, d), then transpose(1, 2)"),
                (_split_strided(x, H), "head h took every H-th feature; it must take the contiguous block "
                 "h*d:(h+1)*d (reshape to (B, N, H, d), not (B, N, d, H))"),
                (x.reshape(B, N, H, d), "you forgot to move the head axis: (B, N, H, d) needs transpose(1, 2) "
                 "to become (B, H, N, d)"),
                (x.transpose(1, 2).reshape(B, H, N, d), "you transposed before splitting the features: reshape "
                 "to (B, N, H, d) first, then transpose(1, 2)"),
                (x.reshape(B, N, d, H).transpose(1, 2), "n_heads is the number of heads H, not the size of a head: "
                 "each head has d = D // n_heads features, so reshape to (B, N, n_heads, D // n_heads)"),
                (torch.cat(x.chunk(H, dim=-1), dim=0), "the heads went into the batch axis, (B*H, N, d): keep "
                 "them on an axis of their own, (B, H, N, d)"),
                (x.reshape(B, N, H, d).permute(0, 2, 3, 1), "each head came out as (d, N): after reshaping to "
                 "(B, N, H, d) use permute(0, 2, 1, 3) (or transpose(1, 2)), not permute(0, 2, 3, 1)"),
            ]
            _expect(c, label, got, _split(x, H), what="heads", wrong=wrong, dtype=x.dtype,
                    tol=dict(rtol=0, atol=0), shape_hint="split_heads turns (B, N, H*d) into (B, H, N, d)")
    return c.passed("H=1, d=1, several batch sizes, float64")


def check_merge_heads(fn) -> str:
    """Check ``fn(x (B, H, N, d)) -> (B, N, H*d)``, the inverse of split_heads."""
    c = Checker("merge_heads", fn, Ban(python=(heads_module.merge_heads,),
                                       hint="Use transpose and reshape."))
    g = gen(6)
    cases = [randn(g, *shape) for shape in [(2, 4, 12, 4), (1, 3, 5, 2), (3, 1, 7, 6), (2, 6, 4, 1)]]
    cases.append(_dtype_case(g, (2, 3, 4, 5)))
    for x in cases:
        B, H, N, d = x.shape
        label = f"x {tuple(x.shape)}{' float64' if x.dtype == torch.float64 else ''}"
        with c.case(label):
            got = _call(c, label, x, hint="if you used .view after transpose: view needs contiguous memory, so "
                                          "use .reshape (or .contiguous().view)")
            want = _merge(x)
            wrong = [
                (x.reshape(B, N, H * d), "you reshaped (B, H, N, d) straight to (B, N, H*d), which mixes "
                 "tokens and heads: transpose(1, 2) first, then reshape"),
                (_merge_strided(x), "the features come out ordered (d, H): head h must own the contiguous block "
                 "h*d:(h+1)*d, so transpose to (B, N, H, d) before reshaping"),
                (x.transpose(1, 2), "you moved the heads next to the features, (B, N, H, d), but did not flatten "
                                    "them: reshape to (B, N, H*d)"),
                (torch.cat(x.unbind(1), dim=1), "you concatenated the heads along the token axis, (B, H*N, d): "
                                                "concatenate them along the features (dim=-1)"),
                (_merge(x.flip(1)), "the heads come out in reverse order: head 0 must fill features 0:d, head 1 "
                                    "the next d, and so on (concatenate x[:, 0], x[:, 1], ... in that order)"),
                (x.sum(1), "you summed the heads: concatenate them, so that head h fills features h*d:(h+1)*d"),
                (x.mean(1), "you averaged the heads: concatenate them, so that head h fills features h*d:(h+1)*d"),
                (want.reshape(B * N, H * d), "keep the batch axis: the result is (B, N, H*d), e.g. reshape(B, N, -1), "
                                             "not reshape(-1, H*d)"),
            ]
            if B == 1:
                wrong.append((want[0], "keep the batch axis: the result is (B, N, H*d), even when B = 1"))
            _expect(c, label, got, want, what="merged tensor", wrong=wrong, dtype=x.dtype,
                    tol=dict(rtol=0, atol=0), shape_hint="merge_heads turns (B, H, N, d) into (B, N, H*d)")
    return c.passed("H=1, d=1, several batch sizes, float64")


def _mha(x, ws, H, mask=None, *, transpose_w=True, out_proj=True, scale_dim=None, heads=None,
         split=_split, merge=_merge, softmax_dim=-1, fill=float("-inf"), which=(0, 1, 2)):
    """A float64 multi-head attention with knobs to reproduce common mistakes (None when a
    mistake cannot be reproduced on this case, e.g. a per-head mask with another head count)."""
    try:
        return _mha_or_raise(x, ws, H, mask, transpose_w=transpose_w, out_proj=out_proj, scale_dim=scale_dim,
                             heads=heads, split=split, merge=merge, softmax_dim=softmax_dim, fill=fill, which=which)
    except RuntimeError:
        if heads is None and split is _split and merge is _merge:
            raise
        return None


def _mha_or_raise(x, ws, H, mask, *, transpose_w, out_proj, scale_dim, heads, split, merge, softmax_dim, fill,
                  which):
    x = x.double()
    flags = transpose_w if isinstance(transpose_w, tuple) else (transpose_w,) * 4  # one per weight, or all
    ws = [w.double().T if t else w.double() for w, t in zip(ws, flags)]
    D = x.shape[-1]
    Hs = H if heads is None else heads
    q, k, v = (split(x @ ws[i], Hs) for i in which)
    scale = 1 / math.sqrt(scale_dim or D // Hs)
    out, _ = _sdpa(q, k, v, mask, scale=scale, fill=fill, softmax_dim=softmax_dim)
    out = merge(out)
    return out @ ws[3] if out_proj else out


def _mha_cases(g):
    cases = []
    for B, N, D, H, kind in [(2, 7, 16, 4, None), (1, 5, 12, 3, "causal"), (2, 6, 15, 5, "padding"),
                             (3, 4, 8, 1, None), (2, 5, 6, 6, "causal"), (2, 5, 12, 3, "hole"),
                             (2, 6, 12, 4, "per-head")]:
        x = randn(g, B, N, D)
        ws = tuple(randn(g, D, D) / math.sqrt(D) for _ in range(4))
        if kind == "causal":
            mask = torch.ones(N, N, dtype=torch.bool).tril()  # (N, N)
            what = "causal mask (N, N)"
        elif kind == "padding":
            mask = (torch.arange(N)[None, :] < torch.tensor([N, 2])[:, None])[:, None, None, :]  # (B, 1, 1, N)
            what = "padding mask (B, 1, 1, N)"
        elif kind == "hole":
            mask = torch.ones(B, 1, N, N, dtype=torch.bool).tril()  # (B, 1, N, N)
            mask[1, 0, 2] = False
            what = "mask (B, 1, N, N) in which query 2 of sequence 1 may attend to nothing"
        elif kind == "per-head":
            mask = torch.rand(B, H, N, N, generator=g) > 0.5  # (B, H, N, N)
            mask |= torch.eye(N, dtype=torch.bool)
            what = "a different mask per head (B, H, N, N)"
        else:
            mask, what = None, "no mask"
        cases.append((f"x {tuple(x.shape)}, n_heads={H} (d={D // H}), {what}", x, ws, H, mask))
    return cases


def check_multi_head_attention(fn) -> str:
    """Check ``fn(x (B, N, D), w_q, w_k, w_v, w_o, n_heads, mask=None) -> (B, N, D)``."""
    c = Checker("multi_head_attention", fn,
                Ban(MHA_FUNCTIONS, python=(heads_module.multi_head_attention,
                                          mha_module.MultiHeadAttention.forward,
                                          torch.nn.MultiheadAttention.forward),
                    hint="Project, split into heads, attend (your scaled_dot_product_attention), "
                         "merge and project back."))
    g = gen(7)
    for label, x, ws, H, mask in _mha_cases(g):
        with c.case(label):
            got = c.call(label, x, *ws, H, mask)
            B, N, D = x.shape
            want = _mha(x, ws, H, mask)
            if isinstance(got, (tuple, list)) and got and isinstance(got[0], torch.Tensor) \
                    and tuple(got[0].shape) == tuple(want.shape):
                c.fail(label, "return only the output tensor (B, N, D), not (out, weights): the attention weights "
                              "of every head stay inside multi_head_attention")
            dead = None
            if mask is not None:
                dead = ~mask.expand(B, H, N, N).any(-1).any(1)  # (B, N): a query some head lets see nothing
            if isinstance(got, torch.Tensor) and got.shape == want.shape and dead is not None and dead.any():
                nan = torch.isnan(got.detach().cpu()).any(-1)  # (B, N)
                if nan.any() and not (nan & ~dead).any():
                    c.fail(label, "a query whose keys are all masked gave NaN: softmax over scores that are all "
                                  "-inf is 0/0. Such a query must get a zero output (notebooks 03 and 04): use a "
                                  "softmax that returns zeros for an all -inf row (yours from notebook 02, or "
                                  "attnkit.softmax)")
            wrong = [
                (_mha(x, ws, H, mask, transpose_w=False), "projections must be x @ w.T (as nn.Linear stores "
                 "its weight (out, in)), not x @ w"),
                *[(_mha(x, ws, H, mask, transpose_w=tuple(j != i for j in range(4))),
                   f"{w} was used untransposed: {src} @ {w} instead of {src} @ {w}.T (nn.Linear stores its weight "
                   f"(out, in))") for i, (w, src) in enumerate((("w_q", "x"), ("w_k", "x"), ("w_v", "x"),
                                                                ("w_o", "merged")))],
                (_mha(x, ws, H, mask, out_proj=False), "you forgot the output projection: merge the heads, "
                 "then multiply by w_o.T"),
                (_mha(x, ws, H, mask, scale_dim=1), "you forgot to divide the scores by sqrt(d), where "
                 "d = D / n_heads is the head dimension"),
                (_mha(x, ws, H, mask, softmax_dim=-2), "the softmax is over the query axis: each query's "
                 "weights must sum to 1 over the keys (dim=-1)"),
                (_mha(x, ws, H, mask, which=(0, 0, 2)), "the keys were projected with w_q: k = x @ w_k.T"),
                (_mha(x, ws, H, mask, which=(0, 1, 1)), "the values were projected with w_k: v = x @ w_v.T"),
                (_mha(x, ws, H, mask, which=(0, 0, 0)), "queries, keys and values were all projected with w_q: "
                 "use w_k for the keys and w_v for the values"),
            ]
            if H > 1:
                wrong += [
                    (_mha(x, ws, H, mask, scale_dim=D), "scores were scaled by 1/sqrt(D); each head has its "
                     "own head dimension d = D / n_heads, scale by 1/sqrt(d)"),
                    (_mha(x, ws, H, None if mask is None else mask.any(-3, keepdim=True) if mask.ndim >= 3 else mask,
                          heads=1), "this is single-head attention over all D features: "
                     "split q, k and v into n_heads heads before attending"),
                    (_mha(x, ws, H, mask, split=_split_strided, merge=_merge_strided), "head h must own features "
                     "h*d:(h+1)*d of each projection: split with reshape(B, N, H, d) (not (B, N, d, H)) and merge "
                     "back the same way"),
                    (_mha(x, ws, H, mask, split=_split_straight, merge=_merge_straight), "split the heads with "
                     "reshape(B, N, H, d) then transpose(1, 2), and merge with transpose(1, 2) then reshape: a "
                     "straight reshape to (B, H, N, d) and back mixes tokens and heads"),
                    (_mha(x, ws, H, mask, split=_split_straight), "your split mixes tokens and heads: split with "
                     "reshape(B, N, H, d), then transpose(1, 2), not a straight reshape to (B, H, N, d)"),
                    (_mha(x, ws, H, mask, merge=_merge_straight), "your merge mixes tokens and heads: merge with "
                     "transpose(1, 2), then reshape to (B, N, D), not a straight reshape of (B, H, N, d)"),
                ]
                wrong.append((_mha(x, ws, H, None if mask is None else mask.any(-3, keepdim=True)
                                   if mask.ndim >= 3 else mask, heads=1, scale_dim=D // H),
                              "this is single-head attention over all D features (scaled by the head dim): split "
                              "q, k and v into n_heads heads of d = D // n_heads features before attending"))
                if mask is not None and mask.ndim == 4 and mask.shape[1] == H:
                    wrong.append((_mha(x, ws, H, mask[:, :1]), "every head got head 0's mask: a mask of shape "
                                  "(B, H, N, N) holds one mask per head; use it as it is, it lines up with the "
                                  "scores (B, H, N, N)"))
                if D // H not in (H, 1):
                    wrong.append((_mha(x, ws, H, mask, heads=D // H), "n_heads is the number of heads, not the "
                                  "size of a head: split D into n_heads heads of d = D // n_heads features"))
            if mask is not None:
                wrong += [
                    (_mha(x, ws, H), "the mask was ignored: pass it to every head's attention (True = may "
                                     "attend); it broadcasts to (B, H, N, N)"),
                    (_mha(x, ws, H, ~mask), "the mask is inverted: True means 'may attend', so fill the scores "
                                            "with -inf where the mask is False"),
                ]
            if dead is not None and dead.any():
                wrong.append((_mha(x, ws, H, mask, fill=-1e9), "a query whose keys are all masked must get a zero "
                              "output: with -1e9 instead of -inf its weights spread evenly over forbidden keys "
                              "and it averages their values. Fill with -inf and give such a query zero weights"))
            _expect(c, label, got, want, wrong=wrong, dtype=x.dtype, what="output",
                    shape_hint="multi_head_attention returns (B, N, D), the shape of x")
    return c.passed("H=1, H=D, odd head dim, causal, padding and per-head masks, a query with nothing to "
                    "attend to")
