"""Streaming attention with a bounded KV cache, and attention sinks (Xiao et al. 2023,
"Efficient Streaming Language Models with Attention Sinks").

A model that must run forever cannot keep every key and value. The obvious fix, a sliding
window over the last ``W`` tokens, turns out to break trained models as soon as the first
tokens are evicted: softmax needs somewhere to put weight a query does not want to spend,
and trained heads learn to park it on the first tokens ("sinks"). Keeping those few
tokens plus the window restores the model. :func:`streaming_loss` measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate as chk
from .kv_cache import KVCache


def _evict(cache: KVCache, window: int, sinks: int) -> None:
    """Keep the first ``sinks`` and the last ``window - sinks`` positions of ``cache``."""
    T = len(cache)
    if T <= window:
        return
    keep = torch.cat((torch.arange(sinks), torch.arange(T - (window - sinks), T)))  # (window,)
    for buf in (cache.k, cache.v):
        buf[:, :, :window] = buf[:, :, keep]
    cache.length = window


@torch.no_grad()
def streaming_loss(model, tokens: torch.Tensor, window: int | None, sinks: int = 0) -> torch.Tensor:
    """Per-position next-token loss ``(B, N-1)`` when decoding token by token with a cache
    that holds at most ``window`` positions (``None``: everything), the first ``sinks`` of
    which are never evicted. Positions keep their absolute RoPE angles, so distances
    inside the cache stay right."""
    chk.integer_tensor("tokens", tokens, ndim=2)
    B, N = tokens.shape
    if window is not None:
        window = chk.positive_int("window", window)
        sinks = chk.positive_int("sinks", sinks, allow_zero=True)
        if sinks >= window:
            raise ValueError(f"sinks ({sinks}) must be fewer than the window ({window})")
    caches = model.new_caches(B, N + 1)
    losses = []
    for t in range(N - 1):
        # the absolute position of this token, whatever the cache still holds
        logits = model(tokens[:, t:t + 1], caches, position=t)  # (B, 1, vocab)
        losses.append(F.cross_entropy(logits[:, 0], tokens[:, t + 1], reduction="none"))
        if window is not None:
            for cache in caches:
                _evict(cache, window, sinks)
    return torch.stack(losses, dim=1)  # (B, N-1)

