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


# ---------------------------------------------------------------- notebook 07: the model and loop a learner builds


def test_distinct_segments_make_the_one_token_lookup_exact():
    g = torch.Generator().manual_seed(0)
    tokens, periods = repeated_sequences(500, 40, 32, period=(4, 16), generator=g, distinct=True)
    for row, p in zip(tokens, periods.tolist()):
        body = row[1:]
        assert len(set(body[:p].tolist())) == p  # no token twice in a segment
        assert torch.equal(body[p:], body[:-p])
    with pytest.raises(ValueError, match="distinct"):
        repeated_sequences(1, 20, 8, period=10, distinct=True)


def test_segments_drawn_with_replacement_repeat_tokens_as_the_birthday_problem_says():
    """attnkit/data.py's docstring: 99% of 16-token segments over 31 ids repeat a token."""
    import math
    tokens, _ = repeated_sequences(4000, 17, 32, period=16, generator=torch.Generator().manual_seed(3))
    repeated = sum(len(set(row[1:].tolist())) < 16 for row in tokens) / len(tokens)
    assert abs(repeated - (1 - math.prod(1 - i / 31 for i in range(16)))) < 0.01
    assert repeated > 0.98


def test_gpt_equals_tiny_decoder_with_the_same_weights():
    """attnkit.GPT (notebook 07's model) against TinyDecoder, built on MultiHeadAttention, the same names."""
    for positions in ("rope", "learned"):
        cfg = attnkit.DecoderConfig(vocab_size=11, d_model=24, n_heads=3 if positions == "learned" else 2,
                                    n_layers=2, max_len=16, positions=positions, d_mlp=40)
        torch.manual_seed(0)
        tiny = attnkit.TinyDecoder(cfg).double()
        gpt = attnkit.GPT(cfg).double()
        gpt.load_state_dict(tiny.state_dict())
        tokens = torch.randint(0, 11, (3, 13), generator=torch.Generator().manual_seed(1))
        logits, weights = gpt(tokens, return_weights=True)
        want, want_weights = tiny(tokens, return_weights=True)
        torch.testing.assert_close(logits, want)
        for w, ref in zip(weights, want_weights):
            torch.testing.assert_close(w, ref)


def test_causal_self_attention_properties():
    cfg = attnkit.DecoderConfig(vocab_size=5, d_model=32, n_heads=4, positions="rope")
    torch.manual_seed(0)
    attn = attnkit.CausalSelfAttention(cfg)
    assert sum(p.numel() for p in attn.parameters()) == 4 * 32 * 32
    x = torch.randn(2, 9, 32)
    out, w = attn(x, return_weights=True)
    assert out.shape == (2, 9, 32) and w.shape == (2, 4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))
    assert (w.triu(1) == 0).all()
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 4, 32)
    torch.testing.assert_close(attn(x2)[:, :5], out[:, :5])  # a later token never changes an earlier output
    block = attnkit.DecoderBlock(cfg)
    assert sum(p.numel() for p in block.parameters()) == 4 * 32 + 4 * 32 * 32 + 2 * 32 * 128 + 128 + 32
    with pytest.raises(ValueError, match="n_kv_heads"):
        attnkit.CausalSelfAttention(attnkit.DecoderConfig(vocab_size=5, d_model=32, n_heads=4, n_kv_heads=2))


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    from attnkit.train import lr_at
    lrs = [lr_at(t, lr=1.0, warmup=10, steps=100) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # falling
    assert 0.1 < lrs[-1] < 0.101 and lr_at(100, lr=1.0, warmup=10, steps=100) == pytest.approx(0.1)
    assert lr_at(0, lr=2.0, warmup=0, steps=5) == pytest.approx(2.0)


def test_train_model_clips_evaluates_without_training_and_learns():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from attnkit.train import evaluate, train_model
    cfg = attnkit.DecoderConfig(vocab_size=8, d_model=32, n_heads=2, n_layers=2, max_len=24, positions="rope")
    torch.manual_seed(0)
    model = attnkit.GPT(cfg)
    g = torch.Generator().manual_seed(0)
    batches = repeated_sequences(120 * 16, 24, 8, period=(2, 5), generator=g, distinct=True)[0].view(120, 16, 24)
    held = repeated_sequences(64, 24, 8, period=(2, 5), generator=g, distinct=True)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert evaluate(model, held) > 0 and model.training  # the mode is restored ...
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ... and nothing moved
    norms, rates = [], []

    def record(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads])).item())
        rates.append(opt.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(record)
    try:
        history = train_model(model, batches, held, steps=120, lr=1e-2, warmup=10, clip=0.5, eval_every=50)
    finally:
        handle.remove()
    assert len(norms) == 120 and max(norms) <= 0.5 + 1e-4  # every update saw a clipped gradient
    assert rates == pytest.approx(history["lr"]) and rates[0] == pytest.approx(1e-3)  # the warm-up's first rate
    assert [s for s, _ in history["eval_loss"]] == [0, 50, 100, 120] and model.training
    first, last = history["eval_loss"][0][1], history["eval_loss"][-1][1]
    assert last < 0.6 * first, history["eval_loss"]
    with pytest.raises(ValueError, match="ran out"):
        train_model(model, batches[:3], held, steps=5)
