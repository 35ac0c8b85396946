"""FlexAttention (attnkit.flex) against independent references: masks written out from their
definitions with loops, PyTorch's SDPA with the equivalent dense mask or additive bias, and
properties (a packed sequence with a document mask equals attending within each document
separately). Notebook 12's checkers are registered and report a stub; their mutant library is
tests/library_flex.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

import attnkit
from attnkit import flex
from attnkit.checks import NOTEBOOK_CHECKS
from attnkit.checks.flex import FLEX_CHECKS, apply_score_mod
from sizes import NK, NQ, rand


def allowed_loop(nq, nk, window=None):
    """Bottom-right aligned causal (or sliding-window) mask, one entry at a time."""
    m = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        pos = i + nk - nq
        for j in range(nk):
            m[i, j] = j <= pos and (window is None or j > pos - window)
    return m


def sdpa(q, k, v, mask=None, bias=None):
    """PyTorch's SDPA with a bool mask or a float bias; rows with no allowed key give zeros."""
    if mask is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


SHAPES = [(NQ, NK), (NK, NQ), (7, 7), (1, 9)]


@pytest.mark.parametrize("nq,nk", SHAPES)
@pytest.mark.parametrize("window", [None, 1, 3])
def test_mask_mods_equal_their_definitions(nq, nk, window):
    mod = flex.causal(nq, nk) if window is None else flex.sliding_window(nq, nk, window)
    want = allowed_loop(nq, nk, window)
    assert torch.equal(flex.dense_mask(mod, nq, nk), want)
    course = attnkit.causal_mask(nq, nk) if window is None else attnkit.sliding_window_mask(nq, nk, window)
    assert torch.equal(want, course)


@pytest.mark.parametrize("nq,nk", SHAPES)
@pytest.mark.parametrize("window", [None, 4])
def test_flex_equals_sdpa_with_the_dense_mask(g, nq, nk, window):
    q, k, v = rand(g, 2, 3, nq, 8), rand(g, 2, 3, nk, 8), rand(g, 2, 3, nk, 8)
    mod = flex.causal(nq, nk) if window is None else flex.sliding_window(nq, nk, window)
    mask = allowed_loop(nq, nk, window)
    got = flex.attend(q, k, v, mask_mod=mod, block_size=8)
    torch.testing.assert_close(got, sdpa(q, k, v, mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, attnkit.scaled_dot_product_attention(q, k, v, mask)[0], rtol=1e-12, atol=1e-12)


def test_fully_masked_rows_give_zeros_and_minus_infinity_lse(g):
    q, k, v = rand(g, 1, 2, NK, 8), rand(g, 1, 2, NQ, 8), rand(g, 1, 2, NQ, 8)
    out, lse = flex.attend(q, k, v, mask_mod=flex.causal(NK, NQ), block_size=8, return_lse=True)
    dead = NK - NQ  # the first Nq - Nk queries precede every key
    assert torch.equal(out[:, :, :dead], torch.zeros_like(out[:, :, :dead]))
    assert torch.isneginf(lse[:, :, :dead]).all()
    s = q @ k.transpose(-2, -1) / math.sqrt(8)
    want = torch.logsumexp(s.masked_fill(~allowed_loop(NK, NQ), float("-inf")), -1)
    torch.testing.assert_close(lse[:, :, dead:], want[:, :, dead:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_heads,nq,nk", [(4, NQ, NK), (6, NK, NK), (3, 1, 9)])
def test_alibi_score_mod_equals_the_additive_bias(g, n_heads, nq, nk):
    scores = rand(g, 2, n_heads, nq, nk)
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / 4) for h in range(4)] + [2.0 ** -1, 2.0 ** -3], dtype=torch.float64)
    if n_heads == 3:
        slopes = torch.tensor([2.0 ** -4, 2.0 ** -8, 2.0 ** -2], dtype=torch.float64)  # 2 + every other of 4
    slopes = slopes[:n_heads].view(-1, 1, 1)
    i = torch.arange(nq)[:, None] + nk - nq
    bias = -slopes * (i - torch.arange(nk)[None]).abs()  # (H, Nq, Nk), the paper's definition
    torch.testing.assert_close(apply_score_mod(flex.alibi(n_heads, nq, nk), scores), scores + bias,
                               rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(attnkit.alibi_bias(n_heads, nq, nk).double(), bias, rtol=1e-7, atol=1e-9)
    q, k, v = rand(g, 2, n_heads, nq, 8), rand(g, 2, n_heads, nk, 8), rand(g, 2, n_heads, nk, 8)
    got = flex.attend(q, k, v, score_mod=flex.alibi(n_heads, nq, nk))
    torch.testing.assert_close(got, sdpa(q, k, v, bias=bias), rtol=1e-6, atol=1e-9)


def test_alibi_and_a_causal_block_mask_together(g):
    q, k, v = rand(g, 1, 4, NQ, 8), rand(g, 1, 4, NK, 8), rand(g, 1, 4, NK, 8)
    got = flex.attend(q, k, v, score_mod=flex.alibi(4, NQ, NK), mask_mod=flex.causal(NQ, NK), block_size=8)
    bias = attnkit.alibi_bias(4, NQ, NK).double().masked_fill(~allowed_loop(NQ, NK), float("-inf"))
    torch.testing.assert_close(got, sdpa(q, k, v, bias=bias), rtol=1e-6, atol=1e-9)


DOCS = [3, 7, 1, 5]  # document lengths, packed into one sequence of 16


@pytest.mark.parametrize("causal", [False, True])
def test_packed_documents_equal_attending_to_each_document_alone(g, causal):
    doc_ids = torch.repeat_interleave(torch.arange(len(DOCS)), torch.tensor(DOCS))  # (16,)
    n = len(doc_ids)
    q, k, v = rand(g, 2, 2, n, 8), rand(g, 2, 2, n, 8), rand(g, 2, 2, n, 8)
    got = flex.attend(q, k, v, mask_mod=flex.document(doc_ids, causal=causal), block_size=4)
    start = 0
    for length in DOCS:
        part = slice(start, start + length)
        alone = F.scaled_dot_product_attention(q[:, :, part], k[:, :, part], v[:, :, part], is_causal=causal)
        torch.testing.assert_close(got[:, :, part], alone, rtol=1e-12, atol=1e-12)
        start += length


def test_document_mask_definition_and_combinators():
    ids = torch.tensor([4, 4, 1, 1, 1, 9])  # ids need not be sorted or start at 0
    want = torch.tensor([[ids[i] == ids[j] for j in range(6)] for i in range(6)])
    assert torch.equal(flex.dense_mask(flex.document(ids), 6, 6), want)
    assert torch.equal(flex.dense_mask(flex.document(ids, causal=True), 6, 6), want & allowed_loop(6, 6))
    both = flex.and_masks(flex.document(ids), flex.causal(6, 6))
    assert torch.equal(flex.dense_mask(both, 6, 6), want & allowed_loop(6, 6))
    either = flex.or_masks(flex.document(ids), flex.sliding_window(6, 6, 2))
    assert torch.equal(flex.dense_mask(either, 6, 6), want | allowed_loop(6, 6, 2))


def test_padding_mod_reads_the_batch_index(g):
    lengths = torch.tensor([NK, 5, 1])
    q, k, v = rand(g, 3, 2, NQ, 8), rand(g, 3, 2, NK, 8), rand(g, 3, 2, NK, 8)
    mask = flex.dense_mask(flex.padding(lengths), NQ, NK, batch=3, heads=2)
    assert torch.equal(mask[:, 0, 0], attnkit.padding_mask(lengths, NK))
    bm = flex.make_block_mask(flex.padding(lengths), NQ, NK, batch=3, block_size=8)
    got = flex.attend(q, k, v, block_mask=bm)
    for b, n in enumerate(lengths.tolist()):
        alone = F.scaled_dot_product_attention(q[b], k[b, :, :n], v[b, :, :n])
        torch.testing.assert_close(got[b], alone, rtol=1e-12, atol=1e-12)


def tiles_loop(mask, bq, bk):
    """Tile states from the definition; padding past the end counts as masked."""
    nq, nk = mask.shape
    rows, cols = -(-nq // bq), -(-nk // bk)
    out = torch.zeros(rows, cols, dtype=torch.int8)
    for r in range(rows):
        for c in range(cols):
            tile = mask[r * bq:(r + 1) * bq, c * bk:(c + 1) * bk]
            if tile.any():
                out[r, c] = flex.FULL if tile.all() and tile.shape == (bq, bk) else flex.PARTIAL
    return out


@pytest.mark.parametrize("name,nq,nk,block", [("causal", 64, 64, 8), ("causal", 20, 36, 8), ("window", 48, 48, 8),
                                              ("window", 37, 37, 16), ("document", 16, 16, 4)])
def test_block_states_read_the_block_mask_back(name, nq, nk, block):
    ids = torch.repeat_interleave(torch.arange(len(DOCS)), torch.tensor(DOCS))
    mod = {"causal": flex.causal(nq, nk), "window": flex.sliding_window(nq, nk, 10),
           "document": flex.document(ids, causal=True)}[name]
    mask = flex.dense_mask(mod, nq, nk)
    want = tiles_loop(mask, block, block)
    states = flex.block_states(flex.make_block_mask(mod, nq, nk, block_size=block))
    assert torch.equal(states.states, want)
    assert torch.equal(flex.dense_block_states(mask, block).states, want)
    assert states.skipped == pytest.approx(float((want == flex.EMPTY).double().mean()))
    assert sum(states.counts().values()) == want.numel()


def test_causal_skips_almost_half_of_the_tiles():
    states = flex.block_states(flex.make_block_mask(flex.causal(1024, 1024), 1024, 1024))
    n = 1024 // 128
    assert states.counts() == {"empty": n * (n - 1) // 2, "partial": n, "full": n * (n - 1) // 2}


def test_bad_input_is_named(g):
    q = rand(g, 1, 2, 8, 4)
    with pytest.raises(ValueError, match="4-D"):
        flex.attend(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="not both"):
        flex.attend(q, q, q, mask_mod=flex.causal(8, 8), block_mask=flex.make_block_mask(flex.causal(8, 8), 8, 8))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        flex.attend(q, q, q, block_mask=flex.make_block_mask(flex.causal(4, 4), 4, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        flex.attend(q, rand(g, 1, 3, 8, 4), rand(g, 1, 3, 8, 4))
    with pytest.raises(ValueError, match=r"share \(B, H\)"):
        flex.attend(q, rand(g, 1, 1, 8, 4), rand(g, 1, 1, 8, 4))
    with pytest.raises(ValueError, match="head dimension"):
        flex.attend(q, rand(g, 1, 2, 8, 5), q)
    with pytest.raises(TypeError, match="score_mod"):
        flex.attend(q, q, q, score_mod=3)
    with pytest.raises(ValueError, match="window"):
        flex.sliding_window(4, 4, 0)
    with pytest.raises(TypeError, match="doc_ids"):
        flex.document(torch.zeros(4))
    with pytest.raises(TypeError, match="BlockMask"):
        flex.block_states(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        flex.dense_block_states(torch.ones(4, 4), 2)


def test_flex_attention_has_no_cpu_backward(g):
    """What notebook 12 tells the learner: on a CPU, FlexAttention is forward only."""
    q = rand(g, 1, 1, 8, 4).requires_grad_()
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q)


# ----------------------------------------------------------------------------- checkers
# Notebook 12's checkers against correct styles and realistic mutants: tests/library_flex.py, run by
# tests/test_checker_library.py.

def test_checkers_are_registered_and_say_not_implemented():
    assert set(FLEX_CHECKS) <= set(NOTEBOOK_CHECKS)

    def stub(_):
        raise NotImplementedError()

    for check in FLEX_CHECKS.values():
        with pytest.raises(AssertionError, match="not implemented yet"):
            check(stub)
