"""The checkers' library for positions (06), inference (08), notebook 07 (causal self-attention, the
decoder block, the training loop, the induction score) and the merge of partial attention results
(13): mistakes learners make, each with the hint its checker must name, and correct implementations in
different styles (see tests/library.py).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import attnkit
from attnkit import chunked
from attnkit.checks import (CHECKS, NOTEBOOK_CHECKS, check_alibi_bias, check_apply_rope, check_decode_step,
                            check_decoder_block, check_grouped_query_attention, check_induction_score,
                            check_repeat_kv, check_sinusoidal_positions)
from library import Exercise, Mutant

# ============================================================================ sinusoidal_positions


def sin_vectorised(n, d):
    """exp/log frequencies, float32 throughout."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1)
    i = torch.arange(0, d, 2, dtype=torch.float32)
    ang = pos * torch.exp(-math.log(10000.0) * i / d)  # (n, ceil(d/2))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe


def sin_loops(n, d):
    """Plain Python loops and math.sin."""
    pe = torch.zeros(n, d)
    for p in range(n):
        for i in range(0, d, 2):
            angle = p / 10000 ** (i / d)
            pe[p, i] = math.sin(angle)
            if i + 1 < d:
                pe[p, i + 1] = math.cos(angle)
    return pe


def sin_outer_stack(n, d, base=10000.0):
    """float64 inside, interleaved with stack/flatten and trimmed for odd d; an extra keyword."""
    freqs = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (ceil(d/2),)
    ang = torch.outer(torch.arange(n, dtype=torch.float64), freqs)  # (n, ceil(d/2))
    return torch.stack((ang.sin(), ang.cos()), -1).flatten(-2)[:, :d].float()


def sin_columns_transposed(n, d):
    """Column by column, stacked as rows and returned as a non-contiguous transpose."""
    rows = []
    for j in range(d):
        col = torch.arange(n, dtype=torch.float64) * 10000.0 ** (-(j - j % 2) / d)
        rows.append(col.sin() if j % 2 == 0 else col.cos())
    return torch.stack(rows).float().T  # (n, d), a view of a (d, n) tensor


def sin_swapped(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.cos(ang)
    pe[:, 1::2] = torch.sin(ang)[:, : d // 2]
    return pe


def sin_i_over_d(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange((d + 1) // 2) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe


def sin_concatenated(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2) / d)
    return torch.cat((torch.sin(ang), torch.cos(ang)[:, : d // 2]), 1)


def sin_multiplied(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos * 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # times instead of divided by
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe.float()


def sin_from_one(n, d):
    pos = torch.arange(1, n + 1, dtype=torch.float64)[:, None]  # positions 1..n
    ang = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe.float()


def sin_even_d_only(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)  # one column too many when d is odd
    return pe


def sin_odd_d_last_zero(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos / 10000 ** (torch.arange(0, 2 * (d // 2), 2, dtype=torch.float64) / d)  # d // 2 pairs only
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0:2 * (d // 2):2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)
    return pe.float()


def sin_integer_division(n, d):
    i = torch.arange(d // 2 + d % 2)
    ang = torch.arange(n)[:, None] / 10000 ** (2 * i // d)  # integer division: exponent 0 for every pair
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe


def sin_column_index(n, d):
    pe = torch.zeros(n, d)
    pos = torch.arange(n, dtype=torch.float64)
    for j in range(d):
        ang = pos / 10000 ** (j / d)  # the column index, also for the cosine columns
        pe[:, j] = (torch.sin(ang) if j % 2 == 0 else torch.cos(ang)).float()
    return pe


def sin_float64(n, d):
    p = torch.arange(n, dtype=torch.float64)[:, None]
    ang = p / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe  # float64


def sin_transposed(n, d):
    return sin_vectorised(n, d).T.contiguous()  # (d, n)


def _sin_with(n, d, base=10000.0, denominator=None):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos / base ** (torch.arange(0, d, 2, dtype=torch.float64) / (denominator or d))
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe.float()


def sin_base_1000(n, d):
    return _sin_with(n, d, base=1000.0)


def sin_odd_d_even_denominator(n, d):
    """For odd d, the exponent divided by d - 1 (the largest even number below)."""
    return _sin_with(n, d, denominator=d - d % 2 or 1)


SINUSOIDAL = Exercise("sinusoidal_positions", check_sinusoidal_positions, [
    Mutant("base 1000", sin_base_1000, "the base is 10000"),
    Mutant("odd d: exponent over d - 1", sin_odd_d_even_denominator, "divides by d itself"),
    Mutant("sin and cos swapped", sin_swapped, "swapped"),
    Mutant("exponent i/d instead of 2i/d", sin_i_over_d, "2i/d"),
    Mutant("all sines then all cosines", sin_concatenated, "interleaved"),
    Mutant("multiplied by 10000^(2i/d)", sin_multiplied, "divide the position"),
    Mutant("positions 1..n", sin_from_one, "start at 0"),
    Mutant("odd d: one cosine column too many", sin_even_d_only, "odd d"),
    Mutant("odd d: last column left at zero", sin_odd_d_last_zero, "odd d ends with a sine column"),
    Mutant("2 * i // d, integer division", sin_integer_division, "same frequency"),
    Mutant("cosine column 2i+1 uses exponent (2i+1)/d", sin_column_index, "same angle"),
    Mutant("returns float64", sin_float64, "float32"),
    Mutant("table transposed (d, n)", sin_transposed, "transposed"),
    Mutant("calls attnkit", attnkit.sinusoidal_positions, "calls"),
], [sin_vectorised, sin_loops, sin_outer_stack, sin_columns_transposed])


# ============================================================================ apply_rope


def rope_stack(x, positions, theta=10000.0):
    """The notebook's solution: even/odd slices, angles in float64."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.to(torch.float64).unsqueeze(-1) * freqs  # (N, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def rope_complex(x, positions, theta=10000.0):
    """Pairs as complex numbers, float64 inside, cast back."""
    d = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * freqs)
    z = torch.view_as_complex(x.double().unflatten(-1, (d // 2, 2)).contiguous())
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


def rope_loop_pairs(x, positions, theta=10000.0):
    """One pair at a time, written into an empty_like."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(d // 2):
        ang = positions.double() * theta ** (-2 * i / d)  # (N,)
        c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        a, b = x[..., 2 * i], x[..., 2 * i + 1]  # (..., N)
        out[..., 2 * i] = a * c - b * s
        out[..., 2 * i + 1] = a * s + b * c
    return out


def rope_rotation_matrices(x, positions, theta=10000.0, *, pairing="interleaved"):
    """A block-diagonal (N, d, d) rotation per token, applied with einsum; an extra keyword."""
    assert pairing == "interleaved"
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (N, d/2)
    R = torch.zeros(len(positions), d, d, dtype=torch.float64)
    R[:, 0::2, 0::2] = torch.diag_embed(ang.cos())
    R[:, 0::2, 1::2] = torch.diag_embed(-ang.sin())
    R[:, 1::2, 0::2] = torch.diag_embed(ang.sin())
    R[:, 1::2, 1::2] = torch.diag_embed(ang.cos())
    return torch.einsum("nij,...nj->...ni", R, x.double()).to(x.dtype)


def rope_feature_major(x, positions, theta=10000.0):
    """Works on x.transpose(-2, -1) (..., d, N) and returns a non-contiguous transpose."""
    xt = x.transpose(-2, -1)  # (..., d, N)
    d = xt.shape[-2]
    ang = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)[:, None] * positions.double()  # (d/2, N)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = xt[..., 0::2, :], xt[..., 1::2, :]
    out = torch.stack((a * c - b * s, a * s + b * c), -2).flatten(-3, -2)  # (..., d, N)
    return out.transpose(-2, -1)


def rope_cat_halves(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat((a * c - b * s, a * s + b * c), dim=-1)  # halves, not interleaved


def rope_rotate_half(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos = torch.cat((ang.cos(), ang.cos()), -1).to(x.dtype)
    sin = torch.cat((ang.sin(), ang.sin()), -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin  # Hugging Face's rotate_half


def rope_backwards(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * c + b * s, b * c - a * s), -1).flatten(-2)


def rope_i_over_d(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(d // 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2)


def rope_sequential_update(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    a = a * c - b * s
    b = a * s + b * c  # uses the already rotated a
    return torch.stack((a, b), -1).flatten(-2)


def rope_scales(x, positions, theta=10000.0):
    return rope_stack(x, positions, theta) * 1.5  # a rotation that also stretches


def rope_fixed_theta(x, positions, theta=10000.0):
    return rope_stack(x, positions)  # theta never used


def rope_token_index(x, positions, theta=10000.0):
    return rope_stack(x, torch.arange(x.shape[-2]), theta)  # the token index, not the positions given


def rope_returns_float32(x, positions, theta=10000.0):
    return rope_stack(x.float(), positions, theta)


def rope_returns_float64(x, positions, theta=10000.0):
    return rope_stack(x.double(), positions, theta)


def rope_3d_only(x, positions, theta=10000.0):
    B, N, d = x.shape  # (B, N, d) only
    pairs = x.view(B, N, d // 2, 2)
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * c - b * s, a * s + b * c), -1).view(B, N, d)


def rope_in_place(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2].clone(), x[..., 1::2].clone()
    x[..., 0::2] = a * c - b * s
    x[..., 1::2] = a * s + b * c
    return x


def rope_integer_division(x, positions, theta=10000.0):
    d = x.shape[-1]
    ang = positions[:, None] * theta ** (-(torch.arange(0, d, 2) // d))  # 2i // d == 0: one frequency
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2)


def rope_angles_on_first_axis(x, positions, theta=10000.0):
    """cos and sin reshaped to (N, 1, d/2) when x is (N, ..., N, d): they pair with the first axis."""
    d = x.shape[-1]
    ang = positions.double()[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    if x.ndim == 3 and x.shape[0] == positions.shape[0]:
        cos, sin = cos[:, None, :], sin[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


ROPE = Exercise("apply_rope", check_apply_rope, [
    Mutant("angles broadcast over the first axis", rope_angles_on_first_axis, "first axis of x"),
    Mutant("rotated pairs put back with torch.cat (halves)", rope_cat_halves, "torch.cat"),
    Mutant("half-split pairs (rotate_half)", rope_rotate_half, "half-split"),
    Mutant("rotated by minus the angle", rope_backwards, "minus the angle"),
    Mutant("frequency theta^(-i/d)", rope_i_over_d, "theta^(-2i/d)"),
    Mutant("second component from the rotated first", rope_sequential_update, "already rotated"),
    Mutant("rotation that also stretches", rope_scales, "length"),
    Mutant("theta ignored", rope_fixed_theta, "theta"),
    Mutant("token index instead of positions", rope_token_index, "positions you were given"),
    Mutant("float32 for float64 input", rope_returns_float32, "x's dtype"),
    Mutant("float64 for float32 input", rope_returns_float64, "x's dtype"),
    Mutant("only (B, N, d) input", rope_3d_only, "leading dimensions"),
    Mutant("rotates x in place", rope_in_place, "in place"),
    Mutant("2i // d, integer division", rope_integer_division, "same frequency"),
    Mutant("calls attnkit.apply_rope", lambda x, p, theta=10000.0: attnkit.apply_rope(x, p, theta), "calls"),
    Mutant("calls attnkit.apply_rope_complex",
           lambda x, p, theta=10000.0: attnkit.apply_rope_complex(x, p, theta), "calls"),
], [rope_stack, rope_complex, rope_loop_pairs, rope_rotation_matrices, rope_feature_major])


# ============================================================================ alibi_bias


def _paper_slopes(n):
    if n & (n - 1) == 0:
        return [2 ** (-8 * (h + 1) / n) for h in range(n)]
    p = 1 << (n.bit_length() - 1)
    return _paper_slopes(p) + _paper_slopes(2 * p)[::2][: n - p]


def alibi_loop(n_heads, n_q, n_k):
    """Triple loop, recursive slopes."""
    out = torch.zeros(n_heads, n_q, n_k)
    for h, s in enumerate(_paper_slopes(n_heads)):
        for i in range(n_q):
            for j in range(n_k):
                out[h, i, j] = -s * abs(i + n_k - n_q - j)
    return out


def alibi_get_slopes(n_heads, n_q, n_k, device=None):
    """The ALiBi repository's get_slopes (start * ratio^i), float64 inside; an extra keyword."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
    qpos = torch.arange(n_k - n_q, n_k, dtype=torch.float64, device=device)  # absolute query positions
    dist = (qpos[:, None] - torch.arange(n_k, dtype=torch.float64, device=device)).abs()
    return (-torch.tensor(slopes, dtype=torch.float64)[:, None, None] * dist).float()


def alibi_broadcast_expand(n_heads, n_q, n_k):
    """Slopes as tensors, one distance matrix expanded over heads, a non-contiguous result."""
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = torch.cat((2.0 ** (-torch.arange(1, n + 1) * 8.0 / n),
                        2.0 ** (-torch.arange(1, 2 * n + 1, 2) * 8.0 / (2 * n))))[:n_heads]  # (H,)
    dist = (torch.arange(n_q)[:, None] + n_k - n_q - torch.arange(n_k)).abs().float()  # (n_q, n_k)
    bias = -slopes.view(-1, 1, 1) * dist.expand(n_heads, n_q, n_k)  # (H, n_q, n_k)
    return bias.transpose(1, 2).contiguous().transpose(1, 2)


def _alibi(n_heads, n_q, n_k, slopes=None, offset=None, absolute=True, sign=-1.0):
    slopes = torch.tensor(slopes if slopes is not None else _paper_slopes(n_heads))
    offset = n_k - n_q if offset is None else offset
    dist = (torch.arange(n_q)[:, None] + offset - torch.arange(n_k)[None]).float()
    dist = dist.abs() if absolute else dist
    return (sign * slopes[:, None, None] * dist).float()


def alibi_naive_slopes(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, slopes=[2 ** (-8 * (h + 1) / n_heads) for h in range(n_heads)])


def alibi_next_power_truncated(n_heads, n_q, n_k):
    n = 1 << (n_heads - 1).bit_length()  # the next power of two, its first n_heads slopes
    return _alibi(n_heads, n_q, n_k, slopes=[2 ** (-8 * (h + 1) / n) for h in range(n)][:n_heads])


def alibi_top_left(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, offset=0)


def alibi_positive(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, sign=1.0)


def alibi_signed(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, absolute=False)


def alibi_h_from_zero(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, slopes=[2 ** (-8 * h / n_heads) for h in range(n_heads)])


def alibi_eight_head_slopes(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k, slopes=[2 ** -(h + 1) for h in range(n_heads)])  # the 8-head slopes


def alibi_heads_last(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k).permute(1, 2, 0)


def alibi_query_key_swapped(n_heads, n_q, n_k):
    j = torch.arange(n_k)[:, None]
    i = torch.arange(n_q)[None, :] + n_k - n_q
    return -torch.tensor(_paper_slopes(n_heads))[:, None, None] * (i - j).abs().float()  # (H, n_k, n_q)


def alibi_float64(n_heads, n_q, n_k):
    return _alibi(n_heads, n_q, n_k).double()


def alibi_future_keys_zero(n_heads, n_q, n_k):
    """The distance clamped at 0: keys after the query get no bias."""
    slopes = torch.tensor(_paper_slopes(n_heads), dtype=torch.float64)
    dist = (torch.arange(n_q)[:, None] + n_k - n_q - torch.arange(n_k)[None, :]).clamp(min=0)
    return (-slopes[:, None, None] * dist).float()


ALIBI = Exercise("alibi_bias", check_alibi_bias, [
    Mutant("future keys get no bias", alibi_future_keys_zero, "do not clamp"),
    Mutant("2^(-8(h+1)/H) for every H", alibi_naive_slopes, "not a power of two"),
    Mutant("first H slopes of the next power of two", alibi_next_power_truncated, "not a power of two"),
    Mutant("queries aligned top left", alibi_top_left, "bottom right"),
    Mutant("positive bias", alibi_positive, "negative"),
    Mutant("signed distance", alibi_signed, "absolute distance"),
    Mutant("slopes from h = 0 (first slope 1)", alibi_h_from_zero, "h + 1"),
    Mutant("the 8-head slopes 1/2, 1/4, ... for every H", alibi_eight_head_slopes, "number of heads"),
    Mutant("shape (n_q, n_k, H)", alibi_heads_last, "heads come first"),
    Mutant("keys as rows (H, n_k, n_q)", alibi_query_key_swapped, "rows are queries"),
    Mutant("returns float64", alibi_float64, "float32"),
    Mutant("calls attnkit.alibi_bias", attnkit.alibi_bias, "calls"),
    Mutant("calls attnkit.alibi_slopes", lambda H, n_q, n_k: _alibi(H, n_q, n_k, attnkit.alibi_slopes(H).tolist()),
           "calls"),
], [alibi_loop, alibi_get_slopes, alibi_broadcast_expand])


# ============================================================================ decode_step


def _softmax(s, dim=-1):
    m = s.amax(dim, keepdim=True)
    e = torch.exp(s - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    total = e.sum(dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))  # a fully masked row gives zeros


def decode_attnkit(q_t, k_t, v_t, k_cache, v_cache):
    """The notebook's solution."""
    k_cache = torch.cat((k_cache, k_t), dim=2)
    v_cache = torch.cat((v_cache, v_t), dim=2)
    out, _ = attnkit.scaled_dot_product_attention(q_t, k_cache, v_cache)
    return out, k_cache, v_cache


def decode_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache):
    k_cache = torch.cat([k_cache, k_t], dim=-2)
    v_cache = torch.cat([v_cache, v_t], dim=-2)
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache), k_cache, v_cache


def decode_einsum_float64(q_t, k_t, v_t, k_cache, v_cache, scale=None):
    """Preallocated caches filled by slicing, einsum in float64, cast back; an extra keyword."""
    B, H, T, d = k_cache.shape
    k_all = k_cache.new_empty(B, H, T + 1, d)
    v_all = v_cache.new_empty(B, H, T + 1, v_cache.shape[-1])
    k_all[:, :, :T], k_all[:, :, T:] = k_cache, k_t
    v_all[:, :, :T], v_all[:, :, T:] = v_cache, v_t
    scale = d ** -0.5 if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q_t.double(), k_all.double()) * scale
    out = torch.einsum("bhqk,bhkd->bhqd", _softmax(s), v_all.double())
    return out.to(q_t.dtype), k_all, v_all


def decode_loop_heads(q_t, k_t, v_t, k_cache, v_cache):
    """A loop over batch and heads, 2-D matrices only."""
    k_all, v_all = torch.cat((k_cache, k_t), 2), torch.cat((v_cache, v_t), 2)
    out = torch.zeros_like(q_t)
    for b in range(q_t.shape[0]):
        for h in range(q_t.shape[1]):
            s = q_t[b, h] @ k_all[b, h].T / math.sqrt(q_t.shape[-1])  # (1, T+1)
            out[b, h] = _softmax(s) @ v_all[b, h]
    return out, k_all, v_all


def decode_forgets_self(q_t, k_t, v_t, k_cache, v_cache):
    out = F.scaled_dot_product_attention(q_t, k_cache, v_cache) if k_cache.shape[2] else torch.zeros_like(q_t)
    return out, torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)


def decode_prepends(q_t, k_t, v_t, k_cache, v_cache):
    k_cache, v_cache = torch.cat([k_t, k_cache], 2), torch.cat([v_t, v_cache], 2)
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache), k_cache, v_cache


def decode_no_scale(q_t, k_t, v_t, k_cache, v_cache):
    k_cache, v_cache = torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache, scale=1.0), k_cache, v_cache


def decode_returns_out_only(q_t, k_t, v_t, k_cache, v_cache):
    return decode_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache)[0]


def decode_is_causal(q_t, k_t, v_t, k_cache, v_cache):
    k_cache, v_cache = torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache, is_causal=True), k_cache, v_cache


def decode_stale_caches(q_t, k_t, v_t, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)
    return F.scaled_dot_product_attention(q_t, k_all, v_all), k_cache, v_cache  # the old caches


def decode_cat_default_dim(q_t, k_t, v_t, k_cache, v_cache):
    k_cache, v_cache = torch.cat([k_cache, k_t]), torch.cat([v_cache, v_t])  # dim=0
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache), k_cache, v_cache


def decode_caches_swapped(q_t, k_t, v_t, k_cache, v_cache):
    out, k_all, v_all = decode_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache)
    return out, v_all, k_all


def decode_softmax_query_axis(q_t, k_t, v_t, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)
    s = q_t @ k_all.transpose(-2, -1) / math.sqrt(q_t.shape[-1])  # (B, H, 1, T+1)
    return torch.softmax(s, dim=-2) @ v_all, k_all, v_all


def decode_new_token_only(q_t, k_t, v_t, k_cache, v_cache):
    out = F.scaled_dot_product_attention(q_t, k_t, v_t)  # the cache never enters the attention
    return out, torch.cat([k_cache, k_t], 2), torch.cat([v_cache, v_t], 2)


def decode_squeezed(q_t, k_t, v_t, k_cache, v_cache):
    out, k_all, v_all = decode_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache)
    return out.squeeze(2), k_all, v_all


DECODE = Exercise("decode_step", check_decode_step, [
    Mutant("the new token does not attend to itself", decode_forgets_self, "itself"),
    Mutant("new key at the front of the cache", decode_prepends, "front of the cache"),
    Mutant("no 1/sqrt(d)", decode_no_scale, "sqrt(d)"),
    Mutant("returns out only", decode_returns_out_only, "three tensors"),
    Mutant("SDPA with is_causal=True (top-left)", decode_is_causal, "is_causal=True"),
    Mutant("returns the old caches", decode_stale_caches, "grown"),
    Mutant("torch.cat without dim (batch axis)", decode_cat_default_dim, "dim=2"),
    Mutant("returns (out, v_cache, k_cache)", decode_caches_swapped, "swapped"),
    Mutant("softmax over the query axis", decode_softmax_query_axis, "query axis"),
    Mutant("attends to the new token only", decode_new_token_only, "whole cache"),
    Mutant("out squeezed to (B, H, d)", decode_squeezed, "(B, H, 1, d)"),
    Mutant("calls attnkit.decode_step", attnkit.decode_step, "calls"),
], [decode_attnkit, decode_torch_sdpa, decode_einsum_float64, decode_loop_heads])


# ============================================================================ repeat_kv


def repeat_interleave(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)


def repeat_expand(x, n_rep):
    B, H, N, d = x.shape
    return x.unsqueeze(2).expand(B, H, n_rep, N, d).reshape(B, H * n_rep, N, d)


def repeat_index_select(x, n_rep):
    """An index per output head, h // n_rep."""
    return x.index_select(1, torch.arange(x.shape[1] * n_rep) // n_rep)


def repeat_loop_non_contiguous(x, n_rep, dim=1):
    """A loop over heads, stacked on axis 2 and transposed back (a non-contiguous result); an extra keyword."""
    heads = [x[:, h // n_rep] for h in range(x.shape[dim] * n_rep)]  # each (B, N, d)
    return torch.stack(heads, 2).transpose(1, 2)  # (B, Hkv*n_rep, N, d)


def repeat_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def repeat_tokens(x, n_rep):
    return x.repeat_interleave(n_rep, dim=2)


def repeat_cat(x, n_rep):
    return torch.cat([x] * n_rep, dim=1)


def repeat_expand_wrong_axis(x, n_rep):
    B, H, N, d = x.shape
    return x.unsqueeze(1).expand(B, n_rep, H, N, d).reshape(B, H * n_rep, N, d)


def repeat_modulo_loop(x, n_rep):
    return torch.stack([x[:, h % x.shape[1]] for h in range(x.shape[1] * n_rep)], 1)


def repeat_batch(x, n_rep):
    return x.repeat_interleave(n_rep, dim=0)


def repeat_no_reshape(x, n_rep):
    B, H, N, d = x.shape
    return x.unsqueeze(2).expand(B, H, n_rep, N, d)


def repeat_features(x, n_rep):
    return x.repeat_interleave(n_rep, dim=-1)


def repeat_expand_view(x, n_rep):
    B, H, N, d = x.shape
    return x[:, :, None].expand(B, H, n_rep, N, d).view(B, H * n_rep, N, d)


def repeat_zeros_default_dtype(x, n_rep):
    B, H, N, d = x.shape
    out = torch.zeros(B, H * n_rep, N, d)  # float32 whatever x is
    for h in range(H * n_rep):
        out[:, h] = x[:, h // n_rep]
    return out


REPEAT = Exercise("repeat_kv", check_repeat_kv, [
    Mutant("x.repeat: [a, b, a, b]", repeat_tiled, "repeat_interleave"),
    Mutant("repeated along tokens", repeat_tokens, "token axis"),
    Mutant("torch.cat of copies", repeat_cat, "[a, a, b, b]"),
    Mutant("new axis before the heads, then reshape", repeat_expand_wrong_axis, "[a, b, a, b]"),
    Mutant("head h takes kv head h % Hkv", repeat_modulo_loop, "[a, b, a, b]"),
    Mutant("repeated along the batch", repeat_batch, "batch"),
    Mutant("expand without the reshape", repeat_no_reshape, "reshape"),
    Mutant("repeated along the features", repeat_features, "feature axis"),
    Mutant("expand then .view", repeat_expand_view, ".reshape"),
    Mutant("torch.zeros without x's dtype", repeat_zeros_default_dtype, "x's dtype"),
    Mutant("calls attnkit.repeat_kv", attnkit.repeat_kv, "calls"),
], [repeat_interleave, repeat_expand, repeat_index_select, repeat_loop_non_contiguous])


# ============================================================================ grouped_query_attention


def _bottom_right(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)


def _attend(q, k, v, mask=None, scale=None, dim=-1, guard=True):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if guard:
        w = _softmax(s, dim)
    else:
        e = torch.exp(s - s.amax(dim, keepdim=True))
        w = e / e.sum(dim, keepdim=True)
    return w @ v


def gqa_repeat_attnkit(q, k, v, is_causal=False):
    """The notebook's solution: repeat_kv, then attnkit's attention."""
    n = q.shape[1] // k.shape[1]
    mask = attnkit.causal_mask(q.shape[2], k.shape[2]) if is_causal else None
    return attnkit.scaled_dot_product_attention(q, repeat_expand(k, n), repeat_expand(v, n), mask)[0]


def gqa_grouped(q, k, v, is_causal=False):
    """Queries reshaped into groups; the keys are never copied."""
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hkv, Hq // Hkv, Nq, d)  # (B, Hkv, n_rep, Nq, d)
    s = qg @ k.unsqueeze(2).transpose(-1, -2) / math.sqrt(d)  # (B, Hkv, n_rep, Nq, Nk)
    if is_causal:
        s = s.masked_fill(~_bottom_right(Nq, Nk), float("-inf"))
    return (_softmax(s) @ v.unsqueeze(2)).reshape(B, Hq, Nq, -1)


def gqa_einsum_float64(q, k, v, is_causal=False, scale=None):
    """einsum over groups in float64, cast back; an extra keyword."""
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qg = q.double().unflatten(1, (Hkv, Hq // Hkv))  # (B, Hkv, n_rep, Nq, d)
    s = torch.einsum("bgrqd,bgkd->bgrqk", qg, k.double()) * (scale or d ** -0.5)
    if is_causal:
        s = torch.where(_bottom_right(Nq, Nk), s, -math.inf)
    out = torch.einsum("bgrqk,bgkd->bgrqd", _softmax(s), v.double())
    return out.flatten(1, 2).to(q.dtype)


def gqa_loop_heads_sdpa(q, k, v, is_causal=False):
    """A loop over query heads, PyTorch's SDPA with a bottom-right boolean mask, NaN rows zeroed."""
    n_rep = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    heads = [F.scaled_dot_product_attention(q[:, h], k[:, h // n_rep], v[:, h // n_rep], attn_mask=mask)
             for h in range(q.shape[1])]
    return torch.stack(heads, 1).nan_to_num(0.0)


def gqa_tiled(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1), mask)


def gqa_groups_wrong_reshape(q, k, v, is_causal=False):
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hq // Hkv, Hkv, Nq, d)  # groups taken as the outer axis
    mask = _bottom_right(Nq, Nk) if is_causal else None
    return _attend(qg, k.unsqueeze(1), v.unsqueeze(1), mask).reshape(B, Hq, Nq, -1)


def gqa_top_left(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril() if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask)


def gqa_sdpa_is_causal(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_expand(k, n), repeat_expand(v, n), is_causal=is_causal)


def gqa_ignores_causal(q, k, v, is_causal=False):
    return gqa_grouped(q, k, v, False)


def gqa_no_scale(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask, scale=1.0)


def gqa_nan_on_masked_rows(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask, guard=False)


def gqa_strict_causal(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    Nq, Nk = q.shape[2], k.shape[2]
    mask = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq - 1) if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask)


def gqa_query_axis(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask, dim=-2)


def gqa_repeats_k_only(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, repeat_expand(k, n), v, mask)  # v keeps Hkv heads


def gqa_mean_query_heads(q, k, v, is_causal=False):
    """One query per group, the mean of its heads: an MQA mix-up (only k and v are shared)."""
    B, Hq, Nq, d = q.shape
    n = Hq // k.shape[1]
    mask = _bottom_right(Nq, k.shape[2]) if is_causal else None
    out = _attend(q.reshape(B, k.shape[1], n, Nq, d).mean(2), k, v, mask)
    return out.repeat_interleave(n, 1)


def gqa_scaled_by_group(q, k, v, is_causal=False):
    """1/sqrt(d * n_rep): the group size folded into the scale."""
    n = q.shape[1] // k.shape[1]
    mask = _bottom_right(q.shape[2], k.shape[2]) if is_causal else None
    return _attend(q, repeat_expand(k, n), repeat_expand(v, n), mask, scale=(q.shape[-1] * n) ** -0.5)


def gqa_mask_minus_1e9(q, k, v, is_causal=False):
    """masked_fill(-1e9): a query with no allowed key averages every value."""
    n = q.shape[1] // k.shape[1]
    s = q @ repeat_expand(k, n).transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(~_bottom_right(q.shape[2], k.shape[2]), -1e9)
    return torch.softmax(s, -1) @ repeat_expand(v, n)


GQA = Exercise("grouped_query_attention", check_grouped_query_attention, [
    Mutant("query heads of a group averaged", gqa_mean_query_heads, "averaged the query heads"),
    Mutant("scaled by 1/sqrt(d * n_rep)", gqa_scaled_by_group, "sqrt(d * Hq/Hkv)"),
    Mutant("masked with -1e9", gqa_mask_minus_1e9, "-1e9"),
    Mutant("kv heads tiled (h % Hkv)", gqa_tiled, "tiled"),
    Mutant("query groups as the outer axis", gqa_groups_wrong_reshape, "tiled"),
    Mutant("causal mask top left", gqa_top_left, "top left"),
    Mutant("PyTorch SDPA's is_causal (top left)", gqa_sdpa_is_causal, "top left"),
    Mutant("is_causal ignored", gqa_ignores_causal, "is_causal was ignored"),
    Mutant("no 1/sqrt(d)", gqa_no_scale, "sqrt(d)"),
    Mutant("NaN on fully masked rows", gqa_nan_on_masked_rows, "fully masked row"),
    Mutant("strict causal mask (no diagonal)", gqa_strict_causal, "its own position"),
    Mutant("softmax over the query axis", gqa_query_axis, "query axis"),
    Mutant("only k repeated, not v", gqa_repeats_k_only, "both k and v"),
    Mutant("SDPA's enable_gqa", lambda q, k, v, is_causal=False: F.scaled_dot_product_attention(
        q, k, v, is_causal=is_causal, enable_gqa=True), "calls"),
    Mutant("calls attnkit.grouped_query_attention", attnkit.grouped_query_attention, "calls"),
], [gqa_repeat_attnkit, gqa_grouped, gqa_einsum_float64, gqa_loop_heads_sdpa])


# ============================================================================ causal_self_attention


class CausalSelfAttention(nn.Module):
    """The notebook's solution: views and transposes, masked_fill, softmax."""

    def __init__(self, cfg):
        super().__init__()
        D = cfg.d_model
        self.n_heads, self.head_dim, self.rope = cfg.n_heads, D // cfg.n_heads, cfg.positions == "rope"
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)

    def forward(self, x, return_weights=False):
        B, N, D = x.shape
        H, d = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)
        k = self.k_proj(x).view(B, N, H, d).transpose(1, 2)
        v = self.v_proj(x).view(B, N, H, d).transpose(1, 2)
        if self.rope:
            positions = torch.arange(N, device=x.device)
            q, k = attnkit.apply_rope(q, positions), attnkit.apply_rope(k, positions)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, N, N)
        future = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(B, N, D))
        return (out, weights) if return_weights else out


class FusedSdpaAttention(nn.Module):
    """nanoGPT's layout: one fused qkv_proj, F.scaled_dot_product_attention(is_causal=True) for the output;
    the weights computed only when asked for; RoPE written with stack/flatten; a causal buffer."""

    def __init__(self, cfg):
        super().__init__()
        D = cfg.d_model
        self.h, self.rope = cfg.n_heads, cfg.positions == "rope"
        self.qkv_proj = nn.Linear(D, 3 * D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool)))

    def forward(self, x, return_weights=False):
        B, N, D = x.shape
        q, k, v = self.qkv_proj(x).split(D, dim=-1)
        q, k, v = (t.view(B, N, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        if self.rope:
            pos = torch.arange(N)
            q, k = rope_stack(q, pos), rope_stack(k, pos)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, d)
        out = self.out_proj(out.transpose(1, 2).contiguous().view(B, N, D))
        if not return_weights:
            return out
        scores = (q @ k.transpose(-2, -1)) * (D // self.h) ** -0.5
        return out, torch.softmax(scores.masked_fill(~self.tril[:N, :N], float("-inf")), dim=-1)


class AttnkitPartsAttention(nn.Module):
    """Built from the earlier notebooks' functions: split_heads, apply_rope, causal_mask,
    scaled_dot_product_attention, merge_heads."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(D, D, bias=False))

    def forward(self, x, return_weights=False):
        N = x.shape[1]
        q, k, v = (attnkit.split_heads(proj(x), self.cfg.n_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.cfg.positions == "rope":
            q, k = (attnkit.apply_rope(t, torch.arange(N)) for t in (q, k))
        out, weights = attnkit.scaled_dot_product_attention(q, k, v, attnkit.causal_mask(N, N))
        out = self.out_proj(attnkit.merge_heads(out))
        return (out, weights) if return_weights else out


class HeadLoopAttention(nn.Module):
    """One head at a time with einsum, float64 inside, the mask added as -inf; weights stacked."""

    def __init__(self, cfg):
        super().__init__()
        D = cfg.d_model
        self.n_heads, self.rope = cfg.n_heads, cfg.positions == "rope"
        self.q_proj, self.k_proj = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)
        self.v_proj, self.out_proj = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)

    def forward(self, x, return_weights=False):
        B, N, D = x.shape
        d = D // self.n_heads
        q, k, v = self.q_proj(x).double(), self.k_proj(x).double(), self.v_proj(x).double()
        bias = torch.full((N, N), float("-inf"), dtype=torch.float64).triu(1)
        outs, maps = [], []
        for h in range(self.n_heads):
            qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))  # (B, N, d)
            if self.rope:
                qh, kh = rope_complex(qh, torch.arange(N)), rope_complex(kh, torch.arange(N))
            w = torch.softmax(torch.einsum("bid,bjd->bij", qh, kh) / d ** 0.5 + bias, dim=-1)  # (B, N, N)
            outs.append(torch.einsum("bij,bjd->bid", w, vh))
            maps.append(w)
        out = self.out_proj(torch.cat(outs, dim=-1).to(x.dtype))
        return (out, torch.stack(maps, 1).to(x.dtype)) if return_weights else out


class _Attn(CausalSelfAttention):
    """The solution's parameters; a forward with one slip (``slip``)."""

    slip: dict = {}

    def forward(self, x, return_weights=False):
        s = self.slip
        B, N, D = x.shape
        H, d = self.n_heads, self.head_dim

        def heads(t):
            return t.reshape(B, H, N, d) if s.get("split") else t.view(B, N, H, d).transpose(1, 2)

        qf, kf = self.q_proj(x), self.k_proj(x)
        if self.rope and s.get("rope_width"):
            qf, kf = attnkit.apply_rope(qf, torch.arange(N)), attnkit.apply_rope(kf, torch.arange(N))
        q, k, v = heads(qf), heads(kf), heads(self.v_proj(x))
        if (self.rope or s.get("rope_always")) and not s.get("no_rope") and not s.get("rope_width"):
            pos = torch.arange(N)
            pairing = "half" if s.get("half") else "interleaved"
            q = q if s.get("rope_k_only") else attnkit.apply_rope(q, pos, pairing=pairing)
            k = attnkit.apply_rope(k, pos, pairing=pairing)
            v = attnkit.apply_rope(v, pos, pairing=pairing) if s.get("rope_v") else v
        scale = {"none": 1.0, "d": 1 / d, "D": D ** -0.5}.get(s.get("scale"), d ** -0.5)
        scores = q @ k.transpose(-2, -1) * scale
        future = torch.ones(N, N, dtype=torch.bool).triu(0 if s.get("strict") else 1)
        if s.get("zero_after"):
            weights = scores.softmax(-1).masked_fill(future, 0.0)
        elif s.get("no_mask"):
            weights = scores.softmax(-1)
        else:
            weights = scores.masked_fill(future, float("-inf")).softmax(dim=-2 if s.get("query_axis") else -1)
        out = weights @ v
        out = out.reshape(B, N, D) if s.get("merge") else out.transpose(1, 2).reshape(B, N, D)
        out = self.out_proj(out)
        if not return_weights:
            return out
        if s.get("return_scores"):
            return out, scores
        return out, weights.transpose(-2, -1) if s.get("weights_transposed") else weights


def _attn_slip(name, **slip):
    return type(name, (_Attn,), {"slip": slip})


class BiasedAttention(CausalSelfAttention):
    def __init__(self, cfg):
        super().__init__(cfg)
        D = cfg.d_model
        self.q_proj, self.k_proj = nn.Linear(D, D), nn.Linear(D, D)
        self.v_proj, self.out_proj = nn.Linear(D, D), nn.Linear(D, D)


class NoOutProjAttention(CausalSelfAttention):
    def __init__(self, cfg):
        super().__init__(cfg)
        del self.out_proj
        self.out_proj = nn.Identity()


class NanoGptNamesAttention(nn.Module):
    """Right, but with nanoGPT's names (c_attn, c_proj): the checker cannot load its weights."""

    def __init__(self, cfg):
        super().__init__()
        D = cfg.d_model
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
        self.n_heads = cfg.n_heads

    def forward(self, x, return_weights=False):
        B, N, D = x.shape
        q, k, v = (t.view(B, N, self.n_heads, -1).transpose(1, 2) for t in self.c_attn(x).split(D, -1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(out.transpose(1, 2).reshape(B, N, D))


class NoWeightsAttention(CausalSelfAttention):
    def forward(self, x):
        return super().forward(x)


class AttnkitMhaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.inner = attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, rope=cfg.positions == "rope")

    def forward(self, x, return_weights=False):
        return self.inner(x, is_causal=True, return_weights=return_weights)


class TorchMhaAttention(nn.Module):
    """nn.MultiheadAttention with a causal mask (and no RoPE)."""

    def __init__(self, cfg):
        super().__init__()
        self.mha = nn.MultiheadAttention(cfg.d_model, cfg.n_heads, bias=False, batch_first=True)

    def forward(self, x, return_weights=False):
        N = x.shape[1]
        mask = torch.ones(N, N, dtype=torch.bool).triu(1)
        out, w = self.mha(x, x, x, attn_mask=mask, average_attn_weights=False)
        return (out, w) if return_weights else out


CAUSAL_SELF_ATTENTION = Exercise("causal_self_attention", NOTEBOOK_CHECKS["causal_self_attention"], [
    Mutant("no 1/sqrt(d)", _attn_slip("NoScale", scale="none"), "not scaled"),
    Mutant("1/d", _attn_slip("OverD", scale="d"), "not 1/d"),
    Mutant("1/sqrt(D)", _attn_slip("OverSqrtD", scale="D"), "model width D"),
    Mutant("no causal mask", _attn_slip("NoMask", no_mask=True), "not causal"),
    Mutant("mask hides the diagonal", _attn_slip("Strict", strict=True), "diagonal"),
    Mutant("future zeroed after the softmax", _attn_slip("ZeroAfter", zero_after=True), "after the softmax"),
    Mutant("softmax over the query axis", _attn_slip("QueryAxis", query_axis=True), "query axis"),
    Mutant("heads cut with a reshape", _attn_slip("BadSplit", split=True), "reshape straight to (B, H, N, d)"),
    Mutant("heads merged with a reshape", _attn_slip("BadMerge", merge=True), "merged with a reshape"),
    Mutant("no RoPE", _attn_slip("NoRope", no_rope=True), "RoPE is missing"),
    Mutant("RoPE on the values too", _attn_slip("RopeV", rope_v=True), "not the values"),
    Mutant("RoPE on the keys only", _attn_slip("RopeK", rope_k_only=True), "rotate the queries too"),
    Mutant("RoPE on halves", _attn_slip("RopeHalf", half=True), "halves"),
    Mutant("RoPE across the width D", _attn_slip("RopeWidth", rope_width=True), "per head"),
    Mutant("RoPE whatever cfg.positions", _attn_slip("RopeAlways", rope_always=True), "RoPE was applied although"),
    Mutant("scores returned as weights", _attn_slip("Scores", return_scores=True), "after the softmax"),
    Mutant("weights returned transposed", _attn_slip("WeightsT", weights_transposed=True), "transposed"),
    Mutant("projections with biases", BiasedAttention, "biases"),
    Mutant("no output projection", NoOutProjAttention, "output projection is missing"),
    Mutant("nanoGPT's names c_attn, c_proj", NanoGptNamesAttention, "name the projections"),
    Mutant("forward without return_weights", NoWeightsAttention, "return_weights=True"),
    Mutant("attnkit.MultiHeadAttention inside", AttnkitMhaAttention, "calls"),
    Mutant("nn.MultiheadAttention inside", TorchMhaAttention, "calls"),
], [CausalSelfAttention, FusedSdpaAttention, AttnkitPartsAttention, HeadLoopAttention])


# ============================================================================ decoder_block


def _mlp(cfg):
    return attnkit.MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)


class DecoderBlock(nn.Module):
    """The notebook's solution: its own attention, an nn.Sequential MLP."""

    def __init__(self, cfg):
        super().__init__()
        D, d_mlp = cfg.d_model, cfg.d_mlp or 4 * cfg.d_model
        self.ln1 = nn.LayerNorm(D)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, d_mlp), nn.GELU(), nn.Linear(d_mlp, D))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class AttnkitPartsBlock(nn.Module):
    """attnkit.CausalSelfAttention and attnkit.MLP, the residual stream named h."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = attnkit.CausalSelfAttention(cfg), _mlp(cfg)

    def forward(self, h):
        h = self.attn(self.ln1(h)) + h
        return self.mlp(self.ln2(h)) + h


class NanoGptMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.c_fc, self.c_proj = nn.Linear(cfg.d_model, d_mlp), nn.Linear(d_mlp, cfg.d_model)
        self.gelu, self.dropout = nn.GELU(), nn.Dropout(0.1)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoGptBlock(nn.Module):
    """nanoGPT's pattern: fused-qkv attention with a causal buffer, dropout on the residual branches (off in eval)."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = FusedSdpaAttention(cfg), NanoGptMLP(cfg)
        self.resid_drop = nn.Dropout(0.1)

    def forward(self, x):
        x = x + self.resid_drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


class SubclassedBlock(attnkit.DecoderBlock):
    """attnkit.DecoderBlock's parts (inherited __init__), its own forward."""

    def forward(self, x):
        a = self.attn(self.ln1(x))
        x = x + a
        return x + self.mlp(self.ln2(x))


class _Variant(nn.Module):
    """The solution's parts; forward is one of the usual wrong wirings."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = CausalSelfAttention(cfg), _mlp(cfg)


class PostNormBlock(_Variant):
    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class NoResidualBlock(_Variant):
    def forward(self, x):
        return self.mlp(self.ln2(self.attn(self.ln1(x))))


class MlpResidualMissingBlock(_Variant):
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return self.mlp(self.ln2(x))


class AttnResidualMissingBlock(_Variant):
    def forward(self, x):
        x = self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SharedNormBlock(_Variant):
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln1(x))


class SwappedNormBlock(_Variant):
    def forward(self, x):
        x = x + self.attn(self.ln2(x))
        return x + self.mlp(self.ln1(x))


class NoLn1Block(_Variant):
    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(self.ln2(x))


class NoLn2Block(_Variant):
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(x)


class ParallelBlock(_Variant):
    def forward(self, x):
        return x + self.attn(self.ln1(x)) + self.mlp(self.ln2(x))


class NormalisedResidualBlock(_Variant):
    def forward(self, x):
        x = self.ln1(x)
        x = x + self.attn(x)  # the residual stream is now the normalised x
        return x + self.mlp(self.ln2(x))


class _Rewired(DecoderBlock):
    """The solution's forward; one part built differently."""

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class NotCausalBlock(_Rewired):
    """attnkit.MultiHeadAttention without is_causal: the block sees the future."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.attn = attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, rope=cfg.positions == "rope")


class CausalInForwardBlock(nn.Module):
    """The old notebook's block: attnkit.MultiHeadAttention, causal only because forward says so."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, rope=cfg.positions == "rope")
        self.mlp = _mlp(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln1(x), is_causal=True)
        return x + self.mlp(self.ln2(x))


class NoRopeBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.attn = _attn_slip("NoRope", no_rope=True)(cfg)


class FixedMlpWidthBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.mlp = attnkit.MLP(cfg.d_model, 4 * cfg.d_model)


class BiaslessMlpBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_mlp, bias=False), nn.GELU(),
                                 nn.Linear(d_mlp, cfg.d_model, bias=False))


class TanhGeluBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(d_mlp, cfg.d_model))


class ReluBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, cfg.d_model))


class NoActivationBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_mlp), nn.Linear(d_mlp, cfg.d_model))


class RMSNormBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.ln1, self.ln2 = nn.RMSNorm(cfg.d_model), nn.RMSNorm(cfg.d_model)


class BiasedAttentionBlock(_Rewired):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.attn = BiasedAttention(cfg)


class RenamedBlock(DecoderBlock):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.norm1 = self.ln1
        del self.ln1

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.ln2(x))


DECODER_BLOCK = Exercise("decoder_block", check_decoder_block, [
    Mutant("post-norm", PostNormBlock, "post-norm"),
    Mutant("attention not causal", NotCausalBlock, "not causal"),
    Mutant("causal only through the block's forward", CausalInForwardBlock, "not causal by itself"),
    Mutant("no residual connections", NoResidualBlock, "residual connections are missing"),
    Mutant("no residual around the MLP", MlpResidualMissingBlock, "around the MLP"),
    Mutant("no residual around the attention", AttnResidualMissingBlock, "around the attention"),
    Mutant("ln1 for both sublayers", SharedNormBlock, "both sublayers use ln1"),
    Mutant("ln1 and ln2 swapped", SwappedNormBlock, "swapped"),
    Mutant("attention reads x, not ln1(x)", NoLn1Block, "attention reads ln1(x)"),
    Mutant("MLP reads x, not ln2(x)", NoLn2Block, "the MLP reads ln2(x)"),
    Mutant("parallel sublayers (GPT-J)", ParallelBlock, "parallel"),
    Mutant("residual stream normalised", NormalisedResidualBlock, "add each sublayer's output to x itself"),
    Mutant("attention without RoPE", NoRopeBlock, "RoPE is missing"),
    Mutant("MLP width 4 * d_model, ignoring cfg.d_mlp", FixedMlpWidthBlock, "cfg.d_mlp"),
    Mutant("MLP without biases", BiaslessMlpBlock, "have biases"),
    Mutant("tanh GELU", TanhGeluBlock, "tanh"),
    Mutant("ReLU MLP", ReluBlock, "ReLU"),
    Mutant("MLP without an activation", NoActivationBlock, "no activation"),
    Mutant("RMSNorm instead of LayerNorm", RMSNormBlock, "LayerNorm"),
    Mutant("attention with biases", BiasedAttentionBlock, "4 D^2"),
    Mutant("parts named differently (norm1)", RenamedBlock, "no ln1"),
    Mutant("calls attnkit.DecoderBlock.forward", attnkit.DecoderBlock, "calls"),
], [DecoderBlock, AttnkitPartsBlock, NanoGptBlock, SubclassedBlock])


# ============================================================================ train_model


def train_manual_lr(model, batches, eval_tokens, *, steps, lr=3e-3, warmup=50, weight_decay=0.1, clip=1.0,
                    eval_every=100):
    """The notebook's solution: the learning rate set by hand before every update."""
    def lr_at(t):
        if t < warmup:
            return lr * (t + 1) / warmup
        progress = (t - warmup) / max(1, steps - warmup)
        return 0.1 * lr + 0.45 * lr * (1 + math.cos(math.pi * progress))

    def loss_on(tokens):
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def evaluate():
        model.eval()
        with torch.no_grad():
            loss = loss_on(eval_tokens).item()
        model.train()
        return loss

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    history = {"train_loss": [], "lr": [], "eval_loss": [(0, evaluate())]}
    for t, tokens in zip(range(steps), batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(t)
        loss = loss_on(tokens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        history["train_loss"].append(loss.item())
        history["lr"].append(lr_at(t))
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            history["eval_loss"].append((t + 1, evaluate()))
    return history


def train_lambda_lr(model, batches, eval_tokens, *, steps, lr=3e-3, warmup=50, weight_decay=0.1, clip=1.0,
                    eval_every=100):
    """torch.optim.lr_scheduler.LambdaLR stepped after the optimizer; log_softmax and gather; inference_mode."""
    def factor(t):
        if t < warmup:
            return (t + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))

    def nll(tokens):
        logp = model(tokens[:, :-1]).log_softmax(-1)  # (B, N-1, vocab)
        return -logp.gather(-1, tokens[:, 1:, None]).mean()

    def held_out():
        model.eval()
        with torch.inference_mode():
            value = float(nll(eval_tokens))
        model.train()
        return value

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    out = {"train_loss": [], "lr": [], "eval_loss": [(0, held_out())]}
    batches = iter(batches)
    for step in range(1, steps + 1):
        out["lr"].append(sched.get_last_lr()[0])
        loss = nll(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
        opt.step()
        sched.step()
        out["train_loss"].append(loss.item())
        if step % eval_every == 0 or step == steps:
            out["eval_loss"].append((step, held_out()))
    return out


def train_nanogpt_style(model, batches, eval_tokens, *, steps, lr=3e-3, warmup=50, weight_decay=0.1, clip=1.0,
                        eval_every=100):
    """Batches indexed; the clipping written out (torch's formula); gradients zeroed after the step;
    the evaluation summed over chunks of the held-out set."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr, (0.9, 0.95), weight_decay=weight_decay)
    min_lr = lr / 10

    def get_lr(it):
        if it < warmup:
            return lr * (it + 1) / warmup
        ratio = (it - warmup) / (steps - warmup)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))

    @torch.no_grad()
    def estimate():
        model.eval()
        total, count = 0.0, 0
        for chunk in eval_tokens.split(4):
            logits = model(chunk[:, :-1])
            total += F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="sum").item()
            count += chunk[:, 1:].numel()
        model.train()
        return total / count

    history = dict(train_loss=[], lr=[], eval_loss=[])
    for it in range(steps + 1):
        if it % eval_every == 0 or it == steps:
            history["eval_loss"].append((it, estimate()))
        if it == steps:
            break
        rate = get_lr(it)
        for g in opt.param_groups:
            g["lr"] = rate
        x = batches[it]
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))
        coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history["train_loss"].append(loss.item())
        history["lr"].append(rate)
    return history


def _train_slip(**slip):
    """The solution's loop with one slip switched on (the keywords say which)."""
    def loop(model, batches, eval_tokens, *, steps, lr=3e-3, warmup=50, weight_decay=0.1, clip=1.0, eval_every=100):
        def lr_at(t):
            warm = 0 if slip.get("no_warmup") else warmup
            if t < warm:
                return lr * (t if slip.get("from_zero") else t + 1) / warm
            if slip.get("no_decay"):
                return lr
            low = 0.0 if slip.get("to_zero") else 0.1 * lr
            return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))

        def loss_on(tokens):
            if slip.get("no_shift"):
                logits, targets = model(tokens), tokens
            else:
                logits, targets = model(tokens[:, :-1]), tokens[:, 1:]
            reduction = "sum" if slip.get("sum") else "mean"
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)

        def evaluate(tokens):
            if not slip.get("no_eval_mode"):
                model.eval()
            if slip.get("with_grad"):
                loss = loss_on(tokens).item()
            else:
                with torch.no_grad():
                    loss = loss_on(tokens).item()
            if not slip.get("no_train_after"):
                model.train()
            return loss

        if slip.get("adam"):
            opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        elif slip.get("default_betas"):
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        elif slip.get("default_weight_decay"):
            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_at(t) / lr) if slip.get("scheduler_first") else None
        history = {"train_loss": [], "lr": [], "eval_loss": []}
        if not slip.get("no_first_eval"):
            history["eval_loss"].append((0, evaluate(batches[0] if slip.get("eval_on_train") else eval_tokens)))
        for t in range(steps):
            tokens = batches[t]
            if sched is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch warns about exactly this order
                    sched.step()  # before the optimizer: every update gets the next update's rate
                rate = sched.get_last_lr()[0]
            else:
                rate = lr_at(t)
                for group in opt.param_groups:
                    group["lr"] = rate
            loss = loss_on(tokens)
            if not slip.get("no_zero_grad"):
                opt.zero_grad()
            if slip.get("clip_first"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            loss.backward()
            if slip.get("clip_value"):
                torch.nn.utils.clip_grad_value_(model.parameters(), clip)
            elif not (slip.get("no_clip") or slip.get("clip_first")):
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            history["train_loss"].append(loss.item())
            history["lr"].append(rate)
            done = t + 1
            if done % eval_every == 0 or (done == steps and not slip.get("no_last_eval")):
                history["eval_loss"].append((done, evaluate(tokens if slip.get("eval_on_train") else eval_tokens)))
        return history
    return loop


TRAIN_MODEL = Exercise("train_model", CHECKS["train_model"], [
    Mutant("no warm-up", _train_slip(no_warmup=True), "warm-up is missing"),
    Mutant("warm-up from 0 (lr * t / warmup)", _train_slip(from_zero=True), "starts at 0"),
    Mutant("LambdaLR stepped before the optimizer", _train_slip(scheduler_first=True), "one update late"),
    Mutant("no decay after the warm-up", _train_slip(no_decay=True), "never decays"),
    Mutant("cosine down to 0", _train_slip(to_zero=True), "decays to 0"),
    Mutant("no clipping", _train_slip(no_clip=True), "not clipped"),
    Mutant("clipping before backward", _train_slip(clip_first=True), "not clipped"),
    Mutant("clip_grad_value_", _train_slip(clip_value=True), "global norm"),
    Mutant("Adam with weight_decay (an L2 penalty)", _train_slip(adam=True), "AdamW"),
    Mutant("AdamW's default betas", _train_slip(default_betas=True), "betas"),
    Mutant("AdamW's default weight decay", _train_slip(default_weight_decay=True), "weight_decay"),
    Mutant("no zero_grad", _train_slip(no_zero_grad=True), "pile up"),
    Mutant("loss summed over the tokens", _train_slip(sum=True), "summed"),
    Mutant("targets not shifted", _train_slip(no_shift=True), "next token"),
    Mutant("evaluated in training mode", _train_slip(no_eval_mode=True), "model.eval()"),
    Mutant("evaluated with gradients on", _train_slip(with_grad=True), "torch.no_grad()"),
    Mutant("no model.train() after evaluating", _train_slip(no_train_after=True), "model.train()"),
    Mutant("evaluated on the training batch", _train_slip(eval_on_train=True), "never saw the held-out"),
    Mutant("no evaluation before the first update", _train_slip(no_first_eval=True), "before the first update"),
    Mutant("no evaluation after the last update", _train_slip(no_last_eval=True), "after the last update"),
    Mutant("calls attnkit.train_model", attnkit.train_model, "calls"),
], [train_manual_lr, train_lambda_lr, train_nanogpt_style])


# ============================================================================ induction_score


def induction_indexing(weights, period):
    """The notebook's solution."""
    N = weights.shape[-1]
    i = torch.arange(period + 1, N)
    return weights[:, :, i, i - period + 1].mean(dim=(0, 2))


def induction_loops(w, period):
    N = w.shape[-1]
    return torch.stack([torch.stack([w[:, h, i, i - period + 1] for i in range(period + 1, N)], 1).mean()
                        for h in range(w.shape[1])])


def induction_diagonal(weights, period, first_query=None):
    """torch.diagonal below the main one, sliced; float64 inside, cast back; an extra keyword."""
    first = period + 1 if first_query is None else first_query
    diag = torch.diagonal(weights.double(), offset=-(period - 1), dim1=-2, dim2=-1)  # (B, H, N - period + 1)
    return diag[..., first - (period - 1):].mean((0, 2)).to(weights.dtype)


def induction_gather(weights, period):
    """gather the key column of every query, then a masked mean."""
    B, H, N, _ = weights.shape
    keys = (torch.arange(N) - period + 1).clamp(min=0).expand(B, H, N)[..., None]  # (B, H, N, 1)
    picked = weights.gather(-1, keys)[..., 0]  # (B, H, N)
    valid = torch.arange(N) >= period + 1
    return (picked * valid).sum((0, 2)) / (B * valid.sum())


def _ind(w, q0, q1, key_offset):
    i = torch.arange(q0, q1)
    return w[:, :, i, i + key_offset]


def induction_previous_occurrence(w, period):
    return _ind(w, period + 1, w.shape[-1], -period).mean((0, 2))


def induction_previous_token(w, period):
    return _ind(w, 1, w.shape[-1], -1).mean((0, 2))


def induction_starts_at_period(w, period):
    return _ind(w, period, w.shape[-1], 1 - period).mean((0, 2))


def induction_whole_diagonal(w, period):
    return torch.diagonal(w, offset=-(period - 1), dim1=-2, dim2=-1).mean((0, -1))


def induction_above_diagonal(w, period):
    return torch.diagonal(w, offset=period - 1, dim1=-2, dim2=-1).mean((0, -1))


def induction_key_query_swapped(w, period):
    i = torch.arange(period + 1, w.shape[-1])
    return w[:, :, i - period + 1, i].mean((0, 2))


def induction_mean_over_heads(w, period):
    return _ind(w, period + 1, w.shape[-1], 1 - period).mean((1, 2))


def induction_per_batch(w, period):
    return _ind(w, period + 1, w.shape[-1], 1 - period).mean(2)  # (B, H)


def induction_sum(w, period):
    return _ind(w, period + 1, w.shape[-1], 1 - period).sum((0, 2))


def induction_skips_last_query(w, period):
    return _ind(w, period + 1, w.shape[-1] - 1, 1 - period).mean((0, 2))


INDUCTION = Exercise("induction_score", check_induction_score, [
    Mutant("key i - period (the previous occurrence)", induction_previous_occurrence, "off by one"),
    Mutant("key i - 1 (previous token)", induction_previous_token, "previous-token"),
    Mutant("starts at query period", induction_starts_at_period, "start at i = period + 1"),
    Mutant("whole diagonal, from its first query", induction_whole_diagonal, "start at i = period + 1"),
    Mutant("diagonal above the main one", induction_above_diagonal, "above the diagonal"),
    Mutant("weights[b, h, key, query]", induction_key_query_swapped, "above the diagonal"),
    Mutant("mean over heads, per batch", induction_mean_over_heads, "shape (H,)"),
    Mutant("(B, H) result", induction_per_batch, "over the batch"),
    Mutant("sum instead of mean", induction_sum, "mean"),
    Mutant("last query left out", induction_skips_last_query, "N - 1"),
    Mutant("calls attnkit.induction_score", attnkit.induction_score, "calls"),
], [induction_indexing, induction_loops, induction_diagonal, induction_gather])


# ============================================================================ merge_partials


def merge_where(out_a, lse_a, out_b, lse_b):
    """The notebook's solution."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    total = w_a + w_b
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = (w_a.unsqueeze(-1) * out_a + w_b.unsqueeze(-1) * out_b) / safe.unsqueeze(-1)
    return out, m + torch.log(total)


def merge_sigmoid(out_a, lse_a, out_b, lse_b):
    """Weight of A = sigmoid(lse_a - lse_b), written without any max."""
    both_empty = torch.isneginf(lse_a) & torch.isneginf(lse_b)
    diff = torch.where(both_empty, torch.zeros_like(lse_a), lse_a - lse_b)
    w = torch.sigmoid(diff)
    out = torch.where(both_empty[..., None], 0.0, w[..., None] * out_a + (1 - w[..., None]) * out_b)
    hi, lo = torch.maximum(lse_a, lse_b), torch.minimum(lse_a, lse_b)
    lse = torch.where(both_empty, hi, hi + torch.log1p(torch.exp(lo - hi)))
    return out, lse


def merge_stacked_float64(out_a, lse_a, out_b, lse_b, eps=0.0):
    """Both partials stacked on a new axis, float64 inside, cast back; an extra keyword."""
    lse = torch.stack((lse_a, lse_b)).double()  # (2, ..., N)
    m = lse.amax(0).clamp(min=-1e300)  # finite even when both are -inf
    w = torch.exp(lse - m)  # (2, ..., N)
    total = w.sum(0)
    outs = torch.stack((out_a, out_b)).double()  # (2, ..., N, dv)
    out = (w[..., None] * outs).sum(0) / (total[..., None] + eps).clamp(min=1e-300)
    return out.to(out_a.dtype), (m + torch.log(total)).to(lse_a.dtype)


def merge_transposed_result(out_a, lse_a, out_b, lse_b):
    """Computed feature-major, returned as a non-contiguous transpose."""
    m = torch.maximum(lse_a, lse_b).nan_to_num(neginf=0.0)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    total = w_a + w_b
    out_t = (out_a.transpose(-2, -1) * w_a[..., None, :] + out_b.transpose(-2, -1) * w_b[..., None, :])
    out_t = out_t / torch.where(total > 0, total, 1.0)[..., None, :]  # (..., dv, N)
    return out_t.transpose(-2, -1), m + torch.log(total)


def merge_not_normalised(oa, la, ob, lb):
    m = torch.maximum(la, lb).nan_to_num(neginf=0.0)
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)
    return w_a[..., None] * oa + w_b[..., None] * ob, m + torch.log(w_a + w_b)


def merge_plain_average(oa, la, ob, lb):
    return (oa + ob) / 2, merge_where(oa, la, ob, lb)[1]


def merge_swapped(oa, la, ob, lb):
    return merge_where(oa, lb, ob, la)[0], merge_where(oa, la, ob, lb)[1]


def merge_lse_max(oa, la, ob, lb):
    return merge_where(oa, la, ob, lb)[0], torch.maximum(la, lb)


def merge_lse_added(oa, la, ob, lb):
    return merge_where(oa, la, ob, lb)[0], la + lb


def merge_base2(oa, la, ob, lb):
    m = torch.maximum(la, lb)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    a, b = torch.exp2(la - m), torch.exp2(lb - m)
    s = torch.where(a + b > 0, a + b, 1.0)
    return (a[..., None] * oa + b[..., None] * ob) / s[..., None], m + torch.log2(a + b)


def merge_unsafe_empty(oa, la, ob, lb):
    m = torch.maximum(la, lb)
    a, b = torch.exp(la - m), torch.exp(lb - m)
    return (a[..., None] * oa + b[..., None] * ob) / (a + b)[..., None], m + torch.log(a + b)


def merge_nan_to_num(oa, la, ob, lb):
    out, lse = merge_unsafe_empty(oa, la, ob, lb)
    return out.nan_to_num(0.0), lse.nan_to_num(0.0)  # the empty row's lse becomes 0


def merge_overflowing(oa, la, ob, lb):
    a, b = torch.exp(la), torch.exp(lb)
    s = torch.where(a + b > 0, a + b, 1.0)
    return (a[..., None] * oa + b[..., None] * ob) / s[..., None], torch.log(a + b)


def merge_ratio(oa, la, ob, lb):
    r = torch.exp(lb - la)  # B's mass relative to A's: inf when A saw nothing
    out = (oa + r[..., None] * ob) / (1 + r)[..., None]
    return out, la + torch.log1p(r)


def merge_either_empty(oa, la, ob, lb):
    empty = torch.isneginf(la) | torch.isneginf(lb)  # meant: both
    m = torch.where(empty, torch.zeros_like(la), torch.maximum(la, lb))
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)
    out = (w_a[..., None] * oa + w_b[..., None] * ob) / (w_a + w_b).clamp_min(1e-30)[..., None]
    lse = m + torch.log(w_a + w_b)
    return torch.where(empty[..., None], 0.0, out), torch.where(empty, float("-inf"), lse)


def merge_no_unsqueeze(oa, la, ob, lb):
    m = torch.maximum(la, lb).nan_to_num(neginf=0.0)
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)
    total = (w_a + w_b).clamp_min(1e-30)
    return (w_a * oa + w_b * ob) / total, m + torch.log(w_a + w_b)  # (..., N) against (..., N, dv)


def merge_4d_only(oa, la, ob, lb):
    m = torch.maximum(la, lb).nan_to_num(neginf=0.0)
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)
    total = (w_a + w_b).clamp_min(1e-30)
    out = (w_a[:, :, :, None] * oa + w_b[:, :, :, None] * ob) / total[:, :, :, None]
    return out, m + torch.log(w_a + w_b)


def merge_float64(oa, la, ob, lb):
    return merge_where(oa.double(), la.double(), ob.double(), lb.double())


MERGE = Exercise("merge_partials", NOTEBOOK_CHECKS["merge_partials"], [
    Mutant("weights not divided by their sum", merge_not_normalised, "not divided by their sum"),
    Mutant("plain average", merge_plain_average, "plain average"),
    Mutant("weights swapped", merge_swapped, "swapped"),
    Mutant("lse = max", merge_lse_max, "not the larger"),
    Mutant("lse_a + lse_b", merge_lse_added, "do not add"),
    Mutant("exp2/log2", merge_base2, "mixed log bases"),
    Mutant("NaN when both are -inf", merge_unsafe_empty, "exp(-inf - (-inf)) is NaN"),
    Mutant("NaN replaced by 0 everywhere", merge_nan_to_num, "lse = -inf"),
    Mutant("no max subtracted", merge_overflowing, "exp overflowed"),
    Mutant("ratio exp(lse_b - lse_a)", merge_ratio, "exp overflowed"),
    Mutant("a row empty when either side is", merge_either_empty, "only one"),
    Mutant("lse weights without a trailing axis", merge_no_unsqueeze, "unsqueeze(-1)"),
    Mutant("4-D only", merge_4d_only, "leading dimensions"),
    Mutant("float64 for float32 input", merge_float64, "dtype"),
    Mutant("returns out only", lambda oa, la, ob, lb: merge_where(oa, la, ob, lb)[0], "(out, lse)"),
    Mutant("torch.logaddexp", lambda oa, la, ob, lb: (merge_where(oa, la, ob, lb)[0], torch.logaddexp(la, lb)),
           "calls torch.logaddexp"),
    Mutant("softmax over the two lse", lambda oa, la, ob, lb: (
        torch.softmax(torch.stack([la, lb]), 0)[0, ..., None] * oa
        + torch.softmax(torch.stack([la, lb]), 0)[1, ..., None] * ob, la), "calls"),
    Mutant("calls attnkit.merge_partials", attnkit.merge_partials, "calls"),
    Mutant("calls attnkit.chunked.merge_partials", chunked.merge_partials, "calls"),
], [merge_where, merge_sigmoid, merge_stacked_float64, merge_transposed_result])


EXERCISES = [SINUSOIDAL, ROPE, ALIBI, DECODE, REPEAT, GQA, CAUSAL_SELF_ATTENTION, DECODER_BLOCK, TRAIN_MODEL, INDUCTION,
             MERGE]
