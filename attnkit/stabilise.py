"""Keeping attention logits in range: QK-norm and logit soft-capping.

Large models trained for long can grow attention logits until softmax is one-hot: the
gradients through it vanish, and in low precision the loss spikes (Dehghani et al. 2023,
"Scaling Vision Transformers to 22 Billion Parameters"; Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities"). Two fixes in today's models:

* **QK-norm** (ViT-22B, OLMo 2, Gemma 3, Qwen3): RMS-normalise every query and key over the
  head dimension (with a learned gain) before the dot product. Then
  ``|q . k| / sqrt(d) <= |g_q| |g_k| sqrt(d) max``: a logit can only grow through the gains.
* **soft-capping** (Gemma 2, Grok-1): squash each logit smoothly into ``(-cap, cap)`` with
  ``cap * tanh(s / cap)`` (Gemma 2: ``cap = 50`` for attention logits). Nearly the identity for
  ``|s| << cap``. It is a function of the score alone, i.e. a FlexAttention ``score_mod``
  (notebook 12); Gemma 3 replaced it with QK-norm, which fused attention kernels handle for free.
"""

from __future__ import annotations

import numbers

import torch

from . import _validate as chk


def qk_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last (head) dimension: ``x / rms(x) * weight``; ``x (..., N, d)``."""
    chk.tensor("x", x, min_ndim=1, floating=True)
    if weight is not None:
        chk.tensor("weight", weight, ndim=1, floating=True)
        if weight.shape[0] != x.shape[-1]:
            raise ValueError(f"qk_norm: weight {chk.shape_str(weight)} must have one gain per feature of x {chk.shape_str(x)}")
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (..., N, d), unit RMS
    return out if weight is None else out * weight


def softcap(cap: float):
    """A FlexAttention ``score_mod`` that squashes scaled scores into ``(-cap, cap)``:
    ``cap * tanh(score / cap)``."""
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap > 0:
        raise ValueError(f"cap must be a positive number, got {cap!r}")
    cap = float(cap)

    def softcap_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return softcap_mod
