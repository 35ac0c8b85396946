"""Properties attention must have, whatever the implementation details."""

import torch

import attnkit
from sizes import NK, NQ, rand


def test_masked_keys_do_not_change_outputs(g):
    q, k, v = rand(g, 2, NQ, 8), rand(g, 2, NK, 8), rand(g, 2, NK, 4)
    mask = torch.rand(NQ, NK, generator=g) < 0.6
    mask[:, 0] = True
    hidden = [2, 5, 11]
    mask[:, hidden] = False  # no query may see these keys
    out, _ = attnkit.scaled_dot_product_attention(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, hidden] = 100 * rand(g, 2, len(hidden), 8)
    v2[:, hidden] = -50.0
    out2, _ = attnkit.scaled_dot_product_attention(q, k2, v2, mask)
    torch.testing.assert_close(out2, out)


def test_padding_tokens_do_not_change_real_outputs(g):
    x = rand(g, 1, 6, 16)
    w = [rand(g, 16, 16) / 4 for _ in range(4)]
    real = attnkit.multi_head_attention(x[:, :4], *w, 4)
    padded = torch.cat((x[:, :4], 99 * torch.ones(1, 2, 16, dtype=torch.float64)), 1)
    mask = attnkit.padding_mask(torch.tensor([4]), 6)[:, None, None, :]
    out = attnkit.multi_head_attention(padded, *w, 4, mask)
    torch.testing.assert_close(out[:, :4], real)


def test_permutation_equivariance_without_positions(g):
    x = rand(g, 2, 9, 12)
    w = [rand(g, 12, 12) / 4 for _ in range(4)]
    perm = torch.randperm(9, generator=g)
    out = attnkit.multi_head_attention(x, *w, 3)
    out_perm = attnkit.multi_head_attention(x[:, perm], *w, 3)
    torch.testing.assert_close(out_perm, out[:, perm])


def test_sinusoidal_positions_break_equivariance(g):
    x = rand(g, 1, 9, 12).float()
    w = [rand(g, 12, 12).float() / 4 for _ in range(4)]
    perm = torch.randperm(9, generator=g)
    pe = attnkit.sinusoidal_positions(9, 12)
    out = attnkit.multi_head_attention(x + pe, *w, 3)
    out_perm = attnkit.multi_head_attention(x[:, perm] + pe, *w, 3)
    assert not torch.allclose(out_perm, out[:, perm], atol=1e-3)


def test_rope_dot_product_depends_only_on_offset(g):
    q, k = rand(g, 1, 16), rand(g, 1, 16)
    for pairing in ("interleaved", "half"):
        def score(m, n):
            qm = attnkit.apply_rope(q, torch.tensor([m]), pairing=pairing)
            kn = attnkit.apply_rope(k, torch.tensor([n]), pairing=pairing)
            return float(qm @ kn.T)
        base = score(3, 10)
        for shift in (1, 17, 250, 4000):
            assert abs(score(3 + shift, 10 + shift) - base) < 1e-9
        assert abs(score(3, 11) - base) > 1e-6


def test_rope_preserves_norms_and_position_zero_is_identity(g):
    x = rand(g, 2, 7, 10)
    r = attnkit.apply_rope(x, torch.arange(7) * 13)
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(attnkit.apply_rope(x, torch.zeros(7, dtype=torch.long)), x)


def test_decode_step_token_by_token_equals_causal_attention(g):
    B, H, T, d = 2, 3, 9, 8
    q, k, v = rand(g, B, H, T, d), rand(g, B, H, T, d), rand(g, B, H, T, d)
    full, _ = attnkit.scaled_dot_product_attention(q, k, v, attnkit.causal_mask(T, T))
    kc, vc = k[:, :, :0], v[:, :, :0]
    for t in range(T):
        out, kc, vc = attnkit.decode_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], kc, vc)
        torch.testing.assert_close(out, full[:, :, t:t + 1])
    torch.testing.assert_close(kc, k)


def test_gqa_with_hkv_equal_h_is_mha(g):
    q, k, v = rand(g, 2, 4, NQ, 8), rand(g, 2, 4, NK, 8), rand(g, 2, 4, NK, 8)
    for causal in (False, True):
        mask = attnkit.causal_mask(NQ, NK) if causal else None
        want, _ = attnkit.scaled_dot_product_attention(q, k, v, mask)
        torch.testing.assert_close(attnkit.grouped_query_attention(q, k, v, is_causal=causal), want)


def test_gqa_equals_mha_on_repeated_kv(g):
    q, k, v = rand(g, 1, 6, NQ, 4), rand(g, 1, 2, NK, 4), rand(g, 1, 2, NK, 4)
    want, _ = attnkit.scaled_dot_product_attention(q, attnkit.repeat_kv(k, 3), attnkit.repeat_kv(v, 3))
    torch.testing.assert_close(attnkit.grouped_query_attention(q, k, v), want)


def test_scaling_keeps_score_variance_near_one():
    g = torch.Generator().manual_seed(3)
    for d in (16, 256, 1024):
        q, k = torch.randn(4000, d, generator=g), torch.randn(4000, d, generator=g)
        raw = (q * k).sum(-1)
        assert abs(raw.var().item() / d - 1) < 0.1
        assert abs((raw / d ** 0.5).var().item() - 1) < 0.1
