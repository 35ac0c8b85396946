"""YaRN: stretching RoPE to longer contexts by interpolating only the slow frequencies (Peng,
Quesnelle, Fan and Shippole 2023, "YaRN: Efficient Context Window Extension of Large Language
Models"; used by Qwen, DeepSeek-V3 and gpt-oss).

RoPE (notebook 06) rotates feature pair ``i`` by ``p f_i`` with ``f_i = theta^(-2i/d)``. A model
trained on ``L`` positions has seen pair ``i`` turn through ``r_i = L f_i / (2 pi)`` full
rotations:

* fast pairs (small ``i``) turned many times (``r_i >> 1``): every angle was seen, and nearby
  positions are told apart by them. Leave them alone: longer inputs bring no unseen angle.
* slow pairs (large ``i``) turned less than once (``r_i < 1``): at positions beyond ``L`` they
  reach angles the model never saw. Divide their frequency by ``scale`` so that ``scale * L``
  positions cover the angles the model knows (position interpolation, Chen et al. 2023).

YaRN's "NTK-by-parts" rule blends the two by rotations counted, with a linear ramp between
``beta_slow`` and ``beta_fast`` rotations:

    g_i = clamp((r_i - beta_slow) / (beta_fast - beta_slow), 0, 1)
    f_i' = (1 - g_i) f_i / scale + g_i f_i

(YaRN also multiplies the logits by ``(0.1 ln(scale) + 1)^2``, :func:`yarn_attention_factor`:
stretched positions make attention a little flatter, and this sharpens it back.)

Plain position interpolation (every ``f_i / scale``) blurs the fast pairs that carry local
order; "NTK-aware" scaling (a larger ``theta``) changes every pair a little. gpt-oss uses YaRN
with ``theta = 150000``, ``scale = 32`` and ``L = 4096``: 131072 positions.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _validate as chk


def _number(name, value, *, above=None, at_least=None):
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (above is not None and value <= above) or (at_least is not None and value < at_least):
        bound = f"> {above}" if above is not None else f">= {at_least}"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def rope_inv_freq(d: int, theta: float = 10000.0) -> torch.Tensor:
    """``(d//2,)`` float64 RoPE frequencies ``theta^(-2i/d)``."""
    d = chk.positive_int("d", d)
    if d % 2:
        raise ValueError(f"RoPE rotates pairs of features: d must be even, got {d}")
    theta = _number("theta", theta, above=1.0)
    return theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)


def yarn_inv_freq(d: int, theta: float, scale: float, original_max_position: int, beta_fast: float = 32.0,
                  beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN's NTK-by-parts frequencies, ``(d//2,)`` float64.

    Args:
        d: head dimension (even).
        theta: RoPE base.
        scale: context extension factor (``>= 1``); new context = ``scale * original_max_position``.
        original_max_position: the context length the model was trained on, ``L``.
        beta_fast, beta_slow: pairs with more than ``beta_fast`` rotations over ``L`` keep their
            frequency; pairs with fewer than ``beta_slow`` are divided by ``scale``; a linear ramp
            in rotations between.
    """
    f = rope_inv_freq(d, theta)  # (d/2,)
    scale = _number("scale", scale, at_least=1.0)
    L = chk.positive_int("original_max_position", original_max_position)
    beta_fast, beta_slow = _number("beta_fast", beta_fast), _number("beta_slow", beta_slow)
    if not beta_fast > beta_slow:
        raise ValueError(f"beta_fast ({beta_fast}) must be larger than beta_slow ({beta_slow}): it counts the "
                         f"rotations above which a pair keeps its frequency")
    rotations = L * f / (2 * math.pi)  # (d/2,): full turns of each pair over the original context
    g = ((rotations - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)  # 1: keep, 0: interpolate
    return (1 - g) * f / scale + g * f


def interpolation_inv_freq(d: int, theta: float, scale: float) -> torch.Tensor:
    """Position interpolation (Chen, Wong, Chen and Tian 2023): every frequency divided by ``scale``."""
    return rope_inv_freq(d, theta) / _number("scale", scale, at_least=1.0)


def ntk_inv_freq(d: int, theta: float, scale: float) -> torch.Tensor:
    """"NTK-aware" scaling (bloc97, 2023): a larger base ``theta * scale^(d/(d-2))``, which divides
    the slowest frequency by exactly ``scale`` and the fastest by nothing."""
    d = chk.positive_int("d", d)
    scale = _number("scale", scale, at_least=1.0)
    return rope_inv_freq(d, _number("theta", theta, above=1.0) * scale ** (d / (d - 2)))


def yarn_attention_factor(scale: float) -> float:
    """YaRN's temperature: logits are multiplied by ``(0.1 ln(scale) + 1)^2`` (1 when ``scale <= 1``)."""
    scale = _number("scale", scale, above=0.0)
    return 1.0 if scale <= 1 else (0.1 * math.log(scale) + 1.0) ** 2


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE with given frequencies (interleaved pairs): ``x (..., N, d)``, ``positions (N,)``,
    ``inv_freq (d/2,)``. With ``rope_inv_freq(d, theta)`` it is :func:`attnkit.apply_rope`."""
    chk.tensor("x", x, min_ndim=2, floating=True)
    chk.tensor("positions", positions, ndim=1)
    chk.tensor("inv_freq", inv_freq, ndim=1, floating=True)
    if x.shape[-1] != 2 * inv_freq.shape[0] or x.shape[-2] != positions.shape[0]:
        raise ValueError(f"rotate: x {chk.shape_str(x)} needs positions (N,) and inv_freq (d/2,), got positions "
                         f"{chk.shape_str(positions)} and inv_freq {chk.shape_str(inv_freq)}")
    angle = positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(torch.float64)  # (N, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., N, d/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)  # (..., N, d)
