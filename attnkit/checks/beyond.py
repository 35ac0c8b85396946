"""Checkers for notebook 15 (beyond softmax): the gated delta rule, step by step and in chunks."""

from __future__ import annotations

import torch

from .. import delta
from ._harness import Ban, Checker, gen, randn

_BAN_HINT = "Loop over the tokens yourself: fade, predict, correct, read."


def _recurrent(q, k, v, beta, g, S0=None, *, gate="right", read="after", write="delta", beta_on="all",
               log_gate=False, final="last"):
    """A float64 token loop with switches for the classic mistakes."""
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    if log_gate:
        g = torch.exp(g)
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if S0 is None else S0.double()
    outs, before_last = [], S
    for t in range(N):
        before_last = S
        gt, bt = g[:, :, t, None, None], beta[:, :, t, None]
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        faded = S if gate == "none" else gt * S
        if read == "before":
            outs.append((faded @ qt.unsqueeze(-1)).squeeze(-1))
        elif read == "previous":  # S_{t-1} q_t, before the fade and the write
            outs.append((S @ qt.unsqueeze(-1)).squeeze(-1))
        memory = S if gate == "outside" else faded  # what the prediction reads
        predicted = (memory @ kt.unsqueeze(-1)).squeeze(-1)
        if write == "additive":
            written = bt * vt
        elif beta_on == "v":
            written = bt * vt - predicted
        else:
            written = bt * (vt - predicted)
        if gate == "after":
            S = gt * (S + (bt * (vt - (S @ kt.unsqueeze(-1)).squeeze(-1))).unsqueeze(-1) * kt.unsqueeze(-2))
        else:
            S = faded + written.unsqueeze(-1) * kt.unsqueeze(-2)
        if read == "after":
            outs.append((S @ qt.unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs, 2), (before_last if final == "previous" else S)


def _inputs(g, B, H, N, dk, dv, *, dtype=torch.float32, normalise=True, zero_gate_at=None, gates=(0.6, 1.0),
            state=False):
    q, k = randn(g, B, H, N, dk, dtype=dtype), randn(g, B, H, N, dk, dtype=dtype)
    if normalise:
        k = torch.nn.functional.normalize(k, dim=-1)
        q = torch.nn.functional.normalize(q, dim=-1)
    v = randn(g, B, H, N, dv, dtype=dtype)
    beta = torch.rand(B, H, N, generator=g, dtype=torch.float64).to(dtype) * 0.9 + 0.1
    lo, hi = gates
    gate = (torch.rand(B, H, N, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)
    if zero_gate_at is not None:
        gate[:, :, zero_gate_at] = 0.0
    S0 = randn(g, B, H, dv, dk, dtype=dtype) if state else None
    return q, k, v, beta, gate, S0


def _compare(c, label, got, args, S0, *, dtype, tol=None, extra_out=(), extra_state=()):
    """Compare ``(out, final_state)`` with the float64 reference, trying the known mistakes."""
    if not (isinstance(got, tuple) and len(got) == 2):
        c.fail(label, "return two tensors: (out (B, H, N, dv), final_state (B, H, dv, dk))")
    out, state = got
    want_out, want_state = _recurrent(*args, S0)
    for t in (out, state):
        if isinstance(t, torch.Tensor) and torch.isnan(t).any():
            c.fail(label, "NaN in the result: a gate of exactly 0 (or a long run of small gates) must give a finite "
                          "result; if you take log(g), floor it, or form products of gates directly")
    mistakes = [
        (dict(gate="outside"), "the prediction must read the faded memory: v_t - g_t S_{t-1} k_t, with the gate "
                               "inside (fade first, then ask the memory what it returns for k_t)"),
        (dict(gate="none"), "the gate g was ignored: S_t starts from g_t S_{t-1}"),
        (dict(gate="after"), "the gate was applied after the write: fade first (g_t S_{t-1}), then add the "
                             "correction, which must not be faded"),
        (dict(read="before"), "o_t = S_t q_t reads the memory after this token's write, not before it"),
        (dict(write="additive"), "the delta correction is missing: write beta_t (v_t - g_t S_{t-1} k_t) k_t^T, not "
                                 "beta_t v_t k_t^T (that is gated linear attention)"),
        (dict(beta_on="v"), "beta_t scales the whole correction, beta_t (v_t - g_t S_{t-1} k_t), not only v_t"),
        (dict(log_gate=True), "g is the gate itself (a number between 0 and 1), not its logarithm: do not take "
                              "exp(g)"),
    ]
    # the mistakes particular to a form (the chunked one) first: their hints are the more precise
    wrong_out = list(extra_out) + [(_recurrent(*args, S0, **kw)[0], hint) for kw, hint in mistakes]
    wrong_out.append((_recurrent(*args, S0, read="previous")[0], "o_t = S_t q_t reads the memory after this token's "
                      "fade and write, not S_{t-1} q_t from before them"))
    unit = lambda t: torch.nn.functional.normalize(t.double(), dim=-1)  # noqa: E731
    q, k = args[0], args[1]
    if not torch.allclose(k.double().norm(dim=-1), torch.ones(k.shape[:-1], dtype=torch.float64), atol=1e-4):
        for changed, which in (((unit(q), unit(k)), "q and k"), ((q, unit(k)), "k")):
            hint = (f"you normalised {which}: use q and k as given (these keys are not unit vectors; a model "
                    f"normalises them before the layer, not inside the rule)")
            result = _recurrent(*changed, *args[2:], S0)
            wrong_out.append((result[0], hint))
            extra_state = list(extra_state) + [(result[1], hint)]
    wrong_state = list(extra_state) + [(_recurrent(*args, S0, **kw)[1], hint) for kw, hint in mistakes]
    wrong_state.append((_recurrent(*args, S0, final="previous")[1], "final_state must be S_N, the state after the "
                        "last token"))
    if S0 is not None:
        ignored = _recurrent(*args, None)
        wrong_out.insert(0, (ignored[0], "initial_state was ignored: start from it instead of zeros"))
        wrong_state.insert(0, (ignored[1], "initial_state was ignored: start from it instead of zeros"))
    wrong_state.append((want_state.transpose(-2, -1), "final_state is transposed: the state maps keys to values, "
                        "(B, H, dv, dk), so S k_t is (dv,)"))
    c.expect(label, out, want_out, what="output", dtype=dtype, tol=tol, wrong=wrong_out)
    c.expect(label, state, want_state, what="final state", dtype=dtype, tol=tol, wrong=wrong_state)


def check_gated_delta_rule(fn) -> str:
    """Check ``fn(q, k (B, H, N, dk), v (B, H, N, dv), beta, g (B, H, N), initial_state=None)
    -> (out (B, H, N, dv), final_state (B, H, dv, dk))``."""
    c = Checker("gated_delta_rule", fn, Ban(python=(delta.gated_delta_rule, delta.gated_delta_rule_chunked),
                                            hint=_BAN_HINT))
    g = gen(150)
    cases = [  # label, (B, H, N, dk, dv), options, pass initial_state
        ("B=2, H=2, 9 tokens, dk=4, dv=3, unit-norm keys", (2, 2, 9, 4, 3), {}, False),
        ("with an initial_state", (1, 3, 7, 4, 6), dict(state=True), True),
        ("a gate of 0 at token 4 wipes the memory", (1, 2, 8, 3, 2), dict(zero_gate_at=4), False),
        ("one token", (2, 1, 1, 5, 4), {}, False),
        ("dk = dv = 5 (a square state)", (1, 2, 12, 5, 5), {}, False),
        ("keys not normalised, small gates, float64", (2, 2, 10, 4, 3),
         dict(dtype=torch.float64, normalise=False, gates=(0.05, 0.5)), False),
        ("40 tokens with an initial_state, dk=8, dv=6", (1, 2, 40, 8, 6), dict(state=True), True),
    ]
    for label, (B, H, N, dk, dv), options, pass_state in cases:
        with c.case(label):
            q, k, v, beta, gate, S0 = _inputs(g, B, H, N, dk, dv, **options)
            dtype = options.get("dtype", torch.float32)
            got = c.call(label, q, k, v, beta, gate, *((S0,) if pass_state else ()),
                         if_raises="S is (B, H, dv, dk) and k_t = k[:, :, t] is (B, H, dk): S k_t is "
                                   "torch.einsum('bhvk,bhk->bhv', S, k_t), or (S @ k_t.unsqueeze(-1)).squeeze(-1)")
            _compare(c, label, got, (q, k, v, beta, gate), S0, dtype=dtype)
    return c.passed("gates of 0, initial states, square and rectangular states, unnormalised keys, float64")


# --------------------------------------------------------------------------- chunked (stretch)

def _chunked(q, k, v, beta, g, S0, C, *, solve=True, decay="right", a_diag=False, o_diag=True, carry_in_u=True,
             fade_state=True, carry_in_out=True, tail=True, drop_tail=False):
    """A float64 chunked form with switches for the classic mistakes."""
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if S0 is None else S0.double()
    log_g = torch.log(g).clamp_min(-200.0)
    outs = []
    stop = (N // C) * C if drop_tail else N
    for s in range(0, stop, C):
        e = min(s + C, N)
        qc, kc, vc, bc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], beta[:, :, s:e]
        cum = torch.cumsum(log_g[:, :, s:e], -1)
        n = e - s
        diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)
        if decay == "inverted":
            diff = -diff
        lower = torch.ones(n, n, dtype=torch.bool).tril()
        G = torch.exp(diff.masked_fill(~lower, float("-inf")))
        gamma = torch.exp(cum)
        A = (bc.unsqueeze(-1) * (kc @ kc.transpose(-2, -1)) * G).masked_fill(~lower.tril(0 if a_diag else -1), 0.0)
        rhs = bc.unsqueeze(-1) * vc
        if carry_in_u:
            rhs = rhs - (bc * gamma).unsqueeze(-1) * (kc @ S.transpose(-2, -1))
        U = torch.linalg.solve(torch.eye(n, dtype=torch.float64) + A, rhs) if solve else rhs
        P = (qc @ kc.transpose(-2, -1)) * G
        if not o_diag:
            P = P.masked_fill(~lower.tril(-1), 0.0)
        o = P @ U
        if carry_in_out:
            o = o + gamma.unsqueeze(-1) * (qc @ S.transpose(-2, -1))
        outs.append(o)
        w = torch.exp(cum[..., -1:] - cum) if tail else torch.ones_like(cum)
        S = (gamma[..., -1, None, None] * S if fade_state else S) + U.transpose(-2, -1) @ (w.unsqueeze(-1) * kc)
    return torch.cat(outs, 2), S


def check_gated_delta_rule_chunked(fn) -> str:
    """Check ``fn(q, k, v, beta, g, initial_state=None, chunk_size=64) -> (out, final_state)`` against the
    token-by-token rule."""
    c = Checker("gated_delta_rule_chunked", fn,
                Ban(python=(delta.gated_delta_rule, delta.gated_delta_rule_chunked),
                    hint="Write the chunked form yourself: a triangular solve per chunk, then matrix products."))
    g = gen(151)
    # Chunked float32 rounds differently from the token loop; mistakes are far larger than this.
    tol = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}
    cases = [  # label, (B, H, N, dk, dv), chunk, options, pass state
        ("37 tokens in chunks of 8 (the last chunk has 5)", (2, 2, 37, 4, 3), 8, {}, False),
        ("32 tokens in chunks of 8, with an initial_state", (1, 2, 32, 6, 5), 8, dict(state=True), True),
        ("chunks of 1 (the recurrence itself)", (1, 2, 6, 3, 4), 1, {}, False),
        ("one chunk larger than the sequence (11 tokens, chunk 64)", (2, 1, 11, 4, 4), 64, {}, False),
        ("small gates (0.05 to 0.5), float64, 25 tokens in chunks of 7", (1, 2, 25, 5, 3), 7,
         dict(dtype=torch.float64, gates=(0.05, 0.5)), False),
        ("a gate of 0 inside a chunk", (1, 2, 20, 4, 4), 8, dict(zero_gate_at=10), False),
        ("dk = dv = 6, 50 tokens in chunks of 16, initial_state", (1, 2, 50, 6, 6), 16, dict(state=True), True),
    ]
    for label, (B, H, N, dk, dv), C, options, pass_state in cases:
        with c.case(label):
            q, k, v, beta, gate, S0 = _inputs(g, B, H, N, dk, dv, **options)
            dtype = options.get("dtype", torch.float32)
            got = c.call(label, q, k, v, beta, gate, S0 if pass_state else None, C)
            a = (q, k, v, beta, gate, S0, C)
            mistakes = [
                (dict(solve=False), "the corrections inside a chunk are missing: each u_i depends on the u_j written "
                                    "before it, so solve (I + A) U = diag(beta) V - diag(beta gamma) K S0^T"),
                (dict(decay="inverted"), "the decay inside a chunk is inverted: token i sees token j's write faded by "
                                         "gamma_i / gamma_j (the gates after j, up to i)"),
                (dict(a_diag=True), "A is strictly lower triangular (j < i): token i's own key is not part of its "
                                    "prediction"),
                (dict(o_diag=False), "the output of token i must include its own write: keep the diagonal of "
                                     "(Q K^T) * Gamma"),
                (dict(carry_in_u=False), "the corrections ignore the state carried in from earlier chunks: subtract "
                                         "beta_i gamma_i S0 k_i"),
                (dict(carry_in_out=False), "the state carried from earlier chunks is missing from the outputs: add "
                                           "gamma_i S0 q_i"),
                (dict(fade_state=False), "the carried state must fade across the chunk: S = gamma_C S0 + ..."),
                (dict(tail=False), "when carrying the state, weight each u_j k_j^T by gamma_C / gamma_j (what is left "
                                   "of it at the end of the chunk)"),
            ]
            extra_out = [(_chunked(*a, **kw)[0], hint) for kw, hint in mistakes]
            extra_state = [(_chunked(*a, **kw)[1], hint) for kw, hint in mistakes]
            if N % C and N > C:
                extra_out.append((_chunked(*a, drop_tail=True)[0], "the last, shorter chunk is missing: N need not be a "
                                  "multiple of chunk_size"))
            _compare(c, label, got, (q, k, v, beta, gate), S0, dtype=dtype, tol=tol[dtype],
                     extra_out=extra_out, extra_state=extra_state)
    return c.passed("uneven last chunks, chunks of 1 and longer than the sequence, carried states, zero gates")
