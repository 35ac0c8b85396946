"""Scores that find heads in a language model of Python source (notebook 07d).

A head is a pattern of attention; a *score* turns one pattern into a number, so every head of
every layer can be ranked by it (the method of Clark et al. 2019, "What Does BERT Look At?",
and Olsson et al. 2022 for induction heads). Source code has structure a score can name
exactly, because it can be parsed:

* **bracket matching**: a closing bracket ``)``, ``]`` or ``}`` and the opening bracket it
  closes. :func:`bracket_pairs` pairs them with one stack (an opener is pushed; a closer pops
  the stack only when the top is its own kind, otherwise it is skipped, as a stray bracket in a
  string or a comment would be). :func:`bracket_match_score` is a head's mean weight from each
  closer to its opener.
* **indentation**: the spaces that open a line have to repeat the indentation of the line
  above (or add one level after a ``:``). :func:`indentation_spans` gives, for every leading
  space, the positions of the previous non-blank line's indentation (its leading spaces and
  its first other byte); :func:`indentation_score` is a head's mean total weight on them.

Both take weights ``(..., T, T)`` with any leading axes (``(H, T, T)``, ``(L, H, T, T)``) for
one sequence of byte ids ``(T,)`` and return the leading shape ``(...)``.
"""

from __future__ import annotations

import torch

from . import _validate as chk

OPEN_TO_CLOSE = {ord("("): ord(")"), ord("["): ord("]"), ord("{"): ord("}")}
CLOSE_TO_OPEN = {c: o for o, c in OPEN_TO_CLOSE.items()}
SPACE, NEWLINE = ord(" "), ord("\n")


def _ids(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        chk.integer_tensor("ids", ids, ndim=1)
        return [int(i) for i in ids.tolist()]
    if isinstance(ids, (list, tuple)) and all(isinstance(i, int) for i in ids):
        return list(ids)
    raise TypeError(f"ids must be a 1-D integer tensor or a list of ints, got {type(ids).__name__}")


def _weights(attn, n: int) -> torch.Tensor:
    chk.tensor("attn", attn, min_ndim=2, floating=True)
    if attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != n:
        raise ValueError(f"attn must be (..., T, T) with T = len(ids) = {n}, got shape {chk.shape_str(attn)}")
    return attn


def bracket_pairs(ids) -> list[tuple[int, int]]:
    """``[(close, open), ...]``: each closing bracket and the opening bracket it closes, in the
    order the closers appear. One stack for all three kinds; a closer whose kind does not match
    the innermost open bracket (or that finds none) is skipped and the stack is left alone."""
    stack, pairs = [], []
    for i, b in enumerate(_ids(ids)):
        if b in OPEN_TO_CLOSE:
            stack.append((i, b))
        elif b in CLOSE_TO_OPEN and stack and stack[-1][1] == CLOSE_TO_OPEN[b]:
            pairs.append((i, stack.pop()[0]))
    return pairs


def bracket_match_score(attn: torch.Tensor, ids) -> torch.Tensor:
    """``(...)``: mean attention weight from each closing bracket to its opening bracket.

    Args:
        attn: weights ``(..., T, T)`` (query axis -2, key axis -1) for one sequence.
        ids: its byte ids ``(T,)``.
    """
    ids = _ids(ids)
    attn = _weights(attn, len(ids))
    pairs = bracket_pairs(ids)
    if not pairs:
        raise ValueError(f"bracket_match_score: the {len(ids)} ids hold no matched pair of brackets")
    close = torch.tensor([c for c, _ in pairs])
    open_ = torch.tensor([o for _, o in pairs])
    return attn[..., close, open_].mean(-1)  # (..., pairs) -> (...)


def _lines(ids: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of every line; ``end`` is the position of its newline (or ``len(ids)``)."""
    lines, start = [], 0
    for i, b in enumerate(ids):
        if b == NEWLINE:
            lines.append((start, i))
            start = i + 1
    lines.append((start, len(ids)))
    return lines


def indentation_spans(ids) -> list[tuple[int, list[int]]]:
    """``[(query, keys), ...]``: every leading space of a line (a space with only spaces before
    it on its line) that has a non-blank line above it, and the keys of that nearest non-blank
    line: its leading spaces and its first byte that is not a space. A blank line (only spaces,
    or empty) is never a reference; its spaces are still queries."""
    ids = _ids(ids)
    spans, reference = [], None  # reference: the indentation keys of the last non-blank line
    for start, end in _lines(ids):
        first = start
        while first < end and ids[first] == SPACE:
            first += 1
        if reference is not None:
            spans += [(q, reference) for q in range(start, first)]  # this line's leading spaces
        if first < end:  # not blank: the next lines refer to this one
            reference = list(range(start, first + 1))
    return spans


def indentation_score(attn: torch.Tensor, ids) -> torch.Tensor:
    """``(...)``: mean, over the leading spaces of every line, of the total attention weight on
    the indentation of the nearest non-blank line above (its leading spaces and first byte).

    Args:
        attn: weights ``(..., T, T)`` for one sequence.
        ids: its byte ids ``(T,)``.
    """
    ids = _ids(ids)
    attn = _weights(attn, len(ids))
    spans = indentation_spans(ids)
    if not spans:
        raise ValueError(f"indentation_score: the {len(ids)} ids hold no indented line below a non-blank line")
    keys = torch.zeros(len(spans), len(ids), dtype=attn.dtype)  # (queries, T): 1 on each query's keys
    for row, (_, k) in enumerate(spans):
        keys[row, k] = 1.0
    queries = torch.tensor([q for q, _ in spans])
    return (attn[..., queries, :] * keys).sum(-1).mean(-1)  # (..., queries, T) -> (...)
