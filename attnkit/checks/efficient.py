"""Checkers for notebook 09: online softmax, FlashAttention forward and backward, sliding
windows, linear attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import flash, linear, masks
from ..online_softmax import online_softmax as reference_online_softmax
from ._harness import Ban, Checker, gen, randn
from .basics import ATTENTION_ATEN, ATTENTION_FUNCTIONS, SOFTMAX_ATEN, SOFTMAX_FUNCTIONS, reference_softmax

NORMALISERS = {**SOFTMAX_FUNCTIONS, "torch.logsumexp": None, "torch.Tensor.logsumexp": None}


def _naive(q, k, v, causal, base=math.e):
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~masks.causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = reference_softmax(s, -1)
    return w @ v, lse / math.log(base)


def check_online_softmax(fn) -> str:
    """Check ``fn(x, block_size) -> (probs, m, l)`` with running max ``m`` and sum ``l = sum exp(x - m)``."""
    c = Checker("online_softmax", fn, Ban(NORMALISERS, SOFTMAX_ATEN, (reference_online_softmax, reference_softmax),
                                          hint="Keep a running max and a running sum, block by block."))
    g = gen(90)
    big = randn(g, 3, 20) * 50
    big[:, -3:] += 400  # the maximum arrives in the last block: the running sum must be rescaled
    holes = randn(g, 2, 9)
    holes[1] = float("-inf")
    for label, x, block in [("x (4, 10), block 3", randn(g, 4, 10), 3), ("max in the last block", big, 4),
                            ("block 1", randn(g, 2, 5), 1), ("block larger than the row", randn(g, 3, 6), 50),
                            ("an all -inf row", holes, 4)]:
        with c.case(label):
            got = c.call(label, x, block)
            if not (isinstance(got, tuple) and len(got) == 3):
                c.fail(label, "return three tensors: (probs, m, l)")
            probs, m, l = got
            xd = x.double()
            want_p, want_m, want_l = reference_online_softmax(xd, block)
            stale = torch.zeros_like(want_l)
            for start in range(0, x.shape[-1], block):  # a running sum that is never rescaled
                blk = xd[..., start:start + block]
                stale = stale + torch.exp(blk - blk.amax(-1, keepdim=True).clamp_min(-1e300)).sum(-1)
            c.expect(label, m, want_m, what="running max m", dtype=x.dtype)
            c.expect(label, l, want_l, what="running sum l", dtype=x.dtype, wrong=[
                (stale, "the running sum was not rescaled: when the max grows from m to m', multiply the sum so far "
                        "by exp(m - m') before adding the new block"),
            ])
            c.expect(label, probs, want_p, what="probabilities", dtype=x.dtype)
    return c.passed("rescaling when the max moves, block sizes 1 to wider than the row, all -inf rows")


def _flash_ban(nq, nk):
    return Ban({**ATTENTION_FUNCTIONS, **NORMALISERS}, ATTENTION_ATEN + SOFTMAX_ATEN,
               (flash.flash_attention_forward, flash.flash_attention_backward, flash.FlashAttention.forward),
               hint="Loop over query and key blocks with a running max and sum; never build the full score matrix.",
               forbid_shape=(nq, nk))


def check_flash_attention_forward(fn) -> str:
    """Check ``fn(q, k, v, is_causal=False, block_q=64, block_k=64) -> (out, lse)``, tiled."""
    g = gen(91)
    cases = [("40 queries x 48 keys, blocks 16", 40, 48, False, 16, 16), ("causal, 40 x 40, blocks 16 x 8", 40, 40, True, 16, 8),
             ("ragged: 37 x 37, blocks 16", 37, 37, True, 16, 16), ("causal, 12 new queries after 36 keys", 12, 48, True, 8, 16),
             ("causal, 20 queries but 12 keys: the first 8 queries see no key", 20, 12, True, 8, 8)]
    c = Checker("flash_attention_forward", fn)
    for label, nq, nk, causal, bq, bk in cases:
        with c.case(label):
            c.ban = _flash_ban(nq, nk)  # the forbidden full-matrix shape changes with the case
            q, k, v = randn(g, 2, 2, nq, 8), randn(g, 2, 2, nk, 8), randn(g, 2, 2, nk, 6)
            got = c.call(label, q, k, v, causal, bq, bk)
            if not (isinstance(got, tuple) and len(got) == 2):
                c.fail(label, "return (out, lse)")
            out, lse = got
            want, want_lse = _naive(q, k, v, causal)
            dead = torch.isneginf(want_lse)
            if dead.any() and isinstance(out, torch.Tensor) and out.shape == want.shape and torch.isnan(out[dead]).any():
                c.fail(label, "NaN for a query that sees no key: it must get zeros and lse = -inf; guard exp(m - m') "
                              "while m is still -inf, and the division by l = 0")
            c.expect(label, out, want, what="output", dtype=q.dtype, wrong=[
                (_naive(q, k, v, False)[0], "is_causal was ignored: mask keys after each query (bottom-right aligned)"),
            ])
            c.expect(label, lse, want_lse, what="log-sum-exp", dtype=q.dtype, wrong=[
                (_naive(q, k, v, causal, base=2)[1], "lse is in base 2; the contract asks for the natural log"),
            ])
    return c.passed("ragged tiles, causal with Nq != Nk, no full score matrix")


def check_flash_attention_backward(fn) -> str:
    """Check ``fn(q, k, v, out, lse, d_out, is_causal=False) -> (dq, dk, dv)`` against autograd."""
    g = gen(92)
    c = Checker("flash_attention_backward", fn)
    # Larger than the usual tiles (64 or 128), so a tiled backward never holds all of (Nq, Nk) at once.
    for label, nq, nk, causal, sharp in [("130 x 150", 130, 150, False, 1.0), ("causal 144 x 144", 144, 144, True, 1.0),
                                         ("causal 20 x 150", 20, 150, True, 1.0),
                                         ("causal 130 x 130, large scores", 130, 130, True, 400.0)]:
        with c.case(label):
            c.ban = _flash_ban(nq, nk)
            q, k, v = (randn(g, 1, 2, n, 8, dtype=torch.float64).requires_grad_() for n in (nq, nk, nk))
            q = (q.detach() * sharp).requires_grad_()  # sharp: masked scores far above lse overflow exp
            d_out = randn(g, 1, 2, nq, 8, dtype=torch.float64)
            out, lse = _naive(q, k, v, causal)
            out.backward(d_out)
            want = [t.grad.clone() for t in (q, k, v)]
            q, k, v, out, lse = (t.detach() for t in (q, k, v, out, lse))
            got = c.call(label, q, k, v, out, lse, d_out, causal)
            if not (isinstance(got, tuple) and len(got) == 3):
                c.fail(label, "return (dq, dk, dv)")
            if any(isinstance(t, torch.Tensor) and torch.isnan(t).any() for t in got):
                c.fail(label, "NaN in the gradients: set masked scores to -inf before exp (exp of a masked score far "
                              "above lse overflows to inf, and inf * 0 = NaN); a query with lse = -inf contributes nothing")
            no_d = flash.flash_attention_backward(q, k, v, torch.zeros_like(out), lse, d_out, causal)
            no_mask = flash.flash_attention_backward(q, k, v, out, lse, d_out, False) if causal else None
            for name, g_, w_, i in zip(("dq", "dk", "dv"), got, want, range(3)):
                wrong = [(no_d[i], "the rowsum(dO * O) term is missing: dS = P * (dP - D) with D = (d_out * out).sum(-1)")]
                if no_mask is not None:
                    wrong.append((no_mask[i], "is_causal was ignored in the backward pass: mask P the same way as forward"))
                c.expect(label, g_, w_, what=name, dtype=torch.float64, wrong=wrong)
    return c.passed("non-causal, causal, Nq != Nk, against autograd in float64")


def check_sliding_window_mask(fn) -> str:
    """Check ``fn(n_q, n_k, window) -> bool (n_q, n_k)``: ``i' - window < j <= i'``."""
    c = Checker("sliding_window_mask", fn, Ban(python=(masks.sliding_window_mask,),
                                               hint="Combine two comparisons of key and query positions."))

    def mask(nq, nk, w, low=0, offset=None):
        offset = nk - nq if offset is None else offset
        i = torch.arange(nq)[:, None] + offset
        j = torch.arange(nk)[None, :]
        return (j <= i) & (j > i - w - low)

    for nq, nk, w in [(8, 8, 3), (4, 10, 2), (10, 4, 3), (6, 6, 1), (5, 5, 50)]:
        label = f"n_q={nq}, n_k={nk}, window={w}"
        with c.case(label):
            got = c.call(label, nq, nk, w)
            c.expect(label, got, mask(nq, nk, w), what="mask", wrong=[
                (mask(nq, nk, w, low=1), "off by one: a window of w keeps the query itself and the w - 1 keys before it "
                                         "(i' - window < j), not w keys before it"),
                (mask(nq, nk, w, offset=0), "the window is aligned to the top left: query i sits at i + n_k - n_q"),
                (mask(nq, nk, 10**6), "the window is ignored: this is a plain causal mask"),
            ])
    return c.passed("square, Nq < Nk, Nq > Nk, window 1 and wider than the sequence")


def check_linear_attention(fn) -> str:
    """Check ``fn(q, k, v, causal=False)`` with feature map ``elu(x) + 1``."""
    c = Checker("linear_attention", fn)
    g = gen(93)
    for label, causal, nq, nk in [("non-causal", False, 11, 11), ("causal", True, 11, 11),
                                  ("causal, 7 new queries after 6 keys", True, 7, 13),
                                  ("causal, 13 queries but 7 keys: the first 6 see no key and get zeros", True, 13, 7),
                                  ("non-causal, 7 queries x 13 keys", False, 7, 13)]:
        with c.case(label):
            c.ban = Ban(python=(linear.linear_attention,), forbid_shape=(nq, nk),
                        hint="Apply elu(x) + 1, then share sum_j phi(k_j) v_j^T across queries instead of forming "
                             "the (Nq, Nk) weights.")
            q, k, v = randn(g, 2, 3, nq, 4), randn(g, 2, 3, nk, 4), randn(g, 2, 3, nk, 5)
            got = c.call(label, q, k, v, causal)
            qd, kd, vd = q.double(), k.double(), v.double()
            fq, fk = F.elu(qd) + 1, F.elu(kd) + 1
            w = fq @ fk.transpose(-2, -1)
            if causal:
                w = w * torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq)
            if isinstance(got, torch.Tensor) and got.shape == (2, 3, nq, 5) and torch.isnan(got).any():
                c.fail(label, "NaN for a query that sees no key: its normaliser is 0; return zeros for it")
            c.expect(label, got, linear.linear_attention(qd, kd, vd, causal), dtype=q.dtype, wrong=[
                (w @ vd, "no normaliser: divide by phi(q_i) . sum_j phi(k_j)"),
                (linear.linear_attention(qd, kd, vd, not causal), "the causal flag is ignored or inverted"),
                (reference_softmax(qd @ kd.transpose(-2, -1), -1) @ vd, "that is softmax attention; use phi(x) = elu(x) + 1"),
            ])
    return c.passed("causal and not, Nq != Nk both ways, batched, no (Nq, Nk) weights")
