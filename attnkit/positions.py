"""Sinusoidal position encodings (Vaswani et al. 2017, section 3.5).

Attention without positions is permutation equivariant: shuffle the tokens and the outputs
shuffle the same way, so "dog bites man" and "man bites dog" look alike. The original
Transformer adds to each token a vector of sines and cosines of its position at
geometrically spaced frequencies:

    PE[p, 2i] = sin(p / 10000^(2i/d)),   PE[p, 2i+1] = cos(p / 10000^(2i/d))

Low dimensions turn fast (a clock's second hand), high ones slowly (its hour hand), and
``PE[p + k]`` is a fixed rotation of ``PE[p]`` for every ``k``.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """``(n, d)`` float32 table; an odd ``d`` ends with a sine column."""
    n = chk.positive_int("n", n, allow_zero=True)
    d = chk.positive_int("d", d)
    p = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # (n, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = p / 10000.0 ** (two_i / d)  # (n, ceil(d/2))
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe.float()  # computed in float64: positions in the thousands keep their digits
