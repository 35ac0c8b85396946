"""Checkers for notebook 06: sinusoidal positions, RoPE and ALiBi."""

from __future__ import annotations

import torch

from .. import alibi, positions, rope
from ._harness import Ban, Checker, gen, randn


def _sinusoid(n, d, exponent_scale=2.0, swap=False, split=False):
    p = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange((d + 1) // 2, dtype=torch.float64)
    angle = p / 10000.0 ** (exponent_scale * i / d)
    s, co = torch.sin(angle), torch.cos(angle)[:, : d // 2]
    if swap:
        s, co = torch.cos(angle), torch.sin(angle)[:, : d // 2]
    if split:
        return torch.cat((s, co), dim=1)
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = s, co
    return pe


def check_sinusoidal_positions(fn) -> str:
    """Check ``fn(n, d) -> (n, d)`` float32, PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos."""
    c = Checker("sinusoidal_positions", fn, Ban(python=(positions.sinusoidal_positions,),
                                                hint="Build the angles with torch.arange and take sin/cos."))
    for n, d in [(10, 16), (50, 8), (7, 7), (1, 4), (3, 1), (200, 64)]:
        label = f"n={n}, d={d}"
        with c.case(label):
            got = c.call(label, n, d)
            c.expect(label, got, _sinusoid(n, d), what="position table", dtype=torch.float32,
                     tol=dict(rtol=1e-5, atol=2e-5), wrong=[
                (_sinusoid(n, d, swap=True), "sin and cos are swapped: even columns 2i hold the sine, odd "
                                             "columns 2i+1 the cosine"),
                (_sinusoid(n, d, exponent_scale=1.0), "the exponent is 2i/d where 2i is the even column "
                 "index (pair i), so frequencies run from 1 down to 1/10000; you used i/d"),
                (_sinusoid(n, d, split=True), "the sines and cosines must be interleaved (column 2i sin, "
                                              "column 2i+1 cos), not all sines followed by all cosines"),
            ])
    return c.passed("odd d, d=1, n=1, long tables")


def _rope(x, pos, theta=10000.0, pairing="interleaved", sign=1.0, exponent_scale=2.0):
    x = x.double()
    d = x.shape[-1]
    freqs = theta ** (-exponent_scale * torch.arange(d // 2, dtype=torch.float64) / d)
    ang = sign * pos.double()[:, None] * freqs  # (N, d/2)
    if pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
    r1, r2 = a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()
    if pairing == "interleaved":
        return torch.stack((r1, r2), -1).flatten(-2)
    return torch.cat((r1, r2), -1)


def check_apply_rope(fn) -> str:
    """Check ``fn(x (..., N, d), positions (N,), theta=10000.0)``, interleaved RoFormer rotation."""
    c = Checker("apply_rope", fn, Ban(python=(rope.apply_rope, rope.apply_rope_complex),
                                      hint="Rotate each pair (x[2i], x[2i+1]) with cos and sin."))
    g = gen(8)
    cases = [
        ("x (2, 3, 6, 8), positions 0..5", randn(g, 2, 3, 6, 8), torch.arange(6), 10000.0),
        ("x (5, 4), shuffled positions", randn(g, 5, 4), torch.tensor([3, 0, 9, 1, 4]), 10000.0),
        ("d=2", randn(g, 1, 4, 2), torch.arange(4), 10000.0),
        ("theta=500, d=16", randn(g, 2, 7, 16), torch.arange(7), 500.0),
        ("large positions (4090..4095)", randn(g, 3, 6, 32), torch.arange(4090, 4096), 10000.0),
        ("float64 x", randn(g, 2, 5, 6, dtype=torch.float64), torch.arange(5), 10000.0),
    ]
    for label, x, pos, theta in cases:
        with c.case(label):
            got = c.call(label, x, pos) if theta == 10000.0 else c.call(label, x, pos, theta)
            want = _rope(x, pos, theta)
            wrong = [
                (_rope(x, pos, theta, sign=-1.0), "you rotated by minus the angle: pair (a, b) becomes "
                 "(a cos - b sin, a sin + b cos)"),
                (_rope(x, pos, theta, exponent_scale=1.0), "pair i turns at frequency theta^(-2i/d), "
                 "not theta^(-i/d)"),
                (x.double(), "nothing was rotated: the output equals the input"),
            ]
            if x.shape[-1] > 2:
                wrong.insert(0, (_rope(x, pos, theta, pairing="half"), "you rotated the half-split pairs "
                                 "(x[i], x[i + d/2]) (GPT-NeoX / Hugging Face); this exercise asks for "
                                 "interleaved pairs (x[2i], x[2i+1]) as in RoFormer"))
            # A float32 angle p * freq is off by up to p * 2^-24 rad: at p ~ 4000 that is ~2e-4.
            # Angle tables are commonly built in float32 even for float64 inputs, so float64 gets
            # the small-position float32 bound too.
            tol = dict(rtol=1e-3, atol=3e-3) if pos.max() > 100 else dict(rtol=1e-4, atol=1e-5)
            if isinstance(got, torch.Tensor) and got.shape == x.shape and not torch.allclose(
                    got.detach().double().norm(dim=-1), x.double().norm(dim=-1), rtol=1e-3):
                c.fail(label, "a rotation keeps every vector's length, but yours changed it")
            c.expect(label, got, want, what="rotated tensor", wrong=wrong, dtype=x.dtype, tol=tol)
    return c.passed("batched, shuffled and large positions, d=2, custom theta, float64")


def _alibi(H, n_q, n_k, slopes, offset=None, absolute=True, sign=-1.0):
    offset = n_k - n_q if offset is None else offset
    dist = (torch.arange(n_q)[:, None] + offset - torch.arange(n_k)[None, :]).double()
    dist = dist.abs() if absolute else dist
    return sign * torch.tensor(slopes, dtype=torch.float64)[:, None, None] * dist


def _paper_slopes(H):
    return alibi.alibi_slopes(H).double().tolist()


def check_alibi_bias(fn) -> str:
    """Check ``fn(n_heads, n_q, n_k) -> (H, n_q, n_k)``: -slope_h * |i + n_k - n_q - j|."""
    c = Checker("alibi_bias", fn, Ban(python=(alibi.alibi_bias, alibi.alibi_slopes),
                                      hint="Compute the slopes and the distance matrix yourself."))
    for H, n_q, n_k in [(8, 5, 5), (4, 3, 7), (6, 4, 4), (12, 2, 9), (1, 1, 1), (3, 5, 2), (16, 6, 6)]:
        label = f"n_heads={H}, n_q={n_q}, n_k={n_k}"
        with c.case(label):
            got = c.call(label, H, n_q, n_k)
            slopes = _paper_slopes(H)
            naive = [2.0 ** (-8.0 * (h + 1) / H) for h in range(H)]
            wrong = [
                (_alibi(H, n_q, n_k, slopes, sign=1.0), "the bias must be negative: far-away keys are "
                                                         "penalised, -slope * distance"),
                (_alibi(H, n_q, n_k, slopes[::-1]), "the slopes are in reverse order: head 0 gets the largest "
                                                    "slope 2^(-8/H)"),
                (_alibi(H, n_q, n_k, slopes, offset=0), "queries are aligned to the bottom right: query i sits "
                 "at position i + n_k - n_q"),
                (_alibi(H, n_q, n_k, slopes, absolute=False), "use the absolute distance |i' - j|"),
            ]
            if slopes != naive:
                wrong.append((_alibi(H, n_q, n_k, naive), f"for n_heads={H}, not a power of two, the ALiBi "
                              "paper takes the 2^(-8(h+1)/n) slopes of the closest power of two n below H, then "
                              "every other slope of 2n heads, until there are H"))
            c.expect(label, got, _alibi(H, n_q, n_k, slopes), what="bias", wrong=wrong, dtype=torch.float32)
    return c.passed("powers of two and not, n_q != n_k")
