"""The fused Triton softmax (notebook 10) against a float64 softmax, its configurations
compiled for real GPUs, and its checker's compile step (its correct styles and known-wrong
kernels are the mutant library tests/library_triton.py).

Without a GPU everything runs through Triton's interpreter on tiny sizes."""

import json
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

from attnkit import fused_softmax  # noqa: E402
from attnkit.checks import CHECKS  # noqa: E402

DEV = _triton.device()


def ref(x):
    """float64 softmax over rows, written out: -inf entries give 0, all -inf rows give 0."""
    x = x.detach().cpu().double()
    m = x.amax(1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(x - m)
    s = e.sum(1, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def randn(g, *shape, dtype=torch.float32, scale=3.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def assert_matches(y, x, factor=2.0):
    """Kernel error vs float64 at most ``factor`` x that of rounding the exact answer to x's dtype."""
    want = ref(x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    err = (y.cpu().double() - want).abs().max().item()
    rounding = (want.to(x.dtype).double() - want).abs().max().item()
    floor = torch.finfo(x.dtype).eps  # the largest probability is <= 1: one ulp at 1
    assert err <= factor * rounding + floor, (err, rounding)


# ---------------------------------------------------------------------------------------------
# the library kernel

@pytest.mark.parametrize("M,N,blocks", [(1, 1, {}), (8, 37, {}), (37, 16, {}), (5, 300, {}),
                                        (4, 300, dict(block_n=64)), (6, 33, dict(block_m=4, block_n=8)),
                                        (3, 5000, {})])
def test_matches_float64_softmax(g, M, N, blocks):
    x = randn(g, M, N)
    y = fused_softmax.triton_softmax(x, **blocks)
    assert_matches(y, x)
    torch.testing.assert_close(y.double().sum(1).cpu(), torch.ones(M, dtype=torch.float64))


@pytest.mark.parametrize("block_n", [None, 16])
def test_large_logits_and_minus_inf(g, block_n):
    x = randn(g, 6, 40, scale=300.0)
    x[1] += 2000
    x[2, ::4] = float("-inf")
    x[3] = float("-inf")
    x[4, -1] = 5000  # the max in the last block
    y = fused_softmax.triton_softmax(x, block_n=block_n)
    assert torch.isfinite(y).all()
    assert (y[2, ::4] == 0).all() and (y[3] == 0).all()
    assert_matches(y, x)


@pytest.mark.parametrize("view", ["column slice", "transposed", "every other column", "broadcast row"])
def test_strided_inputs(g, view):
    base = randn(g, 10, 24)
    x = {"column slice": base[1:8, 3:20], "transposed": base.t(), "every other column": base[:, ::2],
         "broadcast row": base[0:1].expand(5, 24)}[view]
    assert not x.is_contiguous()
    assert_matches(fused_softmax.triton_softmax(x), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(g, dtype):
    if dtype == torch.bfloat16 and (_triton.capability() or (8, 0)) < (8, 0):
        pytest.skip("bfloat16 needs compute capability 8.0 (this GPU is older)")
    # bf16 loads, stores and float32 arithmetic are right in the interpreter (only tl.dot is not)
    x = randn(g, 7, 100, dtype=dtype)
    x[0, :5] = float("-inf")
    for block_n in (None, 32):
        assert_matches(fused_softmax.triton_softmax(x, block_n=block_n), x)


def test_block_sizes_do_not_change_the_answer(g):
    x = randn(g, 9, 70)
    outs = [fused_softmax.triton_softmax(x, block_m=bm, block_n=bn) for bm, bn in [(1, 128), (4, 8), (2, 4), (16, 32)]]
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=2e-6, atol=1e-7)


def test_empty_inputs_launch_nothing():
    assert fused_softmax.triton_softmax(torch.empty(0, 5, device=DEV)).shape == (0, 5)
    assert fused_softmax.triton_softmax(torch.empty(3, 0, device=DEV)).shape == (3, 0)


@pytest.mark.parametrize("bad,error,words", [
    (torch.zeros(4), ValueError, "2 dimensions, got shape (4,)"),
    (torch.zeros(2, 3, 4), ValueError, "(2, 3, 4)"),
    (torch.zeros(2, 3, dtype=torch.float64), TypeError, "x.float()"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, "int64"),
    ([[1.0, 2.0]], TypeError, "torch.Tensor"),
    (torch.zeros(2, 3, device="meta"), ValueError, "is on meta"),
])
def test_bad_input_is_named(bad, error, words):
    if isinstance(bad, torch.Tensor) and bad.device.type == "cpu":
        bad = bad.to(DEV)
    with pytest.raises(error) as info:
        fused_softmax.triton_softmax(bad)
    assert words in str(info.value)


@pytest.mark.parametrize("kw,words", [(dict(block_n=48), "power of two"), (dict(block_m=0), "block_m must be > 0")])
def test_bad_blocks_are_named(kw, words):
    with pytest.raises(ValueError, match=words):
        fused_softmax.triton_softmax(torch.zeros(2, 3, device=DEV), **kw)


def test_lazy_export_is_the_function():
    assert attnkit.triton_softmax is fused_softmax.triton_softmax
    assert "triton_softmax" in dir(attnkit)
    with pytest.raises(AttributeError):
        attnkit.no_such_thing  # noqa: B018


@pytest.mark.parametrize("cap,limit,max_warps", [(None, 4096, 16), ((7, 5), 4096, 8), ((8, 0), 8192, 16),
                                                 ((8, 6), 8192, 16), ((9, 0), 8192, 16)])
def test_config_per_gpu(cap, limit, max_warps):
    for M, N in [(1, 1), (4096, 64), (100, 1000), (7, 4096), (64, 8192), (64, 100_000)]:
        cfg = fused_softmax.config(M, N, cap)
        tile = cfg["BLOCK_M"] * cfg["BLOCK_N"]
        assert tile <= max(limit, triton.next_power_of_2(N)) and cfg["BLOCK_N"] <= limit
        assert cfg["ONE_PASS"] == (cfg["BLOCK_N"] >= N) and cfg["num_warps"] <= max_warps
        assert tile // (32 * cfg["num_warps"]) <= 16 or tile < 32 * cfg["num_warps"]  # values per thread
    assert fused_softmax.config(10, 8192, cap)["ONE_PASS"] == (limit >= 8192)


# ---------------------------------------------------------------------------------------------
# compiled for real GPUs, without one (a fresh process: the interpreter must be off)

COMPILE = textwrap.dedent("""
    import json, os, subprocess, sys, tempfile
    import attnkit
    lazy = "triton" not in sys.modules
    os.environ["TRITON_INTERPRET"] = "0"
    import torch, triton
    from attnkit import fused_softmax
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    rows = []
    for cap, M, N, dtype in json.loads(sys.argv[1]):
        k = fused_softmax.compile_for(tuple(cap), M, N, getattr(torch, dtype))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"]); f.flush()
            usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        line = next(l for l in usage.splitlines() if "REG:" in l)
        fields = dict(f.split(":") for f in line.split())
        rows.append(dict(cap=cap, N=N, shared=k.metadata.shared, regs=int(fields["REG"]),
                         local=int(fields["LOCAL"]), warps=k.metadata.num_warps))
    print(json.dumps(dict(lazy=lazy, rows=rows)))
""")
TARGETS = [((7, 5), 4096, 100, "float32"), ((7, 5), 8, 50_000, "float16"),  # short rows; the long-row loop
           ((8, 0), 64, 1000, "bfloat16"), ((8, 0), 8, 8192, "float32"),  # the largest one-pass tile
           ((9, 0), 8, 50_000, "bfloat16")]
SHARED_PER_BLOCK = {7: 64 * 1024, 8: 163 * 1024, 9: 227 * 1024}  # bytes (CUDA programming guide)


@pytest.fixture(scope="module")
def compiled():
    run = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(TARGETS)], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_attnkit_does_not_import_triton(compiled):
    assert compiled["lazy"]


def test_compiles_for_sm75_sm80_sm90_within_limits(compiled):
    assert [tuple(r["cap"]) for r in compiled["rows"]] == [tuple(t[0]) for t in TARGETS]
    for row in compiled["rows"]:
        assert row["shared"] <= SHARED_PER_BLOCK[row["cap"][0]], row
        assert row["local"] == 0, f"register spills: {row}"
        assert row["regs"] <= 255, row


# ---------------------------------------------------------------------------------------------
# the checker: correct kernels in other styles and known-wrong kernels live in the mutant library
# tests/library_triton.py (run by tests/test_checker_library.py); the compile step's own tests are
# in tests/test_triton_flash.py

from library_triton import SOFTMAX  # noqa: E402

# (exercise, function[, hint]) as tests/test_checks.py counts them
CORRECT = [(SOFTMAX.name, fn) for fn in SOFTMAX.correct]
WRONG = [(SOFTMAX.name, m.fn, m.hint) for m in SOFTMAX.mutants]


# ---------------------------------------------------------------------------------------------
# the notebook's helpers: the roofline and the tile widget

def test_roofline_is_the_minimum_of_two_roofs():
    from attnkit import roofline
    t4 = roofline.PEAKS["T4"]
    assert t4.ridge() == pytest.approx(8.1e12 / 320e9)
    below, above = 0.5 * t4.ridge(), 2 * t4.ridge()
    assert roofline.attainable_tflops(below, t4.fp32_tflops, t4.bandwidth_gbs) == pytest.approx(below * 0.320)
    assert roofline.attainable_tflops(above, t4.fp32_tflops, t4.bandwidth_gbs) == t4.fp32_tflops
    with pytest.raises(ValueError, match="intensity"):
        roofline.attainable_tflops(-1.0, 1.0, 1.0)
    for p in roofline.PEAKS.values():  # every GPU listed: softmax (0.6 FLOP/byte) is memory-bound by >= 20x
        assert p.ridge() / (5 / 8) >= 20 and p.tensor_tflops > p.fp32_tflops


@pytest.mark.parametrize("name,key", [("Tesla T4", "T4"), ("NVIDIA L4", "L4"), ("NVIDIA A100-SXM4-40GB", "A100"),
                                      ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", None),
                                      ("NVIDIA GeForce RTX 4090", None)])
def test_peak_for_device_names(name, key):
    from attnkit import roofline
    assert roofline.peak_for(name) == (roofline.PEAKS[key] if key else None)


@pytest.mark.parametrize("name,gbs", [("NVIDIA A100-SXM4-80GB", 2039.0), ("NVIDIA A100 80GB PCIe", 1935.0),
                                      ("NVIDIA A100-PCIE-40GB", 1555.0)])
def test_peak_for_an_a100_follows_its_memory(name, gbs):
    # the 80 GB A100 has HBM2e (A100 datasheet): comparing it with the 40 GB row would report > 100 %
    from attnkit import roofline
    peak = roofline.peak_for(name)
    assert peak.bandwidth_gbs == gbs and peak.tensor_tflops == roofline.PEAKS["A100"].tensor_tflops
    assert peak.fp32_tflops == roofline.PEAKS["A100"].fp32_tflops and peak.compute_capability == (8, 0)


def test_measurements_run_on_the_cpu():
    from attnkit import roofline
    assert roofline.copy_bandwidth("cpu", n_bytes=2**20, repeats=2) > 0
    assert roofline.matmul_tflops("cpu", n=32, repeats=2) > 0
    calls = []
    assert roofline.time_fn(lambda: calls.append(1), "cpu", repeats=3, warmup=1) >= 0 and len(calls) == 4


def test_tile_explorer_follows_the_block_sizes():
    from attnkit.widgets import TileExplorer
    e = TileExplorer(M=10, N=27, block_m=4, block_n=16)
    assert (e.state["programs"], e.state["steps"], e.state["one_pass"]) == (3, 2, False)
    assert e.state["masked_fraction"] == pytest.approx(1 - 270 / (12 * 32))
    assert e.state["valid"].sum() == 270 and e.state["owner"][11, 0] == 2
    e.controls["block_n"].value = 32
    assert e.updates == 1 and e.state["one_pass"] and e.state["reads_of_x"] == 1
    e.controls["M"].value = 1
    assert e.state["programs"] == 1
    import matplotlib.pyplot as plt
    plt.close(e.draw())
