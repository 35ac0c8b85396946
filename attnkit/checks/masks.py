"""Checkers for notebook 04: causal and padding masks."""

from __future__ import annotations

import torch

from .. import masks
from ._harness import Ban, Checker
from .basics import _call, _expect


def _causal(n_q, n_k, offset=None):
    offset = n_k - n_q if offset is None else offset
    return torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + offset


BEFORE_EVERY_KEY = ("with more queries than keys, the first n_q - n_k queries come before every key: their rows "
                    "must be all False (query i sits at position i + n_k - n_q, which is negative for them; "
                    "tril's diagonal n_k - n_q is negative here, do not clamp it)")


def _not_bool(got, what: str) -> str | None:
    """The hint for a mask of the right shape but not of dtype bool."""
    if got.dtype == torch.bool:
        return None
    if got.is_floating_point() and bool(((got == 0) | torch.isneginf(got)).all()) and bool(torch.isneginf(got).any()):
        return ("this is an additive mask (0 where allowed, -inf where masked, to add to the scores); the exercise "
                f"asks for a bool mask, True = {what}: compare with <= instead")
    return f"return a bool tensor (True = {what}), got dtype {got.dtype}; compare with <= or call .bool()"


def check_causal_mask(fn) -> str:
    """Check ``fn(n_q, n_k) -> bool (n_q, n_k)``, key j allowed iff j <= i + n_k - n_q."""
    c = Checker("causal_mask", fn, Ban(python=(masks.causal_mask,),
                                       hint="Build it from torch.arange or torch.tril/triu."))
    for n_q, n_k in [(5, 5), (3, 7), (1, 6), (7, 3), (1, 1), (2, 9), (0, 4), (4, 0)]:
        label = f"n_q={n_q}, n_k={n_k}"
        with c.case(label):
            empty = not (n_q and n_k)
            got = _call(c, label, n_q, n_k, hint="n_q = 0 or n_k = 0 must give an empty mask of shape (n_q, n_k) "
                        "(torch.stack of no rows fails; torch.arange comparisons or torch.ones(n_q, n_k).tril(...) "
                        "handle it)" if empty else "")
            want = _causal(n_q, n_k)
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                hint = _not_bool(got, "may attend")
                if hint:
                    c.fail(label, hint)
            wrong = []
            if n_q > n_k:
                wrong += [(_causal(n_q, n_k, offset=0), BEFORE_EVERY_KEY),
                          (_causal(n_k, n_k), BEFORE_EVERY_KEY + f"; your mask has only {n_k} rows, one per key, "
                                                                 f"not one per query")]
            else:
                wrong.append((_causal(n_q, n_k, offset=0), "the mask is aligned to the top left: with fewer queries "
                              "than keys the queries are the LAST n_q tokens, so query i sits at position "
                              "i + n_k - n_q"))
            wrong += [
                (~want, "the mask is inverted: True means 'may attend', so the past and the present are "
                        "True and the future is False"),
                (_causal(n_q, n_k, offset=n_k - n_q - 1), "the diagonal is masked: a token may attend to "
                 "itself (key j is allowed when j <= i, not only when j < i)"),
            ]
            if n_q == n_k:
                wrong.append((want.T, "the mask is transposed (upper triangular): rows are queries, columns are "
                                      "keys, and query i may see keys j <= i, its past, not the future"))
            else:
                wrong += [
                    (want.T, "the mask is transposed: rows are queries, columns are keys, shape (n_q, n_k)"),
                    (_causal(n_q, n_k, offset=n_q - n_k), "the offset is n_k - n_q, not n_q - n_k: query i sits "
                                                          "at absolute position i + n_k - n_q"),
                    (_causal(n_q, n_q, offset=0), "the mask must be (n_q, n_k): one row per query and one column "
                                                  "per key; you built a square (n_q, n_q) one"),
                ]
            future = torch.arange(n_k)[None, :] >= torch.arange(n_q)[:, None] + (n_k - n_q)  # triu
            wrong.append((future, "the mask allows the future (the upper triangle, triu): query i may see keys "
                                  "j <= i + n_k - n_q, the lower triangle (tril)"))
            _expect(c, label, got, want, what="mask", wrong=wrong,
                    shape_hint="one row per query and one column per key, (n_q, n_k)")
    return c.passed("square, fewer and more queries than keys, empty")


def check_padding_mask(fn) -> str:
    """Check ``fn(lengths (B,), n) -> bool (B, n)``, True for the first lengths[b] positions."""
    c = Checker("padding_mask", fn, Ban(python=(masks.padding_mask,),
                                        hint="Compare torch.arange(n) with the lengths."))
    cases = [([3, 0, 5], 5), ([1], 4), ([2, 7, 4, 7], 7), ([0, 0], 3), ([6], 6), ([4, 2], 6)]
    for lengths, n in cases:
        t = torch.tensor(lengths, dtype=torch.int64)
        label = f"lengths={lengths}, n={n}"
        with c.case(label):
            got = c.call(label, t, n)
            pos = torch.arange(n)[None, :]
            want = pos < t[:, None]
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype != torch.bool:
                c.fail(label, f"return a bool tensor (True = a real token), got dtype {got.dtype}")
            full = (t == n)[:, None]
            wrong = [
                (~want, "the mask is inverted: True marks the real tokens (the first lengths[b]), "
                        "False the padding"),
                (pos <= t[:, None], "off by one: positions 0 .. lengths[b]-1 are real, so use <, not <="),
                (pos < t[:, None] - 1, "off by one: positions 0 .. lengths[b]-1 are real, so compare with "
                                       "lengths[b] itself (positions < lengths[b]), not lengths[b] - 1"),
                (want.T, "the mask is transposed: one row per sequence, shape (B, n)"),
                (pos >= n - t[:, None], "the real tokens come first (padding at the end): True for the first "
                                        "lengths[b] positions, not the last lengths[b]"),
                (want & ~full, "a full-length sequence (lengths[b] == n) came out all False: with "
                               "mask[b, -(n - lengths[b]):] the slice -0: is the whole row, not an empty one; slice "
                               "from lengths[b] instead, mask[b, lengths[b]:]"),
                (want[:, None, None, :], "return the mask as (B, n); add the broadcast axes ([:, None, None, :]) "
                                         "where you use it"),
            ]
            if len(lengths) > 1 and len(set(lengths)) > 1:
                wrong.append(((pos < t[0]).expand(len(lengths), n), "every row used lengths[0]: row b keeps its own "
                              "first lengths[b] positions (compare torch.arange(n) with lengths[:, None])"))
            if 0 in lengths:
                wrong.append((pos < t.clamp(min=1)[:, None], "an empty sequence (lengths[b] = 0) must give an "
                              "all-False row: it has no real token"))
            if int(t.max()) < n:
                wrong.append((want[:, :int(t.max())], f"the mask must have n columns (n = {n}, the padded length), "
                                                      f"not max(lengths) = {int(t.max())}"))
            _expect(c, label, got, want, what="mask", wrong=wrong,
                    shape_hint="one row per sequence and one column per position, (B, n)")
    return c.passed("empty and full sequences, B=1")
