"""FlashAttention as Triton kernels: forward and backward, on a CUDA GPU or on the CPU through
Triton's interpreter (Dao et al. 2022, "FlashAttention"; Dao 2023, "FlashAttention-2"; the
Triton tutorial "Fused Attention", triton-lang.org/main/getting-started/tutorials).

The algorithm is :mod:`attnkit.flash` (tiled attention with the online softmax), written so
that one program instance handles one tile of rows and the tiles live in SRAM/registers:

* forward, one program per (block of ``BLOCK_M`` queries, batch x head): stream over blocks of
  ``BLOCK_N`` keys with a running max ``m``, a running sum ``l`` and an fp32 accumulator,
  rescaled whenever ``m`` grows; divide by ``l`` once at the end; store ``out`` and the
  log-sum-exp ``lse = m + log(l)`` (natural log, float32).
* backward, no atomics (every gradient has one writer, as in the Triton tutorial; FlashAttention-2's
  CUDA kernel instead adds dQ with atomics, Dao 2023 section 3.2): a preprocess kernel ``delta = rowsum(dO * O)``;
  a dK/dV kernel, one program per block of keys, looping over the query blocks that can see
  those keys; a dQ kernel, one program per block of queries, looping over key blocks. Each
  rebuilds ``P = exp(S - lse)`` tile by tile instead of storing it.

Scores live in base 2 inside the kernels: ``log2(e) / sqrt(d)`` is folded into one scale, so
``exp`` becomes the cheaper ``exp2``; ``lse`` is converted back to natural log for the caller.
On a GPU the kernels are compiled with FP fusion on (``attnkit._triton.FP_FUSION``, passed at
every launch): ``s * qk_scale - m`` and the rescales become fused multiply-adds, rounded once.
The interpreter rounds every operation; the tests' tolerances hold for both.

Masks cost instructions, so each loop is split: key (or query) blocks that every row of the
tile may fully see run without masks; only the blocks on the causal diagonal and the ragged
tail (``N`` not a multiple of the block) mask their loads and scores. Blocks entirely in the
future of a causal tile are never visited. Causal masks are bottom-right aligned (query ``i``
sits at position ``i + Nk - Nq``), as in :mod:`attnkit.flash`; a query that may see no key gets
zeros and ``lse = -inf``. Head dims that are not a power of two (40, 80, 96) are padded to the
next one in registers and masked on every load and store.

Per GPU: sm_75 (T4) runs fp16 with tiles that fit its 64 KB of shared memory and at most two
stages; bf16 needs sm_80+, which also gets larger tiles; on a GPU ``triton.autotune`` picks
among a few configurations per problem shape. Under the interpreter one fixed 16 x 16 tile is
used (tl.dot needs at least 16 on each side) and bf16 is refused: the interpreter's bf16
``tl.dot`` returns wrong numbers.
"""

from __future__ import annotations

import math

import torch

from . import _triton
from . import _validate as chk

INTERPRETING = _triton.prepare()  # must run before the first @triton.jit below

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2): natural log from base 2
MAX_HEAD_DIM = 128
INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16)


# --------------------------------------------------------------------------- helpers


@triton.jit
def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, CHECK_ROWS: tl.constexpr,
               CHECK_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, masking only what can be out of bounds."""
    if CHECK_ROWS:
        if CHECK_D:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        if CHECK_D:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _store_tile(ptrs, tile, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, CHECK_D: tl.constexpr):
    """Store a (rows, BLOCK_D) tile; rows past ``n_rows`` (a ragged last block) are dropped."""
    if CHECK_D:
        tl.store(ptrs, tile, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))
    else:
        tl.store(ptrs, tile, mask=rows[:, None] < n_rows)


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d, lo, hi,
               offset, N_K, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               IS_CAUSAL: tl.constexpr, CHECK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Key blocks ``[lo, hi)`` of one query tile: the online softmax, one block per step."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n  # (BLOCK_N,) key positions
        k = _load_tile(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, MASK, CHECK_D)  # (BLOCK_N, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASK:
            keep = cols[None, :] < N_K  # the ragged tail of the keys
            if IS_CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + offset)  # bottom-right causal
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # update running max
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: avoid -inf - -inf
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))  # update running max
            m_safe = m_new
        p = tl.exp2(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_safe)  # how much the old max overestimated: rescale factor
        l_i = l_i * alpha + tl.sum(p, 1)  # rescale the running sum, add this block
        v = _load_tile(v_ptrs + start_n * stride_vn, cols, N_K, offs_d, HEAD_DIM, MASK, CHECK_D)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None]  # rescale accumulator
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)  # add this block's P V
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _flash_fwd_kernel(Q, K, V, O, LSE,
                      stride_qb, stride_qh, stride_qn, stride_qd,
                      stride_kb, stride_kh, stride_kn, stride_kd,
                      stride_vb, stride_vh, stride_vn, stride_vd,
                      stride_ob, stride_oh, stride_on, stride_od,
                      H, N_Q, N_K, qk_scale,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head)."""
    pid = tl.program_id(0)
    if IS_CAUSAL:
        pid = tl.num_programs(0) - 1 - pid  # the longest rows first: less idle time at the end
    start_m = pid * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # 64-bit offsets: B*H*N*d may pass 2**31
    h = (bh % H).to(tl.int64)
    CHECK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    rows = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    q = _load_tile(q_ptrs, rows, N_Q, offs_d, HEAD_DIM, True, CHECK_D)  # (BLOCK_M, BLOCK_D), stays resident

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # unnormalised output

    offset = N_K - N_Q  # query i sits at key position i + offset
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(N_K, start_m + BLOCK_M + offset), 0)  # later keys: every row's future
        full = tl.maximum(tl.minimum(hi, start_m + offset + 1), 0)  # keys every row of the tile may see
    else:
        hi = N_K
        full = N_K
    full = (full // BLOCK_N) * BLOCK_N  # whole blocks that need no mask
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                               0, full, offset, N_K, qk_scale, HEAD_DIM, BLOCK_N, False, IS_CAUSAL, CHECK_D,
                               DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                               full, hi, offset, N_K, qk_scale, HEAD_DIM, BLOCK_N, True, IS_CAUSAL, CHECK_D,
                               DOT_PRECISION)

    seen = l_i > 0  # False only for a query that may see no key at all
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]  # normalise once, at the end
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
    o_ptrs = O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :] * stride_od
    _store_tile(o_ptrs, out.to(O.dtype.element_ty), rows, N_Q, offs_d, HEAD_DIM, CHECK_D)
    tl.store(LSE + bh.to(tl.int64) * N_Q + rows, lse, mask=rows < N_Q)


# --------------------------------------------------------------------------- backward


@triton.jit
def _bwd_preprocess_kernel(O, DO, DELTA,
                           stride_ob, stride_oh, stride_on, stride_od,
                           stride_db, stride_dh, stride_dn, stride_dd,
                           H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """``delta = rowsum(dO * O)``, the term every dS needs: ``dS = P * (dP - delta)``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    CHECK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    o = _load_tile(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :] * stride_od,
                   rows, N_Q, offs_d, HEAD_DIM, True, CHECK_D)
    do = _load_tile(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn + offs_d[None, :] * stride_dd,
                    rows, N_Q, offs_d, HEAD_DIM, True, CHECK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + rows, delta, mask=rows < N_Q)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_dn, cols, offs_m, offs_d,
                lo, hi, offset, N_Q, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, CHECK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Query blocks ``[lo, hi)`` for one key tile: accumulate dV = P^T dO and dK = dS^T Q."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m  # (BLOCK_M,) query positions
        q = _load_tile(q_ptrs + start_m * stride_qn, rows, N_Q, offs_d, HEAD_DIM, MASK, CHECK_D)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_ptrs + start_m * stride_dn, rows, N_Q, offs_d, HEAD_DIM, MASK, CHECK_D)
        if MASK:
            lse = tl.load(lse_ptr + rows, mask=rows < N_Q, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # a row that saw no key: P = 0
            delta = tl.load(delta_ptr + rows, mask=rows < N_Q, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M): S^T
        p_t = tl.exp2(s_t * qk_scale - lse[None, :] * 1.4426950408889634)  # recompute P^T from lse
        if MASK:
            keep = rows[None, :] < N_Q
            if IS_CAUSAL:
                keep = keep & (cols[:, None] <= rows[None, :] + offset)
            p_t = tl.where(keep, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV += P^T dO
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M): (dO V^T)^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS^T = P^T * (dP^T - delta)
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # dK += dS^T Q (scale at the end)
    return dk, dv


@triton.jit
def _flash_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                           stride_qb, stride_qh, stride_qn, stride_qd,
                           stride_kb, stride_kh, stride_kn, stride_kd,
                           stride_vb, stride_vh, stride_vn, stride_vd,
                           stride_db, stride_dh, stride_dn, stride_dd,
                           H, N_Q, N_K, sm_scale, qk_scale,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: BLOCK_N keys of one (batch, head); dK and dV are written once, no atomics.

    dK and dV share the strides of K and V (the launcher allocates them so)."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    CHECK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    cols = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k_off = b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_off = b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
    k = _load_tile(K + k_off, cols, N_K, offs_d, HEAD_DIM, True, CHECK_D)  # (BLOCK_N, BLOCK_D), stays resident
    v = _load_tile(V + v_off, cols, N_K, offs_d, HEAD_DIM, True, CHECK_D)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    do_ptrs = DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dn + offs_d[None, :] * stride_dd
    lse_ptr = LSE + bh.to(tl.int64) * N_Q
    delta_ptr = DELTA + bh.to(tl.int64) * N_Q
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    offset = N_K - N_Q
    end = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M
    if IS_CAUSAL:
        # queries before lo see none of these keys; from mid on they see all of them
        lo = (tl.maximum(start_n - offset, 0) // BLOCK_M) * BLOCK_M
        mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(tl.maximum(mid, lo), end)
    else:
        lo = 0
        mid = 0
    tail = tl.maximum(mid, (N_Q // BLOCK_M) * BLOCK_M)  # the ragged last query block, if any
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_dn, cols, offs_m,
                         offs_d, lo, mid, offset, N_Q, qk_scale, HEAD_DIM, BLOCK_M, True, IS_CAUSAL, CHECK_D,
                         DOT_PRECISION)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_dn, cols, offs_m,
                         offs_d, mid, tail, offset, N_Q, qk_scale, HEAD_DIM, BLOCK_M, False, IS_CAUSAL, CHECK_D,
                         DOT_PRECISION)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_dn, cols, offs_m,
                         offs_d, tail, end, offset, N_Q, qk_scale, HEAD_DIM, BLOCK_M, True, IS_CAUSAL, CHECK_D,
                         DOT_PRECISION)
    _store_tile(DK + k_off, (dk * sm_scale).to(DK.dtype.element_ty), cols, N_K, offs_d, HEAD_DIM, CHECK_D)
    _store_tile(DV + v_off, dv.to(DV.dtype.element_ty), cols, N_K, offs_d, HEAD_DIM, CHECK_D)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d, lo, hi,
              offset, N_K, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
              IS_CAUSAL: tl.constexpr, CHECK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Key blocks ``[lo, hi)`` for one query tile: accumulate dQ = dS K."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_tile(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, MASK, CHECK_D)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_ptrs + start_n * stride_vn, cols, N_K, offs_d, HEAD_DIM, MASK, CHECK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s * qk_scale - lse[:, None])  # lse already in base 2
        if MASK:
            keep = cols[None, :] < N_K
            if IS_CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + offset)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # dQ += dS K (scale at the end)
    return dq


@triton.jit
def _flash_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                         stride_qb, stride_qh, stride_qn, stride_qd,
                         stride_kb, stride_kh, stride_kn, stride_kd,
                         stride_vb, stride_vh, stride_vn, stride_vd,
                         stride_db, stride_dh, stride_dn, stride_dd,
                         H, N_Q, N_K, sm_scale, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: BLOCK_M queries of one (batch, head). DQ shares the strides of Q."""
    pid = tl.program_id(0)
    if IS_CAUSAL:
        pid = tl.num_programs(0) - 1 - pid  # the longest rows first
    start_m = pid * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    CHECK_D: tl.constexpr = HEAD_DIM != BLOCK_D
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_off = b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = _load_tile(Q + q_off, rows, N_Q, offs_d, HEAD_DIM, True, CHECK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn + offs_d[None, :] * stride_dd,
                    rows, N_Q, offs_d, HEAD_DIM, True, CHECK_D)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # base 2; no key seen: P = 0
    delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=0.0)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    offset = N_K - N_Q
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(N_K, start_m + BLOCK_M + offset), 0)
        full = tl.maximum(tl.minimum(hi, start_m + offset + 1), 0)
    else:
        hi = N_K
        full = N_K
    full = (full // BLOCK_N) * BLOCK_N
    dq = _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d, 0, full,
                   offset, N_K, qk_scale, HEAD_DIM, BLOCK_N, False, IS_CAUSAL, CHECK_D, DOT_PRECISION)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d, full, hi,
                   offset, N_K, qk_scale, HEAD_DIM, BLOCK_N, True, IS_CAUSAL, CHECK_D, DOT_PRECISION)
    _store_tile(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), rows, N_Q, offs_d, HEAD_DIM, CHECK_D)


KERNELS = {"forward": _flash_fwd_kernel, "preprocess": _bwd_preprocess_kernel,
           "dkdv": _flash_bwd_dkdv_kernel, "dq": _flash_bwd_dq_kernel}


# --------------------------------------------------------------------------- configurations


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Chosen from compiles for sm_80 and sm_90 with
# Triton 3.6, 3.7 and 3.9 (shared memory and register use read back from the cubin, see
# tests/test_triton_compile.py and tests/test_compat.py): none spills registers, every one
# fits the target's shared memory.
_TABLE = {
    # tensor cores (sm_80+), 16-bit inputs, BLOCK_D <= 64
    "small": {"forward": [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
              "dkdv": [(32, 128, 8, 2), (32, 64, 4, 2)],
              "dq": [(128, 64, 8, 3), (64, 32, 4, 3)]},
    # tensor cores, BLOCK_D = 128: the accumulators double, so fewer rows per warp
    "large": {"forward": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3)],
              "dkdv": [(32, 64, 8, 3), (64, 32, 8, 3)],
              "dq": [(64, 64, 8, 3), (64, 32, 4, 3)]},
    # FMA units: sm_75 (Triton emits no mma there) and float32 anywhere (exact fp32 dots):
    # small tiles within 64 KB, at most two stages
    "fma": {"forward": [(64, 32, 8, 2), (32, 32, 4, 2)],
            "dkdv": [(32, 16, 8, 1), (16, 32, 8, 1)],
            "dq": [(16, 32, 4, 1)]},
}


# Hopper only, tried before the table's rows: Triton's sm_90 code (wgmma) holds these tiles in
# fewer registers than its sm_80 code.
# The 128 x 64 forward tile on one warpgroup (4 warps) needs 229-232 registers per thread on sm_90
# with Triton 3.6-3.9, but all 255 on sm_80, where Triton 3.6 spills; the dK/dV tiles with a
# third pipeline stage need 161-176 on sm_90 and spill 32-40 bytes on sm_80 with Triton 3.6.
_HOPPER = {"forward": [(128, 64, 4, 3)], "dkdv": [(32, 128, 8, 3), (32, 64, 4, 3)]}


def _bucket(cc: int, block_d: int, fp32: bool) -> str:
    if cc < 80 or fp32:
        return "fma"
    return "small" if block_d <= 64 else "large"


def configs(kernel: str, cc: int, head_dim: int = 64, dtype: torch.dtype = torch.float16) -> list[dict]:
    """The tile configurations tried for ``kernel`` on compute capability ``cc`` (75, 80, 90, ...).

    Each is a dict of meta-parameters plus ``num_warps`` and ``num_stages``. sm_75 and float32
    get small tiles (64 KB of shared memory, at most two stages): Triton emits no tensor-core
    instructions on sm_75, and exact float32 dots run on FMA units everywhere. Tensor-core GPUs
    get larger tiles and deeper software pipelines, fewer rows per warp when ``d > 64``. On the
    99 KB parts (sm_86, sm_89) the autotuner drops what does not fit and keeps the rest.
    """
    if kernel == "preprocess":
        return [dict(BLOCK_M=64, num_warps=4, num_stages=1)]
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; one of {sorted(KERNELS)}")
    block_d = max(16, triton.next_power_of_2(head_dim))
    bucket = _bucket(cc, block_d, dtype == torch.float32)
    rows = _TABLE[bucket][kernel]
    if cc >= 90 and bucket == "small":
        rows = _HOPPER.get(kernel, []) + rows
    return [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s) for m, n, w, s in rows]


def _tuned(kernel: str):
    """The launchable form of a kernel: autotuned on a GPU, the bare kernel under the interpreter.

    Every configuration of this GPU is registered; before tuning a new shape, the ones meant
    for another head-dim bucket or dtype are pruned.
    """
    cap = _triton.capability()
    if cap is None:
        return KERNELS[kernel]
    cc = cap[0] * 10 + cap[1]

    cases = [(d, dtype) for d in (64, 128) for dtype in (torch.float16, torch.float32)]  # every bucket of this GPU
    rows = dict.fromkeys((c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"])
                         for d, dtype in cases for c in configs(kernel, cc, d, dtype))  # ordered, no repeats
    tries = [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in rows]

    def prune(candidates, named_args, **kwargs):
        fp32 = kwargs.get("DOT_PRECISION") == "ieee"
        wanted = {tuple(c.values()) for c in configs(kernel, cc, kwargs["HEAD_DIM"], torch.float32 if fp32 else torch.float16)}
        return [t for t in candidates if (t.kwargs["BLOCK_M"], t.kwargs["BLOCK_N"], t.num_warps, t.num_stages) in wanted]

    return triton.autotune(configs=tries, key=["N_Q", "N_K", "HEAD_DIM", "IS_CAUSAL"],
                           prune_configs_by={"early_config_prune": prune})(KERNELS[kernel])


_LAUNCH = {name: _tuned(name) for name in ("forward", "dkdv", "dq")}


def _meta() -> dict:
    """Meta-parameters the launch passes itself: the fixed tile under the interpreter, none when tuned.
    (Every launch also passes ``enable_fp_fusion``, see :data:`attnkit._triton.FP_FUSION`.)"""
    return dict(INTERPRETER_CONFIG) if _triton.capability() is None else {}


_POINTERS = {"Q", "K", "V", "O", "LSE", "DO", "DELTA", "DK", "DV", "DQ"}
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def compile_for(kernel: str, cc: int, config: dict, head_dim: int = 64, dtype: torch.dtype = torch.float16,
                causal: bool = True, fp_fusion: bool | None = None):
    """Compile one kernel configuration for an NVIDIA GPU of compute capability ``cc``, no GPU needed.

    Returns Triton's ``CompiledKernel`` (``.metadata.shared`` bytes of shared memory, ``.asm``
    with ``"ptx"`` and ``"cubin"``). Arguments are specialised as a launch on aligned, contiguous
    tensors would be: pointers and strides divisible by 16, the innermost stride equal to 1.
    Needs the compiled kernels: import this module in a process with ``TRITON_INTERPRET=0``.
    ``fp_fusion`` defaults to what launches use, :data:`attnkit._triton.FP_FUSION`.
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    fn = KERNELS[kernel]
    if not isinstance(fn, JITFunction):
        raise RuntimeError("the kernels were defined for Triton's interpreter; import attnkit.triton_flash in a "
                           "fresh process with TRITON_INTERPRET=0 to compile them for a GPU")
    signature, constants, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            signature[name] = "*fp32" if name in ("LSE", "DELTA") else "*" + _TRITON_TYPES[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.startswith("stride") and name.endswith("d"):
            signature[name] = "constexpr"  # the runtime turns an int argument equal to 1 into a constant
            constants[name] = 1
        elif name.startswith("stride") or name in ("N_Q", "N_K"):
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "H":
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    meta = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), IS_CAUSAL=causal,
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                **{k: v for k, v in config.items() if k.startswith("BLOCK")})
    constants.update({k: v for k, v in meta.items() if signature.get(k) == "constexpr"})
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", cc, 32),
                          options=dict(num_warps=config["num_warps"], num_stages=config["num_stages"],
                                       enable_fp_fusion=_triton.FP_FUSION if fp_fusion is None else fp_fusion))


# --------------------------------------------------------------------------- launchers


def _check_inputs(q, k, v, what: str):
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(name, t, ndim=4, floating=True)
    chk.same_dtype(q=q, k=k, v=v)
    B, H, Nq, d = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        raise ValueError(f"{what}: q, k, v must share (B, H), got q {chk.shape_str(q)}, k {chk.shape_str(k)}, "
                         f"v {chk.shape_str(v)}")
    if k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"{what}: q, k and v must share the head dim d, got q {chk.shape_str(q)}, "
                         f"k {chk.shape_str(k)}, v {chk.shape_str(v)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"{what}: k and v must have the same number of keys Nk, got k {chk.shape_str(k)} "
                         f"and v {chk.shape_str(v)}")
    if Nq == 0 or k.shape[2] == 0 or B * H == 0:
        raise ValueError(f"{what}: empty input, q {chk.shape_str(q)}, k {chk.shape_str(k)}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"{what}: head dim d={d} (q {chk.shape_str(q)}) is above {MAX_HEAD_DIM}; each program "
                         f"keeps a (BLOCK_M, d) tile in registers")
    _check_dtype_and_device(what, q=q, k=k, v=v)


def _check_dtype_and_device(what: str, **tensors):
    q = next(iter(tensors.values()))
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{what}: dtype {q.dtype} is not supported; use float16, bfloat16 or float32")
    want = _triton.device()
    for name, t in tensors.items():
        if t.device.type != want.type:
            where = "the CPU (Triton's interpreter: no CUDA GPU here)" if want.type == "cpu" else "the GPU"
            raise ValueError(f"{what}: {name} {chk.shape_str(t)} is on {t.device}, but the kernels run on {where}; "
                             f"move it with .to({want.type!r})")
    if q.dtype == torch.bfloat16:
        cap = _triton.capability()
        if cap is None:
            raise TypeError(f"{what}: bfloat16 under Triton's CPU interpreter gives wrong tl.dot results; "
                            f"use float16 or float32 on the CPU (bfloat16 needs a GPU with sm_80+)")
        if cap < (8, 0):
            raise TypeError(f"{what}: bfloat16 needs compute capability 8.0 (Ampere) or newer; this GPU, "
                            f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), has no bfloat16 tensor cores. "
                            f"Use float16")


def _common(q, k):
    d = q.shape[-1]
    block_d = max(16, triton.next_power_of_2(d))  # tl.dot needs >= 16; the padding is masked
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays fp32 (no TF32 rounding)
    sm_scale = 1.0 / math.sqrt(d)
    return d, block_d, precision, sm_scale


def triton_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention forward as a Triton kernel.

    Args:
        q: queries ``(B, H, Nq, d)``; float16, bfloat16 (sm_80+) or float32; d up to 128.
        k, v: keys and values ``(B, H, Nk, d)``, same dtype and device.
        is_causal: mask keys in each query's future (bottom-right aligned when Nq != Nk).

    Returns:
        ``out (B, H, Nq, d)`` in the input dtype and ``lse (B, H, Nq)``, the natural-log
        log-sum-exp of each query's scaled scores, in float32 (``-inf`` where no key is visible).
    """
    _check_inputs(q, k, v, "triton_flash_forward")
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    d, block_d, precision, sm_scale = _common(q, k)
    out = torch.empty_like(q)  # (B, H, Nq, d)
    lse = torch.empty((B, H, Nq), device=q.device, dtype=torch.float32)  # (B, H, Nq)
    grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _LAUNCH["forward"][grid](
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Nq, Nk, sm_scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=block_d, IS_CAUSAL=bool(is_causal), DOT_PRECISION=precision, **_meta(),
        enable_fp_fusion=_triton.FP_FUSION)
    return out, lse


def triton_flash_backward(q, k, v, out, lse, d_out, is_causal: bool = False):
    """Gradients ``(dq, dk, dv)`` of :func:`triton_flash_forward`, from its ``out`` and ``lse``.

    Three launches: ``delta = rowsum(dO * O)``; dK and dV, one program per key block; dQ, one
    program per query block (FlashAttention-2's split: every gradient is written exactly once).
    """
    _check_inputs(q, k, v, "triton_flash_backward")
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    for name, t, shape in (("out", out, q.shape), ("d_out", d_out, q.shape), ("lse", lse, q.shape[:3])):
        chk.tensor(name, t, floating=True)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"triton_flash_backward: {name} must have shape {tuple(shape)}, got {chk.shape_str(t)}")
    d, block_d, precision, sm_scale = _common(q, k)
    out, d_out = out.to(q.dtype), d_out.to(q.dtype)
    lse = lse.to(torch.float32).contiguous()  # (B, H, Nq)
    delta = torch.empty_like(lse)  # (B, H, Nq)
    pre = configs("preprocess", 0)[0]
    _bwd_preprocess_kernel[(triton.cdiv(Nq, pre["BLOCK_M"]), B * H)](
        out, d_out, delta, *out.stride(), *d_out.stride(), H, Nq, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_M=pre["BLOCK_M"], num_warps=pre["num_warps"], enable_fp_fusion=_triton.FP_FUSION)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if dk.stride() != k.stride() or dv.stride() != v.stride() or dq.stride() != q.stride():
        raise ValueError("triton_flash_backward: q, k, v must be dense (empty_like must keep their strides); "
                         "call .contiguous() first")
    strides = (*q.stride(), *k.stride(), *v.stride(), *d_out.stride())
    scalars = (H, Nq, Nk, sm_scale, sm_scale * LOG2E)
    flags = dict(HEAD_DIM=d, BLOCK_D=block_d, IS_CAUSAL=bool(is_causal), DOT_PRECISION=precision,
                 enable_fp_fusion=_triton.FP_FUSION)
    _LAUNCH["dkdv"][lambda meta: (triton.cdiv(Nk, meta["BLOCK_N"]), B * H)](
        q, k, v, d_out, lse, delta, dk, dv, *strides, *scalars, **flags, **_meta())
    _LAUNCH["dq"][lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * H)](
        q, k, v, d_out, lse, delta, dq, *strides, *scalars, **flags, **_meta())
    return dq, dk, dv


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    """``(..., N, d)`` as ``(B, H, N, d)`` without copying where a view will do."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x.unsqueeze(0)
    if x.ndim == 2:
        return x.unsqueeze(0).unsqueeze(0)
    return x.reshape(-1, *x.shape[-3:])


class TritonFlashAttention(torch.autograd.Function):
    """``TritonFlashAttention.apply(q, k, v, is_causal=False)`` on ``(..., N, d)`` inputs.

    The forward and backward passes are the Triton kernels of this module. Saves ``q, k, v,
    out`` and the float32 log-sum-exp ``(..., N)`` with ``ctx.save_for_backward``.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        for name, t in (("q", q), ("k", k), ("v", v)):
            chk.tensor(name, t, min_ndim=2, floating=True)
        if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
            raise ValueError(f"TritonFlashAttention: q, k, v must share their leading dims (no broadcasting), "
                             f"got q {chk.shape_str(q)}, k {chk.shape_str(k)}, v {chk.shape_str(v)}")
        out, lse = triton_flash_forward(_as_4d(q), _as_4d(k), _as_4d(v), is_causal)
        out = out.reshape(q.shape)  # (..., Nq, d)
        lse = lse.reshape(q.shape[:-1])  # (..., Nq)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.is_causal = bool(is_causal)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        q4, k4, v4 = (_as_4d(t.contiguous()) for t in (q, k, v))  # (B, H, N, d)
        dq, dk, dv = triton_flash_backward(q4, k4, v4, _as_4d(out), lse.reshape(q4.shape[:3]),
                                           _as_4d(d_out.contiguous()), ctx.is_causal)
        return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), None
