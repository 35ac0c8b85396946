"""A small, honest training loop for the tiny decoder: AdamW, cosine decay, a tqdm bar."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .data import repeated_sequences
from .model import DecoderConfig, TinyDecoder


def next_token_loss(model: TinyDecoder, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``."""
    logits = model(tokens[:, :-1])  # (B, N-1, vocab)
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, N-1)
    return loss.mean() if reduction == "mean" else loss


def train(model: TinyDecoder, *, steps: int = 600, batch: int = 32, length: int | None = None, lr: float = 3e-3,
          period=(4, 16), seed: int = 0, progress: bool = True, time_budget: float | None = None) -> list[float]:
    """Train on repeated random sequences; return the loss of every step.

    Stops early (and says so) if ``time_budget`` seconds run out.
    """
    from tqdm.auto import tqdm

    cfg = model.cfg
    length = length or cfg.max_len
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for step in bar:
        tokens, _ = repeated_sequences(batch, length, cfg.vocab_size, period=period, generator=g)
        loss = next_token_loss(model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if time_budget is not None and time.perf_counter() - start > time_budget:
            bar.write(f"time budget of {time_budget:.0f} s reached after {step + 1} steps")
            break
    model.eval()
    return losses


def tiny_model(seed: int = 0, **overrides) -> TinyDecoder:
    """The course's tiny decoder: 2 layers x 4 heads, d_model 64, RoPE, 32 tokens, context 96."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, d_model=64, n_heads=4, n_layers=2, max_len=96, positions="rope")
    cfg.update(overrides)
    return TinyDecoder(DecoderConfig(**cfg))
