"""attnkit.MultiHeadAttention, KVCache, the tiny decoder and greedy generation."""

import pytest
import torch
import torch.nn.functional as F

import attnkit
from sizes import NK, NQ


def _seed(s=0):
    torch.manual_seed(s)


def test_gqa_module_matches_sdpa_enable_gqa():
    _seed()
    m = attnkit.MultiHeadAttention(32, 8, n_kv_heads=2).double()
    x = torch.randn(2, NQ, 32, dtype=torch.float64)
    q = m.q_proj(x).view(2, NQ, 8, 4).transpose(1, 2)
    k = m.k_proj(x).view(2, NQ, 2, 4).transpose(1, 2)
    v = m.v_proj(x).view(2, NQ, 2, 4).transpose(1, 2)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    want = m.out_proj(want.transpose(1, 2).reshape(2, NQ, 32))
    torch.testing.assert_close(m(x, is_causal=True), want)
    assert m.k_proj.weight.shape == (8, 32)  # 2 kv heads x d=4: the memory GQA saves


@pytest.mark.parametrize("n_kv_heads,rope", [(4, False), (2, True), (1, True)])
def test_module_with_cache_equals_full_causal_pass(n_kv_heads, rope):
    _seed(1)
    m = attnkit.MultiHeadAttention(16, 4, n_kv_heads=n_kv_heads, rope=rope).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = m(x, is_causal=True)
    cache = m.new_cache(batch=2, max_len=9)
    chunks = [m(x[:, :4], is_causal=True, cache=cache)]  # a prompt of 4 tokens at once
    for t in range(4, 9):
        chunks.append(m(x[:, t:t + 1], is_causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(chunks, 1), full)
    assert len(cache) == 9


def test_rope_module_is_shift_invariant_for_scores():
    _seed(2)
    m = attnkit.MultiHeadAttention(16, 2, rope=True).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    _, w = m(x, is_causal=True, return_weights=True)
    cache = m.new_cache(1, 20)
    cache.append(torch.zeros(1, 2, 10, 8, dtype=torch.float64), torch.zeros(1, 2, 10, 8, dtype=torch.float64))
    mask = torch.ones(6, 16, dtype=torch.bool)
    mask[:, :10] = False  # hide the padding; the same tokens now sit at positions 10..15
    _, w_shifted = m(x, is_causal=True, cache=cache, mask=mask, return_weights=True)
    torch.testing.assert_close(w_shifted[..., 10:], w)


def test_cross_attention_attends_to_context_and_masks_it():
    _seed(3)
    m = attnkit.MultiHeadAttention(8, 2).double()
    x, ctx = torch.randn(2, NQ, 8, dtype=torch.float64), torch.randn(2, NK, 8, dtype=torch.float64)
    mask = attnkit.padding_mask(torch.tensor([NK, 5]), NK)[:, None, None, :]
    out, w = m(x, ctx, mask=mask, return_weights=True)
    assert out.shape == (2, NQ, 8) and w.shape == (2, 2, NQ, NK)
    assert torch.equal(w[1, :, :, 5:], torch.zeros_like(w[1, :, :, 5:]))
    with pytest.raises(ValueError, match="RoPE"):
        attnkit.MultiHeadAttention(8, 2, rope=True)(x.float(), ctx.float())


def test_from_torch_rejects_unsupported_options():
    with pytest.raises(ValueError, match="add_bias_kv"):
        attnkit.MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(TypeError):
        attnkit.MultiHeadAttention.from_torch(torch.nn.Linear(2, 2))


def test_kv_cache_preallocates_and_appends_views():
    cache = attnkit.KVCache(2, 3, 10, 4)
    assert cache.nbytes == 2 * 2 * 3 * 10 * 4 * 4  # k and v, float32, allocated up front
    storage = cache.k.data_ptr()
    k1, v1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    k, v = cache.append(k1, v1)
    assert k.shape == (2, 3, 4, 4) and torch.equal(k, k1) and k.data_ptr() == storage
    k2, v2 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat((k1, k2), 2)) and torch.equal(v, torch.cat((v1, v2), 2))
    assert cache.k.data_ptr() == storage and len(cache) == 5
    with pytest.raises(TypeError, match="float64"):
        cache.append(k2.double(), v2.double())
    cache.reset()
    assert len(cache) == 0


def _tiny(positions="learned", n_kv_heads=None, seed=0):
    torch.manual_seed(seed)
    return attnkit.TinyDecoder(attnkit.DecoderConfig(vocab_size=13, d_model=32, n_heads=4, n_layers=2,
                                                     n_kv_heads=n_kv_heads, max_len=40, positions=positions)).eval()


@pytest.mark.parametrize("positions,n_kv_heads", [("learned", None), ("rope", 2), ("sinusoidal", 1), ("none", None)])
def test_generate_with_cache_equals_without(positions, n_kv_heads):
    model = _tiny(positions, n_kv_heads)
    prompt = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(1))
    with_cache = attnkit.generate(model, prompt, 20, use_cache=True)
    without = attnkit.generate(model, prompt, 20, use_cache=False)
    assert with_cache.shape == (3, 25)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :5], prompt)


def test_cached_logits_equal_full_logits():
    model = _tiny("rope", 2)
    tokens = torch.randint(0, 13, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches(2)
        steps = [model(tokens[:, :7], caches)] + [model(tokens[:, t:t + 1], caches) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_generate_is_greedy():
    model = _tiny()
    prompt = torch.tensor([[1, 2, 3]])
    out = attnkit.generate(model, prompt, 1)
    with torch.no_grad():
        assert out[0, -1] == model(prompt)[0, -1].argmax()


def test_generate_and_model_reject_bad_input():
    model = _tiny()
    with pytest.raises(ValueError, match="max_len=40"):
        attnkit.generate(model, torch.zeros(1, 30, dtype=torch.long), 20)
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least one token"):
        attnkit.generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_model_returns_attention_weights_per_layer():
    model = _tiny()
    logits, weights = model(torch.randint(0, 13, (2, 6)), return_weights=True)
    assert logits.shape == (2, 6, 13) and len(weights) == 2
    for w in weights:
        assert w.shape == (2, 4, 6, 6)
        assert torch.equal(w.triu(1), torch.zeros_like(w))  # causal
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6))


def test_model_learns_a_deterministic_successor_task_quickly():
    """Loss decreases within a fixed small budget: the model and its gradients are wired right."""
    torch.manual_seed(0)
    model = attnkit.TinyDecoder(attnkit.DecoderConfig(vocab_size=8, d_model=32, n_heads=2, n_layers=1, max_len=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        start = torch.randint(0, 8, (32, 1), generator=g)
        seq = torch.stack([torch.tensor(_successors(int(s), 12)) for s in start[:, 0]])  # each token fixes the next
        loss = F.cross_entropy(model(seq[:, :-1]).reshape(-1, 8), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::5]


def _successors(token, n):
    out = [token]
    for _ in range(n - 1):
        out.append((3 * out[-1] + 1) % 8)
    return out
