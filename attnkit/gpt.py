"""The decoder a learner builds in notebook 07, part by part, as they write it.

Three modules, in the order the notebook builds them (the GPT recipe of Radford et al. 2018/2019,
pre-norm as in Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"):

* :class:`CausalSelfAttention`: four projections without bias, the heads split out, RoPE on
  queries and keys (Su et al. 2021), a causal mask, softmax, the heads merged back;
* :class:`DecoderBlock`: ``x = x + attn(ln1(x))``, then ``x = x + mlp(ln2(x))``;
* :class:`GPT`: a token embedding, a stack of blocks, a final LayerNorm and an unembedding.

Nothing here is new: attention is notebook 03's, the mask 04's, the heads 05's, RoPE 06's.
:class:`attnkit.TinyDecoder` is the same model with a KV cache and grouped-query attention
(notebook 08); this one is kept to what notebook 07 asks for, so that it reads in one sitting.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validate as chk
from .attention import scaled_dot_product_attention
from .heads import merge_heads, split_heads
from .masks import causal_mask
from .model import MLP, DecoderConfig, add_embeddings
from .rope import apply_rope


def _config(cfg) -> DecoderConfig:
    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"expected an attnkit.DecoderConfig, got {type(cfg).__name__}")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"n_heads={cfg.n_heads} does not divide d_model={cfg.d_model}")
    if cfg.n_kv_heads not in (None, cfg.n_heads):
        raise ValueError(f"CausalSelfAttention is plain multi-head attention (n_kv_heads={cfg.n_kv_heads} asks for "
                         "grouped-query attention: use attnkit.MultiHeadAttention, notebook 08)")
    if cfg.positions == "rope" and (cfg.d_model // cfg.n_heads) % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d = {cfg.d_model} / {cfg.n_heads}")
    return cfg


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``(B, N, D) -> (B, N, D)``.

    ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` are ``nn.Linear(D, D, bias=False)``: ``4 D^2``
    parameters. Head ``h`` reads features ``h*d:(h+1)*d`` of the projections (``d = D / H``);
    with ``cfg.positions == "rope"`` queries and keys are rotated (interleaved pairs) at
    positions ``0 .. N-1``. Token ``i`` attends to tokens ``0 .. i`` with scale ``1/sqrt(d)``.
    ``forward(x, return_weights=True)`` also returns the weights ``(B, H, N, N)``.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        cfg = _config(cfg)
        D = cfg.d_model
        self.n_heads, self.rope = cfg.n_heads, cfg.positions == "rope"
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        chk.tensor("x", x, ndim=3, floating=True)
        B, N, D = x.shape
        if D != self.q_proj.in_features:
            raise ValueError(f"x {chk.shape_str(x)} must have D={self.q_proj.in_features} features")
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, N, d)
        k = split_heads(self.k_proj(x), self.n_heads)  # (B, H, N, d)
        v = split_heads(self.v_proj(x), self.n_heads)  # (B, H, N, d)
        if self.rope:
            positions = torch.arange(N, device=x.device)  # (N,)
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        mask = causal_mask(N, N).to(x.device)  # (N, N): key j <= query i
        out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, N, d), (B, H, N, N)
        out = self.out_proj(merge_heads(out))  # (B, N, D)
        return (out, weights) if return_weights else out


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``; ``(B, N, D) -> (B, N, D)``.

    ``ln1``, ``ln2``: ``nn.LayerNorm(D)``; ``attn``: :class:`CausalSelfAttention`; ``mlp``:
    ``D -> d_mlp -> D`` with a GELU and biases (``d_mlp = cfg.d_mlp or 4 D``).
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        cfg = _config(cfg)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, N, D)
        return x + self.mlp(self.ln2(x))  # (B, N, D)


class GPT(nn.Module):
    """Token embedding, ``cfg.n_layers`` blocks, a final LayerNorm, an unembedding: ``(B, N) -> (B, N, vocab)``.

    ``block`` is the block class (default :class:`DecoderBlock`); it must have ``ln1`` and an
    ``attn`` that accepts ``return_weights=True``, so that ``forward(tokens, return_weights=True)``
    can also return every layer's weights, a list of ``(B, H, N, N)`` tensors.
    """

    def __init__(self, cfg: DecoderConfig, block: type[nn.Module] = DecoderBlock):
        super().__init__()
        add_embeddings(self, cfg)
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, return_weights: bool = False):
        chk.integer_tensor("tokens", tokens, ndim=2)
        N = tokens.shape[1]
        if N > self.cfg.max_len:
            raise ValueError(f"tokens {chk.shape_str(tokens)}: {N} positions exceed max_len={self.cfg.max_len}")
        x = self.tok_emb(tokens)  # (B, N, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb[:N]  # (B, N, D)
        weights = []
        for blk in self.blocks:
            if return_weights:  # the same attention the block is about to run, asked for its weights
                weights.append(blk.attn(blk.ln1(x), return_weights=True)[1])  # (B, H, N, N)
            x = blk(x)  # (B, N, D)
        logits = self.head(self.ln_f(x))  # (B, N, vocab)
        return (logits, weights) if return_weights else logits
