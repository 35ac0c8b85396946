"""Time, peak memory and error of attention implementations as the sequence grows.

The quadratic cost of attention is easiest to believe when you watch it: this module runs
naive attention (which materialises the ``N x N`` weights), PyTorch's fused
``scaled_dot_product_attention``, chunked attention (Rabe and Staats 2021), our tiled
FlashAttention (Dao et al. 2022), banded sliding-window attention (Beltagy et al. 2020,
"Longformer") and linear attention (Katharopoulos et al. 2020) on the same inputs, side by
side, and reports for each ``(method, N)``:

- **time**: the median of a few calls after a warm-up call, all methods in one process and
  interleaved round by round, so a burst of load from elsewhere hits every method alike, with
  torch using every core (``OMP_NUM_THREADS`` where the environment sets it; the table header
  says how many);
- **peak extra memory**: in a fresh process per ``(method, N)`` (a child forked from a
  worker that has imported torch but never computed, ``python -m attnkit._bench_worker``):
  the resident-set high-water mark during the call minus the resident set just before it,
  i.e. everything the call allocates and touches (scores, temporaries, the output), not the
  inputs. On Linux the high-water mark is reset with ``/proc/self/clear_refs`` right before
  the call; elsewhere ``ru_maxrss`` gives a lower bound. Naive attention at ``N`` must show
  at least one ``(B, H, N, N)`` float32 matrix, ``B*H*N*N*4`` bytes: the run prints that
  check;
- **error**: the largest absolute difference from a float64 reference of exact attention
  (``-`` above ``max_ref_n``). Sliding-window and linear attention compute *different
  functions*, so their error against exact attention is large by design; the table also
  gives their error against a float64 version of their own definition.

Use from a notebook (small sizes take a few seconds)::

    from attnkit import bench
    rows = bench.measure(["naive", "sdpa", "flash"], [256, 512, 1024])  # list of dicts
    print(bench.table(rows))
    bench.plot(rows)                       # time and memory vs N, log-log
    bench.peak_memory("naive", 1024)       # bytes, measured in a fresh process

From a shell (``--help`` lists every option)::

    python -m attnkit.bench                       # N = 512 ... 16384, every method
    python -m attnkit.bench --causal --n 1024 4096 --methods sdpa flash
    python -m attnkit.bench --out results         # also write .md, .json and .png
    python -m attnkit.bench --sweep-flash --n 4096  # time FlashAttention's block sizes

Sizes that would need more memory than a limit (60% of physical RAM, and at most 70% of
what is available now) or whose estimated time per call exceeds ``max_seconds`` are skipped
with the reason in the table. The estimate scales the time measured at the previous ``N``
by the method's complexity (``N^2`` or ``N``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_NS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK = {"ns": (128, 1024), "batch": 1, "heads": 2, "head_dim": 16, "repeats": 2, "window": 64,
         "flash_block": (128, 128), "chunk": 128, "max_ref_n": 1024, "threads": 1}
GOAL_MEMORY = ("flash", "naive", 8192, 0.05)  # flash's peak extra memory <= 5% of naive's at N=8192
GOAL_TIME = ("flash", "sdpa", 4096, 2.0)  # flash's time <= 2x SDPA's at N=4096
MiB = 2 ** 20


# ----------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """The shape and knobs shared by every method of one run."""
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    causal: bool = False
    window: int = 256
    flash_block: tuple[int, int] = (512, 512)
    chunk: int = 1024
    threads: int = 0  # 0: OMP_NUM_THREADS where set, else every core this process may use

    def n_threads(self) -> int:
        return self.threads or default_threads()

    def inputs(self, n: int, seed: int = 0):
        """Seeded ``q, k, v (B, H, N, d)`` in float32."""
        g = torch.Generator().manual_seed(seed)
        shape = (self.batch, self.heads, n, self.head_dim)
        return tuple(torch.randn(shape, generator=g) for _ in range(3))


def cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when the environment sets it (a test runner or a shared machine
    asking for fewer threads), else :func:`cores`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else cores()


def naive_attention(q, k, v, causal=False):
    """Textbook attention in plain PyTorch: builds the ``(B, H, N, N)`` scores and weights."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Nq, Nk)
    if causal:
        allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)  # (Nq, Nk)
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v  # (B, H, Nq, dv)


def _resolve(name: str, module: str):
    """``attnkit.<name>``, else ``attnkit.<module>.<name>``, else None (not written yet)."""
    import attnkit
    fn = getattr(attnkit, name, None)
    if fn is None:
        try:
            fn = getattr(importlib.import_module(f"attnkit.{module}"), name, None)
        except ImportError:
            fn = None
    return fn


def _sdpa(q, k, v, cfg):
    return F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)


def _chunked(q, k, v, cfg):
    return _resolve("chunked_attention", "chunked")(q, k, v, cfg.causal, query_chunk=cfg.chunk)


def _flash(q, k, v, cfg):
    from .flash import flash_attention_forward
    return flash_attention_forward(q, k, v, cfg.causal, *cfg.flash_block)[0]


def _sliding(q, k, v, cfg):
    return _resolve("sliding_window_attention", "sparse")(q, k, v, cfg.window)


def _linear(q, k, v, cfg):
    from .linear import linear_attention
    return linear_attention(q, k, v, causal=cfg.causal)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    run: Callable  # (q, k, v, cfg) -> out (B, H, N, d)
    exact: bool  # computes softmax attention (up to rounding)
    power: int  # time grows like N ** power
    extra_bytes: Callable  # (cfg, n) -> a generous estimate of the peak extra memory
    label: Callable  # (cfg) -> the "kind" column
    needs: tuple[str, str] | None = None  # (function, module) that must exist in attnkit

    def available(self) -> bool:
        return self.needs is None or _resolve(*self.needs) is not None


def _bh(cfg):
    return cfg.batch * cfg.heads


def _out_bytes(cfg, n):
    return _bh(cfg) * n * cfg.head_dim * 4


METHODS = {m.name: m for m in [
    Method("naive", lambda q, k, v, cfg: naive_attention(q, k, v, cfg.causal), True, 2,
           lambda cfg, n: 2.25 * _bh(cfg) * n * n * 4 + n * n, lambda cfg: "exact"),
    Method("sdpa", _sdpa, True, 2, lambda cfg, n: 8 * _out_bytes(cfg, n) + 64 * MiB, lambda cfg: "exact"),
    Method("chunked", _chunked, True, 2, lambda cfg, n: 4 * _bh(cfg) * min(cfg.chunk, n) * n * 4 + 2 * _out_bytes(cfg, n),
           lambda cfg: f"exact, {cfg.chunk}-query chunks", needs=("chunked_attention", "chunked")),
    Method("flash", _flash, True, 2,
           lambda cfg, n: 6 * _bh(cfg) * min(cfg.flash_block[0], n) * min(cfg.flash_block[1], n) * 4 + 3 * _out_bytes(cfg, n),
           lambda cfg: f"exact, tiles {cfg.flash_block[0]}x{cfg.flash_block[1]}"),
    Method("sliding", _sliding, False, 1, lambda cfg, n: 6 * _bh(cfg) * 256 * (256 + cfg.window) * 4 + 2 * _out_bytes(cfg, n),
           lambda cfg: f"approx.: causal window {cfg.window}", needs=("sliding_window_attention", "sparse")),
    Method("linear", _linear, False, 1,
           lambda cfg, n: (2 * _bh(cfg) * n * cfg.head_dim ** 2 * 4 if cfg.causal else 0) + 4 * _out_bytes(cfg, n),
           lambda cfg: "approx.: elu+1 features"),
]}


def available_methods() -> list[str]:
    """The method names whose implementation exists in this checkout, in table order."""
    return [name for name, m in METHODS.items() if m.available()]


# ----------------------------------------------------------------------------------------
# Float64 references, written here independently of the implementations they check
# ----------------------------------------------------------------------------------------

def _allowed(qs, qe, n, cfg, window=None):
    i = torch.arange(qs, qe).unsqueeze(1)  # (c, 1)
    j = torch.arange(n).unsqueeze(0)  # (1, N)
    ok = (j <= i) if (cfg.causal or window is not None) else torch.ones(qe - qs, n, dtype=torch.bool)
    if window is not None:
        ok = ok & (j > i - window)
    return ok  # (c, N)


def reference(q, k, v, cfg: Config, kind: str = "exact", rows: int = 256) -> torch.Tensor:
    """Float64 ``(B, H, N, d)`` result of ``kind``: ``"exact"`` softmax attention (causal if
    ``cfg.causal``), ``"sliding"`` (keys ``i - window < j <= i``) or ``"linear"`` (the
    ``elu + 1`` kernel, written as a masked quadratic form), ``rows`` queries at a time."""
    q, k, v = q.double(), k.double(), v.double()
    n = q.shape[-2]
    out = torch.empty_like(q)
    for qs in range(0, n, rows):
        qe = min(qs + rows, n)
        if kind == "linear":
            w = (F.elu(q[..., qs:qe, :]) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # (B, H, c, N)
            if cfg.causal:
                w = w * _allowed(qs, qe, n, cfg)
            out[..., qs:qe, :] = (w / w.sum(-1, keepdim=True)) @ v
            continue
        s = q[..., qs:qe, :] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, c, N)
        s = s.masked_fill(~_allowed(qs, qe, n, cfg, cfg.window if kind == "sliding" else None), float("-inf"))
        out[..., qs:qe, :] = torch.softmax(s, -1) @ v
    return out


# ----------------------------------------------------------------------------------------
# Memory (a forked child per (method, N), see attnkit._bench_worker)
# ----------------------------------------------------------------------------------------

def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_memory_limit() -> int:
    """60% of physical RAM, and at most 70% of what is available right now."""
    limits = [x for x in (_scaled(physical_memory(), 0.6), _scaled(available_memory(), 0.7)) if x]
    return min(limits) if limits else 8 * 2 ** 30


def _scaled(x, f):
    return int(x * f) if x else None


def _job(method: str, n: int, cfg: Config, timeout: float) -> dict:
    return {"method": method, "n": n, "config": dataclasses.asdict(cfg), "timeout": timeout}


def _run_worker(jobs: list[dict], timeout: float) -> list[dict]:
    """Run ``jobs`` in one ``python -m attnkit._bench_worker``; one result dict per job."""
    if not jobs:
        return []
    env = dict(os.environ)
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else root
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")  # a fixed threshold: big tensors are mmapped, freed to the OS
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    fork = hasattr(os, "fork")
    batches = [jobs] if fork else [[j] for j in jobs]  # without fork: one fresh process per job
    results = []
    for batch in batches:
        # its own session, so that a timeout ends the worker and any child it forked
        proc = subprocess.Popen([sys.executable, "-m", "attnkit._bench_worker"] + ([] if fork else ["--no-fork"]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(json.dumps(batch), timeout=timeout)
            why = f"the memory worker failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            stdout, stderr = proc.communicate()
            why = f"the memory worker took over {timeout:.0f} s"
        lines = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
        if len(lines) != len(batch):
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            lines += [{"error": f"{why}: {tail}"}] * (len(batch) - len(lines))
        results += lines
    return results


def peak_memory(method: str, n: int, *, batch: int = 1, heads: int = 4, head_dim: int = 64,
                causal: bool = False, window: int = 256, flash_block: tuple[int, int] = (512, 512),
                chunk: int = 1024, threads: int = 0, timeout: float = 120.0) -> int:
    """Peak extra bytes of one call of ``method`` at ``N = n``, measured in a fresh process.

    Raises ``RuntimeError`` when the measurement failed (e.g. the call ran out of memory)."""
    cfg = _config(batch, heads, head_dim, causal, window, flash_block, chunk, threads)
    _check_methods([method])
    n = _check_ns([n])[0]
    result = _run_worker([_job(method, n, cfg, timeout)], timeout + 60)[0]
    if "error" in result:
        raise RuntimeError(f"peak_memory({method!r}, {n}): {result['error']}")
    return result["peak_extra_bytes"]


# ----------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------

def _check_methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods}: choose from {', '.join(METHODS)}")
    return methods


def _check_ns(ns) -> list[int]:
    try:
        ns = [ns] if isinstance(ns, int) else list(ns)
    except TypeError:
        raise TypeError(f"ns must be a list of sequence lengths, got {type(ns).__name__}") from None
    bad = [x for x in ns if isinstance(x, bool) or not isinstance(x, int) or x < 1]
    if bad or not ns:
        raise ValueError(f"sequence lengths must be positive ints, got {ns}")
    return sorted(set(ns))


def _config(batch, heads, head_dim, causal, window, flash_block, chunk, threads) -> Config:
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim), ("window", window),
                        ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0: every core), got {threads!r}")
    block = tuple(flash_block)
    if len(block) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block):
        raise ValueError(f"flash_block must be two positive ints (block_q, block_k), got {flash_block!r}")
    return Config(batch, heads, head_dim, bool(causal), window, block, chunk, threads)


def _time_call(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _max_err(a, b) -> float:
    return float((a.double() - b).abs().max())


def measure(methods: Sequence[str] | None = None, ns: Sequence[int] = DEFAULT_NS, *, batch: int = 1,
            heads: int = 4, head_dim: int = 64, causal: bool = False, repeats: int = 5,
            memory: bool = True, errors: bool = True, max_seconds: float = 30.0,
            memory_limit: int | None = None, max_ref_n: int = 8192, window: int = 256,
            flash_block: tuple[int, int] = (512, 512), chunk: int = 1024, threads: int = 0,
            verbose: bool = False) -> list[dict]:
    """Time, peak memory and error of each method at each N; one dict per ``(method, N)``.

    Keys: ``method, kind, exact, n, time_ms, peak_mib, err_exact, err_own, note`` (a missing
    number is ``None``; ``note`` says why). ``time_ms`` is the median of ``repeats`` calls
    after one warm-up call (fewer when one call takes over 4 s, and only the warm-up call past
    20 s); methods run interleaved.
    ``memory=False`` skips the subprocess measurements. ``threads=0`` uses every core (or
    ``OMP_NUM_THREADS`` where the environment sets it).
    """
    methods = _check_methods(available_methods() if methods is None else methods)
    ns = _check_ns(ns)
    cfg = _config(batch, heads, head_dim, causal, window, flash_block, chunk, threads)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    limit = default_memory_limit() if memory_limit is None else int(memory_limit)
    say = print if verbose else (lambda *a, **k: None)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads())
    rows, per_call = [], {}  # per_call[method] = (n, seconds) of the last measured size
    try:
        for n in ns:
            rows += _measure_n(methods, n, cfg, repeats, errors, max_seconds, limit, max_ref_n, per_call, say)
    finally:
        torch.set_num_threads(old_threads)
    if memory:
        todo = [r for r in rows if r["time_ms"] is not None]
        timeout = sum(3 * r["time_ms"] / 1e3 + 10 for r in todo) + 60
        say(f"peak memory: {len(todo)} fresh processes ...")
        for r, res in zip(todo, _run_worker([_job(r["method"], r["n"], cfg, 3 * r["time_ms"] / 1e3 + 30)
                                             for r in todo], timeout)):
            if "error" in res:
                r["note"] = "; ".join(filter(None, [r["note"], f"memory: {res['error']}"]))
            else:
                r["peak_mib"] = res["peak_extra_bytes"] / MiB
                if res.get("how") != "clear_refs":
                    r["note"] = "; ".join(filter(None, [r["note"], f"memory: lower bound ({res.get('how')})"]))
    return rows


def _measure_n(methods, n, cfg, repeats, errors, max_seconds, limit, max_ref_n, per_call, say):
    q, k, v = cfg.inputs(n)
    rows, live = [], []
    for name in methods:
        m = METHODS[name]
        row = {"method": name, "kind": m.label(cfg), "exact": m.exact, "n": n, "time_ms": None,
               "peak_mib": None, "err_exact": None, "err_own": None, "note": ""}
        rows.append(row)
        if not m.available():
            row["note"] = f"not available: attnkit has no {m.needs[0]} yet"
            continue
        need = m.extra_bytes(cfg, n) + 6 * _out_bytes(cfg, n)
        if need > limit:
            row["note"] = f"skipped: would need ~{need / 2 ** 30:.1f} GiB (limit {limit / 2 ** 30:.1f} GiB)"
            continue
        if name not in per_call:  # calibrate the time estimate on a small size
            n0 = min(n, 512)
            a, b, c = cfg.inputs(n0)
            try:
                m.run(a, b, c, cfg)
            except Exception as exc:  # noqa: BLE001 - one broken method must not sink the others
                row["note"] = f"failed: {type(exc).__name__}: {exc}"
                continue
            per_call[name] = (n0, _time_call(lambda: m.run(a, b, c, cfg))[0])
        n0, t0 = per_call[name]
        estimate = t0 * (n / n0) ** m.power
        if estimate > max_seconds:
            row["note"] = f"skipped: ~{estimate:.0f} s per call estimated (max_seconds {max_seconds:g})"
            continue
        live.append((m, row))
    warm, outs = {}, {}
    for m, row in list(live):  # warm-up call; its output is the one checked for errors
        say(f"N={n}: {m.name} ...")
        try:
            warm[m.name], outs[m.name] = _time_call(lambda: m.run(q, k, v, cfg))
        except Exception as exc:  # noqa: BLE001 - one broken method must not sink the others
            row["note"] = f"failed: {type(exc).__name__}: {exc}"
            live.remove((m, row))
    # fewer calls when one takes over 4 s (about 20 s per (method, N)); none past 20 s: the
    # warm-up call is then the only timing
    budget = {name: repeats if t < 4 else min(repeats, int(20 / t)) for name, t in warm.items()}
    times = {m.name: [] for m, _ in live}
    for r in range(repeats):  # round-robin: every method sees the same load
        for m, _ in live:
            if r < budget[m.name]:
                times[m.name].append(_time_call(lambda: m.run(q, k, v, cfg))[0])
    for m, row in live:
        if not times[m.name]:
            times[m.name] = [warm[m.name]]
            row["note"] = "timed once (the warm-up call)"
        median = statistics.median(times[m.name])
        row["time_ms"] = median * 1e3
        per_call[m.name] = (n, max(median, 1e-6))
    if errors and n <= max_ref_n:
        ref = reference(q, k, v, cfg)
        for m, row in live:
            row["err_exact"] = _max_err(outs[m.name], ref)
            row["err_own"] = row["err_exact"]
        for m, row in live:
            if not m.exact:
                row["err_own"] = _max_err(outs[m.name], reference(q, k, v, cfg, m.name))
    return rows


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------

def goals(rows: list[dict]) -> list[dict]:
    """The two targets of the benchmark as ratios with PASS/FAIL (None when not measured)."""
    found = {(r["method"], r["n"]): r for r in rows}
    result = []
    for (a, b, n, bound), key, what in ((GOAL_MEMORY, "peak_mib", "peak extra memory"),
                                        (GOAL_TIME, "time_ms", "time")):
        x, y = (found.get((m, n), {}).get(key) for m in (a, b))
        ratio = x / y if x is not None and y else None
        result.append({"what": f"{a}/{b} {what} at N={n}", "ratio": ratio, "bound": bound,
                       "pass": None if ratio is None else ratio <= bound})
    return result


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    """A markdown table, grouped by N so the methods at one size sit together."""
    lines = ["| N | method | kind | time (ms) | peak extra (MiB) | max err vs fp64 exact | "
             "max err vs fp64 own definition | note |",
             "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], list(METHODS).index(r["method"]))):
        own = "(same)" if r["exact"] and r["err_own"] is not None else _fmt(r["err_own"], ".1e")
        lines.append(f"| {r['n']} | {r['method']} | {r['kind']} | {_fmt(r['time_ms'], '.1f')} | "
                     f"{_fmt(r['peak_mib'], '.1f')} | {_fmt(r['err_exact'], '.1e')} | {own} | {r['note']} |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    out = []
    for g in goals(rows):
        verdict = "not measured" if g["pass"] is None else ("PASS" if g["pass"] else "FAIL")
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.3f}"
        out.append(f"{g['what']}: {ratio} (goal <= {g['bound']:g}) {verdict}")
    return out


def naive_check_lines(rows: list[dict], cfg: Config) -> list[str]:
    """Does the memory measurement see naive attention's ``(B, H, N, N)`` matrices?"""
    out = []
    for r in rows:
        if r["method"] == "naive" and r["peak_mib"] is not None:
            matrix = _bh(cfg) * r["n"] ** 2 * 4 / MiB
            out.append(f"naive at N={r['n']}: {r['peak_mib']:.1f} MiB extra = {r['peak_mib'] / matrix:.2f} x one "
                       f"(B, H, N, N) float32 matrix of {matrix:.1f} MiB")
    return out


def machine_info(cfg: Config | None = None) -> dict:
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "threads": cfg.n_threads() if cfg else default_threads(),
            "physical_memory_gib": round((physical_memory() or 0) / 2 ** 30, 1)}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def plot(rows: list[dict], *, axes=None, title: str = ""):
    """Time and peak memory vs N on log-log axes, one line per method (approximations
    dashed); returns the figure. ``axes``: two matplotlib Axes to draw on."""
    if axes is None:
        import matplotlib.pyplot as plt
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ylabel in zip(axes, ("time_ms", "peak_mib"), ("time per call (ms)", "peak extra memory (MiB)")):
        drawn = 0
        for name in METHODS:
            pts = sorted((r["n"], r[key]) for r in rows if r["method"] == name and r[key] is not None and r[key] > 0)
            if pts:
                exact = METHODS[name].exact
                ax.plot(*zip(*pts), marker="o", linestyle="-" if exact else "--",
                        label=name if exact else f"{name} (approx.)")
                drawn += 1
        ax.set(xlabel="sequence length N", ylabel=ylabel)
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.set(xscale="log", yscale="log")
        ns = sorted({r["n"] for r in rows})
        ax.set_xticks(ns, labels=[str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes[0].figure


def sweep_flash(n: int, blocks: Sequence[tuple[int, int]], cfg: Config, repeats: int = 3) -> list[dict]:
    """Median time of ``flash_attention_forward`` at ``N = n`` for each ``(block_q, block_k)``,
    with SDPA in the same loop for scale."""
    from .flash import flash_attention_forward
    q, k, v = cfg.inputs(n)
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads())
    try:
        cands = [("sdpa", None)] + [("flash", b) for b in blocks]
        call = {c: (lambda b=c[1]: _sdpa(q, k, v, cfg) if b is None else
                    flash_attention_forward(q, k, v, cfg.causal, *b)) for c in cands}
        times = {c: [] for c in cands}
        for c in cands:
            call[c]()
        for _ in range(repeats):
            for c in cands:
                times[c].append(_time_call(call[c])[0])
    finally:
        torch.set_num_threads(old)
    return [{"method": name, "block": b, "time_ms": statistics.median(times[(name, b)]) * 1e3} for name, b in cands]


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _method_list(text):
    names = [t for t in text.replace(",", " ").split() if t]
    unknown = [t for t in names if t not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnkit.bench",
                                description="Time, peak memory and float64 error of attention methods vs N on the CPU.")
    p.add_argument("--n", type=_positive, nargs="+", help=f"sequence lengths (default {' '.join(map(str, DEFAULT_NS))})")
    p.add_argument("--methods", type=_method_list, nargs="+", help=f"subset of: {', '.join(METHODS)} (default all available)")
    p.add_argument("--causal", action="store_true", help="causal variants (sliding windows are always causal)")
    p.add_argument("--repeats", type=_positive, help="timed calls per (method, N) after one warm-up (default 5)")
    p.add_argument("--out", type=pathlib.Path, help="write <stem>.md, .json and .png to this folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): N 128 1024, H=2, d=16, one thread")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--max-seconds", type=_positive_float, default=30.0,
                   help="skip a (method, N) whose estimated time per call exceeds this (default 30)")
    p.add_argument("--memory-limit-gib", type=_positive_float,
                   help="skip sizes estimated to need more (default 60%% of RAM, at most 70%% of what is free)")
    p.add_argument("--max-ref-n", type=_positive, help="largest N with a float64 reference (default 8192)")
    p.add_argument("--batch", type=_positive, help="B (default 1)")
    p.add_argument("--heads", type=_positive, help="H (default 4)")
    p.add_argument("--head-dim", type=_positive, help="d (default 64)")
    p.add_argument("--window", type=_positive, help="sliding window size (default 256)")
    p.add_argument("--flash-block", type=_positive, nargs=2, metavar=("BQ", "BK"),
                   help="FlashAttention tile (default 512 512)")
    p.add_argument("--chunk", type=_positive, help="chunked attention's query chunk (default 1024)")
    p.add_argument("--threads", type=_positive, help="torch threads (default: OMP_NUM_THREADS if set, else every core)")
    p.add_argument("--stem", default=None, help="file stem for --out (default efficient-attention-cpu[-causal])")
    p.add_argument("--sweep-flash", action="store_true",
                   help="instead: time FlashAttention for several block sizes at each --n, next to SDPA")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    base = dict(QUICK) if args.quick else {"ns": DEFAULT_NS, "batch": 1, "heads": 4, "head_dim": 64, "repeats": 5,
                                           "window": 256, "flash_block": (512, 512), "chunk": 1024, "max_ref_n": 8192,
                                           "threads": 0}
    pick = lambda key, given: base[key] if given is None else given  # noqa: E731
    ns = pick("ns", args.n)
    methods = available_methods() if args.methods is None else [m for group in args.methods for m in group]
    kw = dict(batch=pick("batch", args.batch), heads=pick("heads", args.heads), head_dim=pick("head_dim", args.head_dim),
              causal=args.causal, window=pick("window", args.window),
              flash_block=tuple(pick("flash_block", args.flash_block)), chunk=pick("chunk", args.chunk),
              threads=pick("threads", args.threads))
    cfg = _config(**kw)
    info = machine_info(cfg)
    header = (f"B={cfg.batch}, H={cfg.heads}, d={cfg.head_dim}, float32, {'causal' if cfg.causal else 'not causal'}, "
              f"{info['threads']} torch threads on {info['cpu_count']} cores ({info.get('cpu', '?')}), "
              f"torch {info['torch']}, load average {info.get('load_average', '?')}")
    if args.sweep_flash:
        blocks = [(64, 64), (128, 128), (256, 256), (256, 1024), (512, 512), (512, 1024), (1024, 1024), (128, 4096)]
        print(f"FlashAttention block sizes; {header}\n")
        print("| N | method | block_q x block_k | time (ms) | x SDPA |\n|---:|---|---|---:|---:|")
        for n in ns:
            res = sweep_flash(n, [b for b in blocks if b[0] <= n], cfg, pick("repeats", args.repeats))
            sdpa = res[0]["time_ms"]
            for r in res:
                block = "-" if r["block"] is None else f"{r['block'][0]} x {r['block'][1]}"
                print(f"| {n} | {r['method']} | {block} | {r['time_ms']:.1f} | {r['time_ms'] / sdpa:.2f} |")
        return 0
    limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2 ** 30)
    print(f"# attention vs N: {header}", flush=True)
    start = time.perf_counter()
    rows = measure(methods, ns, **kw, repeats=pick("repeats", args.repeats), memory=not args.no_memory,
                   max_seconds=args.max_seconds, memory_limit=limit, max_ref_n=pick("max_ref_n", args.max_ref_n),
                   verbose=True)
    info["load_average_after"] = machine_info(cfg).get("load_average")
    info["seconds"] = round(time.perf_counter() - start, 1)
    text = table(rows)
    checks = naive_check_lines(rows, cfg)
    verdicts = goal_lines(rows)
    print("\n" + text + "\n")
    for line in checks + verdicts:
        print(line)
    if args.out is not None:
        stem = args.stem or ("efficient-attention-cpu-causal" if cfg.causal else "efficient-attention-cpu")
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m attnkit.bench " + " ".join(sys.argv[1:] if argv is None else argv)
        md = [f"# Attention vs sequence length on the CPU ({info['date'][:10]})", "",
              f"`{command.strip()}`: {header}; load average after: {info['load_average_after']}; "
              f"{info['seconds']:.0f} s in all.", "",
              "Time: median of calls after a warm-up, all methods interleaved in one process. Peak extra memory: "
              "resident-set high-water mark of one call minus the resident set before it, each (method, N) in a "
              "fresh process. Errors: max |out - float64 reference|; sliding and linear are approximations "
              "(different functions), so their error against exact attention is large by design; the last error "
              "column compares them with a float64 version of their own definition.", "", text, ""]
        md += [f"- {line}" for line in checks + verdicts]
        (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
        (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, "config": dataclasses.asdict(cfg),
                                                           "command": command.strip(), "rows": rows,
                                                           "goals": goals(rows)}, indent=1) + "\n")
        if not args.no_plot:
            from matplotlib.figure import Figure
            fig = Figure(figsize=(11, 4))
            plot(rows, axes=fig.subplots(1, 2), title=f"attention vs N: B={cfg.batch}, H={cfg.heads}, d={cfg.head_dim}, "
                                                      f"fp32, {'causal' if cfg.causal else 'not causal'}, "
                                                      f"torch threads: {info['threads']}")
            fig.savefig(args.out / f"{stem}.png", dpi=80)
        print(f"wrote {args.out / stem}.md, .json" + ("" if args.no_plot else ", .png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
