"""The references of notebooks 07b (cross-attention, the encoder-decoder) and 07c (patchify, attention
rollout, the ViT), against independent implementations: torch.nn.MultiheadAttention, Conv2d and
F.unfold, plain float64 loops; the models' invariants; and the two trainings on a fixed seed."""

import inspect
import math
import time

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import seq2seq, vit
from attnkit.checks import CHECKS

E = inspect.Parameter.empty


@pytest.mark.parametrize("name,params", [
    ("cross_attention", [("x", E), ("memory", E), ("w_q", E), ("w_k", E), ("w_v", E), ("w_o", E), ("n_heads", E),
                         ("mask", None)]),
    ("patchify", [("images", E), ("patch_size", E)]),
    ("attention_rollout", [("attentions", E)]),
])
def test_signatures(name, params):
    sig = inspect.signature(getattr(attnkit, name)).parameters.values()
    assert [(p.name, p.default) for p in sig] == params
    assert name in attnkit.__all__ and name in CHECKS


# ---------------------------------------------------------------------------- cross-attention


def _torch_module(D, H, g, dtype):
    m = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(dtype)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.randn(3 * D, D, generator=g, dtype=dtype) / math.sqrt(D))
        m.out_proj.weight.copy_(torch.randn(D, D, generator=g, dtype=dtype) / math.sqrt(D))
    return m


@pytest.mark.parametrize("B,Nq,Nk,D,H,dtype", [(2, 12, 16, 16, 4, torch.float32), (3, 7, 3, 15, 5, torch.float64),
                                                (1, 1, 9, 8, 1, torch.float32), (2, 9, 9, 24, 6, torch.float64)])
def test_cross_attention_equals_torch_multihead_attention(g, B, Nq, Nk, D, H, dtype):
    m = _torch_module(D, H, g, dtype)
    x = torch.randn(B, Nq, D, generator=g, dtype=dtype)
    memory = torch.randn(B, Nk, D, generator=g, dtype=dtype)
    lengths = torch.randint(1, Nk + 1, (B,), generator=g)
    keep = torch.arange(Nk) < lengths[:, None]  # (B, Nk)
    w_q, w_k, w_v = m.in_proj_weight.detach().chunk(3)
    w_o = m.out_proj.weight.detach()
    with torch.no_grad():
        for mask, torch_mask in [(None, None), (keep[:, None, None, :], ~keep)]:
            want = m(x, memory, memory, key_padding_mask=torch_mask, need_weights=False)[0]
            got = attnkit.cross_attention(x, memory, w_q, w_k, w_v, w_o, H, mask)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got, want, **tol)


def test_cross_attention_layer_weights_equal_torch_per_head_weights(g):
    D, H = 12, 3
    layer = seq2seq.CrossAttention(D, H)
    m = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat((layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight)))
        m.out_proj.weight.copy_(layer.out_proj.weight)
        x, memory = torch.randn(2, 5, D, generator=g), torch.randn(2, 8, D, generator=g)
        keep = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
        want_out, want_w = m(x, memory, memory, key_padding_mask=~keep, average_attn_weights=False)
        torch.testing.assert_close(layer(x, memory, keep[:, None, None, :]), want_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weights(x, memory, keep[:, None, None, :]), want_w, rtol=1e-5, atol=1e-6)


def test_cross_attention_empty_source_gives_zeros_and_padding_is_invisible(g):
    D, H = 8, 2
    ws = [torch.randn(D, D, generator=g) for _ in range(4)]
    x, memory = torch.randn(2, 4, D, generator=g), torch.randn(2, 6, D, generator=g)
    keep = torch.tensor([[True] * 3 + [False] * 3, [False] * 6])[:, None, None, :]
    out = attnkit.cross_attention(x, memory, *ws, H, keep)
    assert torch.equal(out[1], torch.zeros(4, D))
    changed = memory.clone()
    changed[0, 3:] = 100.0  # padding of sequence 0
    torch.testing.assert_close(attnkit.cross_attention(x, changed, *ws, H, keep)[0], out[0])


def test_cross_attention_bad_input_names_the_shapes(g):
    x, memory, w = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(8, 8)
    with pytest.raises(ValueError, match=r"\(2, 6, 6\)"):
        attnkit.cross_attention(x, torch.randn(2, 6, 6), w, w, w, w, 2)
    with pytest.raises(ValueError, match=r"\(8, 6\)"):
        attnkit.cross_attention(x, memory, w, torch.randn(8, 6), w, w, 2)
    with pytest.raises(ValueError, match="does not divide"):
        attnkit.cross_attention(x, memory, w, w, w, w, 3)
    with pytest.raises(ValueError, match=r"\(2, 1, 1, 4\)"):
        attnkit.cross_attention(x, memory, w, w, w, w, 2, torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError):
        attnkit.cross_attention(x, memory.double(), w, w, w, w, 2)


# ---------------------------------------------------------------------------- the encoder-decoder


def test_reversal_data_and_exclusion():
    g = torch.Generator().manual_seed(0)
    strings = seq2seq.digit_strings(50, (3, 6), generator=g)
    src, tgt = seq2seq.encode_reversal(strings)
    for s, row_src, row_tgt in zip(strings, src.tolist(), tgt.tolist()):
        assert 3 <= len(s) <= 6
        assert [t - seq2seq.DIGIT0 for t in row_src[:len(s)]] == s and set(row_src[len(s):]) <= {seq2seq.PAD}
        assert row_tgt[0] == seq2seq.BOS and row_tgt[len(s) + 1] == seq2seq.EOS
        assert [t - seq2seq.DIGIT0 for t in row_tgt[1:len(s) + 1]] == s[::-1]
    assert seq2seq.decode_digits(tgt[:, 1:]) == ["".join(map(str, reversed(s))) for s in strings]
    held = {tuple(s) for s in seq2seq.digit_strings(300, (4, 4), generator=g)}  # 300 of the 10^4 strings
    for _ in range(20):
        src, _ = seq2seq.reversal_batch(64, (4, 4), generator=g, exclude=held)
        assert not {tuple(t - seq2seq.DIGIT0 for t in row) for row in src.tolist()} & held


def test_encoder_decoder_invariants(g):
    torch.manual_seed(0)
    model = seq2seq.tiny_seq2seq(0).eval()
    src, tgt = seq2seq.encode_reversal(seq2seq.digit_strings(4, (4, 8), generator=g))
    with torch.no_grad():
        logits, weights = model(src, tgt[:, :-1], return_weights=True)
        # causal decoder: later target tokens do not change earlier logits
        later = tgt[:, :-1].clone()
        later[:, 3:] = seq2seq.DIGIT0 + 7
        torch.testing.assert_close(model(src, later)[:, :3], logits[:, :3])
        # padding is invisible: extra PAD columns on the source change nothing
        padded = torch.cat((src, torch.full((4, 3), seq2seq.PAD)), 1)
        torch.testing.assert_close(model(padded, tgt[:, :-1]), logits, rtol=1e-5, atol=1e-5)
    assert len(weights) == model.cfg.n_dec_layers
    for w in weights:
        assert w.shape == (4, 4, tgt.shape[1] - 1, src.shape[1])
        assert (w * (src == seq2seq.PAD)[:, None, None, :]).abs().max() == 0  # no weight on padding
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


def test_encoder_decoder_calls_the_given_cross_attention(g):
    calls = []

    def spy(*args):
        calls.append(args[1].shape)
        return attnkit.cross_attention(*args)

    model = seq2seq.tiny_seq2seq(0, cross_fn=spy)
    src, tgt = seq2seq.encode_reversal(seq2seq.digit_strings(2, (5, 5), generator=g))
    model(src, tgt[:, :-1])
    assert calls == [torch.Size([2, 5, 64])] * model.cfg.n_dec_layers


def test_greedy_decode_stops_and_pads():
    model = seq2seq.tiny_seq2seq(0)
    src, _ = seq2seq.encode_reversal([[1, 2, 3], [4, 5, 6, 7, 8]])
    out = seq2seq.greedy_decode(model, src, max_new_tokens=6)
    assert out.shape[0] == 2 and out.shape[1] <= 6
    for row in out.tolist():
        if seq2seq.EOS in row:
            assert set(row[row.index(seq2seq.EOS) + 1:]) <= {seq2seq.PAD}


@pytest.mark.slow
def test_encoder_decoder_learns_reversal_within_budget():
    """The notebook's run: 700 steps of 32 strings; held-out strings reversed, in under 40 CPU seconds."""
    torch.set_num_threads(1)
    held_out = seq2seq.digit_strings(500, (4, 10), generator=torch.Generator().manual_seed(123))
    model = seq2seq.tiny_seq2seq(seed=0)
    start = time.process_time()
    seq2seq.train(model, steps=700, batch=32, lr=3e-3, exclude={tuple(s) for s in held_out}, seed=0,
                  progress=False)
    cpu = time.process_time() - start
    exact, digits = seq2seq.accuracy(model, held_out)
    assert exact >= 0.95 and digits >= 0.99, (exact, digits)
    assert cpu < 40, f"training took {cpu:.0f} CPU seconds"
    # the learned alignment: the second decoder layer reads the mirrored source digit
    src, tgt = seq2seq.encode_reversal(held_out[:100])
    with torch.no_grad():
        _, weights = model(src, tgt[:, :-1], return_weights=True)
    lengths = torch.tensor([len(s) for s in held_out[:100]])
    i = torch.arange(tgt.shape[1] - 1)
    digit = i < lengths[:, None]
    hit = (weights[-1].mean(1).argmax(-1) == lengths[:, None] - 1 - i) & digit
    assert hit.sum() / digit.sum() > 0.7


# ---------------------------------------------------------------------------- patchify


@pytest.mark.parametrize("B,C,H,W,p", [(2, 3, 12, 8, 4), (1, 1, 6, 9, 3), (2, 2, 5, 5, 1), (2, 3, 8, 8, 8)])
def test_patchify_equals_unfold_and_conv(g, B, C, H, W, p):
    images = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    got = attnkit.patchify(images, p)
    assert got.shape == (B, (H // p) * (W // p), C * p * p)
    assert torch.equal(got, F.unfold(images, p, stride=p).transpose(1, 2))
    conv = torch.nn.Conv2d(C, 5, kernel_size=p, stride=p).double()
    with torch.no_grad():
        want = conv(images).flatten(2).transpose(1, 2)  # (B, N, 5), patches row-major
        torch.testing.assert_close(got @ conv.weight.flatten(1).T + conv.bias, want)
    # patch n = r * (W/p) + c is the block at rows r*p.., columns c*p..
    r, c = (H // p) - 1, 0
    n = r * (W // p) + c
    assert torch.equal(got[:, n], images[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(B, -1))


def test_patchify_bad_input():
    with pytest.raises(ValueError, match=r"\(1, 3, 10, 8\)"):
        attnkit.patchify(torch.zeros(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="4 dimensions"):
        attnkit.patchify(torch.zeros(3, 8, 8), 4)
    with pytest.raises(ValueError):
        attnkit.patchify(torch.zeros(1, 3, 8, 8), 0)


# ---------------------------------------------------------------------------- rollout


def _rollout_loops(layers):
    """Abnar and Zuidema's rollout with plain Python loops in float64."""
    B, H, N, _ = layers[0].shape
    result = []
    for b in range(B):
        r = [[float(i == j) for j in range(N)] for i in range(N)]
        for a in layers:
            mixed = [[sum(float(a[b, h, i, j]) for h in range(H)) / H + (i == j) for j in range(N)] for i in range(N)]
            mixed = [[v / sum(row) for v in row] for row in mixed]
            r = [[sum(mixed[i][k] * r[k][j] for k in range(N)) for j in range(N)] for i in range(N)]
        result.append(r)
    return torch.tensor(result, dtype=torch.float64)


@pytest.mark.parametrize("L,B,H,N", [(1, 1, 2, 4), (3, 2, 4, 6), (4, 1, 1, 5)])
def test_rollout_equals_a_float64_loop(g, L, B, H, N):
    layers = [torch.softmax(torch.randn(B, H, N, N, generator=g, dtype=torch.float64) * 2, -1) for _ in range(L)]
    got = attnkit.attention_rollout(layers)
    torch.testing.assert_close(got, _rollout_loops(layers))
    torch.testing.assert_close(got.sum(-1), torch.ones(B, N, dtype=torch.float64))


def test_rollout_of_identity_attention_is_identity_and_bad_input():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(attnkit.attention_rollout([eye, eye]), torch.eye(5).expand(2, 5, 5))
    with pytest.raises(TypeError):
        attnkit.attention_rollout(eye)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        attnkit.attention_rollout([eye, torch.rand(2, 3, 4, 4)])


# ---------------------------------------------------------------------------- the ViT


def test_shapes_data():
    images, labels = vit.shapes(400, 24, generator=torch.Generator().manual_seed(0))
    assert images.shape == (400, 1, 24, 24) and labels.shape == (400,)
    counts = torch.bincount(labels, minlength=len(vit.CLASSES))
    assert counts.min() > 60  # every class drawn
    clean, _ = vit.shapes(400, 24, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(clean != 0, clean > 0.5)  # strokes only, on a black background
    lit = (clean[:, 0] > 0).sum((-1, -2))
    assert lit.min() >= 8  # every image has a visible shape
    assert (clean[:, 0, 0, :] == 0).all() and (clean[:, 0, :, -1] == 0).all()  # shapes stay inside the frame
    again, _ = vit.shapes(400, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, images)


def test_vit_forward_weights_and_patchify_fn(g):
    calls = []

    def spy(images, p):
        calls.append(p)
        return attnkit.patchify(images, p)

    model = vit.tiny_vit(0, patchify_fn=spy).eval()
    images, _ = vit.shapes(3, generator=g)
    with torch.no_grad():
        logits, weights = model(images, return_weights=True)
    assert logits.shape == (3, len(vit.CLASSES)) and calls == [4]
    N = 1 + model.cfg.n_patches
    assert [tuple(w.shape) for w in weights] == [(3, 4, N, N)] * model.cfg.n_layers
    assert attnkit.attention_rollout(weights).shape == (3, N, N)
    with pytest.raises(ValueError, match=r"\(3, 1, 20, 20\)"):
        model(torch.zeros(3, 1, 20, 20))


@pytest.mark.slow
def test_vit_learns_shapes_within_budget():
    """The notebook's run: test accuracy on fresh images, in under 40 CPU seconds; rollout on the shape."""
    torch.set_num_threads(1)
    images, labels = vit.shapes(500, generator=torch.Generator().manual_seed(99))
    model = vit.tiny_vit(seed=0)
    start = time.process_time()
    vit.train(model, steps=500, batch=64, lr=2e-3, seed=0, progress=False)
    cpu = time.process_time() - start
    acc = vit.accuracy(model, images, labels)
    assert acc >= 0.9, acc
    assert cpu < 40, f"training took {cpu:.0f} CPU seconds"
    clean, _ = vit.shapes(500, noise=0.0, generator=torch.Generator().manual_seed(99))  # same shapes, no noise
    on_shape = attnkit.patchify(clean, 4).gt(0).any(-1)  # (B, N): patches the stroke touches
    with torch.no_grad():
        _, weights = model(images, return_weights=True)
    cls = attnkit.attention_rollout(weights)[:, 0, 1:]  # (B, N)
    share = (cls * on_shape).sum(-1) / cls.sum(-1)
    fraction = on_shape.float().mean(-1)
    assert (share > fraction).float().mean() > 0.9  # the CLS token reads the shape more than its area share
