"""Dot products as similarity: the score at the heart of attention.

Every query is compared with every key by a dot product, ``s_ij = q_i . k_j``: large when
the two vectors point the same way and are long. Cosine similarity divides the length out
and keeps only the angle; attention keeps the length on purpose, so a model can make a
query "sharper" by making it longer (Vaswani et al. 2017, "Attention Is All You Need").
"""

from __future__ import annotations

import torch

from . import _validate as chk


def _check_qk(q, k, what: str) -> None:
    chk.tensor("q", q, min_ndim=2, floating=True)
    chk.tensor("k", k, min_ndim=2, floating=True)
    chk.same_dtype(q=q, k=k)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{what}: q and k must share the last (feature) dimension d, got "
                         f"q {chk.shape_str(q)} and k {chk.shape_str(k)}")
    chk.broadcast_batch(what, ("q", q.shape[:-2]), ("k", k.shape[:-2]))


def dot_product_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Raw, unscaled scores ``q @ k^T``.

    Args:
        q: queries ``(..., Nq, d)``.
        k: keys ``(..., Nk, d)``; leading dimensions broadcast against ``q``'s.

    Returns:
        scores ``(..., Nq, Nk)`` with ``scores[..., i, j] = q[..., i, :] . k[..., j, :]``.
    """
    _check_qk(q, k, "dot_product_scores")
    return q @ k.transpose(-2, -1)  # (..., Nq, d) @ (..., d, Nk) -> (..., Nq, Nk)


def cosine_scores(q: torch.Tensor, k: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every query with every key: dot products of unit vectors.

    Same shapes as :func:`dot_product_scores`; values lie in ``[-1, 1]``. A zero vector
    gets similarity 0 with everything (its norm is clamped to ``eps``).
    """
    _check_qk(q, k, "cosine_scores")
    q_unit = q / q.norm(dim=-1, keepdim=True).clamp_min(eps)  # (..., Nq, d)
    k_unit = k / k.norm(dim=-1, keepdim=True).clamp_min(eps)  # (..., Nk, d)
    return q_unit @ k_unit.transpose(-2, -1)  # (..., Nq, Nk)
