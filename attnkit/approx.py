"""Two classic approximations of softmax attention, and how far they land from it.

**Performer / FAVOR+** (Choromanski et al. 2021, "Rethinking Attention with Performers"). The
softmax kernel is an expectation over Gaussian vectors ``w ~ N(0, I)``:
``exp(x . y) = E_w[exp(w.x - |x|^2/2) exp(w.y - |y|^2/2)]``. Draw ``m`` such ``w`` (orthogonal
to each other, which lowers the variance), map every query and key to the ``m`` positive
features ``phi(x) = exp(W x - |x|^2/2) / sqrt(m)``, and attention becomes linear attention
with that feature map: ``O(N m d)``, unbiased in the kernel, error shrinking like
``1/sqrt(m)``.

**Linformer** (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity"). The
attention matrix of a trained model is close to low rank, so project the *sequence* axis of
keys and values from ``Nk`` down to ``r``: ``K' = E K``, ``V' = F V`` with ``E, F (r, Nk)``,
then ordinary softmax attention over ``r`` mixed keys: ``O(N r d)``. In the paper ``E`` and
``F`` are learned; :func:`linformer_projection` gives the random (Johnson-Lindenstrauss)
start, or segment means. It ties the model to one sequence length and cannot be causal: a
mixed key blends past and future positions.

:func:`approximation_error` measures either against exact attention.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .attention import check_qkv, scaled_dot_product_attention
from .linear import kernelised_attention


def gaussian_features(n_features: int, d: int, *, orthogonal: bool = True, generator: torch.Generator | None = None,
                      dtype=torch.float32) -> torch.Tensor:
    """``W (n_features, d)`` with rows ``~ N(0, I_d)``; with ``orthogonal``, rows in each block
    of ``d`` are exactly orthogonal (a QR of a Gaussian matrix) and rescaled to Gaussian norms."""
    n_features = chk.positive_int("n_features", n_features)
    d = chk.positive_int("d", d)
    if not orthogonal:
        return torch.randn(n_features, d, generator=generator, dtype=torch.float64).to(dtype)
    blocks = []
    for _ in range(-(-n_features // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)  # (d, d) orthonormal columns
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:n_features]  # (m, d) unit rows, orthogonal within a block
    norms = torch.randn(n_features, d, generator=generator, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (w * norms).to(dtype)  # row lengths distributed like a Gaussian vector's (chi_d)


def favor_features(x: torch.Tensor, w: torch.Tensor, *, is_query: bool) -> torch.Tensor:
    """Positive random features ``exp(w.x - |x|^2/2 - c) / sqrt(m)`` of ``x (..., N, d)`` (already scaled).

    ``c`` is a max subtracted for numerical safety: per row for queries (it cancels in the
    per-query normalisation), one constant over all keys (it cancels everywhere).
    """
    proj = x @ w.T  # (..., N, m)
    sq = (x * x).sum(-1, keepdim=True) / 2  # (..., N, 1)
    logits = proj - sq
    if is_query:
        c = logits.amax(-1, keepdim=True)
    else:
        c = logits.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(logits - c) / math.sqrt(w.shape[0])


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_features: int = 256, *,
                        causal: bool = False, orthogonal: bool = True, features: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """FAVOR+ approximation of ``softmax(q k^T / sqrt(d)) v``: ``(..., Nq, dv)``.

    ``features`` (an ``(m, d)`` matrix from :func:`gaussian_features`) fixes the random draw;
    otherwise ``n_features`` rows are drawn with ``generator``. ``causal`` uses prefix sums
    (bottom-right aligned like every causal mask in the course).
    """
    check_qkv(q, k, v, "performer_attention")
    d = q.shape[-1]
    if features is None:
        features = gaussian_features(n_features, d, orthogonal=orthogonal, generator=generator, dtype=q.dtype)
    chk.tensor("features", features, ndim=2, floating=True)
    if features.shape[-1] != d:
        raise ValueError(f"performer_attention: features must be (m, {d}) for head dim {d}, "
                         f"got {chk.shape_str(features)}")
    scale = d ** -0.25  # split 1/sqrt(d) evenly between queries and keys
    w = features.to(dtype=q.dtype, device=q.device)
    fq = favor_features(q * scale, w, is_query=True)  # (..., Nq, m)
    fk = favor_features(k * scale, w, is_query=False)  # (..., Nk, m)
    return kernelised_attention(fq, fk, v, causal)


def linformer_projection(n_keys: int, rank: int, *, kind: str = "gaussian", generator: torch.Generator | None = None,
                         dtype=torch.float32) -> torch.Tensor:
    """A ``(rank, n_keys)`` projection of the sequence axis.

    ``kind="gaussian"``: ``N(0, 1/rank)`` entries, the random (Johnson-Lindenstrauss) start the
    paper then trains. ``kind="pool"``: row ``r`` averages a contiguous segment of about
    ``n_keys / rank`` positions (the pooling variant the paper also tries), so a mixed key is
    the mean of its neighbours; with ``rank == n_keys`` it is the identity.
    """
    n_keys, rank = chk.positive_int("n_keys", n_keys), chk.positive_int("rank", rank)
    if kind == "gaussian":
        return (torch.randn(rank, n_keys, generator=generator, dtype=torch.float64) / math.sqrt(rank)).to(dtype)
    if kind == "pool":
        if rank > n_keys:
            raise ValueError(f"linformer_projection: a pooling projection needs rank <= n_keys, got {rank} > {n_keys}")
        segment = torch.arange(n_keys) * rank // n_keys  # (Nk,) which segment each position falls in
        E = (torch.arange(rank).unsqueeze(1) == segment.unsqueeze(0)).to(torch.float64)  # (r, Nk)
        return (E / E.sum(1, keepdim=True)).to(dtype)
    raise ValueError(f"linformer_projection: kind must be 'gaussian' or 'pool', got {kind!r}")


def linformer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, E: torch.Tensor,
                        F: torch.Tensor | None = None) -> torch.Tensor:
    """Linformer: ``softmax(q (E k)^T / sqrt(d)) (F v)`` with ``E, F (r, Nk)`` (``F`` defaults to ``E``)."""
    check_qkv(q, k, v, "linformer_attention")
    F = E if F is None else F
    Nk = k.shape[-2]
    for name, P in (("E", E), ("F", F)):
        chk.tensor(name, P, ndim=2, floating=True)
        if P.shape[-1] != Nk:
            raise ValueError(f"linformer_attention: {name} must be (r, Nk) = (r, {Nk}) to project the {Nk} keys, "
                             f"got {chk.shape_str(P)}")
    if E.shape[0] != F.shape[0]:
        raise ValueError(f"linformer_attention: E {chk.shape_str(E)} and F {chk.shape_str(F)} must share r")
    k_r = E.to(k.dtype) @ k  # (..., r, d): r mixtures of keys
    v_r = F.to(v.dtype) @ v  # (..., r, dv)
    return scaled_dot_product_attention(q, k_r, v_r)[0]


def approximation_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Relative error ``|approx - exact|_F / |exact|_F`` (0 = exact)."""
    return float((approx.double() - exact.double()).norm() / exact.double().norm().clamp_min(1e-300))
