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

from . import _validate as chk
from .attention import check_qkv


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive, and close to ``exp`` around 0."""
    return F.elu(x) + 1


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """``(..., Nq, dv)``: ``phi(q_i)^T S / phi(q_i)^T z`` with ``S = sum_j phi(k_j) v_j^T``,
    ``z = sum_j phi(k_j)``; with ``causal``, the sums run over ``j <= i + Nk - Nq`` only."""
    check_qkv(q, k, v, "linear_attention")
    return kernelised_attention(feature_map(q), feature_map(k), v, causal)


def kernelised_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Attention with weights ``fq_i . fk_j`` (non-negative features ``(..., N, m)``), normalised per query.

    The causal form is the cumulative-sum one: prefix sums of ``fk_j v_j^T`` over the keys.
    """
    if not causal:
        S = fk.transpose(-2, -1) @ v  # (..., m, dv)
        z = fk.sum(-2)  # (..., m)
        return _normalise(fq @ S, (fq @ z.unsqueeze(-1)))  # (..., Nq, dv)
    Nq, Nk = fq.shape[-2], fk.shape[-2]
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., Nk, m, dv): prefix sums
    z = torch.cumsum(fk, dim=-2)  # (..., Nk, m)
    last = torch.arange(Nq, device=fq.device) + (Nk - Nq)  # the last key each query may see
    seen = last >= 0
    idx = last.clamp_min(0)
    num = (fq.unsqueeze(-2) @ S[..., idx, :, :]).squeeze(-2)  # (..., Nq, dv)
    den = (fq * z[..., idx, :]).sum(-1, keepdim=True)  # (..., Nq, 1)
    return _normalise(num, den) * seen.unsqueeze(-1).to(num.dtype)  # queries before every key get zeros


def _normalise(num, den):
    return num / torch.where(den > 0, den, torch.ones_like(den))


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention as an RNN: one token at a time, a state of fixed size.

    The state is ``S = sum phi(k_j) v_j^T`` ``(..., d, dv)`` and ``z = sum phi(k_j)`` ``(..., d)``;
    each step adds one key and reads one query. Decoding memory is ``O(d dv)`` whatever the
    length, where softmax attention's KV cache grows with every token. Equal to
    ``linear_attention(q, k, v, causal=True)``.
    """
    batch = check_qkv(q, k, v, "linear_attention_recurrent")
    fq, fk = feature_map(q).expand(*batch, *q.shape[-2:]), feature_map(k).expand(*batch, *k.shape[-2:])
    v = v.expand(*batch, *v.shape[-2:])
    Nq, Nk = q.shape[-2], k.shape[-2]
    offset = Nk - Nq
    S = fq.new_zeros(*batch, fq.shape[-1], v.shape[-1])  # (..., d, dv)
    z = fq.new_zeros(*batch, fq.shape[-1])  # (..., d)
    out = fq.new_zeros(*batch, Nq, v.shape[-1])
    for t in range(Nk):
        S = S + fk[..., t, :, None] * v[..., t, None, :]  # add key t: (..., d, dv)
        z = z + fk[..., t, :]
        i = t - offset  # the query that sits at this position, if any
        if 0 <= i < Nq:
            num = (fq[..., i, None, :] @ S).squeeze(-2)  # (..., dv)
            out[..., i, :] = _normalise(num, (fq[..., i, :] * z).sum(-1, keepdim=True))
    return out


def linear_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """Causal linear attention in chunks: quadratic inside a chunk, recurrent across chunks.

    Within a chunk of ``C`` tokens, ``(phi(Q) phi(K)^T * causal) V`` costs ``O(C^2 d)`` and uses
    matrix multiplies; the chunks before it enter through the carried state ``S, z``. This is
    how linear-attention models are trained in practice (Hua et al. 2022 "Transformer Quality
    in Linear Time"; Yang et al. 2024 "Gated Linear Attention"): the cumulative-sum form
    stores an ``(N, d, dv)`` prefix tensor, the RNN form is a Python loop over tokens, and the
    chunked form keeps one ``(d, dv)`` state and ``O(C^2)`` scores. Equal to
    ``linear_attention(q, k, v, causal=True)``.
    """
    batch = check_qkv(q, k, v, "linear_attention_chunked")
    chunk_size = chk.positive_int("chunk_size", chunk_size)
    fq, fk = feature_map(q).expand(*batch, *q.shape[-2:]), feature_map(k).expand(*batch, *k.shape[-2:])
    v = v.expand(*batch, *v.shape[-2:])
    Nq, Nk = q.shape[-2], k.shape[-2]
    offset = Nk - Nq
    out = fq.new_zeros(*batch, Nq, v.shape[-1])
    # keys before the first query (Nk > Nq: a prefix, as in decoding) only feed the state
    pre = max(offset, 0)
    S = fk[..., :pre, :].transpose(-2, -1) @ v[..., :pre, :]  # (..., d, dv)
    z = fk[..., :pre, :].sum(-2)  # (..., d)
    first_q = max(-offset, 0)  # queries before every key keep zeros
    for qs in range(first_q, Nq, chunk_size):
        qe = min(qs + chunk_size, Nq)
        ks, ke = qs + offset, qe + offset  # the keys at the same positions
        fqc, fkc, vc = fq[..., qs:qe, :], fk[..., ks:ke, :], v[..., ks:ke, :]
        a = (fqc @ fkc.transpose(-2, -1)).tril()  # (..., C, C): causal within the chunk
        num = a @ vc + fqc @ S  # (..., C, dv): this chunk + every earlier chunk
        den = a.sum(-1, keepdim=True) + fqc @ z.unsqueeze(-1)  # (..., C, 1)
        out[..., qs:qe, :] = _normalise(num, den)
        S = S + fkc.transpose(-2, -1) @ vc  # carry the state to the next chunk
        z = z + fkc.sum(-2)
    return out
