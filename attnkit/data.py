"""Toy data, generated on the spot (nothing is downloaded).

``repeated_sequences``: a BOS token, then a random segment of ``period`` tokens repeated
until the sequence is full. The first copy is unpredictable; every later token equals the
one ``period`` steps back, so a model can only do well by finding the previous occurrence
of the current token and copying what followed it: the job of an *induction head*
(Olsson et al. 2022, "In-context Learning and Induction Heads").

That one-token lookup is exact only when the segment has no repeated token. Drawn with
replacement (the default) from 31 ids, it usually has one (the birthday problem: 71% of
segments with periods 4-16, 99% at period 16, measured on 20 000 sequences), and then a
token is followed by different tokens at its different occurrences: the one-token lookup is
ambiguous for 24% of the copy targets, and only a longer match (the token before as well)
or the period itself resolves them. ``distinct=True`` draws every segment without replacement
so that the lookup is exact.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def repeated_sequences(batch: int, length: int, vocab: int, *, period: int | tuple[int, int] = (4, 16),
                       generator: torch.Generator | None = None, bos: int | None = 0,
                       distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (B, length), periods (B,))``: BOS, then a random segment repeated.

    Args:
        batch, length: output shape; ``length`` includes the BOS token.
        vocab: token ids are drawn from ``1 .. vocab - 1`` (0 is BOS).
        period: a fixed segment length, or an inclusive range ``(low, high)`` sampled per row.
        generator: for reproducible data.
        bos: the id of the first token (``None``: no BOS token).
        distinct: draw each segment without replacement, so no token appears twice in it
            (needs ``period <= vocab - 1``).
    """
    batch, length, vocab = (chk.positive_int(n, v) for n, v in (("batch", batch), ("length", length), ("vocab", vocab)))
    if vocab < 3:
        raise ValueError(f"vocab must be at least 3 (BOS + two tokens), got {vocab}")
    low, high = (period, period) if isinstance(period, int) else period
    if not 1 <= low <= high:
        raise ValueError(f"period must be >= 1 (or a range low <= high), got {period}")
    if distinct and high > vocab - 1:
        raise ValueError(f"distinct segments of up to {high} tokens need at least {high} ids besides BOS, "
                         f"got vocab={vocab}")
    periods = torch.randint(low, high + 1, (batch,), generator=generator)  # (B,)
    body_len = length - (bos is not None)
    if distinct:  # a random permutation of the ids 1 .. vocab-1 per row, cut to the longest period
        segment = torch.rand(batch, vocab - 1, generator=generator).argsort(dim=1)[:, :high] + 1  # (B, high)
    else:
        segment = torch.randint(1, vocab, (batch, high), generator=generator)  # (B, high)
    pos = torch.arange(body_len)[None, :] % periods[:, None]  # (B, L): index into the segment
    body = torch.gather(segment, 1, pos)  # (B, L)
    if bos is not None:
        body = torch.cat((torch.full((batch, 1), bos, dtype=body.dtype), body), dim=1)
    return body, periods


def predictable(periods: torch.Tensor, length: int, bos: bool = True) -> torch.Tensor:
    """``(B, length - 1)`` bool: which next-token targets are copies (predictable from context)."""
    start = int(bos)
    target_pos = torch.arange(1, length)[None, :] - start  # position of each target within the body
    return target_pos >= periods[:, None]
