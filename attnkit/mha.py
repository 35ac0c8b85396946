"""``MultiHeadAttention``: the attention layer of a real model, as an ``nn.Module``.

One module covers the variants a learner meets in the wild:

* self-attention (``context=None``) and cross-attention (keys and values from ``context``,
  as in the encoder-decoder Transformer, Vaswani et al. 2017);
* a causal mask, aligned to the bottom right so it stays right with a KV cache;
* RoPE on queries and keys (Su et al. 2021), interleaved or half-split;
* ``n_kv_heads < n_heads`` for grouped-query and multi-query attention (Ainslie et al. 2023,
  Shazeer 2019);
* a :class:`~attnkit.kv_cache.KVCache` for one-token-at-a-time decoding;
* :meth:`MultiHeadAttention.from_torch` loads the weights of a ``torch.nn.MultiheadAttention``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validate as chk
from .attention import scaled_dot_product_attention
from .gqa import repeat_kv
from .heads import merge_heads, split_heads
from .kv_cache import KVCache
from .masks import causal_mask
from .rope import apply_rope


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional GQA/MQA, RoPE, causal masking and a KV cache.

    Args:
        d_model: ``D``, the width of the queries' input and of the output.
        n_heads: ``H``, the number of query heads; must divide ``D``. Head dim ``d = D / H``.
        n_kv_heads: ``Hkv`` key/value heads (default ``H``); must divide ``H``.
        bias: whether the four projections have biases (``nn.MultiheadAttention`` does).
        rope: apply rotary embeddings to queries and keys (self-attention only).
        rope_theta, rope_pairing: see :func:`attnkit.apply_rope`.
        kdim, vdim: widths of the key and value inputs for cross-attention (default ``D``).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 bias: bool = False, rope: bool = False, rope_theta: float = 10000.0,
                 rope_pairing: str = "interleaved", kdim: int | None = None,
                 vdim: int | None = None):
        super().__init__()
        d_model = chk.positive_int("d_model", d_model)
        n_heads = chk.positive_int("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else chk.positive_int("n_kv_heads", n_kv_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide d_model={d_model}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        if rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d = {d_model} / {n_heads} = {self.head_dim}")
        self.rope, self.rope_theta, self.rope_pairing = rope, rope_theta, rope_pairing
        kv_width = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(kdim or d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(vdim or d_model, kv_width, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` shaped for this layer, on its device and dtype."""
        w = self.k_proj.weight
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, dtype=w.dtype, device=w.device)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None, return_weights: bool = False, position: int | None = None):
        """Attend from ``x (B, Nq, D)`` to ``context (B, Nk, kdim)`` (default: ``x`` itself).

        ``mask`` is bool, broadcastable to ``(B, H, Nq, Nk)``, ``True`` = may attend, combined
        with the causal mask when ``is_causal``. With a ``cache``, the new keys and values are
        appended and the queries attend to everything cached; ``Nk`` then counts the cache.

        ``position`` is the absolute position of ``x``'s first token for RoPE (default: the
        number of cached tokens; a streaming cache that evicts needs it explicitly).

        Returns ``out (B, Nq, D)``, and the weights ``(B, H, Nq, Nk)`` if ``return_weights``.
        """
        chk.tensor("x", x, ndim=3, floating=True)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x {chk.shape_str(x)} must have D={self.d_model} features")
        if context is not None and self.rope:
            raise ValueError("RoPE encodes positions within one sequence; use it for self-attention, "
                             "not with a cross-attention context")
        source = x if context is None else chk.tensor("context", context, ndim=3, floating=True)
        B, Nq, _ = x.shape
        if position is not None:
            offset = position
        else:
            offset = len(cache) if cache is not None else 0  # absolute position of x's first token
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, Nq, d)
        k = split_heads(self.k_proj(source), self.n_kv_heads)  # (B, Hkv, Nk, d)
        v = split_heads(self.v_proj(source), self.n_kv_heads)  # (B, Hkv, Nk, d)
        if self.rope:
            positions = torch.arange(offset, offset + Nq, device=x.device)  # (Nq,)
            q = apply_rope(q, positions, self.rope_theta, pairing=self.rope_pairing)
            k = apply_rope(k, positions, self.rope_theta, pairing=self.rope_pairing)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, T, d): all keys so far
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Nk, d)
        Nk = k.shape[2]
        if is_causal:
            causal = causal_mask(Nq, Nk).to(x.device)  # (Nq, Nk), bottom-right aligned
            mask = causal if mask is None else mask & causal
        out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, Nq, d), (B, H, Nq, Nk)
        out = self.out_proj(merge_heads(out))  # (B, Nq, D)
        return (out, weights) if return_weights else out

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of ``module``'s weights in a ``MultiHeadAttention``.

        ``nn.MultiheadAttention`` stores the three input projections stacked in one
        ``in_proj_weight`` ``(3D, D)`` (or separately when ``kdim``/``vdim`` differ from
        ``D``), rows ``0:D`` for queries, ``D:2D`` keys, ``2D:3D`` values. Note that it takes
        ``(N, B, D)`` inputs unless built with ``batch_first=True``; this module is always
        batch first.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"from_torch expects an nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention")
        bias = module.in_proj_bias is not None
        if module.in_proj_weight is not None:
            wq, wk, wv = module.in_proj_weight.chunk(3, dim=0)  # each (D, D)
        else:
            wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        mine = cls(module.embed_dim, module.num_heads, bias=bias, kdim=module.kdim,
                   vdim=module.vdim).to(device=wq.device, dtype=wq.dtype)
        with torch.no_grad():
            mine.q_proj.weight.copy_(wq)
            mine.k_proj.weight.copy_(wk)
            mine.v_proj.weight.copy_(wv)
            mine.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                bq, bk, bv = module.in_proj_bias.chunk(3)  # each (D,)
                mine.q_proj.bias.copy_(bq)
                mine.k_proj.bias.copy_(bk)
                mine.v_proj.bias.copy_(bv)
                mine.out_proj.bias.copy_(module.out_proj.bias)
        return mine
