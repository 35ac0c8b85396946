"""The one-shot GPU check: everything the course claims about a GPU, run on one, in minutes.

On a machine with an NVIDIA GPU, in this order and within one time budget (8 minutes by
default; each stage gets what the previous ones left):

1. the facts: GPU name, compute capability, memory, GPU count, driver, and the versions of
   Python, torch, Triton and NumPy;
2. the GPU tests: ``tests/test_gpu.py`` (kernels at real sizes against SDPA, compiled
   FlexAttention forward and backward, ring attention over NCCL with two GPUs or more) and the
   Triton test files, whose GPU paths (bfloat16, autotuning) run only here;
3. the solution notebooks 10-13 top to bottom on the GPU, cell by cell, with each cell's time
   and printed output (the notebooks print their own bandwidth and TFLOP/s measurements);
4. ``bench/triton_bench.py``: our FlashAttention against SDPA, forward and forward+backward
   TFLOP/s, and the CS336 setting (causal bfloat16, B=1, H=16, N=16384, d=64).

Everything is written under ``results/gpu-check-<gpu>-<date>/`` (``summary.md`` first), so a
run on a lent machine can be committed as it is. The exit status is 0 only when every stage
passed.

``--dry-run`` checks the script itself on a CPU: the same stages with CUDA hidden, the GPU
tests at toy sizes through Triton's interpreter (``ATTN_GPU_TINY=1``), notebook 10, and the
benchmark's ``--interpret --tiny``; it writes to a temporary folder unless ``--out`` says
otherwise. CI runs it (tests/test_gpu_check.py).

    bash bench/gpu_check.sh                 # on the GPU machine
    bash bench/gpu_check.sh --dry-run       # anywhere
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 480  # the whole check, seconds
NOTEBOOKS = ("10", "11", "12", "13")
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_triton_softmax.py", "tests/test_triton_flash.py")
GPU_TEST_WORKERS = 4
# The benchmark's share of a GPU check: every length class the course discusses, both head dims,
# both dtypes, causal and not, forward and forward + backward, and the CS336 case.
BENCH_ARGS = ("--n", "1024", "4096", "16384")
NO_GPU = ("bench/gpu_check.sh needs an NVIDIA GPU (torch.cuda.is_available() is False here). "
          "`bash bench/gpu_check.sh --dry-run` runs the same stages on the CPU at toy sizes.")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="no GPU: toy sizes through Triton's interpreter")
    p.add_argument("--out", type=pathlib.Path, help="folder for the results (default results/gpu-check-<gpu>-<date>)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default {BUDGET_S})")
    p.add_argument("--notebooks", nargs="*", help="notebook numbers (default 10 11 12 13; dry run: 10)")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "notebooks", "bench"], help="stages to leave out")
    args = p.parse_args(argv)
    if args.notebooks is None:
        args.notebooks = ["10"] if args.dry_run else list(NOTEBOOKS)
    return args


def _env(dry_run: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_INTERPRET", "PYTEST_"))}
    env.update(MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if dry_run:
        env.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1", ATTN_GPU_TINY="1")
    return env


# --------------------------------------------------------------------------- 1. facts


FACTS = r"""
import json, platform, torch
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
facts = {"python": platform.python_version(), "torch": torch.__version__, "triton": version("triton"),
         "numpy": version("numpy"), "cuda": torch.version.cuda or "", "gpus": torch.cuda.device_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    facts.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                 sms=p.multi_processor_count)
print(json.dumps(facts))
"""


def facts(env: dict, dry_run: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"could not import torch: {out.stderr.strip()[-800:]}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if dry_run:
        found["gpu"] = "CPU, dry run (Triton interpreter, toy sizes)"
    elif "gpu" not in found:
        raise SystemExit(NO_GPU)
    smi = shutil.which("nvidia-smi")
    if smi and not dry_run:
        q = subprocess.run([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=60)
        if q.returncode == 0 and q.stdout.strip():
            found["driver"] = q.stdout.strip().splitlines()[0].split(",")[0].strip()
    return found


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------- 2. tests


def run_tests(out: pathlib.Path, env: dict, dry_run: bool, limit: float) -> dict:
    files = ["tests/test_gpu.py"] if dry_run else list(GPU_TEST_FILES)
    xml = out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "-o", "addopts=-ra --strict-markers", f"--junitxml={xml}", "--durations=15"]
    if not dry_run and importlib.util.find_spec("xdist") is not None:
        # Most of the time goes to compiling every tile configuration (one CPU core each), not
        # to the GPU: four workers compile in parallel and share Triton's cache on disk.
        cmd += ["-n", str(GPU_TEST_WORKERS)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=max(limit, 1))
        log, timed_out = proc.stdout + proc.stderr, False
    except subprocess.TimeoutExpired as e:
        log, timed_out = _text(e.stdout) + _text(e.stderr), True
    (out / "tests.log").write_text(log)
    counts = dict(passed=0, failed=0, skipped=0, errors=0)
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            counts["failed"] += int(suite.get("failures", 0))
            counts["errors"] += int(suite.get("errors", 0))
            counts["skipped"] += int(suite.get("skipped", 0))
            counts["passed"] += int(suite.get("tests", 0)) - int(suite.get("failures", 0)) \
                - int(suite.get("errors", 0)) - int(suite.get("skipped", 0))
    failed = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))]
    ok = not timed_out and counts["failed"] == counts["errors"] == 0 and counts["passed"] > 0
    return dict(stage="tests", ok=ok, timed_out=timed_out, seconds=round(time.perf_counter() - start, 1),
                files=files, failures=failed[:40], **counts)


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


# --------------------------------------------------------------------------- 3. notebooks


def _kernel_manager(env: dict, folder: pathlib.Path):
    """A Jupyter kernel on this very interpreter (not whatever 'python3' kernelspec is installed)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    spec = folder / "kernels" / "gpu-check"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpu check", "language": "python"}))
    return KernelManager(kernel_name="gpu-check", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def run_notebook(path: pathlib.Path, env: dict, limit: float, work: pathlib.Path) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(env, work), timeout=max(int(limit), 1), allow_errors=True,
                            resources={"metadata": {"path": str(work)}})
    cells, start, timed_out = [], time.perf_counter(), False
    try:
        with client.setup_kernel(env=env):
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                left = limit - (time.perf_counter() - start)
                if left <= 0:
                    timed_out = True
                    break
                client.timeout = max(int(left), 1)
                t0 = time.perf_counter()
                try:
                    client.execute_cell(cell, i)
                except Exception as e:  # a cell over the time left (nbclient's CellTimeoutError) or a dead kernel
                    timed_out = "Timeout" in type(e).__name__
                    cells.append(dict(index=i, seconds=round(time.perf_counter() - t0, 1), error=f"{type(e).__name__}: {e}"[:500],
                                      text=""))
                    break
                error = next((o for o in cell.outputs if o.get("output_type") == "error"), None)
                text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
                cells.append(dict(index=i, seconds=round(time.perf_counter() - t0, 1), text=text[-2000:],
                                  error=f"{error['ename']}: {error['evalue']}"[:500] if error else ""))
    except Exception as e:  # the kernel did not start
        cells.append(dict(index=-1, seconds=0.0, text="", error=f"{type(e).__name__}: {e}"[:500]))
    errors = [c for c in cells if c["error"]]
    return dict(notebook=path.stem, ok=not errors and not timed_out, timed_out=timed_out,
                seconds=round(time.perf_counter() - start, 1), cells=cells, errors=len(errors))


def run_notebooks(numbers, out: pathlib.Path, env: dict, limit: float) -> dict:
    start, results = time.perf_counter(), []
    paths = [next(iter(sorted((REPO / "solutions").glob(f"{n}_*.ipynb"))), None) for n in numbers]
    with tempfile.TemporaryDirectory() as work:
        for number, path in zip(numbers, paths):
            if path is None:
                results.append(dict(notebook=number, ok=False, timed_out=False, seconds=0.0, cells=[], errors=1))
                continue
            left = limit - (time.perf_counter() - start)
            if left <= 5:
                results.append(dict(notebook=path.stem, ok=False, timed_out=True, seconds=0.0, cells=[], errors=0))
                continue
            results.append(run_notebook(path, env, left, pathlib.Path(work)))
    (out / "notebooks.md").write_text(notebooks_md(results))
    return dict(stage="notebooks", ok=all(r["ok"] for r in results), timed_out=any(r["timed_out"] for r in results),
                seconds=round(time.perf_counter() - start, 1), notebooks=[
                    {k: v for k, v in r.items() if k != "cells"} for r in results])


def notebooks_md(results) -> str:
    lines = ["# Solution notebooks on this machine", ""]
    for r in results:
        state = "timed out" if r["timed_out"] else ("every cell ran" if r["ok"] else f"{r['errors']} cell(s) failed")
        lines += [f"## {r['notebook']}: {state}, {r['seconds']} s", ""]
        for c in r.get("cells", []):
            head = f"- cell {c['index']}: {c['seconds']} s" + (f", **{c['error']}**" if c["error"] else "")
            lines.append(head)
            if c["text"].strip():
                lines += ["", "  ```", *("  " + line for line in c["text"].rstrip().splitlines()[-25:]), "  ```", ""]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 4. bench


def run_bench(out: pathlib.Path, env: dict, dry_run: bool, limit: float) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "triton_bench.py"), "--out", str(out)]
    cmd += ["--interpret", "--tiny"] if dry_run else list(BENCH_ARGS)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=max(limit, 1))
        log, timed_out, code = proc.stdout + proc.stderr, False, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, timed_out, code = _text(e.stdout) + _text(e.stderr), True, None
    (out / "bench.log").write_text(log)
    written = sorted(p.name for p in out.glob("triton-bench-*.json"))
    result = dict(stage="bench", ok=code == 0 and bool(written), timed_out=timed_out,
                  seconds=round(time.perf_counter() - start, 1), files=written, goals=[])
    if written:
        data = json.loads((out / written[0]).read_text())
        result["goals"] = data.get("goals", [])
        result["cs336"] = [dict(provider=r["provider"], backend=r["backend"], ms=round(r["ms"], 3))
                           for r in data.get("cs336", [])]
    return result


# --------------------------------------------------------------------------- summary


def summary_md(found: dict, stages: list[dict], started: str, seconds: float, args) -> str:
    head = f"# GPU check: {found['gpu']}" + (f" (sm_{found['capability'].replace('.', '')})" if "capability" in found else "")
    lines = [head, "",
             f"{started}, {seconds:.0f} s of a {args.budget:.0f} s budget. Produced by "
             f"`bash bench/gpu_check.sh{' --dry-run' if args.dry_run else ''}`.", "",
             "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in found.items()]
    lines += ["", "| stage | result | seconds |", "|---|---|---|"]
    for s in stages:
        if s["stage"] == "tests":
            what = f"{s['passed']} passed, {s['failed']} failed, {s['errors']} errors, {s['skipped']} skipped"
        elif s["stage"] == "notebooks":
            what = "; ".join(f"{n['notebook']}: " + ("timed out" if n["timed_out"] else "ok" if n["ok"]
                                                     else f"{n['errors']} failed") for n in s["notebooks"])
        else:
            what = ", ".join(s["files"]) or "no results written"
        state = "timed out" if s.get("timed_out") else ("passed" if s["ok"] else "FAILED")
        lines.append(f"| {s['stage']} | {state}: {what} | {s['seconds']} |")
    for s in stages:
        if s["stage"] == "tests" and s["failures"]:
            lines += ["", "Failing tests:", "", *(f"- `{f}`" for f in s["failures"])]
        if s["stage"] == "bench" and s["goals"]:
            lines += ["", "Benchmark goals:", "", *(f"- {g}" for g in s["goals"])]
    lines += ["", "Files: `tests.log`, `tests.xml`, `notebooks.md`, `bench.log`, `triton-bench-*.md` and `.json`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    env = _env(args.dry_run)
    found = facts(env, args.dry_run)
    if args.out is None:
        if args.dry_run:
            args.out = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-dry-run-"))
        else:
            args.out = REPO / "results" / f"gpu-check-{slug(found['gpu'])}-{started[:10]}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "facts.json").write_text(json.dumps(found, indent=1))
    print(f"GPU check on {found['gpu']}: writing to {args.out}", flush=True)

    def left() -> float:
        return args.budget - (time.perf_counter() - t0)

    stages = []
    # Shares of what is left: the tests compile every kernel configuration (the benchmark then
    # finds them in Triton's cache); the notebooks and the benchmark split the rest.
    if "tests" not in args.skip:
        stages.append(run_tests(args.out, env, args.dry_run, left() * 0.45))
        print(f"tests: {stages[-1]['passed']} passed, {stages[-1]['failed']} failed ({stages[-1]['seconds']} s)", flush=True)
    if "notebooks" not in args.skip:
        stages.append(run_notebooks(args.notebooks, args.out, env, left() * 0.5))
        print(f"notebooks: {'ok' if stages[-1]['ok'] else 'FAILED'} ({stages[-1]['seconds']} s)", flush=True)
    if "bench" not in args.skip:
        stages.append(run_bench(args.out, env, args.dry_run, left() - 5))
        print(f"bench: {'ok' if stages[-1]['ok'] else 'FAILED'} ({stages[-1]['seconds']} s)", flush=True)
    seconds = time.perf_counter() - t0
    result = dict(facts=found, started=started, seconds=round(seconds, 1), budget_s=args.budget,
                  dry_run=args.dry_run, stages=stages, ok=all(s["ok"] for s in stages))
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    md = summary_md(found, stages, started, seconds, args)
    (args.out / "summary.md").write_text(md)
    print()
    print(md)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
