"""Checkers for notebook 04: causal and padding masks."""

from __future__ import annotations

import torch

from .. import masks
from ._harness import Ban, Checker


def _causal(n_q, n_k, offset=None):
    offset = n_k - n_q if offset is None else offset
    return torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + offset


def check_causal_mask(fn) -> str:
    """Check ``fn(n_q, n_k) -> bool (n_q, n_k)``, key j allowed iff j <= i + n_k - n_q."""
    c = Checker("causal_mask", fn, Ban(python=(masks.causal_mask,),
                                       hint="Build it from torch.arange or torch.tril/triu."))
    for n_q, n_k in [(5, 5), (3, 7), (1, 6), (7, 3), (1, 1), (0, 4), (4, 0)]:
        label = f"n_q={n_q}, n_k={n_k}"
        with c.case(label):
            got = c.call(label, n_q, n_k)
            want = _causal(n_q, n_k)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype != torch.bool:
                c.fail(label, f"return a bool tensor (True = may attend), got dtype {got.dtype}; "
                              "compare with <= or call .bool()")
            wrong = [
                (_causal(n_q, n_k, offset=0), "the mask is aligned to the top left: with fewer queries than "
                 "keys the queries are the LAST n_q tokens, so query i sits at position i + n_k - n_q"),
                (~want, "the mask is inverted: True means 'may attend', so the past and the present are "
                        "True and the future is False"),
                (_causal(n_q, n_k, offset=n_k - n_q - 1), "the diagonal is masked: a token may attend to "
                 "itself (key j is allowed when j <= i, not only when j < i)"),
            ]
            if n_q == n_k:
                wrong.append((want.T, "the mask is transposed: rows are queries, columns are keys, and a "
                                      "query may see keys up to its own position"))
            c.expect(label, got, want, what="mask", wrong=wrong)
    return c.passed("square, fewer and more queries than keys, empty")


def check_padding_mask(fn) -> str:
    """Check ``fn(lengths (B,), n) -> bool (B, n)``, True for the first lengths[b] positions."""
    c = Checker("padding_mask", fn, Ban(python=(masks.padding_mask,),
                                        hint="Compare torch.arange(n) with the lengths."))
    cases = [([3, 0, 5], 5), ([1], 4), ([2, 7, 4, 7], 7), ([0, 0], 3), ([6], 6)]
    for lengths, n in cases:
        t = torch.tensor(lengths, dtype=torch.int64)
        label = f"lengths={lengths}, n={n}"
        with c.case(label):
            got = c.call(label, t, n)
            pos = torch.arange(n)[None, :]
            want = pos < t[:, None]
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype != torch.bool:
                c.fail(label, f"return a bool tensor (True = a real token), got dtype {got.dtype}")
            c.expect(label, got, want, what="mask", wrong=[
                (~want, "the mask is inverted: True marks the real tokens (the first lengths[b]), "
                        "False the padding"),
                (pos <= t[:, None], "off by one: positions 0 .. lengths[b]-1 are real, so use <, not <="),
                (want.T, "the mask is transposed: one row per sequence, shape (B, n)"),
            ])
    return c.passed("empty and full sequences, B=1")
