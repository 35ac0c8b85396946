"""Notebook 15's references: the gated delta rule against a float64 loop written here, the chunked
form against the recurrent one (values and gradients, hypothesis-chosen shapes), the delta
rule's exact-retrieval property, and the recall models."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import delta, recall
from sizes import rand


def delta_reference(q, k, v, beta, g, S0=None):
    """One (batch, head) at a time, each matrix entry written out."""
    B, H, N, dk = k.shape
    dv = v.shape[-1]
    out = torch.zeros(B, H, N, dv, dtype=torch.float64)
    final = torch.zeros(B, H, dv, dk, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(dv, dk, dtype=torch.float64) if S0 is None else S0[b, h].clone()
            for t in range(N):
                gt, bt = float(g[b, h, t]), float(beta[b, h, t])
                new = torch.zeros(dv, dk, dtype=torch.float64)
                for i in range(dv):
                    pred = sum(gt * float(S[i, j]) * float(k[b, h, t, j]) for j in range(dk))
                    for j in range(dk):
                        new[i, j] = gt * S[i, j] + bt * (float(v[b, h, t, i]) - pred) * float(k[b, h, t, j])
                S = new
                out[b, h, t] = S @ q[b, h, t]
            final[b, h] = S
    return out, final


def _inputs(g, B=2, H=2, N=11, dk=4, dv=3, gates=(0.5, 1.0)):
    q, k = rand(g, B, H, N, dk), torch.nn.functional.normalize(rand(g, B, H, N, dk), dim=-1)
    v = rand(g, B, H, N, dv)
    beta = torch.rand(B, H, N, generator=g, dtype=torch.float64)
    gate = torch.rand(B, H, N, generator=g, dtype=torch.float64) * (gates[1] - gates[0]) + gates[0]
    return q, k, v, beta, gate


@pytest.mark.parametrize("with_state", [False, True])
def test_gated_delta_rule_matches_a_float64_loop(g, with_state):
    q, k, v, beta, gate = _inputs(g)
    S0 = rand(g, 2, 2, 3, 4) if with_state else None
    out, S = attnkit.gated_delta_rule(q, k, v, beta, gate, S0)
    want_out, want_S = delta_reference(q, k, v, beta, gate, S0)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(S, want_S)


@pytest.mark.parametrize("chunk", [1, 3, 8, 11, 64])
def test_chunked_equals_recurrent(g, chunk):
    q, k, v, beta, gate = _inputs(g, N=29)
    gate[0, 1, 13] = 0.0  # a gate of 0 inside a chunk
    S0 = rand(g, 2, 2, 3, 4)
    want = attnkit.gated_delta_rule(q, k, v, beta, gate, S0)
    got = attnkit.gated_delta_rule_chunked(q, k, v, beta, gate, S0, chunk_size=chunk)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), N=st.integers(1, 40), dk=st.integers(1, 6), dv=st.integers(1, 5),
       chunk=st.integers(1, 17), seed=st.integers(0, 10**6))
def test_chunked_equals_recurrent_on_any_shape(B, H, N, dk, dv, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v, beta, gate = _inputs(g, B, H, N, dk, dv, gates=(0.05, 1.0))
    want = attnkit.gated_delta_rule(q, k, v, beta, gate)
    got = attnkit.gated_delta_rule_chunked(q, k, v, beta, gate, chunk_size=chunk)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_chunked_gradients_equal_recurrent_gradients(g):
    inputs = [t.requires_grad_() for t in _inputs(g, N=19)]
    d_out = rand(g, 2, 2, 19, 3)
    grads = []
    for fn in (attnkit.gated_delta_rule, lambda *a: attnkit.gated_delta_rule_chunked(*a, chunk_size=5)):
        out, S = fn(*inputs)
        grads.append(torch.autograd.grad((out * d_out).sum() + S.sum(), inputs))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_delta_rule_retrieves_exactly_what_it_wrote_under_orthonormal_keys(g):
    dk = dv = 6
    keys = torch.linalg.qr(rand(g, dk, dk))[0].T  # rows orthonormal
    vals = rand(g, dk, dv)
    k = keys[None, None]  # (1, 1, N=6, dk)
    v = vals[None, None]
    ones = torch.ones(1, 1, dk, dtype=torch.float64)
    _, S = attnkit.gated_delta_rule(k, k, v, ones, ones)  # beta = 1, g = 1
    torch.testing.assert_close(S[0, 0] @ keys.T, vals.T)  # S k_i = v_i for every stored pair
    # writing a new value under an old key replaces it (additive linear attention would add up)
    new = rand(g, 1, 1, 1, dv)
    _, S2 = attnkit.gated_delta_rule(k[:, :, :1], k[:, :, :1], new, ones[..., :1], ones[..., :1], S)
    torch.testing.assert_close(S2[0, 0] @ keys[0], new[0, 0, 0])


def test_gate_zero_wipes_and_beta_zero_keeps(g):
    q, k, v, beta, gate = _inputs(g, N=6)
    S0 = rand(g, 2, 2, 3, 4)
    _, kept = attnkit.gated_delta_rule(q, k, v, torch.zeros_like(beta), torch.ones_like(gate), S0)
    torch.testing.assert_close(kept, S0)
    gate[:, :, 3] = 0.0
    out, S = attnkit.gated_delta_rule(q, k, v, beta, gate, S0)
    fresh = attnkit.gated_delta_rule(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], beta[:, :, 4:], gate[:, :, 4:],
                                     attnkit.gated_delta_rule(q[:, :, 3:4], k[:, :, 3:4], v[:, :, 3:4], beta[:, :, 3:4],
                                                              gate[:, :, 3:4])[1])
    torch.testing.assert_close(S, fresh[1])  # nothing before the zero gate survives


def test_gated_delta_rule_validates(g):
    q, k, v, beta, gate = _inputs(g)
    with pytest.raises(ValueError, match=r"beta must be \(B, H, N\)"):
        attnkit.gated_delta_rule(q, k, v, beta[..., :-1], gate)
    with pytest.raises(ValueError, match="initial_state"):
        attnkit.gated_delta_rule(q, k, v, beta, gate, rand(g, 2, 2, 4, 3))
    with pytest.raises(TypeError, match="dtypes differ"):
        attnkit.gated_delta_rule(q.float(), k, v, beta, gate)
    with pytest.raises(TypeError, match="chunk_size"):
        attnkit.gated_delta_rule_chunked(q, k, v, beta, gate, chunk_size=2.5)


def test_state_bytes_do_not_grow_with_length():
    assert delta.state_bytes(36, 32, 128, 128) == 36 * 32 * 128 * 128 * 2


# ------------------------------------------------------------------ recall models

def test_recall_batch_has_distinct_keys_and_consistent_answers():
    keys, values, qk, ans = recall.recall_batch(4, 10, 6, 32, 16, torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 10 for row in keys)
    for b in range(4):
        lookup = dict(zip(keys[b].tolist(), values[b].tolist()))
        assert [lookup[x] for x in qk[b].tolist()] == ans[b].tolist()


def test_recall_models_have_matching_sizes_and_memory():
    models = {layout: recall.RecallModel(layout) for layout in ("AAAA", "GGGG", "GGGA")}
    sizes = [m.n_parameters() for m in models.values()]
    assert max(sizes) / min(sizes) < 1.02
    assert models["GGGG"].memory_numbers(10) == models["GGGG"].memory_numbers(10_000)
    assert models["AAAA"].memory_numbers(1000) == 4 * (models["GGGA"].memory_numbers(1000) - 3 * 2 * 32 * 32)
    out = models["GGGA"](*recall.recall_batch(2, 5, 3, 128, 64)[:3])
    assert out.shape == (2, 3, 64)


def test_attention_model_learns_recall_quickly():
    torch.manual_seed(0)
    model = recall.RecallModel("A", d_model=32, n_heads=1, n_keys=32, n_values=16)
    losses = recall.train_recall(model, steps=150, batch=32, pairs=(2, 8), n_queries=4, lr=1e-2)
    assert losses[-1] < 0.3 * losses[0]
    assert recall.recall_accuracy(model, 6) > 0.8
