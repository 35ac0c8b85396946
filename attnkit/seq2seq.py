"""Cross-attention and a tiny encoder-decoder Transformer (Vaswani et al. 2017, section 3.1).

An encoder reads the whole source with bidirectional self-attention and hands its output,
the *memory* ``(B, Nk, D)``, to a decoder. Every decoder layer attends to its own past
(causal self-attention) and then, through **cross-attention**, to the memory: queries come
from the decoder, keys and values from the encoder,

    CrossAttention(x, memory) = Concat_h softmax(q_h k_h^T / sqrt(d)) v_h  W_o^T,
    q = x W_q^T, k = memory W_k^T, v = memory W_v^T.

The cross-attention weights say which source position each output position reads: the
*alignment* that Bahdanau, Cho and Bengio (2015, "Neural Machine Translation by Jointly
Learning to Align and Translate") drew as heatmaps for English-French sentence pairs.

The toy task here is reversing a string of digits (``reversal_batch``): output position i
must read source position L - 1 - i, so a trained model's alignment is an anti-diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as chk
from .attention import scaled_dot_product_attention
from .heads import merge_heads, split_heads
from .mha import MultiHeadAttention
from .model import MLP
from .train import fit

# Token ids of the reversal task: padding, start and end of the output, then the digits 0-9.
PAD, BOS, EOS = 0, 1, 2
DIGIT0 = 3
VOCAB = DIGIT0 + 10


def cross_attention(x: torch.Tensor, memory: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    w_v: torch.Tensor, w_o: torch.Tensor, n_heads: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention from ``x`` (queries) to ``memory`` (keys and values).

    Args:
        x: ``(B, Nq, D)``, the decoder's states.
        memory: ``(B, Nk, D)``, the encoder's output.
        w_q, w_k, w_v, w_o: ``(D, D)`` bias-free projections, applied as ``nn.Linear``: ``x @ w.T``.
        n_heads: ``H``; must divide ``D``.
        mask: optional bool broadcastable to ``(B, H, Nq, Nk)``; ``True`` = may attend (typically
            a padding mask of the source, ``(B, 1, 1, Nk)``). A query that may attend to no key
            gets a zero output.

    Returns:
        ``(B, Nq, D)``.
    """
    chk.tensor("x", x, ndim=3, floating=True)
    chk.tensor("memory", memory, ndim=3, floating=True)
    B, Nq, D = x.shape
    if memory.shape[0] != B or memory.shape[2] != D:
        raise ValueError(f"cross_attention: memory must be (B, Nk, D) = ({B}, Nk, {D}) for x "
                         f"{chk.shape_str(x)}, got {chk.shape_str(memory)}")
    Nk = memory.shape[1]
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        chk.tensor(name, w, ndim=2, floating=True)
        if w.shape != (D, D):
            raise ValueError(f"cross_attention: {name} must be (D, D) = ({D}, {D}) for x "
                             f"{chk.shape_str(x)}, got {chk.shape_str(w)}")
    chk.same_dtype(x=x, memory=memory, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    n_heads = chk.positive_int("n_heads", n_heads)
    if D % n_heads:
        raise ValueError(f"cross_attention: n_heads={n_heads} does not divide D={D} (x {chk.shape_str(x)})")
    if mask is not None:
        chk.bool_mask("mask", mask, (B, n_heads, Nq, Nk), "(B, H, Nq, Nk)")
    q = split_heads(x @ w_q.T, n_heads)  # (B, H, Nq, d)
    k = split_heads(memory @ w_k.T, n_heads)  # (B, H, Nk, d)
    v = split_heads(memory @ w_v.T, n_heads)  # (B, H, Nk, d)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, Nq, d)
    return merge_heads(out) @ w_o.T  # (B, Nq, D)


# ---------------------------------------------------------------------------------- the model


@dataclass
class Seq2SeqConfig:
    vocab_size: int = VOCAB
    d_model: int = 64
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    max_len: int = 16  # longest source, and longest decoder input (BOS + output)
    d_mlp: int | None = 128  # None: 4 * d_model


class CrossAttention(nn.Module):
    """Cross-attention as a layer: four bias-free projections and an attention function.

    ``fn`` has the signature of :func:`cross_attention` (the default); pass your own to train
    a model with it.
    """

    def __init__(self, d_model: int, n_heads: int, fn: Callable | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide d_model={d_model}")
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model, bias=False)
                                                                for _ in range(4))
        self.fn = fn or cross_attention

    def forward(self, x, memory, mask=None):
        return self.fn(x, memory, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                       self.out_proj.weight, self.n_heads, mask)  # (B, Nq, D)

    def weights(self, x, memory, mask=None) -> torch.Tensor:
        """The attention weights ``(B, H, Nq, Nk)`` that ``forward`` averages the values with."""
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, Nq, d)
        k = split_heads(self.k_proj(memory), self.n_heads)  # (B, H, Nk, d)
        _, w = scaled_dot_product_attention(q, k, k, mask)  # (B, H, Nq, Nk)
        return w


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: bidirectional self-attention over the source, then an MLP."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)  # (B, Nk, D)
        return x + self.mlp(self.ln2(x))  # (B, Nk, D)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the memory, an MLP."""

    def __init__(self, cfg: Seq2SeqConfig, cross_fn: Callable | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.cross = CrossAttention(cfg.d_model, cfg.n_heads, cross_fn)
        self.ln3 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)

    def forward(self, y, memory, memory_mask):
        y = y + self.self_attn(self.ln1(y), is_causal=True)  # (B, Nq, D)
        y = y + self.cross(self.ln2(y), memory, memory_mask)  # (B, Nq, D)
        return y + self.mlp(self.ln3(y))  # (B, Nq, D)


class EncoderDecoder(nn.Module):
    """A tiny encoder-decoder: shared token embedding, learned positions, pre-norm layers.

    ``cross_fn`` is the cross-attention function every decoder layer calls (default
    :func:`cross_attention`).
    """

    def __init__(self, cfg: Seq2SeqConfig, cross_fn: Callable | None = None):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.src_pos = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model) * 0.02)
        self.tgt_pos = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc_layers))
        self.ln_enc = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg, cross_fn) for _ in range(cfg.n_dec_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def _check(self, name, tokens):
        chk.integer_tensor(name, tokens, ndim=2)
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"{name} {chk.shape_str(tokens)} is longer than max_len={self.cfg.max_len}")

    def encode(self, src: torch.Tensor):
        """``src (B, Nk)`` -> ``(memory (B, Nk, D), memory_mask (B, 1, 1, Nk))``; PAD tokens are masked."""
        self._check("src", src)
        mask = (src != PAD)[:, None, None, :]  # (B, 1, 1, Nk)
        x = self.tok_emb(src) + self.src_pos[:src.shape[1]]  # (B, Nk, D)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.ln_enc(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
               return_weights: bool = False):
        """``tgt_in (B, Nq)`` (BOS, then the output so far) -> logits ``(B, Nq, vocab)``.

        With ``return_weights``, also every decoder layer's cross-attention weights, a list of
        ``(B, H, Nq, Nk)`` tensors.
        """
        self._check("tgt_in", tgt_in)
        y = self.tok_emb(tgt_in) + self.tgt_pos[:tgt_in.shape[1]]  # (B, Nq, D)
        weights = []
        for layer in self.decoder:
            if return_weights:
                h = layer.ln1(y)
                h = y + layer.self_attn(h, is_causal=True)
                weights.append(layer.cross.weights(layer.ln2(h), memory, memory_mask))
            y = layer(y, memory, memory_mask)
        logits = self.head(self.ln_f(y))  # (B, Nq, vocab)
        return (logits, weights) if return_weights else logits

    def forward(self, src, tgt_in, return_weights: bool = False):
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask, return_weights)


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, src: torch.Tensor, max_new_tokens: int | None = None) -> torch.Tensor:
    """Encode ``src`` once, then append the most likely next token until every row has said EOS.

    Returns ``(B, T)`` tokens after BOS (EOS included, PAD after it); ``T <= max_new_tokens``
    (default ``max_len - 1``).
    """
    was_training = model.training
    model.eval()
    memory, mask = model.encode(src)
    B = src.shape[0]
    steps = model.cfg.max_len - 1 if max_new_tokens is None else chk.positive_int("max_new_tokens", max_new_tokens)
    tokens = torch.full((B, 1), BOS, dtype=torch.long)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(steps):
        logits = model.decode(tokens, memory, mask)[:, -1]  # (B, vocab)
        nxt = logits.argmax(-1).masked_fill(done, PAD)  # (B,)
        tokens = torch.cat((tokens, nxt[:, None]), 1)  # (B, t + 1)
        done |= nxt == EOS
        if done.all():
            break
    model.train(was_training)
    return tokens[:, 1:]


# ---------------------------------------------------------------------------------- the data


def digit_strings(n: int, lengths: tuple[int, int], *, generator: torch.Generator | None = None):
    """``n`` random digit strings as a list of lists of ints 0-9, lengths drawn from ``[low, high]``."""
    low, high = lengths
    sizes = torch.randint(low, high + 1, (n,), generator=generator).tolist()
    digits = torch.randint(0, 10, (n, high), generator=generator).tolist()
    return [row[:s] for row, s in zip(digits, sizes)]


def encode_reversal(strings, max_len: int | None = None):
    """``(src (B, Nk), tgt (B, Nt))`` token tensors for a list of digit strings.

    ``src`` is the digits (as ids ``DIGIT0 + digit``), right-padded with PAD; ``tgt`` is BOS,
    the digits reversed, EOS, then PAD. A model reads ``tgt[:, :-1]`` and predicts ``tgt[:, 1:]``.
    """
    longest = max(len(s) for s in strings)
    n_src, n_tgt = (longest, longest + 2) if max_len is None else (max_len, max_len + 2)
    src = torch.full((len(strings), n_src), PAD, dtype=torch.long)
    tgt = torch.full((len(strings), n_tgt), PAD, dtype=torch.long)
    for b, s in enumerate(strings):
        src[b, :len(s)] = torch.tensor(s, dtype=torch.long) + DIGIT0
        tgt[b, 0] = BOS
        tgt[b, 1:len(s) + 1] = torch.tensor(s[::-1], dtype=torch.long) + DIGIT0
        tgt[b, len(s) + 1] = EOS
    return src, tgt


def decode_digits(tokens: torch.Tensor) -> list[str]:
    """Token rows -> digit strings, stopping at the first EOS (other non-digits shown as '?')."""
    out = []
    for row in tokens.tolist():
        chars = []
        for t in row:
            if t == EOS or t == PAD:
                break
            chars.append(str(t - DIGIT0) if DIGIT0 <= t < DIGIT0 + 10 else "?")
        out.append("".join(chars))
    return out


def reversal_batch(batch: int, lengths: tuple[int, int] = (4, 10), *, generator: torch.Generator | None = None,
                   exclude: set | None = None):
    """A batch of the reversal task (see :func:`encode_reversal`), skipping strings in ``exclude``."""
    strings = digit_strings(batch, lengths, generator=generator)
    if exclude:
        strings = [s for s in strings if tuple(s) not in exclude] or strings[:1]
    return encode_reversal(strings)


def sequence_loss(model: EncoderDecoder, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``tgt[:, 1:]`` given ``src`` and ``tgt[:, :-1]``; PAD targets do not count."""
    logits = model(src, tgt[:, :-1])  # (B, Nt - 1, vocab)
    return F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=PAD)


def train(model: EncoderDecoder, *, steps: int = 1200, batch: int = 64, lr: float = 2e-3,
          lengths: tuple[int, int] = (4, 10), exclude: set | None = None, seed: int = 0,
          time_budget: float | None = None, progress: bool = True) -> list[float]:
    """Train on fresh random strings (never one in ``exclude``) with AdamW, warm-up and cosine decay.

    Returns the loss of every step; stops early (and says so) when ``time_budget`` seconds run out.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    def batch_loss():
        src, tgt = reversal_batch(batch, lengths, generator=g, exclude=exclude)
        return sequence_loss(model, src, tgt)

    return fit(model, opt, schedule, steps, batch_loss, progress=progress, time_budget=time_budget, every=25)


@torch.no_grad()
def accuracy(model: EncoderDecoder, strings) -> tuple[float, float]:
    """Greedy-decoding accuracy on digit strings: (whole strings exactly right, digits right)."""
    src, _ = encode_reversal(strings)
    got = decode_digits(greedy_decode(model, src))
    want = ["".join(str(d) for d in reversed(s)) for s in strings]
    exact = sum(g == w for g, w in zip(got, want)) / len(strings)
    right = sum(sum(a == b for a, b in zip(g, w)) for g, w in zip(got, want))
    return exact, right / sum(len(w) for w in want)


def tiny_seq2seq(seed: int = 0, cross_fn: Callable | None = None, **overrides) -> EncoderDecoder:
    """The course's encoder-decoder: 2 + 2 layers x 4 heads, d_model 64, MLP 128, inputs up to 16 tokens."""
    torch.manual_seed(seed)
    return EncoderDecoder(Seq2SeqConfig(**overrides), cross_fn)
