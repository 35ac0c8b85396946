"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with
Rotary Position Embedding").

RoPE does not add anything to the token. It cuts each query and key into pairs of features
and rotates pair ``i`` of the token at position ``p`` by the angle ``p * theta^(-2i/d)``.
A rotation by ``a`` and one by ``b`` meet in a dot product as a single rotation by
``b - a``, so ``rope(q, m) . rope(k, n)`` depends on the positions only through ``n - m``:
attention sees *relative* positions, for free.

Two pairings exist in the wild and checkpoints are not interchangeable between them:

* ``pairing="interleaved"`` (the paper, Meta's original LLaMA code): pairs are
  ``(x[2i], x[2i+1])``;
* ``pairing="half"`` (GPT-NeoX, Hugging Face ``rotate_half``): pairs are
  ``(x[i], x[i + d/2])``.

Both use frequency ``theta^(-2i/d)`` for pair ``i``; they are the same function up to a
fixed permutation of the features.
"""

from __future__ import annotations

import torch

from . import _validate as chk

PAIRINGS = ("interleaved", "half")


def rope_angles(positions: torch.Tensor, d: int, theta: float = 10000.0) -> torch.Tensor:
    """``(..., N, d/2)`` float64 angles ``positions * theta^(-2i/d)``."""
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)  # (d/2,)
    return positions.to(torch.float64).unsqueeze(-1) * freqs  # (..., N, d/2)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, *,
               pairing: str = "interleaved") -> torch.Tensor:
    """Rotate feature pairs of ``x`` by position-dependent angles.

    Args:
        x: ``(..., N, d)`` queries or keys, ``d`` even.
        positions: ``(N,)`` integer (or fractional, for position interpolation) positions;
            a ``(..., N)`` tensor broadcastable against ``x.shape[:-1]`` also works.
        theta: the base of the frequencies.
        pairing: ``"interleaved"`` rotates ``(x[2i], x[2i+1])`` (RoFormer);
            ``"half"`` rotates ``(x[i], x[i + d/2])`` (GPT-NeoX / Hugging Face).

    Returns:
        a tensor of ``x.shape`` and ``x.dtype``.
    """
    chk.tensor("x", x, min_ndim=2, floating=True)
    chk.tensor("positions", positions, min_ndim=1)
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"positions must be an integer (or real) tensor, got dtype {positions.dtype}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    N, d = x.shape[-2:]
    if d % 2:
        raise ValueError(f"apply_rope needs an even head dimension d, got x {chk.shape_str(x)}")
    if positions.shape[-1] != N:
        raise ValueError(f"apply_rope: positions {chk.shape_str(positions)} must have one entry per "
                         f"token, N={N} for x {chk.shape_str(x)}")
    chk.broadcast_batch("apply_rope", ("x", x.shape[:-1]), ("positions", positions.shape))
    angle = rope_angles(positions, d, theta)  # (..., N, d/2), float64 for large positions
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)  # (..., N, d/2)
    if pairing == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., N, d/2) each
    else:
        x1, x2 = x[..., : d // 2], x[..., d // 2:]  # (..., N, d/2) each
    r1 = x1 * cos - x2 * sin  # the 2-D rotation of every pair
    r2 = x1 * sin + x2 * cos
    if pairing == "interleaved":
        return torch.stack((r1, r2), dim=-1).flatten(-2)  # (..., N, d/2, 2) -> (..., N, d)
    return torch.cat((r1, r2), dim=-1)  # (..., N, d)


def apply_rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Interleaved RoPE written as complex multiplication: pair ``(a, b)`` is ``a + ib``,
    and rotating it by ``phi`` is multiplying by ``e^(i phi)``. Same result as
    ``apply_rope(x, positions, theta)``; here to show the two views agree."""
    chk.tensor("x", x, min_ndim=2, floating=True)
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"apply_rope_complex needs an even d, got x {chk.shape_str(x)}")
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())  # (..., N, d/2)
    rotated = z * torch.polar(torch.ones(()), rope_angles(positions, d, theta).float()).to(z.dtype)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)  # (..., N, d)
