"""Every reference against an independent one: PyTorch's SDPA and MultiheadAttention, float64 loops."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from sizes import NK, NQ, rand
from reference_loops import alibi_slopes_paper, attention_2d, causal_allowed, rope_vector, sinusoid, softmax_row


def test_dot_product_scores_matches_loop(g):
    q, k = rand(g, NQ, 5), rand(g, NK, 5)
    s = attnkit.dot_product_scores(q, k)
    assert s.shape == (NQ, NK)
    for i in range(NQ):
        for j in range(NK):
            assert s[i, j] == pytest.approx(sum(float(q[i, t] * k[j, t]) for t in range(5)))


def test_dot_product_scores_broadcasts_heads(g):
    q, k = rand(g, 2, 3, NQ, 4), rand(g, 2, 1, NK, 4)
    s = attnkit.dot_product_scores(q, k)
    assert s.shape == (2, 3, NQ, NK)
    torch.testing.assert_close(s[1, 2], q[1, 2] @ k[1, 0].T)


def test_cosine_scores_are_angles(g):
    q, k = rand(g, 4, 3), rand(g, 5, 3)
    c = attnkit.cosine_scores(q, k)
    torch.testing.assert_close(c[2, 3], F.cosine_similarity(q[2], k[3], dim=0))
    torch.testing.assert_close(attnkit.cosine_scores(3 * q, k), c)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_loop_and_torch(g, dim):
    x = rand(g, 4, 6)
    got = attnkit.softmax(x, dim)
    torch.testing.assert_close(got, torch.softmax(x, dim))
    rows = x.movedim(dim, -1)
    want = torch.tensor([softmax_row(r.tolist()) for r in rows.reshape(-1, rows.shape[-1])],
                        dtype=torch.float64).reshape(rows.shape).movedim(-1, dim)
    torch.testing.assert_close(got, want)


def test_softmax_is_stable_and_handles_inf():
    x = torch.tensor([[1000.0, 1001.0, -float("inf")], [-1e4, -1e4 + 1, -1e4 + 2],
                      [-float("inf")] * 3])
    got = attnkit.softmax(x)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[0], torch.tensor([1 / (1 + math.e), math.e / (1 + math.e), 0.0]))
    torch.testing.assert_close(got[1], torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0))
    assert torch.equal(got[2], torch.zeros(3))


def test_softmax_gradient_is_finite_on_fully_masked_rows():
    x = torch.tensor([[0.5, -float("inf")], [-float("inf"), -float("inf")]], requires_grad=True)
    attnkit.softmax(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mask_kind", [None, "causal", "padding", "random"])
def test_sdpa_matches_torch(g, mask_kind):
    B, H, d, dv = 2, 3, 8, 5
    q, k, v = rand(g, B, H, NQ, d), rand(g, B, H, NK, d), rand(g, B, H, NK, dv)
    mask = {
        None: None,
        "causal": attnkit.causal_mask(NQ, NK),
        "padding": attnkit.padding_mask(torch.tensor([NK, 9]), NK)[:, None, None, :],
        "random": torch.rand(B, H, NQ, NK, generator=g) < 0.7,
    }[mask_kind]
    if mask is not None:
        mask = mask | torch.eye(NQ, NK, dtype=torch.bool)  # keep every row non-empty for torch
    out, w = attnkit.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, NQ, dtype=torch.float64))


def test_sdpa_matches_loop_with_fully_masked_rows(g):
    q, k, v = rand(g, NQ, 4), rand(g, NK, 4), rand(g, NK, 3)
    allowed = causal_allowed(NQ, NK)
    allowed[2] = [False] * NK
    out, w = attnkit.scaled_dot_product_attention(q, k, v, torch.tensor(allowed))
    want_out, want_w = attention_2d(q, k, v, allowed)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(w, want_w)
    assert torch.equal(out[2], torch.zeros(3, dtype=torch.float64))


def test_sdpa_float32_close_to_float64(g):
    q, k, v = rand(g, 2, NQ, 16), rand(g, 2, NK, 16), rand(g, 2, NK, 16)
    out32, _ = attnkit.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out64, _ = attnkit.scaled_dot_product_attention(q, k, v)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)


def test_additive_attention_matches_loop(g):
    dq, dk, h = 3, 5, 4
    q, k, v = rand(g, NQ, dq), rand(g, NK, dk), rand(g, NK, 2)
    wq, wk, w = rand(g, h, dq), rand(g, h, dk), rand(g, h)
    out, weights = attnkit.additive_attention(q, k, v, wq, wk, w)
    for i in (0, 7):
        scores = [float(w @ torch.tanh(wq @ q[i] + wk @ k[j])) for j in range(NK)]
        want = torch.tensor(softmax_row(scores), dtype=torch.float64)
        torch.testing.assert_close(weights[i], want)
        torch.testing.assert_close(out[i], want @ v)
    module = attnkit.AdditiveAttention(dq, dk, h).double()
    o, wts = module(q, k, v)
    assert o.shape == (NQ, 2) and wts.shape == (NQ, NK)


@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 7), (7, 3), (0, 2), (1, 1)])
def test_causal_mask_matches_loop(n_q, n_k):
    got = attnkit.causal_mask(n_q, n_k)
    assert got.dtype == torch.bool and got.shape == (n_q, n_k)
    assert got.tolist() == causal_allowed(n_q, n_k)


def test_causal_mask_is_torch_is_causal_for_square():
    q = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(1))
    out, _ = attnkit.scaled_dot_product_attention(q, q, q, attnkit.causal_mask(6, 6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_padding_mask():
    got = attnkit.padding_mask(torch.tensor([3, 0, 5]), 5)
    assert got.tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5]


def test_split_merge_heads_layout(g):
    x = rand(g, 2, NQ, 12)
    h = attnkit.split_heads(x, 3)
    assert h.shape == (2, 3, NQ, 4)
    for head in range(3):
        torch.testing.assert_close(h[:, head], x[..., head * 4:(head + 1) * 4])
    torch.testing.assert_close(attnkit.merge_heads(h), x)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "causal", "padding"])
def test_multi_head_attention_equals_torch_module(mask_kind, bias):
    torch.manual_seed(0)
    B, N, D, H = 2, 7, 16, 4
    ref = torch.nn.MultiheadAttention(D, H, bias=bias, batch_first=True).double()
    x = torch.randn(B, N, D, dtype=torch.float64)
    if mask_kind == "causal":
        allowed = attnkit.causal_mask(N, N)
        torch_kwargs = dict(attn_mask=~allowed)  # torch: True = NOT allowed
    elif mask_kind == "padding":
        allowed = attnkit.padding_mask(torch.tensor([N, 4]), N)[:, None, None, :]
        torch_kwargs = dict(key_padding_mask=~allowed[:, 0, 0])
    else:
        allowed, torch_kwargs = None, {}
    want, _ = ref(x, x, x, need_weights=False, **torch_kwargs)
    mine = attnkit.MultiHeadAttention.from_torch(ref)
    torch.testing.assert_close(mine(x, mask=allowed), want)
    if not bias:
        wq, wk, wv = ref.in_proj_weight.chunk(3)
        got = attnkit.multi_head_attention(x, wq, wk, wv, ref.out_proj.weight, H, allowed)
        torch.testing.assert_close(got, want)


def test_mha_module_cross_attention_with_other_context_width_equals_torch():
    torch.manual_seed(1)
    ref = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True).double()
    x, ctx = torch.randn(2, NQ, 8, dtype=torch.float64), torch.randn(2, NK, 6, dtype=torch.float64)
    want, _ = ref(x, ctx, ctx, need_weights=False)
    torch.testing.assert_close(attnkit.MultiHeadAttention.from_torch(ref)(x, ctx), want)


def test_mha_module_cross_attention_same_context():
    torch.manual_seed(2)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    x, ctx = torch.randn(2, NQ, 8, dtype=torch.float64), torch.randn(2, NK, 8, dtype=torch.float64)
    want, want_w = ref(x, ctx, ctx, average_attn_weights=False)
    out, w = attnkit.MultiHeadAttention.from_torch(ref)(x, ctx, return_weights=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(w, want_w)


def test_sinusoidal_positions_matches_loop():
    for n, d in [(9, 8), (5, 7), (3, 1)]:
        got = attnkit.sinusoidal_positions(n, d)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), sinusoid(n, d), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_apply_rope_matches_loop(g, pairing):
    x = rand(g, 2, 5, 8)
    pos = torch.tensor([0, 3, 1, 100, 7])
    got = attnkit.apply_rope(x, pos, pairing=pairing)
    for b in range(2):
        for n in range(5):
            want = rope_vector(x[b, n], int(pos[n]), half=pairing == "half")
            torch.testing.assert_close(got[b, n], want)


def test_rope_pairings_are_a_permutation_apart(g):
    x = rand(g, 3, 6, 8)
    pos = torch.arange(6)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pair i -> half-split slots i, i + d/2
    inter = attnkit.apply_rope(x, pos)
    half = attnkit.apply_rope(x[..., perm], pos, pairing="half")
    torch.testing.assert_close(half, inter[..., perm])


def test_rope_complex_form_agrees(g):
    x = rand(g, 2, 7, 6)
    torch.testing.assert_close(attnkit.apply_rope_complex(x, torch.arange(7)), attnkit.apply_rope(x, torch.arange(7)))


@pytest.mark.parametrize("H", [1, 2, 3, 5, 6, 8, 12, 16, 24])
def test_alibi_slopes_match_paper(H):
    torch.testing.assert_close(attnkit.alibi_slopes(H).double(),
                               torch.tensor(alibi_slopes_paper(H), dtype=torch.float64), rtol=1e-6, atol=0)


def test_alibi_bias_values():
    b = attnkit.alibi_bias(4, 3, 5)
    slopes = alibi_slopes_paper(4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert float(b[h, i, j]) == pytest.approx(-slopes[h] * abs(i + 2 - j))


def test_repeat_kv_order(g):
    x = rand(g, 2, 3, 4, 5)
    r = attnkit.repeat_kv(x, 4)
    assert r.shape == (2, 12, 4, 5)
    for h in range(12):
        torch.testing.assert_close(r[:, h], x[:, h // 4])


@pytest.mark.parametrize("Hq,Hkv", [(8, 2), (4, 1), (3, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa_matches_torch_enable_gqa(g, Hq, Hkv, is_causal):
    q, k, v = rand(g, 2, Hq, NK, 8), rand(g, 2, Hkv, NK, 8), rand(g, 2, Hkv, NK, 8)
    got = attnkit.grouped_query_attention(q, k, v, is_causal=is_causal)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    torch.testing.assert_close(got, want)


def test_gqa_causal_bottom_right_with_fewer_queries(g):
    q, k, v = rand(g, 1, 4, 3, 8), rand(g, 1, 2, NK, 8), rand(g, 1, 2, NK, 8)
    got = attnkit.grouped_query_attention(q, k, v, is_causal=True)
    mask = attnkit.causal_mask(3, NK)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(got, want)
