"""Chunked, sliding-window (banded), block-sparse and linear-attention forms against
independent float64 references (PyTorch's SDPA with a dense mask, a per-token loop), the
memory property each one exists for (no full score matrix), and the two approximations
(Performer, Linformer) converging where theory says they must."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnkit
from attnkit.approx import (approximation_error, favor_features, gaussian_features, linformer_attention,
                            linformer_projection, performer_attention)
from attnkit.chunked import chunked_attention, merge_partials
from attnkit.linear import linear_attention_chunked, linear_attention_recurrent
from attnkit.sparse import bigbird_layout, block_sparse_attention, layout_mask, sliding_window_attention
from sizes import NK, NQ, rand

SHAPES = [(NQ, NK), (NK, NQ), (13, 13), (1, 9), (40, 40)]


def sdpa(q, k, v, allowed=None):
    """PyTorch's SDPA with a dense bool mask; rows with nothing allowed -> zeros."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if allowed is not None:
        out = out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return out


class NoFullMatrix(TorchFunctionMode):
    """Fails if any torch call returns a tensor ending in the full (Nq, Nk) score shape."""

    def __init__(self, nq, nk):
        super().__init__()
        self.shape, self.bad = (nq, nk), []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.ndim >= 2 and tuple(out.shape[-2:]) == self.shape:
            self.bad.append(getattr(func, "__name__", repr(func)))
        return out


def qkv(g, nq, nk, d=8, dv=5):
    return rand(g, 2, 3, nq, d), rand(g, 2, 3, nk, d), rand(g, 2, 3, nk, dv)


# --- chunked ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nq,nk", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunks", [(5, None), (4, 3), (1, 1), (100, 7)])
def test_chunked_attention_is_exact(g, nq, nk, causal, chunks):
    q, k, v = qkv(g, nq, nk)
    allowed = attnkit.causal_mask(nq, nk) if causal else None
    got = chunked_attention(q, k, v, causal, query_chunk=chunks[0], key_chunk=chunks[1])
    torch.testing.assert_close(got, sdpa(q, k, v, allowed))


def test_chunked_attention_never_holds_the_score_matrix(g):
    q, k, v = qkv(g, 48, 40)
    with NoFullMatrix(48, 40) as spy:
        chunked_attention(q, k, v, True, query_chunk=16, key_chunk=8)
    assert not spy.bad


def test_merge_partials_equals_attention_over_the_union(g):
    q, k, v = qkv(g, NQ, NK)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    halves = [(s[..., :6], v[..., :6, :]), (s[..., 6:], v[..., 6:, :])]
    parts = [(torch.softmax(si, -1) @ vi, torch.logsumexp(si, -1)) for si, vi in halves]
    out, lse = merge_partials(*parts[0], *parts[1])
    torch.testing.assert_close(out, sdpa(q, k, v))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    empty = (torch.zeros_like(out), torch.full_like(lse, float("-inf")))  # a part that saw no key
    out2, lse2 = merge_partials(*empty, out, lse)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(lse2, lse)


# --- sliding window ------------------------------------------------------------------------------

@pytest.mark.parametrize("nq,nk", SHAPES)
@pytest.mark.parametrize("window", [1, 3, 20, 64])
@pytest.mark.parametrize("block", [None, 1, 4])
def test_banded_sliding_window_equals_the_masked_full_matrix(g, nq, nk, window, block):
    q, k, v = qkv(g, nq, nk)
    want = sdpa(q, k, v, attnkit.sliding_window_mask(nq, nk, window))
    torch.testing.assert_close(sliding_window_attention(q, k, v, window, block=block), want)


def test_banded_sliding_window_touches_only_the_band(g):
    q, k, v = qkv(g, 64, 64)
    with NoFullMatrix(64, 64) as spy:
        sliding_window_attention(q, k, v, 8, block=8)
    assert not spy.bad
    # changing a key outside every query's window changes nothing; inside, it does
    k2 = k.clone()
    k2[..., 10, :] += 5.0  # key 10 is seen by queries 10..17 only
    out, out2 = sliding_window_attention(q, k, v, 8), sliding_window_attention(q, k2, v, 8)
    torch.testing.assert_close(out[..., :10, :], out2[..., :10, :])
    torch.testing.assert_close(out[..., 18:, :], out2[..., 18:, :])
    assert not torch.allclose(out[..., 10:18, :], out2[..., 10:18, :])


# --- block sparse --------------------------------------------------------------------------------

@pytest.mark.parametrize("nq,nk", SHAPES)
@pytest.mark.parametrize("block", [2, 4, 5])
@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_equals_attention_with_the_layout_mask(g, nq, nk, block, causal):
    q, k, v = qkv(g, nq, nk)
    layout = bigbird_layout(-(-nq // block), -(-nk // block), generator=torch.Generator().manual_seed(nq + block))
    allowed = layout_mask(layout, block, nq, nk)
    if causal:
        allowed = allowed & attnkit.causal_mask(nq, nk)
    got = block_sparse_attention(q, k, v, layout, block, is_causal=causal)
    torch.testing.assert_close(got, sdpa(q, k, v, allowed))


def test_block_sparse_with_every_block_is_full_attention(g):
    q, k, v = qkv(g, 20, 20)
    full = torch.ones(4, 4, dtype=torch.bool)
    torch.testing.assert_close(block_sparse_attention(q, k, v, full, 5), sdpa(q, k, v))


def test_bigbird_layout_has_local_global_and_random_blocks():
    n = 12
    layout = bigbird_layout(n, local=1, n_global=2, n_random=2, generator=torch.Generator().manual_seed(0))
    i = torch.arange(n)
    assert layout[:, :2].all() and layout[:2, :].all(), "global blocks see and are seen by everyone"
    assert layout[i, i].all() and layout[i[1:], i[:-1]].all() and layout[i[:-1], i[1:]].all(), "local band"
    band = ((i[:, None] - i[None, :]).abs() <= 1) | (i[None, :] < 2)
    extra = (layout & ~band)[2:].sum(1)
    assert (extra == 2).all(), "exactly n_random extra key blocks per non-global row"
    again = bigbird_layout(n, local=1, n_global=2, n_random=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layout, again)
    causal = bigbird_layout(n, n_random=3, causal=True, generator=torch.Generator().manual_seed(1))
    assert not (causal & (i[None, :] > i[:, None])).any() and causal[i, i].all()


def test_block_sparse_computes_only_the_selected_blocks(g):
    q, k, v = qkv(g, 32, 32)
    layout = bigbird_layout(8, generator=torch.Generator().manual_seed(0))
    with NoFullMatrix(32, 32) as spy:
        block_sparse_attention(q, k, v, layout, 4)
    assert not spy.bad


# --- linear attention: three causal forms ---------------------------------------------------------

def linear_loop(q, k, v):
    """Causal linear attention, one query at a time, float64, straight from the formula."""
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    nq, nk = q.shape[-2], k.shape[-2]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for i in range(nq):
        last = i + nk - nq
        if last < 0:
            continue
        w = (phi(q[..., i:i + 1, :]) * phi(k[..., :last + 1, :])).sum(-1)  # (..., j)
        out[..., i, :] = (w.unsqueeze(-1) * v[..., :last + 1, :]).sum(-2) / w.sum(-1, keepdim=True)
    return out


@pytest.mark.parametrize("nq,nk", SHAPES)
def test_causal_linear_attention_forms_agree_with_the_loop(g, nq, nk):
    q, k, v = qkv(g, nq, nk)
    want = linear_loop(q, k, v)
    torch.testing.assert_close(attnkit.linear_attention(q, k, v, causal=True), want)
    torch.testing.assert_close(linear_attention_recurrent(q, k, v), want)
    for chunk in (1, 4, 64):
        torch.testing.assert_close(linear_attention_chunked(q, k, v, chunk), want)


def test_chunked_linear_attention_keeps_no_per_token_state(g):
    q, k, v = qkv(g, 64, 64)
    seen = []

    class Sizes(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    with Sizes():
        linear_attention_chunked(q, k, v, 8)
    # the cumulative-sum form holds (B, H, N, d, dv) = 2*3*64*8*5 numbers; the chunked one far fewer
    assert max(seen) < 2 * 3 * 64 * 8 * 5 / 4


# --- approximations ---------------------------------------------------------------------------------

def test_orthogonal_features_are_orthogonal_within_a_block():
    w = gaussian_features(20, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = w / w.norm(dim=-1, keepdim=True)
    for start in (0, 8):
        gram = unit[start:start + 8] @ unit[start:start + 8].T
        torch.testing.assert_close(gram, torch.eye(8, dtype=torch.float64))


def test_favor_features_estimate_the_softmax_kernel_without_bias(g):
    x, y = rand(g, 3, 4) * 0.3, rand(g, 5, 4) * 0.3
    w = gaussian_features(200_000, 4, orthogonal=False, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    proj_x, proj_y = x @ w.T, y @ w.T
    fx = torch.exp(proj_x - (x * x).sum(-1, keepdim=True) / 2)  # unstabilised features
    fy = torch.exp(proj_y - (y * y).sum(-1, keepdim=True) / 2)
    samples = fx.T.unsqueeze(-1) * fy.T.unsqueeze(1)  # (m, 3, 5): one kernel estimate per draw
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(w.shape[0])
    assert ((estimate - torch.exp(x @ y.T)).abs() < 4 * stderr).all()  # unbiased: within 4 standard errors
    assert (stderr < 0.01 * estimate).all()  # and the power to see a bias of a few percent
    # the stabilised features used by performer_attention differ only by per-row constants
    sx = favor_features(x, w, is_query=True)
    ratio = (sx * math.sqrt(w.shape[0])) / fx
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_shrinks_with_more_features(g, causal):
    q, k, v = rand(g, 1, 2, 64, 16) * 0.4, rand(g, 1, 2, 64, 16) * 0.4, rand(g, 1, 2, 64, 16)
    exact = sdpa(q, k, v, attnkit.causal_mask(64, 64) if causal else None)

    def mean_error(m):
        return sum(approximation_error(performer_attention(q, k, v, m, causal=causal,
                                                           generator=torch.Generator().manual_seed(s)), exact)
                   for s in range(4)) / 4

    small, large = mean_error(8), mean_error(2048)
    assert large < small / 3, (small, large)
    assert large < 0.05


def test_linformer_is_exact_when_the_projection_only_permutes_keys(g):
    q, k, v = qkv(g, NQ, NK)
    torch.testing.assert_close(linformer_attention(q, k, v, torch.eye(NK, dtype=torch.float64)), sdpa(q, k, v))
    perm = torch.eye(NK, dtype=torch.float64)[torch.randperm(NK, generator=g)]
    torch.testing.assert_close(linformer_attention(q, k, v, perm), sdpa(q, k, v))


def test_pooling_projection_averages_contiguous_segments():
    E = linformer_projection(10, 4, kind="pool", dtype=torch.float64)
    torch.testing.assert_close(E.sum(1), torch.ones(4, dtype=torch.float64))  # each row is a mean
    assert ((E > 0).sum(0) == 1).all()  # each position in exactly one segment
    assert all(((E[r] > 0).nonzero().diff(dim=0) == 1).all() for r in range(4))  # contiguous
    torch.testing.assert_close(linformer_projection(7, 7, kind="pool"), torch.eye(7))
    with pytest.raises(ValueError, match="kind"):
        linformer_projection(7, 3, kind="learned")


def test_linformer_mixes_keys_and_has_the_right_shapes(g):
    q, k, v = qkv(g, NQ, NK)
    E = linformer_projection(NK, 4, generator=g, dtype=torch.float64)
    out = linformer_attention(q, k, v, E)
    assert out.shape == (2, 3, NQ, 5)
    assert approximation_error(out, sdpa(q, k, v)) > 1e-3  # a rank-4 projection is not exact


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda q, k, v: chunked_attention(q, k, v, query_chunk=0), "query_chunk"),
    (lambda q, k, v: chunked_attention(q, k[..., :3], v), "head dimension"),
    (lambda q, k, v: sliding_window_attention(q, k, v, 0), "window"),
    (lambda q, k, v: sliding_window_attention(q, k, v[..., :3, :], 2), "same number of keys"),
    (lambda q, k, v: block_sparse_attention(q, k, v, torch.ones(2, 2, dtype=torch.bool), 4), r"\(3, 4\)"),
    (lambda q, k, v: block_sparse_attention(q, k, v, torch.ones(3, 4), 4), "bool"),
    (lambda q, k, v: linear_attention_chunked(q, k, v, 0), "chunk_size"),
    (lambda q, k, v: performer_attention(q, k, v, features=torch.randn(4, 3, dtype=torch.float64)), r"\(m, 8\)"),
    (lambda q, k, v: linformer_attention(q, k, v, torch.randn(4, 7, dtype=torch.float64)), r"\(r, 16\)"),
    (lambda q, k, v: bigbird_layout(0), "n_q_blocks"),
])
def test_bad_input_names_what_was_wrong(g, call, match):
    q, k, v = qkv(g, NQ, NK)
    with pytest.raises((ValueError, TypeError), match=match):
        call(q, k, v)
