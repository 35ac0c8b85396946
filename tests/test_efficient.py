"""Online softmax, tiled FlashAttention (forward and backward), sliding windows and linear
attention against independent float64 references and PyTorch's autograd."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from sizes import NK, NQ, rand


def naive(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = torch.exp(s - torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    return w @ v, lse


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_online_softmax_matches_softmax_for_every_block_size(g, block):
    x = rand(g, 3, 4, 29) * 30
    x[0, 1, :] = float("-inf")
    x[1, 2, ::3] = float("-inf")
    probs, m, l = attnkit.online_softmax(x, block)
    torch.testing.assert_close(probs, attnkit.softmax(x))
    finite = ~torch.isneginf(m)
    torch.testing.assert_close(m[finite], x.amax(-1)[finite])
    torch.testing.assert_close(l[finite], torch.exp(x - x.amax(-1, keepdim=True)).sum(-1)[finite])
    assert l[0, 1] == 0 and torch.isneginf(m[0, 1])


@pytest.mark.parametrize("nq,nk,causal", [(NQ, NK, False), (NQ, NK, True), (113, 113, True), (NK, NQ, True),
                                           (1, 37, True), (65, 130, False)])
@pytest.mark.parametrize("blocks", [(16, 16), (7, 32), (64, 64)])
def test_flash_forward_matches_naive_and_sdpa(g, nq, nk, causal, blocks):
    q, k, v = rand(g, 2, 3, nq, 8), rand(g, 2, 3, nk, 8), rand(g, 2, 3, nk, 5)
    mask = attnkit.causal_mask(nq, nk) if causal else None
    out, lse = attnkit.flash_attention_forward(q, k, v, causal, *blocks)
    want, want_lse = naive(q, k, v, mask)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(lse, want_lse)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_flash_fully_masked_rows_and_block_invariance(g):
    q, k, v = rand(g, 6, 4), rand(g, 3, 4), rand(g, 3, 4)  # causal with Nq > Nk: first rows see nothing
    out, lse = attnkit.flash_attention_forward(q, k, v, True, 2, 2)
    assert torch.equal(out[:3], torch.zeros(3, 4, dtype=torch.float64)) and torch.isneginf(lse[:3]).all()
    outs = [attnkit.flash_attention_forward(q, k, v, True, bq, bk)[0] for bq, bk in [(1, 1), (2, 3), (6, 3)]]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])


@pytest.mark.parametrize("nq,nk,causal", [(NQ, NK, False), (NQ, NK, True), (37, 37, True), (NK, NQ, True)])
def test_flash_backward_matches_autograd_of_naive(g, nq, nk, causal):
    q, k, v = (rand(g, 2, 2, n, 6).requires_grad_() for n in (nq, nk, nk))
    d_out = rand(g, 2, 2, nq, 6)
    mask = attnkit.causal_mask(nq, nk) if causal else None
    want, _ = naive(q, k, v, mask)
    want.backward(d_out)
    expected = [t.grad.clone() for t in (q, k, v)]
    with torch.no_grad():
        out, lse = attnkit.flash_attention_forward(q, k, v, causal, 16, 16)
        grads = attnkit.flash_attention_backward(q, k, v, out, lse, d_out, causal, block_q=16, block_k=16)
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp)


def test_flash_autograd_function_saves_lse_and_passes_gradcheck(g):
    q, k, v = (rand(g, 1, 2, n, 4).requires_grad_() for n in (9, 11, 11))
    assert torch.autograd.gradcheck(lambda a, b, c: attnkit.FlashAttention.apply(a, b, c, True), (q, k, v))
    out = attnkit.FlashAttention.apply(q, k, v, False)
    saved = out.grad_fn.saved_tensors
    assert any(t.shape == (1, 2, 9) for t in saved), "the log-sum-exp (..., N) must be saved"
    kb = rand(g, 1, 1, 11, 4).requires_grad_()  # broadcast batch dims get summed gradients
    attnkit.FlashAttention.apply(q, kb, v).sum().backward()
    assert kb.grad.shape == kb.shape


@pytest.mark.parametrize("nq,nk,window", [(8, 8, 3), (4, 10, 2), (10, 4, 3), (5, 5, 1), (6, 6, 100)])
def test_sliding_window_mask_matches_loop(nq, nk, window):
    got = attnkit.sliding_window_mask(nq, nk, window)
    for i in range(nq):
        ip = i + nk - nq
        for j in range(nk):
            assert bool(got[i, j]) == (ip - window < j <= ip)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_matches_quadratic_form(g, causal):
    q, k, v = rand(g, 2, 3, 10, 4), rand(g, 2, 3, 10, 4), rand(g, 2, 3, 10, 5)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    w = fq @ fk.transpose(-2, -1)  # (.., N, N) unnormalised, positive
    if causal:
        w = w * torch.ones(10, 10, dtype=torch.bool).tril()
    want = (w / w.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(attnkit.linear_attention(q, k, v, causal), want)


def test_linear_attention_causal_prefix_is_an_rnn(g):
    q, k, v = rand(g, 7, 3), rand(g, 7, 3), rand(g, 7, 2)
    full = attnkit.linear_attention(q, k, v, causal=True)
    for t in range(7):  # the output at t only depends on the prefix
        torch.testing.assert_close(attnkit.linear_attention(q[: t + 1], k[: t + 1], v[: t + 1], causal=True)[-1], full[t])


def test_efficient_inputs_are_validated():
    with pytest.raises(ValueError, match="block_q"):
        attnkit.flash_attention_forward(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), block_q=0)
    with pytest.raises(ValueError, match="lse"):
        attnkit.flash_attention_backward(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4),
                                         torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="window"):
        attnkit.sliding_window_mask(3, 3, 0)
    with pytest.raises(TypeError):
        attnkit.online_softmax(torch.arange(4), 2)


def test_flash_backward_masks_before_exponentiating(g):
    """Masked scores far above the row's lse must not overflow to inf and turn into NaN (inf * 0)."""
    q, k, v = rand(g, 1, 2, 70, 8) * 30, rand(g, 1, 2, 70, 8), rand(g, 1, 2, 70, 8)
    q32, k32, v32 = q.float(), k.float(), v.float()
    out, lse = attnkit.flash_attention_forward(q32, k32, v32, True)
    d_out = rand(g, 1, 2, 70, 8).float()
    got = attnkit.flash_attention_backward(q32, k32, v32, out, lse, d_out, True, block_q=16, block_k=16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(F.scaled_dot_product_attention(*leaves, is_causal=True), leaves, d_out.double())
    for a, b in zip(got, want):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=2e-3 * b.abs().max().item())
