"""The shipped byte-level model (attnkit.pretrained): loading offline, the forward pass's
inspection hooks against an independent float64 reference, the quality of the shipped
weights on held-out stdlib files, packaging (the training script: test_pretrained_train.py)."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from attnkit import pretrained
from attnkit.rope import apply_rope

ROOT = Path(__file__).resolve().parents[1]
TEXT = ('import os\n\ndef join(a, b):\n    """Join two paths."""\n    if not a:\n        return b\n'
        '    return os.path.join(a, [b, (a, b)])\n')


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model, tok = pretrained.load()
    return model, tok


@pytest.fixture(scope="module")
def idx(lm):
    _, tok = lm
    ids = tok.encode(TEXT)
    return torch.tensor([ids, ids[::-1]], dtype=torch.long)  # (2, T): two different rows


def reference(model, idx, *, head_scale=None, skip=(), mask=None):
    """The whole forward pass again, in float64, one head at a time, with the library's own
    RoPE (attnkit.rope.apply_rope) and an explicit mask. ``skip``: (layer, head) pairs whose
    contribution to the output projection is left out. Returns logits, attention, head outputs."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    B, T = idx.shape
    dh = cfg.d_head
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool).tril()
    pos = torch.arange(T)
    x = sd["embed.weight"][idx]  # (B, T, D)
    attn, heads = [], []
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        h = F.layer_norm(x, (cfg.d_model,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        w_qkv, w_o = sd[p + "attn.qkv.weight"], sd[p + "attn.out.weight"]  # (3D, D), (D, D)
        out = torch.zeros_like(x)
        layer_attn, layer_heads = [], []
        for head in range(cfg.n_heads):
            rows = slice(head * dh, (head + 1) * dh)
            q = h @ w_qkv[: cfg.d_model][rows].T  # (B, T, d)
            k = h @ w_qkv[cfg.d_model: 2 * cfg.d_model][rows].T
            v = h @ w_qkv[2 * cfg.d_model:][rows].T
            q, k = apply_rope(q, pos, cfg.rope_theta), apply_rope(k, pos, cfg.rope_theta)
            scores = (q @ k.transpose(-2, -1)) / dh ** 0.5  # (B, T, T)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            o = weights @ v  # (B, T, d)
            if head_scale is not None:
                o = o * float(head_scale[layer, head])
            layer_attn.append(weights)
            layer_heads.append(o)
            if (layer, head) not in skip:
                out = out + o @ w_o[:, rows].T  # this head's share of the output projection
        x = x + out
        h2 = F.layer_norm(x, (cfg.d_model,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        x = x + F.gelu(h2 @ sd[p + "mlp.up.weight"].T) @ sd[p + "mlp.down.weight"].T
        attn.append(torch.stack(layer_attn, 1))
        heads.append(torch.stack(layer_heads, 1))
    x = F.layer_norm(x, (cfg.d_model,), sd["ln_f.weight"], sd["ln_f.bias"])
    return x @ sd["unembed.weight"].T, attn, heads


# --------------------------------------------------------------------------- loading

def test_load_is_offline_cached_float32_eval(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("attnkit.pretrained.load touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pretrained._load_cpu.cache_clear()
    pretrained._load_on.cache_clear()
    model, tok = pretrained.load()
    assert pretrained.load()[0] is model  # cached
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    cfg = model.config
    assert cfg.n_layers >= 4 and cfg.max_len >= 256 and cfg.d_head * cfg.n_heads == cfg.d_model
    assert tok.vocab_size == 256
    assert pretrained.WEIGHTS.stat().st_size <= 20 * 2 ** 20


def test_weights_file_is_a_plain_state_dict():
    blob = torch.load(pretrained.WEIGHTS, weights_only=True)
    assert set(blob) == {"config", "state_dict"}
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values())


def test_tokenizer_round_trip():
    tok = pretrained.tokenizer
    text = "déf f(x):\n    return '→'"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode(ids[:2]) == "d\ufffd"  # half of a two-byte character
    with pytest.raises(ValueError):
        tok.decode([256])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_info_record():
    rec = pretrained.info()
    for key in ("python_version", "file_list_sha256", "held_out_files", "steps", "train_time_s",
                "held_out_bits_per_byte", "bigram_bits_per_byte", "parameters"):
        assert key in rec, key
    model, _ = pretrained.load()
    assert rec["parameters"] == model.num_parameters()
    assert rec["held_out_bits_per_byte"] < rec["bigram_bits_per_byte"]
    assert len(pretrained.loss_curve()) == rec["steps"]


# --------------------------------------------------------------------------- forward pass

def test_shapes(lm, idx):
    model, _ = lm
    cfg = model.config
    B, T = idx.shape
    logits = model(idx)
    assert logits.shape == (B, T, 256) and logits.dtype == torch.float32
    logits2, attn = model(idx, return_attention=True)
    assert len(attn) == cfg.n_layers and attn[0].shape == (B, cfg.n_heads, T, T)
    logits3, heads = model(idx, return_head_outputs=True)
    assert len(heads) == cfg.n_layers and heads[0].shape == (B, cfg.n_heads, T, cfg.d_head)
    _, attn4, heads4 = model(idx, return_attention=True, return_head_outputs=True)
    torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits3, logits)
    torch.testing.assert_close(heads4[2], heads[2], atol=1e-5, rtol=1e-4)
    assert model(idx[:, :cfg.max_len].new_zeros(1, cfg.max_len)).shape == (1, cfg.max_len, 256)


def test_matches_float64_reference(lm, idx):
    model, _ = lm
    logits, attn, heads = model(idx, return_attention=True, return_head_outputs=True)
    ref_logits, ref_attn, ref_heads = reference(model, idx)
    for layer in range(model.config.n_layers):
        torch.testing.assert_close(attn[layer].double(), ref_attn[layer], atol=2e-5, rtol=0)
        torch.testing.assert_close(heads[layer].double(), ref_heads[layer], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(logits.double(), ref_logits, atol=2e-3, rtol=1e-3)


def test_attention_rows_sum_to_one_and_are_causal(lm, idx):
    model, _ = lm
    _, attn = model(idx, return_attention=True)
    T = idx.shape[1]
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    for a in attn:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
        assert (a >= 0).all() and (a[..., future] == 0).all()


def test_causality(lm, idx):
    model, _ = lm
    T = idx.shape[1]
    base = model(idx)
    for t in (0, T // 2, T - 2):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 7) % 256
        after = model(changed)
        torch.testing.assert_close(after[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(after[:, t + 1:], base[:, t + 1:])


def test_head_scale_ones_is_the_plain_forward(lm, idx):
    model, _ = lm
    cfg = model.config
    ones = torch.ones(cfg.n_layers, cfg.n_heads)
    torch.testing.assert_close(model(idx, head_scale=ones), model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer,head", [(0, 3), (2, 0)])
def test_head_scale_zero_removes_that_heads_contribution(lm, idx, layer, head):
    model, _ = lm
    cfg = model.config
    scale = torch.ones(cfg.n_layers, cfg.n_heads)
    scale[layer, head] = 0.0
    ablated = model(idx, head_scale=scale)
    ref, _, _ = reference(model, idx, skip={(layer, head)})
    torch.testing.assert_close(ablated.double(), ref, atol=2e-3, rtol=1e-3)
    assert (ablated - model(idx)).abs().max() > 1e-3  # the head did something
    # a fractional scale as well
    scale[layer, head] = 0.5
    ref_half, _, _ = reference(model, idx, head_scale=scale)
    torch.testing.assert_close(model(idx, head_scale=scale).double(), ref_half, atol=2e-3, rtol=1e-3)


def test_head_patch(lm, idx):
    model, _ = lm
    cfg = model.config
    base, heads = model(idx, return_head_outputs=True)
    own = {(layer, head): heads[layer][:, head] for layer in range(cfg.n_layers) for head in range(cfg.n_heads)}
    torch.testing.assert_close(model(idx, head_patch=own), base, atol=1e-5, rtol=1e-5)
    # patching a head with another run's output = that run's head, this run's everything else
    other = idx.flip(0)  # the rows swapped
    _, other_heads = model(other, return_head_outputs=True)
    patched, patched_heads = model(idx, head_patch={(1, 2): other_heads[1][:, 2]}, return_head_outputs=True)
    torch.testing.assert_close(patched_heads[1][:, 2], other_heads[1][:, 2])
    torch.testing.assert_close(patched_heads[0], heads[0])  # earlier layers untouched
    assert (patched - base).abs().max() > 1e-3
    # patching with zeros is zero-ablation
    scale = torch.ones(cfg.n_layers, cfg.n_heads)
    scale[1, 2] = 0
    zeros = {(1, 2): torch.zeros_like(heads[1][:, 2])}
    torch.testing.assert_close(model(idx, head_patch=zeros), model(idx, head_scale=scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window,keep", [(1, 0), (8, 0), (8, 2), (16, 1)])
def test_attn_window_matches_an_explicit_mask(lm, idx, window, keep):
    model, _ = lm
    T = idx.shape[1]
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            mask[i, j] = (i - j < window) or (j < keep)
    logits, attn = model(idx, attn_window=window, keep_first=keep, return_attention=True)
    ref_logits, ref_attn, _ = reference(model, idx, mask=mask)
    for a, r in zip(attn, ref_attn):
        assert (a[..., ~mask] == 0).all()
        torch.testing.assert_close(a.double(), r, atol=2e-5, rtol=0)
    torch.testing.assert_close(logits.double(), ref_logits, atol=2e-3, rtol=1e-3)
    # the fast path (no attention returned) agrees with the explicit one
    torch.testing.assert_close(model(idx, attn_window=window, keep_first=keep), logits, atol=1e-4, rtol=1e-4)
    # a window as long as the sequence is the plain causal forward
    torch.testing.assert_close(model(idx, attn_window=T), model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,error", [
    (lambda idx: idx + 256, ValueError),
    (lambda idx: idx - 300, ValueError),
    (lambda idx: idx.float(), TypeError),
    (lambda idx: idx[0], ValueError),
    (lambda idx: idx.tolist(), TypeError),
    (lambda idx: torch.zeros(1, 257, dtype=torch.long), ValueError),
    (lambda idx: idx.bool(), TypeError),
])
def test_bad_input(lm, idx, bad, error):
    model, _ = lm
    with pytest.raises(error):
        model(bad(idx))


def test_bad_hooks(lm, idx):
    model, _ = lm
    cfg = model.config
    B, T = idx.shape
    with pytest.raises(ValueError, match="head_scale"):
        model(idx, head_scale=torch.ones(cfg.n_heads, cfg.n_layers + 1))
    with pytest.raises(TypeError, match="head_scale"):
        model(idx, head_scale=torch.ones(cfg.n_layers, cfg.n_heads, dtype=torch.long))
    with pytest.raises(ValueError, match="head_patch"):
        model(idx, head_patch={(0, 0): torch.zeros(B, T, cfg.d_head + 1)})
    with pytest.raises(ValueError, match="head_patch"):
        model(idx, head_patch={(cfg.n_layers, 0): torch.zeros(B, T, cfg.d_head)})
    with pytest.raises(TypeError, match="head_patch"):
        model(idx, head_patch={0: torch.zeros(B, T, cfg.d_head)})
    with pytest.raises(ValueError, match="attn_window"):
        model(idx, attn_window=0)
    with pytest.raises(TypeError, match="keep_first"):
        model(idx, attn_window=4, keep_first=1.5)


# --------------------------------------------------------------------------- sampling

def test_sample_is_deterministic_and_greedy_matches_the_plain_forward(lm):
    model, tok = lm
    a = pretrained.sample("def ", 40, seed=3)
    assert a.startswith("def ") and a == pretrained.sample("def ", 40, seed=3)
    assert a != pretrained.sample("def ", 40, seed=4)
    ids = tok.encode("class Path:\n    def ")
    greedy = pretrained.sample("class Path:\n    def ", 30, temperature=0)
    seq = list(ids)
    for _ in range(30):  # no cache: the whole sequence again for every byte
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert greedy == tok.decode(seq)
    long = pretrained.sample("x" * 300, 300, seed=1)  # crosses the context length twice
    assert long.startswith("x" * 300) and len(long.encode("utf-8", errors="surrogatepass")) >= 300


# --------------------------------------------------------------------------- quality of the shipped weights

def _held_out_slice(n_bytes):
    """Bytes of held-out files of this Python (the record's list), independent of train.py's evaluation."""
    root = Path(__import__("sysconfig").get_paths()["stdlib"])
    files = [f for f in pretrained.info()["held_out_files"] if (root / f).is_file()]
    if not files:
        pytest.skip("none of the held-out files exist in this Python's stdlib")
    data = b"".join((root / f).read_bytes() for f in files[:6])
    return np.frombuffer(data[:n_bytes], dtype=np.uint8), root


def test_shipped_weights_beat_the_bigram_on_held_out_files(lm):
    model, _ = lm
    data, root = _held_out_slice(16 * 256 + 1)
    held = set(pretrained.info()["held_out_files"])
    # the bigram, counted afresh on every other non-test stdlib file
    train = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        parts = set(path.relative_to(root).parts[:-1])
        if rel in held or parts & {"test", "tests", "idle_test", "idlelib", "site-packages",
                                   "dist-packages", "pydoc_data", "encodings"}:
            continue
        assert int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 20 != 0
        train.append(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    corpus = np.concatenate(train).astype(np.int64)
    counts = np.bincount(corpus[:-1] * 256 + corpus[1:], minlength=256 * 256).reshape(256, 256)
    p = (counts + 1) / (counts.sum(1, keepdims=True) + 256)
    x = torch.from_numpy(data.astype(np.int64))
    windows = x[: 16 * 256].view(16, 256)  # non-overlapping windows: each byte's context starts at its window
    targets = x[1: 16 * 256 + 1].view(16, 256)
    with torch.no_grad():
        nll = F.cross_entropy(model(windows).flatten(0, 1), targets.flatten()).item()
    model_bits = nll / np.log(2)
    bigram_bits = float(-np.log2(p[data[:-1], data[1:]]).mean())
    assert 2.5 < bigram_bits < 4.5  # a sane bigram on Python source
    assert model_bits < bigram_bits - 1.0, (model_bits, bigram_bits)


def test_shipped_model_has_a_previous_byte_head(lm):
    """Some head puts most of its weight on the byte just before the query, on held-out code."""
    model, _ = lm
    data, _ = _held_out_slice(4 * 256)
    x = torch.from_numpy(data.astype(np.int64)).view(4, 256)
    with torch.no_grad():
        _, attn = model(x, return_attention=True)
    prev = torch.stack([a.diagonal(-1, -2, -1).mean((0, -1)) for a in attn])  # (layers, heads)
    assert prev.max() > 0.4, prev
    assert prev.median() < 0.3  # and it is a specialist, not what every head does


def test_shipped_model_copies_a_repeated_random_string_with_an_induction_head(lm):
    """Olsson et al.'s test: random strings repeated. Nothing but the earlier copy predicts them,
    so a model that copies from its context pays far less for the later copies; some head looks
    from each byte to the byte after its earlier occurrence, and without that head the copying
    is gone while ordinary code hardly notices."""
    model, _ = lm
    g = torch.Generator().manual_seed(123)
    p, copies = 32, 7
    segment = torch.randint(ord("a"), ord("z") + 1, (6, p), generator=g)  # (6, 32) random letters
    seq = torch.cat([torch.full((6, 1), 10), segment.repeat(1, copies)], dim=1)  # (6, 1 + 7 * 32)

    def later_bits(**options):
        with torch.no_grad():
            logits, attn = model(seq, return_attention=True, **options)
        bits = F.cross_entropy(logits[:, :-1].transpose(1, 2), seq[:, 1:], reduction="none") / math.log(2)
        return bits[:, :p].mean().item(), bits[:, p + 1:].mean().item(), attn

    first, later, attn = later_bits()
    assert first > 4.0, first  # random letters: about log2(26) = 4.7 bits or worse, before any copy
    assert later < first / 2, (first, later)
    T = seq.shape[1]
    q = torch.arange(p + 1, T)  # queries from the second copy on; key q - p + 1 holds the next byte
    score = torch.stack([a[:, :, q, q - p + 1].mean((0, 2)) for a in attn])  # (layers, heads)
    assert score.max() > 0.3, score
    layer, head = divmod(int(score.argmax()), score.shape[1])
    scale = torch.ones_like(score)
    scale[layer, head] = 0.0
    assert later_bits(head_scale=scale)[1] > later + 1.0  # that head does the copying

    data, _ = _held_out_slice(4 * 256)
    x = torch.from_numpy(data.astype(np.int64)).view(4, 256)
    with torch.no_grad():
        plain = F.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()).item()
        ablated = F.cross_entropy(model(x, head_scale=scale)[:, :-1].flatten(0, 1), x[:, 1:].flatten()).item()
    assert ablated - plain < 0.1 * math.log(2)  # ordinary code: under 0.1 bits per byte


# --------------------------------------------------------------------------- packaging

def test_weights_ship_as_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["attnkit.pretrained"]
    shipped = [p.relative_to(ROOT / "attnkit" / "pretrained") for p in pretrained.WEIGHTS_DIR.iterdir()
               if p.is_file() and not p.name.endswith(".ckpt")]
    assert {p.name for p in shipped} >= {"stdlib_byte_lm.pt", "stdlib_byte_lm.json", "stdlib_byte_lm.loss.json"}
    for f in shipped:
        assert any(f.match(p) for p in patterns), f
    assert "attnkit*" in data["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(d.split()[0].lower().startswith("torch") for d in data["project"]["dependencies"])
