"""Checkers for notebooks 01-03: dot-product scores, softmax, scaled dot-product attention."""

from __future__ import annotations

import math

import torch

from .. import attention, similarity
from ..softmax import softmax as reference_softmax
from ._harness import Ban, Checker, gen, randn

F = "torch.nn.functional."
SOFTMAX_FUNCTIONS = {name: None for name in (
    "torch.softmax", "torch.Tensor.softmax", F + "softmax", "torch.special.softmax",
    "torch.log_softmax", "torch.Tensor.log_softmax", F + "log_softmax", "torch.special.log_softmax",
    "torch._softmax", "torch._log_softmax", "torch._safe_softmax", F + "softmin", F + "gumbel_softmax")}
SOFTMAX_ATEN = ("aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten.softmax", "aten.log_softmax")
ATTENTION_FUNCTIONS = {name: None for name in (
    F + "scaled_dot_product_attention", F + "multi_head_attention_forward", "torch._native_multi_head_attention",
    "torch._fused_sdp_choice")}
ATTENTION_ATEN = ("aten._scaled_dot_product", "aten.scaled_dot_product", "aten._fused_sdp")


def _ref_scores(q, k):
    return q.double() @ k.double().transpose(-2, -1)


def check_dot_product_scores(fn) -> str:
    """Check ``fn(q (..., Nq, d), k (..., Nk, d)) -> (..., Nq, Nk)``, raw unscaled dot products."""
    c = Checker("dot_product_scores", fn, Ban(python=(similarity.dot_product_scores,),
                                              hint="Write it with a matrix product (@ or torch.matmul)."))
    g = gen(1)
    cases = [
        ("12 queries x 16 keys, d=8", randn(g, 12, 8), randn(g, 16, 8)),
        ("one query, d=1", randn(g, 1, 1), randn(g, 5, 1)),
        ("batched (B=2, H=3), 12 queries x 16 keys", randn(g, 2, 3, 12, 8), randn(g, 2, 3, 16, 8)),
        ("keys shared across heads: q (2, 3, 12, 8), k (2, 1, 16, 8)", randn(g, 2, 3, 12, 8), randn(g, 2, 1, 16, 8)),
        ("float64 inputs", randn(g, 4, 6, dtype=torch.float64), randn(g, 3, 6, dtype=torch.float64)),
    ]
    batched_hint = ("k.T reverses every dimension of a batched tensor; transpose only the last two "
                    "with k.transpose(-2, -1)")
    for label, q, k in cases:
        with c.case(label):
            got = c.call(label, q, k, if_raises=batched_hint if q.ndim > 2 else "")
            want = _ref_scores(q, k)
            d = q.shape[-1]
            qu = q.double() / q.double().norm(dim=-1, keepdim=True)
            ku = k.double() / k.double().norm(dim=-1, keepdim=True)
            wrong = [
                (_ref_scores(k, q), "the scores are transposed: row i must hold query i's score with every "
                                    "key, shape (..., Nq, Nk), so compute q @ k^T, not k @ q^T"),
                (want / math.sqrt(d), "your scores are divided by sqrt(d); this exercise asks for the raw, "
                                      "unscaled dot product (the scaling comes in notebook 02)"),
                (qu @ ku.transpose(-2, -1), "you normalised q and k, which gives cosine similarity; the dot "
                                            "product keeps the vector lengths"),
            ]
            if q.ndim > 2 and got is not None and isinstance(got, torch.Tensor) and got.shape != want.shape:
                c.fail(label, f"got shape {tuple(got.shape)} for batched inputs, expected {tuple(want.shape)}: "
                              + batched_hint)
            c.expect(label, got, want, what="scores", wrong=wrong, dtype=q.dtype)
    return c.passed("2-D, batched, broadcast heads, d=1, float64")


def _ref_softmax(x, dim):
    return reference_softmax(x.double(), dim)


def check_softmax(fn) -> str:
    """Check ``fn(x, dim=-1)``: a numerically stable softmax; -inf entries give 0."""
    c = Checker("softmax", fn, Ban(SOFTMAX_FUNCTIONS, SOFTMAX_ATEN, (reference_softmax,),
                                   hint="Build it from torch.exp, a max and a sum."))
    g = gen(2)
    stable_hint = ("not numerically stable: exp overflows to inf for large inputs and inf/inf is NaN. "
                   "Subtract the maximum along dim (keepdim=True) before taking exp")
    big = randn(g, 4, 9) * 1000
    big[1] += 5000
    big[2] -= 5000
    masked = randn(g, 3, 7)
    masked[0, [1, 4]] = float("-inf")
    masked[2, :6] = float("-inf")
    all_masked = randn(g, 3, 5)
    all_masked[1] = float("-inf")
    cases = [
        ("x (4, 10), default dim", randn(g, 4, 10), None),
        ("x (2, 3, 5), dim=1", randn(g, 2, 3, 5), 1),
        ("x (6, 4), dim=0", randn(g, 6, 4), 0),
        ("x (3, 4, 5), dim=-2", randn(g, 3, 4, 5), -2),
        ("one element", randn(g, 1), -1),
        ("large logits (|x| ~ 1000, rows shifted by +/-5000)", big, -1),
        ("some -inf (masked) entries", masked, -1),
        ("float64 input", randn(g, 3, 8, dtype=torch.float64), -1),
    ]
    for label, x, dim in cases:
        with c.case(label):
            got = c.call(label, x) if dim is None else c.call(label, x, dim)
            dim = -1 if dim is None else dim
            want = _ref_softmax(x, dim)
            xd = x.double()
            wrong = []
            for other in range(x.ndim):
                if other != dim % x.ndim:
                    wrong.append((_ref_softmax(x, other),
                                  f"the result sums to 1 along dim {other}, not along dim={dim}: did you "
                                  f"ignore the dim argument or normalise over the wrong axis?"))
            global_max = torch.exp(x - x.max())  # in the learner's dtype, to reproduce its underflow
            global_max = (global_max / global_max.sum(dim, keepdim=True), "subtract the maximum of each "
                          "row (x.amax(dim, keepdim=True)), not of the whole tensor: a row far below the "
                          "global maximum underflows to all zeros")
            wrong += [
                (torch.exp(xd - xd.amax(dim, keepdim=True)),
                 "the result does not sum to 1 along dim: divide the exponentials by their sum"),
                global_max,
            ]
            if isinstance(got, torch.Tensor) and torch.isnan(got).any():
                if torch.isinf(x).any():
                    c.fail(label, "NaN where an entry is -inf: a masked entry must get probability 0. "
                                  "Take the maximum over the row and subtract it; exp(-inf) is 0")
                if x.abs().max() > 80:
                    c.expect(label, got, want, what="softmax", wrong=[global_max], otherwise=stable_hint)
            c.expect(label, got, want, what="softmax", wrong=wrong, dtype=x.dtype)
    label = "a row that is entirely -inf (a query with nothing to attend to)"
    with c.case(label):
        got = c.call(label, all_masked, -1)
        if isinstance(got, torch.Tensor) and got.shape == all_masked.shape and torch.isnan(got[1]).any():
            c.fail(label, "an all -inf row gave NaN: its maximum is -inf and -inf - (-inf) is NaN. Every "
                          "entry is -inf, so every probability must be 0: return zeros for such rows "
                          "(e.g. replace a -inf maximum by 0, and divide by 1 where the sum is 0)")
        c.expect(label, got, _ref_softmax(all_masked, -1), what="softmax", dtype=all_masked.dtype)
    return c.passed("several axes, huge logits, -inf entries, all -inf rows, float64")


def _sdpa(q, k, v, mask=None, scale=None, mask_after=False, fill=float("-inf"), softmax_dim=-1):
    """A float64 attention with knobs to reproduce common mistakes."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None and not mask_after:
        s = s.masked_fill(~mask, fill)
    if fill == float("-inf") and softmax_dim == -1:
        w = reference_softmax(s, -1)
    else:
        w = torch.softmax(s, softmax_dim)
    if mask is not None and mask_after:
        w = w * mask
    return w @ v, w


def check_scaled_dot_product_attention(fn) -> str:
    """Check ``fn(q, k, v, mask=None) -> (out, weights)`` against softmax(q k^T / sqrt(d)) v."""
    c = Checker("scaled_dot_product_attention", fn,
                Ban(ATTENTION_FUNCTIONS, ATTENTION_ATEN, (attention.scaled_dot_product_attention,),
                    hint="Compute the scores, the softmax and the weighted sum yourself."))
    g = gen(3)
    B, H, Nq, Nk, d, dv = 2, 3, 12, 16, 8, 6
    qb, kb, vb = randn(g, B, H, Nq, d), randn(g, B, H, Nk, d), randn(g, B, H, Nk, dv)
    causal = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)  # (Nq, Nk)
    lengths = torch.tensor([Nk, 5])
    pad = (torch.arange(Nk)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
    holes = causal.clone()
    holes[3] = False  # one query that may attend to nothing
    cases = [
        ("12 queries x 16 keys, d=8, dv=6, no mask", randn(g, Nq, d), randn(g, Nk, d), randn(g, Nk, dv), None),
        ("d=64 (the scale matters)", randn(g, 5, 64), randn(g, 7, 64), randn(g, 7, 4), None),
        ("batched (B=2, H=3), causal mask (12, 16) broadcast over B and H", qb, kb, vb, causal),
        ("padding mask (B, 1, 1, Nk), lengths 16 and 5", qb, kb, vb, pad),
        ("a fully masked row (query 3 may attend to nothing)", qb, kb, vb, holes),
        ("d=1, one key", randn(g, 3, 1), randn(g, 1, 1), randn(g, 1, 2), None),
    ]
    for label, q, k, v, mask in cases:
        with c.case(label):
            got = c.call(label, q, k, v, mask)
            if not (isinstance(got, tuple) and len(got) == 2):
                c.fail(label, f"return a pair (out, weights); got {type(got).__name__}"
                              + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
            out, weights = got
            want_out, want_w = _sdpa(q, k, v, mask)
            if mask is not None and isinstance(weights, torch.Tensor) and weights.shape == want_w.shape:
                leaked = (weights.detach().abs() > 0) & ~mask.expand_as(weights)
                if leaked.any() and not torch.isnan(weights).any():
                    inverted = _sdpa(q, k, v, ~mask)[1]
                    if torch.allclose(weights.double(), inverted, atol=1e-5):
                        c.fail(label, "your weights are non-zero exactly where the mask is False: True "
                                      "means 'may attend', so fill the scores with -inf where mask is False (~mask)")
            full_row = mask is not None and not mask.expand_as(want_w).any(-1).all()
            if full_row and isinstance(weights, torch.Tensor) and torch.isnan(weights).any():
                c.fail(label, "a fully masked row gave NaN weights: with every score -inf, softmax is 0/0. "
                              "Such a query must get all-zero weights and a zero output")
            d_ = q.shape[-1]
            wrong_w = [
                (_sdpa(q, k, v, mask, softmax_dim=-2)[1],
                 "weights do not sum to 1 over keys: did you take softmax over the query axis? Use dim=-1"),
                (_sdpa(q, k, v, mask, scale=1.0)[1], "weights are too peaked: did you forget to divide the "
                                                     "scores by sqrt(d)?"),
                (_sdpa(q, k, v, mask, scale=1 / d_)[1], "you divided the scores by d; the scale is 1/sqrt(d)"),
                (_sdpa(q, k, v, mask, scale=math.sqrt(d_))[1], "you multiplied the scores by sqrt(d); divide instead"),
            ]
            if v.shape[-1] != d_:
                wrong_w.append((_sdpa(q, k, v, mask, scale=1 / math.sqrt(v.shape[-1]))[1],
                                "d in 1/sqrt(d) is the query/key dimension q.shape[-1], not v's"))
            if mask is not None:
                wrong_w += [
                    (_sdpa(q, k, v, mask, mask_after=True)[1],
                     "the mask was applied after the softmax, so rows no longer sum to 1: mask the scores "
                     "(fill with -inf) before the softmax"),
                    (_sdpa(q, k, v, ~mask)[1], "the mask is inverted: True means 'may attend'"),
                ]
            if full_row:
                wrong_w.append((_sdpa(q, k, v, mask, fill=-1e9)[1],
                                "a fully masked row must give zeros, not uniform weights: with a large "
                                "negative fill instead of -inf, a query with no allowed key spreads its "
                                "weight evenly over forbidden keys"))
            c.expect(label, weights, want_w, what="weights", wrong=wrong_w, dtype=q.dtype)
            c.expect(label, out, want_out, what="output", dtype=q.dtype,
                     otherwise="the weights are right but the output is not: out = weights @ v")
    return c.passed("masks broadcast over batch and heads, padding, fully masked rows, Nq != Nk, dv != d")
