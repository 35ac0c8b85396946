"""Toy data, generated on the spot (nothing is downloaded).

``repeated_sequences``: a BOS token, then a random segment of ``period`` tokens repeated
until the sequence is full. The first copy is unpredictable; every later token equals the
one ``period`` steps back, so a model can only do well by finding the previous occurrence
of the current token and copying what followed it: the job of an *induction head*
(Olsson et al. 2022, "In-context Learning and Induction Heads").
"""

from __future__ import annotations

import torch

from . import _validate as chk


def repeated_sequences(batch: int, length: int, vocab: int, *, period: int | tuple[int, int] = (4, 16),
                       generator: torch.Generator | None = None, bos: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (B, length), periods (B,))``: BOS, then a random segment repeated.

    Args:
        batch, length: output shape; ``length`` includes the BOS token.
        vocab: token ids are drawn from ``1 .. vocab - 1`` (0 is BOS).
        period: a fixed segment length, or an inclusive range ``(low, high)`` sampled per row.
        generator: for reproducible data.
        bos: the id of the first token (``None``: no BOS token).
    """
    batch, length, vocab = (chk.positive_int(n, v) for n, v in (("batch", batch), ("length", length), ("vocab", vocab)))
    if vocab < 3:
        raise ValueError(f"vocab must be at least 3 (BOS + two tokens), got {vocab}")
    low, high = (period, period) if isinstance(period, int) else period
    if not 1 <= low <= high:
        raise ValueError(f"period must be >= 1 (or a range low <= high), got {period}")
    periods = torch.randint(low, high + 1, (batch,), generator=generator)  # (B,)
    body_len = length - (bos is not None)
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
