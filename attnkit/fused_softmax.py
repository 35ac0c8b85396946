"""Row softmax as one fused Triton kernel (Tillet, Kung and Cox 2019, "Triton: an intermediate
language and compiler for tiled neural network computations").

PyTorch written as ``e = exp(x - max); e / sum(e)`` launches several kernels, and each reads
its input from GPU memory (HBM) and writes its result back: about five trips over the
``M x N`` matrix. The fused kernel reads ``x`` once, keeps the row in registers while it
finds the maximum, exponentiates and sums, and writes ``y`` once: two trips, which is the
least any softmax can do. Softmax is memory-bound (a few FLOPs per byte), so those trips
are the run time.

One program (a block of threads on the GPU) owns ``BLOCK_M`` whole rows. When a row is
longer than ``BLOCK_N`` (what fits in registers), the program walks the row in column
blocks with the online softmax (Milakov and Gimelshein 2018): a running max ``m`` and a
running sum ``l`` that is rescaled by ``exp(m_old - m_new)`` whenever the max grows, then a
second walk writes ``exp(x - m) / l``. That reads ``x`` twice, still far less than unfused.

Semantics match :func:`attnkit.softmax`: ``-inf`` entries get 0 and a row that is all
``-inf`` gives zeros (not NaN). Arithmetic is float32 whatever the storage dtype: fp32, fp16, and
bf16 on GPUs of compute capability 8.0 or later (and in the interpreter, which handles bf16
loads and stores correctly; only its bf16 ``tl.dot``, unused here, is wrong). On a GPU the
kernel is compiled with FP fusion on (``attnkit._triton.FP_FUSION``): the rescale
``l * exp(m - shift) + sum`` becomes a fused multiply-add.

The module is imported lazily (``attnkit.triton_softmax``), so ``import attnkit`` never
imports Triton. It calls :func:`attnkit._triton.prepare` before defining the kernel: without
a CUDA GPU the kernel runs on the CPU in Triton's interpreter (correct, and slow).

Shapes: ``M`` rows (e.g. ``B*H*Nq`` attention rows), ``N`` entries per row (e.g. ``Nk``).
"""

from __future__ import annotations

import torch

from . import _triton
from . import _validate as chk

_triton.prepare()  # before any @triton.jit: choose the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _softmax_kernel(X, Y, M, N, stride_xm, stride_xn, stride_ym, stride_yn,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_PASS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) the rows this program owns
    row_ok = rows < M  # the last program may run past the end
    rows = rows.to(tl.int64)  # row * stride can exceed 2**31 in a big tensor
    X_ROWS = X + rows[:, None] * stride_xm  # (BLOCK_M, 1) pointers to row starts
    Y_ROWS = Y + rows[:, None] * stride_ym  # (BLOCK_M, 1)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)

    if ONE_PASS:  # the whole row fits in one block: one read, one write
        mask = row_ok[:, None] & (cols[None, :] < N)  # (BLOCK_M, BLOCK_N)
        # padding and masked entries load as -inf, so they contribute exp(-inf) = 0
        x = tl.load(X_ROWS + cols[None, :] * stride_xn, mask=mask, other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=1)  # (BLOCK_M,) row max
        m = tl.where(m == -float("inf"), 0.0, m)  # an all -inf row: shift by 0, not by -inf
        e = tl.exp(x - m[:, None])  # every entry <= 1: no overflow
        l = tl.sum(e, axis=1)  # (BLOCK_M,)
        l = tl.where(l > 0, l, 1.0)  # an all -inf row stays 0 instead of 0 / 0
        y = e / l[:, None]
        tl.store(Y_ROWS + cols[None, :] * stride_yn, y.to(Y.dtype.element_ty), mask=mask)
    else:  # long rows: online softmax over column blocks, then a second pass to write
        m = tl.full((BLOCK_M,), -float("inf"), tl.float32)  # running max
        l = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(x - m)
        for start in range(0, N, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c[None, :] < N)
            x = tl.load(X_ROWS + c[None, :] * stride_xn, mask=mask, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))  # update running max
            shift = tl.where(m_new == -float("inf"), 0.0, m_new)
            # rescale the sum so far from the old max to the new one, then add this block
            l = l * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
            m = m_new
        shift = tl.where(m == -float("inf"), 0.0, m)
        inv_l = 1.0 / tl.where(l > 0, l, 1.0)
        for start in range(0, N, BLOCK_N):  # second pass: normalise and write
            c = start + cols
            mask = row_ok[:, None] & (c[None, :] < N)
            x = tl.load(X_ROWS + c[None, :] * stride_xn, mask=mask, other=-float("inf")).to(tl.float32)
            y = tl.exp(x - shift[:, None]) * inv_l[:, None]
            tl.store(Y_ROWS + c[None, :] * stride_yn, y.to(Y.dtype.element_ty), mask=mask)


# Per-GPU limits on one program's tile (elements held in registers at once). A row longer
# than the limit is walked in blocks. Turing (sm_75, the Colab T4) has 64K registers and
# 64 KiB of shared memory per SM; Ampere and Hopper have the same 64K registers but larger
# shared memory and caches, so they can keep longer rows live. The interpreter runs each
# program as NumPy code on the CPU, where bigger tiles mean fewer slow Python steps.
TILE_LIMIT = {"interpreter": 4096, "sm_75": 4096, "sm_80": 8192, "sm_90": 8192}


def _arch(capability: tuple[int, int] | None) -> str:
    if capability is None:
        return "interpreter"
    major, minor = capability
    if (major, minor) < (8, 0):
        return "sm_75"
    return "sm_80" if major < 9 else "sm_90"


def config(M: int, N: int, capability: tuple[int, int] | None) -> dict:
    """Launch configuration for an ``(M, N)`` input on a GPU of ``capability`` (None: interpreter).

    ``BLOCK_N`` covers the row when it fits under the tile limit (one pass), else the limit;
    short rows share a program (``BLOCK_M`` rows each) so no thread sits idle; the warp
    count grows with the tile so each thread holds at most 16 values.
    """
    arch = _arch(capability)
    limit = TILE_LIMIT[arch]
    block_n = min(triton.next_power_of_2(N), limit)
    block_m = max(1, min(limit // block_n, 16, triton.next_power_of_2(M)))
    if arch == "interpreter":
        block_m = max(1, min(block_m, 8))  # a small fixed shape: the interpreter ignores warps
    tile = block_m * block_n
    num_warps = 4 if tile <= 2048 else 8 if tile <= 4096 else 16
    if arch == "sm_75":
        num_warps = min(num_warps, 8)  # 8 warps x 32 threads x 16 values covers a 4096 tile
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, ONE_PASS=block_n >= N, num_warps=num_warps)


def _check_input(x) -> None:
    chk.tensor("x", x, ndim=2)
    if x.dtype not in DTYPES:
        raise TypeError(f"triton_softmax supports float32, float16 and bfloat16, got {x.dtype} with shape "
                        f"{chk.shape_str(x)}" + (" (cast with x.float())" if x.dtype == torch.float64 else ""))
    where = _triton.device()
    if x.device.type != where.type:
        how = "run on the CPU through Triton's interpreter here" if where.type == "cpu" else "run on the GPU here"
        raise ValueError(f"x of shape {chk.shape_str(x)} is on {x.device}, but the kernels {how}; "
                         f"move it with x.to({str(where)!r})")
    cap = _triton.capability()
    if x.dtype == torch.bfloat16 and cap is not None and cap < (8, 0):
        raise TypeError(f"bfloat16 needs a GPU of compute capability 8.0 or later (this one is "
                        f"{cap[0]}.{cap[1]}, e.g. a T4); use float16 or float32")


def triton_softmax(x: torch.Tensor, *, block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Softmax over the last axis of ``x (M, N)`` with one Triton kernel launch.

    Args:
        x: ``(M, N)`` float32, float16 or bfloat16 (sm_80+), on the kernels' device
            (``attnkit._triton.device()``); any strides.
        block_m, block_n: override the tile (powers of two); a ``block_n`` below ``N``
            forces the two-pass online-softmax path.

    Returns:
        ``(M, N)``, same dtype, contiguous; rows sum to 1, ``-inf`` entries are 0 and
        all ``-inf`` rows are zeros.
    """
    _check_input(x)
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)  # (M, N)
    if M == 0 or N == 0:
        return y
    cfg = config(M, N, _triton.capability())
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None:
            value = chk.positive_int(name, value)
            if value & (value - 1):
                raise ValueError(f"{name} must be a power of two (Triton's tl.arange needs one), got {value}")
            cfg[name.upper()] = value
    cfg["ONE_PASS"] = cfg["BLOCK_N"] >= N
    grid = (triton.cdiv(M, cfg["BLOCK_M"]),)  # one program per block of rows
    _softmax_kernel[grid](x, y, M, N, x.stride(0), x.stride(1), y.stride(0), y.stride(1), **cfg,
                          enable_fp_fusion=_triton.FP_FUSION)
    return y


_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_for(capability: tuple[int, int], M: int, N: int, dtype: torch.dtype = torch.float32):
    """Compile (without running) the kernel :func:`triton_softmax` would launch for ``(M, N)``
    on a GPU of ``capability``, e.g. ``(7, 5)`` for a T4. No GPU needed: ``ptxas`` ships with
    Triton. Returns Triton's ``CompiledKernel`` (``.metadata.shared`` is its shared memory in
    bytes, ``.asm["ptx"]`` the PTX). Only outside the interpreter (``TRITON_INTERPRET=0``),
    because under it Triton's own library functions are interpreted too.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _triton.interpreting():
        raise RuntimeError("compile_for needs TRITON_INTERPRET=0 set before attnkit.fused_softmax is imported "
                           "(run it in a fresh process)")
    cfg = config(M, N, capability)
    ptr = "*" + _TRITON_DTYPE[dtype]
    signature = {"X": ptr, "Y": ptr, **{name: "i32" for name in ("M", "N", "stride_xm", "stride_xn",
                                                                   "stride_ym", "stride_yn")},
                 "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "ONE_PASS": "constexpr"}
    src = ASTSource(fn=_softmax_kernel, signature=signature,
                    constexprs={name: cfg[name] for name in ("BLOCK_M", "BLOCK_N", "ONE_PASS")})
    cc = capability[0] * 10 + capability[1]
    return triton.compile(src, target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": cfg["num_warps"], "enable_fp_fusion": _triton.FP_FUSION})
