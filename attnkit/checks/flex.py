"""Checkers for notebook 12 (not in the contract's ``CHECKS``): a sliding-window mask_mod,
an ALiBi score_mod and a document (packed-sequence) mask_mod for FlexAttention.

Each exercise is a *factory*: ``fn(parameter)`` returns the mask_mod or score_mod. The
checker evaluates what it returns the way FlexAttention does, vectorised over
``(b, h, q_idx, kv_idx)`` with ``torch.vmap``, compares with a mask or bias written out
here from its definition, and finally runs PyTorch's ``flex_attention`` with it once and
compares the attention output with dense attention in float64.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch.nn.attention import flex_attention as _fa

from .. import alibi, flex, masks
from ..softmax import softmax as reference_softmax
from .._remote import is_remote, there
from ._harness import Ban, Checker, gen, randn

VECTORISE_HINT = ("FlexAttention calls your function on whole tensors of indices at once (torch.vmap), so "
                  "Python `if`, `and`, `or`, `bool(...)` and `.item()` on q_idx / kv_idx cannot work, and a "
                  "plain Python True/False is not a tensor: build the answer from tensor comparisons "
                  "combined with & and |, or torch.where")
_VECTORISE_ERRORS = ("data-dependent control flow", "Data-dependent", ".item()", "must only return Tensors",
                     "Boolean value of Tensor")


_warm = []


def _warm_up(fn=None) -> None:
    """Pay FlexAttention's one-off start-up (importing and setting up torch.vmap and Dynamo, a few
    seconds) before the learner's code runs under the shortcut spy, whose profile hook would
    make that start-up several times slower. (Under the grader the learner's function runs in
    the learner's kernel, where the notebook has already used FlexAttention.)"""
    if not _warm and not is_remote(fn):
        q = torch.zeros(1, 1, 8, 8)
        flex.attend(q, q, q, mask_mod=flex.causal(8, 8), block_size=8, compiled=False)
        apply_score_mod(lambda score, b, h, q_idx, kv_idx: score + q_idx, torch.zeros(1, 1, 2, 2))
        _warm.append(True)


def _reraise(name: str, label: str, error: Exception, what: str):
    if any(s in str(error) for s in _VECTORISE_ERRORS):
        raise AssertionError(f"{name}: {VECTORISE_HINT}\n  failing case: {label}") from error
    raise AssertionError(f"{name}: your {what} raised {type(error).__name__}: {str(error).splitlines()[0]}\n"
                         f"  failing case: {label}") from error


def _mod_from(name: str, label: str, factory, arg, what: str):
    try:
        inspect.signature(factory).bind(arg)
    except TypeError:
        raise AssertionError(f"{name}: {name} is a factory: it takes one argument and returns {what}, a "
                             f"function you define inside it and return; yours takes {inspect.signature(factory)}"
                             f"\n  failing case: {label}") from None
    except ValueError:  # no signature to read (a builtin): just call it
        pass
    mod = factory(arg)
    if not callable(mod):
        raise AssertionError(f"{name}: return a function {what} (the factory builds it and returns it, "
                             f"without calling it), got {type(mod).__name__}\n  failing case: {label}")
    return mod


def _mask_runner(name, factory, B, H):
    """``run(label, arg, n)``: the bool mask ``(B, H, n, n)`` of ``factory(arg)``."""
    def run(label, arg, n):
        mod = _mod_from(name, label, factory, arg, "mask_mod(b, h, q_idx, kv_idx)")
        try:
            return mod, there(mod, flex.evaluate_mask_mod, B, H, n, n)  # (B, H, N, N)
        except Exception as e:  # noqa: BLE001 - the learner's code, explained
            _reraise(name, label, e, "mask_mod")
    return run


apply_score_mod = flex.evaluate_score_mod  # what it was called here before


def _dense_attention(q, k, v, mask=None, bias=None):
    """Float64 attention from its definition: softmax(q k^T / sqrt(d) + bias, masked) v."""
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return reference_softmax(s, -1) @ v.double()  # (B, H, Nq, dv)


def _agrees_in_flex(c: Checker, label: str, *, mask_mod=None, score_mod=None, n: int, heads: int,
                    mask=None, bias=None, seed: int) -> None:
    """Run PyTorch's flex_attention (eager) with the learner's function once, against dense attention."""
    g = gen(seed)
    q, k, v = (randn(g, 2, heads, n, 8, dtype=torch.float64) for _ in range(3))
    try:
        if mask_mod is not None:
            got = there(mask_mod, flex.attend_with_mask_mod, q, k, v, block_size=8)
        else:
            got = there(score_mod, flex.attend_with_score_mod, q, k, v)
    except Exception as e:  # noqa: BLE001
        _reraise(c.name, label + ", inside flex_attention", e, "mask_mod" if score_mod is None else "score_mod")
    c.expect(label + ", attention output of flex_attention", got, _dense_attention(q, k, v, mask, bias),
             what="attention output", otherwise="flex_attention with your function differs from dense attention")


def _bool_or_fail(c: Checker, label: str, got: torch.Tensor) -> None:
    if got.dtype != torch.bool:
        c.fail(label, f"return a bool tensor (True = may attend), got dtype {got.dtype}: comparisons such as "
                      "kv_idx <= q_idx give one; combine them with & and |")


ORDER_HINT = ("your mask does not depend on the query and key positions, only on the batch and head: FlexAttention "
              "calls mask_mod(b, h, q_idx, kv_idx), in that order, so the positions are the last two arguments")


def _order_or_fail(c: Checker, label: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """A mask constant over (q_idx, kv_idx) for every (b, h), yet not the same for all (b, h), when
    the right one is not: the arguments were taken in another order (q_idx, kv_idx, b, h)."""
    if got.shape == want.shape and got.dtype == torch.bool and not torch.equal(got, want) \
            and bool((got == got[..., :1, :1]).all()) and not bool((got == got.flatten()[0]).all()) \
            and not bool((want == want[..., :1, :1]).all()):
        c.fail(label, ORDER_HINT)


def _idx(n):
    return torch.arange(n)[:, None], torch.arange(n)[None, :]  # (N, 1) queries, (1, N) keys


def check_sliding_window_mask_mod(fn) -> str:
    """Check ``fn(window) -> mask_mod``: query ``q_idx`` sees key ``kv_idx`` iff
    ``q_idx - window < kv_idx <= q_idx`` (itself and the ``window - 1`` keys before it)."""
    B, H = 2, 3
    _warm_up(fn)
    c = Checker("sliding_window_mask_mod", _mask_runner("sliding_window_mask_mod", fn, B, H),
                Ban(python=(flex.sliding_window, masks.sliding_window_mask),
                    hint="Compare q_idx and kv_idx directly inside your mask_mod."))
    last = None
    for n, w in [(12, 3), (16, 1), (9, 50), (20, 5)]:
        label = f"window={w}, {n} tokens"
        with c.case(label):
            mod, got = c.call(label, label, w, n)
            _bool_or_fail(c, label, got)
            i, j = _idx(n)
            want = (j <= i) & (i - j < w)  # (N, N)
            _order_or_fail(c, label, got, want.expand(B, H, n, n))
            c.expect(label, got, want.expand(B, H, n, n), what="mask", wrong=[(m.expand(B, H, n, n), hint) for m, hint in [
                ((j <= i) & (i - j <= w), "off by one: a window of w keeps the query itself and the w - 1 keys before "
                                          "it (q_idx - kv_idx < window), not w keys before it"),
                ((j <= i) & (i - j < w - 1), "off by one: the window counts the query itself, so window=w allows w keys "
                                             "in all: q_idx - window < kv_idx <= q_idx"),
                ((i - j).abs() < w, "the window looks both ways: a sliding window is causal too, add kv_idx <= q_idx"),
                (i - j < w, "keys in the future are allowed: a sliding window is causal too, add kv_idx <= q_idx"),
                ((i <= j) & (j - i < w), "q_idx and kv_idx are swapped: the signature is mask_mod(b, h, q_idx, kv_idx) "
                                         "and the allowed keys come before the query"),
                (j <= i, "the window is ignored: this is a plain causal mask"),
                ((j < i) & (i - j < w), "the query itself is excluded: a query always sees itself, so the window is "
                                        "kv_idx <= q_idx (not <) and q_idx - kv_idx < window"),
            ]])
            last = (mod, n, want)
    with c.case("inside flex_attention"):
        if last is None:
            c.fail("inside flex_attention", "no mask_mod to run: every earlier case failed")
        mod, n, want = last
        _agrees_in_flex(c, f"window=5, {n} tokens", mask_mod=mod, n=n, heads=2, mask=want, seed=120)
    return c.passed("windows 1 to wider than the sequence, over batch and heads, and inside flex_attention")


def check_document_mask_mod(fn) -> str:
    """Check ``fn(doc_ids (N,) int64) -> mask_mod``: a token sees exactly the tokens of its own
    document, ``doc_ids[q_idx] == doc_ids[kv_idx]`` (not causal)."""
    B, H = 2, 2
    _warm_up(fn)
    c = Checker("document_mask_mod", _mask_runner("document_mask_mod", fn, B, H),
                Ban(python=(flex.document,), hint="Look up the document of each position in doc_ids."))
    cases = [
        ("documents of lengths 3, 2, 6, 1", [0] * 3 + [1] * 2 + [2] * 6 + [3]),
        ("ids that do not start at 0 and are not sorted", [5, 5, 2, 2, 2, 2, 9, 9]),
        ("one document", [0] * 8),
        ("every token its own document", list(range(6))),
        ("lengths 7, 1, 5, 3", [0] * 7 + [1] + [2] * 5 + [3] * 3),
    ]
    last = None
    for label, ids in cases:
        with c.case(label):
            doc = torch.tensor(ids)
            n = len(ids)
            mod, got = c.call(label, label, doc, n)
            _bool_or_fail(c, label, got)
            i, j = _idx(n)
            want = doc[:, None] == doc[None, :]  # (N, N)
            _order_or_fail(c, label, got, want.expand(B, H, n, n))
            shifted = torch.cat((doc[:1], doc[:-1]))  # the boundary moved one token late
            n_docs = len(set(ids))
            length = max(n // n_docs, 1)
            wrong = [
                (doc[:, None] >= doc[None, :], "tokens see other documents: a token may attend only within its own "
                                                "document, doc_ids[q_idx] == doc_ids[kv_idx]"),
                (doc[:, None] <= doc[None, :], "tokens see other documents: a token may attend only within its own "
                                                "document, doc_ids[q_idx] == doc_ids[kv_idx]"),
                (want & (j <= i), "this mask is causal; the document mask asked for here is not (combine it with a "
                                  "causal mask afterwards with and_masks)"),
                ((i // length) == (j // length), "documents have different lengths: look up the document of each "
                                                 "position in doc_ids instead of assuming equal lengths"),
                (shifted[:, None] == shifted[None, :], "off by one at the document boundaries: position p belongs to "
                                                       "document doc_ids[p]"),
                (torch.ones(n, n, dtype=torch.bool), "every token sees every token: compare the documents of the query "
                                                     "and of the key"),
                (i == j, "each token sees only itself: compare the documents of the query and of the key, "
                         "doc_ids[q_idx] == doc_ids[kv_idx], not their positions"),
            ]
            c.expect(label, got, want.expand(B, H, n, n), what="mask",
                     wrong=[(m.expand(B, H, n, n), hint) for m, hint in wrong])
            last = (mod, n, want)
    with c.case("inside flex_attention"):
        if last is None:
            c.fail("inside flex_attention", "no mask_mod to run: every earlier case failed")
        mod, n, want = last
        _agrees_in_flex(c, "lengths 7, 1, 5, 3", mask_mod=mod, n=n, heads=2, mask=want, seed=121)
    return c.passed("uneven lengths, unsorted ids, one and many documents, and inside flex_attention")


def _slopes_by_formula(h):
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float64)


def check_alibi_score_mod(fn) -> str:
    """Check ``fn(n_heads) -> score_mod``: ``score - slope_h * |q_idx - kv_idx|`` with the ALiBi
    slopes of ``attnkit.alibi_slopes(n_heads)``."""
    name = "alibi_score_mod"

    def run(label, n_heads, scores):
        mod = _mod_from(name, label, fn, n_heads, "score_mod(score, b, h, q_idx, kv_idx)")
        try:
            return mod, there(mod, flex.evaluate_score_mod, scores)
        except Exception as e:  # noqa: BLE001
            _reraise(name, label, e, "score_mod")

    _warm_up(fn)
    c = Checker(name, run, Ban(python=(flex.alibi, alibi.alibi_bias),
                               hint="Look up head h's slope and subtract slope * distance from score."))
    g = gen(122)
    mods = {}
    for n_heads, n in [(4, 7), (8, 10), (6, 5), (1, 4)]:
        label = f"{n_heads} heads, {n} tokens"
        with c.case(label):
            scores = randn(g, 2, n_heads, n, n, dtype=torch.float64)  # (B, H, N, N)
            mods[n_heads], got = c.call(label, label, n_heads, scores)
            i, j = _idx(n)
            dist = (i - j).abs().double()  # (N, N)
            slopes = alibi.alibi_slopes(n_heads).double().view(-1, 1, 1)  # (H, 1, 1)
            want = scores - slopes * dist
            wrong = [
                (scores + slopes * dist, "wrong sign: ALiBi subtracts slope * distance, so far keys score lower"),
                (scores - slopes.flip(0) * dist, "the slopes are in reverse order: head 0 has the steepest slope "
                                                 "2^(-8/H), the last head the gentlest"),
                (scores - slopes * (i - j).double(), "use the absolute distance |q_idx - kv_idx|: without abs, keys "
                                                     "after the query get a bonus"),
                (scores - slopes * (j - i).double(), "use the absolute distance |q_idx - kv_idx|: without abs, keys "
                                                     "before the query get a bonus"),
                (scores - slopes[:1] * dist, "every head uses the same slope: index the slopes with h"),
                ((-slopes * dist).expand_as(scores), "the score is gone: return score minus slope * distance, "
                                                     "not the bias alone"),
            ]
            from_zero = torch.tensor([2.0 ** (-8.0 * h / n_heads) for h in range(n_heads)], dtype=torch.float64)
            wrong.append((scores - from_zero.view(-1, 1, 1) * dist, "the slopes are numbered from 0: head h's slope is "
                          "2^(-8(h+1)/H), so head 0's is 2^(-8/H), not 2^0 = 1"))
            if n_heads >= scores.shape[0]:
                by_batch = slopes[:scores.shape[0]].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
                wrong.append((scores - by_batch * dist, "the slope changes with the batch index b, not the head: "
                                                        "index the slopes with h, score - slopes[h] * |q_idx - kv_idx|"))
            if n_heads & (n_heads - 1):
                wrong.append((scores - _slopes_by_formula(n_heads).view(-1, 1, 1) * dist,
                              f"for {n_heads} heads (not a power of two) the ALiBi paper takes the slopes of the closest "
                              f"power of two plus every other slope of the next one: use attnkit.alibi_slopes(n_heads)"))
            # atol 1e-6: slopes computed in float32 or float64 both pass (and both match the mutants), while
            # every mutant is off by at least the gentlest slope, 2^-8, somewhere
            c.expect(label, got, want, what="biased scores", tol=dict(rtol=1e-6, atol=1e-6), wrong=wrong)
    i, j = _idx(12)
    bias = -alibi.alibi_slopes(8).double().view(-1, 1, 1) * (i - j).abs().double()  # (H, N, N)
    with c.case("inside flex_attention"):
        if 8 not in mods:
            c.fail("8 heads, 12 tokens", "no score_mod to run: the 8-head case failed")
        _agrees_in_flex(c, "8 heads, 12 tokens", score_mod=mods[8], n=12, heads=8, bias=bias, seed=123)
    return c.passed("power-of-two and other head counts, every head's slope, and inside flex_attention")


FLEX_CHECKS = {"sliding_window_mask_mod": check_sliding_window_mask_mod,
               "alibi_score_mod": check_alibi_score_mod,
               "document_mask_mod": check_document_mask_mod}
