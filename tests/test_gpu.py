"""On one NVIDIA GPU: the course's kernels at real sizes against PyTorch (marker ``gpu``).

What a T4, L4, A100 or H100 learner runs, checked where it runs:

- ``triton_softmax`` on 4096 rows of up to 16k entries (the two-pass path included) in
  float32, float16 and bfloat16 (sm_80+);
- ``triton_flash_forward`` and ``TritonFlashAttention``'s backward against SDPA, float16 and
  bfloat16, causal and not, lengths that are not a multiple of any tile, Nq != Nk, head dims
  64, 128 and 80, the log-sum-exp included;
- FlexAttention forward and backward, compiled (causal, sliding window, ALiBi);
- ring attention over NCCL when the machine has two GPUs or more.

Tolerances follow the style of FlashAttention's tests: against a float32 reference, our
kernel's error may be at most ``FACTOR`` times SDPA's error in the same low precision, plus a
small floor.

Without a GPU these tests skip, except in the GPU check's dry run (``bench/gpu_check.sh
--dry-run`` sets ``ATTN_GPU_TINY=1``): then the same tests run on the CPU through Triton's
interpreter at toy sizes, so their own code is exercised in CI; what needs a GPU (bfloat16
kernels, compiled FlexAttention's backward, NCCL) still skips, saying why.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from attnkit import _triton

_triton.prepare()  # before any kernel module is imported

pytestmark = pytest.mark.gpu

TINY = os.environ.get("ATTN_GPU_TINY", "") not in ("", "0")
GPU = torch.cuda.is_available() and not _triton.interpreting()
if not GPU and not TINY:
    pytest.skip("no CUDA GPU (bench/gpu_check.sh --dry-run runs these at toy sizes on the interpreter)",
                allow_module_level=True)

DEV = _triton.device()
CAP = _triton.capability()  # None under the interpreter
BF16 = CAP is not None and CAP >= (8, 0)
FACTOR = 3.0


def sizes(gpu, tiny):
    return tiny if TINY else gpu


def half_dtypes():
    """float16 everywhere; bfloat16 where the hardware has it (and never in the interpreter,
    whose bfloat16 tl.dot is wrong)."""
    return [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not BF16, reason="bfloat16 needs sm_80+ (and a real GPU: the interpreter's bf16 tl.dot is wrong)"))]


def rand(g, *shape, dtype):
    return torch.randn(*shape, generator=g, device="cpu", dtype=torch.float32).to(DEV, dtype)


def sdpa_reference(q, k, v, causal):
    """SDPA's math backend in float32 with the course's bottom-right causal mask: the reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (t.float() for t in (q, k, v))
    mask = None
    if causal:
        nq, nk = q.shape[-2], k.shape[-2]
        mask = torch.arange(nk, device=q.device)[None, :] <= torch.arange(nq, device=q.device)[:, None] + (nk - nq)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_low(q, k, v, causal):
    """SDPA in the inputs' own precision, on whichever backend PyTorch picks: the yardstick."""
    if causal and q.shape[-2] != k.shape[-2]:
        nq, nk = q.shape[-2], k.shape[-2]
        mask = torch.arange(nk, device=q.device)[None, :] <= torch.arange(nq, device=q.device)[:, None] + (nk - nq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def assert_within(got, yardstick, want, what, floor=None):
    """``got`` at most FACTOR x as far from ``want`` (float32) as ``yardstick`` is, plus a floor."""
    floor = floor if floor is not None else 4 * torch.finfo(got.dtype).eps
    err = (got.float() - want).abs().max().item()
    base = (yardstick.float() - want).abs().max().item()
    assert math.isfinite(err) and err <= FACTOR * base + floor, f"{what}: error {err:.2e}, SDPA's {base:.2e}"


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("n", sizes([1000, 4096, 16384], [37, 300]))
@pytest.mark.parametrize("dtype", [torch.float32] + half_dtypes())
def test_softmax_at_real_sizes(n, dtype):
    from attnkit import triton_softmax
    g = torch.Generator().manual_seed(n)
    x = (rand(g, sizes(4096, 9), n, dtype=torch.float32) * 6).to(dtype)
    x[1, ::3] = float("-inf")
    want = torch.softmax(x.double(), -1)
    got = triton_softmax(x)
    plain = torch.softmax(x, -1)  # PyTorch in the same dtype
    assert got.dtype == dtype and got.shape == x.shape
    assert (got[1, ::3] == 0).all()
    err = (got.double() - want).abs().max().item()
    base = (plain.double() - want).abs().max().item()
    assert err <= FACTOR * base + 4 * torch.finfo(dtype).eps, (err, base)


def test_softmax_long_rows_take_the_two_pass_path():
    from attnkit import fused_softmax
    n = sizes(16384, 300)
    cfg = fused_softmax.config(4, n, CAP)
    assert TINY or not cfg["ONE_PASS"], f"16384 entries exceed every GPU's tile limit: {cfg}"
    g = torch.Generator().manual_seed(1)
    x = rand(g, 4, n, dtype=torch.float32) * 4
    x[:, -40:] += 30  # the maximum arrives in the last block: the running sum must be rescaled
    got = fused_softmax.triton_softmax(x, block_n=64 if cfg["ONE_PASS"] else None)  # toy size: force the blocks
    assert torch.allclose(got.double(), torch.softmax(x.double(), -1), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- FlashAttention forward

FORWARD = sizes(
    [(2, 8, 1024, 1024, 64), (1, 16, 4096, 4096, 64), (2, 4, 1000, 1000, 128), (1, 8, 777, 1531, 64),
     (1, 8, 1531, 777, 80), (1, 2, 16384, 16384, 64)],
    [(1, 2, 48, 48, 16), (1, 1, 33, 47, 16), (1, 1, 47, 33, 40)])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("B,H,Nq,Nk,d", FORWARD)
def test_flash_forward_against_sdpa(B, H, Nq, Nk, d, dtype, causal):
    from attnkit import triton_flash_forward
    g = torch.Generator().manual_seed(Nq * 7 + Nk)
    q, k, v = rand(g, B, H, Nq, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype), rand(g, B, H, Nk, d, dtype=dtype)
    out, lse = triton_flash_forward(q, k, v, causal)
    assert out.dtype == dtype and out.shape == (B, H, Nq, d) and lse.shape == (B, H, Nq)
    want = sdpa_reference(q, k, v, causal)
    assert_within(out, sdpa_low(q, k, v, causal), want, "out")
    if Nq * Nk <= 4096 * 4096:  # the float32 scores fit comfortably
        s = q.float() @ k.float().transpose(-2, -1) / math.sqrt(d)  # (B, H, Nq, Nk)
        if causal:
            allowed = torch.arange(Nk, device=DEV)[None, :] <= torch.arange(Nq, device=DEV)[:, None] + (Nk - Nq)
            s = s.masked_fill(~allowed, float("-inf"))
        want_lse = torch.logsumexp(s, -1)
        finite = torch.isfinite(want_lse)
        assert torch.equal(torch.isfinite(lse), finite)
        assert (lse - want_lse)[finite].abs().max().item() < 1e-2 if finite.any() else True


def test_flash_forward_strided_inputs_match_contiguous():
    from attnkit import triton_flash_forward
    g = torch.Generator().manual_seed(5)
    n, d = sizes(2048, 40), sizes(64, 16)
    x = rand(g, 1, n, 4, 3 * d, dtype=torch.float16)  # (B, N, H, 3d): a fused qkv projection
    q, k, v = (t.transpose(1, 2) for t in x.split(d, dim=-1))  # (B, H, N, d) views
    out, lse = triton_flash_forward(q, k, v, True)
    out_c, lse_c = triton_flash_forward(q.contiguous(), k.contiguous(), v.contiguous(), True)
    assert torch.equal(out, out_c) and torch.equal(lse, lse_c)


# --------------------------------------------------------------------------- FlashAttention backward

# Head dims 64 and 128 only: each (d, dtype, causal) compiles every tile of three kernels, and
# the whole GPU check has 8 minutes. d = 80 (padded to 128) is covered by the forward tests.
BACKWARD = sizes([(2, 8, 1024, 64), (1, 8, 1000, 128), (1, 4, 4096, 64), (1, 4, 777, 64)],
                 [(1, 2, 33, 16), (1, 1, 40, 40)])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("B,H,N,d", BACKWARD)
def test_flash_backward_against_sdpa(B, H, N, d, dtype, causal):
    from attnkit import TritonFlashAttention
    g = torch.Generator().manual_seed(N + d)
    q, k, v, d_out = (rand(g, B, H, N, d, dtype=dtype) for _ in range(4))

    def grads(fn, cast):
        leaves = [cast(t).detach().requires_grad_() for t in (q, k, v)]
        fn(*leaves).backward(cast(d_out))
        return [t.grad for t in leaves]

    ours = grads(lambda a, b, c: TritonFlashAttention.apply(a, b, c, causal), lambda t: t)
    low = grads(lambda a, b, c: sdpa_low(a, b, c, causal), lambda t: t)
    want = grads(lambda a, b, c: sdpa_reference(a, b, c, causal), lambda t: t.float())
    for name, got, yard, ref in zip(("dq", "dk", "dv"), ours, low, want):
        assert got.dtype == dtype and got.shape == ref.shape
        assert_within(got, yard, ref, name, floor=1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_bfloat16_on_a_gpu_without_it_is_refused_with_the_reason():
    from attnkit import triton_flash_forward
    if CAP is not None and CAP >= (8, 0):
        pytest.skip(f"this GPU (sm_{CAP[0]}{CAP[1]}) has bfloat16")
    x = torch.zeros(1, 1, 16, 16, dtype=torch.bfloat16, device=DEV)
    with pytest.raises(TypeError, match="bfloat16"):
        triton_flash_forward(x, x, x)


# --------------------------------------------------------------------------- FlexAttention


def _flex_cases(n):
    from attnkit import flex
    return {"causal": flex.causal(n, n), "sliding window 256": flex.sliding_window(n, n, sizes(256, 8))}


@pytest.mark.parametrize("kind", ["causal", "sliding window 256", "alibi"])
def test_flex_attention_compiled_forward_and_backward(kind):
    from attnkit import flex
    n, d, H = sizes(2048, 32), sizes(64, 16), 4
    g = torch.Generator().manual_seed(12)
    dtype = torch.float16 if GPU else torch.float32
    q, k, v, d_out = (rand(g, 1, H, n, d, dtype=dtype) for _ in range(4))
    if kind == "alibi":
        score_mod, mask_mod = flex.alibi(H, n, n, device=DEV), None
        bias = flex.evaluate_score_mod(score_mod, torch.zeros(1, H, n, n, device=DEV))  # (1, H, N, N)
        mask = None
    else:
        score_mod, mask_mod = None, _flex_cases(n)[kind]
        bias, mask = None, flex.dense_mask(mask_mod, n, n, device=DEV)  # (N, N)
    # the float32 reference: plain attention with the same mask or bias, through autograd
    leaves_ref = [t.float().detach().requires_grad_() for t in (q, k, v)]
    s_ref = leaves_ref[0] @ leaves_ref[1].transpose(-2, -1) / math.sqrt(d)
    if bias is not None:
        s_ref = s_ref + bias.float()
    if mask is not None:
        s_ref = s_ref.masked_fill(~mask, float("-inf"))
    want = torch.softmax(s_ref, -1) @ leaves_ref[2]
    want.backward(d_out.float())

    leaves = [t.detach().requires_grad_(GPU) for t in (q, k, v)]  # FlexAttention has no CPU backward
    out = flex.attend(*leaves, score_mod=score_mod, mask_mod=mask_mod, compiled=GPU)
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    assert (out.float() - want).abs().max().item() < tol
    if not GPU:
        pytest.skip("FlexAttention has no CPU backward (forward checked)")
    out.backward(d_out)
    for name, got, ref in zip(("dq", "dk", "dv"), (t.grad for t in leaves), (t.grad for t in leaves_ref)):
        assert (got.float() - ref).abs().max().item() < 5 * tol, name


# --------------------------------------------------------------------------- ring attention over NCCL


def nccl_ring_worker(rank, world_size, q, k, v, is_causal, layout):
    """One rank on cuda:rank: its shard through ring attention over NCCL; results back on the CPU."""
    from attnkit.distributed import ring
    device = torch.device(f"cuda:{torch.cuda.current_device()}")
    shards = [ring.shard(t, rank, world_size, layout).to(device) for t in (q, k, v)]
    out, lse = ring.ring_attention_forward(*shards, is_causal, layout=layout)
    return {"out": out.cpu(), "lse": lse.cpu()}


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ring_attention_over_nccl(layout):
    if not GPU or torch.cuda.device_count() < 2:
        pytest.skip("ring attention over NCCL needs two GPUs or more on this machine")
    from attnkit.distributed import launch, ring
    world = min(torch.cuda.device_count(), 4)
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 4, 4096, 64, generator=g) for _ in range(3))
    results = launch(nccl_ring_worker, world, q, k, v, True, layout, backend="nccl", timeout=300)
    out = ring.unshard([r["out"] for r in results], layout)
    want = sdpa_reference(q, k, v, True).cpu()
    assert (out - want).abs().max().item() < 1e-4
