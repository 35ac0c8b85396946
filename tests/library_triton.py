"""The mutant library of notebooks 10 and 11 (tests/library.py): ``triton_softmax``,
``triton_flash_forward`` and the stretch exercise ``triton_flash_dq``.

The kernels are written as a learner would, each with a ``tl.constexpr`` switch per classic
mistake, so that one kernel gives many mutants. Correct styles differ from attnkit's kernels
(one row per program, a persistent loop over rows, other block sizes and ``num_warps``, masks
applied with ``tl.where`` after the load, natural ``tl.exp`` instead of ``exp2``, causal key
blocks skipped). Some mutants give the right numbers under the interpreter and fail only when
compiled for a GPU (a loop-carried running max started as a Python number): the checkers'
compile step names those.

Without a GPU everything runs in Triton's interpreter, about 3 ms per program x block step, so
the checkers' cases stay small."""

import math

import torch
import torch.nn.functional as F

import attnkit
from attnkit import _triton

_triton.prepare()  # before the kernels below are defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnkit import fused_softmax  # noqa: E402
from attnkit import triton_flash as tf  # noqa: E402
from attnkit.checks import CHECKS, NOTEBOOK_CHECKS  # noqa: E402
from library import Exercise, Mutant  # noqa: E402

GPU = _triton.device().type == "cuda"


def named(name, fn):
    fn.__name__ = name
    return fn


# =============================================================================================
# triton_softmax (notebook 10)

@triton.jit
def _row_kernel(X, Y, N, sx, sxn, sy, BLOCK: tl.constexpr, INT_L: tl.constexpr = False):
    """One row per program, always the two-pass online softmax (a different design from the
    library's). m and l are Python numbers at the start: right for a one-row kernel, whose
    reductions give scalars, as long as l starts as a float."""
    row = tl.program_id(0)
    m = -float("inf")
    if INT_L:
        l = 0  # an int: the loop makes it a float
    else:
        l = 0.0
    for s in range(0, N, BLOCK):
        c = s + tl.arange(0, BLOCK)
        x = tl.load(X + row * sx + c * sxn, mask=c < N, other=-float("inf")).to(tl.float32)
        new = tl.maximum(m, tl.max(x, 0))
        safe = tl.where(new == -float("inf"), 0.0, new)
        l = l * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), 0)
        m = new
    safe = tl.where(m == -float("inf"), 0.0, m)
    for s in range(0, N, BLOCK):
        c = s + tl.arange(0, BLOCK)
        x = tl.load(X + row * sx + c * sxn, mask=c < N, other=-float("inf")).to(tl.float32)
        p = tl.exp(x - safe) / tl.where(l > 0, l, 1.0)
        tl.store(Y + row * sy + c, p.to(Y.dtype.element_ty), mask=c < N)


def row_per_program(**mistakes):
    def triton_softmax(x):
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _row_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), x.stride(1), y.stride(0), BLOCK=256, **mistakes)
        return y
    return triton_softmax


def library_kernel_long_path(x):
    """attnkit's kernel through a copy of its wrapper (the checker refuses the wrapper itself),
    forced onto the two-pass path with 256-wide column blocks."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    cfg = dict(fused_softmax.config(*x.shape, _triton.capability()), BLOCK_N=256)
    cfg["ONE_PASS"] = x.shape[1] <= 256
    fused_softmax._softmax_kernel[(triton.cdiv(x.shape[0], cfg["BLOCK_M"]),)](
        x, y, *x.shape, *x.stride(), *y.stride(), **cfg)
    return y


@triton.jit
def _one_pass_kernel(X, Y, M, N, sxm, sxn, sym, syn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Several rows per program, the whole row in one block; the load is masked with other=0
    and the padding set to -inf afterwards with tl.where; exp2 with log2(e) folded in."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    x = tl.load(X + rows[:, None] * sxm + cols[None, :] * sxn, mask=inside, other=0.0).to(tl.float32)
    x = tl.where(inside, x, float("-inf"))
    m = tl.max(x, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)
    e = tl.exp2((x - m[:, None]) * 1.4426950408889634)
    total = tl.sum(e, axis=1)
    y = e / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(Y + rows[:, None] * sym + cols[None, :] * syn, y.to(Y.dtype.element_ty), mask=inside)


def one_pass_rows(x):
    M, N = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    block_n = triton.next_power_of_2(N)
    block_m = max(1, min(4, 4096 // block_n))
    _one_pass_kernel[(triton.cdiv(M, block_m),)](x, y, M, N, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                                 BLOCK_M=block_m, BLOCK_N=block_n, num_warps=2)
    return y


@triton.jit
def _persistent_kernel(X, Y, M, N, sxm, sxn, sym, BLOCK: tl.constexpr):
    """A fixed number of programs, each striding over the rows (a persistent kernel)."""
    start = tl.program_id(0)
    step = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    for row in range(start, M, step):
        x = tl.load(X + row * sxm + cols * sxn, mask=cols < N, other=float("-inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        shifted = x - tl.where(m == float("-inf"), 0.0, m)
        e = tl.exp(shifted)
        s = tl.sum(e, axis=0)
        tl.store(Y + row * sym + cols, (e / tl.maximum(s, 1e-30)).to(Y.dtype.element_ty), mask=cols < N)


def persistent_rows(x):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _persistent_kernel[(min(M, 3),)](x, y, M, N, x.stride(0), x.stride(1), y.stride(0),
                                     BLOCK=triton.next_power_of_2(N), num_warps=8)
    return y


@triton.jit
def _looped_kernel(X, Y, N, sx, sxn, sy, BLOCK: tl.constexpr):
    """A one-block row softmax written as a loop over column blocks that runs once (BLOCK >= N),
    whose offsets and values are used after the loop: Python (the interpreter) keeps them."""
    row = tl.program_id(0)
    for s in range(0, N, BLOCK):
        c = s + tl.arange(0, BLOCK)
        x = tl.load(X + row * sx + c * sxn, mask=c < N, other=-float("inf")).to(tl.float32)
    m = tl.max(x, 0)
    e = tl.exp(x - tl.where(m == -float("inf"), 0.0, m))
    total = tl.sum(e, 0)
    tl.store(Y + row * sy + c, (e / tl.where(total > 0, total, 1.0)).to(Y.dtype.element_ty), mask=c < N)


def loop_names_used_after_it(x):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _looped_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), x.stride(1), y.stride(0),
                                  BLOCK=triton.next_power_of_2(x.shape[1]))
    return y


def _stable_exp(x, m):  # no @triton.jit: a plain Python helper
    return tl.exp(x - tl.where(m == -float("inf"), 0.0, m))


@triton.jit
def _helper_kernel(X, Y, N, sx, sxn, sy, BLOCK: tl.constexpr):
    """One row per program, the exponentials from a helper that is not a @triton.jit function."""
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK)
    x = tl.load(X + row * sx + c * sxn, mask=c < N, other=-float("inf")).to(tl.float32)
    e = _stable_exp(x, tl.max(x, 0))
    total = tl.sum(e, 0)
    tl.store(Y + row * sy + c, (e / tl.where(total > 0, total, 1.0)).to(Y.dtype.element_ty), mask=c < N)


def helper_without_jit(x):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _helper_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), x.stride(1), y.stride(0),
                                  BLOCK=triton.next_power_of_2(x.shape[1]))
    return y


@triton.jit
def _softmax_mutant(X, Y, M, N, sxm, sxn, sym, syn, BM: tl.constexpr, BN: tl.constexpr, SUB_MAX: tl.constexpr,
                    OTHER: tl.constexpr, COL_MASK: tl.constexpr, AXIS: tl.constexpr, ROW_STRIDE: tl.constexpr,
                    COL_STRIDE: tl.constexpr, RESCALE: tl.constexpr, GUARD: tl.constexpr, PID_OFFSET: tl.constexpr,
                    SCALAR_M: tl.constexpr, SCALAR_L: tl.constexpr):
    """The library's two kernels in one, with a switch for each classic mistake."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BM)
    if PID_OFFSET:
        rows += pid * BM
    row_ok = rows < M
    rs = sxm if ROW_STRIDE else N
    cs = sxn if COL_STRIDE else 1
    cols = tl.arange(0, BN)
    if SCALAR_M:
        m = -float("inf")  # a Python number: the loop turns it into a (BM,) block
    else:
        m = tl.full((BM,), -float("inf"), tl.float32)
    if SCALAR_L:
        l = 0.0
    else:
        l = tl.zeros((BM,), tl.float32)
    for s in range(0, N, BN):
        c = s + cols
        mask = row_ok[:, None] & (c[None, :] < N) if COL_MASK else row_ok[:, None] & (c[None, :] >= 0)
        ptrs = X + rows[:, None] * rs + c[None, :] * cs
        if OTHER == 0:
            x = tl.load(ptrs, mask=mask, other=-float("inf")).to(tl.float32)
        elif OTHER == 1:
            x = tl.load(ptrs, mask=mask).to(tl.float32)
        else:
            x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        new = tl.maximum(m, tl.max(x, axis=AXIS)) if AXIS == 1 else m
        if AXIS == 0:  # normalise down the columns of this block (a one-block mutant)
            cm = tl.max(x, axis=0)
            cm = tl.where(cm == -float("inf"), 0.0, cm)
            e = tl.exp(x - cm[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
            tl.store(Y + rows[:, None] * sym + c[None, :] * syn, p.to(Y.dtype.element_ty),
                     mask=row_ok[:, None] & (c[None, :] < N))
        else:
            safe = tl.where(new == -float("inf"), 0.0, new) if GUARD else new
            if not SUB_MAX:
                safe = tl.zeros((BM,), tl.float32)
            if RESCALE:
                l = l * tl.exp(m - safe)
            l += tl.sum(tl.exp(x - safe[:, None]), axis=1)
            m = new
    if AXIS == 1:
        safe = tl.where(m == -float("inf"), 0.0, m) if GUARD else m
        if not SUB_MAX:
            safe = tl.zeros((BM,), tl.float32)
        inv = 1.0 / tl.where(l > 0, l, 1.0) if GUARD else 1.0 / l
        for s in range(0, N, BN):
            c = s + cols
            x = tl.load(X + rows[:, None] * rs + c[None, :] * cs, mask=row_ok[:, None] & (c[None, :] < N),
                        other=-float("inf")).to(tl.float32)
            p = tl.exp(x - safe[:, None]) * inv[:, None]
            tl.store(Y + rows[:, None] * sym + c[None, :] * syn, p.to(Y.dtype.element_ty),
                     mask=row_ok[:, None] & (c[None, :] < N))


def softmax_mutant(short_grid=False, out_dtype=None, block_m=2, block_n=None, **mistakes):
    flags = dict(SUB_MAX=True, OTHER=0, COL_MASK=True, AXIS=1, ROW_STRIDE=True, COL_STRIDE=True, RESCALE=True,
                 GUARD=True, PID_OFFSET=True, SCALAR_M=False, SCALAR_L=False)
    flags.update(mistakes)

    def triton_softmax(x):
        M, N = x.shape
        y = torch.zeros((M, N), dtype=out_dtype or x.dtype, device=x.device)
        bn = block_n or triton.next_power_of_2(N)
        if flags["AXIS"] == 0:
            bn = triton.next_power_of_2(N)  # one block of columns, so only the axis is wrong
        grid = (M // block_m if short_grid else triton.cdiv(M, block_m),)
        if grid[0]:
            _softmax_mutant[grid](x, y, M, N, x.stride(0), x.stride(1), y.stride(0), y.stride(1), BM=block_m, BN=bn,
                                  **flags)
        return y
    return triton_softmax


def softmax_in_torch(x):
    return torch.softmax(x, -1)


def no_kernel(x):
    return x.new_zeros(x.shape)  # launches nothing


SOFTMAX = Exercise("triton_softmax", CHECKS["triton_softmax"], [
    Mutant("a torch.softmax wrapper", softmax_in_torch, "calls torch.softmax"),
    Mutant("attnkit.softmax", lambda x: attnkit.softmax(x), "calls"),
    Mutant("attnkit's own kernel", lambda x: fused_softmax.triton_softmax(x), "calls"),
    Mutant("no kernel at all", no_kernel, "no Triton kernel was launched"),
    Mutant("max not subtracted", softmax_mutant(SUB_MAX=False), "exp overflows"),
    Mutant("padding loaded without other", softmax_mutant(OTHER=1), "padding lanes"),
    Mutant("padding loaded as 0", softmax_mutant(OTHER=2), "padding lanes"),
    Mutant("no column mask on the load", softmax_mutant(COL_MASK=False), "values from the next row"),
    Mutant("normalised over the wrong axis", softmax_mutant(AXIS=0, block_m=4), "down the columns"),
    Mutant("row stride ignored", softmax_mutant(ROW_STRIDE=False), "strided one"),
    Mutant("column stride ignored", softmax_mutant(COL_STRIDE=False), "strided one"),
    Mutant("running sum not rescaled", softmax_mutant(RESCALE=False, block_n=256), "not rescaled"),
    Mutant("no guard for an all -inf row", softmax_mutant(GUARD=False), "all -inf row gave NaN"),
    Mutant("grid of M // BLOCK_M programs", softmax_mutant(short_grid=True, block_m=4),
           "your grid does not cover every row"),
    Mutant("every program does the first rows", softmax_mutant(PID_OFFSET=False, block_m=4), "pid * BLOCK_M"),
    Mutant("float32 output for float16 input", softmax_mutant(out_dtype=torch.float32), "wrong dtype"),
    Mutant("running max m started as a Python number (compiles on no GPU)",
           softmax_mutant(SCALAR_M=True, block_n=256), "loop-carried m must start as a block: tl.full("),
    Mutant("running sum l started as a Python number in a multi-row kernel",
           softmax_mutant(SCALAR_L=True, block_n=256), "loop-carried l must start as a block"),
    Mutant("running sum l started as the integer 0", row_per_program(INT_L=True), "loop-carried l must start as 0.0"),
    Mutant("names assigned in a loop used after it", loop_names_used_after_it,
           "x is read where the compiled kernel cannot see it"),
    Mutant("a helper function without @triton.jit", helper_without_jit, "_stable_exp is a plain Python function"),
], [row_per_program(), library_kernel_long_path, one_pass_rows, persistent_rows])


# =============================================================================================
# triton_flash_forward (notebook 11)

LOG2E = 1.4426950408889634  # a plain Python global: the interpreter reads it, a compiled kernel may not


@triton.jit
def _flash_kernel(Q, K, V, O, LSE, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, H, N, sm_scale,
                  D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  IS_CAUSAL: tl.constexpr, RESCALE: tl.constexpr = True, RESCALE_L: tl.constexpr = True,
                  SCALE: tl.constexpr = True, LOG2E_FOLDED: tl.constexpr = True, EXP2: tl.constexpr = True,
                  CAUSAL_MASK: tl.constexpr = True, STRICT_CAUSAL: tl.constexpr = False,
                  LSE_NATURAL: tl.constexpr = True, LSE_WITH_SUM: tl.constexpr = True,
                  LSE_WITH_MAX: tl.constexpr = True, DIVIDE: tl.constexpr = True, KEY_MASK: tl.constexpr = True,
                  LOAD_MASK: tl.constexpr = True, SCALAR_M: tl.constexpr = False, ACC_FP16: tl.constexpr = False,
                  GLOBAL_LOG2E: tl.constexpr = False):
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
        if GLOBAL_LOG2E:
            scale = scale * LOG2E
        else:
            scale = scale * 1.4426950408889634
    if SCALAR_M:
        m = -float("inf")  # a Python number: the loop turns it into a (BLOCK_M,) block
    else:
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    if ACC_FP16:
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float16)
    else:
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
            if STRICT_CAUSAL:
                s = tl.where(cols[None, :] < rows[:, None], s, float("-inf"))
            else:
                s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        if EXP2:
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m - m_safe)
        else:
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
        if RESCALE:
            if RESCALE_L:
                l = l * alpha
            acc = acc * alpha[:, None]
        l = l + tl.sum(p, 1)
        acc += tl.dot(p.to(v.dtype), v)
        m = m_new
    if DIVIDE:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
    else:
        out = acc
    tl.store(O + b * sob + h * soh + rows[:, None] * son + dims[None, :], out.to(O.dtype.element_ty),
             mask=(rows[:, None] < N) & (dims[None, :] < D))
    if EXP2:
        lse = tl.log2(l)
    else:
        lse = tl.log(l)
    if LSE_WITH_MAX:
        lse = lse + m
    if not LSE_WITH_SUM:
        lse = m
    if EXP2 and LSE_NATURAL:
        lse = lse * 0.6931471805599453
    tl.store(LSE + bh * N + rows, lse, mask=rows < N)


def flash(pad_d=True, scale_by_block_d=False, **mistakes):
    def triton_flash_forward(q, k, v, is_causal=False):
        """The launcher a learner is given: one program per (query block, batch x head)."""
        B, H, N, d = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
        block = 16 if not GPU else 64
        block_d = max(16, triton.next_power_of_2(d)) if pad_d else d
        _flash_kernel[(triton.cdiv(N, block), B * H)](
            q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), H, N,
            1 / math.sqrt(block_d if scale_by_block_d else d), D=d, BLOCK_D=block_d, BLOCK_M=block, BLOCK_N=block,
            IS_CAUSAL=is_causal, **mistakes)
        return out, lse
    return triton_flash_forward


@triton.jit
def _flash_skip_kernel(Q, K, V, O, LSE, stride_b, stride_h, stride_n, stride_d, H, N, sm_scale,
                       D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       IS_CAUSAL: tl.constexpr):
    """Natural exp, the masks as an additive bias, causal key blocks past the diagonal skipped
    (the loop stops at the query block's end), (batch x head) on the first grid axis, int64
    offsets and a stride for the head dim too (q, k, v and out share one layout here)."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    base = (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = (rows[:, None] < N) & (dims[None, :] < D)
    q = tl.load(Q + base + rows[:, None] * stride_n + dims[None, :] * stride_d, mask=in_rows, other=0.0)
    m = tl.zeros([BLOCK_M], tl.float32) - float("inf")
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = N
    if IS_CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        in_cols = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + base + cols[:, None] * stride_n + dims[None, :] * stride_d, mask=in_cols, other=0.0)
        v = tl.load(V + base + cols[:, None] * stride_n + dims[None, :] * stride_d, mask=in_cols, other=0.0)
        allowed = cols[None, :] < N
        if IS_CAUSAL:
            allowed = allowed & (cols[None, :] <= rows[:, None])
        s = tl.dot(q, tl.trans(k)) * sm_scale + tl.where(allowed, 0.0, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new > float("-inf"), m_new, 0.0)
        p = tl.exp(s - shift[:, None])
        alpha = tl.exp(m - shift)
        l = alpha * l + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    safe_l = tl.where(l == 0.0, 1.0, l)
    tl.store(O + base + rows[:, None] * stride_n + dims[None, :] * stride_d, (acc / safe_l[:, None]).to(O.dtype.element_ty),
             mask=in_rows)
    tl.store(LSE + bh * N + rows, m + tl.log(l), mask=rows < N)


def flash_skipping_blocks(q, k, v, is_causal=False):
    B, H, N, d = q.shape
    if not (q.stride() == k.stride() == v.stride()):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    if out.stride() != q.stride():
        out = torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    block_m, block_n = (32, 16) if not GPU else (64, 32)
    _flash_skip_kernel[(B * H, triton.cdiv(N, block_m))](
        q, k, v, out, lse, *q.stride(), H, N, d ** -0.5, D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=is_causal, num_warps=2)
    return out, lse


def flash_natural_exp(q, k, v, is_causal=False):
    """The plain kernel with natural exp and 16 x 32 tiles."""
    B, H, N, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    block_m, block_n = (16, 32) if not GPU else (64, 64)
    _flash_kernel[(triton.cdiv(N, block_m), B * H)](
        q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), H, N,
        1 / math.sqrt(d), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=block_m, BLOCK_N=block_n,
        IS_CAUSAL=is_causal, EXP2=False, LOG2E_FOLDED=False, num_warps=8)
    return out, lse


def flash_in_torch_rows(q, k, v, is_causal=False):
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


def flash_sdpa(q, k, v, is_causal=False):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), None


def flash_library(q, k, v, is_causal=False):
    return tf.triton_flash_forward(q, k, v, is_causal)


def flash_out_only(q, k, v, is_causal=False):
    return flash()(q, k, v, is_causal)[0]


FLASH = Exercise("triton_flash_forward", CHECKS["triton_flash_forward"], [
    Mutant("accumulator not rescaled", flash(RESCALE=False), "not rescaled"),
    Mutant("running sum l not rescaled", flash(RESCALE_L=False), "running sum l was not rescaled"),
    Mutant("no 1/sqrt(d)", flash(SCALE=False), "1/sqrt(d)"),
    Mutant("exp2 without log2(e)", flash(LOG2E_FOLDED=False), "exp2 without log2(e)"),
    Mutant("tl.exp with log2(e) folded into the scale", flash(EXP2=False), "tl.exp with log2(e)"),
    Mutant("is_causal ignored", flash(CAUSAL_MASK=False), "is_causal was ignored"),
    Mutant("strict causal mask cols < rows", flash(STRICT_CAUSAL=True), "may attend to itself"),
    Mutant("lse in base 2", flash(LSE_NATURAL=False), "base 2"),
    Mutant("lse is the running max only", flash(LSE_WITH_SUM=False), "running max"),
    Mutant("lse without the running max", flash(LSE_WITH_MAX=False), "without the running max"),
    Mutant("no final division by l", flash(DIVIDE=False), "not divided by l"),
    Mutant("padding keys left in the softmax", flash(KEY_MASK=False), "keys past the end"),
    Mutant("key and value loads without a row mask", flash(LOAD_MASK=False), "read past the end"),
    Mutant("scaled by 1/sqrt(BLOCK_D)", flash(scale_by_block_d=True), "1/sqrt(BLOCK_D)"),
    Mutant("BLOCK_D = d, not a power of two", flash(pad_d=False), "power of two"),
    Mutant("running max m started as a Python number (compiles on no GPU)", flash(SCALAR_M=True),
           "loop-carried m must start as a block: tl.full("),
    Mutant("accumulator started in float16", flash(ACC_FP16=True), "loop-carried acc"),
    Mutant("log2(e) as a plain Python global", flash(GLOBAL_LOG2E=True), "reads the global LOG2E"),
    Mutant("attention in PyTorch, no kernel", flash_in_torch_rows, "no Triton kernel was launched"),
    Mutant("SDPA", flash_sdpa, "calls"),
    Mutant("attnkit's own kernel", flash_library, "calls"),
    Mutant("returns out only", flash_out_only, "(out, lse)"),
], [flash(), flash_skipping_blocks, flash_natural_exp])


# =============================================================================================
# triton_flash_dq (notebook 11's stretch exercise)

@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
               H, N, sm_scale, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, USE_DELTA: tl.constexpr = True,
               SCALE: tl.constexpr = True, LSE_TO_BASE2: tl.constexpr = True, CAUSAL_MASK: tl.constexpr = True,
               STRICT_CAUSAL: tl.constexpr = False, SUB_LSE: tl.constexpr = True, SIGN: tl.constexpr = 1.0,
               TIMES_V: tl.constexpr = False, SCALAR_DQ: tl.constexpr = False):
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
    if not SUB_LSE:
        lse = lse * 0.0
    delta = tl.load(DELTA + bh * N + rows, mask=rows < N, other=0.0)
    if not USE_DELTA:
        delta = delta * 0.0
    if SCALAR_DQ:
        dq = 0.0  # a Python number: the loop turns it into a block
    else:
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + dims[None, :], mask=kv_mask, other=0.0)
        p = tl.exp2(tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634) - lse[:, None])
        keep = cols[None, :] < N
        if IS_CAUSAL and CAUSAL_MASK:
            if STRICT_CAUSAL:
                keep = keep & (cols[None, :] < rows[:, None])
            else:
                keep = keep & (cols[None, :] <= rows[:, None])
        p = tl.where(keep, p, 0.0)
        ds = SIGN * p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        if TIMES_V:
            dq += tl.dot(ds.to(v.dtype), v)
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    if SCALE:
        dq = dq * sm_scale
    tl.store(DQ + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :], dq.to(DQ.dtype.element_ty), mask=row_mask)


def dq(**mistakes):
    def triton_flash_dq(q, k, v, out, lse, d_out, is_causal=False):
        B, H, N, d = q.shape
        delta = (d_out.float() * out.float()).sum(-1).contiguous()  # (B, H, N)
        dq = torch.empty_like(q)
        block = 16 if not GPU else 64
        _dq_kernel[(triton.cdiv(N, block), B * H)](
            q, k, v, d_out, lse.contiguous(), delta, dq, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
            k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), d_out.stride(0), d_out.stride(1),
            d_out.stride(2), H, N, 1 / math.sqrt(d), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_M=block, BLOCK_N=block, IS_CAUSAL=is_causal, **mistakes)
        return dq
    return triton_flash_dq


@triton.jit
def _delta_dq_kernel(Q, K, V, O, DO, LSE, DQ, stride_b, stride_h, stride_n, H, N, sm_scale, D: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """delta = rowsum(dO * O) computed in the kernel, natural exp, causal key blocks skipped."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    base = (bh // H) * stride_b + (bh % H) * stride_h
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = (rows[:, None] < N) & (dims[None, :] < D)
    offs = base + rows[:, None] * stride_n + dims[None, :]
    q = tl.load(Q + offs, mask=in_rows, other=0.0)
    do = tl.load(DO + offs, mask=in_rows, other=0.0)
    o = tl.load(O + offs, mask=in_rows, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(LSE + bh * N + rows, mask=rows < N, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = N
    if IS_CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        in_cols = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + base + cols[:, None] * stride_n + dims[None, :], mask=in_cols, other=0.0)
        v = tl.load(V + base + cols[:, None] * stride_n + dims[None, :], mask=in_cols, other=0.0)
        allowed = cols[None, :] < N
        if IS_CAUSAL:
            allowed = allowed & (rows[:, None] >= cols[None, :])
        p = tl.where(allowed, tl.exp(tl.dot(q, tl.trans(k)) * sm_scale - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        acc += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + offs, (acc * sm_scale).to(DQ.dtype.element_ty), mask=in_rows)


def dq_with_delta_inside(q, k, v, out, lse, d_out, is_causal=False):
    B, H, N, d = q.shape
    q, k, v, out, d_out = (t.contiguous() for t in (q, k, v, out, d_out))
    dq = torch.empty_like(q)
    block_m, block_n = (32, 16) if not GPU else (64, 32)
    _delta_dq_kernel[(B * H, triton.cdiv(N, block_m))](
        q, k, v, out, d_out, lse.contiguous(), dq, q.stride(0), q.stride(1), q.stride(2), H, N, d ** -0.5, D=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=is_causal,
        num_warps=2)
    return dq


def dq_small_query_blocks(q, k, v, out, lse, d_out, is_causal=False):
    """The plain kernel with 16 x 32 tiles and delta computed in float64 by the wrapper."""
    B, H, N, d = q.shape
    delta = (d_out.double() * out.double()).sum(-1).float().contiguous()  # (B, H, N)
    dq = torch.zeros_like(q)
    block_m, block_n = (16, 32) if not GPU else (32, 64)
    _dq_kernel[(triton.cdiv(N, block_m), B * H)](
        q, k, v, d_out, lse.contiguous(), delta, dq, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
        k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), d_out.stride(0), d_out.stride(1),
        d_out.stride(2), H, N, 1 / math.sqrt(d), D=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=is_causal, num_warps=8)
    return dq


def dq_library(q, k, v, out, lse, d_out, is_causal=False):
    return tf.triton_flash_backward(q, k, v, out, lse, d_out, is_causal)[0]


DQ = Exercise("triton_flash_dq", NOTEBOOK_CHECKS["triton_flash_dq"], [
    Mutant("delta term missing", dq(USE_DELTA=False), "delta term is missing"),
    Mutant("no 1/sqrt(d)", dq(SCALE=False), "1/sqrt(d)"),
    Mutant("exp2 with a natural-log lse", dq(LSE_TO_BASE2=False), "natural-log lse"),
    Mutant("is_causal ignored", dq(CAUSAL_MASK=False), "is_causal was ignored"),
    Mutant("strict causal mask cols < rows", dq(STRICT_CAUSAL=True), "may attend to itself"),
    Mutant("P rebuilt without subtracting lse", dq(SUB_LSE=False), "without subtracting lse"),
    Mutant("dS with the wrong sign", dq(SIGN=-1.0), "sign"),
    Mutant("dS multiplied by V instead of K", dq(TIMES_V=True), "dS K"),
    Mutant("dq started as a Python number (compiles on no GPU)", dq(SCALAR_DQ=True),
           "loop-carried dq must start as a block"),
    Mutant("attnkit's own backward", dq_library, "calls"),
], [dq(), dq_with_delta_inside, dq_small_query_blocks])


EXERCISES = [SOFTMAX, FLASH, DQ]
