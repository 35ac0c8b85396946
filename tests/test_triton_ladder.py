"""The ladder of small Triton kernels (notebooks 10 and 11): attnkit's references against
independent float64 computations, their kernels compiled for real GPUs, and the bounds watcher
the ladder's checkers use (the checkers' correct styles and known-wrong kernels are the mutant
library tests/library_triton_ladder.py).

Without a GPU everything runs through Triton's interpreter, at small sizes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import attnkit
from attnkit import _triton

_triton.prepare()  # before the kernels below are defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnkit.checks.bounds import Bounds  # noqa: E402

DEV = _triton.device()
INTERPRETING = _triton.interpreting()


def randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def rounding(want: torch.Tensor, dtype: torch.dtype) -> float:
    """The error of rounding the exact answer once to ``dtype``."""
    return (want.to(dtype).double() - want).abs().max().item()


# --------------------------------------------------------------------------- triton_scale_shift

@pytest.mark.parametrize("n", [1, 37, 256, 1001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_shift_is_one_rounding_of_the_exact_answer(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = randn(g, n, dtype=dtype)
    y = attnkit.triton_scale_shift(x, -1.75, 0.3)
    want = x.cpu().double() * -1.75 + 0.3
    assert y.shape == (n,) and y.dtype == dtype and y.is_contiguous()
    # float32 arithmetic then one rounding: at most one unit of dtype beyond rounding the exact value
    assert (y.cpu().double() - want).abs().max().item() <= rounding(want, dtype) + 2 * torch.finfo(dtype).eps * 4


def test_scale_shift_reads_a_strided_view_and_leaves_its_neighbours():
    g = torch.Generator().manual_seed(0)
    base = randn(g, 3000)
    before = base.clone()
    y = attnkit.triton_scale_shift(base[1::3], 2.0, -1.0)
    assert torch.allclose(y.cpu(), (before[1::3] * 2.0 - 1.0).cpu(), rtol=1e-6, atol=1e-6)
    assert torch.equal(base, before)


def test_scale_shift_refuses_bad_input_with_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        attnkit.triton_scale_shift(torch.zeros(2, 3, device=DEV), 1.0, 0.0)
    with pytest.raises(TypeError, match="float64"):
        attnkit.triton_scale_shift(torch.zeros(3, dtype=torch.float64, device=DEV), 1.0, 0.0)
    with pytest.raises(TypeError, match="scale"):
        attnkit.triton_scale_shift(torch.zeros(3, device=DEV), torch.tensor(2.0), 0.0)
    assert attnkit.triton_scale_shift(torch.zeros(0, device=DEV), 1.0, 0.0).shape == (0,)


# --------------------------------------------------------------------------- triton_row_max

@pytest.mark.parametrize("shape", [(1, 1), (8, 37), (13, 16), (3, 2100)])
def test_row_max_equals_the_largest_entry(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = randn(g, *shape, scale=3.0)
    assert torch.equal(attnkit.triton_row_max(x).cpu(), x.cpu().amax(1))


def test_row_max_of_negative_rows_strided_inputs_and_minus_infinity():
    g = torch.Generator().manual_seed(1)
    negative = -randn(g, 10, 23).abs() - 1.0  # a padding lane read as 0 would win every row
    assert torch.equal(attnkit.triton_row_max(negative).cpu(), negative.cpu().amax(1))
    assert (attnkit.triton_row_max(negative) < 0).all()
    wide = randn(g, 9, 40)
    for view in (wide[:, 2:35], randn(g, 12, 6).t()):
        assert torch.equal(attnkit.triton_row_max(view).cpu(), view.cpu().amax(1))
    masked = randn(g, 4, 20)
    masked[0, ::2] = float("-inf")
    masked[3] = float("-inf")
    got = attnkit.triton_row_max(masked).cpu()
    assert torch.equal(got, masked.cpu().amax(1)) and got[3] == float("-inf")
    half = (-randn(g, 6, 45).abs() - 0.5).half()
    got = attnkit.triton_row_max(half)
    assert got.dtype == torch.float16 and torch.equal(got.cpu(), half.cpu().amax(1))


def test_row_max_refuses_empty_rows():
    with pytest.raises(ValueError, match="empty rows"):
        attnkit.triton_row_max(torch.zeros(3, 0, device=DEV))


# --------------------------------------------------------------------------- triton_matmul

def _matmul_error(a, b):
    """(kernel's error, a plain product's error in the same dtype), both against float64."""
    want = a.cpu().double() @ b.cpu().double()
    got = attnkit.triton_matmul(a, b)
    assert got.shape == want.shape and got.dtype == a.dtype
    plain = (a.cpu().float() @ b.cpu().float()).to(a.dtype).double()
    return (got.cpu().double() - want).abs().max().item(), (plain - want).abs().max().item()


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 5, 2), (20, 80, 24), (70, 16, 9), (32, 64, 32)])
def test_matmul_matches_a_float64_product(M, K, N):
    g = torch.Generator().manual_seed(M * K * N)
    err, plain = _matmul_error(randn(g, M, K), randn(g, K, N))
    assert err <= 4 * plain + 1e-6


def test_matmul_takes_transposed_views_and_accumulates_float16_in_float32():
    g = torch.Generator().manual_seed(2)
    a, bt = randn(g, 20, 40), randn(g, 24, 40)
    err, plain = _matmul_error(a, bt.t())
    assert err <= 4 * plain + 1e-6
    a, b = randn(g, 16, 512, dtype=torch.float16).abs() + 0.5, randn(g, 512, 16, dtype=torch.float16).abs() + 0.5
    err, plain = _matmul_error(a, b)  # a float16 accumulator is off by several roundings here
    exact = a.cpu().double() @ b.cpu().double()
    half_spacing = 2.0 ** (math.floor(math.log2(exact.abs().max().item())) - 11)
    assert err <= half_spacing + 0.01


def test_matmul_edge_shapes_and_bad_input():
    assert torch.equal(attnkit.triton_matmul(torch.ones(3, 0, device=DEV), torch.ones(0, 2, device=DEV)).cpu(),
                       torch.zeros(3, 2))
    assert attnkit.triton_matmul(torch.ones(0, 4, device=DEV), torch.ones(4, 2, device=DEV)).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        attnkit.triton_matmul(torch.ones(2, 3, device=DEV), torch.ones(4, 2, device=DEV))
    with pytest.raises(TypeError, match="dtypes differ"):
        attnkit.triton_matmul(torch.ones(2, 3, device=DEV), torch.ones(3, 2, device=DEV).half())
    if INTERPRETING:
        with pytest.raises(TypeError, match="bfloat16"):
            attnkit.triton_matmul(torch.ones(2, 3, device=DEV).bfloat16(), torch.ones(3, 2, device=DEV).bfloat16())


# --------------------------------------------------------------------------- triton_attention_tile

def _attention64(q, k, v):
    """Softmax attention in float64, written out."""
    q, k, v = (t.cpu().double() for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p / p.sum(-1, keepdim=True)) @ v


def _plain(q, k, v):
    """The same in the inputs' dtype (float32 arithmetic for float16), the yardstick for tolerances."""
    s = q.cpu().float() @ k.cpu().float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, -1).to(q.dtype).float() @ v.cpu().float()


@pytest.mark.parametrize("H,Nq,Nk,d,dtype", [(2, 16, 16, 16, torch.float32), (2, 12, 20, 32, torch.float32),
                                             (1, 16, 16, 40, torch.float32), (5, 9, 33, 16, torch.float32),
                                             (2, 4, 1, 16, torch.float32), (3, 64, 64, 64, torch.float32),
                                             (2, 16, 30, 16, torch.float16)])
def test_attention_tile_matches_float64_attention(H, Nq, Nk, d, dtype):
    g = torch.Generator().manual_seed(H * Nq * Nk * d)
    q, k, v = randn(g, H, Nq, d, dtype=dtype), randn(g, H, Nk, d, dtype=dtype), randn(g, H, Nk, d, dtype=dtype)
    want = _attention64(q, k, v)
    got = attnkit.triton_attention_tile(q, k, v)
    assert got.shape == (H, Nq, d) and got.dtype == dtype
    plain = (_plain(q, k, v).double() - want).abs().max().item()
    assert (got.cpu().double() - want).abs().max().item() <= 4 * plain + 1e-6


def test_attention_tile_survives_large_scores_and_strided_views():
    g = torch.Generator().manual_seed(3)
    q, k, v = randn(g, 2, 16, 16, scale=40.0), randn(g, 2, 24, 16), randn(g, 2, 24, 16)  # scores near 150
    got = attnkit.triton_attention_tile(q, k, v)
    assert torch.isfinite(got).all()
    assert (got.cpu().double() - _attention64(q, k, v)).abs().max().item() < 1e-5
    x = [randn(g, 20, 3, 32).transpose(0, 1) for _ in range(3)]  # (H, N, d) views of (N, H, d)
    assert torch.equal(attnkit.triton_attention_tile(*x), attnkit.triton_attention_tile(*(t.contiguous() for t in x)))


def test_attention_tile_key_order_does_not_matter():
    """Attention is a weighted sum over keys: permuting keys and values together changes nothing."""
    g = torch.Generator().manual_seed(4)
    q, k, v = randn(g, 2, 10, 16), randn(g, 2, 27, 16), randn(g, 2, 27, 16)
    perm = torch.randperm(27, generator=g)
    a = attnkit.triton_attention_tile(q, k, v)
    b = attnkit.triton_attention_tile(q, k[:, perm], v[:, perm])
    assert torch.allclose(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6)


def test_attention_tile_refuses_more_than_one_tile_and_mismatched_shapes():
    z = torch.zeros(1, 65, 16, device=DEV)
    with pytest.raises(ValueError, match="triton_flash_forward"):
        attnkit.triton_attention_tile(z, z, z)
    with pytest.raises(ValueError, match=r"\(1, 4, 16\)"):
        attnkit.triton_attention_tile(torch.zeros(1, 4, 16, device=DEV), torch.zeros(1, 4, 8, device=DEV),
                                      torch.zeros(1, 4, 8, device=DEV))


# --------------------------------------------------------------------------- the bounds watcher

@triton.jit
def _copy(X, Y, n, BLOCK: tl.constexpr, MASK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if MASK == 0:
        tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)
    elif MASK == 1:
        tl.store(Y + offs, tl.load(X + offs))  # no mask
    else:
        tl.store(Y + offs, tl.load(X + offs, mask=offs <= n), mask=offs <= n)  # one lane too many


@pytest.mark.skipif(not INTERPRETING, reason="the bounds watcher watches the interpreter")
def test_bounds_sees_a_missing_mask_and_keeps_memory_past_the_end_intact():
    x = torch.arange(100, dtype=torch.float32)
    outer = torch.full((164,), -7.0)  # y is the first 100 elements; the rest must survive
    y = outer[:100]
    with Bounds() as bounds:
        _copy[(triton.cdiv(100, 64),)](x, y, 100, BLOCK=64, MASK=1)
    assert torch.equal(y, x) and (outer[100:] == -7.0).all()  # the lanes past the end were switched off
    events = {(e["op"], e["tensor"]): e for e in bounds.events}
    assert events[("load", "X")]["past"] == 28 and events[("store", "Y")]["past"] == 28
    hint = bounds.hint("FIX")
    assert "read up to 28 elements past the end of X" in hint and "wrote up to 28" in hint and "FIX" in hint


@pytest.mark.skipif(not INTERPRETING, reason="the bounds watcher watches the interpreter")
def test_bounds_names_an_off_by_one_mask_and_stays_quiet_for_a_masked_kernel():
    x, y = torch.randn(100), torch.empty(100)
    with Bounds() as bounds:
        _copy[(triton.cdiv(100, 64),)](x, y, 100, BLOCK=64, MASK=2)
    assert bounds.off_by_one() and bounds.hint("FIX", one_past="ONE PAST").startswith("ONE PAST")
    with Bounds() as quiet:
        _copy[(triton.cdiv(100, 64),)](x, y, 100, BLOCK=64, MASK=0)
    assert quiet.events == [] and quiet.hint("FIX") is None and torch.equal(y, x)


def test_bounds_report_is_plain_data_that_absorbs_back():
    """Under the grader the watcher runs in the learner's kernel and its report crosses as JSON."""
    seen = Bounds()
    seen._record("k", "store", "Y", 3, 3, 0, 10)
    copy = Bounds()
    copy.absorb(json.loads(json.dumps(seen.report())))
    assert copy.events == seen.events
    copy.absorb({"events": ["junk", {"op": "store", "lanes": "x"}]})  # a forged report is ignored, not trusted
    assert copy.events == seen.events


# --------------------------------------------------------------------------- compiled for a GPU

COMPILE = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from attnkit import triton_ladder as L

    def ints(*names):
        return {n: "i32" for n in names}

    jobs = {
        "_scale_shift_kernel": (dict(X="*fp16", Y="*fp16", **ints("n", "stride_x"), scale="fp32", shift="fp32",
                                     BLOCK="constexpr"), dict(BLOCK=1024)),
        "_row_max_kernel": (dict(X="*fp16", Y="*fp16", **ints("M", "N", "stride_xm", "stride_xn"),
                                 BLOCK_M="constexpr", BLOCK_N="constexpr"), dict(BLOCK_M=2, BLOCK_N=1024)),
        "_matmul_kernel": (dict(A="*fp16", B="*fp16", C="*fp16", **ints("M", "N", "K", "stride_am", "stride_ak",
                                "stride_bk", "stride_bn", "stride_cm", "stride_cn"), BLOCK_M="constexpr",
                                BLOCK_N="constexpr", BLOCK_K="constexpr"), dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)),
        "_attention_tile_kernel": (dict(Q="*fp16", K="*fp16", V="*fp16", O="*fp16", **ints("Nq", "Nk",
                                        *(f"stride_{t}{a}" for t in "qkvo" for a in ("h", "n", "d"))),
                                        sm_scale="fp32", HEAD_DIM="constexpr", BLOCK_M="constexpr",
                                        BLOCK_N="constexpr", BLOCK_D="constexpr"),
                                   dict(HEAD_DIM=40, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)),
    }
    rows = []
    for cc, names in ((80, list(jobs)), (75, ["_scale_shift_kernel", "_row_max_kernel", "_matmul_kernel"])):
        for name in names:
            signature, constexprs = jobs[name]
            k = triton.compile(ASTSource(fn=getattr(L, name), signature=signature, constexprs=constexprs),
                               target=GPUTarget("cuda", cc, 32), options={"num_warps": 4})
            rows.append(dict(cc=cc, kernel=name, mma="mma." in k.asm["ptx"], shared=k.metadata.shared))
    print(json.dumps(rows))
""")


def test_the_ladder_kernels_compile_for_gpus_and_use_tensor_cores_on_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, timeout=300, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) == 7
    for row in rows:
        uses_dot = row["kernel"] in ("_matmul_kernel", "_attention_tile_kernel")
        assert row["mma"] == (uses_dot and row["cc"] >= 80), row  # sm_75: tl.dot becomes FMA instructions
        assert row["shared"] <= 64 * 1024, row


# --------------------------------------------------------------------------- the checkers, on this Triton

def _ladder():
    sys.path.insert(0, os.path.dirname(__file__))
    import library_triton_ladder
    return {e.name: e for e in library_triton_ladder.EXERCISES}


# The parts of the checkers that lean on Triton's internals, so that the compatibility job runs
# them on every Triton it covers: a correct style accepted, the bounds watcher (interpreter
# internals) and the compile step (compiler internals) each naming one mutant. The whole library
# runs in tests/test_checker_library.py.
VERSION_SENSITIVE = [
    ("triton_scale_shift", "no mask on the load or the store"),
    ("triton_scale_shift", "mask offsets <= n"),
    ("triton_row_max", "running max started as a Python number (compiles on no GPU)"),
    ("triton_matmul", "tl.dot on 8-wide blocks (compiles on no GPU)"),
    ("triton_attention_tile", "head-dim lanes past d not masked"),
]


@pytest.mark.parametrize("name", ["triton_scale_shift", "triton_row_max", "triton_matmul", "triton_attention_tile"])
def test_checker_accepts_a_correct_kernel(name):
    exercise = _ladder()[name]
    exercise.check(exercise.correct[0])


@pytest.mark.skipif(not INTERPRETING, reason="the bounds watcher and the compile step work on interpreted kernels")
@pytest.mark.parametrize("name,mutant", VERSION_SENSITIVE)
def test_checker_names_a_mutant_only_watching_can_see(name, mutant):
    exercise = _ladder()[name]
    m = next(m for m in exercise.mutants if m.name == mutant)
    with pytest.raises(AssertionError) as e:
        exercise.check(m.fn)
    assert m.hint in str(e.value).splitlines()[0]
