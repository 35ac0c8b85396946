"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Replace ``exp(q . k)`` by a product of feature maps ``phi(q) . phi(k)`` with
``phi(x) = elu(x) + 1`` (positive, so weights stay positive). Then
``sum_j phi(q_i).phi(k_j) v_j = phi(q_i)^T (sum_j phi(k_j) v_j^T)``: the ``(d, dv)`` sum
is shared by every query and attention costs ``O(N d dv)`` instead of ``O(N^2 d)``.
Causal: the sums become prefix sums, i.e. an RNN whose state is that ``(d, dv)`` matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import check_qkv


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive, and close to ``exp`` around 0."""
    return F.elu(x) + 1


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """``(..., Nq, dv)``: ``phi(q_i)^T S / phi(q_i)^T z`` with ``S = sum_j phi(k_j) v_j^T``,
    ``z = sum_j phi(k_j)``; with ``causal``, the sums run over ``j <= i + Nk - Nq`` only."""
    check_qkv(q, k, v, "linear_attention")
    fq, fk = feature_map(q), feature_map(k)  # (..., Nq, d), (..., Nk, d)
    if not causal:
        S = fk.transpose(-2, -1) @ v  # (..., d, dv)
        z = fk.sum(-2)  # (..., d)
        return (fq @ S) / (fq @ z.unsqueeze(-1))  # (..., Nq, dv)
    Nq, Nk = q.shape[-2], k.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., Nk, d, dv): prefix sums
    z = torch.cumsum(fk, dim=-2)  # (..., Nk, d)
    last = torch.arange(Nq, device=q.device) + (Nk - Nq)  # the last key each query may see
    seen = last >= 0
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)  # (..., Nq, dv)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)  # (..., Nq, 1)
    out = num / torch.where(den > 0, den, torch.ones_like(den))
    return out * seen.unsqueeze(-1).to(out.dtype)  # queries before every key get zeros
