"""Four small Triton kernels, one idea each: the rungs of a ladder from a vector add to
FlashAttention (the idea of small graded kernel puzzles is Sasha Rush's Triton-Puzzles; Triton
itself is Tillet, Kung and Cox 2019, "Triton: an intermediate language and compiler for tiled
neural network computations").

* :func:`triton_scale_shift` ``(x (n,), scale, shift) -> x * scale + shift``: a **masked load
  and store**. ``n`` is rarely a multiple of the block, so the last program masks its lanes
  past the end; ``x`` may be a strided view, so element ``i`` sits at ``X + i * stride``.
* :func:`triton_row_max` ``(x (M, N)) -> (M,)``: a **row reduction**. A program owns a block of
  rows and reduces along ``axis=1``; the padding lanes of a row are loaded as ``-inf``, the one
  value that cannot win a max (a ``0`` would win every all-negative row).
* :func:`triton_matmul` ``(a (M, K), b (K, N)) -> (M, N)``: a **tiled product with tl.dot**.
  One program per ``BLOCK_M x BLOCK_N`` output tile, a loop over ``K`` in steps of ``BLOCK_K``,
  a float32 accumulator whatever the inputs' dtype. Every block side is at least 16: a GPU's
  ``tl.dot`` needs an inner dimension ``K >= 16`` (tensor-core instructions work on 16-wide
  fragments), so small matrices are padded with masked, zero lanes.
* :func:`triton_attention_tile` ``(q (H, Nq, d), k, v (H, Nk, d)) -> (H, Nq, d)``: attention
  when the whole problem fits **one tile**: one program per head computes the scores
  ``q k^T / sqrt(d)``, a softmax over the keys (padding keys set to ``-inf``, the row max
  subtracted) and ``P v``, all in registers. FlashAttention (notebook 11) is this tile with a
  loop over key blocks and the online softmax.

Arithmetic is float32 whatever the storage dtype (float32, float16; bfloat16 on GPUs of compute
capability 8.0 and later, and for :func:`triton_scale_shift` and :func:`triton_row_max` in the
interpreter too, which handles bfloat16 loads and stores but not a bfloat16 ``tl.dot``). On a
GPU a float32 ``tl.dot`` rounds its inputs to TF32 by default; these kernels ask for IEEE
float32 (``input_precision="ieee"``) so that their float32 results match PyTorch's.

Imported lazily (``attnkit.triton_matmul`` ...), so ``import attnkit`` never imports Triton; it
calls :func:`attnkit._triton.prepare` before defining the kernels, so without a GPU they run in
Triton's interpreter.
"""

from __future__ import annotations

import math

import torch

from . import _triton
from . import _validate as chk

_triton.prepare()  # before any @triton.jit: choose the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TILE_MAX = 64  # the largest sequence length and head dim triton_attention_tile takes: one tile


@triton.jit
def _scale_shift_kernel(X, Y, n, stride_x, scale, shift, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) the elements this program owns
    mask = offs < n  # the last program runs past the end
    x = tl.load(X + offs * stride_x, mask=mask).to(tl.float32)
    tl.store(Y + offs, (x * scale + shift).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _row_max_kernel(X, Y, M, N, stride_xm, stride_xn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_ok = rows < M
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max per row
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        mask = row_ok[:, None] & (cols[None, :] < N)  # (BLOCK_M, BLOCK_N)
        x = tl.load(X + rows[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask,
                    other=float("-inf")).to(tl.float32)  # padding lanes cannot win the max
        m = tl.maximum(m, tl.max(x, axis=1))  # reduce along the row
    tl.store(Y + rows, m.to(Y.dtype.element_ty), mask=row_ok)


@triton.jit
def _matmul_kernel(A, B, C, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of C
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of C
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)  # float32 whatever the inputs
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        a = tl.load(A + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)  # (BLOCK_M, BLOCK_K)
        b = tl.load(B + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision="ieee")  # zero padding adds nothing
    tl.store(C + rows[:, None] * stride_cm + cols[None, :] * stride_cn, acc.to(C.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit
def _attention_tile_kernel(Q, K, V, O, Nq, Nk, stride_qh, stride_qn, stride_qd, stride_kh, stride_kn, stride_kd,
                           stride_vh, stride_vn, stride_vd, stride_oh, stride_on, stride_od, sm_scale,
                           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    h = tl.program_id(0)  # one program per head
    rows = tl.arange(0, BLOCK_M)  # (BLOCK_M,) queries
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,) keys
    dims = tl.arange(0, BLOCK_D)  # (BLOCK_D,) head-dim lanes, the first HEAD_DIM real
    dim_ok = dims[None, :] < HEAD_DIM
    q = tl.load(Q + h * stride_qh + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
                mask=(rows[:, None] < Nq) & dim_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
    k = tl.load(K + h * stride_kh + cols[:, None] * stride_kn + dims[None, :] * stride_kd,
                mask=(cols[:, None] < Nk) & dim_ok, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + h * stride_vh + cols[:, None] * stride_vn + dims[None, :] * stride_vd,
                mask=(cols[:, None] < Nk) & dim_ok, other=0.0)  # (BLOCK_N, BLOCK_D)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale  # (BLOCK_M, BLOCK_N) scores
    s = tl.where(cols[None, :] < Nk, s, float("-inf"))  # padding keys get no weight
    m = tl.max(s, axis=1)  # (BLOCK_M,) row max: exp never overflows
    p = tl.exp(s - m[:, None])
    l = tl.sum(p, axis=1)  # (BLOCK_M,)
    out = tl.dot(p.to(v.dtype), v, input_precision="ieee") / l[:, None]  # (BLOCK_M, BLOCK_D)
    tl.store(O + h * stride_oh + rows[:, None] * stride_on + dims[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=(rows[:, None] < Nq) & dim_ok)


# --------------------------------------------------------------------------- wrappers


def _where(name: str, x: torch.Tensor, *, dot: bool = False) -> None:
    """``x`` is a float tensor of a supported dtype on the kernels' device."""
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype} with shape {chk.shape_str(x)}"
                        + (" (cast with .float())" if x.dtype == torch.float64 else ""))
    device = _triton.device()
    if x.device.type != device.type:
        raise ValueError(f"{name} of shape {chk.shape_str(x)} is on {x.device}, but the kernels run on "
                         f"{device.type} here; move it with .to({str(device)!r})")
    cap = _triton.capability()
    if x.dtype == torch.bfloat16 and (cap is not None and cap < (8, 0)):
        raise TypeError(f"{name}: bfloat16 needs a GPU of compute capability 8.0 or later (this one is "
                        f"{cap[0]}.{cap[1]}); use float16 or float32")
    if dot and x.dtype == torch.bfloat16 and cap is None:
        raise TypeError(f"{name}: Triton's interpreter computes a bfloat16 tl.dot wrongly; use float16 or float32 "
                        f"without a GPU")


def _floats(**named) -> None:
    for name, value in named.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite Python number, got {value!r}")


def triton_scale_shift(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """``x * scale + shift`` for a 1-D ``x`` of any length and stride, one Triton kernel launch.

    Args:
        x: ``(n,)`` float32, float16 or bfloat16, on the kernels' device; may be a strided view.
        scale, shift: Python numbers.

    Returns:
        ``(n,)`` contiguous, ``x``'s dtype, computed in float32 and rounded once.
    """
    chk.tensor("x", x, ndim=1)
    _where("x", x)
    _floats(scale=scale, shift=shift)
    n = x.shape[0]
    y = torch.empty(n, dtype=x.dtype, device=x.device)  # (n,)
    if n == 0:
        return y
    block = 1024 if _triton.capability() is not None else 256
    _scale_shift_kernel[(triton.cdiv(n, block),)](x, y, n, x.stride(0), float(scale), float(shift), BLOCK=block)
    return y


def triton_row_max(x: torch.Tensor) -> torch.Tensor:
    """The largest entry of every row of ``x (M, N)``, shape ``(M,)``, one Triton kernel launch.

    Any strides; ``-inf`` entries are allowed (an all ``-inf`` row gives ``-inf``). ``N`` must
    be at least 1: the max of an empty row is undefined.
    """
    chk.tensor("x", x, ndim=2)
    _where("x", x)
    M, N = x.shape
    if N == 0:
        raise ValueError(f"x of shape {chk.shape_str(x)} has empty rows: their max is undefined")
    y = torch.empty(M, dtype=x.dtype, device=x.device)  # (M,)
    if M == 0:
        return y
    block_n = min(triton.next_power_of_2(N), 1024)
    block_m = max(1, min(2048 // block_n, triton.next_power_of_2(M)))
    _row_max_kernel[(triton.cdiv(M, block_m),)](x, y, M, N, x.stride(0), x.stride(1), BLOCK_M=block_m,
                                                 BLOCK_N=block_n)
    return y


def triton_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a (M, K)``, ``b (K, N)`` with one Triton kernel launch, tiles of at least 16.

    Any strides; float32 or float16 (bfloat16 on sm_80+ GPUs); accumulated in float32 and
    returned in the inputs' dtype.
    """
    chk.tensor("a", a, ndim=2)
    chk.tensor("b", b, ndim=2)
    _where("a", a, dot=True)
    _where("b", b, dot=True)
    chk.same_dtype(a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a {chk.shape_str(a)} @ b {chk.shape_str(b)}: the inner sizes differ "
                         f"({a.shape[1]} and {b.shape[0]})")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)  # (M, N)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    big = 64 if _triton.capability() is not None else 32

    def block(size):
        return max(16, min(triton.next_power_of_2(size), big))  # tl.dot: every side at least 16

    grid = (triton.cdiv(M, block(M)), triton.cdiv(N, block(N)))
    _matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0),
                         c.stride(1), BLOCK_M=block(M), BLOCK_N=block(N), BLOCK_K=block(K))
    return c


def triton_attention_tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one head per program, the whole head in one tile.

    Args:
        q: ``(H, Nq, d)``; k, v: ``(H, Nk, d)``; ``Nq, Nk, d <= 64`` (one tile), any strides,
            float32 or float16 (bfloat16 on sm_80+ GPUs).

    Returns:
        ``(H, Nq, d)``: ``softmax(q k^T / sqrt(d)) v`` per head, in ``q``'s dtype.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(name, t, ndim=3)
        _where(name, t, dot=True)
    chk.same_dtype(q=q, k=k, v=v)
    H, Nq, d = q.shape
    if k.shape != v.shape or k.shape[0] != H or k.shape[2] != d:
        raise ValueError(f"q {chk.shape_str(q)}, k {chk.shape_str(k)}, v {chk.shape_str(v)}: k and v must both "
                         f"be (H, Nk, d) with q's H = {H} and d = {d}")
    Nk = k.shape[1]
    if max(Nq, Nk, d) > TILE_MAX or min(Nk, d) == 0:
        raise ValueError(f"q {chk.shape_str(q)}, k {chk.shape_str(k)}: one tile holds 1 to {TILE_MAX} keys and "
                         f"a head dim of 1 to {TILE_MAX}; longer sequences need FlashAttention's loop over key "
                         f"blocks (attnkit.triton_flash_forward)")
    out = torch.empty((H, Nq, d), dtype=q.dtype, device=q.device)  # (H, Nq, d)
    if H == 0 or Nq == 0:
        return out

    def block(size):
        return max(16, triton.next_power_of_2(size))

    _attention_tile_kernel[(H,)](q, k, v, out, Nq, Nk, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                                 1.0 / math.sqrt(d), HEAD_DIM=d, BLOCK_M=block(Nq), BLOCK_N=block(Nk),
                                 BLOCK_D=block(d))
    return out
