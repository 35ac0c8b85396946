"""Property-based shapes (hypothesis): every valid shape works and agrees with PyTorch."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit

SETTINGS = settings(max_examples=40, deadline=None)
dims = st.integers(1, 6)


def _t(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@SETTINGS
@given(b=st.integers(1, 3), h=dims, nq=dims, nk=dims, d=dims, dv=dims, causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_sdpa_any_shape(b, h, nq, nk, d, dv, causal, seed):
    q, k, v = _t(seed, b, h, nq, d), _t(seed + 1, b, h, nk, d), _t(seed + 2, b, h, nk, dv)
    mask = attnkit.causal_mask(nq, nk) if causal else None
    out, w = attnkit.scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (b, h, nq, dv) and w.shape == (b, h, nq, nk)
    assert not torch.isnan(out).any()
    rows = mask.any(-1) if causal else torch.ones(nq, dtype=torch.bool)
    torch.testing.assert_close(w.sum(-1)[..., rows], torch.ones_like(w.sum(-1)[..., rows]))
    assert torch.equal(out[..., ~rows, :], torch.zeros_like(out[..., ~rows, :]))
    if rows.all():
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@SETTINGS
@given(b=st.integers(1, 3), hkv=st.integers(1, 3), rep=st.integers(1, 3), nq=dims, nk=dims, d=dims,
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_gqa_any_shape(b, hkv, rep, nq, nk, d, causal, seed):
    q, k, v = _t(seed, b, hkv * rep, nq, d), _t(seed + 1, b, hkv, nk, d), _t(seed + 2, b, hkv, nk, d)
    got = attnkit.grouped_query_attention(q, k, v, is_causal=causal)
    mask = attnkit.causal_mask(nq, nk) if causal else None
    want, _ = attnkit.scaled_dot_product_attention(q, attnkit.repeat_kv(k, rep), attnkit.repeat_kv(v, rep), mask)
    torch.testing.assert_close(got, want)
    if not causal or nq <= nk:
        mask_t = mask if causal else None
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask_t, enable_gqa=True))


@SETTINGS
@given(b=st.integers(1, 3), n=dims, h=dims, d=dims, seed=st.integers(0, 2**16))
def test_split_merge_roundtrip(b, n, h, d, seed):
    x = _t(seed, b, n, h * d)
    heads = attnkit.split_heads(x, h)
    assert heads.shape == (b, h, n, d)
    assert torch.equal(attnkit.merge_heads(heads), x)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), scale=st.sampled_from([1.0, 1e3, 1e5]),
       seed=st.integers(0, 2**16), data=st.data())
def test_softmax_any_shape_and_scale(shape, scale, seed, data):
    x = _t(seed, *shape) * scale
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    got = attnkit.softmax(x, dim)
    torch.testing.assert_close(got, torch.softmax(x, dim))
    torch.testing.assert_close(got.sum(dim), torch.ones_like(got.sum(dim)))


@SETTINGS
@given(nq=st.integers(0, 9), nk=st.integers(0, 9), h=st.integers(1, 12))
def test_masks_and_alibi_shapes(nq, nk, h):
    m = attnkit.causal_mask(nq, nk)
    assert m.shape == (nq, nk)
    if nq <= nk and nq:
        assert m.any(-1).all()  # nobody is fully masked when queries are the last tokens
    bias = attnkit.alibi_bias(h, nq, nk)
    assert bias.shape == (h, nq, nk) and (bias <= 0).all()
    if nq and nk and nq <= nk:
        assert torch.equal(bias[:, :, -1][:, -1], torch.zeros(h))  # the last query sees the last key at distance 0


@SETTINGS
@given(n=st.integers(1, 8), half_d=st.integers(1, 6), seed=st.integers(0, 2**16),
       offset=st.integers(0, 10_000))
def test_rope_any_shape_is_rotation(n, half_d, seed, offset):
    x = _t(seed, 2, n, 2 * half_d)
    pos = torch.arange(offset, offset + n)
    for pairing in ("interleaved", "half"):
        r = attnkit.apply_rope(x, pos, pairing=pairing)
        torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))
