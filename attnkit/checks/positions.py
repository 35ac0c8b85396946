"""Checkers for notebook 06: sinusoidal positions, RoPE and ALiBi."""

from __future__ import annotations

import torch

from .. import alibi, positions, rope
from ._harness import Ban, Checker, gen, randn


def _call(c: Checker, label: str, *args, raised=(), **kwargs):
    """``c.call``, except that when the learner's function raises, the first of ``raised``
    (``(condition(message), hint)`` pairs) that fits the error puts its hint first."""
    try:
        return c.call(label, *args, **kwargs)
    except AssertionError as e:
        message = str(e)
        prefix = f"{c.name}: your function raised "
        if message.startswith(prefix):
            error = message[len(prefix):].split("\n  failing case:")[0]
            for condition, hint in raised:
                if condition(error):
                    raise AssertionError(f"{c.name}: {hint}\n  your function raised {error}\n"
                                         f"  failing case: {label}") from e.__cause__
        raise


_GENERIC = ("largest difference", " at index ")


def _expect(c: Checker, label: str, got, want, *, unexplained: str | None = None, **kwargs) -> None:
    """``c.expect``; when the values are wrong in no known way and ``unexplained`` says what is
    still certain about them, that sentence comes first and the difference goes on the next line."""
    try:
        c.expect(label, got, want, **kwargs)
    except AssertionError as e:
        first, _, rest = str(e).partition("\n")
        if unexplained and any(g in first for g in _GENERIC):
            detail = first.split(": ", 1)[-1]
            raise AssertionError(f"{c.name}: {unexplained}\n  {detail}\n{rest}") from None
        raise


def _dtype(c: Checker, label: str, got, want: torch.dtype, hint: str) -> None:
    if isinstance(got, torch.Tensor) and got.dtype != want:
        c.fail(label, f"{hint} (got {got.dtype}, expected {want})")


# ---------------------------------------------------------------------------- sinusoidal positions


def _sinusoid(n, d, exponent_scale=2.0, swap=False, split=False, invert=False, start=0, freq=None,
              column_index=False, odd_last_zero=False, base=10000.0, denominator=None):
    p = torch.arange(start, start + n, dtype=torch.float64)[:, None]
    i = torch.arange((d + 1) // 2, dtype=torch.float64)
    scale = base ** (exponent_scale * i / (denominator or d)) if freq is None else torch.full_like(i, freq)
    angle = p * scale if invert else p / scale  # (n, ceil(d/2))
    s, co = torch.sin(angle), torch.cos(angle)[:, : d // 2]
    if column_index:  # column 2i+1 with exponent (2i+1)/d
        co = torch.cos(p / 10000.0 ** ((2 * i[: d // 2] + 1) / d))
    if swap:
        s, co = torch.cos(angle), torch.sin(angle)[:, : d // 2]
    if split:
        return torch.cat((s, co), dim=1)
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = s, co
    if odd_last_zero and d % 2:
        pe[:, -1] = 0.0
    return pe


_ODD_D = ("an odd d ends with a sine column: there are ceil(d/2) sine columns and floor(d/2) cosine columns, "
          "so slice the cosines, torch.cos(angle)[:, : d // 2]")


def check_sinusoidal_positions(fn) -> str:
    """Check ``fn(n, d) -> (n, d)`` float32, PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos."""
    c = Checker("sinusoidal_positions", fn, Ban(python=(positions.sinusoidal_positions,),
                                                hint="Build the angles with torch.arange and take sin/cos."))
    for n, d in [(10, 16), (50, 8), (7, 7), (1, 4), (3, 1), (200, 64)]:
        label = f"n={n}, d={d}"
        with c.case(label):
            got = _call(c, label, n, d, raised=[(lambda e, d=d: d % 2 == 1, _ODD_D)])
            want = _sinusoid(n, d)
            wrong = [
                (_sinusoid(n, d, swap=True), "sin and cos are swapped: even columns 2i hold the sine, odd "
                                             "columns 2i+1 the cosine"),
                (_sinusoid(n, d, exponent_scale=1.0), "the exponent is 2i/d where 2i is the even column "
                 "index (pair i), so frequencies run from 1 down to 1/10000; you used i/d"),
                (_sinusoid(n, d, split=True), "the sines and cosines must be interleaved (column 2i sin, "
                                              "column 2i+1 cos), not all sines followed by all cosines"),
                (_sinusoid(n, d, invert=True), "divide the position by 10000^(2i/d) (the frequencies fall from "
                                               "1 to about 1/10000); you multiplied by it"),
                (_sinusoid(n, d, start=1), "positions start at 0: row p is position p, so row 0 is "
                                           "sin(0) = 0 and cos(0) = 1; yours starts at 1"),
                (_sinusoid(n, d, freq=1.0), "every pair turns at the same frequency: 10000^(2i/d) came out as 1. "
                 "Integer division? 2 * i // d is 0 for every pair; divide with /"),
                (_sinusoid(n, d, column_index=True), "column 2i+1 uses the same angle as column 2i, "
                 "p / 10000^(2i/d); you gave the cosine column the exponent (2i+1)/d"),
                (_sinusoid(n, d, odd_last_zero=True), _ODD_D),
                *[(_sinusoid(n, d, base=b), f"the base is 10000: PE[p, 2i] = sin(p / 10000^(2i/d)), not "
                                            f"{b:g}^(2i/d)") for b in (1000.0, 100000.0, 10.0, 100.0)],
                (_sinusoid(n, d).T, f"the table is transposed: rows are the n={n} positions, columns the "
                                    f"d={d} features, shape (n, d)"),
            ]
            if d % 2 and d > 1:
                wrong.append((_sinusoid(n, d, denominator=d - 1), "for odd d the exponent still divides by d itself: "
                              "10000^(2i/d), not 10000^(2i/(d-1))"))
            _dtype(c, label, got, torch.float32, "return a float32 table: compute in float64 if you like, "
                                                 "then return pe.float()")
            c.expect(label, got, want, what="position table", dtype=torch.float32,
                     tol=dict(rtol=1e-5, atol=2e-5), wrong=wrong)
    return c.passed("odd d, d=1, n=1, long tables")


# ---------------------------------------------------------------------------- RoPE


def _rope(x, pos, theta=10000.0, pairing="interleaved", sign=1.0, exponent_scale=2.0, join="stack",
          sequential=False, freq=None):
    x = x.double()
    d = x.shape[-1]
    freqs = theta ** (-exponent_scale * torch.arange(d // 2, dtype=torch.float64) / d)
    if freq is not None:
        freqs = torch.full_like(freqs, freq)
    ang = sign * pos.double()[:, None] * freqs  # (N, d/2)
    if pairing == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
    r1 = a * ang.cos() - b * ang.sin()
    r2 = (r1 if sequential else a) * ang.sin() + b * ang.cos()
    if pairing == "interleaved" and join == "stack":
        return torch.stack((r1, r2), -1).flatten(-2)
    return torch.cat((r1, r2), -1)


def check_apply_rope(fn) -> str:
    """Check ``fn(x (..., N, d), positions (N,), theta=10000.0)``, interleaved RoFormer rotation."""
    c = Checker("apply_rope", fn, Ban(python=(rope.apply_rope, rope.apply_rope_complex),
                                      hint="Rotate each pair (x[2i], x[2i+1]) with cos and sin."))
    g = gen(8)
    cases = [
        ("x (2, 6, 8), positions 0..5", randn(g, 2, 6, 8), torch.arange(6), 10000.0),
        ("x (5, 4), shuffled positions", randn(g, 5, 4), torch.tensor([3, 0, 9, 1, 4]), 10000.0),
        ("x (2, 3, 6, 8), positions 0..5", randn(g, 2, 3, 6, 8), torch.arange(6), 10000.0),
        ("x (2, 2, 3, 5, 6) (5-D), positions 2..6", randn(g, 2, 2, 3, 5, 6), torch.arange(2, 7), 10000.0),
        ("d=2", randn(g, 1, 4, 2), torch.arange(4), 10000.0),
        ("theta=500, d=16", randn(g, 2, 7, 16), torch.arange(7), 500.0),
        ("large positions (4090..4095)", randn(g, 3, 6, 32), torch.arange(4090, 4096), 10000.0),
        ("float64 x", randn(g, 2, 5, 6, dtype=torch.float64), torch.arange(5), 10000.0),
        ("x (4, 4, 6): the leading size equals N", randn(g, 4, 4, 6), torch.arange(3, 7), 10000.0),
    ]
    worked = set()  # the numbers of dimensions the function ran on
    for label, x, pos, theta in cases:
        with c.case(label):
            leading = ("x is (..., N, d): any number of leading dimensions, also none (this case is "
                       f"{x.ndim}-D); take the sizes from the end (x.shape[-1]) and slice with x[..., 0::2]")
            raised = [(lambda e, n=x.ndim: worked and n not in worked, leading)]
            got = (_call(c, label, x, pos, raised=raised) if theta == 10000.0
                   else _call(c, label, x, pos, theta, raised=raised))
            worked.add(x.ndim)
            want = _rope(x, pos, theta)
            d = x.shape[-1]
            wrong = [
                (_rope(x, pos, theta, sign=-1.0), "you rotated by minus the angle: pair (a, b) becomes "
                 "(a cos - b sin, a sin + b cos)"),
                (_rope(x, pos, theta, exponent_scale=1.0), "pair i turns at frequency theta^(-2i/d), "
                 "not theta^(-i/d)"),
                (x.double(), "nothing was rotated: the output equals the input"),
                (_rope(x, pos, theta, sequential=True), "the second component was computed from the already "
                 "rotated first one: compute both from the original pair, (a cos - b sin, a sin + b cos)"),
                (_rope(x, pos, theta, freq=1.0), "every pair turns at the same frequency: theta^(-2i/d) came out "
                 "as 1. Integer division? 2 * i // d is 0 for every pair; divide with /"),
            ]
            if x.ndim >= 3 and x.shape[0] == pos.shape[0]:
                wrong.append((torch.stack([_rope(x[a], pos[a].expand(pos.shape[0]), theta) for a in range(x.shape[0])]),
                              "the angles were lined up with the first axis of x, not the token axis -2: the position "
                              "of x[..., n, :] is positions[n], so cos and sin of shape (N, d/2) broadcast over the "
                              "leading axes"))
            if d > 2:
                wrong[:0] = [
                    (_rope(x, pos, theta, join="cat"), "you rotated the right pairs (x[2i], x[2i+1]) but put the "
                     "results back with torch.cat, all first components then all second ones; interleave them "
                     "again: torch.stack((r1, r2), dim=-1).flatten(-2)"),
                    (_rope(x, pos, theta, pairing="half"), "you rotated the half-split pairs (x[i], x[i + d/2]) "
                     "(GPT-NeoX / Hugging Face); this exercise asks for interleaved pairs (x[2i], x[2i+1]) as "
                     "in RoFormer"),
                ]
            if theta != 10000.0:
                wrong.append((_rope(x, pos), f"theta was ignored: the frequencies are theta^(-2i/d) with the "
                                             f"theta passed in (this case has theta={theta:g})"))
            if not torch.equal(pos, torch.arange(len(pos))):
                wrong.append((_rope(x, torch.arange(len(pos)), theta), "you rotated token t by its index t; "
                              "rotate it by the positions you were given, positions[t]"))
            # A float32 angle p * freq is off by up to p * 2^-24 rad: at p ~ 4000 that is ~2e-4.
            # Angle tables are commonly built in float32 even for float64 inputs, so float64 gets
            # the small-position float32 bound too.
            tol = dict(rtol=1e-3, atol=3e-3) if pos.max() > 100 else dict(rtol=1e-4, atol=1e-5)
            _dtype(c, label, got, x.dtype, "return a tensor of x's dtype: cast back with .to(x.dtype)")
            stretched = (isinstance(got, torch.Tensor) and got.shape == x.shape and not torch.allclose(
                got.detach().double().norm(dim=-1), x.double().norm(dim=-1), rtol=1e-3))
            _expect(c, label, got, want, what="rotated tensor", wrong=wrong, dtype=x.dtype, tol=tol,
                    unexplained="a rotation keeps every vector's length, but yours changed it" if stretched else None)
    return c.passed("2-D to 5-D x, shuffled and large positions, d=2, custom theta, float64")


# ---------------------------------------------------------------------------- ALiBi


def _alibi(H, n_q, n_k, slopes, offset=None, absolute=True, sign=-1.0):
    offset = n_k - n_q if offset is None else offset
    dist = (torch.arange(n_q)[:, None] + offset - torch.arange(n_k)[None, :]).double()
    dist = dist.abs() if absolute else dist
    return sign * torch.tensor(slopes, dtype=torch.float64)[:, None, None] * dist


def _paper_slopes(H):
    return alibi.alibi_slopes(H).double().tolist()


def _geometric(n):
    return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]


def check_alibi_bias(fn) -> str:
    """Check ``fn(n_heads, n_q, n_k) -> (H, n_q, n_k)``: -slope_h * |i + n_k - n_q - j|."""
    c = Checker("alibi_bias", fn, Ban(python=(alibi.alibi_bias, alibi.alibi_slopes),
                                      hint="Compute the slopes and the distance matrix yourself."))
    for H, n_q, n_k in [(8, 5, 5), (4, 3, 7), (6, 4, 4), (12, 2, 9), (1, 1, 1), (3, 5, 2), (16, 6, 6)]:
        label = f"n_heads={H}, n_q={n_q}, n_k={n_k}"
        with c.case(label):
            got = c.call(label, H, n_q, n_k)
            slopes = _paper_slopes(H)
            want = _alibi(H, n_q, n_k, slopes)
            wrong = [
                (_alibi(H, n_q, n_k, slopes, sign=1.0), "the bias must be negative: far-away keys are "
                                                         "penalised, -slope * distance"),
                (_alibi(H, n_q, n_k, slopes[::-1]), "the slopes are in reverse order: head 0 gets the largest "
                                                    "slope 2^(-8/H)"),
                (_alibi(H, n_q, n_k, slopes, offset=0), "queries are aligned to the bottom right: query i sits "
                 "at position i + n_k - n_q"),
                (_alibi(H, n_q, n_k, slopes, absolute=False), "use the absolute distance |i' - j|"),
                (_alibi(H, n_q, n_k, slopes, absolute=False).clamp(max=0),
                 "keys after the query got a bias of 0: the bias is -slope * |i' - j| for every key, future ones too "
                 "(a causal mask, not the bias, hides those); do not clamp the distance at 0"),
                (-_alibi(H, n_q, n_k, slopes, absolute=False), "use the absolute distance |i' - j|"),
            ]
            if H & (H - 1):  # not a power of two
                rule = (f"for n_heads={H}, not a power of two, the ALiBi paper takes the 2^(-8(h+1)/n) slopes of "
                        "the closest power of two n below H, then every other slope of 2n heads, starting with "
                        "the first, until there are H")
                n = 1 << (H.bit_length() - 1)
                for variant in (_geometric(H), _geometric(2 * n)[:H], _geometric(n) + _geometric(2 * n)[1::2][: H - n]):
                    wrong.append((_alibi(H, n_q, n_k, variant), rule))
            wrong += [
                (_alibi(H, n_q, n_k, [2.0 ** (-8.0 * h / H) for h in range(H)]), "head h's slope is "
                 "2^(-8(h+1)/H): head 0 gets 2^(-8/H), not 1 (the exponent counts from h + 1)"),
                (_alibi(H, n_q, n_k, [2.0 ** -(h + 1) for h in range(H)]), "the slopes depend on the number of "
                 f"heads: 2^(-8(h+1)/H); 1/2, 1/4, 1/8, ... is the sequence for 8 heads, this case has {H}"),
                (want.permute(1, 2, 0), "the heads come first: return (n_heads, n_q, n_k), e.g. "
                                        "-slopes.view(-1, 1, 1) * distance"),
                (want.transpose(1, 2), "rows are queries and columns keys: return (n_heads, n_q, n_k); yours "
                                       "is (n_heads, n_k, n_q)"),
            ]
            _dtype(c, label, got, torch.float32, "return a float32 bias")
            c.expect(label, got, want, what="bias", wrong=wrong, dtype=torch.float32)
    return c.passed("powers of two and not, n_q != n_k")
