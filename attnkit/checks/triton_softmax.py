"""Checker for notebook 10's exercise: a row softmax written as a Triton kernel.

The learner's ``triton_softmax(x (M, N))`` must launch at least one Triton kernel and may not
do the arithmetic in PyTorch. Known kernel bugs are recognised by recomputing what the buggy
kernel would return, for every block size it might have picked: padding lanes loaded as 0
instead of -inf, loads that run into the next row, a reduction over the wrong axis, a row
stride that is ignored, a running sum that is never rescaled, no max subtracted.
"""

from __future__ import annotations

import torch

from .. import _triton
from ..softmax import softmax as reference_softmax
from ._harness import Ban, Checker, _close, gen, randn
from .basics import SOFTMAX_ATEN, SOFTMAX_FUNCTIONS

# Anything that would compute the softmax in PyTorch instead of inside the kernel.
TORCH_MATH = {name: None for name in (
    "torch.exp", "torch.Tensor.exp", "torch.exp_", "torch.Tensor.exp_", "torch.exp2", "torch.Tensor.exp2",
    "torch.special.exp2", "torch.expm1", "torch.Tensor.expm1", "torch.special.expm1", "torch.sigmoid",
    "torch.Tensor.sigmoid", "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp")}
HINT = "Do the max, exp, sum and division inside your @triton.jit kernel; the wrapper only allocates and launches."
SLACK = 8192  # elements of defined memory after every input, so a load that runs past the end reads zeros
BLOCKS = [2 ** k for k in range(14)]  # every block size a learner might pick, 1 ... 8192

PADDING_HINT = ("the rows sum to less than 1: padding lanes past column N were loaded as 0 and exp(0 - max) "
                "joined the sum. Load with mask=cols < N and other=-float('inf') so padding contributes exp(-inf) = 0")
NEIGHBOUR_HINT = ("each row mixes in values from the next row: the load has no column mask. Load with "
                  "mask=cols < N (and other=-float('inf')) when BLOCK_N is larger than N")
AXIS_HINT = ("the output is normalised down the columns, not along each row: reduce with axis=1 "
             "(over the N columns of a row), e.g. tl.max(x, axis=1)")
STRIDE_HINT = ("right on contiguous inputs, wrong on this strided one: row i starts at X + i * stride_xm and "
               "column j is j * stride_xn further; pass x.stride(0), x.stride(1) instead of assuming N and 1")
RESCALE_HINT = ("the running sum was not rescaled: when the running max grows from m to m', multiply the sum "
                "so far by exp(m - m') before adding the new block")
OVERFLOW_HINT = ("inf or NaN on large logits: exp overflows float32 above about 88. Subtract the row max "
                 "before tl.exp (x - m[:, None]); softmax does not change")
NEGINF_HINT = ("an all -inf row gave NaN: its max is -inf and -inf - (-inf) is NaN. Replace a -inf max by 0 "
               "(tl.where) and divide by 1 where the sum is 0, so the row is all zeros")


def _slack(x: torch.Tensor) -> torch.Tensor:
    """The same values, contiguous, followed in memory by SLACK zeros."""
    from ._triton import padded  # imports triton: only when a check runs
    return padded(x, SLACK, 0.0)


def _want(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return reference_softmax(x.detach().cpu().double(), dim)


def _padding_candidates(x):
    """Softmax of each row with ``pad`` zeros appended, for every pad a power-of-two BLOCK_N leaves."""
    xd = x.detach().cpu().double()
    M, N = xd.shape
    pads = sorted({(-N) % b for b in BLOCKS} - {0})
    return [_want(torch.cat([xd, xd.new_zeros(M, p)], 1))[:, :N] for p in pads]


def _neighbour_candidates(x):
    """Row i computed over ``L`` consecutive elements from its start (a load with no column mask)."""
    if not x.is_contiguous():
        return []
    M, N = x.shape
    room = x.untyped_storage().nbytes() // x.element_size() - x.storage_offset()
    flat = torch.as_strided(x.detach(), (room,), (1,)).cpu().double()
    out = []
    for L in sorted({-(-N // b) * b for b in BLOCKS} - {N}):
        if (M - 1) * N + L <= flat.numel():
            out.append(_want(flat.as_strided((M, L), (N, 1)))[:, :N])
    return out


def _axis_candidates(x):
    """Normalised down the columns, over groups of BLOCK_M rows (or all rows)."""
    xd = x.detach().cpu().double()
    M, N = xd.shape
    out = [_want(xd, 0)]
    for b in BLOCKS[:7]:
        if b < M:
            out.append(torch.cat([_want(xd[s:s + b], 0) for s in range(0, M, b)]))
    return out


def _stride_candidates(x):
    """What a kernel reads when it assumes a contiguous layout (row stride N, column stride 1),
    or ignores only the column stride."""
    if x.is_contiguous():
        return []
    M, N = x.shape
    out = []
    for strides in ((N, 1), (x.stride(0), 1)):
        reach = x.storage_offset() + (M - 1) * strides[0] + (N - 1) * strides[1]
        if strides != x.stride() and reach < x.untyped_storage().nbytes() // x.element_size():
            out.append(_want(x.detach().as_strided((M, N), strides)))
    return out


def _no_rescale_candidates(x):
    """Online softmax whose running sum is never rescaled, for every BLOCK_N shorter than the row."""
    xd = x.detach().cpu().double()
    N = xd.shape[1]
    out = []
    for b in BLOCKS:
        if b >= N:
            break
        m = xd.new_full(xd.shape[:1], float("-inf"))
        l = xd.new_zeros(xd.shape[:1])
        for s in range(0, N, b):
            m = torch.maximum(m, xd[:, s:s + b].amax(1))
            l = l + torch.exp(xd[:, s:s + b] - m[:, None]).sum(1)
        out.append(torch.exp(xd - m[:, None]) / l[:, None])
    return out


def _row_hint(got, want, tol):
    """When some rows are right and others wrong, say which rows and what that suggests."""
    if got.shape != want.shape:
        return None
    ok = [_close(got[i], want[i], tol) for i in range(got.shape[0])]
    if all(ok) or not any(ok):
        return None
    M = got.shape[0]
    bad = [i for i, good in enumerate(ok) if not good]
    owns = ("program pid owns rows pid * BLOCK_M + tl.arange(0, BLOCK_M), the grid needs triton.cdiv(M, BLOCK_M) "
            "programs to cover every row, and loads and stores are masked with rows < M")
    if bad == list(range(bad[0], M)):
        start = bad[0]
        block = start & -start  # the largest power of two that divides start: the BLOCK_M a short grid used
        if M - start < block:  # fewer rows missing than a block: M // BLOCK_M programs left them out
            return (f"your grid does not cover every row: rows {start} to {M - 1} (the last ones) are wrong, the "
                    f"rows before are right, as when the grid is M // BLOCK_M (it rounds down). Launch "
                    f"triton.cdiv(M, BLOCK_M) programs; {owns}")
        return (f"rows {start} to {M - 1} (the last ones) are wrong, the first {start} are right: every program "
                f"seems to work on the first rows. {owns}")
    return f"rows {bad[:6]} are wrong while other rows are right: {owns}"


def _call(c: Checker, label: str, *args):
    """``c.call`` through :func:`attnkit.checks._triton.call_kernel` (versions, stubs)."""
    from ._triton import call_kernel  # imports triton: only when a check runs
    return call_kernel(c, label, *args)


def check_triton_softmax(fn) -> str:
    """Check ``fn(x (M, N)) -> (M, N)``: a row softmax computed in a Triton kernel."""
    from ._triton import count_launches  # imports triton: only when a Triton exercise is checked
    from .. import fused_softmax

    c = Checker("triton_softmax", fn, Ban({**SOFTMAX_FUNCTIONS, **TORCH_MATH}, SOFTMAX_ATEN,
                                          (reference_softmax, fused_softmax.triton_softmax), hint=HINT))
    dev = _triton.device()
    g = gen(100)

    big = randn(g, 4, 50) * 30
    big[1] += 400
    big[2] -= 400
    big[3, -5:] += 900  # the largest entry of the row sits in its last columns
    masked = randn(g, 5, 20) * 3
    masked[0, ::3] = float("-inf")
    masked[2] = float("-inf")
    long = randn(g, 3, 2100) * 4
    long[:, -40:] += torch.linspace(5, 30, 40, dtype=torch.float32)  # the max arrives late: rescaling matters
    wide = randn(g, 9, 40).to(dev) * 3
    tall = randn(g, 12, 6).to(dev) * 3
    cases = [
        ("8 rows x 37 columns (N not a power of two)", randn(g, 8, 37) * 3),
        ("13 rows x 16 columns (M not a multiple of the row block)", randn(g, 13, 16) * 3),
        ("large logits (up to ~1000)", big),
        ("-inf entries and an all -inf row", masked),
        ("a column slice x[:, 2:35] of a (9, 40) tensor (row stride 40)", wide[:, 2:35]),
        ("a transposed tensor: (6, 12).T, column stride 6", tall.t()),
        ("long rows: 3 x 2100, the max in the last columns", long),
        ("one element", randn(g, 1, 1)),
        ("float16, 6 x 45", randn(g, 6, 45, dtype=torch.float16) * 3),
    ]
    launches = 0
    for label, x in cases:
        with c.case(label):
            if x.is_contiguous():
                x = _slack(x.to(dev))
            with count_launches() as launched:
                got = _call(c, label, x)
            launches += len(launched)
            if not launched:
                c.fail(label, "no Triton kernel was launched: write the softmax in a @triton.jit kernel and launch it "
                              "with kernel[grid](...) (" + HINT + ")")
            want = _want(x)
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                g_cpu = got.detach().cpu()
                bad = ~torch.isfinite(g_cpu) & torch.isfinite(want)
                if bad.any():
                    if label.startswith("large logits"):
                        c.fail(label, OVERFLOW_HINT)
                    if label.startswith("-inf"):
                        rows = torch.isneginf(x.cpu()).all(1)
                        if bad[rows].any():
                            c.fail(label, NEGINF_HINT)
                        c.fail(label, "NaN where an entry is -inf: subtract the row max (finite when any entry is), "
                                      "and exp(-inf) is 0")
            wrong = ([(w, PADDING_HINT) for w in _padding_candidates(x)]
                     + [(w, NEIGHBOUR_HINT) for w in _neighbour_candidates(x)]
                     + [(w, AXIS_HINT) for w in _axis_candidates(x)]
                     + [(w, STRIDE_HINT) for w in _stride_candidates(x)]
                     + [(w, RESCALE_HINT) for w in _no_rescale_candidates(x)])
            otherwise = None
            if isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == x.dtype:
                g_cpu = got.detach().cpu()
                if not _close(g_cpu, want, None) and not any(_close(g_cpu, w, None) for w, _ in wrong):
                    sums = g_cpu.double().sum(1)
                    live = ~torch.isneginf(x.cpu()).all(1)
                    if bool((sums[live] < 0.999).all()) and torch.isfinite(g_cpu).all():
                        otherwise = PADDING_HINT
                    else:
                        rows = _row_hint(g_cpu, want, None)
                        if rows is not None:
                            c.fail(label, rows)
            c.expect(label, got, want, what="softmax", dtype=x.dtype, wrong=wrong, otherwise=otherwise)
    return c.passed(f"{launches} kernel launches; ragged N and M, huge logits, -inf rows, strided and transposed "
                    f"inputs, long rows, float16")
