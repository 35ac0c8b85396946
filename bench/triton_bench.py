"""Our Triton FlashAttention kernels vs PyTorch's scaled_dot_product_attention, on one GPU.

Both run side by side in this one process, case by case, on the same inputs, and the script
prints (and writes under ``--out``) a table of milliseconds and TFLOP/s for:

- forward (``fwd``) and forward + backward (``fwd+bwd``);
- N = 1k ... 16k, head dims d = 64 and 128, float16 and bfloat16, causal and not;
- FlashAttention-2's setting (Dao 2023, section 4.1): 16k tokens per batch (B = 16384 / N)
  and a model width of 2048 (H = 2048 / d);
- the CS336 setting (B = 1, H = 16, N = 16384, d = 64, bfloat16, causal), fwd+bwd in ms.

FLOPs are counted, not measured: ``4 * B * H * N^2 * d`` for the forward pass (two matmuls of
``2 N^2 d`` each), half of that when causal, and ``2.5 x`` the forward for the backward pass
(five matmuls instead of two), so fwd+bwd is ``3.5 x`` forward, as in the Triton tutorial and
the FlashAttention papers. SDPA is pinned to its FlashAttention backend with
``torch.nn.attention.sdpa_kernel``; where that backend cannot run (a T4 has no sm_80), the
next that can (memory-efficient, cuDNN, math) is used and named in the table.

Times are medians of ``triton.testing.do_bench`` (CUDA events, cache flushed between calls).
Before timing, each forward output is compared with SDPA's; the largest difference is in
the table. The goals for an H100: forward >= 0.9 x SDPA's TFLOP/s at N >= 4k; CS336 fwd+bwd
under 5.4 ms.

    python bench/triton_bench.py                        # the full sweep (a few minutes)
    python bench/triton_bench.py --n 4096 --d 64 --dtypes bfloat16 --modes fwd
    python bench/triton_bench.py --interpret --tiny     # no GPU: check the plumbing (timings mean nothing)

Writes ``triton-bench-<device>.json`` and ``.md`` under ``--out`` (default ``results/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NO_GPU = ("bench/triton_bench.py times GPU kernels and found no CUDA GPU (torch.cuda.is_available() is False).\n"
          "On a CPU, `python bench/triton_bench.py --interpret --tiny` runs the same code through Triton's "
          "interpreter at toy sizes to check the script itself; its timings mean nothing.")
GOAL_FWD_RATIO = 0.9  # forward TFLOP/s vs SDPA at N >= 4096, on an H100
GOAL_CS336_MS = 5.4  # CS336 fwd+bwd, on an H100
CS336 = dict(B=1, H=16, N=16384, d=64, dtype="bfloat16", causal=True)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths (default 1024 ... 16384)")
    p.add_argument("--d", type=int, nargs="+", help="head dims (default 64 128)")
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16", "float32"])
    p.add_argument("--causal", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--tokens", type=int, help="B * N per case (B = tokens // N, at least 1; default 16384)")
    p.add_argument("--width", type=int, help="H * d per case (default 2048)")
    p.add_argument("--no-cs336", action="store_true", help="skip the CS336 case")
    p.add_argument("--out", type=pathlib.Path, default=REPO / "results", help="folder for the .json and .md")
    p.add_argument("--interpret", action="store_true", help="run on the CPU through Triton's interpreter")
    p.add_argument("--tiny", action="store_true", help="toy sizes (with --interpret: a few seconds)")
    args = p.parse_args(argv)
    sizes = dict(n=[32, 48], d=[16], tokens=32, width=32) if args.tiny else \
        dict(n=[1024, 2048, 4096, 8192, 16384], d=[64, 128], tokens=16384, width=2048)
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.interpret:  # the interpreter's bfloat16 tl.dot is wrong
        args.dtypes = [t for t in args.dtypes if t != "bfloat16"] or ["float16"]
    return args


def flops(B: int, H: int, N: int, d: int, causal: bool, mode: str) -> float:
    """Counted FLOPs: 4 B H N^2 d forward, x0.5 causal, x3.5 for forward + backward."""
    f = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)


def _timer(interpret: bool):
    """Milliseconds per call: do_bench's median on a GPU, a wall-clock median under the interpreter."""
    if not interpret:
        from triton.testing import do_bench
        return lambda fn, grads: do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")

    def wall(fn, grads):
        fn()  # a warm-up call, then one timed call: these numbers only show the plumbing works
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return wall


def _sdpa_backend(q, k, v, causal):
    """The first SDPA backend, in order FLASH, EFFICIENT, CUDNN, MATH, that runs these inputs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q[:, :, :16], k[:, :, :16], v[:, :, :16], is_causal=causal)
            return backend, backend.name.lower().replace("_attention", "")
        except RuntimeError:
            continue
    raise RuntimeError("no SDPA backend runs these inputs")


def run_case(B, H, N, d, dtype_name, causal, modes, timer, device):
    """Rows for ours and SDPA, every mode, on one set of inputs."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from attnkit.triton_flash import TritonFlashAttention, triton_flash_forward

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, d_out = (torch.randn(B, H, N, d, device=device, dtype=dtype, generator=g) for _ in range(4))
    backend, backend_name = _sdpa_backend(q, k, v, causal)

    def sdpa(a, b, c):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(a, b, c, is_causal=causal)

    ours_out, _ = triton_flash_forward(q, k, v, causal)
    err = (ours_out.float() - sdpa(q, k, v).float()).abs().max().item()
    rows = []
    for mode in modes:
        if mode == "fwd":
            fns = {"triton": (lambda: triton_flash_forward(q, k, v, causal), None),
                   "sdpa": (lambda: sdpa(q, k, v), None)}
        else:
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            fns = {"triton": (lambda: TritonFlashAttention.apply(*leaves, causal).backward(d_out), leaves),
                   "sdpa": (lambda: sdpa(*leaves).backward(d_out), leaves)}
        for provider, (fn, grads) in fns.items():
            ms = timer(fn, grads)
            rows.append(dict(provider=provider, backend="triton" if provider == "triton" else backend_name,
                             mode=mode, dtype=dtype_name, causal=causal, B=B, H=H, N=N, d=d, ms=ms,
                             tflops=flops(B, H, N, d, causal, mode) / (ms * 1e-3) / 1e12,
                             max_abs_diff_vs_sdpa=err))
    del q, k, v, d_out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _pairs(rows):
    """(ours, sdpa) row pairs of the same case and mode."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["mode"], r["dtype"], r["causal"], r["d"], r["N"], r["B"], r["H"]), {})[r["provider"]] = r
    return [(c["triton"], c["sdpa"]) for c in by_case.values() if "triton" in c and "sdpa" in c]


def _tf(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def table(rows) -> str:
    lines = ["| mode | dtype | causal | d | N | B x H | ours ms | ours TFLOP/s | SDPA backend | SDPA ms | "
             "SDPA TFLOP/s | ours / SDPA | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ours, sdpa in _pairs(rows):
        lines.append(f"| {ours['mode']} | {ours['dtype']} | {'yes' if ours['causal'] else 'no'} | {ours['d']} | "
                     f"{ours['N']} | {ours['B']} x {ours['H']} | {ours['ms']:.3f} | {_tf(ours['tflops'])} | "
                     f"{sdpa['backend']} | {sdpa['ms']:.3f} | {_tf(sdpa['tflops'])} | "
                     f"{ours['tflops'] / sdpa['tflops']:.2f} | {ours['max_abs_diff_vs_sdpa']:.1e} |")
    return "\n".join(lines)


def goals(rows, cs336_rows, device_name: str) -> list[str]:
    """One line per goal: what was measured, and whether it meets the H100 goal."""
    out = []
    ratios = [o["tflops"] / s["tflops"] for o, s in _pairs(rows) if o["mode"] == "fwd" and o["N"] >= 4096]
    where = "" if "H100" in device_name else f" (the goals are for an H100; this is {device_name})"
    if ratios:
        worst = min(ratios)
        out.append(f"forward, N >= 4096: ours / SDPA TFLOP/s from {worst:.2f} to {max(ratios):.2f} "
                   f"(median {statistics.median(ratios):.2f}); goal >= {GOAL_FWD_RATIO}: "
                   f"{'met' if worst >= GOAL_FWD_RATIO else 'not met'}{where}")
    for o, s in _pairs(cs336_rows):
        out.append(f"CS336 (B={o['B']}, H={o['H']}, N={o['N']}, d={o['d']}, {o['dtype']}, causal) fwd+bwd: "
                   f"ours {o['ms']:.2f} ms, SDPA ({s['backend']}) {s['ms']:.2f} ms; goal < {GOAL_CS336_MS} ms: "
                   f"{'met' if o['ms'] < GOAL_CS336_MS else 'not met'}{where}")
    return out


def main(argv=None) -> dict:
    args = parse(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before attnkit.triton_flash defines its kernels
    import torch
    if not args.interpret and not torch.cuda.is_available():
        raise SystemExit(NO_GPU)
    import triton

    from attnkit import _triton
    if _triton.interpreting() != args.interpret:
        raise SystemExit("TRITON_INTERPRET is set but --interpret is not; unset it to time the GPU "
                         "(or pass --interpret)")
    device = _triton.device()
    timer = _timer(args.interpret)
    if args.interpret:
        device_name = "CPU, Triton interpreter (timings mean nothing)"
    else:
        cap = torch.cuda.get_device_capability()
        device_name = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})"
        if cap < (8, 0) and "bfloat16" in args.dtypes:
            print(f"{device_name}: no bfloat16 before sm_80; timing float16 only")
            args.dtypes = [t for t in args.dtypes if t != "bfloat16"] or ["float16"]

    rows = []
    for dtype in args.dtypes:
        for d in args.d:
            for causal in (c == "yes" for c in args.causal):
                for N in args.n:
                    B, H = max(1, args.tokens // N), max(1, args.width // d)
                    case = run_case(B, H, N, d, dtype, causal, args.modes, timer, device)
                    rows += case
                    for o, s in _pairs(case):
                        print(f"{o['mode']:>7} {dtype:>8} causal={causal!s:5} d={d:<3} N={N:<5} B={B:<2} H={H:<2} "
                              f"ours {o['tflops']:7.1f} TFLOP/s  SDPA[{s['backend']}] {s['tflops']:7.1f}  "
                              f"ratio {o['tflops'] / s['tflops']:.2f}", flush=True)
    cs336_rows = []
    if not args.no_cs336:
        setting = dict(CS336)
        if args.tiny:
            setting.update(H=1, N=32, d=16, dtype="float16")  # a stand-in with the same shape of call
        elif device.type == "cuda" and torch.cuda.get_device_capability() < (8, 0):
            setting["dtype"] = "float16"
        cs336_rows = run_case(setting["B"], setting["H"], setting["N"], setting["d"], setting["dtype"], True,
                              ["fwd+bwd"], timer, device)

    result = dict(device=device_name, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                  interpret=args.interpret, tiny=args.tiny, rows=rows, cs336=cs336_rows,
                  goals=goals(rows, cs336_rows, device_name))
    command = " ".join(["python bench/triton_bench.py", *(argv if argv is not None else sys.argv[1:])])
    md = "\n".join([f"# Triton FlashAttention vs SDPA: {device_name}", "",
                    f"{result['date']}; torch {result['torch']}, triton {result['triton']}. "
                    f"Produced by `{command}`.", "",
                    "FLOPs counted as 4 B H N^2 d (forward), x0.5 causal, x3.5 forward + backward. "
                    f"B = {args.tokens} tokens / N, H = {args.width} / d. "
                    + ("Wall-clock medians through the interpreter." if args.interpret
                       else "Medians of triton.testing.do_bench."), "",
                    table(rows), "", "## CS336 setting", "", table(cs336_rows), "", "## Goals", "",
                    *(f"- {line}" for line in result["goals"]), ""])
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "interpreter-tiny" if args.interpret else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    (args.out / f"triton-bench-{slug}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"triton-bench-{slug}.md").write_text(md)
    print(f"wrote {args.out / f'triton-bench-{slug}.md'} and .json")
    return result


if __name__ == "__main__":
    main()
