"""Checker for notebook 13: merging two partial attention results by their log-sum-exp."""

from __future__ import annotations

import math

import torch

from .. import chunked
from ..distributed import ring
from ._harness import Ban, Checker, gen, randn
from .positions import _call, _dtype
from .basics import SOFTMAX_ATEN, SOFTMAX_FUNCTIONS

LOG_ADDERS = {name: None for name in (
    "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp",
    "torch.logaddexp", "torch.Tensor.logaddexp", "torch.logaddexp2", "torch.Tensor.logaddexp2")}


def _partial(q, k, v, allowed):
    """Float64 attention of ``q`` over the keys ``allowed (Nq, Nk)`` lets it see: ``(out, lse)``."""
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))  # (..., Nq, Nk)
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)  # (..., Nq, Nk)
    total = e.sum(-1, keepdim=True)
    out = e @ v / torch.where(total > 0, total, torch.ones_like(total))  # (..., Nq, dv)
    return out, (m + torch.log(total)).squeeze(-1)  # (..., Nq, dv), (..., Nq)


def _weights(lse_a, lse_b, exp=torch.exp):
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return exp(lse_a - m), exp(lse_b - m), m


def check_merge_partials(fn) -> str:
    """Check ``fn(out_a, lse_a, out_b, lse_b) -> (out, lse)``: attention over key set A and over
    key set B combined into attention over A and B, compared with attention over all keys.
    ``out (..., N, dv)``, ``lse (..., N)``: 2-D to 5-D inputs."""
    c = Checker("merge_partials", fn, Ban(
        {**SOFTMAX_FUNCTIONS, **LOG_ADDERS}, SOFTMAX_ATEN, (ring.merge_partials, chunked.merge_partials),
        hint="Write the merge yourself from torch.maximum, torch.exp and torch.log: that is the exercise."))
    g = gen(130)
    N, d, dv = 12, 8, 6
    keys = torch.arange(16)
    causal = keys[None, :] <= torch.arange(N)[:, None] + 4  # (12, 16), bottom-right aligned
    padded = torch.ones(N, 16, dtype=torch.bool)
    padded[3] = False  # query 3 sees no key at all (a padding row)
    cases = [  # label, leading axes, scale of q, allowed keys of A, of B
        ("keys 0-6 and keys 7-15", (2, 3), 1.0, keys < 7, keys >= 7),
        ("out (N, dv), lse (N,): no batch or head axes", (), 1.0, keys < 5, keys >= 5),
        ("3 keys and 13 keys", (2, 3), 1.0, keys < 3, keys >= 3),
        ("large scores (lse around 500)", (2, 3), 120.0, keys % 2 == 0, keys % 2 == 1),
        ("causal: the first queries see no key of B", (2, 3), 1.0, causal & (keys < 8), causal & (keys >= 8)),
        ("causal: the first queries see no key of A", (2, 3), 1.0, causal & (keys >= 8), causal & (keys < 8)),
        ("query 3 sees no key in either set", (2, 3), 1.0, padded & (keys < 9), padded & (keys >= 9)),
        ("5-D: out (2, 2, 2, N, dv)", (2, 2, 2), 1.0, keys % 3 == 0, keys % 3 != 0),
    ]
    worked = set()  # the numbers of dimensions the function ran on
    for label, lead, scale, in_a, in_b in cases:
        with c.case(label):
            q, k, v = randn(g, *lead, N, d) * scale, randn(g, *lead, 16, d), randn(g, *lead, 16, dv)
            in_a, in_b = in_a.expand(N, 16), in_b.expand(N, 16)
            out_a, lse_a = (t.float() for t in _partial(q, k, v, in_a))
            out_b, lse_b = (t.float() for t in _partial(q, k, v, in_b))
            want, want_lse = _partial(q, k, v, in_a | in_b)  # attention over both key sets at once
            leading = ("out is (..., N, dv) and lse (..., N): any number of leading dimensions, also none "
                       f"(this case is {out_a.ndim}-D); index from the end, lse.unsqueeze(-1) or lse[..., None]")
            got = _call(c, label, out_a, lse_a, out_b, lse_b, raised=[
                (lambda e, n=out_a.ndim: worked and n not in worked, leading),
                (lambda e: "must match the size of tensor" in e, "lse is (..., N) and out (..., N, dv): give the "
                 "weights a trailing axis, exp(lse_a - m).unsqueeze(-1) (or [..., None]), before multiplying out_a"),
            ])
            worked.add(out_a.ndim)
            if not (isinstance(got, tuple) and len(got) == 2):
                c.fail(label, "return a tuple (out, lse)")
            out, lse = got
            for name, t in (("out", out), ("lse", lse)):
                if not isinstance(t, torch.Tensor):
                    c.fail(label, f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
            finite = torch.isfinite(want_lse)
            if "large" in label and not (torch.isfinite(out).all() and torch.isfinite(lse[finite]).all()):
                c.fail(label, "exp overflowed (exp(500) is inf in float32, and inf / inf is NaN): subtract "
                              "m = max(lse_a, lse_b) before exponentiating, so every weight is at most 1")
            if "either" in label and (torch.isnan(out).any() or torch.isnan(lse).any()):
                c.fail(label, "a row where both partials have lse = -inf (no key seen yet) became NaN, because "
                              "exp(-inf - (-inf)) is NaN: where m is -inf use 0 instead (torch.where), so the row "
                              "gets out = 0 and lse = -inf")
            one_sided = torch.isneginf(lse_a) ^ torch.isneginf(lse_b)  # (..., N): only one side saw keys
            if one_sided.any() and (torch.isnan(out[one_sided]).any() or torch.isnan(lse[one_sided]).any()):
                c.fail(label, "a row where only one partial saw keys (lse = -inf on the other side) became NaN: "
                              "take m = max(lse_a, lse_b), finite there, and weights exp(lse_a - m), exp(lse_b - m); "
                              "the empty side's weight is then exp(-inf) = 0")
            oa, la, ob, lb = out_a.double(), lse_a.double(), out_b.double(), lse_b.double()
            w_a, w_b, m = _weights(la, lb)
            total = (w_a + w_b).unsqueeze(-1)
            w2_a, w2_b, _ = _weights(la, lb, torch.exp2)
            lse2 = m + torch.log2(w2_a + w2_b)
            either_empty = torch.isneginf(la) | torch.isneginf(lb)
            only_one = ("a row where only one partial saw keys was treated as empty: only when both lse are -inf is "
                        "the row empty; otherwise the partial that saw keys counts fully (exp(-inf) = 0 already "
                        "drops the other)")
            # float32 rounds an lse of 500 by ~3e-5, which moves the weights exp(lse - m) by as much
            tol = dict(rtol=1e-4, atol=1e-4) if scale > 1 else None
            _dtype(c, label, out, out_a.dtype, "return out in the inputs' dtype: compute in float64 if you like, "
                                               "then cast back")
            c.expect(label, out, want, what="merged output", dtype=out_a.dtype, tol=tol, wrong=[
                (w_a.unsqueeze(-1) * oa + w_b.unsqueeze(-1) * ob,
                 "the weights exp(lse_a - m) and exp(lse_b - m) were not divided by their sum: each partial counts "
                 "with its share of the softmax mass, exp(lse_a - lse) and exp(lse_b - lse)"),
                ((oa + ob) / 2, "a plain average of the two outputs: weight each by its share of the softmax mass, "
                                "exp(lse_a - lse) and exp(lse_b - lse)"),
                ((w_b.unsqueeze(-1) * oa + w_a.unsqueeze(-1) * ob) / total,
                 "the weights are swapped: out_a is weighted by exp(lse_a - lse), out_b by exp(lse_b - lse)"),
                ((torch.exp2(la - lse2).unsqueeze(-1) * oa + torch.exp2(lb - lse2).unsqueeze(-1) * ob),
                 "mixed log bases: lse is a natural log (as flash_attention_forward returns it), so use torch.exp "
                 "and torch.log, not exp2/log2"),
                (torch.where(either_empty.unsqueeze(-1), 0.0, want), only_one),
            ])
            _dtype(c, label, lse, lse_a.dtype, "return lse in the inputs' dtype: compute in float64 if you like, "
                                               "then cast back")
            c.expect(label, lse, want_lse, what="merged log-sum-exp", dtype=lse_a.dtype, wrong=[
                (torch.maximum(la, lb), "the merged lse is not the larger of the two: it is "
                                        "log(exp(lse_a) + exp(lse_b)) = m + log(exp(lse_a - m) + exp(lse_b - m))"),
                (la + lb, "log-sum-exps do not add: the merged sum of exponentials is exp(lse_a) + exp(lse_b), "
                          "so lse = m + log(exp(lse_a - m) + exp(lse_b - m))"),
                (lse2, "mixed log bases: lse is a natural log (as flash_attention_forward returns it), so use torch.exp "
                       "and torch.log, not exp2/log2"),
                (torch.where(torch.isneginf(want_lse), 0.0, want_lse), "a row that saw no key in either set keeps "
                 "lse = -inf (and out = 0): log(0) = -inf is the right answer there, do not replace it"),
                (torch.where(either_empty, float("-inf"), want_lse), only_one),
            ])
    return c.passed("equal and unequal key sets, huge scores, blocks a query cannot see, rows that see nothing, "
                    "2-D to 5-D")
