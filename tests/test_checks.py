"""Every checker accepts correct implementations written differently from the reference,
rejects known-wrong ones with the hint that names the mistake, and rejects shortcuts."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import checks
from attnkit.checks import CHECKS

# ---------------------------------------------------------------- correct, written differently
# (exercises with a mutant library, tests/library_*.py, keep their correct styles there)


def softmax_loopish(x, dim=-1):
    m = torch.nan_to_num(x.max(dim, keepdim=True).values, neginf=0.0)
    e = torch.exp(x - m)
    s = e.sum(dim, keepdim=True)
    return torch.where(s == 0, torch.zeros_like(e), e / s)


def causal_tril(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)


def sinusoid_vectorised(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float32)
    ang = pos * torch.exp(-math.log(10000.0) * i / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe


def rope_complex(x, positions, theta=10000.0):
    d = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * freqs)
    z = torch.view_as_complex(x.double().unflatten(-1, (d // 2, 2)).contiguous())
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


def alibi_loop(n_heads, n_q, n_k):
    def slopes(n):
        if n & (n - 1) == 0:
            return [2 ** (-8 * (h + 1) / n) for h in range(n)]
        p = 1 << (n.bit_length() - 1)
        return slopes(p) + slopes(2 * p)[::2][: n - p]
    out = torch.zeros(n_heads, n_q, n_k)
    for h, s in enumerate(slopes(n_heads)):
        for i in range(n_q):
            for j in range(n_k):
                out[h, i, j] = -s * abs(i + n_k - n_q - j)
    return out


def decode_with_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache):
    k_cache = torch.cat([k_cache, k_t], dim=-2)
    v_cache = torch.cat([v_cache, v_t], dim=-2)
    return F.scaled_dot_product_attention(q_t, k_cache, v_cache), k_cache, v_cache


def repeat_expand(x, n_rep):
    B, H, N, d = x.shape
    return x.unsqueeze(2).expand(B, H, n_rep, N, d).reshape(B, H * n_rep, N, d)


def gqa_grouped(q, k, v, is_causal=False):
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hkv, Hq // Hkv, Nq, d)
    s = qg @ k.unsqueeze(2).transpose(-1, -2) / math.sqrt(d)
    if is_causal:
        s = s.masked_fill(~causal_tril(Nq, Nk), float("-inf"))
    return (softmax_loopish(s) @ v.unsqueeze(2)).reshape(B, Hq, Nq, -1)


def gqa_with_repeat_and_attnkit(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = attnkit.causal_mask(q.shape[2], k.shape[2]) if is_causal else None
    return attnkit.scaled_dot_product_attention(q, repeat_expand(k, n), repeat_expand(v, n), mask)[0]


CORRECT = {
    "sinusoidal_positions": [sinusoid_vectorised],
    "apply_rope": [rope_complex],
    "alibi_bias": [alibi_loop],
    "decode_step": [decode_with_torch_sdpa],
    "repeat_kv": [repeat_expand],
    "grouped_query_attention": [gqa_grouped, gqa_with_repeat_and_attnkit],
}


def test_every_exercise_has_a_checker_and_correct_alternatives():
    from test_efficient_checks import CORRECT as EFFICIENT
    from test_triton_flash import CORRECT as TRITON_FLASH
    from test_triton_softmax import CORRECT as TRITON_SOFTMAX
    from test_modern_checks import CORRECT as MODERN
    from test_beyond_checks import CORRECT as BEYOND
    from library import libraries
    in_libraries = {e.name for e in libraries() if e.correct}
    assert set(CHECKS) == (set(CORRECT) | in_libraries | {name for name, _ in EFFICIENT + TRITON_SOFTMAX + TRITON_FLASH
                                                          + MODERN + BEYOND if name in CHECKS}) & set(CHECKS)
    for name, checker in CHECKS.items():
        assert checker is getattr(checks, f"check_{name}")
        assert callable(getattr(attnkit, name))


@pytest.mark.parametrize("name,fn", [(n, f) for n, fs in CORRECT.items() for f in fs],
                         ids=lambda v: getattr(v, "__name__", v))
def test_checker_accepts_correct_implementation(name, fn, capsys):
    CHECKS[name](fn)
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and out.startswith(f"check_{name} passed")


# ---------------------------------------------------------------- shortcuts


def _shortcut_cases():
    return [
        ("dot_product_scores", attnkit.dot_product_scores, "attnkit"),
        ("dot_product_scores", lambda q, k: attnkit.similarity.dot_product_scores(q, k), "attnkit"),
        ("softmax", lambda x, dim=-1: torch.softmax(x, dim), "torch.softmax"),
        ("softmax", lambda x, dim=-1: F.softmax(x, dim=dim), "softmax"),
        ("softmax", lambda x, dim=-1: x.softmax(dim), "softmax"),
        ("softmax", lambda x, dim=-1: torch.nn.Softmax(dim)(x), "softmax"),
        ("softmax", lambda x, dim=-1: torch.exp(F.log_softmax(x, dim)), "log_softmax"),
        ("softmax", lambda x, dim=-1: torch.ops.aten._softmax(x, dim, False), "aten._softmax"),
        ("softmax", attnkit.softmax, "attnkit"),
        ("scaled_dot_product_attention",
         lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None),
         "scaled_dot_product_attention"),
        ("scaled_dot_product_attention", attnkit.scaled_dot_product_attention, "attnkit"),
        ("causal_mask", attnkit.causal_mask, "attnkit"),
        ("padding_mask", lambda l, n: attnkit.padding_mask(l, n), "attnkit"),
        ("split_heads", attnkit.split_heads, "attnkit"),
        ("merge_heads", attnkit.merge_heads, "attnkit"),
        ("multi_head_attention", attnkit.multi_head_attention, "attnkit"),
        ("multi_head_attention", _mha_via_torch_module, "MultiheadAttention"),
        ("sinusoidal_positions", attnkit.sinusoidal_positions, "attnkit"),
        ("apply_rope", lambda x, p, theta=10000.0: attnkit.apply_rope(x, p, theta), "attnkit"),
        ("apply_rope", lambda x, p, theta=10000.0: attnkit.apply_rope_complex(x, p, theta), "attnkit"),
        ("alibi_bias", attnkit.alibi_bias, "attnkit"),
        ("decode_step", attnkit.decode_step, "attnkit"),
        ("repeat_kv", attnkit.repeat_kv, "attnkit"),
        ("grouped_query_attention", attnkit.grouped_query_attention, "attnkit"),
        ("grouped_query_attention",
         lambda q, k, v, is_causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True),
         "scaled_dot_product_attention"),
    ]


def _mha_via_torch_module(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    D = x.shape[-1]
    m = torch.nn.MultiheadAttention(D, n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat((w_q, w_k, w_v)))
        m.out_proj.weight.copy_(w_o)
    return m(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("name,fn,word", _shortcut_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_checker_rejects_shortcuts(name, fn, word):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    message = str(info.value)
    assert "calls" in message and word in message, message


def test_spy_does_not_leak_after_a_check():
    checks.check_softmax(softmax_loopish)
    import sys
    assert sys.getprofile() is None
    torch.softmax(torch.zeros(3), 0)  # no mode left active: plain torch works as before
    from torch.overrides import _get_current_function_mode_stack
    assert not _get_current_function_mode_stack()


# ---------------------------------------------------------------- known-wrong implementations


def _stub(*args, **kwargs):
    raise NotImplementedError


def _attn(q, k, v, mask, scale, softmax_dim=-1, mask_after=False, fill=float("-inf"), invert=False):
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and not mask_after:
        s = s.masked_fill(~mask, fill)
    w = torch.nan_to_num(softmax_loopish(s, softmax_dim), nan=0.0)
    if mask is not None and mask_after:
        w = w * mask
    return w @ v, w


def causal_top_left(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril()


def sinusoid_swapped_simple(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.cos(ang)
    pe[:, 1::2] = torch.sin(ang)[:, : d // 2]
    return pe


def sinusoid_i_over_d(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange((d + 1) // 2) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang)[:, : d // 2]
    return pe


def sinusoid_concatenated(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2) / d)
    return torch.cat((torch.sin(ang), torch.cos(ang)[:, : d // 2]), 1)


def rope_half_split(x, positions, theta=10000.0):
    return _rope_generic(x, positions, theta, half=True)


def _rope_generic(x, positions, theta, half=False, sign=1.0, exponent=2.0):
    d = x.shape[-1]
    freqs = theta ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)
    ang = sign * positions.double()[:, None] * freqs
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = (x[..., : d // 2], x[..., d // 2:]) if half else (x[..., 0::2], x[..., 1::2])
    r1, r2 = a * c - b * s, a * s + b * c
    return torch.cat((r1, r2), -1) if half else torch.stack((r1, r2), -1).flatten(-2)


def rope_backwards(x, positions, theta=10000.0):
    return _rope_generic(x, positions, theta, sign=-1.0)


def rope_wrong_frequency(x, positions, theta=10000.0):
    return _rope_generic(x, positions, theta, exponent=1.0)


def rope_scales(x, positions, theta=10000.0):
    return _rope_generic(x, positions, theta) * 1.5


def _alibi_generic(n_heads, n_q, n_k, slopes=None, offset=None, absolute=True, sign=-1.0):
    slopes = torch.tensor(slopes if slopes is not None else attnkit.alibi.alibi_slopes(n_heads).tolist())
    offset = n_k - n_q if offset is None else offset
    dist = (torch.arange(n_q)[:, None] + offset - torch.arange(n_k)[None]).float()
    dist = dist.abs() if absolute else dist
    return sign * slopes[:, None, None] * dist


def alibi_naive_slopes(n_heads, n_q, n_k):
    return _alibi_generic(n_heads, n_q, n_k, slopes=[2 ** (-8 * (h + 1) / n_heads) for h in range(n_heads)])


def alibi_top_left(n_heads, n_q, n_k):
    return _alibi_generic(n_heads, n_q, n_k, slopes=alibi_loop(n_heads, 1, 2)[:, 0, 0].abs().tolist(), offset=0)


def alibi_positive(n_heads, n_q, n_k):
    return -alibi_loop(n_heads, n_q, n_k)


def alibi_signed(n_heads, n_q, n_k):
    return _alibi_generic(n_heads, n_q, n_k, slopes=alibi_loop(n_heads, 1, 2)[:, 0, 0].abs().tolist(), absolute=False)


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
    return decode_with_torch_sdpa(q_t, k_t, v_t, k_cache, v_cache)[0]


def repeat_tiled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def repeat_tokens(x, n_rep):
    return x.repeat_interleave(n_rep, dim=2)


def repeat_cat(x, n_rep):
    return torch.cat([x] * n_rep, dim=1)


def gqa_tiled(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    mask = causal_tril(q.shape[2], k.shape[2]) if is_causal else None
    return F.scaled_dot_product_attention(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1), attn_mask=mask)


def gqa_top_left(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    return _attn(q, repeat_expand(k, n), repeat_expand(v, n),
                 causal_top_left(q.shape[2], k.shape[2]) if is_causal else None, q.shape[-1] ** -0.5)[0]


def gqa_ignores_causal(q, k, v, is_causal=False):
    return gqa_grouped(q, k, v, False)


def gqa_no_scale(q, k, v, is_causal=False):
    n = q.shape[1] // k.shape[1]
    return _attn(q, repeat_expand(k, n), repeat_expand(v, n),
                 causal_tril(q.shape[2], k.shape[2]) if is_causal else None, 1.0)[0]


WRONG = [
    # (exercise, wrong implementation, words the hint must contain)
    ("dot_product_scores", _stub, "not implemented"),
    ("sinusoidal_positions", sinusoid_swapped_simple, "swapped"),
    ("sinusoidal_positions", sinusoid_i_over_d, "2i/d"),
    ("sinusoidal_positions", sinusoid_concatenated, "interleaved"),
    ("apply_rope", rope_half_split, "half-split"),
    ("apply_rope", rope_backwards, "minus the angle"),
    ("apply_rope", rope_wrong_frequency, "theta^(-2i/d)"),
    ("apply_rope", rope_scales, "length"),
    ("alibi_bias", alibi_naive_slopes, "not a power of two"),
    ("alibi_bias", alibi_top_left, "bottom right"),
    ("alibi_bias", alibi_positive, "negative"),
    ("alibi_bias", alibi_signed, "absolute distance"),
    ("decode_step", decode_forgets_self, "itself"),
    ("decode_step", decode_prepends, "front of the cache"),
    ("decode_step", decode_no_scale, "sqrt(d)"),
    ("decode_step", decode_returns_out_only, "three tensors"),
    ("repeat_kv", repeat_tiled, "repeat_interleave"),
    ("repeat_kv", repeat_tokens, "token axis"),
    ("repeat_kv", repeat_cat, "[a, a, b, b]"),
    ("grouped_query_attention", gqa_tiled, "tiled"),
    ("grouped_query_attention", gqa_top_left, "top left"),
    ("grouped_query_attention", gqa_ignores_causal, "is_causal was ignored"),
    ("grouped_query_attention", gqa_no_scale, "sqrt(d)"),
]


def test_every_checker_has_at_least_three_known_wrong_implementations():
    from test_efficient_checks import WRONG as EFFICIENT_WRONG
    from test_triton_flash import WRONG as TRITON_FLASH_WRONG
    from test_triton_softmax import WRONG as TRITON_SOFTMAX_WRONG
    from test_modern_checks import WRONG as MODERN_WRONG
    from test_beyond_checks import WRONG as BEYOND_WRONG
    everything = WRONG + EFFICIENT_WRONG + TRITON_SOFTMAX_WRONG + TRITON_FLASH_WRONG + MODERN_WRONG + BEYOND_WRONG
    counts = {name: sum(1 for n, f, _ in everything if n == name and f is not _stub) for name in CHECKS}
    from library import libraries
    for exercise in libraries():
        if exercise.name in counts:
            counts[exercise.name] += len(exercise.mutants)
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("name,fn,words", WRONG, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG])
def test_checker_rejects_known_wrong_with_the_right_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(name + ":"), first_line
    assert words in first_line, first_line


def test_checker_rejects_non_callable():
    with pytest.raises(TypeError, match="no parentheses"):
        checks.check_softmax(softmax_loopish(torch.zeros(3)))


def test_checker_keeps_the_learners_traceback():
    def broken(x, dim=-1):
        return x.undefined_method()

    with pytest.raises(AssertionError) as info:
        checks.check_softmax(broken)
    assert "AttributeError" in str(info.value)
    assert isinstance(info.value.__cause__, AttributeError)
