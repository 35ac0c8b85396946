"""The mutant library (tests/library.py) of the ladder of small Triton kernels: ``triton_scale_shift``,
``triton_row_max`` and ``triton_matmul`` before notebook 10's softmax, ``triton_attention_tile`` before
notebook 11's FlashAttention.

The kernels are written as a learner would, each with a ``tl.constexpr`` switch per classic
mistake, so that one kernel gives many mutants. Correct styles differ from attnkit's kernels
(other block sizes and ``num_warps``, a grid-stride loop, masks applied with ``tl.where`` after
the load, ``exp2`` with ``log2(e)`` folded in, one program looping over every head). Several
mutants give the right numbers under the interpreter: a missing mask (the lanes past the end
are exactly the ones thrown away), a ``tl.dot`` narrower than 16, a loop variable that changes
type; the checkers' bounds watcher and compile step name those.
"""

import math

import torch

import attnkit
from attnkit import _triton

_triton.prepare()  # before the kernels below are defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnkit import triton_ladder as ladder  # noqa: E402
from attnkit.checks import NOTEBOOK_CHECKS  # noqa: E402
from library import Exercise, Mutant  # noqa: E402

GPU = _triton.device().type == "cuda"


# =============================================================================================
# triton_scale_shift (notebook 10, rung 1)

@triton.jit
def _scale_shift(X, Y, n, stride, scale, shift, BLOCK: tl.constexpr, MASK: tl.constexpr, OFF_BY_ONE: tl.constexpr,
                 STRIDE: tl.constexpr, SWAP: tl.constexpr, ORDER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if OFF_BY_ONE:
        mask = offs <= n
    step = stride if STRIDE else 1
    if MASK:
        x = tl.load(X + offs * step, mask=mask)
    else:
        x = tl.load(X + offs * step)
    x = x.to(tl.float32)
    if SWAP:
        y = x * shift + scale
    elif ORDER:
        y = (x + shift) * scale
    else:
        y = x * scale + shift
    if MASK:
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.store(Y + offs, y.to(Y.dtype.element_ty))


def scale_shift(block=128, short_grid=False, out_dtype=None, **mistakes):
    flags = dict(MASK=True, OFF_BY_ONE=False, STRIDE=True, SWAP=False, ORDER=False)
    flags.update(mistakes)

    def triton_scale_shift(x, scale, shift):
        n = x.shape[0]
        y = torch.empty(n, dtype=out_dtype or x.dtype, device=x.device)
        grid = (n // block if short_grid else triton.cdiv(n, block),)
        _scale_shift[grid](x, y, n, x.stride(0), scale, shift, BLOCK=block, **flags)
        return y
    return triton_scale_shift


@triton.jit
def _scale_shift_where(X, Y, n, stride, scale, shift, BLOCK: tl.constexpr):
    """Loaded with other=0.0, the padding lanes zeroed again with tl.where, stored masked."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(X + offs * stride, mask=inside, other=0.0).to(tl.float32)
    y = tl.where(inside, scale * x + shift, 0.0)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=inside)


def scale_shift_where(x, scale, shift):
    n = x.shape[0]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    block = 64 if n <= 1024 else 512
    _scale_shift_where[(triton.cdiv(n, block),)](x, y, n, x.stride(0), scale, shift, BLOCK=block, num_warps=2)
    return y


@triton.jit
def _scale_shift_grid_stride(X, Y, n, stride, scale, shift, BLOCK: tl.constexpr):
    """A fixed number of programs, each walking the tensor in steps of num_programs * BLOCK."""
    step = tl.num_programs(0) * BLOCK
    for start in range(tl.program_id(0) * BLOCK, n, step):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(X + offs * stride, mask=offs < n)
        tl.store(Y + offs, (x.to(tl.float32) * scale + shift).to(Y.dtype.element_ty), mask=offs < n)


def scale_shift_grid_stride(x, scale, shift):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _scale_shift_grid_stride[(3,)](x, y, x.shape[0], x.stride(0), scale, shift, BLOCK=64)
    return y


def scale_shift_in_torch(x, scale, shift):
    y = torch.empty_like(x)
    _scale_shift[(1,)](x, y, 0, 1, 1.0, 0.0, BLOCK=16, MASK=True, OFF_BY_ONE=False, STRIDE=True, SWAP=False,
                       ORDER=False)  # a kernel that does nothing
    return x * scale + shift


def scale_shift_no_kernel(x, scale, shift):
    return x.new_zeros(x.shape)


SCALE_SHIFT = Exercise("triton_scale_shift", NOTEBOOK_CHECKS["triton_scale_shift"], [
    Mutant("no mask on the load or the store", scale_shift(MASK=False), "past the end of X"),
    Mutant("mask offsets <= n", scale_shift(OFF_BY_ONE=True), "one past the end"),
    Mutant("grid of n // BLOCK programs", scale_shift(short_grid=True, block=256), "your grid does not cover"),
    Mutant("the stride of x ignored", scale_shift(STRIDE=False), "strided view"),
    Mutant("scale and shift swapped", scale_shift(SWAP=True), "swapped"),
    Mutant("shift added before scaling", scale_shift(ORDER=True), "before scaling"),
    Mutant("float32 output for a float16 input", scale_shift(out_dtype=torch.float32), "wrong dtype"),
    Mutant("the arithmetic in PyTorch around an empty kernel", scale_shift_in_torch, "calls torch"),
    Mutant("no kernel at all", scale_shift_no_kernel, "no Triton kernel was launched"),
    Mutant("attnkit's own kernel", lambda x, scale, shift: ladder.triton_scale_shift(x, scale, shift), "calls"),
], [scale_shift(), scale_shift_where, scale_shift_grid_stride])


# =============================================================================================
# triton_row_max (notebook 10, rung 2)

@triton.jit
def _row_max(X, Y, M, N, sxm, sxn, BM: tl.constexpr, BN: tl.constexpr, OTHER: tl.constexpr, COL_MASK: tl.constexpr,
             ROW_MASK: tl.constexpr, AXIS: tl.constexpr, STRIDES: tl.constexpr, LOOP: tl.constexpr,
             SCALAR_M: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rs = sxm if STRIDES else N
    cs = sxn if STRIDES else 1
    if SCALAR_M:
        m = -float("inf")  # a Python number: the loop makes it a block
    else:
        m = tl.full((BM,), -float("inf"), tl.float32)
    hi = N if LOOP else BN
    for start in range(0, hi, BN):
        cols = start + tl.arange(0, BN)
        mask = (rows[:, None] < M) if ROW_MASK else (rows[:, None] >= 0)
        if COL_MASK:
            mask = mask & (cols[None, :] < N)
        ptrs = X + rows[:, None] * rs + cols[None, :] * cs
        if OTHER == 0:
            x = tl.load(ptrs, mask=mask, other=-float("inf"))
        elif OTHER == 1:
            x = tl.load(ptrs, mask=mask)
        else:
            x = tl.load(ptrs, mask=mask, other=0.0)
        m = tl.maximum(m, tl.max(x.to(tl.float32), axis=AXIS))
    tl.store(Y + rows, m.to(Y.dtype.element_ty), mask=(rows < M) if ROW_MASK else (rows >= 0))


def row_max(block_m=4, block_n=None, short_grid=False, out_dtype=None, **mistakes):
    flags = dict(OTHER=0, COL_MASK=True, ROW_MASK=True, AXIS=1, STRIDES=True, LOOP=True, SCALAR_M=False)
    flags.update(mistakes)

    def triton_row_max(x):
        M, N = x.shape
        y = torch.empty(M, dtype=out_dtype or x.dtype, device=x.device)
        bn = block_n or triton.next_power_of_2(N)
        bm = bn if flags["AXIS"] == 0 else block_m  # reducing along axis 0 only fits with square tiles
        grid = (M // bm if short_grid else triton.cdiv(M, bm),)
        if grid[0]:
            _row_max[grid](x, y, M, N, x.stride(0), x.stride(1), BM=bm, BN=bn, **flags)
        return y
    return triton_row_max


@triton.jit
def _row_max_one_row(X, Y, N, sxm, sxn, BLOCK: tl.constexpr):
    """One row per program, the row in one block, padding set to -inf with tl.where after the load."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + row * sxm + cols * sxn, mask=cols < N, other=0.0)
    x = tl.where(cols < N, x, float("-inf"))
    tl.store(Y + row, tl.max(x, axis=0))


def row_max_one_row(x):
    M, N = x.shape
    y = torch.empty(M, dtype=x.dtype, device=x.device)
    _row_max_one_row[(M,)](x, y, N, x.stride(0), x.stride(1), BLOCK=triton.next_power_of_2(N), num_warps=1)
    return y


def row_max_in_torch(x):
    row_max()(x)
    return x.amax(1)


ROW_MAX = Exercise("triton_row_max", NOTEBOOK_CHECKS["triton_row_max"], [
    Mutant("padding loaded as 0 (other=0.0)", row_max(OTHER=2), "loaded as 0"),
    Mutant("masked load without other=", row_max(OTHER=1), "loaded as 0"),
    Mutant("no column mask", row_max(COL_MASK=False), "past the end of X"),
    Mutant("no row mask with several rows per program", row_max(ROW_MASK=False), "past the end"),
    Mutant("reduced along axis 0", row_max(AXIS=0, block_n=16), "axis=0"),
    Mutant("strides ignored (assumes a contiguous x)", row_max(STRIDES=False), "strided one"),
    Mutant("grid of M // BLOCK_M programs", row_max(short_grid=True), "your grid does not cover every row"),
    Mutant("BLOCK_N capped at 1024 without a loop", row_max(block_n=1024, LOOP=False), "only the first 1024 columns"),
    Mutant("running max started as a Python number (compiles on no GPU)", row_max(SCALAR_M=True, block_n=16),
           "loop-carried m must start as a block"),
    Mutant("float32 output for a float16 input", row_max(out_dtype=torch.float32), "wrong dtype"),
    Mutant("x.amax(1) around a kernel", row_max_in_torch, "calls torch"),
    Mutant("attnkit's own kernel", lambda x: ladder.triton_row_max(x), "calls"),
], [row_max(), row_max(block_m=1, block_n=128), row_max_one_row])


# =============================================================================================
# triton_matmul (notebook 10, rung 3)

@triton.jit
def _matmul(A, B, C, M, N, K, sam, sak, sbk, sbn, scm, scn, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
            K_MASK: tl.constexpr, MN_MASK: tl.constexpr, STRIDES: tl.constexpr, K_LOOP: tl.constexpr,
            FLOOR_K: tl.constexpr, ACC16: tl.constexpr, TRANSPOSE_C: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    if not STRIDES:
        sbk = N
        sbn = 1
    if ACC16 == 0:
        acc = tl.zeros((BM, BN), tl.float32)
    else:
        acc = tl.zeros((BM, BN), C.dtype.element_ty)  # the output's dtype: float16 for float16 inputs
    if K_LOOP:
        hi = K - BK + 1 if FLOOR_K else K
    else:
        hi = BK
    for start in range(0, hi, BK):
        ks = start + tl.arange(0, BK)
        a_mask = (ks[None, :] < K) if K_MASK else (ks[None, :] >= 0)
        b_mask = (ks[:, None] < K) if K_MASK else (ks[:, None] >= 0)
        if MN_MASK:
            a_mask = a_mask & (rows[:, None] < M)
            b_mask = b_mask & (cols[None, :] < N)
        a = tl.load(A + rows[:, None] * sam + ks[None, :] * sak, mask=a_mask, other=0.0)
        b = tl.load(B + ks[:, None] * sbk + cols[None, :] * sbn, mask=b_mask, other=0.0)
        if ACC16 == 1:
            acc = tl.dot(a, b, acc, out_dtype=C.dtype.element_ty)  # float16 inputs: products summed in float16
        elif ACC16 == 2:
            acc += tl.dot(a, b).to(C.dtype.element_ty)  # each block rounded into the running sum
        elif ACC16 == 3:
            acc += tl.dot(a, b)  # float16 + float32: the loop changes acc's type
        else:
            acc = tl.dot(a, b, acc)
    c_mask = (rows[:, None] < M) & (cols[None, :] < N)
    if TRANSPOSE_C:
        tl.store(C + rows[:, None] * scn + cols[None, :] * scm, acc.to(C.dtype.element_ty), mask=c_mask)
    else:
        tl.store(C + rows[:, None] * scm + cols[None, :] * scn, acc.to(C.dtype.element_ty), mask=c_mask)


def matmul(block=(16, 16, 32), short_grid=False, **mistakes):
    flags = dict(K_MASK=True, MN_MASK=True, STRIDES=True, K_LOOP=True, FLOOR_K=False, ACC16=0, TRANSPOSE_C=False)
    flags.update(mistakes)
    bm, bn, bk = block

    def triton_matmul(a, b):
        M, K = a.shape
        N = b.shape[1]
        c = torch.empty((M, N), dtype=a.dtype, device=a.device)
        cdiv = (lambda x, y: x // y) if short_grid else triton.cdiv
        grid = (cdiv(M, bm), cdiv(N, bn))
        if grid[0] and grid[1]:
            _matmul[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0),
                          c.stride(1), BM=bm, BN=bn, BK=bk, **flags)
        return c
    return triton_matmul


@triton.jit
def _matmul_one_program_per_row_block(A, B, C, M, N, K, sam, sak, sbk, sbn, scm, scn, BM: tl.constexpr,
                                      BN: tl.constexpr, BK: tl.constexpr):
    """One program per block of rows, looping over the column tiles of C and, inside, over K; the
    padding lanes zeroed with tl.where after unmasked-other loads."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    for n0 in range(0, N, BN):
        cols = n0 + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + tl.arange(0, BK)
            a_ok = (rows[:, None] < M) & (ks[None, :] < K)
            b_ok = (ks[:, None] < K) & (cols[None, :] < N)
            a = tl.where(a_ok, tl.load(A + rows[:, None] * sam + ks[None, :] * sak, mask=a_ok), 0.0)
            b = tl.where(b_ok, tl.load(B + ks[:, None] * sbk + cols[None, :] * sbn, mask=b_ok), 0.0)
            acc += tl.dot(a.to(A.dtype.element_ty), b.to(B.dtype.element_ty))
        tl.store(C + rows[:, None] * scm + cols[None, :] * scn, acc.to(C.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))


def matmul_row_blocks(a, b):
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    _matmul_one_program_per_row_block[(triton.cdiv(M, 32),)](
        a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BM=32, BN=16, BK=16, num_warps=2)
    return c


def matmul_in_torch(a, b):
    c = matmul()(a, b)
    return a @ b + 0 * c


MATMUL = Exercise("triton_matmul", NOTEBOOK_CHECKS["triton_matmul"], [
    Mutant("no mask along K", matmul(K_MASK=False), "past the end of B"),
    Mutant("no mask along M and N", matmul(MN_MASK=False), "past the end"),
    Mutant("grid of (M // BLOCK_M, N // BLOCK_N)", matmul(short_grid=True), "your grid does not cover the whole of C"),
    Mutant("strides of b ignored", matmul(STRIDES=False), "transposed view"),
    Mutant("one block of K, no loop", matmul(K_LOOP=False), "only the first 32 of the K"),
    Mutant("the last partial block of K skipped", matmul(FLOOR_K=True), "last, partial block of K"),
    Mutant("products summed in the output dtype (out_dtype=C's)", matmul(ACC16=1), "accumulated in float16"),
    Mutant("a running sum in the output dtype", matmul(ACC16=2), "accumulated in float16"),
    Mutant("a float16 accumulator that the loop turns into float32 (compiles on no GPU)", matmul(ACC16=3),
           "loop-carried acc must keep one type"),
    Mutant("tl.dot on 8-wide blocks (compiles on no GPU)", matmul(block=(16, 16, 8)), "at least 16"),
    Mutant("C stored transposed", matmul(TRANSPOSE_C=True), "transposed"),
    Mutant("a @ b in PyTorch", matmul_in_torch, "calls torch"),
    Mutant("attnkit's own kernel", lambda a, b: ladder.triton_matmul(a, b), "calls"),
], [matmul(), matmul(block=(32, 16, 16)), matmul_row_blocks])


# =============================================================================================
# triton_attention_tile (notebook 11, the rung before FlashAttention)

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tile(Q, K, V, O, Nq, Nk, sqh, sqn, sqd, skh, skn, skd, svh, svn, svd, soh, son, sod, scale, D: tl.constexpr,
          BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, HEAD: tl.constexpr, KEY_MASK: tl.constexpr,
          DIM_MASK: tl.constexpr, SUB_MAX: tl.constexpr, AXIS: tl.constexpr, DIVIDE: tl.constexpr,
          EXP2: tl.constexpr, STRIDES: tl.constexpr):
    h = tl.program_id(0)
    hl = h if HEAD else 0  # the head whose q, k, v this program loads
    rows = tl.arange(0, BM)
    cols = tl.arange(0, BN)
    dims = tl.arange(0, BD)
    if not STRIDES:  # a contiguous (H, N, d) layout assumed
        sqh = Nq * D
        sqn = D
        sqd = 1
        skh = Nk * D
        skn = D
        skd = 1
        svh = Nk * D
        svn = D
        svd = 1
    dim_ok = (dims[None, :] < D) if DIM_MASK else (dims[None, :] >= 0)
    q = tl.load(Q + hl * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=(rows[:, None] < Nq) & dim_ok,
                other=0.0)
    k = tl.load(K + hl * skh + cols[:, None] * skn + dims[None, :] * skd, mask=(cols[:, None] < Nk) & dim_ok,
                other=0.0)
    v = tl.load(V + hl * svh + cols[:, None] * svn + dims[None, :] * svd, mask=(cols[:, None] < Nk) & dim_ok,
                other=0.0)
    s = tl.dot(q, tl.trans(k)) * scale
    if KEY_MASK:
        s = tl.where(cols[None, :] < Nk, s, float("-inf"))
    m = tl.max(s, axis=AXIS)
    if not SUB_MAX:
        m = m * 0.0
    if AXIS == 1:
        shifted = s - m[:, None]
    else:
        shifted = s - m[None, :]
    if EXP2:
        p = tl.exp2(shifted)
    else:
        p = tl.exp(shifted)
    l = tl.sum(p, axis=AXIS)
    if AXIS == 0:
        p = p / l[None, :]
    out = tl.dot(p.to(V.dtype.element_ty), v)
    if DIVIDE and AXIS == 1:
        out = out / l[:, None]
    tl.store(O + h * soh + rows[:, None] * son + dims[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(rows[:, None] < Nq) & (dims[None, :] < D))


def tile(scale_kind="d", one_program=False, **mistakes):
    flags = dict(HEAD=True, KEY_MASK=True, DIM_MASK=True, SUB_MAX=True, AXIS=1, DIVIDE=True, EXP2=False,
                 STRIDES=True)
    flags.update(mistakes)

    def triton_attention_tile(q, k, v):
        H, Nq, d = q.shape
        Nk = k.shape[1]
        out = torch.empty((H, Nq, d), dtype=q.dtype, device=q.device)
        bm, bn, bd = (max(16, triton.next_power_of_2(n)) for n in (Nq, Nk, d))
        if flags["AXIS"] == 0:
            bm = bn = max(bm, bn)
        scale = {"d": 1 / math.sqrt(d), "none": 1.0, "block_d": 1 / math.sqrt(bd),
                 "log2e": math.log2(math.e) / math.sqrt(d)}[scale_kind]
        _tile[(1 if one_program else H,)](q, k, v, out, Nq, Nk, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                                          scale, D=d, BM=bm, BN=bn, BD=bd, **flags)
        return out
    return triton_attention_tile


@triton.jit
def _tile_exp2(Q, K, V, O, Nq, Nk, sqh, sqn, sqd, skh, skn, skd, svh, svn, svd, soh, son, sod, qk_scale,
               D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """exp2 with log2(e) folded into the scale, the padding keys as an additive -inf bias."""
    h = tl.program_id(0)
    rows = tl.arange(0, BM)
    cols = tl.arange(0, BN)
    dims = tl.arange(0, BD)
    q = tl.load(Q + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=(rows[:, None] < Nq) & (dims[None, :] < D),
                other=0.0)
    kv = (cols[:, None] < Nk) & (dims[None, :] < D)
    k = tl.load(K + h * skh + cols[:, None] * skn + dims[None, :] * skd, mask=kv, other=0.0)
    v = tl.load(V + h * svh + cols[:, None] * svn + dims[None, :] * svd, mask=kv, other=0.0)
    bias = tl.where(cols < Nk, 0.0, float("-inf"))
    s = tl.dot(q, tl.trans(k)) * qk_scale + bias[None, :]
    p = tl.exp2(s - tl.max(s, 1)[:, None])
    out = tl.dot(p.to(V.dtype.element_ty), v) / tl.sum(p, 1)[:, None]
    tl.store(O + h * soh + rows[:, None] * son + dims[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(rows[:, None] < Nq) & (dims[None, :] < D))


def tile_exp2(q, k, v):
    H, Nq, d = q.shape
    Nk = k.shape[1]
    out = torch.empty((H, Nq, d), dtype=q.dtype, device=q.device)
    _tile_exp2[(H,)](q, k, v, out, Nq, Nk, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                     1.4426950408889634 / math.sqrt(d), D=d, BM=64, BN=64, BD=64, num_warps=8)
    return out


@triton.jit
def _tile_all_heads(Q, K, V, O, H, Nq, Nk, sqh, sqn, sqd, skh, skn, skd, svh, svn, svd, soh, son, sod, scale,
                    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """One program for every head, looping over them."""
    rows = tl.arange(0, BM)
    cols = tl.arange(0, BN)
    dims = tl.arange(0, BD)
    q_ok = (rows[:, None] < Nq) & (dims[None, :] < D)
    kv_ok = (cols[:, None] < Nk) & (dims[None, :] < D)
    for h in range(0, H):
        q = tl.load(Q + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=q_ok, other=0.0).to(tl.float32)
        k = tl.load(K + h * skh + cols[:, None] * skn + dims[None, :] * skd, mask=kv_ok, other=0.0).to(tl.float32)
        v = tl.load(V + h * svh + cols[:, None] * svn + dims[None, :] * svd, mask=kv_ok, other=0.0).to(tl.float32)
        s = tl.where(cols[None, :] < Nk, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]
        tl.store(O + h * soh + rows[:, None] * son + dims[None, :] * sod, tl.dot(p, v).to(O.dtype.element_ty),
                 mask=q_ok)


def tile_all_heads(q, k, v):
    H, Nq, d = q.shape
    Nk = k.shape[1]
    out = torch.empty((H, Nq, d), dtype=q.dtype, device=q.device)
    bm, bn, bd = (max(16, triton.next_power_of_2(n)) for n in (Nq, Nk, d))
    _tile_all_heads[(1,)](q, k, v, out, H, Nq, Nk, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                          1 / math.sqrt(d), D=d, BM=bm, BN=bn, BD=bd)
    return out


def tile_sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


TILE = Exercise("triton_attention_tile", NOTEBOOK_CHECKS["triton_attention_tile"], [
    Mutant("no 1/sqrt(d)", tile(scale_kind="none"), "not scaled by 1/sqrt(d)"),
    Mutant("scaled by 1/sqrt(BLOCK_D)", tile(scale_kind="block_d"), "1/sqrt(BLOCK_D)"),
    Mutant("tl.exp2 without log2(e)", tile(EXP2=True), "exp2 without log2(e)"),
    Mutant("tl.exp with log2(e) in the scale", tile(scale_kind="log2e"), "tl.exp with log2(e)"),
    Mutant("softmax over the queries", tile(AXIS=0), "over the queries"),
    Mutant("padding keys not set to -inf", tile(KEY_MASK=False), "padding keys took part"),
    Mutant("row max not subtracted", tile(SUB_MAX=False), "exp overflows"),
    Mutant("not divided by the sum", tile(DIVIDE=False), "not divided by the sum"),
    Mutant("no head offset on the loads", tile(HEAD=False), "head 0's answer"),
    Mutant("one program for all heads", tile(one_program=True), "wrong while head 0 is right"),
    Mutant("strides ignored (a contiguous layout assumed)", tile(STRIDES=False), "strided view"),
    Mutant("head-dim lanes past d not masked", tile(DIM_MASK=False), "past the end"),
    Mutant("SDPA", tile_sdpa, "calls"),
    Mutant("attnkit's own kernel", lambda q, k, v: ladder.triton_attention_tile(q, k, v), "calls"),
], [tile(), tile_exp2, tile_all_heads])


EXERCISES = [SCALE_SHIFT, ROW_MAX, MATMUL, TILE]
