"""Triton FlashAttention (notebook 11): forward and backward kernels against float64
references, the autograd Function, input errors, per-GPU choices, and what the checkers do
beyond their mutant library (tests/library_triton.py).

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
        dev = s.device
        s = s.masked_fill(torch.arange(Nk, device=dev)[None, :] > torch.arange(Nq, device=dev)[:, None] + Nk - Nq,
                          float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    (p.to(dtype) @ plain[2].to(dtype)).backward(d_out)
    for name, leaf, ref, pl in zip("qkv", leaves, want, plain):
        assert leaf.grad.dtype == dtype and leaf.grad.shape == leaf.shape
        err = (leaf.grad.double().cpu() - ref).abs().max().item()
        plain_err = (pl.grad.to(dtype).double().cpu() - ref).abs().max().item()
        assert err <= 4 * plain_err + 8 * torch.finfo(dtype).eps * ref.abs().max().item(), (name, err, plain_err)


def test_function_takes_any_leading_dims_and_saves_lse(g):
    q, k, v = (rand(g, 3, 18, 16).requires_grad_() for _ in range(3))  # (H, N, d): no batch dim
    out = tf.TritonFlashAttention.apply(q, k, v, True)
    assert out.shape == q.shape
    assert out.grad_fn.saved_tensors[-1].shape == (3, 18)  # the log-sum-exp (..., N)
    out.sum().backward()
    want = _naive_grads(q, k, v, torch.ones_like(out), True)
    for leaf, ref in zip((q, k, v), want):
        torch.testing.assert_close(leaf.grad.double().cpu(), ref, rtol=1e-4, atol=1e-5)


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
# the checkers: correct kernels in other styles and known-wrong kernels live in the mutant library
# tests/library_triton.py (run by tests/test_checker_library.py); here, what only a test can set up

from library_triton import FLASH  # noqa: E402

# (exercise, function[, hint]) as tests/test_checks.py counts them
CORRECT = [(FLASH.name, fn) for fn in FLASH.correct]
WRONG = [(FLASH.name, m.fn, m.hint) for m in FLASH.mutants]


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


# ---------------------------------------------------------------------------------------------
# the compile step: kernels that run in the interpreter but would not compile on a GPU

from library_triton import DQ, flash  # noqa: E402
from remote_loopback import remote  # noqa: E402

from attnkit.checks import _triton as checks_triton  # noqa: E402


@pytest.mark.skipif(GPU, reason="on a GPU the launch itself compiles the kernel")
def test_compile_step_works_through_the_graders_proxy():
    """The watcher is re-created in the learner's kernel (here: the far side of the loopback),
    compiles there and reports the compiler's refusal as plain data."""
    with remote(flash(SCALAR_M=True), "triton_flash_forward") as proxy:
        with pytest.raises(AssertionError, match="loop-carried m must start as a block: tl.full"):
            CHECKS["triton_flash_forward"](proxy)
    with remote(flash(), "triton_flash_forward") as proxy:
        assert "passed" in CHECKS["triton_flash_forward"](proxy)


@pytest.mark.skipif(GPU, reason="on a GPU the launch itself compiles the kernel")
def test_compile_step_compiles_each_signature_once(monkeypatch):
    from attnkit.checks import NOTEBOOK_CHECKS
    calls = []
    original = checks_triton._compile
    monkeypatch.setattr(checks_triton, "_compile", lambda *a, **kw: calls.append(a[1]) or original(*a, **kw))
    checks_triton._COMPILED.clear()
    NOTEBOOK_CHECKS["triton_flash_dq"](DQ.correct[0])
    first = len(calls)
    assert 1 <= first <= 3  # one compile per (dtype, head dim, causal) the cases launch
    NOTEBOOK_CHECKS["triton_flash_dq"](DQ.correct[0])
    assert len(calls) == first  # cached: a second check compiles nothing


@pytest.mark.skipif(GPU, reason="on a GPU the launch itself compiles the kernel")
def test_compile_step_stays_quiet_when_it_cannot_judge(monkeypatch):
    """A Triton whose compiler cannot be driven as the step drives it (here: the probe kernel
    refused): the step reports nothing, so no correct kernel is ever refused for it."""
    monkeypatch.setattr(checks_triton, "_PROBED", ["the probe kernel: refused"])
    checks_triton._COMPILED.clear()
    watcher = checks_triton.CompileCheck()
    with watcher:
        flash(SCALAR_M=True)(*(torch.randn(1, 1, 16, 16) for _ in range(3)))
    assert watcher.errors == [] and watcher.compiled == 0 and "probe" in watcher.unavailable[0]
    checks_triton._COMPILED.clear()


def test_a_compiler_refusal_raised_on_a_gpu_gets_the_same_hint():
    refusal = RuntimeError("at 9:4:\n    for start in range(0, N, BLOCK_N):\n    ^\nAssertionError(\"Loop-carried "
                           "variable m has initial type fp32 but is re-assigned to <['64'], fp32> in loop! Please "
                           "make sure that the type stays consistent.\")")
    try:
        raise AssertionError("triton_flash_forward: your function raised CompilationError") from refusal
    except AssertionError as e:
        hint = checks_triton.raised_hint(e)
    assert hint.startswith("loop-carried m must start as a block: tl.full((64,), value, tl.float32)")


def test_a_global_the_compiler_refuses_on_a_gpu_is_named_function_or_value():
    compilation_error = type("CompilationError", (Exception,), {})  # what a GPU launch raises, by name

    def hint(line, name):
        refusal = compilation_error(f"at 5:8:\n{line}\n        ^\nNameError('Cannot access global variable {name} "
                                    f"from within @jit'ed function. Triton kernels can only access ...')")
        try:
            raise AssertionError("triton_softmax: your function raised CompilationError") from refusal
        except AssertionError as e:
            return checks_triton.raised_hint(e)
    assert "stable_exp is a plain Python function" in hint("    e = stable_exp(x, m)", "stable_exp")
    assert "reads the global LOG2E, a plain Python value" in hint("    s = s * LOG2E", "LOG2E")
