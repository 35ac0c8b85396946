"""ALiBi, attention with linear biases (Press, Smith and Lewis 2022, "Train Short, Test
Long: Attention with Linear Biases Enables Input Length Extrapolation").

No position vectors at all: each head ``h`` subtracts ``slope_h * distance`` from the score
of every query-key pair, so far-away keys are penalised linearly. Heads get geometrically
spaced slopes, some looking far, some near. Because the bias is a simple function of
distance, a model trained on short sequences keeps working on longer ones.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """``(H,)`` slopes: ``2^(-8(h+1)/H)`` for a power-of-two ``H``.

    Otherwise the paper's rule: the slopes of the closest power of two below ``H``,
    ``n = 2^floor(log2 H)``, followed by every other slope of ``2n`` heads until there are ``H``.
    """
    n_heads = chk.positive_int("n_heads", n_heads)

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    n = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(n)
    if n < n_heads:
        slopes += power_of_two(2 * n)[0::2][: n_heads - n]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, n_q: int, n_k: int) -> torch.Tensor:
    """``(H, n_q, n_k)`` float32 bias ``-slope_h * |i + n_k - n_q - j|`` to add to the scores."""
    slopes = alibi_slopes(n_heads)  # (H,)
    n_q = chk.positive_int("n_q", n_q, allow_zero=True)
    n_k = chk.positive_int("n_k", n_k, allow_zero=True)
    i = torch.arange(n_q).unsqueeze(1) + (n_k - n_q)  # (Nq, 1) absolute query positions
    j = torch.arange(n_k).unsqueeze(0)  # (1, Nk)
    distance = (i - j).abs().float()  # (Nq, Nk)
    return -slopes.view(-1, 1, 1) * distance  # (H, Nq, Nk)
