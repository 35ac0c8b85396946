"""Training loops for the tiny decoders: AdamW, a warm-up, cosine decay, gradient clipping.

* :func:`train_model` is the loop a learner writes in notebook 07: any model mapping tokens
  ``(B, N)`` to logits ``(B, N, vocab)``, batches given, held-out loss measured on the way;
* :func:`train` is the quick loop of notebooks 06 and 08: fresh repeated sequences every step.

The recipe is GPT-3's (Brown et al. 2020, appendix B) at toy scale: AdamW (Loshchilov &
Hutter 2019) with betas (0.9, 0.95), a linear warm-up, cosine decay to a tenth of the peak,
the global gradient norm clipped to 1.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from . import _validate as chk
from .data import repeated_sequences
from .model import DecoderConfig, TinyDecoder


def next_token_loss(model: TinyDecoder, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``."""
    logits = model(tokens[:, :-1])  # (B, N-1, vocab)
    loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, N-1)
    return loss.mean() if reduction == "mean" else loss


def lr_at(step: int, *, lr: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """The learning rate of update ``step`` (counted from 0) of ``steps``.

    A linear warm-up, ``lr * (step + 1) / warmup`` for ``step < warmup`` (the first update
    already moves, by ``lr / warmup``), then a cosine from ``lr`` at ``step = warmup`` down
    towards ``min_ratio * lr``, which it would reach at ``step = steps``.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    min_lr = min_ratio * lr
    progress = (step - warmup) / max(1, steps - warmup)  # 0 at the end of the warm-up, < 1 at the last step
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def evaluate(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Mean next-token loss on ``tokens`` in eval mode, without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return next_token_loss(model, tokens).item()
    finally:
        model.train(was_training)


def train_model(model: torch.nn.Module, batches, eval_tokens: torch.Tensor, *, steps: int, lr: float = 3e-3,
                warmup: int = 50, weight_decay: float = 0.1, clip: float = 1.0, eval_every: int = 100,
                progress: bool = False) -> dict:
    """Train ``model`` (tokens ``(B, N)`` -> logits ``(B, N, vocab)``) by next-token prediction.

    Args:
        model: trained in place.
        batches: an iterable of ``(B, N)`` int64 token tensors; update ``t`` uses the ``t``-th
            (a ``(steps, B, N)`` tensor works). The loss of a batch is the mean cross-entropy
            of predicting ``tokens[:, 1:]`` from ``model(tokens[:, :-1])``.
        eval_tokens: ``(E, N)`` held-out sequences, never trained on.
        steps: the number of updates.
        lr, warmup: the peak learning rate and the warm-up length of :func:`lr_at`.
        weight_decay: AdamW's decoupled weight decay (betas (0.9, 0.95), on every parameter).
        clip: the global gradient norm is clipped to this before every update.
        eval_every: the held-out loss is measured (eval mode, no gradients, back to train mode
            after) before the first update, after every ``eval_every`` updates and after the last.
        progress: show a tqdm bar.

    Returns:
        ``{"train_loss": [steps floats, each batch's loss before its update], "lr": [steps
        floats, the learning rate of each update], "eval_loss": [(updates done, held-out loss), ...]}``.
    """
    steps = chk.positive_int("steps", steps)
    eval_every = chk.positive_int("eval_every", eval_every)
    warmup = chk.positive_int("warmup", warmup, allow_zero=True)
    chk.integer_tensor("eval_tokens", eval_tokens, ndim=2)
    if not (lr > 0 and clip > 0 and weight_decay >= 0):
        raise ValueError(f"need lr > 0, clip > 0 and weight_decay >= 0, got lr={lr}, clip={clip}, "
                         f"weight_decay={weight_decay}")
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    history = {"train_loss": [], "lr": [], "eval_loss": [(0, evaluate(model, eval_tokens))]}
    model.train()
    batches = iter(batches)
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for step in bar:
        tokens = next(batches, None)
        if tokens is None:
            raise ValueError(f"batches ran out after {step} batches, steps={steps}")
        chk.integer_tensor("a batch", tokens, ndim=2)
        rate = lr_at(step, lr=lr, warmup=warmup, steps=steps)
        for group in opt.param_groups:
            group["lr"] = rate
        loss = next_token_loss(model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        history["train_loss"].append(loss.item())
        history["lr"].append(rate)
        done = step + 1
        if done % eval_every == 0 or done == steps:
            history["eval_loss"].append((done, evaluate(model, eval_tokens)))
            bar.set_postfix(eval_loss=f"{history['eval_loss'][-1][1]:.3f}")
    return history


def train(model: TinyDecoder, *, steps: int = 600, batch: int = 32, length: int | None = None, lr: float = 3e-3,
          period=(4, 16), seed: int = 0, progress: bool = True, time_budget: float | None = None) -> list[float]:
    """Train on repeated random sequences; return the loss of every step.

    Stops early (and says so) if ``time_budget`` seconds run out.
    """

    cfg = model.cfg
    length = length or cfg.max_len
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    def batch_loss():
        tokens, _ = repeated_sequences(batch, length, cfg.vocab_size, period=period, generator=g)
        return next_token_loss(model, tokens)

    return fit(model, opt, schedule, steps, batch_loss, progress=progress, time_budget=time_budget, every=20)


def tiny_model(seed: int = 0, **overrides) -> TinyDecoder:
    """The course's tiny decoder: 2 layers x 4 heads, d_model 64, RoPE, 32 tokens, context 96."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, d_model=64, n_heads=4, n_layers=2, max_len=96, positions="rope")
    cfg.update(overrides)
    return TinyDecoder(DecoderConfig(**cfg))


def fit(model, opt, schedule, steps: int, batch_loss, progress: bool = True, time_budget: float | None = None,
        every: int = 25) -> list[float]:
    """The course's small training loop: ``steps`` updates of ``batch_loss()`` (a fresh batch's
    loss each call) with gradients clipped to norm 1 and ``schedule`` stepped after each update;
    stops early (and says so) when ``time_budget`` seconds run out. The model is left in eval
    mode. Returns the loss of every update."""
    from tqdm.auto import tqdm

    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for step in bar:
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if step % every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if time_budget is not None and time.perf_counter() - start > time_budget:
            bar.write(f"time budget of {time_budget:.0f} s reached after {step + 1} steps")
            break
    model.eval()
    return losses
