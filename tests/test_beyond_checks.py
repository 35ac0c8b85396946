"""Checkers of notebook 15's exercises (the gated delta rule, recurrent and chunked): correct code
in other styles passes; realistic mistakes are rejected with the hint that names them."""

import pytest
import torch

import attnkit
from attnkit.checks import CHECKS, NOTEBOOK_CHECKS

ALL = {**CHECKS, **NOTEBOOK_CHECKS}


# ------------------------------------------------------------------ the recurrent rule

def delta_einsum(q, k, v, beta, g, initial_state=None):
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=q.dtype) if initial_state is None else initial_state
    outs = []
    for t in range(N):
        S = g[:, :, t, None, None] * S
        error = v[:, :, t] - torch.einsum("bhvk,bhk->bhv", S, k[:, :, t])
        S = S + torch.einsum("bhv,bhk->bhvk", beta[:, :, t, None] * error, k[:, :, t])
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, :, t]))
    return torch.stack(outs, 2), S


def delta_householder_f64(q, k, v, beta, g, initial_state=None, scale=1.0):
    """S_t = g S (I - beta k k^T) + beta v k^T, float64 inside, an extra keyword with a default."""
    dtype = q.dtype
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if initial_state is None else initial_state.double()
    eye = torch.eye(dk, dtype=torch.float64)
    out = torch.empty(B, H, N, v.shape[-1], dtype=torch.float64)
    for t in range(N):
        kt = k[:, :, t, :, None]  # (B, H, dk, 1)
        b = beta[:, :, t, None, None]
        S = g[:, :, t, None, None] * S @ (eye - b * kt @ kt.transpose(-2, -1)) + b * v[:, :, t, :, None] @ kt.transpose(-2, -1)
        out[:, :, t] = (S @ q[:, :, t, :, None])[..., 0] * scale
    return out.to(dtype), S.to(dtype)


def delta_scalar_loops(q, k, v, beta, g, initial_state=None):
    """One (batch, head) at a time, matrices as Python lists of rows."""
    B, H, N, dk = k.shape
    dv = v.shape[-1]
    out = torch.zeros(B, H, N, dv, dtype=q.dtype)
    final = torch.zeros(B, H, dv, dk, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            S = [[0.0] * dk for _ in range(dv)] if initial_state is None else initial_state[b, h].double().tolist()
            for t in range(N):
                gt, bt = float(g[b, h, t]), float(beta[b, h, t])
                kt, vt, qt = k[b, h, t].tolist(), v[b, h, t].tolist(), q[b, h, t].tolist()
                S = [[gt * x for x in row] for row in S]
                for i in range(dv):
                    err = vt[i] - sum(S[i][j] * kt[j] for j in range(dk))
                    S[i] = [S[i][j] + bt * err * kt[j] for j in range(dk)]
                out[b, h, t] = torch.tensor([sum(S[i][j] * qt[j] for j in range(dk)) for i in range(dv)],
                                            dtype=torch.float64)
            final[b, h] = torch.tensor(S, dtype=torch.float64)
    return out, final


def delta_inplace(q, k, v, beta, g, initial_state=None):
    """Preallocated outputs written in place (the state is a fresh tensor, so inputs stay untouched)."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state.clone()
    out = q.new_empty(B, H, N, v.shape[-1])
    for t in range(N):
        S.mul_(g[:, :, t, None, None])
        pred = (S @ k[:, :, t, :, None]).squeeze(-1)
        S.add_((beta[:, :, t, None] * (v[:, :, t] - pred))[..., None] * k[:, :, t, None, :])
        torch.matmul(S, q[:, :, t, :, None], out=out[:, :, t, :, None])
    return out, S


def _delta_mutant(kind):
    def fn(q, k, v, beta, g, initial_state=None):
        B, H, N, dk = k.shape
        S = torch.zeros(B, H, v.shape[-1], dk, dtype=q.dtype)
        if initial_state is not None and kind != "ignore_state":
            S = initial_state.clone()
        if kind == "exp_gate":
            g = torch.exp(g)
        outs, previous = [], S
        for t in range(N):
            previous = S
            gt, bt = g[:, :, t, None, None], beta[:, :, t, None]
            kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
            if kind == "read_before":
                outs.append(torch.einsum("bhvk,bhk->bhv", gt * S, qt))
            if kind == "gate_after":
                err = vt - torch.einsum("bhvk,bhk->bhv", S, kt)
                S = gt * (S + torch.einsum("bhv,bhk->bhvk", bt * err, kt))
            else:
                faded = S if kind == "no_gate" else gt * S
                memory = S if kind == "gate_outside" else faded
                pred = torch.einsum("bhvk,bhk->bhv", memory, kt)
                if kind == "additive":
                    write = bt * vt
                elif kind == "beta_on_v":
                    write = bt * vt - pred
                else:
                    write = bt * (vt - pred)
                S = faded + torch.einsum("bhv,bhk->bhvk", write, kt)
            if kind != "read_before":
                outs.append(torch.einsum("bhvk,bhk->bhv", S, qt))
        final = previous if kind == "stale_final" else S
        if kind == "transposed_state":
            final = final.transpose(-2, -1)
        return torch.stack(outs, 2), final
    return fn


def delta_modifies_state(q, k, v, beta, g, initial_state=None):
    out, S = delta_einsum(q, k, v, beta, g, None if initial_state is None else initial_state.clone())
    if initial_state is not None:
        initial_state.copy_(S)  # overwrites the caller's tensor
    return out, S


# ------------------------------------------------------------------ the chunked form

def chunked_cumprod(q, k, v, beta, g, initial_state=None, chunk_size=64):
    """Decays as ratios of products of gates built by explicit loops (no logs), solve_triangular."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state
    outs = []
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        n = e - s
        qc, kc, vc, bc, gc = (t[:, :, s:e] for t in (q, k, v, beta, g))
        G = q.new_zeros(B, H, n, n)
        for i in range(n):
            prod = q.new_ones(B, H)
            G[:, :, i, i] = 1
            for j in range(i - 1, -1, -1):
                prod = prod * gc[:, :, j + 1]
                G[:, :, i, j] = prod
        gamma = torch.cumprod(gc, -1)
        A = (bc[..., None] * (kc @ kc.transpose(-2, -1)) * G).tril(-1)
        rhs = bc[..., None] * vc - (bc * gamma)[..., None] * (kc @ S.transpose(-2, -1))
        U = torch.linalg.solve_triangular(torch.eye(n, dtype=q.dtype) + A, rhs, upper=False)
        outs.append(gamma[..., None] * (qc @ S.transpose(-2, -1)) + ((qc @ kc.transpose(-2, -1)) * G) @ U)
        S = gamma[..., -1, None, None] * S + U.transpose(-2, -1) @ (G[:, :, -1, :, None] * kc)
    return torch.cat(outs, 2), S


def chunked_forward_substitution_f64(q, k, v, beta, g, initial_state=None, chunk_size=64, eps=0.0):
    """float64, log-space decays, (I + A)^-1 by forward substitution row by row (as kernels do)."""
    dtype = q.dtype
    q, k, v, beta, g = (t.double() for t in (q, k, v, beta, g))
    B, H, N, dk = k.shape
    S = torch.zeros(B, H, v.shape[-1], dk, dtype=torch.float64) if initial_state is None else initial_state.double()
    log_g = torch.log(g.clamp_min(1e-300))
    outs = []
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        n = e - s
        qc, kc, vc, bc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], beta[:, :, s:e]
        c = log_g[:, :, s:e].cumsum(-1)
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        G = torch.where(mask, torch.exp((c[..., :, None] - c[..., None, :]).masked_fill(~mask, 0)), 0.0)
        A = torch.where(mask.tril(-1), bc[..., None] * (kc @ kc.transpose(-2, -1)) * G, 0.0)
        rhs = bc[..., None] * vc - (bc * c.exp())[..., None] * (kc @ S.transpose(-2, -1))
        U = torch.zeros_like(rhs)
        for i in range(n):  # forward substitution: u_i = rhs_i - sum_{j<i} A_ij u_j
            U[:, :, i] = rhs[:, :, i] - (A[:, :, i, :i, None] * U[:, :, :i]).sum(2)
        outs.append(c.exp()[..., None] * (qc @ S.transpose(-2, -1)) + ((qc @ kc.transpose(-2, -1)) * G) @ U)
        S = c[..., -1:].exp()[..., None] * S + U.transpose(-2, -1) @ ((c[..., -1:] - c).exp()[..., None] * kc)
    return torch.cat(outs, 2).to(dtype), S.to(dtype)


def chunked_einsum_inverse(q, k, v, beta, g, initial_state=None, chunk_size=64):
    """einsum everywhere, torch.linalg.inv for the UT transform, decays from a padded log-gate tensor."""
    B, H, N, dk = k.shape
    S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None else initial_state
    lg = torch.log(g).clamp_min(-60.0)
    outs = []
    for s in range(0, N, chunk_size):
        sl = slice(s, min(s + chunk_size, N))
        qc, kc, vc, bc, c = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], lg[:, :, sl].cumsum(-1)
        n = c.shape[-1]
        tri = torch.ones(n, n, dtype=torch.bool).tril()
        G = torch.exp(torch.where(tri, c[..., :, None] - c[..., None, :], torch.tensor(-torch.inf)))
        A = torch.einsum("bhi,bhid,bhjd,bhij->bhij", bc, kc, kc, G) * tri.tril(-1)
        T = torch.linalg.inv(torch.eye(n, dtype=q.dtype) + A)
        U = torch.einsum("bhij,bhjv->bhiv", T, bc[..., None] * vc - torch.einsum("bhi,bhid,bhvd->bhiv", bc * c.exp(), kc, S))
        outs.append(torch.einsum("bhi,bhid,bhvd->bhiv", c.exp(), qc, S)
                    + torch.einsum("bhid,bhjd,bhij,bhjv->bhiv", qc, kc, G, U))
        S = c[..., -1, None, None].exp() * S + torch.einsum("bhjv,bhj,bhjd->bhvd", U, (c[..., -1:] - c).exp(), kc)
    return torch.cat(outs, 2), S


def _chunked_mutant(**kw):
    def fn(q, k, v, beta, g, initial_state=None, chunk_size=64):
        B, H, N, dk = k.shape
        S = q.new_zeros(B, H, v.shape[-1], dk) if initial_state is None or kw.get("ignore_state") else initial_state
        lg = torch.log(g).clamp_min(-60.0)
        outs = []
        stop = N - N % chunk_size if kw.get("drop_tail") else N
        for s in range(0, stop, chunk_size):
            sl = slice(s, min(s + chunk_size, N))
            qc, kc, vc, bc, c = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], lg[:, :, sl].cumsum(-1)
            n = c.shape[-1]
            tri = torch.ones(n, n, dtype=torch.bool).tril()
            diff = c[..., :, None] - c[..., None, :]
            if kw.get("inverted"):
                diff = -diff
            G = torch.exp(diff.masked_fill(~tri, -torch.inf))
            A = (bc[..., None] * (kc @ kc.transpose(-2, -1)) * G).masked_fill(~tri.tril(0 if kw.get("a_diag") else -1), 0)
            rhs = bc[..., None] * vc
            if not kw.get("no_carry_u"):
                rhs = rhs - (bc * c.exp())[..., None] * (kc @ S.transpose(-2, -1))
            if kw.get("no_solve"):
                U = rhs
            elif kw.get("a_diag"):  # a general solve: the diagonal of A now counts
                U = torch.linalg.solve(torch.eye(n, dtype=q.dtype) + A, rhs)
            else:
                U = torch.linalg.solve_triangular(torch.eye(n, dtype=q.dtype) + A, rhs, upper=False, unitriangular=True)
            P = (qc @ kc.transpose(-2, -1)) * G
            if kw.get("strict_out"):
                P = P.tril(-1)
            o = P @ U
            if not kw.get("no_carry_out"):
                o = o + c.exp()[..., None] * (qc @ S.transpose(-2, -1))
            outs.append(o)
            w = torch.ones_like(c) if kw.get("no_tail") else (c[..., -1:] - c).exp()
            fade = 1.0 if kw.get("no_fade") else c[..., -1, None, None].exp()
            S = fade * S + U.transpose(-2, -1) @ (w[..., None] * kc)
        return torch.cat(outs, 2), S
    return fn


CORRECT = [
    ("gated_delta_rule", delta_einsum), ("gated_delta_rule", delta_householder_f64),
    ("gated_delta_rule", delta_scalar_loops), ("gated_delta_rule", delta_inplace),
    ("gated_delta_rule", lambda q, k, v, beta, g, initial_state=None: chunked_cumprod(q, k, v, beta, g, initial_state, 4)),
    ("gated_delta_rule_chunked", chunked_cumprod), ("gated_delta_rule_chunked", chunked_forward_substitution_f64),
    ("gated_delta_rule_chunked", chunked_einsum_inverse),
]

WRONG = [
    ("gated_delta_rule", _delta_mutant("gate_outside"), "faded memory"),
    ("gated_delta_rule", _delta_mutant("no_gate"), "gate g was ignored"),
    ("gated_delta_rule", _delta_mutant("gate_after"), "after the write"),
    ("gated_delta_rule", _delta_mutant("read_before"), "after this token's write"),
    ("gated_delta_rule", _delta_mutant("additive"), "delta correction is missing"),
    ("gated_delta_rule", _delta_mutant("beta_on_v"), "whole correction"),
    ("gated_delta_rule", _delta_mutant("exp_gate"), "not its logarithm"),
    ("gated_delta_rule", _delta_mutant("ignore_state"), "initial_state was ignored"),
    ("gated_delta_rule", _delta_mutant("stale_final"), "after the last token"),
    ("gated_delta_rule", _delta_mutant("transposed_state"), "transposed"),
    ("gated_delta_rule", delta_modifies_state, "in place"),
    ("gated_delta_rule", attnkit.gated_delta_rule, "calls"),
    ("gated_delta_rule", lambda *a, **kw: attnkit.gated_delta_rule_chunked(*a, **kw), "calls"),
    ("gated_delta_rule_chunked", _chunked_mutant(no_solve=True), "solve (I + A)"),
    ("gated_delta_rule_chunked", _chunked_mutant(inverted=True), "inverted"),
    ("gated_delta_rule_chunked", _chunked_mutant(a_diag=True), "strictly lower"),
    ("gated_delta_rule_chunked", _chunked_mutant(strict_out=True), "keep the diagonal"),
    ("gated_delta_rule_chunked", _chunked_mutant(no_carry_u=True), "S0 k_i"),
    ("gated_delta_rule_chunked", _chunked_mutant(no_carry_out=True), "S0 q_i"),
    ("gated_delta_rule_chunked", _chunked_mutant(no_fade=True), "fade across the chunk"),
    ("gated_delta_rule_chunked", _chunked_mutant(no_tail=True), "gamma_C / gamma_j"),
    ("gated_delta_rule_chunked", _chunked_mutant(drop_tail=True), "last, shorter chunk"),
    ("gated_delta_rule_chunked", _chunked_mutant(ignore_state=True), "initial_state was ignored"),
    ("gated_delta_rule_chunked", lambda q, k, v, b, g, s=None, c=64: attnkit.gated_delta_rule(q, k, v, b, g, s), "calls"),
    ("gated_delta_rule_chunked", attnkit.gated_delta_rule_chunked, "calls"),
]


@pytest.mark.parametrize("name,fn", CORRECT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CORRECT)])
def test_checker_accepts(name, fn, capsys):
    ALL[name](fn)
    assert capsys.readouterr().out.startswith(f"check_{name} passed")


@pytest.mark.parametrize("name,fn,words", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_checker_rejects_with_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        ALL[name](fn)
    first = str(info.value).splitlines()[0]
    assert first.startswith(name + ":") and words in first, str(info.value)


def test_every_checker_has_eight_mutants_and_three_styles():
    for name in ("gated_delta_rule", "gated_delta_rule_chunked"):
        assert sum(1 for n, _, w in WRONG if n == name and w != "calls") >= 8
        assert sum(1 for n, _ in CORRECT if n == name) >= 3
