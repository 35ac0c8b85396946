"""Toy data, training, induction scores, streaming caches, KV memory arithmetic, and the
notebook-07 checkers with their known-wrong implementations."""

import pytest
import torch
from torch import nn

import attnkit
from attnkit.checks import check_decoder_block, check_induction_score
from attnkit.data import predictable, repeated_sequences
from attnkit.streaming import streaming_loss
from attnkit.train import next_token_loss, tiny_model, train


def test_repeated_sequences_repeat_with_their_period():
    g = torch.Generator().manual_seed(0)
    tokens, periods = repeated_sequences(8, 40, 20, period=(3, 9), generator=g)
    assert tokens.shape == (8, 40) and (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    for row, p in zip(tokens, periods.tolist()):
        body = row[1:]
        assert torch.equal(body[p:], body[:-p])
    mask = predictable(periods, 40)
    assert mask.shape == (8, 39) and mask.sum(1).tolist() == [39 - p for p in periods.tolist()]
    with pytest.raises(ValueError, match="vocab"):
        repeated_sequences(1, 5, 2)


def test_training_learns_to_copy_within_a_small_budget():
    model = tiny_model(d_model=32, n_layers=2, max_len=33)
    losses = train(model, steps=200, batch=16, period=(4, 8), lr=1e-2, progress=False)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses[::20]


def _induction_weights(N, period, H=2):
    """Head 0 is a perfect induction head, head 1 a perfect previous-token head."""
    w = torch.zeros(1, H, N, N)
    for i in range(N):
        w[0, 0, i, i - period + 1 if i > period else i] = 1.0
        w[0, 1, i, max(i - 1, 0)] = 1.0
    return w


def test_induction_and_previous_token_scores():
    w = _induction_weights(21, 5)
    torch.testing.assert_close(attnkit.induction_score(w, 5), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(attnkit.previous_token_score(w), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="no repeat"):
        attnkit.induction_score(w, 20)


def test_streaming_with_full_window_equals_plain_decoding():
    model = tiny_model(d_model=32, max_len=24)
    tokens, _ = repeated_sequences(2, 24, 32, period=5, generator=torch.Generator().manual_seed(1))
    full = streaming_loss(model, tokens, window=None)
    with torch.no_grad():
        plain = next_token_loss(model, tokens, reduction="none")
    torch.testing.assert_close(full, plain, rtol=1e-4, atol=1e-4)
    windowed = streaming_loss(model, tokens, window=30, sinks=2)  # never evicts
    torch.testing.assert_close(windowed, plain, rtol=1e-4, atol=1e-4)
    evicted = streaming_loss(model, tokens, window=6, sinks=0)
    assert not torch.allclose(evicted, plain, atol=1e-4)
    with pytest.raises(ValueError, match="sinks"):
        streaming_loss(model, tokens, window=4, sinks=4)


def test_kv_cache_bytes_matches_allocated_memory():
    cache = attnkit.KVCache(2, 3, 50, 8, dtype=torch.float16)
    allocated = cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
    assert attnkit.kv_cache_bytes(1, 3, 8, 50, batch=2, bytes_per_value=2) == allocated == cache.nbytes
    # Llama-2-7B: 32 layers, 32 kv heads of 128, 4096 tokens, fp16 -> 2 GiB per sequence
    assert attnkit.kv_cache_bytes(32, 32, 128, 4096) == 2 * 2**30


# ---- notebook-07 checkers: accepted and rejected implementations

def _ind_ok(w, period):
    N = w.shape[-1]
    return torch.stack([torch.stack([w[:, h, i, i - period + 1] for i in range(period + 1, N)], 1).mean()
                        for h in range(w.shape[1])])


class _Block(nn.Module):
    def __init__(self, cfg, post_norm=False, causal=True, residual=True):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, rope=cfg.positions == "rope")
        self.mlp = attnkit.MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)
        self.post_norm, self.causal, self.residual = post_norm, causal, residual

    def forward(self, x):
        if self.post_norm:
            x = self.ln1(x + self.attn(x, is_causal=True))
            return self.ln2(x + self.mlp(x))
        a = self.attn(self.ln1(x), is_causal=self.causal)
        x = x + a if self.residual else a
        m = self.mlp(self.ln2(x))
        return x + m if self.residual else m


def test_notebook_checkers_accept_correct_code(capsys):
    check_induction_score(_ind_ok)
    check_decoder_block(_Block)
    assert capsys.readouterr().out.count("passed") == 2


@pytest.mark.parametrize("fn,words", [
    (lambda w, p: w[:, :, torch.arange(p + 1, w.shape[-1]), torch.arange(p + 1, w.shape[-1]) - p].mean((0, 2)),
     "off by one"),
    (lambda w, p: w[:, :, torch.arange(1, w.shape[-1]), torch.arange(0, w.shape[-1] - 1)].mean((0, 2)), "previous-token"),
    (lambda w, p: w[:, :, torch.arange(p + 1, w.shape[-1]), torch.arange(2, w.shape[-1] - p + 1)].mean((1, 2)), "shape (H,)"),
    (attnkit.induction_score, "calls"),
])
def test_induction_checker_rejects(fn, words):
    with pytest.raises(AssertionError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_induction_score(fn)


@pytest.mark.parametrize("kwargs,words", [
    (dict(post_norm=True), "post-norm"), (dict(causal=False), "not causal"), (dict(residual=False), "residual"),
])
def test_block_checker_rejects(kwargs, words):
    with pytest.raises(AssertionError, match=words):
        check_decoder_block(lambda cfg: _Block(cfg, **kwargs))


def test_block_checker_rejects_the_reference_and_misnamed_parts():
    with pytest.raises(AssertionError, match="calls"):
        check_decoder_block(attnkit.Block)

    class Renamed(_Block):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.norm1 = self.ln1
            del self.ln1

    with pytest.raises(AssertionError, match="no ln1"):
        check_decoder_block(Renamed)
