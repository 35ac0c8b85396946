"""The KV cache: decoding one token at a time without recomputing the past.

A decoder generates token ``t+1`` from tokens ``0..t``. The keys and values of the old
tokens do not change when a new token arrives (causal attention never lets them see it),
so we keep them and compute only the new token's query, key and value: one step costs
``O(T d)`` instead of re-running the whole ``O(T^2 d)`` prefix (Pope et al. 2022,
"Efficiently Scaling Transformer Inference").

:func:`decode_step` is the idea in one function, returning a longer cache. :class:`KVCache`
is what real servers do: allocate the whole buffer once and write into it, so no step copies
the past.
"""

from __future__ import annotations

import torch

from . import _validate as chk
from .attention import scaled_dot_product_attention


def decode_step(q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append one token's key and value to the cache and attend with its query.

    Args:
        q_t, k_t, v_t: the new token, ``(B, H, 1, d)``.
        k_cache, v_cache: the past ``T`` tokens, ``(B, H, T, d)`` (``T`` may be 0).

    Returns:
        ``out (B, H, 1, d)``, the last row of causal attention over all ``T + 1`` tokens,
        and the grown caches ``(B, H, T+1, d)``.
    """
    for name, t in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t), ("k_cache", k_cache), ("v_cache", v_cache)):
        chk.tensor(name, t, ndim=4, floating=True)
    chk.same_dtype(q_t=q_t, k_t=k_t, v_t=v_t, k_cache=k_cache, v_cache=v_cache)
    for name, t in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t)):
        if t.shape[2] != 1:
            raise ValueError(f"decode_step: {name} must hold exactly one token (B, H, 1, d), "
                             f"got {chk.shape_str(t)}")
    if (k_cache.shape[:2] != k_t.shape[:2] or k_cache.shape[3] != k_t.shape[3]
            or v_cache.shape[:3] != k_cache.shape[:3] or v_cache.shape[3] != v_t.shape[3]
            or q_t.shape[:2] != k_t.shape[:2] or v_t.shape[:2] != k_t.shape[:2]):
        raise ValueError(f"decode_step: shapes do not fit together: q_t {chk.shape_str(q_t)}, "
                         f"k_t {chk.shape_str(k_t)}, v_t {chk.shape_str(v_t)}, k_cache "
                         f"{chk.shape_str(k_cache)}, v_cache {chk.shape_str(v_cache)}")
    k_cache = torch.cat((k_cache, k_t), dim=2)  # (B, H, T+1, d)
    v_cache = torch.cat((v_cache, v_t), dim=2)  # (B, H, T+1, d)
    out, _ = scaled_dot_product_attention(q_t, k_cache, v_cache)  # (B, H, 1, d): the newest token sees everything
    return out, k_cache, v_cache


class KVCache:
    """A preallocated ``(B, Hkv, max_len, d)`` key and value buffer for one attention layer.

    ``append(k, v)`` writes ``N`` new positions and returns views of everything cached so
    far, ``(B, Hkv, T, d)``; nothing is copied. ``len(cache)`` is ``T``.
    """

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 v_head_dim: int | None = None):
        batch = chk.positive_int("batch", batch)
        n_kv_heads = chk.positive_int("n_kv_heads", n_kv_heads)
        self.max_len = chk.positive_int("max_len", max_len)
        head_dim = chk.positive_int("head_dim", head_dim)
        v_head_dim = head_dim if v_head_dim is None else chk.positive_int("v_head_dim", v_head_dim)
        self.k = torch.zeros(batch, n_kv_heads, self.max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, n_kv_heads, self.max_len, v_head_dim, dtype=dtype, device=device)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        """Bytes held by the two buffers (allocated up front, whatever the fill)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k (B, Hkv, N, d)`` and ``v (B, Hkv, N, dv)``; return all cached keys and values."""
        chk.tensor("k", k, ndim=4)
        chk.tensor("v", v, ndim=4)
        n = k.shape[2]
        if k.dtype != self.k.dtype or v.dtype != self.v.dtype:
            raise TypeError(f"KVCache.append: the cache holds {self.k.dtype}, got k {k.dtype} and v {v.dtype}")
        if (k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3]
                or v.shape[:3] != k.shape[:3] or v.shape[3] != self.v.shape[3]):
            raise ValueError(f"KVCache.append: expected k (B, Hkv, N, d) = ({self.k.shape[0]}, "
                             f"{self.k.shape[1]}, N, {self.k.shape[3]}) and a matching v, got k "
                             f"{chk.shape_str(k)} and v {chk.shape_str(v)}")
        if self.length + n > self.max_len:
            raise ValueError(f"KVCache is full: holds {self.length} of {self.max_len} positions, "
                             f"cannot append {n} more")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]  # (B, Hkv, T, d) views

    def reset(self) -> None:
        """Forget everything (the buffers stay allocated)."""
        self.length = 0


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int = 1,
                   bytes_per_value: int = 2, *, v_head_dim: int | None = None, window: int | None = None,
                   latent_dim: int | None = None, rope_dim: int = 0) -> int:
    """Bytes a KV cache needs: keys and values (x2) for every layer, kv head, position and
    batch row. ``bytes_per_value`` is 2 for fp16/bf16, 4 for fp32, 1 for int8/fp8.

    Keyword-only refinements for today's architectures (notebook 14):

    * ``v_head_dim``: values narrower or wider than keys (DeepSeek's 192-dim keys, 128-dim values);
    * ``window``: sliding-window layers keep at most ``window`` positions (Mistral, Gemma's local
      layers, gpt-oss's banded layers); add two calls for a local/global mix;
    * ``latent_dim`` (and ``rope_dim``): multi-head latent attention (DeepSeek-V2/V3) caches one
      ``latent_dim`` vector plus one shared ``rope_dim`` RoPE key per position and layer, for all
      heads at once; ``n_kv_heads`` and ``head_dim`` then do not enter the count.
    """
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("batch", batch), ("bytes_per_value", bytes_per_value)):
        chk.positive_int(name, value)
    positions = seq_len if window is None else min(seq_len, chk.positive_int("window", window))
    if latent_dim is not None:
        per_position = chk.positive_int("latent_dim", latent_dim) + chk.positive_int("rope_dim", rope_dim, allow_zero=True)
        return n_layers * per_position * positions * batch * bytes_per_value
    if rope_dim:
        raise ValueError(f"rope_dim={rope_dim} only applies with latent_dim (MLA's shared RoPE key)")
    v_dim = head_dim if v_head_dim is None else chk.positive_int("v_head_dim", v_head_dim)
    return n_layers * n_kv_heads * (head_dim + v_dim) * positions * batch * bytes_per_value
