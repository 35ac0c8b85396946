"""Multi-head latent attention, MLA (DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and
Efficient Mixture-of-Experts Language Model", section 2.1; also DeepSeek-V3 and R1).

GQA shrinks the KV cache by sharing heads; MLA shrinks it by compressing. Each token stores one
latent vector ``c_kv (r,)`` (``r = 512`` in DeepSeek-V2/V3), shared by all heads, from which
every head's key and value are *linear* functions:

    k_h = W_UK[h] c_kv   (dn,)        v_h = W_UV[h] c_kv   (dv,)

with ``W_UK (H, dn, r)`` and ``W_UV (H, dv, r)``. Because they are linear, the up-projections
never have to be applied to the cache. For the scores, absorb ``W_UK`` into the query:

    q_h . k_h = q_h . (W_UK[h] c_kv) = (W_UK[h]^T q_h) . c_kv,

one ``(dn,) -> (r,)`` product per *query*, instead of ``(r,) -> (dn,)`` for every cached
*key*; likewise the weighted sum of latents is up-projected by ``W_UV`` once per query
(:func:`mla_attention`). The cache per token and layer is ``r`` numbers instead of
``2 H d``.

RoPE does not commute with the absorption (the rotation sits between ``q`` and ``W_UK`` and
depends on the position), so DeepSeek adds a small *decoupled* RoPE part: ``dr = 64`` more
query features per head and one shared RoPE key per token, cached alongside ``c_kv``:
``r + dr = 576`` numbers per token and layer, where MHA with 128 heads of 128 would need 32768.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .softmax import softmax


def _check_scores(q_nope, c_kv, w_uk, what):
    chk.tensor("q_nope", q_nope, ndim=4, floating=True)
    chk.tensor("c_kv", c_kv, ndim=3, floating=True)
    chk.tensor("w_uk", w_uk, ndim=3, floating=True)
    chk.same_dtype(q_nope=q_nope, c_kv=c_kv, w_uk=w_uk)
    B, H, _, dn = q_nope.shape
    if c_kv.shape[0] != B or w_uk.shape != (H, dn, c_kv.shape[-1]):
        raise ValueError(f"{what}: expected q_nope (B, H, Nq, dn), c_kv (B, Nk, r) and w_uk (H, dn, r) with "
                         f"matching B, H, dn, r; got q_nope {chk.shape_str(q_nope)}, c_kv {chk.shape_str(c_kv)}, "
                         f"w_uk {chk.shape_str(w_uk)}")


def mla_scores(q_nope: torch.Tensor, c_kv: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """The content part of MLA's attention scores, computed in the latent space.

    Args:
        q_nope: ``(B, H, Nq, dn)`` queries (the part without RoPE).
        c_kv: ``(B, Nk, r)`` cached latents, one per key position, shared by all heads.
        w_uk: ``(H, dn, r)``; head ``h``'s key is ``c_kv @ w_uk[h]^T``.

    Returns:
        ``(B, H, Nq, Nk)`` unscaled scores ``q_nope[:, h] @ (c_kv @ w_uk[h]^T)^T``, computed as
        ``(q_nope[:, h] @ w_uk[h]) @ c_kv^T`` so no per-head key is ever built.
    """
    _check_scores(q_nope, c_kv, w_uk, "mla_scores")
    q_latent = torch.einsum("bhqd,hdr->bhqr", q_nope, w_uk)  # (B, H, Nq, r): W_UK absorbed into the query
    return q_latent @ c_kv.unsqueeze(1).transpose(-2, -1)  # (B, H, Nq, r) @ (B, 1, r, Nk) -> (B, H, Nq, Nk)


def mla_attention(q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor, k_rope: torch.Tensor,
                  w_uk: torch.Tensor, w_uv: torch.Tensor, is_causal: bool = False, *,
                  absorb: bool = True) -> torch.Tensor:
    """Full MLA attention from the cache ``(c_kv, k_rope)``.

    Args:
        q_nope: ``(B, H, Nq, dn)``; q_rope: ``(B, H, Nq, dr)`` (already rotated).
        c_kv: ``(B, Nk, r)``; k_rope: ``(B, Nk, dr)`` (already rotated, shared by all heads).
        w_uk: ``(H, dn, r)``; w_uv: ``(H, dv, r)``.
        is_causal: bottom-right causal mask.
        absorb: ``True`` works in the latent space (what a server does when decoding);
            ``False`` builds every head's keys and values first (what training does), same result.

    Returns:
        ``(B, H, Nq, dv)``, with scale ``1/sqrt(dn + dr)``.
    """
    _check_scores(q_nope, c_kv, w_uk, "mla_attention")
    chk.tensor("q_rope", q_rope, ndim=4, floating=True)
    chk.tensor("k_rope", k_rope, ndim=3, floating=True)
    chk.tensor("w_uv", w_uv, ndim=3, floating=True)
    B, H, Nq, dn = q_nope.shape
    Nk, r = c_kv.shape[1:]
    if q_rope.shape[:3] != (B, H, Nq) or k_rope.shape[:2] != (B, Nk) or k_rope.shape[2] != q_rope.shape[3] \
            or w_uv.shape[0] != H or w_uv.shape[2] != r:
        raise ValueError(f"mla_attention: expected q_rope (B, H, Nq, dr), k_rope (B, Nk, dr), w_uv (H, dv, r); got "
                         f"q_rope {chk.shape_str(q_rope)}, k_rope {chk.shape_str(k_rope)}, w_uv {chk.shape_str(w_uv)} "
                         f"with q_nope {chk.shape_str(q_nope)}, c_kv {chk.shape_str(c_kv)}")
    scale = 1.0 / math.sqrt(dn + q_rope.shape[-1])
    rope_scores = q_rope @ k_rope.unsqueeze(1).transpose(-2, -1)  # (B, H, Nq, Nk)
    if absorb:
        scores = mla_scores(q_nope, c_kv, w_uk) + rope_scores
    else:
        k = torch.einsum("bkr,hdr->bhkd", c_kv, w_uk)  # (B, H, Nk, dn): every head's keys, built
        scores = q_nope @ k.transpose(-2, -1) + rope_scores
    scores = scores * scale
    if is_causal:
        i = torch.arange(Nq, device=scores.device).unsqueeze(1) + (Nk - Nq)
        j = torch.arange(Nk, device=scores.device).unsqueeze(0)
        scores = scores.masked_fill(j > i, float("-inf"))
    weights = softmax(scores, dim=-1)  # (B, H, Nq, Nk)
    if absorb:
        latent = weights @ c_kv.unsqueeze(1)  # (B, H, Nq, r): a weighted sum of latents
        return torch.einsum("bhqr,hvr->bhqv", latent, w_uv)  # (B, H, Nq, dv): W_UV applied once per query
    v = torch.einsum("bkr,hvr->bhkv", c_kv, w_uv)  # (B, H, Nk, dv)
    return weights @ v

