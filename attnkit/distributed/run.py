"""Ring attention driven from one process: spawn ``W`` ranks on this machine, give each its
shard, run, gather the results; and measure where the time of a ring step goes.

:func:`run_ring_attention` is what a notebook calls; :func:`time_ring` and
:func:`benchmark` produce the table of ``python -m attnkit.distributed``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .. import _validate as chk
from ..attention import check_qkv
from . import ring
from .launch import launch


@dataclass
class RingResult:
    """What :func:`run_ring_attention` gathers from the ranks, in sequence order."""

    out: torch.Tensor  # (..., N, dv)
    lse: torch.Tensor  # (..., N)
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # dq, dk, dv, or None without d_out
    timings: list[list[dict]] = field(default_factory=list)  # per rank, per step (see ring_attention_forward)


def _ring_worker(rank, world_size, q, k, v, is_causal, layout, d_out, block_size):
    q_r, k_r, v_r = (ring.shard(t, rank, world_size, layout) for t in (q, k, v))  # (..., n_local, d)
    timings: list = []
    out, lse = ring.ring_attention_forward(q_r, k_r, v_r, is_causal, layout=layout, block_size=block_size,
                                           timings=timings)
    result = {"out": out, "lse": lse, "timings": timings}
    if d_out is not None:  # the same forward again, through autograd, then the ring backward
        q_r, k_r, v_r = (t.requires_grad_() for t in (q_r, k_r, v_r))
        o = ring.ring_attention(q_r, k_r, v_r, is_causal, layout=layout, block_size=block_size)
        o.backward(ring.shard(d_out, rank, world_size, layout))
        result["grads"] = tuple(t.grad for t in (q_r, k_r, v_r))
    return result


def run_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, world_size: int, is_causal: bool = False, *,
                       layout: str = "contiguous", d_out: torch.Tensor | None = None, block_size: int = 128,
                       timeout: float = 120.0) -> RingResult:
    """Attention of ``q, k (..., N, d)``, ``v (..., N, dv)`` computed by ``world_size`` processes
    on this machine (gloo), each holding ``1 / world_size`` of the sequence.

    d_out: if given ``(..., N, dv)``, the ranks also run the ring backward pass and the result
    carries the gradients ``(dq, dk, dv)`` of ``(out * d_out).sum()``.
    """
    world_size = chk.positive_int("world_size", world_size)
    check_qkv(q, k, v, "run_ring_attention")
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or q.shape[-2] != k.shape[-2]:
        raise ValueError(f"run_ring_attention: ring attention is self-attention over one sequence: q, k, v need the "
                         f"same batch dimensions and length N, got q {chk.shape_str(q)}, k {chk.shape_str(k)}, "
                         f"v {chk.shape_str(v)}")
    ring.segments(q.shape[-2], world_size, layout)  # a clear error for a sequence too short to split
    if d_out is not None:
        chk.tensor("d_out", d_out, floating=True)
        if d_out.shape != (*q.shape[:-1], v.shape[-1]):
            raise ValueError(f"run_ring_attention: d_out must have the output's shape {(*q.shape[:-1], v.shape[-1])}, "
                             f"got {chk.shape_str(d_out)}")
    q, k, v = (t.detach().cpu() for t in (q, k, v))
    d_out = None if d_out is None else d_out.detach().cpu()
    results = launch(_ring_worker, world_size, q, k, v, bool(is_causal), layout, d_out, block_size, timeout=timeout)
    out = ring.unshard([r["out"] for r in results], layout)
    lse = ring.unshard([r["lse"] for r in results], layout, dim=-1)
    grads = None
    if d_out is not None:
        grads = tuple(ring.unshard([r["grads"][i] for r in results], layout) for i in range(3))
    return RingResult(out, lse, grads, [r["timings"] for r in results])


# --------------------------------------------------------------------------- timing

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing_worker(rank, world_size, config):
    """Time forward ring attention on random data; return this rank's medians."""
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu")
    g = torch.Generator().manual_seed(config["seed"])
    shape = (config["batch"], config["heads"], config["n"], config["head_dim"])  # (B, H, N, d)
    q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
    q, k, v = (ring.shard(t, rank, world_size, config["layout"]).to(device, config["dtype"]) for t in (q, k, v))
    options = dict(layout=config["layout"], block_size=config["block_size"])
    ring.ring_attention_forward(q, k, v, config["is_causal"], **options)  # warm-up
    totals, steps = [], []
    for _ in range(config["repeats"]):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        timings: list = []
        ring.ring_attention_forward(q, k, v, config["is_causal"], timings=timings, **options)
        _sync(device)
        totals.append(time.perf_counter() - start)
        steps.append(timings)
    # The same transfers with nothing to hide them behind: pass this rank's block around the ring.
    transfer = []
    if world_size > 1:
        r = ring._Ring(q, k, v, config["layout"], None, "time_ring")
        for _ in range(config["repeats"]):
            dist.barrier()
            k_cur, v_cur = k, v
            start = time.perf_counter()
            for step in range(world_size - 1):
                n_next = r.sizes[(rank - step - 1) % world_size]
                k_next, v_next = ring._empty_block(k, n_next), ring._empty_block(v, n_next)
                for request in r.exchange([k_cur, v_cur], [k_next, v_next], tag=0):
                    request.wait()
                k_cur, v_cur = k_next, v_next
            _sync(device)
            transfer.append((time.perf_counter() - start) / (world_size - 1))
    per_step = lambda key: statistics.median(sum(t[key] for t in ts) / len(ts) for ts in steps)  # noqa: E731
    ring_wait = per_step("wait_s") + per_step("post_s") if world_size > 1 else 0.0  # one rank: no ring at all
    return {"total_s": statistics.median(totals), "compute_s": per_step("compute_s"),
            "wait_s": ring_wait, "transfer_s": statistics.median(transfer) if transfer else 0.0,
            "bytes_per_step": (k.numel() + v.numel()) * k.element_size() if world_size > 1 else 0,
            "n_local": q.shape[-2], "device": str(device)}


def time_ring(world_size: int, n: int, *, heads: int = 8, head_dim: int = 64, batch: int = 1, is_causal: bool = False,
              layout: str = "contiguous", repeats: int = 3, block_size: int = 256, backend: str = "gloo",
              dtype: torch.dtype = torch.float32, seed: int = 0, timeout: float = 300.0) -> dict:
    """Time forward ring attention of ``(batch, heads, n, head_dim)`` over ``world_size`` spawned ranks.

    Returns one row: ``total_s`` (forward time of the slowest rank, median of ``repeats``;
    it includes one all-gather of the shard shapes), per step: ``compute_s`` (attention on one
    block, the slowest rank's), ``wait_s`` (mean over ranks of the time from finishing a block
    to holding the next: the transfer not hidden behind compute, plus any wait for a slower
    neighbour) and ``transfer_s`` (one block's transfer measured alone), ``bytes_per_step``
    sent by each rank, ``n_local`` tokens per rank.
    """
    ring.segments(n, world_size, layout)
    config = dict(n=n, heads=heads, head_dim=head_dim, batch=batch, is_causal=bool(is_causal), layout=layout,
                  repeats=chk.positive_int("repeats", repeats), block_size=block_size, dtype=dtype, seed=seed)
    per_rank = launch(_timing_worker, world_size, config, backend=backend, timeout=timeout)
    return {"world_size": world_size, "n": n, "n_local": max(r["n_local"] for r in per_rank),
            "total_s": max(r["total_s"] for r in per_rank),
            "compute_s": max(r["compute_s"] for r in per_rank),
            "wait_s": statistics.mean(r["wait_s"] for r in per_rank),
            "transfer_s": statistics.mean(r["transfer_s"] for r in per_rank),
            "bytes_per_step": max(r["bytes_per_step"] for r in per_rank),
            "flops": ring.attention_flops(n, head_dim, heads=heads, batch=batch, is_causal=is_causal),
            "device": per_rank[0]["device"], "layout": layout, "is_causal": bool(is_causal)}


def benchmark(world_sizes=(1, 2, 4), n: int = 4096, **options) -> list[dict]:
    """:func:`time_ring` for each world size, one after the other (world size 1 is the
    single-process baseline: the same code with no ring)."""
    return [time_ring(w, n, **options) for w in world_sizes]


def format_table(rows: list[dict]) -> str:
    """The benchmark rows as a text table, times in milliseconds."""
    head = (f"{'ranks':>5} | {'tokens/rank':>11} | {'forward ms':>10} | {'ms/step':>8} | {'compute ms/step':>15} | "
            f"{'exposed comm ms/step':>20} | {'transfer alone ms':>17} | {'MiB sent/step':>13} | {'GFLOP/s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        w = r["world_size"]
        lines.append(f"{w:>5} | {r['n_local']:>11} | {1e3 * r['total_s']:>10.1f} | {1e3 * r['total_s'] / w:>8.1f} | "
                     f"{1e3 * r['compute_s']:>15.1f} | {1e3 * r['wait_s']:>20.2f} | {1e3 * r['transfer_s']:>17.2f} | "
                     f"{r['bytes_per_step'] / 2**20:>13.2f} | {r['flops'] / r['total_s'] / 1e9:>8.1f}")
    return "\n".join(lines)


__all__ = ["RingResult", "benchmark", "format_table", "run_ring_attention", "time_ring"]
