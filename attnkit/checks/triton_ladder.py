"""Checkers for the ladder of small Triton kernels before notebook 10's fused softmax and notebook
11's FlashAttention: ``triton_scale_shift`` (a masked load and store), ``triton_row_max`` (a row
reduction), ``triton_matmul`` (a tiled product with ``tl.dot``) and ``triton_attention_tile``
(attention in one tile).

Each checker launches the learner's function on cases from easy to awkward and wants a Triton
kernel launched, no PyTorch doing the arithmetic, every access inside its tensor and code that
would compile for a GPU. Three watchers look at *how* the call computed:

* :class:`attnkit.checks.bounds.Bounds`: every interpreted ``tl.load`` and ``tl.store`` stays
  inside its tensor (a missing mask, ``offsets <= n``, a row mask forgotten);
* :class:`attnkit.checks._triton.CompileCheck`: the kernels launched compile for sm_80 (a loop
  variable that changes type, a ``tl.dot`` narrower than 16);
* the launch counter and the shortcut ban of every checker.

Wrong values are then compared with what known mistakes compute, recomputed in float64 for
every block size a learner might pick: padding lanes loaded as 0 in a max, a reduction along
the wrong axis, strides ignored, a grid that rounds down, one block of ``K`` only, a float16
accumulator, no ``1/sqrt(d)``, softmax over the queries, padding keys left in the softmax, no
max subtracted, no division by the sum, every head given head 0's answer.
"""

from __future__ import annotations

import math

import torch

from .. import _triton
from ._harness import TOLERANCE, Ban, Checker, _close, gen, randn
from .basics import ATTENTION_ATEN, ATTENTION_FUNCTIONS, SOFTMAX_ATEN, SOFTMAX_FUNCTIONS

BLOCKS = [2 ** k for k in range(14)]  # every block size a learner might pick, 1 ... 8192
SLACK = 4096  # elements of NaN after every contiguous input: what a load past the end reads on a GPU
_ARITH = ("mul", "add", "sub", "div", "true_divide", "addcmul", "addcdiv", "lerp", "fma")
TORCH_ARITH = {name: None for op in _ARITH for name in (
    f"torch.{op}", f"torch.Tensor.{op}", f"torch.Tensor.{op}_", f"torch.Tensor.__{op}__", f"torch.Tensor.__r{op}__",
    f"torch.Tensor.__i{op}__")}
TORCH_MAX = {name: None for name in (
    "torch.max", "torch.Tensor.max", "torch.amax", "torch.Tensor.amax", "torch.maximum", "torch.Tensor.maximum",
    "torch.fmax", "torch.Tensor.fmax", "torch.aminmax", "torch.Tensor.aminmax", "torch.sort", "torch.Tensor.sort",
    "torch.topk", "torch.Tensor.topk", "torch.kthvalue", "torch.Tensor.kthvalue", "torch.cummax",
    "torch.Tensor.cummax", "torch.nn.functional.max_pool1d", "torch.nn.functional.max_pool2d",
    "torch.nn.functional.adaptive_max_pool1d", "torch.max_pool1d", "torch.logsumexp", "torch.Tensor.logsumexp")}
TORCH_MATMUL = {name: None for name in (
    "torch.matmul", "torch.Tensor.matmul", "torch.Tensor.__matmul__", "torch.Tensor.__rmatmul__", "torch.mm",
    "torch.Tensor.mm", "torch.bmm", "torch.Tensor.bmm", "torch.einsum", "torch.tensordot", "torch.addmm",
    "torch.Tensor.addmm", "torch.baddbmm", "torch.addbmm", "torch.inner", "torch.mv", "torch.Tensor.mv",
    "torch.dot", "torch.Tensor.dot", "torch.outer", "torch.nn.functional.linear", "torch.linalg.multi_dot",
    "torch.chain_matmul", "torch.sum", "torch.Tensor.sum")}
TORCH_EXP = {name: None for name in (
    "torch.exp", "torch.Tensor.exp", "torch.exp_", "torch.Tensor.exp_", "torch.exp2", "torch.Tensor.exp2",
    "torch.special.exp2", "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp", "torch.sigmoid")}

NO_KERNEL_HINT = ("no Triton kernel was launched: this exercise is the kernel itself. Write a @triton.jit function "
                  "and launch it from your wrapper with kernel[grid](...)")
NEIGHBOUR_HINT = ("each row mixes in values from the next row: the load has no column mask. Load with "
                  "mask=cols < N when BLOCK_N is larger than N")
STRIDE_HINT = ("right on contiguous inputs, wrong on this strided one: element (i, j) sits at X + i * stride_xm + "
               "j * stride_xn; pass x.stride(0), x.stride(1) to the kernel instead of assuming N and 1")

# triton_scale_shift
SCALE_SHIFT_BAN = "Do the multiply and add inside your @triton.jit kernel; the wrapper only allocates and launches."
SS_MASK_FIX = ("Mask every tl.load and tl.store with mask = offsets < n, so the lanes of the last block that lie "
               "past the end stay idle")
SS_ONE_PAST = ("your kernel reads and writes element n, one past the end: the mask is offsets <= n, but the last "
               "element is n - 1, so the mask must be offsets < n")
SS_GRID_HINT = ("your grid does not cover every element: elements {start} to {last} (the last ones) were never "
                "written, as when the grid is n // BLOCK, which rounds down. Launch triton.cdiv(n, BLOCK) programs so "
                "the last, partial block gets one too")
SS_STRIDE_HINT = ("right on contiguous inputs, wrong on this strided view (x[::3], stride 3): element i of x sits at "
                  "X + i * stride_x; pass x.stride(0) to the kernel and load X + offsets * stride_x")
SS_SWAP_HINT = "scale and shift are swapped: the result is x * scale + shift"
SS_ORDER_HINT = "shift was added before scaling: the result is x * scale + shift, not (x + shift) * scale"

# triton_row_max
ROW_MAX_BAN = "Take the max inside your @triton.jit kernel with tl.max; the wrapper only allocates and launches."
RM_MASK_FIX = ("Mask the loads with (rows < M)[:, None] & (cols < N)[None, :] and the store with rows < M, so padding "
               "lanes stay idle")
RM_OTHER_HINT = ("rows whose entries are all negative came out as 0: the padding lanes past column N were loaded as 0 "
                 "(other=0.0, or no other=, which reads as 0 in the interpreter and as garbage on a GPU), and 0 beats "
                 "every negative entry. Load with other=-float('inf'), the one value that never wins a max")
RM_AXIS_HINT = ("you reduced down the columns (axis=0), not along each row: tl.max(x, axis=1) reduces the BLOCK_N "
                "columns of each of the BLOCK_M rows, giving one max per row")
RM_FIRST_BLOCK_HINT = ("only the first {block} columns of each row count: BLOCK_N is smaller than N and there is no "
                       "loop. Either take BLOCK_N = triton.next_power_of_2(N), or loop over the row in steps of "
                       "BLOCK_N keeping a running m = tl.maximum(m, tl.max(x, axis=1))")
RM_ROWS_HINT = ("your grid does not cover every row: rows {start} to {last} (the last ones) are wrong, the rows before "
                "are right, as when the grid is M // BLOCK_M (it rounds down). Launch triton.cdiv(M, BLOCK_M) programs, "
                "and mask loads and the store with rows < M")

# triton_matmul
MATMUL_BAN = "Multiply the tiles inside your @triton.jit kernel with tl.dot; the wrapper only allocates and launches."
MM_MASK_FIX = ("Mask both loads on all their sides: a with (rows < M) and (ks < K), b with (ks < K) and (cols < N), "
               "other=0.0 so padding adds nothing to tl.dot, and the store with (rows < M) and (cols < N)")
MM_GRID_HINT = ("your grid does not cover the whole of C: {what} are wrong and the rest is right, as when the grid is "
                "(M // BLOCK_M, N // BLOCK_N), which rounds down. Launch (triton.cdiv(M, BLOCK_M), triton.cdiv(N, "
                "BLOCK_N)) programs and mask the last, partial tiles")
MM_FIRST_K_HINT = ("only the first {block} of the K = {K} products were summed: loop over all of K, for start in "
                   "range(0, K, BLOCK_K) (the last, partial block included and masked with ks < K), adding each "
                   "block with acc = tl.dot(a, b, acc)")
MM_LAST_K_HINT = ("the last, partial block of K was skipped ({done} of K = {K} products summed): loop with "
                  "range(0, K, BLOCK_K), which includes it, and mask ks < K on both loads")
MM_STRIDE_HINT = ("right on contiguous inputs, wrong when b is a transposed view (b = bt.T, strides (1, K)): element "
                  "(k, j) of b sits at B + k * stride_bk + j * stride_bn; pass b.stride(0), b.stride(1) instead of "
                  "assuming N and 1")
MM_TRANSPOSED_HINT = "C came out transposed: row i, column j of C is the product of row i of a and column j of b"
MM_FP16_HINT = ("the float16 result is further from the exact product than one rounding: the sum was accumulated in "
                "float16. Accumulate in float32, acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32) with tl.dot's default "
                "out_dtype (float32), and round once when storing: acc.to(C.dtype.element_ty)")

# triton_attention_tile
TILE_BAN = ("Compute the scores, the softmax and P @ V inside your @triton.jit kernel; the wrapper only allocates "
            "and launches.")
AT_MASK_FIX = ("Mask every load: q with rows < Nq, k and v with cols < Nk, all three with dims < d (other=0.0), and "
               "the store with rows < Nq and dims < d")
AT_SCALE_HINT = "the scores are not scaled by 1/sqrt(d): multiply q k^T by sm_scale = 1/sqrt(d)"
AT_BLOCK_D_HINT = ("the scores are scaled by 1/sqrt(BLOCK_D) = 1/sqrt({block}), the padded block width: the scale is "
                   "1/sqrt(d) with the true head dim d = {d}")
AT_EXP2_HINT = ("tl.exp2 without log2(e): exp2(x) is 2**x, so either use tl.exp or multiply the scores by "
                "log2(e) = 1.4427 before tl.exp2")
AT_EXP_LOG2E_HINT = ("tl.exp with log2(e) folded into the scale: log2(e) belongs with tl.exp2 (exp2(x * log2(e)) = "
                     "e**x); with tl.exp scale the scores by 1/sqrt(d) alone")
AT_AXIS_HINT = ("the softmax was taken over the queries (axis=0): each query's weights over the keys must sum to 1, "
                "so take tl.max(s, axis=1) and tl.sum(p, axis=1) along each row of scores")
AT_PADDING_HINT = ("the padding keys took part in the softmax: BLOCK_N > Nk, and the lanes past the last key loaded "
                   "as 0 give scores of 0, whose exp joins the sum. Set their scores to -inf: "
                   "s = tl.where(cols[None, :] < Nk, s, float('-inf'))")
AT_OVERFLOW_HINT = ("inf or NaN on large scores: exp overflows float32 above about 88. Subtract each row's max before "
                    "tl.exp: p = tl.exp(s - tl.max(s, axis=1)[:, None]); the softmax does not change")
AT_NO_DIVIDE_HINT = ("the output was not divided by the sum of the weights: out = tl.dot(p, v) / l[:, None] with "
                     "l = tl.sum(p, axis=1)")
AT_HEAD0_HINT = ("every head got head 0's answer: the program of head h = tl.program_id(0) must offset its pointers by "
                 "h * stride_qh (and stride_kh, stride_vh, stride_oh)")
AT_HEADS_HINT = ("{heads} wrong while head 0 is right: launch one program per head, grid (H,), and offset "
                 "each program's pointers by h * stride_qh (and stride_kh, stride_vh, stride_oh) with h = "
                 "tl.program_id(0)")
AT_STRIDE_HINT = ("right on contiguous inputs, wrong on this strided view (q = x.transpose(0, 1)): element (h, n, j) "
                  "sits at Q + h * stride_qh + n * stride_qn + j * stride_qd; pass q.stride(), k.stride(), v.stride() "
                  "instead of assuming a contiguous layout")
AT_HEAD_DIM_HINT = ("right for power-of-two head dims, wrong for d = 40: BLOCK_D is padded to 64, so mask dims < d on "
                    "every load and on the store, and scale by 1/sqrt(40)")


# --------------------------------------------------------------------------- shared


def _slack(x: torch.Tensor) -> torch.Tensor:
    """The same values, contiguous, followed in memory by NaN (what a load past the end reads on a GPU)."""
    from ._triton import padded  # imports triton: only when a check runs
    return padded(x, SLACK, float("nan"))


def _call(c: Checker, label: str, fix: str, one_past: str, *args):
    """The learner's call, watched: a kernel launched, every access inside its tensor (the first
    thing said when one is not), then the compile check and the version problems of
    :func:`attnkit.checks._triton.call_kernel`."""
    from ._triton import call_kernel, count_launches  # imports triton: only when a check runs
    from .bounds import Bounds

    with count_launches() as launched, Bounds() as bounds:
        try:
            got = call_kernel(c, label, *args)
        except AssertionError as e:
            hint = bounds.hint(fix, one_past)
            if hint is None or "not implemented yet" in str(e):
                raise
            error = e
        else:
            error, hint = None, bounds.hint(fix, one_past)
    if hint is not None:
        raise AssertionError(f"{c.name}: {hint}\n  failing case: {label}") from error
    if not launched:
        c.fail(label, NO_KERNEL_HINT)
    return got


def _tail_start(ok: list[bool]) -> int | None:
    """Where a wrong tail starts, when the first entries are right and the rest wrong, and the tail
    is shorter than the largest power of two dividing its start (a grid that rounds down)."""
    if all(ok) or not ok[0]:
        return None
    start = ok.index(False)
    if any(ok[start:]):
        return None
    block = start & -start
    return start if len(ok) - start < block else None


def _tolerance(dtype: torch.dtype, err: float = 0.0) -> dict:
    """The harness's bound for ``dtype``, or four times a plain implementation's error when larger."""
    base = TOLERANCE.get(dtype, TOLERANCE[torch.float16])
    return dict(rtol=base["rtol"], atol=max(base["atol"], 4 * err))


def _gpu() -> bool:
    return _triton.device().type == "cuda"


# --------------------------------------------------------------------------- triton_scale_shift


def check_triton_scale_shift(fn) -> str:
    """Check ``fn(x (n,), scale, shift) -> x * scale + shift (n,)``, computed by a Triton kernel."""
    from .. import triton_ladder

    dev = _triton.device()
    c = Checker("triton_scale_shift", fn, Ban(TORCH_ARITH, (), (triton_ladder.triton_scale_shift,),
                                              hint=SCALE_SHIFT_BAN))
    g = gen(1001)
    cases = [
        ("n = 1024", randn(g, 1024), 2.5, -1.0),
        ("n = 1001 (not a multiple of any block)", randn(g, 1001), -0.5, 3.0),
        ("n = 37 (shorter than one block)", randn(g, 37), 4.0, 0.25),
        ("a strided view x[::3] of 3000 elements (stride 3)", randn(g, 3000)[::3], 1.5, -2.0),
        ("float16, n = 777", randn(g, 777, dtype=torch.float16), 0.75, 1.0),
        ("one element", randn(g, 1), 3.0, 2.0),
    ]
    for label, x, scale, shift in cases:
        with c.case(label):
            x = x.to(dev)
            if x.is_contiguous():
                x = _slack(x)
            got = _call(c, label, SS_MASK_FIX, SS_ONE_PAST, x, scale, shift)
            xd = x.detach().cpu().double()
            want = (xd * scale + shift).to(x.dtype).double()  # rounded once, like the kernel's store
            wrong = [((xd * shift + scale).to(x.dtype).double(), SS_SWAP_HINT),
                     (((xd + shift) * scale).to(x.dtype).double(), SS_ORDER_HINT)]
            if not x.is_contiguous():
                flat = torch.as_strided(x.detach(), (x.shape[0],), (1,)).cpu().double()
                wrong.append(((flat * scale + shift).to(x.dtype).double(), SS_STRIDE_HINT))
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == x.dtype:
                got_cpu = got.detach().cpu().double()
                ok = [bool(torch.allclose(got_cpu[i], want[i], **TOLERANCE.get(x.dtype, TOLERANCE[torch.float32])))
                      for i in range(want.shape[0])]
                start = _tail_start(ok)
                if start is not None:
                    c.fail(label, SS_GRID_HINT.format(start=start, last=want.shape[0] - 1))
            c.expect(label, got, want, what="output", dtype=x.dtype, wrong=wrong)
    return c.passed("n a multiple of the block, ragged, shorter than a block, strided, float16, one element; "
                    "every load and store inside its tensor")


# --------------------------------------------------------------------------- triton_row_max


def _row_max_axis0(xd: torch.Tensor, b: int) -> torch.Tensor:
    """What a kernel with square ``b x b`` tiles computes when it reduces along axis 0: entry
    ``p * b + j`` is the max over the rows of block ``p`` of the columns ``j, j + b, ...``."""
    M, N = xd.shape
    pad_n = (-N) % b
    x = torch.cat([xd, xd.new_full((M, pad_n), float("-inf"))], 1)  # (M, N + pad)
    cols = x.view(M, -1, b).amax(1)  # (M, b): max over the column blocks, lane by lane
    out = []
    for p in range(0, M, b):
        out.append(cols[p:p + b].amax(0))  # (b,)
    return torch.cat(out)[:M]


def check_triton_row_max(fn) -> str:
    """Check ``fn(x (M, N)) -> (M,)``: the largest entry of each row, computed by a Triton kernel."""
    from .. import triton_ladder

    dev = _triton.device()
    c = Checker("triton_row_max", fn, Ban(TORCH_MAX, (), (triton_ladder.triton_row_max,), hint=ROW_MAX_BAN))
    g = gen(1002)
    masked = randn(g, 5, 20) * 3
    masked[0, ::3] = float("-inf")
    masked[2] = float("-inf")
    wide = randn(g, 9, 40) * 3
    tall = randn(g, 12, 6) * 3
    long = randn(g, 3, 2100)
    long[:, -7:] += 10.0  # the max sits in the last columns
    cases = [
        ("8 rows x 37 columns (N not a power of two)", randn(g, 8, 37) * 3),
        ("every entry negative, 10 x 23", -randn(g, 10, 23).abs() - 1.0),
        ("13 rows x 16 columns (M not a multiple of the row block)", randn(g, 13, 16) * 3),
        ("a column slice x[:, 2:35] of a (9, 40) tensor (row stride 40)", wide[:, 2:35]),
        ("a transposed tensor: (6, 12).T, column stride 6", tall.t()),
        ("-inf entries and an all -inf row", masked),
        ("long rows: 3 x 2100, the max in the last columns", long),
        ("float16, all negative, 6 x 45", (-randn(g, 6, 45).abs() - 0.5).half()),
        ("one column, 5 x 1", randn(g, 5, 1)),
    ]
    for label, x in cases:
        with c.case(label):
            x = x.to(dev)
            if x.is_contiguous():
                x = _slack(x)
            got = _call(c, label, RM_MASK_FIX, "", x)
            xd = x.detach().cpu().double()
            M, N = xd.shape
            want = xd.amax(1)  # (M,) exact in any dtype
            wrong = []
            if any(N % b for b in BLOCKS if b > 1):
                wrong.append((want.clamp_min(0.0), RM_OTHER_HINT))
            for b in BLOCKS:
                if 1 < b <= 64:
                    wrong.append((_row_max_axis0(xd, b), RM_AXIS_HINT))
                if b < N:
                    wrong.append((xd[:, :b].amax(1), RM_FIRST_BLOCK_HINT.format(block=b)))
            if x.is_contiguous():
                room = x.untyped_storage().nbytes() // x.element_size() - x.storage_offset()
                flat = torch.as_strided(x.detach(), (room,), (1,)).cpu().double()
                for L in sorted({-(-N // b) * b for b in BLOCKS} - {N}):
                    if (M - 1) * N + L <= flat.numel():
                        wrong.append((flat.as_strided((M, L), (N, 1)).nan_to_num(float("-inf")).amax(1),
                                      NEIGHBOUR_HINT))
            else:
                for strides in ((N, 1), (x.stride(0), 1)):
                    reach = x.storage_offset() + (M - 1) * strides[0] + (N - 1) * strides[1]
                    if strides != x.stride() and reach < x.untyped_storage().nbytes() // x.element_size():
                        wrong.append((x.detach().as_strided((M, N), strides).cpu().double().amax(1), STRIDE_HINT))
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == x.dtype:
                got_cpu = got.detach().cpu().double()
                if not any(_close(got_cpu, w, None) for w, _ in wrong):
                    start = _tail_start([bool(_close(got_cpu[i:i + 1], want[i:i + 1], None)) for i in range(M)])
                    if start is not None:
                        c.fail(label, RM_ROWS_HINT.format(start=start, last=M - 1))
            c.expect(label, got, want, what="row max", dtype=x.dtype, wrong=wrong)
    return c.passed("ragged N and M, all-negative rows, strided and transposed inputs, -inf rows, long rows, "
                    "float16; every load and store inside its tensor")


# --------------------------------------------------------------------------- triton_matmul


def _grid_hint(got: torch.Tensor, want: torch.Tensor, tol: dict) -> str | None:
    """The hint for a grid that rounds down: the top-left ``r x c`` block of C right, the last rows
    and/or columns wrong, each wrong stretch shorter than the largest power of two dividing its start."""
    M, N = want.shape
    ok = torch.isclose(got, want, equal_nan=True, **tol)  # (M, N)
    r = int(ok[:, 0].int().cumprod(0).sum())  # leading rows right in column 0
    c = int(ok[0, :].int().cumprod(0).sum())  # leading columns right in row 0
    if r == 0 or c == 0 or (r == M and c == N) or not bool(ok[:r, :c].all()):
        return None
    if ok[r:, :].any() or ok[:, c:].any():
        return None
    if (r < M and M - r >= (r & -r)) or (c < N and N - c >= (c & -c)):
        return None
    parts = ([f"rows {r} to {M - 1}"] if r < M else []) + ([f"columns {c} to {N - 1}"] if c < N else [])
    return MM_GRID_HINT.format(what=" and ".join(parts))


def check_triton_matmul(fn) -> str:
    """Check ``fn(a (M, K), b (K, N)) -> a @ b (M, N)``: a tiled product with ``tl.dot`` in a Triton kernel.
    On a GPU the float32 cases run in float16 (a float32 tl.dot rounds its inputs to TF32 there)."""
    from .. import triton_ladder

    dev = _triton.device()
    c = Checker("triton_matmul", fn, Ban(TORCH_MATMUL, (), (triton_ladder.triton_matmul,), hint=MATMUL_BAN))
    g = gen(1003)
    f32 = torch.float16 if _gpu() else torch.float32
    # K = 512 positive products of about 1: a float16 running sum near 500 has a spacing of 0.5, so
    # each block added to it is rounded by up to 0.25; a float32 accumulator rounds once at the end.
    pos_a = (torch.rand(16, 512, generator=g, dtype=torch.float64) + 0.5).half()
    pos_b = (torch.rand(512, 16, generator=g, dtype=torch.float64) + 0.5).half()
    cases = [
        ("(32, 64) @ (64, 32)", randn(g, 32, 64), randn(g, 64, 32), "basic"),
        ("ragged: (20, 80) @ (80, 24)", randn(g, 20, 80), randn(g, 80, 24), "basic"),
        ("b a transposed view: (20, 40) @ (24, 40).T", randn(g, 20, 40), randn(g, 24, 40).t(), "basic"),
        ("tall and thin: (70, 16) @ (16, 9)", randn(g, 70, 16), randn(g, 16, 9), "basic"),
        ("small: (3, 5) @ (5, 2), padded to 16-wide tiles", randn(g, 3, 5), randn(g, 5, 2), "basic"),
        ("float16, K = 512, positive entries", pos_a, pos_b, "fp16"),
    ]
    for label, a, b, kind in cases:
        with c.case(label):
            dtype = torch.float16 if kind == "fp16" else f32
            a, b = a.to(dtype).to(dev), b.to(dtype).to(dev)
            a, b = (_slack(t) if t.is_contiguous() else t for t in (a, b))
            got = _call(c, label, MM_MASK_FIX, "", a, b)
            ad, bd = a.detach().cpu().double(), b.detach().cpu().double()
            M, K = ad.shape
            N = bd.shape[1]
            want = ad @ bd  # (M, N)
            plain = (a.detach().cpu().float() @ b.detach().cpu().float()).to(dtype).double()  # rounded once
            tol = _tolerance(dtype, (plain - want).abs().max().item())
            if kind == "fp16":  # one rounding to float16: half its spacing at the largest entry, plus float32 slack
                half = 2.0 ** (math.floor(math.log2(want.abs().max().item())) - 11)
                tol = dict(rtol=0.0, atol=half + 0.01)
            wrong = []
            if M == N:
                wrong.append((want.t(), MM_TRANSPOSED_HINT))
            for blk in BLOCKS:
                if 16 <= blk < K:
                    wrong.append((ad[:, :blk] @ bd[:blk], MM_FIRST_K_HINT.format(block=blk, K=K)))
                    done = (K // blk) * blk
                    if done not in (K, blk):
                        wrong.append((ad[:, :done] @ bd[:done], MM_LAST_K_HINT.format(done=done, K=K)))
            if not b.is_contiguous():
                reach = b.storage_offset() + (K - 1) * N + N - 1
                if reach < b.untyped_storage().nbytes() // b.element_size():
                    wrong.append((ad @ b.detach().as_strided((K, N), (N, 1)).cpu().double(), MM_STRIDE_HINT))
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == dtype:
                got_cpu = got.detach().cpu().double()
                if not _close(got_cpu, want, tol) and not any(_close(got_cpu, w, tol) for w, _ in wrong):
                    grid = _grid_hint(got_cpu, want, tol)
                    if grid is not None:
                        c.fail(label, grid)
                    err = (got_cpu - want).abs().max().item()
                    if kind == "fp16" and torch.isfinite(got_cpu).all() and err < 0.05 * want.abs().max().item():
                        c.fail(label, f"{MM_FP16_HINT} (largest error {err:.2g}; one rounding of the exact sum "
                                      f"gives at most {half:.2g} here)")
            c.expect(label, got, want, what="product", dtype=dtype, tol=tol, wrong=wrong)
    return c.passed("tiles of at least 16, ragged M, N and K, a transposed b, a tall product, tiny matrices, "
                    "float16 accumulated in float32; every load and store inside its tensor")


# --------------------------------------------------------------------------- triton_attention_tile


def _attention(q, k, v, scale, *, axis=-1, q_pad=0, k_pad=0, divide=True):
    """Attention of ``(H, Nq, d)`` float64 inputs with switches for known mistakes: the softmax over
    ``axis`` (-2: over the queries, padded with ``q_pad`` zero rows), ``k_pad`` zero keys and values
    left in the softmax, no division by the sum."""
    if k_pad:
        k = torch.cat([k, k.new_zeros(k.shape[0], k_pad, k.shape[2])], 1)
        v = torch.cat([v, v.new_zeros(v.shape[0], k_pad, v.shape[2])], 1)
    if q_pad:
        q = torch.cat([q, q.new_zeros(q.shape[0], q_pad, q.shape[2])], 1)
    s = (q @ k.transpose(-2, -1)) * scale  # (H, Nq, Nk)
    m = s.amax(axis, keepdim=True)
    p = torch.exp(s - m)
    if divide:
        p = p / p.sum(axis, keepdim=True)
    out = p @ v  # (H, Nq, d)
    return out[:, :out.shape[1] - q_pad] if q_pad else out


def check_triton_attention_tile(fn) -> str:
    """Check ``fn(q (H, Nq, d), k, v (H, Nk, d)) -> (H, Nq, d)``: softmax attention of one head per program,
    in one tile (``Nq, Nk, d <= 64``). On a GPU the float32 cases run in float16, as in FlashAttention's check."""
    from .. import triton_ladder
    from .triton import _tolerance as flash_tolerance
    from .triton import naive

    dev = _triton.device()
    c = Checker("triton_attention_tile", fn)
    g = gen(1004)
    f32 = torch.float16 if _gpu() else torch.float32

    def qkv(H, nq, nk, d, dtype=None):
        return randn(g, H, nq, d), randn(g, H, nk, d), randn(g, H, nk, d)

    big = list(qkv(2, 16, 24, 16))
    big[0] = big[0] * 40.0  # scores up to about 150: exp overflows float32 above 88
    x = randn(g, 20, 3, 32)  # (N, H, d)
    cases = [
        ("2 heads, 16 queries x 16 keys, d = 16", *qkv(2, 16, 16, 16), f32, "basic"),
        ("12 queries x 20 keys (neither a power of two), d = 32", *qkv(2, 12, 20, 32), f32, "basic"),
        ("large scores (up to about 150)", *big, f32, "basic"),
        ("head dim d = 40 (not a power of two)", *qkv(1, 16, 16, 40), f32, "head_dim"),
        ("q, k, v transposed views of (N, H, d) tensors", x.transpose(0, 1), randn(g, 20, 3, 32).transpose(0, 1),
         randn(g, 20, 3, 32).transpose(0, 1), f32, "strided"),
        ("5 heads, 9 queries x 33 keys, d = 16", *qkv(5, 9, 33, 16), f32, "basic"),
        ("float16, 16 queries x 30 keys", *qkv(2, 16, 30, 16), torch.float16, "basic"),
        ("one key", *qkv(2, 4, 1, 16), f32, "basic"),
    ]
    for label, q, k, v, dtype, kind in cases:
        with c.case(label):
            c.ban = Ban({**ATTENTION_FUNCTIONS, **SOFTMAX_FUNCTIONS, **TORCH_EXP, **TORCH_MATMUL},
                        ATTENTION_ATEN + SOFTMAX_ATEN, (triton_ladder.triton_attention_tile,), hint=TILE_BAN)
            q, k, v = (t.to(dtype).to(dev) for t in (q, k, v))
            q, k, v = (_slack(t) if t.is_contiguous() else t for t in (q, k, v))
            got = _call(c, label, AT_MASK_FIX, "", q, k, v)
            qd, kd, vd = (t.detach().cpu().double() for t in (q, k, v))
            H, Nq, d = qd.shape
            Nk = kd.shape[1]
            want, want_lse = naive(qd, kd, vd, False)
            tol = flash_tolerance(q.cpu(), k.cpu(), v.cpu(), False, want, want_lse)[0]
            scale = 1 / math.sqrt(d)
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                bad = ~torch.isfinite(got.detach().cpu().double())
                if bad.any() and label.startswith("large"):
                    c.fail(label, AT_OVERFLOW_HINT)
            wrong = [(_attention(qd, kd, vd, 1.0), AT_SCALE_HINT),
                     (_attention(qd, kd, vd, scale * math.log(2)), AT_EXP2_HINT),
                     (_attention(qd, kd, vd, scale * math.log2(math.e)), AT_EXP_LOG2E_HINT),
                     (_attention(qd, kd, vd, scale, divide=False), AT_NO_DIVIDE_HINT)]
            if H > 1:
                wrong.append((want[:1].expand_as(want), AT_HEAD0_HINT))
            if d & (d - 1):
                block_d = 1 << (d - 1).bit_length()
                wrong.append((_attention(qd, kd, vd, 1 / math.sqrt(block_d)), AT_BLOCK_D_HINT.format(block=block_d,
                                                                                                    d=d)))
            for blk in (16, 32, 64):
                if blk >= Nq:
                    wrong.append((_attention(qd, kd, vd, scale, axis=-2, q_pad=blk - Nq), AT_AXIS_HINT))
                if blk > Nk:
                    wrong.append((_attention(qd, kd, vd, scale, k_pad=blk - Nk), AT_PADDING_HINT))
            if kind == "strided":
                flat = [t.detach().as_strided(t.shape, (t.shape[1] * t.shape[2], t.shape[2], 1)).cpu().double()
                        for t in (q, k, v)]
                wrong.append((naive(*flat, False)[0], AT_STRIDE_HINT))
            otherwise = AT_HEAD_DIM_HINT if kind == "head_dim" else None
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == dtype and H > 1:
                got_cpu = got.detach().cpu().double()
                if not any(_close(got_cpu, w, tol) for w, _ in wrong):
                    ok = [bool(torch.allclose(got_cpu[h], want[h], equal_nan=True, **tol)) for h in range(H)]
                    if ok[0] and not all(ok) and not any(ok[ok.index(False):]):
                        first = ok.index(False)
                        heads = f"head {first} is" if first == H - 1 else f"heads {first} to {H - 1} are"
                        c.fail(label, AT_HEADS_HINT.format(heads=heads))
            c.expect(label, got, want, what="output", dtype=dtype, tol=tol, wrong=wrong, otherwise=otherwise)
    return c.passed("Nq != Nk, ragged lengths, large scores, d = 40, strided views, several heads, float16, "
                    "one key; a kernel launched, no PyTorch attention")
