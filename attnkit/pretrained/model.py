"""The shipped byte-level language model: a small decoder-only Transformer.

GPT's recipe (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners")
with pre-norm blocks (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture") and rotary positions (Su et al. 2021, "RoFormer"), over the 256 byte values:

    x = embed(bytes)
    for each layer:  x = x + Attention(LayerNorm(x));  x = x + MLP(LayerNorm(x))
    logits = unembed(LayerNorm(x))

Written out head by head so that the forward pass can be opened up: it can return every
layer's attention weights and every head's output, scale heads (``head_scale``: 0 is a
zero-ablation), replace a head's output with another run's (``head_patch``: activation
patching, Vig et al. 2020; Meng et al. 2022), and restrict attention to a sliding window
with a few always-visible first positions (``attn_window``, ``keep_first``: the attention
sink of StreamingLLM, Xiao et al. 2023, "Efficient Streaming Language Models with
Attention Sinks").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ByteLMConfig:
    """Sizes of a :class:`ByteLM`. ``d_head = d_model // n_heads``."""

    n_layers: int = 4
    n_heads: int = 8
    d_model: int = 256
    max_len: int = 256
    d_mlp: int = 1024
    vocab_size: int = 256
    rope_theta: float = 10000.0

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "d_model", "max_len", "d_mlp", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ByteLMConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.d_head % 2:
            raise ValueError(f"RoPE needs an even d_head, got d_model/n_heads = {self.d_head}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def rope_tables(max_len: int, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``(max_len, d_head/2)``: pair ``i`` at position ``p`` turns by
    ``p * theta^(-2i/d_head)`` (computed in float64, stored in float32)."""
    freqs = theta ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)  # (d/2,)
    angle = torch.arange(max_len, dtype=torch.float64)[:, None] * freqs  # (N, d/2)
    return angle.cos().float(), angle.sin().float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with interleaved pairs ``(x[2i], x[2i+1])``; ``x (B, H, N, d)``, ``cos/sin (N, d/2)``."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, N, d/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)  # (B, H, N, d)


def visibility_mask(T: int, attn_window: int | None = None, keep_first: int = 0,
                    device=None) -> torch.Tensor:
    """``(T, T)`` bool, True where query ``i`` may see key ``j``: ``j <= i`` and, with a
    window, ``i - j < attn_window`` or ``j < keep_first``."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    mask = j <= i
    if attn_window is not None:
        mask = mask & ((i - j < attn_window) | (j < keep_first))
    return mask


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE, opened up head by head."""

    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def heads(self, x: torch.Tensor, cos, sin):
        """``x (B, N, D)`` -> rotated ``q, k`` and ``v``, each ``(B, H, N, d)``."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def forward(self, x, cos, sin, mask=None, *, need_weights=False, scale=None, patch=None):
        """Returns ``(output (B, N, D), weights (B, H, N, N) or None, head_out (B, H, N, d))``.

        ``mask`` (N, N) bool or None for plain causal; ``scale`` (H,) multiplies each head's
        output; ``patch`` {head: (B, N, d)} replaces it (before the scale).
        """
        B, N, D = x.shape
        q, k, v = self.heads(x, cos, sin)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, N, N)
            if mask is None:
                mask = visibility_mask(N, device=x.device)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # (B, H, N, N)
            o = weights @ v  # (B, H, N, d)
        elif mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, d)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, d)
        if patch:
            o = o.clone()
            for h, value in patch.items():
                o[:, h] = value
        if scale is not None:
            o = o * scale[None, :, None, None]  # (B, H, N, d)
        return self.out(o.transpose(1, 2).reshape(B, N, D)), weights, o  # (B, N, D)


class MLP(nn.Module):
    """Position-wise feed-forward network ``D -> d_mlp -> D`` with a GELU."""

    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))  # (B, N, D) -> (B, N, d_mlp) -> (B, N, D)


class Block(nn.Module):
    """One pre-norm block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, **kw):
        a, weights, head_out = self.attn(self.ln1(x), cos, sin, mask, **kw)
        x = x + a  # (B, N, D)
        x = x + self.mlp(self.ln2(x))  # (B, N, D)
        return x, weights, head_out


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class ByteLM(nn.Module):
    """Byte embedding, ``n_layers`` pre-norm blocks with RoPE, a final LayerNorm, an unembedding."""

    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.max_len, cfg.d_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_len, d/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, scheme: str = "gpt2"):
        """``"gpt2"``: every matrix ``N(0, 0.02)``, the residual outputs (attention and MLP
        down-projections) scaled by ``1/sqrt(2 n_layers)`` (Radford et al. 2019). ``"torch"``
        (the shipped model): PyTorch's defaults (linear maps uniform in ``+-1/sqrt(fan_in)``,
        embeddings ``N(0, 1)``).

        Measured here: on the toy repeated sequences of notebook 06 a 2-layer ByteLM with
        ``"torch"`` grows its induction heads in about 400 steps (loss 3.2 -> 0.7), with
        ``"gpt2"`` not within 600 (loss 1.9). On the standard library, an earlier 1800-step
        ``"gpt2"`` model grew none; the shipped ``"torch"`` model (with repeated strings in its
        batches) has one by step 1000 (score 0.19 on repeated random names) and 0.87 at 4000.
        """
        if scheme == "torch":
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                    module.reset_parameters()
            return
        if scheme != "gpt2":
            raise ValueError(f"init scheme must be 'gpt2' or 'torch', got {scheme!r}")
        for name, p in self.named_parameters():
            if p.ndim == 2:
                residual = name.endswith(("out.weight", "down.weight"))
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers) if residual else 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _validate(self, idx, head_scale, head_patch, attn_window, keep_first):
        cfg = self.config
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of byte ids (B, T) int64, got {type(idx).__name__}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"idx must be an integer tensor of byte ids (B, T), got dtype {idx.dtype} "
                            f"with shape {tuple(idx.shape)}")
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}; "
                             "add a batch dimension with idx[None]")
        B, T = idx.shape
        if T == 0 or T > cfg.max_len:
            raise ValueError(f"idx has T={T} bytes; the model reads 1 to max_len={cfg.max_len}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size):
            raise ValueError(f"idx holds ids outside 0..{cfg.vocab_size - 1} (min {int(idx.min())}, "
                             f"max {int(idx.max())}): encode text with tokenizer.encode")
        if head_scale is not None:
            if not isinstance(head_scale, torch.Tensor) or not head_scale.is_floating_point():
                raise TypeError("head_scale must be a floating-point tensor of shape "
                                f"(n_layers, n_heads) = ({cfg.n_layers}, {cfg.n_heads})")
            if tuple(head_scale.shape) != (cfg.n_layers, cfg.n_heads):
                raise ValueError(f"head_scale must have shape (n_layers, n_heads) = ({cfg.n_layers}, "
                                 f"{cfg.n_heads}), got {tuple(head_scale.shape)}")
        if head_patch is not None:
            if not isinstance(head_patch, dict):
                raise TypeError(f"head_patch must be a dict {{(layer, head): (B, T, d_head)}}, "
                                f"got {type(head_patch).__name__}")
            for key, value in head_patch.items():
                if (not isinstance(key, tuple) or len(key) != 2
                        or not all(isinstance(k, int) and not isinstance(k, bool) for k in key)):
                    raise TypeError(f"head_patch keys must be (layer, head) int pairs, got {key!r}")
                layer, head = key
                if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
                    raise ValueError(f"head_patch key {key}: layer must be in 0..{cfg.n_layers - 1}, "
                                     f"head in 0..{cfg.n_heads - 1}")
                if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    raise TypeError(f"head_patch[{key}] must be a floating-point tensor (B, T, d_head)")
                if tuple(value.shape) != (B, T, cfg.d_head):
                    raise ValueError(f"head_patch[{key}] must have shape (B, T, d_head) = "
                                     f"({B}, {T}, {cfg.d_head}), got {tuple(value.shape)}")
        if attn_window is not None:
            _check_int("attn_window", attn_window, 1)
        _check_int("keep_first", keep_first, 0)

    def forward(self, idx: torch.Tensor, *, return_attention: bool = False,
                return_head_outputs: bool = False, head_scale: torch.Tensor | None = None,
                head_patch: dict | None = None, attn_window: int | None = None, keep_first: int = 0):
        """``idx (B, T)`` byte ids -> logits ``(B, T, 256)`` for the next byte at every position.

        Args:
            return_attention: also return a list (one per layer) of ``(B, H, T, T)``
                post-softmax attention weights.
            return_head_outputs: also return a list (one per layer) of ``(B, H, T, d_head)``:
                what each head hands to the output projection (its weighted sum of values,
                after ``head_patch`` and ``head_scale`` when they are given).
            head_scale: ``(n_layers, n_heads)`` factors on each head's output (0 = ablate).
            head_patch: ``{(layer, head): (B, T, d_head)}`` replacing that head's output
                (applied before ``head_scale``).
            attn_window: each query sees only its last ``attn_window`` keys (itself included).
            keep_first: with a window, the first ``keep_first`` positions stay visible too.

        Returns ``logits``, ``(logits, attn)``, ``(logits, head_out)`` or
        ``(logits, attn, head_out)``.
        """
        self._validate(idx, head_scale, head_patch, attn_window, keep_first)
        B, T = idx.shape
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, d/2)
        mask = None if attn_window is None else visibility_mask(T, attn_window, keep_first, idx.device)
        patches = [{} for _ in self.blocks]
        for (layer, head), value in (head_patch or {}).items():
            patches[layer][head] = value.to(self.embed.weight.dtype)
        x = self.embed(idx)  # (B, T, D)
        attn, head_out = [], []
        for layer, block in enumerate(self.blocks):
            scale = None if head_scale is None else head_scale[layer].to(x)
            x, weights, o = block(x, cos, sin, mask, need_weights=return_attention,
                                  scale=scale, patch=patches[layer])
            attn.append(weights)
            head_out.append(o)
        logits = self.unembed(self.ln_f(x))  # (B, T, 256)
        extra = ((attn,) if return_attention else ()) + ((head_out,) if return_head_outputs else ())
        return (logits, *extra) if extra else logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, *, temperature: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``n`` sampled bytes to ``idx (B, T)``; ``temperature == 0`` is greedy.

        Keeps a cache of every layer's rotated keys and values, so each new byte costs one
        position of work; when the context reaches ``max_len`` it restarts from the last
        ``max_len // 2`` bytes (RoPE only sees distances, so the restart is exact for what
        the window keeps).
        """
        self._validate(idx, None, None, None, 0)
        _check_int("n", n, 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        out = idx
        context = idx[:, -self.config.max_len:]
        cache = None
        for _ in range(n):
            if cache is None:
                logits, cache = self._prefill(context)
            else:
                logits = self._extend(out[:, -1:], cache)
            last = logits[:, -1].float()  # (B, 256)
            if temperature == 0:
                nxt = last.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = (last / temperature).softmax(dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            out = torch.cat((out, nxt), dim=1)
            if cache["len"] >= self.config.max_len:
                context, cache = out[:, -(self.config.max_len // 2):], None
        return out

    def _prefill(self, idx):
        """Run ``idx (B, T)`` and keep every layer's keys and values."""
        B, T = idx.shape
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)
        ks, vs = [], []
        for block in self.blocks:
            h = block.ln1(x)
            q, k, v = block.attn.heads(h, cos, sin)  # (B, H, T, d) each
            ks.append(k)
            vs.append(v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
            x = x + block.attn.out(o.transpose(1, 2).reshape(B, T, -1))
            x = x + block.mlp(block.ln2(x))
        return self.unembed(self.ln_f(x)), {"k": ks, "v": vs, "len": T}

    def _extend(self, idx, cache):
        """One new byte per row, ``idx (B, 1)``, at position ``cache["len"]``."""
        B = idx.shape[0]
        p = cache["len"]
        cos, sin = self.rope_cos[p:p + 1], self.rope_sin[p:p + 1]
        x = self.embed(idx)  # (B, 1, D)
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.heads(block.ln1(x), cos, sin)  # (B, H, 1, d)
            cache["k"][layer] = torch.cat((cache["k"][layer], k), dim=2)  # (B, H, p + 1, d)
            cache["v"][layer] = torch.cat((cache["v"][layer], v), dim=2)
            o = F.scaled_dot_product_attention(q, cache["k"][layer], cache["v"][layer])  # (B, H, 1, d)
            x = x + block.attn.out(o.transpose(1, 2).reshape(B, 1, -1))
            x = x + block.mlp(block.ln2(x))
        cache["len"] = p + 1
        return self.unembed(self.ln_f(x))  # (B, 1, 256)
