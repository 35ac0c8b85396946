"""Triton FlashAttention (notebook 11): forward and backward kernels against float64
references, the autograd Function, input errors, per-GPU choices, and the checker against
known-wrong kernels.

Without a GPU everything runs through Triton's interpreter at tiny sizes (a few hundred
program x block steps per test). Tolerances are relative to the measured error of a plain
PyTorch implementation in the same dtype."""

import math
import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import _triton

_triton.prepare()  # before the kernels below are defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnkit import triton_flash as tf  # noqa: E402
from attnkit.checks import CHECKS  # noqa: E402

DEV = _triton.device()
GPU = DEV.type == "cuda"


def rand(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEV)


def reference(q, k, v, causal):
    """Attention in q's dtype with the contract's semantics: bottom-right causal, rows that see
    no key give zeros and lse = -inf. In float64 it is the reference; in float16 the 'plain
    implementation' whose error sets the tolerance."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if causal:
        nq, nk = s.shape[-2:]
        allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)  # (Nq, Nk)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s.float() if s.dtype == torch.float16 else s, -1)  # (B, H, Nq)
    p = torch.exp(s - lse.to(s.dtype).unsqueeze(-1)).nan_to_num(0.0)
    return p @ v, lse


def assert_close_to_float64(got, q, k, v, causal, what=0, factor=4.0):
    """``got`` (out or lse) at most ``factor`` x as far from float64 as a plain implementation in q's dtype."""
    want = reference(q.double(), k.double(), v.double(), causal)[what]
    plain = reference(q, k, v, causal)[what]
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got.cpu()), finite), "-inf / NaN where the reference has none"
    err = (got.cpu().double() - want)[finite].abs().max().item() if finite.any() else 0.0
    plain_err = (plain.double() - want)[finite].abs().max().item() if finite.any() else 0.0
    floor = 4 * torch.finfo(q.dtype).eps
    assert err <= factor * plain_err + floor, (err, plain_err)


SHAPES = [  # (B, H, Nq, Nk, d): ragged lengths, d not a power of two, Nq != Nk both ways
    (1, 2, 19, 19, 16), (2, 1, 33, 33, 40), (1, 1, 12, 40, 16), (1, 1, 40, 12, 16), (1, 1, 1, 23, 24),
]
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
              not GPU, reason="Triton's CPU interpreter computes bfloat16 tl.dot wrongly; bf16 needs a GPU (sm_80+)"))]


# ---------------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,Nq,Nk,d", SHAPES)
def test_forward_matches_float64(g, B, H, Nq, Nk, d, causal, dtype):
    q, k, v = rand(g, B, H, Nq, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype)
    out, lse = tf.triton_flash_forward(q, k, v, causal)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, H, Nq) and lse.dtype == torch.float32
    assert_close_to_float64(out, q, k, v, causal, what=0)
    assert_close_to_float64(lse, q, k, v, causal, what=1)


def test_forward_agrees_with_attnkit_flash_and_sdpa(g):
    q, k, v = rand(g, 1, 2, 24, 32), rand(g, 1, 2, 24, 32), rand(g, 1, 2, 24, 32)
    out, lse = tf.triton_flash_forward(q, k, v, is_causal=True)
    ref_out, ref_lse = attnkit.flash_attention_forward(q.cpu(), k.cpu(), v.cpu(), is_causal=True, block_q=8, block_k=8)
    sdpa = F.scaled_dot_product_attention(q.cpu(), k.cpu(), v.cpu(), is_causal=True)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.cpu(), ref_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu(), sdpa, rtol=1e-5, atol=1e-5)


def test_rows_that_see_no_key_give_zeros_and_minus_inf(g):
    """Causal with more queries than keys: the first Nq - Nk queries sit before every key."""
    q, k, v = rand(g, 1, 1, 20, 16), rand(g, 1, 1, 5, 16), rand(g, 1, 1, 5, 16)
    out, lse = tf.triton_flash_forward(q, k, v, is_causal=True)
    assert torch.all(out[..., :15, :] == 0) and torch.all(torch.isneginf(lse[..., :15]))
    assert torch.isfinite(out).all() and torch.isfinite(lse[..., 15:]).all()


def test_masked_keys_do_not_influence_outputs(g):
    """Changing keys/values in the causal future of every query leaves the output unchanged."""
    q, k, v = rand(g, 1, 1, 17, 16), rand(g, 1, 1, 17, 16), rand(g, 1, 1, 17, 16)
    out, _ = tf.triton_flash_forward(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 9:, :] = 1e4
    v2[..., 9:, :] = -1e4  # finite: like SDPA, 0 * NaN in P @ V would still be NaN
    out2, _ = tf.triton_flash_forward(q, k2, v2, is_causal=True)
    torch.testing.assert_close(out2[..., :9, :], out[..., :9, :], rtol=0, atol=0)


def test_strided_inputs(g):
    """(B, N, H, d) memory viewed as (B, H, N, d): the kernel follows strides, no copy needed."""
    x = rand(g, 1, 21, 2, 3, 16)  # (B, N, H, {q,k,v}, d)
    q, k, v = (x[..., i, :].transpose(1, 2) for i in range(3))  # (B, H, N, d), not contiguous
    out, lse = tf.triton_flash_forward(q, k, v, is_causal=True)
    want, want_lse = tf.triton_flash_forward(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# backward

def _naive_grads(q, k, v, d_out, causal):
    q, k, v = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        nq, nk = s.shape[-2:]
        s = s.masked_fill(torch.arange(nk)[None, :] > torch.arange(nq)[:, None] + nk - nq, float("-inf"))
    out = torch.softmax(s, -1).nan_to_num(0.0) @ v
    return torch.autograd.grad(out, (q, k, v), d_out.cpu().double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,H,Nq,Nk,d,causal", [(1, 2, 19, 19, 16, True), (1, 1, 33, 33, 40, False),
                                                (1, 1, 12, 40, 16, True), (1, 1, 40, 12, 16, True)])
def test_backward_matches_autograd_of_float64_attention(g, B, H, Nq, Nk, d, causal, dtype):
    q, k, v = rand(g, B, H, Nq, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype)
    d_out = rand(g, B, H, Nq, d, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    tf.TritonFlashAttention.apply(*leaves, causal).backward(d_out)
    want = _naive_grads(q, k, v, d_out, causal)
    # the plain implementation in this dtype: autograd through attention in float32 / float16
    plain = [t.clone().float().requires_grad_() if dtype == torch.float16 else t.clone().requires_grad_()
             for t in (q, k, v)]
    s = plain[0] @ plain[1].transpose(-2, -1) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.arange(Nk)[None, :] > torch.arange(Nq)[:, None] + Nk - Nq, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    (p.to(dtype) @ plain[2].to(dtype)).backward(d_out)
    for name, leaf, ref, pl in zip("qkv", leaves, want, plain):
        assert leaf.grad.dtype == dtype and leaf.grad.shape == leaf.shape
        err = (leaf.grad.double() - ref).abs().max().item()
        plain_err = (pl.grad.to(dtype).double() - ref).abs().max().item()
        assert err <= 4 * plain_err + 8 * torch.finfo(dtype).eps * ref.abs().max().item(), (name, err, plain_err)


def test_function_takes_any_leading_dims_and_saves_lse(g):
    q, k, v = (rand(g, 3, 18, 16).requires_grad_() for _ in range(3))  # (H, N, d): no batch dim
    out = tf.TritonFlashAttention.apply(q, k, v, True)
    assert out.shape == q.shape
    assert out.grad_fn.saved_tensors[-1].shape == (3, 18)  # the log-sum-exp (..., N)
    out.sum().backward()
    want = _naive_grads(q, k, v, torch.ones_like(out), True)
    for leaf, ref in zip((q, k, v), want):
        torch.testing.assert_close(leaf.grad.double(), ref, rtol=1e-4, atol=1e-5)


def test_fully_masked_rows_have_zero_gradients(g):
    q, k, v = (rand(g, 1, 1, n, 16).requires_grad_() for n in (20, 5, 5))
    out = tf.TritonFlashAttention.apply(q, k, v, True)
    out.sum().backward()
    assert torch.all(q.grad[..., :15, :] == 0)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# ---------------------------------------------------------------------------------------------
# bad input, per-GPU choices, lazy export

@pytest.mark.parametrize("make,error,words", [
    (lambda: (torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.zeros(2, 4, 8)), ValueError, "4 dimensions"),
    (lambda: (torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16)), ValueError, "head dim"),
    (lambda: (torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 6, 8)), ValueError, "Nk"),
    (lambda: (torch.zeros(1, 2, 4, 8), torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 4, 8)), ValueError, "(B, H)"),
    (lambda: (torch.zeros(1, 1, 4, 256), torch.zeros(1, 1, 4, 256), torch.zeros(1, 1, 4, 256)), ValueError, "256"),
    (lambda: (torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8).half(), torch.zeros(1, 1, 4, 8)), TypeError, "dtypes"),
    (lambda: (torch.zeros(1, 1, 4, 8, dtype=torch.float64),) * 3, TypeError, "float64"),
    (lambda: (torch.zeros(1, 1, 0, 8),) * 3, ValueError, "empty"),
])
def test_bad_input_is_named(make, error, words):
    q, k, v = (t.to(DEV) for t in make())
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        tf.triton_flash_forward(q, k, v)


@pytest.mark.skipif(GPU, reason="the interpreter's bf16 refusal")
def test_bfloat16_is_refused_under_the_interpreter_with_the_reason():
    x = torch.zeros(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="interpreter"):
        tf.triton_flash_forward(x, x, x)


def test_bfloat16_on_a_t4_names_the_gpu(monkeypatch):
    monkeypatch.setattr(tf._triton, "capability", lambda: (7, 5))
    monkeypatch.setattr(tf._triton, "device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    x = torch.zeros(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"Tesla T4 \(sm_75\).*float16"):
        tf.triton_flash_forward(x, x, x)


def test_per_gpu_configurations():
    for kernel in ("forward", "dkdv", "dq"):
        t4 = tf.configs(kernel, 75, 64)
        assert all(c["num_stages"] <= 2 for c in t4)
        assert tf.configs(kernel, 80, 64) != t4 and tf.configs(kernel, 80, 64) != tf.configs(kernel, 80, 128)
        assert tf.configs(kernel, 90, 128, torch.float32) == tf.configs(kernel, 75, 128)  # fp32: FMA tiles
    with pytest.raises(ValueError, match="unknown kernel"):
        tf.configs("sideways", 80)


@pytest.mark.parametrize("cap,n_all", [((7, 5), 2), ((9, 0), 7)])
def test_gpu_autotuner_prunes_to_the_bucket(monkeypatch, cap, n_all):
    """What a GPU import builds (no GPU needed to build it): every tile of this GPU registered,
    pruned per launch to the head-dim bucket and dtype (sm_90: 2 FMA tiles, 4 for d <= 64 and 3 for d = 128,
    two of them shared)."""
    monkeypatch.setattr(tf._triton, "capability", lambda: cap)
    tuner = tf._tuned("forward")
    assert len(tuner.configs) == n_all
    cc = cap[0] * 10 + cap[1]
    for d, precision, dtype in [(40, "tf32", torch.float16), (128, "tf32", torch.bfloat16), (64, "ieee", torch.float32)]:
        kept = tuner.early_config_prune(tuner.configs, {}, HEAD_DIM=d, DOT_PRECISION=precision)
        want = tf.configs("forward", cc, d, dtype)
        assert sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept) == \
            sorted(tuple(c.values()) for c in want)


def test_lazy_exports():
    assert attnkit.triton_flash_forward is tf.triton_flash_forward
    assert attnkit.TritonFlashAttention is tf.TritonFlashAttention
    assert {"triton_flash_forward", "TritonFlashAttention"} <= set(dir(attnkit)) & set(attnkit.__all__)
    # that `import attnkit` does not import triton is checked in a fresh process by test_triton_compile.py


# ---------------------------------------------------------------------------------------------
# the checker: a learner's kernel passes; known-wrong kernels get their hint

@triton.jit
def _learner_kernel(Q, K, V, O, LSE, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, H, N, sm_scale,
                    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    IS_CAUSAL: tl.constexpr, RESCALE: tl.constexpr = True, SCALE: tl.constexpr = True,
                    LOG2E_FOLDED: tl.constexpr = True, CAUSAL_MASK: tl.constexpr = True,
                    LSE_NATURAL: tl.constexpr = True, LSE_WITH_SUM: tl.constexpr = True,
                    KEY_MASK: tl.constexpr = True, LOAD_MASK: tl.constexpr = True):
    """A plain single-loop kernel (every block masked), with a switch for each classic mistake."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols0 = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :],
                mask=(rows[:, None] < N) & (dims[None, :] < D), other=0.0)
    scale = sm_scale if SCALE else 1.0
    if LOG2E_FOLDED:
        scale = scale * 1.4426950408889634
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + cols0
        if LOAD_MASK:
            kv_mask = (cols[:, None] < N) & (dims[None, :] < D)
        else:
            kv_mask = dims[None, :] < D
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        if KEY_MASK:
            s = tl.where(cols[None, :] < N, s, float("-inf"))
        if IS_CAUSAL and CAUSAL_MASK:
            s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m - m_safe)
        if RESCALE:
            l = l * alpha
            acc = acc * alpha[:, None]
        l = l + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(O + b * sob + h * soh + rows[:, None] * son + dims[None, :], out.to(O.dtype.element_ty),
             mask=(rows[:, None] < N) & (dims[None, :] < D))
    lse = m + tl.log2(l) if LSE_WITH_SUM else m
    if LSE_NATURAL:
        lse = lse * 0.6931471805599453
    tl.store(LSE + bh * N + rows, lse, mask=rows < N)


def learner(**mistakes):
    def triton_flash_forward(q, k, v, is_causal=False):
        """The launcher a learner is given: one program per (query block, batch x head)."""
        B, H, N, d = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
        block = 16 if not GPU else 64
        _learner_kernel[(triton.cdiv(N, block), B * H)](
            q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), H, N,
            1 / math.sqrt(d), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=block, BLOCK_N=block,
            IS_CAUSAL=is_causal, **mistakes)
        return out, lse
    triton_flash_forward.__name__ = "_".join(["learner", *(k.lower() for k in mistakes)]) or "learner"
    return triton_flash_forward


def torch_wrapper(q, k, v, is_causal=False):
    """Attention in PyTorch, one query row at a time, with no banned name and no (N, N) tensor:
    only the kernel-launch count can tell."""
    outs, lses = [], []
    for i in range(q.shape[-2]):
        s = (q[..., i:i + 1, :] * k).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, N)
        if is_causal:
            s = s.masked_fill(torch.arange(k.shape[-2], device=s.device) > i, float("-inf"))
        m = s.amax(-1, keepdim=True)
        e = math.e ** (s - m)
        outs.append((e.unsqueeze(-1) * v).sum(-2) / e.sum(-1, keepdim=True))
        lses.append(m.squeeze(-1) + e.sum(-1).log())
    return torch.stack(outs, -2), torch.stack(lses, -1)


# (exercise, correct implementation written differently from attnkit's), as tests/test_checks.py counts them
CORRECT = [("triton_flash_forward", learner())]


def test_checker_accepts_a_learner_kernel(capsys):
    CHECKS["triton_flash_forward"](CORRECT[0][1])
    assert capsys.readouterr().out.startswith("check_triton_flash_forward passed")


MISTAKES = [
    (dict(RESCALE=False), "not rescaled"),
    (dict(SCALE=False), "1/sqrt(d)"),
    (dict(LOG2E_FOLDED=False), "exp2 without log2(e)"),
    (dict(CAUSAL_MASK=False), "is_causal was ignored"),
    (dict(LSE_NATURAL=False), "base 2"),
    (dict(LSE_WITH_SUM=False), "running max"),
    (dict(KEY_MASK=False), "keys past the end"),
    (dict(LOAD_MASK=False), "read past the end"),
]
# (exercise, known-wrong implementation, words of its hint), as tests/test_checks.py counts them
WRONG = [("triton_flash_forward", learner(**mistakes), words) for mistakes, words in MISTAKES]


@pytest.mark.parametrize("name,fn,words", WRONG, ids=[next(iter(m)) for m, _ in MISTAKES])
def test_checker_rejects_wrong_kernels_with_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    assert words in str(info.value).splitlines()[0], str(info.value)


@pytest.mark.parametrize("fn,words", [
    (torch_wrapper, "no Triton kernel was launched"),
    (lambda q, k, v, is_causal=False: (F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), None), "calls"),
    (lambda q, k, v, is_causal=False: tf.triton_flash_forward(q, k, v, is_causal), "calls"),
    (lambda q, k, v, is_causal=False: learner()(q, k, v, is_causal)[0], "(out, lse)"),
])
def test_checker_refuses_shortcuts(fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS["triton_flash_forward"](fn)
    assert words in str(info.value).splitlines()[0], str(info.value)


@triton.jit
def _learner_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                       H, N, sm_scale, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, USE_DELTA: tl.constexpr = True,
                       SCALE: tl.constexpr = True, LSE_TO_BASE2: tl.constexpr = True, CAUSAL_MASK: tl.constexpr = True):
    """The notebook's stretch exercise, plainly, with a switch for each classic mistake."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask = (rows[:, None] < N) & (dims[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :], mask=row_mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + dims[None, :], mask=row_mask, other=0.0)
    lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0.0)
    if LSE_TO_BASE2:
        lse = lse * 1.4426950408889634
    delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0.0)
    if not USE_DELTA:
        delta = delta * 0.0
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + dims[None, :], mask=kv_mask, other=0.0)
        p = tl.exp2(tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634) - lse[:, None])
        keep = cols[None, :] < N
        if IS_CAUSAL and CAUSAL_MASK:
            keep = keep & (cols[None, :] <= rows[:, None])
        p = tl.where(keep, p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    if SCALE:
        dq = dq * sm_scale
    tl.store(DQ + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :], dq.to(DQ.dtype.element_ty), mask=row_mask)


def learner_dq(**mistakes):
    def triton_flash_dq(q, k, v, out, lse, d_out, is_causal=False):
        B, H, N, d = q.shape
        delta = (d_out.float() * out.float()).sum(-1).contiguous()  # (B, H, N)
        dq = torch.empty_like(q)
        block = 16 if not GPU else 64
        _learner_dq_kernel[(triton.cdiv(N, block), B * H)](
            q, k, v, d_out, lse.contiguous(), delta, dq, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
            k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), d_out.stride(0), d_out.stride(1),
            d_out.stride(2), H, N, 1 / math.sqrt(d), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_M=block, BLOCK_N=block, IS_CAUSAL=is_causal, **mistakes)
        return dq
    return triton_flash_dq


def test_dq_checker_accepts_a_learner_kernel(capsys):
    from attnkit.checks import NOTEBOOK_CHECKS
    NOTEBOOK_CHECKS["triton_flash_dq"](learner_dq())
    assert capsys.readouterr().out.startswith("check_triton_flash_dq passed")


@pytest.mark.parametrize("fn,words", [
    (learner_dq(USE_DELTA=False), "delta term is missing"),
    (learner_dq(SCALE=False), "1/sqrt(d)"),
    (learner_dq(LSE_TO_BASE2=False), "natural-log lse"),
    (learner_dq(CAUSAL_MASK=False), "is_causal was ignored"),
    (lambda q, k, v, out, lse, d_out, is_causal=False: tf.triton_flash_backward(q, k, v, out, lse, d_out, is_causal)[0],
     "calls"),
], ids=["no-delta", "no-scale", "lse-base", "causal", "library"])
def test_dq_checker_rejects_wrong_kernels_with_hint(fn, words):
    from attnkit.checks import NOTEBOOK_CHECKS
    with pytest.raises(AssertionError) as info:
        NOTEBOOK_CHECKS["triton_flash_dq"](fn)
    assert words in str(info.value).splitlines()[0], str(info.value)


def test_checkers_report_a_stub_kernel_as_not_implemented():
    @triton.jit
    def stub(X):
        raise NotImplementedError()

    def fn(q, k, v, is_causal=False):
        stub[(1,)](q)
        return q, q

    with pytest.raises(AssertionError, match="not implemented yet"):
        CHECKS["triton_flash_forward"](fn)


# ---------------------------------------------------------------------------------------------
# the GPU benchmark script: its plumbing through the interpreter, its refusal without a GPU

def _bench():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "triton_bench.py"
    spec = importlib.util.spec_from_file_location("triton_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(GPU, reason="the interpreter smoke run is for machines without a GPU")
def test_bench_script_runs_tiny_through_the_interpreter(tmp_path):
    result = _bench().main(["--interpret", "--tiny", "--n", "32", "--causal", "yes", "--out", str(tmp_path)])
    rows = result["rows"] + result["cs336"]
    assert {r["provider"] for r in rows} == {"triton", "sdpa"} and {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["tflops"] == pytest.approx(2 * r["B"] * r["H"] * r["N"] ** 2 * r["d"]
                                            * (3.5 if r["mode"] == "fwd+bwd" else 1) / (r["ms"] * 1e9))
        assert r["max_abs_diff_vs_sdpa"] < 2e-3  # float16 vs SDPA
    md = (tmp_path / "triton-bench-interpreter-tiny.md").read_text()
    assert "| fwd | float16 | yes | 16 | 32 |" in md and "CS336" in md and result["device"] in md


@pytest.mark.skipif(GPU, reason="there is a GPU")
def test_bench_script_without_a_gpu_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit, match="(?s)no CUDA GPU.*--interpret --tiny"):
        _bench().main(["--tiny"])
