"""Toy data, training, induction scores, streaming caches and KV memory arithmetic. (The notebook-07
checkers and their known-wrong implementations are in tests/library_models.py.)"""

import pytest
import torch

import attnkit
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
