"""Learned attention sinks: one extra logit per head that takes probability mass and returns
nothing (OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model Card"; the idea of Xiao et al. 2023,
"Efficient Streaming Language Models with Attention Sinks", and of Miller 2023, "Attention Is
Off By One").

Softmax weights always sum to 1, so a head that has nothing useful to read must still read
*something*. Trained models learn to park that weight on a token they can ignore, typically
the first one (StreamingLLM's "attention sinks"), which then has to stay in the cache forever.
Three ways to give a head an explicit place to put nothing:

* **token sinks** (StreamingLLM): keep the first few real tokens in the cache; the model
  learned to dump weight on them; they cost cache slots and their values leak in a little.
* **softmax + 1** (Miller): add 1 to the denominator, ``exp(s_j) / (1 + sum_j' exp(s_j'))``.
* **learned sinks** (gpt-oss): a learned logit ``sink_h`` per head in the denominator,

      w_ij = exp(s_ij) / (exp(sink_h) + sum_j' exp(s_ij')),     out_i = sum_j w_ij v_j,

  so the weights over real keys sum to less than 1, and a query that matches nothing can put
  almost all its weight in the sink. "softmax + 1" is ``sink_h = 0``. It is also attention over
  one extra key whose score is ``sink_h`` for every query and whose value is zero.

A row is never fully masked any more: the sink is always there, so every row has a finite
maximum and a query that may see no key gets zeros, naturally.
"""

from __future__ import annotations

import math

import torch

from . import _validate as chk
from .attention import check_qkv


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                   is_causal: bool = False) -> torch.Tensor:
    """Softmax attention with a learned sink logit per head.

    Args:
        q: ``(..., H, Nq, d)``; k: ``(..., H, Nk, d)``; v: ``(..., H, Nk, dv)``; batch dimensions
            broadcast, and dimension -3 of the scores is the head axis.
        sinks: ``(H,)`` one logit per head, not scaled by ``1/sqrt(d)``.
        is_causal: bottom-right causal mask (query ``i`` sits at ``i + Nk - Nq``).

    Returns:
        ``(..., H, Nq, dv)``.
    """
    batch = check_qkv(q, k, v, "sink_attention")
    chk.tensor("sinks", sinks, ndim=1, floating=True)
    chk.same_dtype(q=q, sinks=sinks)
    if len(batch) < 1 or batch[-1] != sinks.shape[0]:
        raise ValueError(f"sink_attention: sinks {chk.shape_str(sinks)} has one logit per head, so the head axis "
                         f"(dim -3) of q {chk.shape_str(q)}, k {chk.shape_str(k)}, v {chk.shape_str(v)} must have "
                         f"{sinks.shape[0]} entries")
    Nq, Nk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., H, Nq, Nk)
    if is_causal:
        i = torch.arange(Nq, device=q.device).unsqueeze(1) + (Nk - Nq)
        j = torch.arange(Nk, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(j > i, float("-inf"))
    sink = sinks.view(-1, 1, 1).expand(*scores.shape[:-1], 1)  # (..., H, Nq, 1): broadcast over queries
    m = torch.maximum(scores.amax(-1, keepdim=True), sink)  # always finite: the sink is never masked
    e = torch.exp(scores - m)  # (..., H, Nq, Nk)
    denominator = e.sum(-1, keepdim=True) + torch.exp(sink - m)  # the sink takes its share of the mass
    return (e / denominator) @ v  # (..., H, Nq, dv): the sink adds no value


def sink_weights(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Weights over the real keys ``(..., H, Nq, Nk)`` for already scaled scores; they sum to
    ``1 - (weight of the sink)``."""
    chk.tensor("scores", scores, min_ndim=3, floating=True)
    chk.tensor("sinks", sinks, ndim=1, floating=True)
    sink = sinks.view(-1, 1, 1).expand(*scores.shape[:-1], 1)
    both = torch.cat((sink, scores), dim=-1)  # (..., H, Nq, 1 + Nk)
    m = both.amax(-1, keepdim=True)
    e = torch.exp(both - m)
    return (e / e.sum(-1, keepdim=True))[..., 1:]
