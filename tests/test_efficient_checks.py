"""Checkers of notebook 09's exercises: correct code written differently passes; known-wrong
code is rejected with the hint that names the mistake; shortcuts are refused."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.checks import CHECKS


def online_ok(x, block_size):
    m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        m2 = torch.maximum(m, b.max(-1).values)
        base = torch.nan_to_num(m2, neginf=0.0)
        l = l * torch.exp(m - base) + torch.exp(b - base[..., None]).sum(-1)
        m = m2
    base = torch.nan_to_num(m, neginf=0.0)
    p = torch.exp(x - base[..., None]) / torch.where(l > 0, l, torch.ones_like(l))[..., None]
    return p, m, l


def online_no_rescale(x, block_size):
    p, m, _ = online_ok(x, block_size)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for s in range(0, x.shape[-1], block_size):
        b = x[..., s:s + block_size]
        l = l + torch.exp(b - b.max(-1, keepdim=True).values).sum(-1)
    return p, m, l


def flash_ok(q, k, v, is_causal=False, block_q=64, block_k=64, base=math.e, causal_override=None):
    causal = is_causal if causal_override is None else causal_override
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)
    for qs in range(0, nq, block_q):
        qb = q[..., qs:qs + block_q, :]
        m = torch.full(qb.shape[:-1], -math.inf, dtype=q.dtype)
        l = torch.zeros(qb.shape[:-1], dtype=q.dtype)
        acc = torch.zeros(*qb.shape[:-1], v.shape[-1], dtype=q.dtype)
        for ks in range(0, nk, block_k):
            s = torch.einsum("...id,...jd->...ij", qb, k[..., ks:ks + block_k, :]) / math.sqrt(d)
            if causal:
                i = torch.arange(qs, qs + qb.shape[-2])[:, None] + nk - nq
                j = torch.arange(ks, ks + s.shape[-1])[None, :]
                s = s.masked_fill(j > i, -math.inf)
            m2 = torch.maximum(m, s.max(-1).values)
            b = torch.nan_to_num(m2, neginf=0.0)
            p = torch.exp(s - b[..., None])
            a = torch.exp(m - b)
            l, acc, m = a * l + p.sum(-1), a[..., None] * acc + p @ v[..., ks:ks + block_k, :], m2
        out[..., qs:qs + block_q, :] = acc / torch.where(l > 0, l, torch.ones_like(l))[..., None]
        lse[..., qs:qs + block_q] = torch.where(l > 0, (torch.nan_to_num(m, neginf=0.0) + torch.log(l)) / math.log(base),
                                                torch.full_like(l, -math.inf))
    return out, lse


def flash_base2(q, k, v, is_causal=False, block_q=64, block_k=64):
    return flash_ok(q, k, v, is_causal, block_q, block_k, base=2)


def flash_ignores_causal(q, k, v, is_causal=False, block_q=64, block_k=64):
    return flash_ok(q, k, v, is_causal, block_q, block_k, causal_override=False)


def flash_materialises(q, k, v, is_causal=False, block_q=64, block_k=64):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(~attnkit.causal_mask(q.shape[-2], k.shape[-2]), -math.inf)
    m = s.max(-1, keepdim=True).values
    e = torch.exp(s - m)
    return e @ v / e.sum(-1, keepdim=True), (m + torch.log(e.sum(-1, keepdim=True))).squeeze(-1)


def backward_ok(q, k, v, out, lse, d_out, is_causal=False):
    with torch.enable_grad():
        q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        o = flash_ok(q2, k2, v2, is_causal, 8, 8)[0]
        return torch.autograd.grad(o, (q2, k2, v2), d_out)



def _backward(q, k, v, out, lse, d_out, is_causal, drop_d=False, drop_mask=False, mask_after_exp=False, block=8):
    """A tiled backward with switches for three classic mistakes."""
    nq, nk, scale = q.shape[-2], k.shape[-2], 1 / math.sqrt(q.shape[-1])
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    D = torch.zeros_like(lse) if drop_d else (d_out * out).sum(-1)
    for qs in range(0, nq, block):
        for ks in range(0, nk, block):
            qb, kb, vb, do = q[..., qs:qs + block, :], k[..., ks:ks + block, :], v[..., ks:ks + block, :], d_out[..., qs:qs + block, :]
            s = qb @ kb.transpose(-2, -1) * scale - lse[..., qs:qs + block, None]
            i = torch.arange(qs, qs + qb.shape[-2])[:, None] + nk - nq
            allowed = torch.arange(ks, ks + kb.shape[-2])[None, :] <= i
            if is_causal and not drop_mask and not mask_after_exp:
                s = s.masked_fill(~allowed, float("-inf"))
            p = torch.exp(s)
            if is_causal and mask_after_exp:
                p = p * allowed  # exp of a masked score may already be inf: inf * 0 = NaN
            dv[..., ks:ks + block, :] += p.transpose(-2, -1) @ do
            ds = p * (do @ vb.transpose(-2, -1) - D[..., qs:qs + block, None])
            dq[..., qs:qs + block, :] += ds @ kb * scale
            dk[..., ks:ks + block, :] += ds.transpose(-2, -1) @ qb * scale
    return dq, dk, dv


def window_ok(n_q, n_k, window):
    i = torch.arange(n_q)[:, None] + n_k - n_q
    j = torch.arange(n_k)[None, :]
    return (j <= i) & (i - j < window)


def linear_ok(q, k, v, causal=False):
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    if not causal:
        return torch.einsum("...nd,...de->...ne", fq, fk.transpose(-2, -1) @ v) / (fq @ fk.sum(-2)[..., None])
    nq, nk = q.shape[-2], k.shape[-2]
    outs = [torch.zeros(*q.shape[:-2], v.shape[-1], dtype=q.dtype)] * max(nq - nk, 0)  # queries before every key
    state = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1], dtype=q.dtype)
    norm = torch.zeros(*q.shape[:-2], q.shape[-1], dtype=q.dtype)
    for t in range(nk):  # the RNN form: add key t, then read the query at position t (if there is one)
        state = state + fk[..., t, :, None] * v[..., t, None, :]
        norm = norm + fk[..., t, :]
        i = t + nq - nk
        if i >= 0:
            outs.append((fq[..., i, None, :] @ state).squeeze(-2) / (fq[..., i, :] * norm).sum(-1, keepdim=True))
    return torch.stack(outs, -2)


CORRECT = [("online_softmax", online_ok), ("flash_attention_forward", flash_ok),
           ("flash_attention_backward", lambda q, k, v, o, l, d, is_causal=False: _backward(q, k, v, o, l, d, is_causal)),
           ("flash_attention_backward", backward_ok),
           ("sliding_window_mask", window_ok), ("linear_attention", linear_ok)]

WRONG = [
    ("online_softmax", online_no_rescale, "not rescaled"),
    ("online_softmax", lambda x, b: (torch.softmax(x, -1), x.amax(-1), torch.ones(x.shape[:-1])), "calls"),
    ("online_softmax", lambda x, b: online_ok(x, b)[:2], "three tensors"),
    ("flash_attention_forward", flash_base2, "base 2"),
    ("flash_attention_forward", flash_ignores_causal, "is_causal was ignored"),
    ("flash_attention_forward", flash_materialises, "score matrix"),
    ("flash_attention_forward", lambda q, k, v, is_causal=False, block_q=64, block_k=64:
        (F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), None), "calls"),
    ("flash_attention_backward", lambda q, k, v, o, l, d, is_causal=False: _backward(q, k, v, o, l, d, is_causal, drop_d=True),
     "rowsum"),
    ("flash_attention_backward", lambda q, k, v, o, l, d, is_causal=False: _backward(q, k, v, o, l, d, is_causal, drop_mask=True),
     "ignored in the backward"),
    ("flash_attention_backward", lambda q, k, v, o, l, d, is_causal=False: _backward(q, k, v, o, l, d, is_causal,
                                                                                     mask_after_exp=True), "before exp"),
    ("flash_attention_backward", lambda q, k, v, o, l, d, is_causal=False: _backward(q, k, v, o, l, d, is_causal)[:2],
     "(dq, dk, dv)"),
    ("sliding_window_mask", lambda nq, nk, w: window_ok(nq, nk, w + 1), "off by one"),
    ("sliding_window_mask", lambda nq, nk, w: window_ok(nq, nk, 10**6), "ignored"),
    ("sliding_window_mask", lambda nq, nk, w: (torch.arange(nk)[None] <= torch.arange(nq)[:, None])
     & (torch.arange(nq)[:, None] - torch.arange(nk)[None] < w), "top left"),
    ("linear_attention", lambda q, k, v, causal=False: (lambda fq, fk: fq @ (fk.transpose(-2, -1) @ v))(
        F.elu(q) + 1, F.elu(k) + 1), "normaliser"),
    ("linear_attention", lambda q, k, v, causal=False: linear_ok(q, k, v, not causal), "causal flag"),
    ("linear_attention", lambda q, k, v, causal=False: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, "instead of forming"),
    ("linear_attention", lambda q, k, v, causal=False: (lambda w: w @ v / w.sum(-1, keepdim=True))(
        (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)), "instead of forming"),
]


@pytest.mark.parametrize("name,fn", CORRECT)
def test_checker_accepts(name, fn, capsys):
    CHECKS[name](fn)
    assert capsys.readouterr().out.startswith(f"check_{name} passed")


@pytest.mark.parametrize("name,fn,words", WRONG)
def test_checker_rejects_with_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    assert words in str(info.value).splitlines()[0], str(info.value)


@pytest.mark.parametrize("name", ["online_softmax", "flash_attention_forward", "flash_attention_backward",
                                  "sliding_window_mask", "linear_attention"])
def test_checker_rejects_the_reference(name):
    with pytest.raises(AssertionError, match="calls"):
        CHECKS[name](getattr(attnkit, name))
