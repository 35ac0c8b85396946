"""Checkers for notebook 07 (not in the contract's ``CHECKS``): the decoder block and the
induction score."""

from __future__ import annotations

import torch

from .. import induction
from .. import model as model_module
from .._remote import there
from ._harness import Ban, Checker, gen


def _weights(g, B, H, N):
    return torch.softmax(torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
                         .masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf")), -1).float()


def _diagonal_mean(w, first_query, stop, key_offset):
    i = torch.arange(first_query, stop)
    return w[:, :, i, i + key_offset].mean((0, 2))


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
            start = ("queries before i = period + 1 have no earlier copy of their token (position 0 is BOS): "
                     "start at i = period + 1")
            future = ("you read weights above the diagonal (future keys, zero under a causal mask): the weights are "
                      "[batch, head, query i, key j] and the induction key j = i - period + 1 comes before i")
            c.expect(label, got, induction.induction_score(wd, period), what="scores", tol=dict(rtol=1e-5, atol=1e-6), wrong=[
                (wd[:, :, i, i - period].mean((0, 2)), "off by one: the induction head looks at the token AFTER the "
                 "previous occurrence, key i - period + 1, not the previous occurrence itself (i - period)"),
                (wd[:, :, i, i - 1].mean((0, 2)), "that is the previous-token score (key i - 1); the induction target "
                 "is key i - period + 1"),
                (induction.previous_token_score(wd), "that is the previous-token score (key i - 1); the induction target "
                 "is key i - period + 1"),
                (_diagonal_mean(wd, period, N, 1 - period),
                 "query i = period has no earlier copy of its token (position 0 is BOS): start at i = period + 1"),
                (_diagonal_mean(wd, period - 1, N, 1 - period), f"you averaged the whole diagonal; {start}"),
                (_diagonal_mean(wd, period + 1, N - 1, 1 - period), "include the last query, i = N - 1: the queries "
                 "run from period + 1 to N - 1 inclusive, torch.arange(period + 1, N)"),
                (torch.zeros(H, dtype=torch.float64), future),
                (wd[:, :, i, i - period + 1].mean((1, 2)), "average over the batch and the queries, keeping one score "
                 "per head: the result has shape (H,)"),
                (wd[:, :, i, i - period + 1].mean(2), "average over the batch too: one score per head, shape (H,)"),
                (wd[:, :, i, i - period + 1].sum((0, 2)), "take the mean over the batch and the queries, not the sum"),
            ])
    return c.passed("several periods, batch sizes and head counts")


# ---------------------------------------------------------------------------- the decoder block

_PARTS = ("ln1", "attn", "ln2", "mlp")
_BUILD = ("build it from nn.LayerNorm(cfg.d_model), attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, "
          "cfg.n_kv_heads, rope=cfg.positions == \"rope\") and attnkit.MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)")


def _layout(block) -> dict:
    """Runs where the block lives (the learner's kernel under the grader): its parts, its
    parameters and its state (parameters and persistent buffers) as names and shapes."""
    return {"parts": [name for name in _PARTS if hasattr(block, name)],
            "parameters": {name: list(p.shape) for name, p in block.named_parameters()},
            "state": {name: list(t.shape) for name, t in block.state_dict().items()}}


def _load(block, state: dict) -> None:
    """Runs where the block lives: the reference weights in, float64, eval mode (no dropout)."""
    block.double()  # first: loading float64 weights into float32 parameters would round them
    block.load_state_dict(state, strict=False)  # extra buffers (a causal mask, a RoPE table) stay the learner's
    block.eval()


def _advice(key: str) -> str:
    if key.startswith("mlp."):
        return "the MLP is attnkit.MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model): cfg.d_mlp sets its hidden width"
    if key.startswith(("attn.k_proj", "attn.v_proj")):
        return ("keys and values have cfg.n_kv_heads heads: pass cfg.n_kv_heads to "
                "attnkit.MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, ...)")
    if key.startswith(("ln1", "ln2")):
        return "ln1 and ln2 are nn.LayerNorm(cfg.d_model), each with a weight and a bias (RMSNorm has no bias)"
    return _BUILD


def _fit(layout: dict, reference: dict) -> str | None:
    """Why the reference weights do not load into the learner's block (None when they do)."""
    state = layout.get("state") if isinstance(layout, dict) else None
    params = layout.get("parameters") if isinstance(layout, dict) else None
    if not isinstance(state, dict) or not isinstance(params, dict):
        return "the grader could not read your block's parameters"
    for key, shape in reference.items():
        if key not in state:
            return f"the reference weights do not fit your block: it has no {key}; {_advice(key)}"
        if list(state[key]) != list(shape):
            return (f"the reference weights do not fit your block: {key} is {tuple(shape)} in the reference block "
                    f"but {tuple(state[key])} in yours; {_advice(key)}")
    extra = sorted(name for name in params if name not in reference)
    if extra:
        return (f"your block has parameters the reference block does not: {', '.join(extra[:4])}; {_BUILD}, "
                "nothing else with weights")
    return None


def _randomised_reference(cfg, g) -> model_module.Block:
    """attnkit.Block in float64 with LayerNorms that are not the identity: at their init (weight 1,
    bias 0) ln1 and ln2 are the same function, and mixing them up could not be seen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = model_module.Block(cfg).double()
    with torch.no_grad():
        for ln in (reference.ln1, reference.ln2):
            ln.weight.copy_(1 + 0.5 * torch.randn(ln.weight.shape, generator=g, dtype=torch.float64))
            ln.bias.copy_(0.5 * torch.randn(ln.bias.shape, generator=g, dtype=torch.float64))
    return reference


def _wirings(reference, cfg, x) -> list[tuple[torch.Tensor, str]]:
    """The usual wrong wirings of the reference's own parts, each with its hint."""
    ln1, ln2, mlp = reference.ln1, reference.ln2, reference.mlp

    def attn(h, causal=True, rope=None):
        saved = reference.attn.rope
        reference.attn.rope = saved if rope is None else rope
        try:
            return reference.attn(h, is_causal=causal)
        finally:
            reference.attn.rope = saved

    def pre_norm(norm_a=ln1, norm_b=ln2, **kw):
        h = x + attn(norm_a(x), **kw)
        return h + mlp(norm_b(h))

    with torch.no_grad():
        post = ln1(x + attn(x))
        post = ln2(post + mlp(post))
        h = x + attn(ln1(x))
        no_mlp_residual = mlp(ln2(h))
        a = attn(ln1(x))
        no_attn_residual = a + mlp(ln2(a))
        n = ln1(x)
        normalised = n + attn(n)
        normalised = normalised + mlp(ln2(normalised))
        wirings = [
            (post, "this is a post-norm block (LayerNorm after the residual add); the course's block is pre-norm: "
                   "x = x + attn(ln1(x)), then x = x + mlp(ln2(x))"),
            (pre_norm(causal=False), "the attention is not causal: pass is_causal=True so a token cannot see the "
                                     "future"),
            (mlp(ln2(attn(ln1(x)))), "the residual connections are missing: add each sublayer's output to x"),
            (no_mlp_residual, "the residual connection around the MLP is missing: return x + mlp(ln2(x)), not "
                              "mlp(ln2(x))"),
            (no_attn_residual, "the residual connection around the attention is missing: x = x + attn(ln1(x)), "
                               "not attn(ln1(x))"),
            (pre_norm(ln1, ln1), "both sublayers use ln1: the MLP reads ln2(x)"),
            (pre_norm(ln2, ln1), "ln1 and ln2 are swapped: the attention reads ln1(x), the MLP ln2(x)"),
            (pre_norm(lambda t: t, ln2), "the attention reads ln1(x), not x: normalise before each sublayer "
                                         "(pre-norm), x = x + attn(ln1(x))"),
            (pre_norm(ln1, lambda t: t), "the MLP reads ln2(x), not x: normalise before each sublayer (pre-norm), "
                                         "x = x + mlp(ln2(x))"),
            (x + attn(ln1(x)) + mlp(ln2(x)), "the sublayers run in parallel (x + attn(ln1(x)) + mlp(ln2(x))): the "
             "MLP reads the stream after the attention update, x = x + attn(ln1(x)) first, then x + mlp(ln2(x))"),
            (normalised, "the residual stream itself was normalised: add each sublayer's output to x itself, not "
                         "to ln1(x): x = x + attn(ln1(x))"),
        ]
        if cfg.positions == "rope":
            wirings.append((pre_norm(rope=False), "RoPE is missing: with cfg.positions == \"rope\" the attention "
                            "rotates queries and keys, attnkit.MultiHeadAttention(..., rope=True)"))
        elif (cfg.d_model // cfg.n_heads) % 2 == 0:
            wirings.append((pre_norm(rope=True), "RoPE was applied although cfg.positions is "
                            f"\"{cfg.positions}\": rope=cfg.positions == \"rope\""))
    return wirings


def check_decoder_block(block_class) -> str:
    """Check a pre-norm decoder block class built from attnkit parts against ``attnkit.Block``:
    ``block_class(cfg)`` must have submodules ``ln1``, ``attn``, ``ln2``, ``mlp`` and compute
    ``x + attn(ln1(x))`` (causal) then ``+ mlp(ln2(.))``. The reference's weights (LayerNorms
    randomised) are loaded into the learner's block; buffers of its own (a causal mask) may stay."""
    c = Checker("decoder_block", lambda cfg, inputs: _run_block(block_class, cfg, inputs),
                Ban(python=(model_module.Block.forward,),
                    hint="Write forward yourself: two residual additions around the sublayers."))
    g = gen(71)
    cases = [(32, 4, None, 7, "learned", None), (24, 3, 1, 5, "rope", None), (16, 2, 2, 9, "none", 40),
             (32, 4, 2, 6, "rope", 48)]
    for d_model, n_heads, n_kv, N, positions, d_mlp in cases:
        cfg = model_module.DecoderConfig(vocab_size=11, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                                         positions=positions, max_len=16, d_mlp=d_mlp)
        reference = _randomised_reference(cfg, g)
        x = torch.randn(2, N, d_model, generator=g, dtype=torch.float64)
        label = (f"d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv}, N={N}, positions={positions}"
                 + (f", d_mlp={d_mlp}" if d_mlp else ""))
        with c.case(label):
            state = {name: t.detach().clone() for name, t in reference.state_dict().items()}
            got = c.call(label, cfg, (x, state))
            with torch.no_grad():
                want = reference(x)
            c.expect(label, got, want, what="block output", tol=dict(rtol=1e-6, atol=1e-8),
                     wrong=_wirings(reference, cfg, x))
    return c.passed("MHA, GQA and MQA blocks, with and without RoPE, cfg.d_mlp, LayerNorms not at their init")


def _run_block(block_class, cfg, inputs):
    x, state = inputs
    block = block_class(cfg)
    layout = there(block, _layout)
    parts = layout.get("parts") if isinstance(layout, dict) else None
    missing = [name for name in _PARTS if not isinstance(parts, list) or name not in parts]
    if missing:
        raise AssertionError(f"decoder_block: your block has no {', '.join(missing)}: name the parts ln1, attn, ln2 "
                             "and mlp so the reference weights can be loaded into them")
    problem = _fit(layout, {name: list(t.shape) for name, t in state.items()})
    if problem:
        raise AssertionError(f"decoder_block: {problem}")
    there(block, _load, state)
    return block(x)


NOTEBOOK_CHECKS = {"induction_score": check_induction_score, "decoder_block": check_decoder_block}
