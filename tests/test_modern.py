"""Notebook 14's references against independent ones: float64 loops written here, PyTorch's SDPA,
and invariants (paging and splitting change nothing; MLA's absorption changes nothing)."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import decoding, latent, paging, sinks, stabilise, yarn
from sizes import NK, NQ, rand


def softmax_list(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


# ------------------------------------------------------------------ paged attention

def paged_reference(q, kp, vp, table, lens):
    """A float64 loop over sequences, heads and positions."""
    B, H, _, d = q.shape
    _, Hkv, ps, _ = kp.shape
    out = torch.zeros(B, H, 1, vp.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            pos = range(int(lens[b]))
            keys = [kp[int(table[b, t // ps]), g, t % ps].double() for t in pos]
            vals = [vp[int(table[b, t // ps]), g, t % ps].double() for t in pos]
            if not keys:
                continue
            w = softmax_list([float(q[b, h, 0].double() @ k) / math.sqrt(d) for k in keys])
            out[b, h, 0] = sum(wi * vi for wi, vi in zip(w, vals))
    return out


def _pool(g, lens, ps=4, Hkv=2, d=8, dv=6, P=20):
    kp, vp = rand(g, P, Hkv, ps, d), rand(g, P, Hkv, ps, dv)
    perm = torch.randperm(P, generator=g)
    pages = max(math.ceil(n / ps) for n in lens) + 1
    table = torch.full((len(lens), pages), -1, dtype=torch.int64)
    used = 0
    for b, n in enumerate(lens):
        need = math.ceil(n / ps)
        table[b, :need] = perm[used:used + need]
        used += need
    return kp, vp, table, torch.tensor(lens)


@pytest.mark.parametrize("H,Hkv", [(4, 2), (3, 3), (4, 1)])
def test_paged_attention_matches_a_float64_loop(g, H, Hkv):
    lens = [5, 12, 1, 0, 9]
    kp, vp, table, seq_lens = _pool(g, lens, Hkv=Hkv)
    q = rand(g, len(lens), H, 1, 8)
    got = attnkit.paged_attention(q, kp, vp, table, seq_lens)
    torch.testing.assert_close(got, paged_reference(q, kp, vp, table, seq_lens))
    assert torch.equal(got[3], torch.zeros_like(got[3]))  # an empty sequence gets zeros


def test_paged_attention_equals_sdpa_on_the_gathered_cache(g):
    cache = paging.PagedKVCache(12, 4, 2, 8, dtype=torch.float64)
    k_full, v_full = rand(g, 2, 2, 13, 8), rand(g, 2, 2, 13, 8)
    for b, n in enumerate((13, 6)):
        cache.add_sequence(b)
        cache.append(b, k_full[b, :, :n], v_full[b, :, :n])
    q = rand(g, 2, 4, 1, 8)
    got = attnkit.paged_attention(q, cache.k_pages, cache.v_pages, cache.block_table([0, 1]), cache.seq_lens([0, 1]))
    for b, n in enumerate((13, 6)):
        k, v = cache.gather(b)
        assert torch.equal(k, k_full[b, :, :n]) and torch.equal(v, v_full[b, :, :n])
        want = F.scaled_dot_product_attention(q[b:b + 1], k[None], v[None], enable_gqa=True)
        torch.testing.assert_close(got[b:b + 1], want)


def test_paged_cache_copies_a_shared_page_before_writing(g):
    cache = paging.PagedKVCache(8, 4, 1, 2, dtype=torch.float64)
    prompt_k, prompt_v = rand(g, 1, 6, 2), rand(g, 1, 6, 2)
    cache.add_sequence("a")
    cache.append("a", prompt_k, prompt_v)  # pages: one full, one with 2 of 4 slots
    cache.fork("a", "b")
    assert cache.pages_in_use == 2 and cache.tables["a"] == cache.tables["b"]
    cache.append("b", rand(g, 1, 1, 2), rand(g, 1, 1, 2))  # writes into the shared half-full page
    assert cache.copies == 1 and cache.pages_in_use == 3
    assert cache.tables["a"][0] == cache.tables["b"][0] and cache.tables["a"][1] != cache.tables["b"][1]
    k_a, _ = cache.gather("a")
    assert torch.equal(k_a, prompt_k) and cache.lengths["a"] == 6 and cache.lengths["b"] == 7
    cache.free("a")
    cache.free("b")
    assert cache.pages_in_use == 0 and sorted(cache.allocator.free) == list(range(8))


def test_allocator_runs_out_and_refuses_double_free():
    alloc = paging.BlockAllocator(2)
    a, b = alloc.allocate(), alloc.allocate()
    with pytest.raises(RuntimeError, match="out of KV pages"):
        alloc.allocate()
    alloc.release(a)
    with pytest.raises(ValueError, match="already free"):
        alloc.release(a)
    assert alloc.allocate() == a and b != a


def test_paged_attention_validates_its_inputs(g):
    kp, vp, table, lens = _pool(g, [5, 3])
    q = rand(g, 2, 4, 1, 8)
    with pytest.raises(ValueError, match=r"q must be \(B, H, 1, d\)"):
        attnkit.paged_attention(rand(g, 2, 4, 2, 8), kp, vp, table, lens)
    with pytest.raises(ValueError, match="multiple"):
        attnkit.paged_attention(rand(g, 2, 3, 1, 8), kp, vp, table, lens)
    with pytest.raises(TypeError, match="integer"):
        attnkit.paged_attention(q, kp, vp, table.double(), lens)
    with pytest.raises(ValueError, match="does not fit"):
        attnkit.paged_attention(q, kp, vp, table, torch.tensor([5, 99]))
    bad = table.clone()
    bad[0, 0] = 50
    with pytest.raises(ValueError, match="names page 50"):
        attnkit.paged_attention(q, kp, vp, bad, lens)


def test_serving_simulation_accounts_for_every_token():
    work = paging.generate_workload(60, generator=torch.Generator().manual_seed(3))
    contiguous = paging.simulate_serving(work, 8192, policy="contiguous")
    paged = paging.simulate_serving(work, 8192, policy="paged", page_size=16)
    for stats in (contiguous, paged):
        assert all(s <= r <= 8192 for s, r in zip(stats.stored, stats.reserved))
        assert stats.steps == len(stats.running)
    assert paged.utilisation > 0.9 > 0.5 > contiguous.utilisation
    assert paged.mean_batch > contiguous.mean_batch and paged.steps < contiguous.steps


# ------------------------------------------------------------------ cache sizes

def test_kv_cache_bytes_keeps_its_old_meaning_and_counts_windows_mla_and_wide_keys():
    assert attnkit.kv_cache_bytes(32, 8, 128, 4096) == 2 * 32 * 8 * 128 * 4096 * 2
    assert attnkit.kv_cache_bytes(2, 4, 16, 100, batch=3, bytes_per_value=4) == 2 * 2 * 4 * 16 * 100 * 3 * 4
    assert attnkit.kv_cache_bytes(10, 4, 64, 5000, window=1024) == attnkit.kv_cache_bytes(10, 4, 64, 1024)
    assert attnkit.kv_cache_bytes(10, 4, 64, 500, window=1024) == attnkit.kv_cache_bytes(10, 4, 64, 500)
    # DeepSeek-V2: 60 layers, one 512-number latent and a 64-number RoPE key per token and layer
    assert attnkit.kv_cache_bytes(60, 128, 128, 1, latent_dim=512, rope_dim=64) == 60 * 576 * 2
    assert attnkit.kv_cache_bytes(1, 2, 192, 10, v_head_dim=128, bytes_per_value=1) == 2 * (192 + 128) * 10
    with pytest.raises(ValueError, match="only applies with latent_dim"):
        attnkit.kv_cache_bytes(1, 1, 8, 8, rope_dim=4)


def test_mla_cache_matches_allocated_tensors():
    c_kv, k_rope = torch.zeros(3, 100, 512, dtype=torch.bfloat16), torch.zeros(3, 100, 64, dtype=torch.bfloat16)
    allocated = 4 * (c_kv.untyped_storage().nbytes() + k_rope.untyped_storage().nbytes())  # 4 layers
    assert attnkit.kv_cache_bytes(4, 128, 128, 100, batch=3, latent_dim=512, rope_dim=64) == allocated


# ------------------------------------------------------------------ MLA

def test_mla_scores_equal_scores_against_materialised_keys(g):
    q, c, w = rand(g, 2, 3, NQ, 6), rand(g, 2, NK, 10), rand(g, 3, 6, 10)
    got = attnkit.mla_scores(q, c, w)
    for h in range(3):
        k_h = c @ w[h].T  # (B, Nk, dn)
        torch.testing.assert_close(got[:, h], q[:, h] @ k_h.transpose(-2, -1))


@pytest.mark.parametrize("causal", [False, True])
def test_mla_attention_absorbed_equals_materialised_and_sdpa(g, causal):
    B, H, dn, dr, r, dv = 2, 4, 8, 4, 12, 6
    q_nope, q_rope = rand(g, B, H, NQ, dn), rand(g, B, H, NQ, dr)
    c_kv, k_rope = rand(g, B, NK, r), rand(g, B, NK, dr)
    w_uk, w_uv = rand(g, H, dn, r), rand(g, H, dv, r)
    absorbed = latent.mla_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, causal)
    built = latent.mla_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, causal, absorb=False)
    k = torch.cat((torch.einsum("bkr,hdr->bhkd", c_kv, w_uk), k_rope[:, None].expand(B, H, NK, dr)), -1)
    v = torch.einsum("bkr,hvr->bhkv", c_kv, w_uv)
    mask = attnkit.causal_mask(NQ, NK) if causal else None
    want = F.scaled_dot_product_attention(torch.cat((q_nope, q_rope), -1), k, v, attn_mask=mask)
    torch.testing.assert_close(absorbed, want)
    torch.testing.assert_close(built, want)


def test_mla_scores_validates_shapes(g):
    with pytest.raises(ValueError, match=r"w_uk \(H, dn, r\)"):
        attnkit.mla_scores(rand(g, 2, 3, 4, 6), rand(g, 2, 5, 8), rand(g, 3, 6, 7))
    with pytest.raises(TypeError, match="dtypes differ"):
        attnkit.mla_scores(rand(g, 1, 1, 2, 2), rand(g, 1, 2, 2, dtype=torch.float32), rand(g, 1, 2, 2))


# ------------------------------------------------------------------ sinks

def sink_reference(q, k, v, s, causal):
    *batch, H, Nq, d = q.shape
    Nk = k.shape[-2]
    out = torch.zeros(*batch, H, Nq, v.shape[-1], dtype=torch.float64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in (*batch, H))).reshape(-1, len(batch) + 1).tolist():
        idx = tuple(idx)
        for i in range(Nq):
            seen = [j for j in range(Nk) if not causal or j <= i + Nk - Nq]
            logits = [float(s[idx[-1]])] + [float(q[idx][i] @ k[idx][j]) / math.sqrt(d) for j in seen]
            w = softmax_list(logits)[1:]
            for wj, j in zip(w, seen):
                out[idx][i] += wj * v[idx][j]
    return out


@pytest.mark.parametrize("causal,nq,nk", [(False, NQ, NK), (True, NQ, NK), (True, 6, 4)])
def test_sink_attention_matches_a_float64_loop(g, causal, nq, nk):
    q, k, v = rand(g, 2, 3, nq, 5), rand(g, 2, 3, nk, 5), rand(g, 2, 3, nk, 4)
    s = torch.tensor([-1.0, 0.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(attnkit.sink_attention(q, k, v, s, causal), sink_reference(q, k, v, s, causal))


def test_sink_is_an_extra_zero_value_key_and_vanishes_at_minus_infinity(g):
    q, k, v = rand(g, 1, 2, NQ, 8), rand(g, 1, 2, NK, 8), rand(g, 1, 2, NK, 8)
    s = torch.tensor([0.7, -0.3], dtype=torch.float64)
    bias = torch.zeros(2, NQ, NK + 1, dtype=torch.float64)
    bias[..., 0] = s[:, None]
    k0 = torch.cat((torch.zeros(1, 2, 1, 8, dtype=torch.float64), k), 2)
    v0 = torch.cat((torch.zeros(1, 2, 1, 8, dtype=torch.float64), v), 2)
    want = F.scaled_dot_product_attention(q, k0, v0, attn_mask=bias)
    torch.testing.assert_close(attnkit.sink_attention(q, k, v, s), want)
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    torch.testing.assert_close(attnkit.sink_attention(q, k, v, torch.full((2,), -1e4, dtype=torch.float64)), plain)
    weights = sinks.sink_weights(q @ k.transpose(-2, -1) / math.sqrt(8), s)
    assert (weights.sum(-1) < 1).all()


def test_sink_attention_validates_heads(g):
    with pytest.raises(ValueError, match="one logit per head"):
        attnkit.sink_attention(rand(g, 2, 3, 4, 5), rand(g, 2, 3, 4, 5), rand(g, 2, 3, 4, 5), rand(g, 4))


# ------------------------------------------------------------------ YaRN

def yarn_paper(d, theta, scale, L, beta_fast=32.0, beta_slow=1.0):
    """Peng et al. 2023, section 3.2 (NTK-by-parts), transcribed: r(d) = L / lambda_d."""
    out = []
    for i in range(d // 2):
        theta_d = theta ** (-2 * i / d)
        wavelength = 2 * math.pi / theta_d
        r = L / wavelength
        gamma = 0.0 if r < beta_slow else 1.0 if r > beta_fast else (r - beta_slow) / (beta_fast - beta_slow)
        out.append((1 - gamma) * theta_d / scale + gamma * theta_d)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("args", [(64, 150000.0, 32.0, 4096), (128, 10000.0, 8, 2048), (32, 500000.0, 4.0, 1024, 16.0, 2.0)])
def test_yarn_matches_the_paper(args):
    got = attnkit.yarn_inv_freq(*args)
    assert got.dtype == torch.float64 and got.shape == (args[0] // 2,)
    torch.testing.assert_close(got, yarn_paper(*args), rtol=1e-13, atol=0)


def test_yarn_limits_and_neighbours():
    f = yarn.rope_inv_freq(64, 10000.0)
    torch.testing.assert_close(attnkit.yarn_inv_freq(64, 10000.0, 1.0, 4096), f)
    torch.testing.assert_close(attnkit.yarn_inv_freq(64, 10000.0, 8.0, 4096, beta_fast=1e9, beta_slow=1e8), f / 8)
    torch.testing.assert_close(attnkit.yarn_inv_freq(64, 10000.0, 8.0, 4096, beta_fast=1e-8, beta_slow=1e-9), f)
    ntk = yarn.ntk_inv_freq(64, 10000.0, 8.0)
    torch.testing.assert_close(ntk[[0, -1]], torch.stack((f[0], f[-1] / 8)))
    assert yarn.yarn_attention_factor(1.0) == 1.0 and abs(yarn.yarn_attention_factor(32) - (0.1 * math.log(32) + 1) ** 2) < 1e-12


def test_rotate_with_rope_frequencies_is_apply_rope(g):
    x, pos = rand(g, 2, 7, 16), torch.arange(7) * 3
    torch.testing.assert_close(yarn.rotate(x, pos, yarn.rope_inv_freq(16, 10000.0)), attnkit.apply_rope(x, pos))


def test_yarn_validates():
    with pytest.raises(ValueError, match="even"):
        attnkit.yarn_inv_freq(7, 10000.0, 2.0, 4096)
    with pytest.raises(ValueError, match="beta_fast"):
        attnkit.yarn_inv_freq(8, 10000.0, 2.0, 4096, beta_fast=1.0, beta_slow=1.0)
    with pytest.raises(ValueError, match="scale"):
        attnkit.yarn_inv_freq(8, 10000.0, 0.5, 4096)
    with pytest.raises(TypeError, match="original_max_position"):
        attnkit.yarn_inv_freq(8, 10000.0, 2.0, 4096.5)


# ------------------------------------------------------------------ split-KV decoding

@pytest.mark.parametrize("nk,splits", [(37, 4), (48, 6), (20, 1), (5, 8), (9, 9)])
def test_flash_decode_equals_sdpa_and_logsumexp(g, nk, splits):
    q, k, v = rand(g, 2, 3, 1, 8), rand(g, 2, 3, nk, 8), rand(g, 2, 3, nk, 5)
    out, lse = attnkit.flash_decode(q, k, v, splits)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-2, -1) / math.sqrt(8), -1))
    assert [b - a for a, b in decoding.split_bounds(nk, splits)].count(0) == max(splits - math.ceil(nk / math.ceil(nk / splits)), 0)


def test_flash_decode_survives_huge_scores(g):
    q, k, v = rand(g, 1, 2, 1, 8) * 300, rand(g, 1, 2, 40, 8), rand(g, 1, 2, 40, 8)
    out, lse = attnkit.flash_decode(q.float(), k.float(), v.float(), 5)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out.double(), F.scaled_dot_product_attention(q, k, v), rtol=1e-4, atol=1e-4)


def test_decode_costs_and_busy_fraction():
    flops, nbytes = decoding.decode_step_cost(32, 32, 128, 1000)
    assert flops / nbytes == 1.0  # MHA in 16-bit: one FLOP per byte
    flops, nbytes = decoding.decode_step_cost(64, 8, 128, 1000)
    assert flops / nbytes == 8.0  # GQA-8: eight query heads share every byte
    flops, nbytes = decoding.decode_step_cost(128, 128, 128, 1000, latent_dim=512, rope_dim=64)
    assert nbytes == 1000 * 576 * 2 and flops / nbytes > 200
    assert decoding.decode_step_cost(32, 32, 128, 1000, n_queries=64)[0] == 64 * decoding.decode_step_cost(32, 32, 128, 1000)[0]
    assert decoding.busy_fraction(1, 8, 1, 132) == 8 / 132 and decoding.busy_fraction(1, 8, 33, 132) == 1.0


# ------------------------------------------------------------------ stabilisers

def test_softcap_is_flex_score_mod_and_bounds_logits(g):
    q, k, v = rand(g, 1, 2, 8, 4, dtype=torch.float32) * 20, rand(g, 1, 2, 8, 4, dtype=torch.float32) * 20, rand(
        g, 1, 2, 8, 4, dtype=torch.float32)
    from attnkit import flex
    got = flex.attend(q, k, v, score_mod=stabilise.softcap(5.0))
    s = q @ k.transpose(-2, -1) / 2
    want = torch.softmax(5.0 * torch.tanh(s / 5.0), -1) @ v
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    normed = stabilise.qk_norm(q)
    torch.testing.assert_close(normed.pow(2).mean(-1), torch.ones(1, 2, 8), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call,error,words", [
    (lambda g: attnkit.flash_decode(rand(g, 1, 2, 2, 4), rand(g, 1, 2, 5, 4), rand(g, 1, 2, 5, 4), 2), ValueError,
     ["(B, H, 1, d)", "(1, 2, 2, 4)"]),
    (lambda g: attnkit.flash_decode(rand(g, 1, 2, 1, 4), rand(g, 1, 3, 5, 4), rand(g, 1, 3, 5, 4), 2), ValueError,
     ["(1, 3, 5, 4)"]),
    (lambda g: attnkit.flash_decode(rand(g, 1, 2, 1, 4), rand(g, 1, 2, 5, 4), rand(g, 1, 2, 5, 4), 0), ValueError,
     ["n_splits"]),
    (lambda g: attnkit.flash_decode(rand(g, 1, 2, 1, 4), rand(g, 1, 2, 5, 4), rand(g, 1, 2, 5, 4), 2.0), TypeError,
     ["n_splits", "float"]),
    (lambda g: attnkit.sink_attention(rand(g, 2, 4, 5), rand(g, 2, 4, 5), rand(g, 2, 4, 5), rand(g, 2, 1)), ValueError,
     ["sinks", "(2, 1)"]),
    (lambda g: attnkit.sink_attention(rand(g, 2, 4, 5), rand(g, 2, 4, 5), rand(g, 2, 4, 5), rand(g, 2, dtype=torch.float32)),
     TypeError, ["dtypes differ", "float32"]),
    (lambda g: attnkit.mla_scores(rand(g, 2, 3, 4), rand(g, 2, 5, 8), rand(g, 3, 6, 8)), ValueError,
     ["q_nope", "4 dimensions", "(2, 3, 4)"]),
    (lambda g: stabilise.softcap(0), ValueError, ["cap"]),
])
def test_bad_input_names_what_is_wrong(g, call, error, words):
    with pytest.raises(error) as info:
        call(g)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_serving_refuses_a_request_that_can_never_fit():
    with pytest.raises(ValueError, match="can never be served"):
        paging.simulate_serving([(10, 5000, 5000)], 4096)
    with pytest.raises(ValueError, match="can never be served"):
        paging.simulate_serving([(100, 20, 4000)], 4096, policy="contiguous")
    assert paging.simulate_serving([(10, 50, 100)], 4096).steps == 50
