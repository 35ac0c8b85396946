"""Checkers for notebook 07 (not in the contract's ``CHECKS``): the decoder block and the
induction score."""

from __future__ import annotations

import torch

from .. import induction
from .. import model as model_module
from ._harness import Ban, Checker, gen


def _weights(g, B, H, N):
    return torch.softmax(torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
                         .masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf")), -1).float()


def check_induction_score(fn) -> str:
    """Check ``fn(weights (B, H, N, N), period) -> (H,)``: mean weight on key ``i - period + 1``."""
    c = Checker("induction_score", fn, Ban(python=(induction.induction_score,),
                                           hint="Index the diagonal yourself with torch.arange."))
    g = gen(70)
    for B, H, N, period in [(2, 4, 33, 16), (3, 2, 21, 5), (1, 3, 10, 4), (2, 1, 40, 13)]:
        w = _weights(g, B, H, N)
        label = f"weights {tuple(w.shape)}, period={period}"
        with c.case(label):
            got = c.call(label, w, period)
            i = torch.arange(period + 1, N)
            wd = w.double()
            c.expect(label, got, induction.induction_score(wd, period), what="scores", tol=dict(rtol=1e-5, atol=1e-6), wrong=[
                (wd[:, :, i, i - period].mean((0, 2)), "off by one: the induction head looks at the token AFTER the "
                 "previous occurrence, key i - period + 1, not the previous occurrence itself (i - period)"),
                (wd[:, :, i, i - 1].mean((0, 2)), "that is the previous-token score (key i - 1); the induction target "
                 "is key i - period + 1"),
                (induction.previous_token_score(wd), "that is the previous-token score (key i - 1); the induction target "
                 "is key i - period + 1"),
                (wd[:, :, torch.arange(period, N), torch.arange(period, N) - period + 1].mean((0, 2)),
                 "query i = period has no earlier copy of its token (position 0 is BOS): start at i = period + 1"),
                (wd[:, :, i, i - period + 1].mean((1, 2)), "average over the batch and the queries, keeping one score "
                 "per head: the result has shape (H,)"),
            ])
    return c.passed("several periods, batch sizes and head counts")


def check_decoder_block(block_class) -> str:
    """Check a pre-norm decoder block class built from attnkit parts against ``attnkit.Block``:
    ``block_class(cfg)`` must have submodules ``ln1``, ``attn``, ``ln2``, ``mlp`` and compute
    ``x + attn(ln1(x))`` (causal) then ``+ mlp(ln2(.))``."""
    c = Checker("decoder_block", lambda cfg, x: _run_block(block_class, cfg, x),
                Ban(python=(model_module.Block.forward,),
                    hint="Write forward yourself: two residual additions around the sublayers."))
    g = gen(71)
    for d_model, n_heads, n_kv, N, positions in [(32, 4, None, 7, "learned"), (24, 3, 1, 5, "rope"), (16, 2, 2, 9, "none")]:
        cfg = model_module.DecoderConfig(vocab_size=11, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                                         positions=positions, max_len=16)
        torch.manual_seed(7)
        reference = model_module.Block(cfg).double()
        x = torch.randn(2, N, d_model, generator=g, dtype=torch.float64)
        label = f"d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv}, N={N}, positions={positions}"
        with c.case(label):
            got = c.call(label, cfg, (x, reference))
            ln1, ln2 = reference.ln1, reference.ln2
            with torch.no_grad():
                attn = lambda h, causal=True: reference.attn(h, is_causal=causal)
                want = reference(x)
                post = ln1(x + attn(x))
                post = ln2(post + reference.mlp(post))
                no_causal = x + attn(ln1(x), causal=False)
                no_causal = no_causal + reference.mlp(ln2(no_causal))
                no_residual = reference.mlp(ln2(attn(ln1(x))))
                shared_norm = x + attn(ln1(x))
                shared_norm = shared_norm + reference.mlp(ln1(shared_norm))
            c.expect(label, got, want, what="block output", tol=dict(rtol=1e-6, atol=1e-8), wrong=[
                (post, "this is a post-norm block (LayerNorm after the residual add); the course's block is pre-norm: "
                       "x = x + attn(ln1(x)), then x = x + mlp(ln2(x))"),
                (no_causal, "the attention is not causal: pass is_causal=True so a token cannot see the future"),
                (no_residual, "the residual connections are missing: add each sublayer's output to x"),
                (shared_norm, "both sublayers use ln1: the MLP reads ln2(x)"),
            ])
    return c.passed("MHA, GQA and MQA blocks, with and without RoPE")


def _run_block(block_class, cfg, inputs):
    x, reference = inputs
    block = block_class(cfg)
    missing = [name for name in ("ln1", "attn", "ln2", "mlp") if not hasattr(block, name)]
    if missing:
        raise AssertionError(f"decoder_block: your block has no {', '.join(missing)}: name the parts ln1, attn, ln2 "
                             "and mlp so the reference weights can be loaded into them")
    try:
        block.load_state_dict(reference.state_dict())
    except RuntimeError as e:
        raise AssertionError("decoder_block: the reference weights do not fit your block; build it from "
                             "attnkit.MultiHeadAttention(d_model, n_heads, n_kv_heads, rope=...), "
                             f"attnkit.MLP and nn.LayerNorm ({str(e).splitlines()[0]})") from None
    return block.double()(x)


NOTEBOOK_CHECKS = {"induction_score": check_induction_score, "decoder_block": check_decoder_block}
