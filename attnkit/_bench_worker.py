"""The child side of :func:`attnkit.bench.peak_memory`: peak extra memory of one attention call.

``python -m attnkit._bench_worker`` reads a JSON list of jobs on stdin (``method``, ``n``,
``config``, ``timeout``) and prints one JSON line per job. It imports torch once and never
computes anything itself; each job runs in a child forked from it, so every ``(method, N)``
starts in a fresh process with no pages, thread pools or allocator state left by another
(``--no-fork``: run the one job in this process, for systems without ``fork``).

The measurement, in the child: build the inputs, warm the method up on a small size (thread
pools, and the pages of library code its kernels live in), then read the resident set
``VmRSS``, reset the high-water mark ``VmHWM`` to it (writing ``5`` to
``/proc/self/clear_refs``, Linux >= 4.0), make the call and read ``VmHWM`` again: the
difference is every page the call touched at its peak, output included, less any library
code it paged in (the growth of ``RssFile``, which stays resident). Without ``clear_refs`` the
difference of ``ru_maxrss`` is used, a lower bound. The parent fixes glibc's mmap threshold
(``MALLOC_MMAP_THRESHOLD_``) so that every large tensor is its own mapping, returned to the
system when freed, instead of heap space that a later allocation might reuse unseen.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import signal
import sys
import warnings

import torch

from attnkit import bench


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status``, read with one small fixed buffer so that the
    reading itself does not move the high-water mark."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        try:
            text = os.read(fd, 1 << 15)
        finally:
            os.close(fd)
    except OSError:
        return None
    found = re.search(rb"^" + field.encode() + rb":\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _reset_high_water_mark() -> bool:
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
    except OSError:
        return False
    rss, hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
    return rss is not None and hwm is not None and hwm <= rss + 1024  # within 1 MiB: the reset took


def run_job(job: dict) -> dict:
    """Measure one job in this process; returns ``{"peak_extra_bytes", "baseline_bytes", "how"}``."""
    cfg = bench.Config(**{**job["config"], "flash_block": tuple(job["config"]["flash_block"])})
    method = bench.METHODS[job["method"]]
    torch.set_num_threads(cfg.n_threads())
    small = cfg.inputs(min(job["n"], 256), seed=1)
    method.run(*small, cfg)  # warm-up: thread pools and the library code it pages in
    del small
    q, k, v = cfg.inputs(job["n"])
    gc.collect()
    if _reset_high_water_mark():
        how, before, code = "clear_refs", _status_kib("VmRSS") * 1024, _status_kib("RssFile")
        out = method.run(q, k, v, cfg)
        peak = _status_kib("VmHWM") * 1024
        code = max(0, _status_kib("RssFile") - code) * 1024 if code is not None else 0
    else:
        how, before, code = "ru_maxrss", _maxrss_bytes(), 0
        out = method.run(q, k, v, cfg)
        peak = _maxrss_bytes()
    del out
    return {"method": job["method"], "n": job["n"], "peak_extra_bytes": max(0, peak - before - code),
            "baseline_bytes": before, "code_bytes": code, "how": how}


def _forked(job: dict) -> dict:
    """Run ``job`` in a forked child with an alarm at ``job["timeout"]`` seconds."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns about fork with threads
        pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, leave without cleanup
        os.close(read_end)
        try:
            signal.alarm(max(1, int(job.get("timeout", 600))))
            result = run_job(job)
        except BaseException as exc:  # noqa: BLE001 - report every failure to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = {signal.SIGALRM: f"took over {job.get('timeout')} s", signal.SIGKILL: "killed (out of memory?)"}
        return {"error": why.get(sig, f"killed by signal {sig}")}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"error": f"no result (exit status {status})"}


def main() -> int:
    jobs = json.loads(sys.stdin.read())
    # torch imports torch._refs (and much more) on the first broadcast_shapes call: do that
    # once here, where it is pure Python, instead of once per child.
    torch.broadcast_shapes((1, 2), (2,))
    gc.collect()
    gc.freeze()  # children's collections skip the inherited objects (and do not copy their pages)
    no_fork = "--no-fork" in sys.argv[1:] or not hasattr(os, "fork")
    for job in jobs:
        if no_fork:
            try:
                result = run_job(job)
            except Exception as exc:  # noqa: BLE001
                result = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            result = _forked(job)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
