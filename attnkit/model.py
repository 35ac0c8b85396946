"""A tiny decoder-only Transformer built from attnkit's own parts.

The GPT recipe (Radford et al. 2018/2019) with pre-norm blocks (Xiong et al. 2020, "On
Layer Normalization in the Transformer Architecture"): every block adds an attention
sublayer and an MLP sublayer to a residual stream,

    x = x + Attention(LayerNorm(x))
    x = x + MLP(LayerNorm(x))

Small enough to train on a CPU in a minute, big enough to grow induction heads
(Olsson et al. 2022, "In-context Learning and Induction Heads").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import _validate as chk
from .kv_cache import KVCache
from .mha import MultiHeadAttention
from .positions import sinusoidal_positions

POSITION_KINDS = ("learned", "sinusoidal", "rope", "none")


@dataclass
class DecoderConfig:
    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    n_kv_heads: int | None = None
    max_len: int = 128
    d_mlp: int | None = None  # default 4 * d_model
    positions: str = "learned"  # one of POSITION_KINDS

    def __post_init__(self):
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {self.positions!r}")


class MLP(nn.Module):
    """Position-wise feed-forward network: ``D -> d_mlp -> D`` with a GELU."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp)
        self.down = nn.Linear(d_mlp, d_model)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))  # (B, N, D) -> (B, N, d_mlp) -> (B, N, D)


class Block(nn.Module):
    """One pre-norm decoder block: causal self-attention then an MLP, each on the residual stream."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads,
                                       rope=cfg.positions == "rope")
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)

    def forward(self, x, cache: KVCache | None = None, return_weights: bool = False, position: int | None = None):
        a = self.attn(self.ln1(x), is_causal=True, cache=cache, return_weights=return_weights, position=position)
        a, weights = a if return_weights else (a, None)
        x = x + a  # (B, N, D)
        x = x + self.mlp(self.ln2(x))  # (B, N, D)
        return (x, weights) if return_weights else x


def add_embeddings(model: nn.Module, cfg: DecoderConfig) -> None:
    """Give ``model`` its ``cfg``, a token embedding ``tok_emb`` and ``pos_emb``: learned
    ``(max_len, d_model)`` positions, the sinusoidal table as a buffer, or None (RoPE lives inside
    attention; "none" has no positions at all). Shared by :class:`TinyDecoder` and
    :class:`attnkit.gpt.GPT`; called first, so the random draws come in the same order."""
    model.cfg = cfg
    model.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
    if cfg.positions == "learned":
        model.pos_emb = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model) * 0.02)
    elif cfg.positions == "sinusoidal":
        model.register_buffer("pos_emb", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
    else:
        model.pos_emb = None


class TinyDecoder(nn.Module):
    """Token embedding, positions, ``n_layers`` blocks, a final LayerNorm and an unembedding."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        add_embeddings(self, cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One empty KV cache per layer, for up to ``max_len`` (default ``cfg.max_len``) tokens."""
        return [blk.attn.new_cache(batch, max_len or self.cfg.max_len) for blk in self.blocks]

    def forward(self, tokens: torch.Tensor, caches: list[KVCache] | None = None,
                return_weights: bool = False, position: int | None = None):
        """``tokens (B, N)`` int -> logits ``(B, N, vocab)``; with ``caches``, ``tokens`` continue the cached ones.

        With ``return_weights``, also the attention weights of every layer, a list of
        ``(B, H, N, Nk)`` tensors. ``position`` is the absolute position of the first token
        (default: the number of cached tokens; a cache that evicts needs it explicitly).
        """
        chk.integer_tensor("tokens", tokens, ndim=2)
        B, N = tokens.shape
        offset = position if position is not None else (len(caches[0]) if caches else 0)
        if offset + N > self.cfg.max_len:
            raise ValueError(f"sequence of {offset + N} tokens (cached {offset} + new {N}) exceeds "
                             f"max_len={self.cfg.max_len}")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"need one cache per layer: {len(self.blocks)}, got {len(caches)}")
        x = self.tok_emb(tokens)  # (B, N, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb[offset:offset + N]  # (B, N, D)
        all_weights = []
        for i, blk in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if return_weights:
                x, w = blk(x, cache, return_weights=True, position=offset)
                all_weights.append(w)
            else:
                x = blk(x, cache, position=offset)
        logits = self.head(self.ln_f(x))  # (B, N, vocab)
        return (logits, all_weights) if return_weights else logits


@torch.no_grad()
def generate(model: TinyDecoder, prompt: torch.Tensor, max_new_tokens: int, *,
             use_cache: bool = True) -> torch.Tensor:
    """Greedy decoding: append the most likely next token ``max_new_tokens`` times.

    With ``use_cache`` the prompt is run once to fill a KV cache per layer and each new
    token costs one single-token forward pass; without, the whole sequence is re-run every
    step. Both return the same ``(B, T + max_new_tokens)`` tokens.
    """
    chk.integer_tensor("prompt", prompt, ndim=2)
    max_new_tokens = chk.positive_int("max_new_tokens", max_new_tokens, allow_zero=True)
    B, T = prompt.shape
    if T == 0:
        raise ValueError("generate needs a prompt of at least one token, got shape (B, 0)")
    total = T + max_new_tokens
    if total > model.cfg.max_len:
        raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"the model's max_len={model.cfg.max_len}")
    tokens = prompt
    caches = model.new_caches(B, total) if use_cache else None
    step_input = prompt  # with a cache, only tokens the model has not seen yet
    for _ in range(max_new_tokens):
        logits = model(step_input if use_cache else tokens, caches)  # (B, n, vocab)
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        tokens = torch.cat((tokens, next_token), dim=1)  # (B, T + step + 1)
        step_input = next_token
    return tokens
