"""The gated delta rule: a linear-attention layer that *edits* its memory instead of only
adding to it (Yang, Kautz and Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with
Delta Rule", ICLR 2025).

Linear attention (notebook 09b) keeps a state ``S (dv, dk)`` and adds ``v_t k_t^T`` for every
token: memories pile up and interfere. The delta rule (Widrow and Hoff 1960; in linear
transformers Schlag, Irie and Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight
Programmers") first asks the memory what it currently returns for ``k_t``, and writes only the
correction, with a learning rate ``beta_t``. A gate ``g_t`` in ``[0, 1]`` (Mamba-2's decay)
fades the whole memory first:

    S_t = g_t S_{t-1} + beta_t (v_t - g_t S_{t-1} k_t) k_t^T        (dv, dk)
    o_t = S_t q_t                                                     (dv,)

Equivalently ``S_t = g_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``: a
Householder-like projection that erases the old value stored under ``k_t`` (exactly, for a
unit-norm ``k_t`` and ``beta_t = 1``) before writing the new one.

Two ways to compute the same thing:

* :func:`gated_delta_rule`, one token at a time: ``O(N dk dv)`` work, but ``N`` sequential
  small steps (how a model decodes).
* :func:`gated_delta_rule_chunked`, chunks of ``C`` tokens: inside a chunk the recurrence is
  unrolled into ``(C, C)`` matrix products, with the WY representation / UT transform of
  Yang, Wang, Zhang, Shen and Kim 2024 ("Parallelizing Linear Transformers with the Delta Rule
  over Sequence Length", NeurIPS 2024), and only ``N / C`` sequential steps carry the state
  between chunks (how a model trains).

Inside a chunk that starts from state ``S0``, write ``gamma_i = g_1 ... g_i`` and
``u_i = beta_i (v_i - g_i S_{i-1} k_i)`` (the correction actually written at step ``i``), so
that ``S_i = gamma_i S0 + sum_{j<=i} (gamma_i / gamma_j) u_j k_j^T``. Substituting this
``S_{i-1}`` into the definition of ``u_i`` gives a lower-triangular linear system for all the
``u`` at once:

    (I + A) U = diag(beta) V - diag(beta gamma) K S0^T,
    A_ij = beta_i (gamma_i / gamma_j) k_i . k_j   for j < i, 0 otherwise,

after which the outputs and the next state are matrix products:

    O = diag(gamma) Q S0^T + ((Q K^T) * Gamma * tril) U,   Gamma_ij = gamma_i / gamma_j
    S_C = gamma_C S0 + U^T diag(gamma_C / gamma) K.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def _check(q, k, v, beta, g, initial_state, what):
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(name, t, ndim=4, floating=True)
    for name, t in (("beta", beta), ("g", g)):
        chk.tensor(name, t, ndim=3, floating=True)
    chk.same_dtype(q=q, k=k, v=v, beta=beta, g=g)
    B, H, N, dk = k.shape
    if q.shape != k.shape or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{what}: expected q, k (B, H, N, dk) and v (B, H, N, dv) with the same (B, H, N), "
                         f"got q {chk.shape_str(q)}, k {chk.shape_str(k)}, v {chk.shape_str(v)}")
    for name, t in (("beta", beta), ("g", g)):
        if t.shape != k.shape[:3]:
            raise ValueError(f"{what}: {name} must be (B, H, N) = {tuple(k.shape[:3])}, one number per token "
                             f"and head, got {chk.shape_str(t)}")
    dv = v.shape[-1]
    if initial_state is not None:
        chk.tensor("initial_state", initial_state, ndim=4, floating=True)
        chk.same_dtype(q=q, initial_state=initial_state)
        if initial_state.shape != (B, H, dv, dk):
            raise ValueError(f"{what}: initial_state must be (B, H, dv, dk) = {(B, H, dv, dk)}, got "
                             f"{chk.shape_str(initial_state)}")
    return B, H, N, dk, dv


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor,
                     initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule, token by token.

    Args:
        q, k: ``(B, H, N, dk)`` queries and keys (models L2-normalise them; this function
            takes them as given).
        v: ``(B, H, N, dv)`` values.
        beta: ``(B, H, N)`` write strengths (learning rates), usually in ``(0, 1)``.
        g: ``(B, H, N)`` decay gates in ``[0, 1]`` (1 keeps the memory, 0 wipes it).
        initial_state: ``(B, H, dv, dk)``, zeros when ``None``.

    Returns:
        ``out (B, H, N, dv)`` with ``out[..., t, :] = S_t q_t``, and the final state
        ``S_N (B, H, dv, dk)``.
    """
    B, H, N, dk, dv = _check(q, k, v, beta, g, initial_state, "gated_delta_rule")
    S = q.new_zeros(B, H, dv, dk) if initial_state is None else initial_state  # (B, H, dv, dk)
    outs = []
    for t in range(N):
        k_t, v_t, q_t = k[:, :, t], v[:, :, t], q[:, :, t]  # (B, H, dk), (B, H, dv), (B, H, dk)
        S = g[:, :, t, None, None] * S  # fade the memory
        predicted = (S @ k_t.unsqueeze(-1)).squeeze(-1)  # (B, H, dv): what the memory returns for k_t
        correction = beta[:, :, t, None] * (v_t - predicted)  # (B, H, dv)
        S = S + correction.unsqueeze(-1) * k_t.unsqueeze(-2)  # (B, H, dv, dk): write the correction at k_t
        outs.append((S @ q_t.unsqueeze(-1)).squeeze(-1))  # (B, H, dv): read with the query
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, dv)  # (B, H, N, dv)
    return out, S


def gated_delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                             g: torch.Tensor, initial_state: torch.Tensor | None = None,
                             chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule in chunks of ``chunk_size`` tokens (the last chunk may be shorter).

    Same arguments and results as :func:`gated_delta_rule`. Differentiable (autograd goes
    through the triangular solve), so a model can be trained with it.
    """
    B, H, N, dk, dv = _check(q, k, v, beta, g, initial_state, "gated_delta_rule_chunked")
    C = chk.positive_int("chunk_size", chunk_size)
    S = q.new_zeros(B, H, dv, dk) if initial_state is None else initial_state  # (B, H, dv, dk)
    # log g, floored at log(eps^3) (exp of it is negligible next to 1 in this dtype), so a gate of
    # exactly 0 stays finite and differences of cumulative sums keep their precision
    floor = 3 * torch.log(torch.tensor(torch.finfo(g.dtype).eps)).item()
    log_g = torch.log(g).clamp_min(floor)  # (B, H, N)
    outs = []
    for start in range(0, N, C):
        end = min(start + C, N)
        qc, kc, vc = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]  # (B, H, c, dk/dv)
        bc = beta[:, :, start:end]  # (B, H, c)
        cum = torch.cumsum(log_g[:, :, start:end], dim=-1)  # (B, H, c): log gamma_i
        c = end - start
        lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # j <= i
        strict = lower.tril(-1)  # j < i
        # Gamma_ij = gamma_i / gamma_j for j <= i, 0 above the diagonal (masked before exp)
        decay = torch.exp((cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~lower, float("-inf")))  # (B, H, c, c)
        gamma = torch.exp(cum)  # (B, H, c)
        carried = start > 0 or initial_state is not None  # otherwise S is still zero: skip its terms
        A = (bc.unsqueeze(-1) * (kc @ kc.transpose(-2, -1)) * decay).masked_fill(~strict, 0.0)  # (B, H, c, c)
        rhs = bc.unsqueeze(-1) * vc  # (B, H, c, dv)
        if carried:
            rhs = rhs - (bc * gamma).unsqueeze(-1) * (kc @ S.transpose(-2, -1))  # what the carried state predicts
        eye = torch.eye(c, dtype=q.dtype, device=q.device)
        U = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)  # (B, H, c, dv)
        scores = (qc @ kc.transpose(-2, -1)) * decay  # (B, H, c, c), zero above the diagonal
        out = scores @ U  # (B, H, c, dv)
        if carried:
            out = out + gamma.unsqueeze(-1) * (qc @ S.transpose(-2, -1))
        outs.append(out)
        tail = torch.exp(cum[..., -1:] - cum)  # (B, H, c): gamma_c / gamma_j
        written = U.transpose(-2, -1) @ (tail.unsqueeze(-1) * kc)  # (B, H, dv, dk)
        S = gamma[..., -1, None, None] * S + written if carried else written
    out = torch.cat(outs, dim=2) if outs else v.new_zeros(B, H, 0, dv)  # (B, H, N, dv)
    return out, S


def state_bytes(n_layers: int, n_heads: int, dk: int, dv: int, batch: int = 1, bytes_per_value: int = 2) -> int:
    """Bytes of the recurrent state of ``n_layers`` linear-attention layers: one ``(dv, dk)``
    matrix per head, whatever the sequence length (compare :func:`attnkit.kv_cache_bytes`)."""
    for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("dk", dk), ("dv", dv), ("batch", batch),
                        ("bytes_per_value", bytes_per_value)):
        chk.positive_int(name, value, allow_zero=name == "n_layers")
    return n_layers * n_heads * dk * dv * batch * bytes_per_value
