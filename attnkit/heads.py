"""Multi-head attention as a function (Vaswani et al. 2017, section 3.2.2).

Instead of one attention over ``D`` features, project the input to queries, keys and
values, cut each into ``H`` heads of ``d = D / H`` features, let every head attend on its
own, then glue the heads back together and mix them with an output projection:

    MultiHead(x) = Concat(head_1, ..., head_H) W_o^T,  head_h = Attention(x W_q_h^T, x W_k_h^T, x W_v_h^T)

Head ``h`` owns features ``h*d : (h+1)*d`` of each projection. That layout is what
``torch.nn.MultiheadAttention`` uses, so the same weights give the same output.
"""

from __future__ import annotations

import torch

from . import _validate as chk
from .attention import scaled_dot_product_attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(B, N, H*d) -> (B, H, N, d)``: head ``h`` takes features ``h*d : (h+1)*d``."""
    chk.tensor("x", x, ndim=3)
    n_heads = chk.positive_int("n_heads", n_heads)
    B, N, D = x.shape
    if D % n_heads:
        raise ValueError(f"split_heads: n_heads={n_heads} does not divide the feature "
                         f"dimension D={D} of x {chk.shape_str(x)}")
    return x.view(B, N, n_heads, D // n_heads).transpose(1, 2)  # (B, H, N, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, d) -> (B, N, H*d)``: the inverse of :func:`split_heads`."""
    chk.tensor("x", x, ndim=4)
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)  # (B, N, H*d)


def multi_head_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                         w_v: torch.Tensor, w_o: torch.Tensor, n_heads: int,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention with bias-free projections (``x @ w.T``, as ``nn.Linear``).

    Args:
        x: ``(B, N, D)``.
        w_q, w_k, w_v, w_o: ``(D, D)`` projection weights.
        n_heads: ``H``; must divide ``D``.
        mask: optional bool broadcastable to ``(B, H, N, N)``; ``True`` = may attend.

    Returns:
        ``(B, N, D)``.
    """
    chk.tensor("x", x, ndim=3, floating=True)
    B, N, D = x.shape
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        chk.tensor(name, w, ndim=2, floating=True)
        if w.shape != (D, D):
            raise ValueError(f"multi_head_attention: {name} must be (D, D) = ({D}, {D}) for x "
                             f"{chk.shape_str(x)}, got {chk.shape_str(w)}")
    chk.same_dtype(x=x, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    n_heads = chk.positive_int("n_heads", n_heads)
    if D % n_heads:
        raise ValueError(f"multi_head_attention: n_heads={n_heads} does not divide D={D} "
                         f"(x {chk.shape_str(x)})")
    if mask is not None:
        chk.bool_mask("mask", mask, (B, n_heads, N, N), "(B, H, N, N)")
    q = split_heads(x @ w_q.T, n_heads)  # (B, H, N, d)
    k = split_heads(x @ w_k.T, n_heads)  # (B, H, N, d)
    v = split_heads(x @ w_v.T, n_heads)  # (B, H, N, d)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, N, d)
    return merge_heads(out) @ w_o.T  # (B, N, D)
