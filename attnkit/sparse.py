"""Sparse attention: compute only the scores a pattern allows, not a masked ``N x N`` matrix.

- **Sliding window** (Longformer, Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023): query
  ``i`` sees keys ``i' - window < j <= i'`` (``i' = i + Nk - Nq``), the rule of
  :func:`attnkit.sliding_window_mask`. :func:`sliding_window_attention` walks the queries in
  blocks of ``block`` rows; each block needs only a band of ``block + window - 1`` keys, so the
  cost is ``O(N (block + window) d)`` time and ``O(block (block + window))`` scores in memory,
  instead of ``O(N^2)`` for masking the full matrix.
- **Block sparse** (BigBird, Zaheer et al. 2020; Child et al. 2019 "Sparse Transformers"): cut
  queries and keys into blocks of ``block`` positions and choose which (query block, key block)
  pairs are computed with a boolean *layout*. BigBird's layout is local (a band of blocks
  around the diagonal) + global (blocks that see, and are seen by, everything) + random (a few
  random key blocks per query row). :func:`block_sparse_attention` gathers, for every query
  block, only its key blocks: cost ``O(N * blocks per row * block * d)``.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .flash import _prepare
from .softmax import softmax


def _masked_softmax_matmul(s, allowed, v):
    """``softmax(s)`` over the allowed entries (zeros for a row with none allowed), times ``v``."""
    return softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *,
                             block: int | None = None) -> torch.Tensor:
    """Causal sliding-window attention ``(..., Nq, dv)`` in ``O(N * window)``.

    Equals ``scaled_dot_product_attention(q, k, v, sliding_window_mask(Nq, Nk, window))``
    without building the ``Nq x Nk`` mask. ``block`` (default ``min(window, 256)``, at least 16)
    is how many queries share one band of keys.
    """
    q, k, v = _prepare(q, k, v, "sliding_window_attention")
    window = chk.positive_int("window", window)
    block = chk.positive_int("block", block) if block is not None else max(16, min(window, 256))
    Nq, d = q.shape[-2:]
    Nk, dv = k.shape[-2], v.shape[-1]
    offset = Nk - Nq
    out = q.new_zeros(*q.shape[:-2], Nq, dv)
    for qs in range(0, Nq, block):
        qe = min(qs + block, Nq)
        ks = max(0, qs + offset - window + 1)  # first key any query of the block may see
        ke = min(Nk, qe + offset)  # one past the last key
        if ke <= ks:
            continue  # every query of the block sits before the first key: zeros
        s = (q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1)) / math.sqrt(d)  # (..., bq, band)
        i = torch.arange(qs, qe, device=q.device).unsqueeze(1) + offset  # (bq, 1) absolute positions
        j = torch.arange(ks, ke, device=q.device).unsqueeze(0)  # (1, band)
        allowed = (j <= i) & (j > i - window)  # (bq, band)
        out[..., qs:qe, :] = _masked_softmax_matmul(s, allowed, v[..., ks:ke, :])
    return out


def bigbird_layout(n_q_blocks: int, n_k_blocks: int | None = None, *, local: int = 1, n_global: int = 1,
                   n_random: int = 1, causal: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """A BigBird block layout: bool ``(n_q_blocks, n_k_blocks)``, True = compute this block.

    ``local`` blocks on each side of the (bottom-right aligned) diagonal, the first ``n_global``
    blocks as global (their rows and columns all True), and ``n_random`` extra key blocks per
    query row drawn with ``generator``. With ``causal``, blocks above the diagonal are dropped
    (global rows included); the diagonal block itself still needs a causal mask inside.
    """
    n_q_blocks = chk.positive_int("n_q_blocks", n_q_blocks)
    n_k_blocks = n_q_blocks if n_k_blocks is None else chk.positive_int("n_k_blocks", n_k_blocks)
    local = chk.positive_int("local", local, allow_zero=True)
    n_global = chk.positive_int("n_global", n_global, allow_zero=True)
    n_random = chk.positive_int("n_random", n_random, allow_zero=True)
    i = torch.arange(n_q_blocks).unsqueeze(1) + (n_k_blocks - n_q_blocks)  # (nqb, 1) diagonal key block
    j = torch.arange(n_k_blocks).unsqueeze(0)  # (1, nkb)
    layout = (j - i).abs() <= local  # local band
    layout[:, :n_global] = True  # everyone sees the global blocks
    layout[i.squeeze(1) < n_global] = True  # global blocks see everyone
    future = j > i
    for row in range(n_q_blocks):
        candidates = (~layout[row] & ~(future[row] if causal else torch.zeros_like(future[row]))).nonzero().flatten()
        if n_random and len(candidates):
            pick = torch.randperm(len(candidates), generator=generator)[:n_random]
            layout[row, candidates[pick]] = True
    if causal:
        layout &= ~future
    return layout


def layout_mask(layout: torch.Tensor, block: int, n_q: int, n_k: int) -> torch.Tensor:
    """Expand a block layout to the dense bool ``(n_q, n_k)`` mask it stands for (for references and pictures)."""
    chk.tensor("layout", layout, ndim=2, dtype=torch.bool)
    block = chk.positive_int("block", block)
    nqb, nkb = -(-n_q // block), -(-n_k // block)
    if tuple(layout.shape) != (nqb, nkb):
        raise ValueError(f"layout must have shape ({nqb}, {nkb}) for n_q={n_q}, n_k={n_k}, block={block}; "
                         f"got {chk.shape_str(layout)}")
    dense = layout.repeat_interleave(block, 0).repeat_interleave(block, 1)  # (nqb*block, nkb*block)
    return dense[:n_q, :n_k]


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor, block: int, *,
                           is_causal: bool = False) -> torch.Tensor:
    """Attention ``(..., Nq, dv)`` over the key blocks ``layout`` selects for each query block.

    Equals ``scaled_dot_product_attention`` with ``layout_mask(layout, block, Nq, Nk)`` (and the
    causal mask, with ``is_causal``), but computes ``O(nnz(layout) * block^2)`` scores. Query
    blocks are aligned to the start of the queries, key blocks to the start of the keys.
    """
    q, k, v = _prepare(q, k, v, "block_sparse_attention")
    block = chk.positive_int("block", block)
    Nq, d = q.shape[-2:]
    Nk, dv = k.shape[-2], v.shape[-1]
    nqb, nkb = -(-Nq // block), -(-Nk // block)
    chk.tensor("layout", layout, ndim=2, dtype=torch.bool)
    if tuple(layout.shape) != (nqb, nkb):
        raise ValueError(f"block_sparse_attention: layout must have shape ({nqb}, {nkb}) for Nq={Nq}, Nk={Nk}, "
                         f"block={block}; got {chk.shape_str(layout)}")
    offset = Nk - Nq
    out = q.new_zeros(*q.shape[:-2], Nq, dv)
    for qb in range(nqb):
        cols = layout[qb].nonzero().flatten().tolist()
        if not cols:
            continue
        qs, qe = qb * block, min((qb + 1) * block, Nq)
        keys = torch.cat([torch.arange(c * block, min((c + 1) * block, Nk)) for c in cols])  # (nb * block,)
        s = (q[..., qs:qe, :] @ k[..., keys, :].transpose(-2, -1)) / math.sqrt(d)  # (..., bq, nb*block)
        allowed = torch.ones(qe - qs, len(keys), dtype=torch.bool, device=q.device)
        if is_causal:
            i = torch.arange(qs, qe, device=q.device).unsqueeze(1) + offset
            allowed = keys.to(q.device).unsqueeze(0) <= i
        out[..., qs:qe, :] = _masked_softmax_matmul(s, allowed, v[..., keys, :])
    return out
