"""Checkers for notebook 07's modules and its induction score (not in the contract's ``CHECKS``:
the exercises are classes): causal self-attention, the decoder block, ``induction_score``.
(The training loop's checker is in :mod:`attnkit.checks.training`.)

The module checks test behaviour on the learner's own initialisation (shapes, parameter counts,
causality: changing a later token never changes an earlier output), then load the reference's
weights into the learner's module through the names the notebook's specification gives
(``q_proj`` ... ``out_proj``; ``ln1``, ``attn``, ``ln2``, ``mlp``) and compare values in float64,
naming the usual slips when the output matches one of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import gpt, heads, induction, mha
from .. import model as model_module
from .._remote import there
from ..rope import apply_rope
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


# ---------------------------------------------------------------------------- shared by the two module checks

_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")
_NAMES = ("name the projections q_proj, k_proj, v_proj and out_proj (each nn.Linear(D, D, bias=False)), or use one "
          "fused qkv_proj (nn.Linear(D, 3 * D, bias=False), rows q, k, v) and out_proj: the checker loads its weights "
          "through these names")


def _describe(module) -> dict:
    """Runs where the module lives (the learner's kernel under the grader): its children and
    parameters as names and shapes."""
    return {"children": [name for name, _ in module.named_children()],
            "parameters": {name: list(p.shape) for name, p in module.named_parameters()}}


def _load_params(module, values: dict) -> None:
    """Runs where the module lives: float64 first (float64 weights copied into float32 parameters
    would be rounded), the given parameters copied in by name, eval mode (no dropout)."""
    module.double()
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)
    module.eval()


def _count(params: dict, prefix: str = "") -> int:
    return sum(math.prod(shape) for name, shape in params.items() if name.startswith(prefix))


def _attention_weights(params: dict, prefix: str, reference, D: int) -> dict | str:
    """``{learner's parameter name: reference tensor}`` for an attention whose parameters are
    ``params`` (under ``prefix``), or a sentence saying why they cannot be matched."""
    ref = {name: getattr(reference, name).weight.detach().clone() for name in _PROJ}
    if all(params.get(f"{prefix}{name}.weight") == [D, D] for name in _PROJ):
        return {f"{prefix}{name}.weight": ref[name] for name in _PROJ}
    if params.get(f"{prefix}qkv_proj.weight") == [3 * D, D] and params.get(f"{prefix}out_proj.weight") == [D, D]:
        return {f"{prefix}qkv_proj.weight": torch.cat([ref["q_proj"], ref["k_proj"], ref["v_proj"]]),
                f"{prefix}out_proj.weight": ref["out_proj"]}
    found = ", ".join(f"{name[len(prefix):]} {tuple(shape)}" for name, shape in params.items()
                      if name.startswith(prefix)) or "nothing"
    return f"{_NAMES} (found: {found})"


def _attend(ref, x, *, causal=True, strict=False, zero_after=False, scale=None, softmax_dim=-1, split=True,
            merge=True, rope=None, rope_q=True, rope_k=True, rope_v=False, pairing="interleaved", rope_width=False):
    """Causal self-attention with the weights of ``ref`` (an attnkit.CausalSelfAttention), written
    out so that each usual slip can be switched on; returns ``(out (B, N, D), weights (B, H, N, N), scores)``
    (the scaled scores, masked with -inf unless ``zero_after``)."""
    B, N, D = x.shape
    H = ref.n_heads
    d = D // H
    rope = ref.rope if rope is None else rope
    positions = torch.arange(N)

    def heads(t):  # (B, N, D) -> (B, H, N, d)
        return t.view(B, N, H, d).transpose(1, 2) if split else t.reshape(B, H, N, d)

    qf, kf, vf = ref.q_proj(x), ref.k_proj(x), ref.v_proj(x)  # (B, N, D) each
    if rope and rope_width:  # rotated across the whole width D, before the heads are split
        qf, kf = apply_rope(qf, positions), apply_rope(kf, positions)
    q, k, v = heads(qf), heads(kf), heads(vf)  # (B, H, N, d)
    if rope and not rope_width:
        q = apply_rope(q, positions, pairing=pairing) if rope_q else q
        k = apply_rope(k, positions, pairing=pairing) if rope_k else k
        v = apply_rope(v, positions, pairing=pairing) if rope_v else v
    scores = q @ k.transpose(-2, -1) * (d ** -0.5 if scale is None else scale)  # (B, H, N, N)
    allowed = torch.ones(N, N, dtype=torch.bool).tril(-1 if strict else 0)
    if causal and not zero_after:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=softmax_dim)
    if causal and zero_after:
        weights = weights * allowed
    out = weights @ v  # (B, H, N, d)
    merged = out.transpose(1, 2).reshape(B, N, D) if merge else out.reshape(B, N, D)
    return ref.out_proj(merged), weights, scores


_NOT_CAUSAL = ("the attention is not causal: token i may only attend to tokens 0 .. i (mask the scores of later keys "
               "with -inf before the softmax, e.g. with attnkit.causal_mask(N, N))")


def _attention_slips(ref, x, cfg) -> list[tuple[str, dict, str]]:
    """The usual wrong attentions: (what, keywords of _attend, hint)."""
    D, H = cfg.d_model, cfg.n_heads
    d = D // H
    rope = cfg.positions == "rope"
    slips = [
        ("no scale", dict(scale=1.0), "the scores are not scaled: multiply q k^T by 1/sqrt(d), d = D / H the head "
                                      "dimension"),
        ("1/d", dict(scale=1.0 / d), "the scale is 1/sqrt(d), not 1/d"),
        ("not causal", dict(causal=False), _NOT_CAUSAL),
        ("strict", dict(strict=True), "the mask hides the diagonal too: token i attends to itself as well, keys "
                                      "j <= i (torch.tril keeps the diagonal; triu(diagonal=1) marks what to hide)"),
        ("zeroed after softmax", dict(zero_after=True), "the future weights were zeroed after the softmax, so the rows "
         "no longer sum to 1: set the scores of later keys to -inf before the softmax"),
        ("query axis", dict(softmax_dim=-2), "softmax over the query axis: normalise each query's row over the keys, "
                                             "softmax(dim=-1)"),
    ]
    if H > 1:
        slips += [
            ("1/sqrt(D)", dict(scale=D ** -0.5), "the scale uses the model width D: use the head dimension, "
                                                  "1/sqrt(d) with d = D / H"),
            ("split", dict(split=False), "the heads were cut with a reshape straight to (B, H, N, d), which mixes "
             "positions and heads: view as (B, N, H, d), then transpose(1, 2)"),
            ("merge", dict(merge=False), "the heads were merged with a reshape straight from (B, H, N, d) to "
             "(B, N, D), "
             "which mixes positions and heads: transpose(1, 2) back to (B, N, H, d) first"),
        ]
    if rope:
        slips += [
            ("no rope", dict(rope=False), "RoPE is missing: with cfg.positions == \"rope\" rotate the queries and keys "
                                          "(attnkit.apply_rope(q, torch.arange(N)), the same for k)"),
            ("rope on v", dict(rope_v=True), "RoPE rotates the queries and keys only, not the values"),
            ("rope on q only", dict(rope_k=False), "rotate the keys too: RoPE turns q and k so that their dot product "
                                                   "depends on the distance between their positions"),
            ("rope on k only", dict(rope_q=False), "rotate the queries too: RoPE turns q and k so that their dot "
                                                   "product depends on the distance between their positions"),
            ("half pairs", dict(pairing="half"), "RoPE here pairs neighbouring features (x[2i], x[2i+1]), "
             "attnkit.apply_rope's default; you rotated halves (x[i], x[i + d/2])"),
        ]
        if H > 1:
            slips.append(("rope on D", dict(rope_width=True), "RoPE is applied per head, on (B, H, N, d) with "
                          "frequencies over the head dimension d, not on the (B, N, D) projections"))
    elif d % 2 == 0:
        slips.append(("rope anyway", dict(rope=True), f"RoPE was applied although cfg.positions is "
                      f"\"{cfg.positions}\": rotate only when cfg.positions == \"rope\""))
    return slips


# ---------------------------------------------------------------------------- causal self-attention


def _reference_attention(cfg, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return gpt.CausalSelfAttention(cfg).double().eval()


def _fail(name: str, label: str, message: str):
    raise AssertionError(f"{name}: {message}\n  failing case: {label}")


def _eval_mode(module) -> None:
    """Runs where the module lives: eval mode, so that dropout cannot make two calls differ."""
    module.eval()


def _run_attention(attn_class, cfg, inputs) -> dict:
    """Build the learner's attention and run it: on its own initialisation (in eval mode), then,
    when its projections can be found, with the reference's weights. Checks nothing itself, so
    that a banned shortcut is named before anything else."""
    x, x_changed, x64, reference = inputs
    module = attn_class(cfg)
    params = (there(module, _describe) or {}).get("parameters") or {}
    there(module, _eval_mode)
    run = {"params": params, "own": module(x), "own_changed": module(x_changed)}  # float32, the learner's init
    values = _attention_weights(params, "", reference, cfg.d_model) if _count(params) == 4 * cfg.d_model ** 2 else None
    if isinstance(values, dict):
        there(module, _load_params, values)
        run["out"] = module(x64)
        try:
            run["pair"] = module(x64, return_weights=True)
        except TypeError as e:
            run["pair_error"] = f"{type(e).__name__}: {e}"
    return run


def _attention_layout_problem(params: dict, D: int, reference) -> str | None:
    count = _count(params)
    if count != 4 * D * D:
        if count == 4 * D * D + 4 * D:
            return "your projections have biases: the spec's four projections are nn.Linear(D, D, bias=False), " \
                   "4 D^2 parameters in all"
        if count in (3 * D * D, 3 * D * D + 3 * D):
            return "the output projection is missing: after merging the heads, out_proj = nn.Linear(D, D, " \
                   "bias=False) mixes them"
        return (f"your module has {count} parameters; with D={D} causal self-attention has 4 D^2 = {4 * D * D}: "
                "four D x D projections without bias, nothing else with weights")
    values = _attention_weights(params, "", reference, D)
    return values if isinstance(values, str) else None


def check_causal_self_attention(attn_class) -> str:
    """Check an ``nn.Module`` class ``attn_class(cfg)``: causal multi-head self-attention,
    ``(B, N, D) -> (B, N, D)``, four projections without bias (``4 D^2`` parameters), RoPE on
    queries and keys when ``cfg.positions == "rope"``, and ``forward(x, return_weights=True)``
    returning ``(out, weights (B, H, N, N))``. Causality is tested on the learner's own
    initialisation; values after loading the reference's weights through the projections' names."""
    c = Checker("causal_self_attention", lambda cfg, inputs: _run_attention(attn_class, cfg, inputs),
                Ban(functions={"torch.nn.functional.multi_head_attention_forward": None},
                    python=(gpt.CausalSelfAttention.forward, mha.MultiHeadAttention.forward,
                            heads.multi_head_attention),
                    hint="Write the projections, the heads and the causal attention yourself (attnkit's functions "
                         "from notebooks 03-06 are welcome: split_heads, apply_rope, causal_mask, ...)."))
    g = gen(72)
    for D, H, positions, B, N in [(16, 2, "rope", 2, 7), (24, 3, "none", 3, 5), (20, 2, "learned", 2, 6),
                                  (32, 4, "rope", 2, 12), (8, 1, "rope", 1, 3)]:
        cfg = model_module.DecoderConfig(vocab_size=11, d_model=D, n_heads=H, positions=positions, max_len=16)
        label = f"D={D}, n_heads={H}, positions={positions}, x ({B}, {N}, {D})"
        with c.case(label):
            reference = _reference_attention(cfg, seed=D + N)
            x = torch.randn(B, N, D, generator=g)
            t = max(1, N // 2)
            x_changed = x.clone()
            x_changed[:, t:] = torch.randn(B, N - t, D, generator=g)  # the later tokens only
            x64 = torch.randn(B, N, D, generator=g, dtype=torch.float64)
            run = c.call(label, cfg, (x, x_changed, x64, reference))
            problem = _attention_layout_problem(run["params"], D, reference)
            if problem:
                c.fail(label, problem)
            own, got = run["own"], run["out"]
            for value in (own, got):
                if not isinstance(value, torch.Tensor):
                    c.fail(label, f"forward(x) must return the output tensor (B, N, D), got {type(value).__name__}")
                if tuple(value.shape) != (B, N, D):
                    c.fail(label, f"wrong shape for the output: got {tuple(value.shape)}, expected {(B, N, D)} "
                                  "(the heads merged back to the model width)")
            with torch.no_grad():
                want, want_w, want_scores = _attend(reference, x64)
                slips = [(hint, _attend(reference, x64, **kw)) for _, kw, hint in _attention_slips(reference, x64, cfg)]
            if not torch.allclose(own[:, :t].double(), run["own_changed"][:, :t].double(), rtol=1e-5, atol=1e-6,
                                  equal_nan=True):
                for hint, (out, _, _) in slips:  # a slip that also breaks causality is named for what it is
                    if got.shape == out.shape and torch.allclose(got.double(), out, rtol=1e-6, atol=1e-9,
                                                                 equal_nan=True):
                        c.fail(label, hint)
                c.fail(label, f"changing tokens {t}.. changed your outputs at earlier positions (your module, as "
                              f"initialised): {_NOT_CAUSAL}")
            c.expect(label, got, want, what="output", tol=dict(rtol=1e-6, atol=1e-9),
                     wrong=[(out, hint) for hint, (out, _, _) in slips])
            pair = run.get("pair")
            if "pair_error" in run or not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                c.fail(label, "forward(x, return_weights=True) must also return the attention weights: a pair "
                              "(out, weights (B, H, N, N))" + (f"; it raised {run['pair_error']}"
                                                                if "pair_error" in run else
                                                                f", got {type(pair).__name__}"))
            c.expect(label, pair[0], want, what="output with return_weights=True", tol=dict(rtol=1e-6, atol=1e-9))
            scores_hint = "return the weights after the softmax (each row sums to 1), not the scores"
            c.expect(label, pair[1], want_w, what="attention weights", tol=dict(rtol=1e-6, atol=1e-9), wrong=[
                (want_w.transpose(-2, -1), "the weights are indexed [batch, head, query, key]: you returned them "
                                           "transposed"),
                (want_w.mean(1), "return one weight matrix per head, (B, H, N, N), not their mean"),
                (want_scores, scores_hint),
                (_attend(reference, x64, causal=False)[2].detach(), scores_hint),
                *[(w, hint) for hint, (_, w, _) in slips]])
    return c.passed("multi-head and single-head, with and without RoPE, causality on your own initialisation")


# ---------------------------------------------------------------------------- the decoder block

_PARTS = ("ln1", "attn", "ln2", "mlp")


def _block_counts(cfg) -> dict:
    D, m = cfg.d_model, cfg.d_mlp or 4 * cfg.d_model
    return {"ln1": 2 * D, "attn": 4 * D * D, "ln2": 2 * D, "mlp": 2 * D * m + m + D}


def _block_layout_problem(cfg, layout) -> str | None:
    """Why the learner's block is not built as the spec says (None when it is)."""
    children = layout.get("children") if isinstance(layout, dict) else None
    params = layout.get("parameters") if isinstance(layout, dict) else None
    if not isinstance(children, list) or not isinstance(params, dict):
        return "the grader could not read your block's parts"
    missing = [name for name in _PARTS if name not in children]
    if missing:
        return (f"your block has no {', '.join(missing)}: name its parts ln1, attn, ln2 and mlp (the model reads "
                "block.ln1 and block.attn to show you the attention weights)")
    extra = sorted(name for name in params if not name.startswith(tuple(f"{p}." for p in _PARTS)))
    if extra:
        return (f"your block has parameters outside ln1, attn, ln2 and mlp: {', '.join(extra[:4])}; the block is "
                "those four parts and nothing else with weights")
    D, m = cfg.d_model, cfg.d_mlp or 4 * cfg.d_model
    want = _block_counts(cfg)
    got = {part: _count(params, part + ".") for part in _PARTS}
    for ln in ("ln1", "ln2"):
        if got[ln] == D:
            return f"{ln} has {D} parameters: nn.LayerNorm(D) has a weight and a bias (RMSNorm has no bias)"
        if got[ln] != want[ln]:
            return f"{ln} has {got[ln]} parameters; nn.LayerNorm(D) has 2 D = {2 * D} (a weight and a bias)"
    if got["attn"] != want["attn"]:
        return (f"the attention inside your block has {got['attn']} parameters, not 4 D^2 = {want['attn']}: make it "
                "your CausalSelfAttention(cfg) (and pass check_causal_self_attention first)")
    if got["mlp"] != want["mlp"]:
        if cfg.d_mlp and got["mlp"] == 2 * D * 4 * D + 4 * D + D:
            return "the MLP's hidden width is cfg.d_mlp when it is set: cfg.d_mlp or 4 * cfg.d_model"
        if got["mlp"] == 2 * D * m:
            return "the MLP's two nn.Linear layers have biases (D -> d_mlp -> D, 2 D d_mlp + d_mlp + D parameters)"
        return (f"the MLP has {got['mlp']} parameters; D -> d_mlp -> D with biases has 2 D d_mlp + d_mlp + D = "
                f"{want['mlp']} (d_mlp = cfg.d_mlp or 4 * cfg.d_model)")
    return None


def _block_weights(layout: dict, reference, cfg) -> dict | str:
    """``{learner's parameter name: reference tensor}``, or a sentence saying why they cannot be matched:
    the attention by its projections' names, the LayerNorms and the MLP by shape, in order."""
    params = layout["parameters"]
    values = _attention_weights(params, "attn.", reference.attn, cfg.d_model)
    if isinstance(values, str):
        return "the attention inside your block: " + values
    for part in ("ln1", "ln2", "mlp"):
        pool = [t.detach().clone() for _, t in getattr(reference, part).named_parameters()]
        for name, shape in params.items():
            if not name.startswith(part + "."):
                continue
            match = next((i for i, t in enumerate(pool) if list(t.shape) == list(shape)), None)
            if match is None:
                return (f"{name} {tuple(shape)} has no counterpart in the reference block's {part} "
                        f"({', '.join(str(tuple(t.shape)) for t in getattr(reference, part).parameters())})")
            values[name] = pool.pop(match)
    return values


def _randomised_reference(cfg, g) -> gpt.DecoderBlock:
    """attnkit.DecoderBlock in float64 with LayerNorms that are not the identity: at their init (weight 1,
    bias 0) ln1 and ln2 are the same function, and mixing them up could not be seen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = gpt.DecoderBlock(cfg).double().eval()
    with torch.no_grad():
        for ln in (reference.ln1, reference.ln2):
            ln.weight.copy_(1 + 0.5 * torch.randn(ln.weight.shape, generator=g, dtype=torch.float64))
            ln.bias.copy_(0.5 * torch.randn(ln.bias.shape, generator=g, dtype=torch.float64))
    return reference


def _wirings(reference, x) -> list[tuple[torch.Tensor, str]]:
    """The usual wrong wirings of the reference's own parts, each with its hint."""
    ln1, ln2, mlp = reference.ln1, reference.ln2, reference.mlp

    def attn(h, causal=True):
        return _attend(reference.attn, h, causal=causal)[0]

    def pre_norm(norm_a=ln1, norm_b=ln2, causal=True, mlp_fn=mlp):
        h = x + attn(norm_a(x), causal)
        return h + mlp_fn(norm_b(h))

    def mlp_with(act):
        return lambda t: mlp.down(act(mlp.up(t)))

    with torch.no_grad():
        post = ln1(x + attn(x))
        post = ln2(post + mlp(post))
        h = x + attn(ln1(x))
        a = attn(ln1(x))
        n = ln1(x)
        normalised = n + attn(n)
        return [
            (post, "this is a post-norm block (LayerNorm after the residual add); the course's block is pre-norm: "
                   "x = x + attn(ln1(x)), then x = x + mlp(ln2(x))"),
            (pre_norm(causal=False), _NOT_CAUSAL),
            (mlp(ln2(attn(ln1(x)))), "the residual connections are missing: add each sublayer's output to x"),
            (mlp(ln2(h)), "the residual connection around the MLP is missing: return x + mlp(ln2(x)), not "
                          "mlp(ln2(x))"),
            (a + mlp(ln2(a)), "the residual connection around the attention is missing: x = x + attn(ln1(x)), not "
                              "attn(ln1(x))"),
            (pre_norm(ln1, ln1), "both sublayers use ln1: the MLP reads ln2(x)"),
            (pre_norm(ln2, ln1), "ln1 and ln2 are swapped: the attention reads ln1(x), the MLP ln2(x)"),
            (pre_norm(lambda t: t, ln2), "the attention reads ln1(x), not x: normalise before each sublayer "
                                         "(pre-norm), x = x + attn(ln1(x))"),
            (pre_norm(ln1, lambda t: t), "the MLP reads ln2(x), not x: normalise before each sublayer (pre-norm), "
                                         "x = x + mlp(ln2(x))"),
            (x + attn(ln1(x)) + mlp(ln2(x)), "the sublayers run in parallel (x + attn(ln1(x)) + mlp(ln2(x))): the "
             "MLP reads the stream after the attention update, x = x + attn(ln1(x)) first, then x + mlp(ln2(x))"),
            (normalised + mlp(ln2(normalised)), "the residual stream itself was normalised: add each sublayer's "
             "output to x itself, not to ln1(x): x = x + attn(ln1(x))"),
            (pre_norm(mlp_fn=mlp_with(lambda t: F.gelu(t, approximate="tanh"))), "the MLP's GELU is the tanh "
             "approximation: use the exact one, nn.GELU() or F.gelu(x) (GPT-2 used the approximation for speed)"),
            (pre_norm(mlp_fn=mlp_with(F.relu)), "the MLP's activation is a ReLU: the spec's MLP uses a GELU"),
            (pre_norm(mlp_fn=lambda t: mlp.down(mlp.up(t))), "the MLP has no activation between its two layers: "
             "without the GELU it is one linear map"),
        ]


def _run_block(block_class, cfg, label, inputs):
    x, x_changed, x64, h64, reference = inputs
    block = block_class(cfg)
    layout = there(block, _describe)
    problem = _block_layout_problem(cfg, layout)
    if problem:
        _fail("decoder_block", label, problem)
    there(block, _eval_mode)
    own, own_changed = block(x), block(x_changed)  # the learner's init, float32
    values = _block_weights(layout, reference, cfg)
    if isinstance(values, str):
        _fail("decoder_block", label, values)
    there(block, _load_params, values)
    return own, own_changed, block.attn(h64), block(x64)


def check_decoder_block(block_class) -> str:
    """Check a pre-norm decoder block class ``block_class(cfg)``: parts ``ln1``, ``attn`` (causal
    self-attention by itself, as in check_causal_self_attention), ``ln2``, ``mlp`` (``D -> d_mlp -> D``,
    GELU, biases) and ``forward(x) = x + attn(ln1(x))``, then ``+ mlp(ln2(.))``. Shapes, parameter
    counts and causality are tested on the learner's own initialisation; values after loading the
    reference block's weights (LayerNorms randomised) into the learner's parts."""
    c = Checker("decoder_block", lambda cfg, label, inputs: _run_block(block_class, cfg, label, inputs),
                Ban(python=(gpt.DecoderBlock.forward, model_module.Block.forward),
                    hint="Write forward yourself: two residual additions around the sublayers."))
    g = gen(71)
    cases = [(32, 4, 7, "learned", None), (24, 3, 5, "rope", None), (16, 2, 9, "none", 40), (32, 4, 6, "rope", 48)]
    for D, H, N, positions, d_mlp in cases:
        cfg = model_module.DecoderConfig(vocab_size=11, d_model=D, n_heads=H, positions=positions, max_len=16,
                                         d_mlp=d_mlp)
        label = f"D={D}, n_heads={H}, N={N}, positions={positions}" + (f", d_mlp={d_mlp}" if d_mlp else "")
        with c.case(label):
            reference = _randomised_reference(cfg, g)
            x = torch.randn(2, N, D, generator=g)
            t = N // 2
            x_changed = x.clone()
            x_changed[:, t:] = torch.randn(2, N - t, D, generator=g)
            x64 = torch.randn(2, N, D, generator=g, dtype=torch.float64)
            h64 = torch.randn(2, N, D, generator=g, dtype=torch.float64)
            own, own_changed, got_attn, got = c.call(label, cfg, label, (x, x_changed, x64, h64, reference))
            for value in (own, got):
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != (2, N, D):
                    c.fail(label, f"the block must return the updated stream, a tensor of x's shape {(2, N, D)}, got "
                                  + (str(tuple(value.shape)) if isinstance(value, torch.Tensor)
                                     else type(value).__name__))
            if not torch.allclose(own[:, :t].double(), own_changed[:, :t].double(), rtol=1e-5, atol=1e-6,
                                  equal_nan=True):
                c.fail(label, f"changing tokens {t}.. changed your block's outputs at earlier positions: "
                              + _NOT_CAUSAL)
            with torch.no_grad():
                want_attn = _attend(reference.attn, h64)[0]
                want = reference(x64)
            with torch.no_grad():
                attn_slips = [(_attend(reference.attn, h64, causal=False)[0], "block.attn is not causal by itself: the "
                               "block calls self.attn(self.ln1(x)); make attn your CausalSelfAttention(cfg)")]
                attn_slips += [(_attend(reference.attn, h64, **kw)[0], f"the attention inside your block: {hint}")
                               for _, kw, hint in _attention_slips(reference.attn, h64, cfg)]
            c.expect(label, got_attn, want_attn, what="output of block.attn", tol=dict(rtol=1e-6, atol=1e-9),
                     wrong=attn_slips, otherwise="block.attn is not causal self-attention yet: pass "
                                                 "check_causal_self_attention first")
            c.expect(label, got, want, what="block output", tol=dict(rtol=1e-6, atol=1e-9),
                     wrong=_wirings(reference, x64))
    return c.passed("your own initialisation (shapes, parameters, causality) and the reference's weights "
                    "(LayerNorms not at their init), with and without RoPE, cfg.d_mlp")


NOTEBOOK_CHECKS = {"induction_score": check_induction_score, "causal_self_attention": check_causal_self_attention,
                   "decoder_block": check_decoder_block}
