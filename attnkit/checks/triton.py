"""Checker for notebook 11's exercise: FlashAttention's forward pass written as a Triton kernel.

The learner's ``triton_flash_forward(q, k, v (B, H, N, d), is_causal=False) -> (out, lse)``
must launch a Triton kernel (a wrapper around PyTorch or SDPA launches none) and may not do
the attention arithmetic in PyTorch. Cases go from easy to awkward (a power-of-two length,
causal, float16, a head dim that is not a power of two, ragged lengths), so the first failing
case already says which part is missing. Known kernel bugs are recognised by recomputing,
in float64, what the buggy kernel returns for every block size it might have picked: an
accumulator that is never rescaled, no ``1/sqrt(d)``, ``exp2`` without ``log2(e)``, the causal
flag ignored, ``lse`` in base 2 or without ``log(l)``, padding keys past ``N`` left in the
softmax. Inputs are followed in memory by NaN, so a load that runs past the end shows up.

Tolerances are relative to the measured error of a plain PyTorch implementation in the same
dtype (a kernel may be a few times further from float64 than that, as in FlashAttention's
own tests).
"""

from __future__ import annotations

import math

import torch

from .. import _triton
from ..masks import causal_mask
from ._harness import TOLERANCE, Ban, Checker, gen, randn
from .basics import ATTENTION_ATEN, ATTENTION_FUNCTIONS, SOFTMAX_ATEN, SOFTMAX_FUNCTIONS

BLOCKS = (16, 32, 64, 128)  # the key-block sizes a kernel might pick
SLACK = 128 * 128  # elements of NaN after every input: a load past the end reads NaN, never foreign memory
TORCH_MATH = {name: None for name in (
    "torch.exp", "torch.Tensor.exp", "torch.exp2", "torch.Tensor.exp2", "torch.special.exp2",
    "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp",
    "torch.matmul", "torch.Tensor.matmul", "torch.Tensor.__matmul__", "torch.bmm", "torch.Tensor.bmm",
    "torch.einsum", "torch.baddbmm")}
HINT = "Do the scores, the online softmax and P @ V inside your @triton.jit kernel; the wrapper only allocates and launches."

NO_KERNEL_HINT = ("no Triton kernel was launched: this exercise is the kernel itself. Launch yours with "
                  "kernel[grid](...) from triton_flash_forward")
RESCALE_HINT = ("the accumulator was not rescaled: when the running max grows from m to m_new, multiply acc "
                "(and l) by alpha = exp2(m - m_new) before adding this block's p @ v")
SCALE_HINT = "the scores are not scaled by 1/sqrt(d): multiply q k^T by sm_scale = 1/sqrt(d)"
EXP2_HINT = ("exp2 without log2(e): tl.exp2(x) is 2**x, so fold log2(e) = 1.4427 into the scale "
             "(qk_scale = sm_scale * 1.4427) to get e**x")
CAUSAL_HINT = "is_causal was ignored: set the scores of keys after each query to -inf (cols <= rows)"
LSE_BASE2_HINT = ("lse is in base 2: the kernel's m and log2(l) live in base 2; multiply m + log2(l) by ln(2) "
                  "to return the natural-log lse the contract asks for")
LSE_MAX_HINT = "lse is only the running max; the log-sum-exp is m + log(l), with the running sum l"
PADDING_HINT = ("keys past the end of the sequence took part in the softmax: the last key block is ragged, "
                "so set scores of cols >= N to -inf (and load k, v with mask=cols < N, other=0)")
RESCALE_L_HINT = ("the running sum l was not rescaled: when the running max grows from m to m_new, multiply l by "
                  "alpha = exp2(m - m_new) too, as you do acc, before adding this block's row sums")
STRICT_HINT = ("the causal mask is strict (cols < rows): each query may attend to itself, so keep the keys with "
               "cols <= rows")
EXP_LOG2E_HINT = ("tl.exp with log2(e) folded into the scale: log2(e) belongs with tl.exp2 (exp2(x * log2(e)) = e**x); "
                  "with tl.exp scale the scores by sm_scale alone")
NO_DIVIDE_HINT = ("the output was not divided by l: after the loop out = acc / l[:, None] (acc holds the weighted "
                  "sum of values, l the sum of the weights)")
LSE_NO_MAX_HINT = ("lse is log(l) without the running max: the log-sum-exp is m + log(l), the max the exponentials "
                   "were shifted by plus the log of their sum")
BLOCK_D_SCALE_HINT = ("the scores are scaled by 1/sqrt(BLOCK_D) = 1/sqrt({block}), the padded block width: the scale "
                      "is 1/sqrt(d) with the true head dim d = {d}")
NAN_HINT = ("NaN in the output: a tl.load read past the end of q, k or v (this checker puts NaN there; on a GPU "
            "it is whatever memory follows). Give every load a mask (rows/cols < N, offs_d < d) and other=0.0")
RAGGED_HINT = ("right when N is a multiple of the block size, wrong here: mask the loads (other=0), the scores "
               "(-inf for cols >= N) and the stores (rows < N) of the last, partial block")
HEAD_DIM_HINT = ("right for power-of-two head dims, wrong for d = 40: BLOCK_D is padded to 64, so mask "
                 "offs_d < d on every load and on the store, and scale by 1/sqrt(40), not 1/sqrt(64)")


def _slack(x: torch.Tensor) -> torch.Tensor:
    """The same values, contiguous, followed in memory by SLACK NaNs."""
    from ._triton import padded  # imports triton: only when a check runs
    return padded(x, SLACK, float("nan"))


def _scores(q, k, causal, scale):
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2]).to(s.device), float("-inf"))
    return s


def naive(q, k, v, causal, scale=None):
    """Plain attention in the inputs' dtype: ``(out, lse)``. In float64 it is the reference."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, causal, scale)
    lse = torch.logsumexp(s, -1)  # (B, H, Nq)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    return p @ v, lse


def _no_rescale(q, k, v, causal, block_n):
    """Kernels that skip part of the rescale when the running max grows: ``(output, hint)`` for an
    accumulator never rescaled (with l rescaled, and with neither), and for l never rescaled."""
    scale = 1 / math.sqrt(q.shape[-1])
    s = _scores(q, k, causal, scale)
    nk = k.shape[-2]
    m = s.new_full(s.shape[:-1], float("-inf"))
    l_ok, l_stale = s.new_zeros(s.shape[:-1]), s.new_zeros(s.shape[:-1])
    acc, acc_ok = q.new_zeros(*s.shape[:-1], v.shape[-1]), q.new_zeros(*s.shape[:-1], v.shape[-1])
    for start in range(0, nk, block_n):
        blk = s[..., start:start + block_n]
        m_new = torch.maximum(m, blk.amax(-1))
        shift = m_new.nan_to_num(neginf=0.0)
        p = torch.exp(blk - shift.unsqueeze(-1))
        alpha = torch.exp(m - shift)
        l_ok = l_ok * alpha + p.sum(-1)
        l_stale = l_stale + p.sum(-1)
        acc = acc + p @ v[..., start:start + block_n, :]
        acc_ok = acc_ok * alpha.unsqueeze(-1) + p @ v[..., start:start + block_n, :]
        m = m_new
    return [(acc / l_ok.clamp_min(1e-300).unsqueeze(-1), RESCALE_HINT),
            (acc / l_stale.clamp_min(1e-300).unsqueeze(-1), RESCALE_HINT),
            (acc_ok / l_stale.clamp_min(1e-300).unsqueeze(-1), RESCALE_L_HINT)]


def _strict(q, k, v):
    """Attention under a strict causal mask (keys j < i): the first query sees no key (zeros, lse -inf)."""
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(-1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0) @ v, lse


def _padded_keys(q, k, v, causal, block_n):
    """Keys and values padded with zeros to a multiple of ``block_n``, padding left unmasked."""
    nk = k.shape[-2]
    pad = (-nk) % block_n
    kp = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], -2)
    vp = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], -2)
    s = _scores(q, kp, False, 1 / math.sqrt(q.shape[-1]))
    if causal:  # causal on the true positions; the padding sits after every query
        allowed = torch.cat([causal_mask(q.shape[-2], nk), torch.ones(q.shape[-2], pad, dtype=torch.bool)], -1)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse.unsqueeze(-1)) @ vp, lse


def _tolerance(q, k, v, causal, want, want_lse):
    """A few times the error of a plain implementation in q's dtype; the harness's bound at least."""
    if q.dtype == torch.float64:
        return TOLERANCE[torch.float64], TOLERANCE[torch.float64]
    plain, plain_lse = naive(q.cpu(), k.cpu(), v.cpu(), causal)
    finite = torch.isfinite(want_lse)

    def tol(err, floor):
        return dict(rtol=0.0, atol=max(4 * err, floor))

    base = TOLERANCE.get(q.dtype, TOLERANCE[torch.float16])
    err = (plain.double() - want).abs().max().item()
    err_lse = (plain_lse.double() - want_lse)[finite].abs().max().item() if finite.any() else 0.0
    return tol(err, base["atol"] + base["rtol"]), tol(err_lse, base["atol"] + base["rtol"] * 8)


def _cases(on_gpu: bool):
    """(label, B, H, N, d, causal, dtype, kind) from easy to awkward. On a GPU: float16 throughout
    (a float32 tl.dot there rounds to TF32 unless told otherwise) and lengths of several 64-wide
    blocks; under the interpreter, 16-wide blocks and lengths that keep it quick."""
    f32 = torch.float16 if on_gpu else torch.float32

    def n(cpu, gpu):
        return gpu if on_gpu else cpu

    return [
        (f"N = {n(48, 256)}, d = 16", 1, 2, n(48, 256), 16, False, f32, "basic"),
        (f"causal, N = {n(48, 256)}, d = 32", 1, 1, n(48, 256), 32, True, f32, "basic"),
        (f"float16, causal, N = {n(32, 128)}, d = 16", 1, 2, n(32, 128), 16, True, torch.float16, "basic"),
        (f"head dim d = 40 (not a power of two), N = {n(32, 128)}", 1, 1, n(32, 128), 40, False, f32, "head_dim"),
        (f"ragged: N = {n(19, 131)}, causal", 1, 2, n(19, 131), 16, True, f32, "ragged"),
        (f"ragged: N = {n(33, 200)}", 1, 1, n(33, 200), 16, False, f32, "ragged"),
    ]


def _call(c: Checker, label: str, *args):
    """``c.call`` through :func:`attnkit.checks._triton.call_kernel` (versions, stubs)."""
    from ._triton import call_kernel  # imports triton: only when a check runs
    return call_kernel(c, label, *args)


def check_triton_flash_forward(fn) -> str:
    """Check ``fn(q, k, v (B, H, N, d), is_causal=False) -> (out (B, H, N, d), lse (B, H, N))``, a Triton kernel."""
    from ._triton import count_launches  # imports triton: only when a check runs

    device = _triton.device()
    c = Checker("triton_flash_forward", fn)
    g = gen(111)
    for label, B, H, N, d, causal, dtype, kind in _cases(device.type == "cuda"):
        with c.case(label):
            c.ban = Ban({**ATTENTION_FUNCTIONS, **SOFTMAX_FUNCTIONS, **TORCH_MATH}, ATTENTION_ATEN + SOFTMAX_ATEN,
                        _reference_functions(), hint=HINT, forbid_shape=(N, N))
            q, k, v = (randn(g, B, H, N, d) for _ in range(3))
            k[..., N // 2:, :] *= 3  # larger scores arrive late: the running max must move
            want, want_lse = naive(q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(), causal)
            q, k, v = (_slack(t.to(dtype).to(device)) for t in (q, k, v))
            with count_launches() as launched:
                got = _call(c, label, q, k, v, causal)
            if not launched:
                c.fail(label, NO_KERNEL_HINT)
            if not (isinstance(got, tuple) and len(got) == 2):
                c.fail(label, "return two tensors: (out, lse)")
            out, lse = got
            if out is None or lse is None:
                c.fail(label, "return two tensors: (out, lse); one of them is None")
            qd, kd, vd = (t.detach().cpu().double() for t in (q, k, v))
            if causal and isinstance(out, torch.Tensor) and out.shape == want.shape and N > 1:
                strict, strict_lse = _strict(qd, kd, vd)  # a strict mask, with or without a guard for row 0
                tol0 = _tolerance(q.cpu(), k.cpu(), v.cpu(), causal, want, want_lse)[0]
                rest = out.detach().cpu()[..., 1:, :]
                if not torch.allclose(rest.double(), want[..., 1:, :], equal_nan=True, **tol0) and \
                        torch.allclose(rest.double(), strict[..., 1:, :], **tol0):
                    c.fail(label, STRICT_HINT)
            for what, t in (("output", out), ("log-sum-exp", lse)):
                if isinstance(t, torch.Tensor) and torch.isnan(t.detach().float()).any():
                    c.fail(label, NAN_HINT if kind != "basic" else
                           f"NaN in the {what}: a row that has seen no key yet has m = -inf, and -inf - (-inf) is NaN; "
                           f"use tl.where(m_new == -inf, 0, m_new) before exp2. Also check that every load is masked")
            tol, tol_lse = _tolerance(q.cpu(), k.cpu(), v.cpu(), causal, want, want_lse)
            otherwise = {"ragged": RAGGED_HINT, "head_dim": HEAD_DIM_HINT}.get(kind)
            s = _scores(qd, kd, causal, 1 / math.sqrt(d))
            m = s.amax(-1)  # (B, H, N) the final running max
            wrong = [(naive(qd, kd, vd, causal, scale=1.0)[0], SCALE_HINT),
                     (naive(qd, kd, vd, causal, scale=math.log(2) / math.sqrt(d))[0], EXP2_HINT),
                     (naive(qd, kd, vd, causal, scale=math.log2(math.e) / math.sqrt(d))[0], EXP_LOG2E_HINT),
                     (want * torch.exp(want_lse - m).nan_to_num(0.0).unsqueeze(-1), NO_DIVIDE_HINT)]
            if d & (d - 1):
                block_d = 1 << (d - 1).bit_length()
                wrong.append((naive(qd, kd, vd, causal, scale=1 / math.sqrt(block_d))[0],
                              BLOCK_D_SCALE_HINT.format(block=block_d, d=d)))
            if causal:
                wrong.append((naive(qd, kd, vd, False)[0], CAUSAL_HINT))
            for bn in BLOCKS:
                if bn < N:
                    wrong += _no_rescale(qd, kd, vd, causal, bn)
                if N % bn:
                    wrong.append((_padded_keys(qd, kd, vd, causal, bn)[0], PADDING_HINT))
            c.expect(label, out, want, what="output", dtype=dtype, tol=tol, wrong=wrong, otherwise=otherwise)
            wrong_lse = [(want_lse / math.log(2), LSE_BASE2_HINT), (m, LSE_MAX_HINT), (m / math.log(2), LSE_MAX_HINT),
                         (want_lse - m, LSE_NO_MAX_HINT), ((want_lse - m) / math.log(2), LSE_NO_MAX_HINT)]
            if causal:
                wrong_lse.append((naive(qd, kd, vd, False)[1], CAUSAL_HINT))
            if not isinstance(lse, torch.Tensor) or lse.dtype not in (torch.float32, dtype):
                c.fail(label, f"lse must be a float32 (or {dtype}) tensor, got "
                              f"{getattr(lse, 'dtype', type(lse).__name__)}")
            c.expect(label, lse.float(), want_lse, what="log-sum-exp", tol=tol_lse, wrong=wrong_lse, otherwise=otherwise)
    return c.passed("causal and not, float16, d = 40, ragged N, a kernel launched, no PyTorch attention")


DQ_NO_DELTA_HINT = ("the delta term is missing: dS = P * (dP - delta) with delta = rowsum(dO * O), one number "
                    "per query row (load it like lse)")
DQ_SCALE_HINT = "dq misses the factor 1/sqrt(d): S = Q K^T / sqrt(d), so dQ = dS K / sqrt(d)"
DQ_LSE_HINT = ("P was rebuilt with exp2 from a natural-log lse: exp2(s * qk_scale - lse) needs lse in base 2 too "
               "(lse * log2(e)), or use exp(s * sm_scale - lse)")
DQ_CAUSAL_HINT = "is_causal was ignored in the backward pass: set P to 0 for keys after each query, as in the forward"
DQ_NO_LSE_HINT = ("P was rebuilt without subtracting lse: P = exp(S * sm_scale - lse) (or exp2 with both in base 2) "
                  "is the softmax the forward pass normalised; exp(S) alone is not")
DQ_SIGN_HINT = "dq has the wrong sign: dS = P * (dP - delta), not P * (delta - dP)"
DQ_V_HINT = ("dq accumulated dS V: S = Q K^T / sqrt(d), so dQ = dS K / sqrt(d) (multiply dS by the key block, "
             "not the value block)")


def _dq(q, k, v, out, lse, d_out, causal, *, delta=True, scale=True, lse_base2=False, mask=True, strict=False,
        sub_lse=True, times_v=False):
    """dQ of attention, recomputed from lse (float64), with switches for known mistakes."""
    sm = 1 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-2, -1)) * sm  # (B, H, N, N)
    live = torch.isfinite(lse)
    lse = torch.where(live, lse, torch.zeros_like(lse)).unsqueeze(-1)
    if not sub_lse:
        lse = torch.zeros_like(lse)
    p = torch.exp2(s * math.log2(math.e) - lse) if lse_base2 else torch.exp(s - lse)  # the mistake: lse left natural
    p = p * live.unsqueeze(-1)
    if causal and mask:
        p = p * (torch.ones(s.shape[-2:], dtype=torch.bool).tril(-1) if strict else causal_mask(*s.shape[-2:]))
    dp = d_out @ v.transpose(-2, -1)
    D = (d_out * out).sum(-1, keepdim=True) if delta else 0.0
    return (p * (dp - D)) @ (v if times_v else k) * (sm if scale else 1.0)


def check_triton_flash_dq(fn) -> str:
    """Check ``fn(q, k, v, out, lse, d_out, is_causal=False) -> dq (B, H, N, d)`` against autograd."""
    from ._triton import count_launches

    device = _triton.device()
    c = Checker("triton_flash_dq", fn)
    g = gen(112)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    big = device.type == "cuda"  # several 64-wide blocks on a GPU
    for label, B, H, N, d, causal in [(f"N = {128 if big else 32}, d = 16", 1, 2, 128 if big else 32, 16, False),
                                      (f"causal, N = {192 if big else 48}, d = 32", 1, 1, 192 if big else 48, 32, True),
                                      (f"ragged: N = {131 if big else 19}, causal", 2, 1, 131 if big else 19, 16, True)]:
        with c.case(label):
            c.ban = Ban({**ATTENTION_FUNCTIONS, **SOFTMAX_FUNCTIONS, **TORCH_MATH}, ATTENTION_ATEN + SOFTMAX_ATEN,
                        _reference_functions(), hint="Rebuild P and accumulate dS K inside your @triton.jit kernel.",
                        forbid_shape=(N, N))
            q, k, v, d_out = (randn(g, B, H, N, d).to(dtype).double() for _ in range(4))
            leaf = q.clone().requires_grad_()
            out64, lse64 = naive(leaf, k, v, causal)
            (want,) = torch.autograd.grad(out64, leaf, d_out)
            out64, lse64 = out64.detach(), lse64.detach()
            args = [_slack(t.to(dtype).to(device)) for t in (q, k, v, out64)]
            args += [lse64.float().to(device).contiguous(), _slack(d_out.to(dtype).to(device))]
            with count_launches() as launched:
                got = _call(c, label, *args, causal)
            if not launched:
                c.fail(label, NO_KERNEL_HINT.replace("triton_flash_forward", "triton_flash_dq"))
            qd, kd, vd, od = (t.detach().cpu().double() for t in args[:4])
            ld, dd = args[4].cpu().double(), args[5].cpu().double()
            plain = _dq(*(t.float() for t in (qd, kd, vd, od, ld, dd)), causal)  # the same inputs, in float32
            err = (plain.double() - want).abs().max().item()
            base = TOLERANCE.get(dtype, TOLERANCE[torch.float16])
            floor = (base["atol"] + base["rtol"]) * (8 if dtype == torch.float16 else 1)  # fp16: dS is rounded for tl.dot
            tol = dict(rtol=floor / 10, atol=max(4 * err, floor))  # P can be large where a mistake unmasks it
            if isinstance(got, torch.Tensor) and torch.isnan(got.detach().float()).any():
                c.fail(label, NAN_HINT)
            wrong = [(_dq(qd, kd, vd, od, ld, dd, causal, delta=False), DQ_NO_DELTA_HINT),
                     (_dq(qd, kd, vd, od, ld, dd, causal, scale=False), DQ_SCALE_HINT),
                     (_dq(qd, kd, vd, od, ld, dd, causal, lse_base2=True), DQ_LSE_HINT)]
            wrong += [(_dq(qd, kd, vd, od, ld, dd, causal, sub_lse=False), DQ_NO_LSE_HINT), (-want, DQ_SIGN_HINT),
                      (_dq(qd, kd, vd, od, ld, dd, causal, times_v=True), DQ_V_HINT)]
            if causal:
                wrong += [(_dq(qd, kd, vd, od, ld, dd, causal, mask=False), DQ_CAUSAL_HINT),
                          (_dq(qd, kd, vd, od, ld, dd, causal, strict=True), STRICT_HINT)]
            c.expect(label, got, want, what="dq", dtype=dtype, tol=tol, wrong=wrong,
                     otherwise=RAGGED_HINT if N % 16 else None)  # ragged for every block size
    return c.passed("causal and not, ragged N, against autograd, a kernel launched")


def _reference_functions():
    """attnkit's own kernels: calling them is not writing one (imported lazily: they import triton)."""
    from .. import flash
    from ..triton_flash import TritonFlashAttention, triton_flash_backward, triton_flash_forward
    return (triton_flash_forward, triton_flash_backward, TritonFlashAttention.forward,
            flash.flash_attention_forward, flash.FlashAttention.forward)
