"""``python -m attnkit.distributed``: time ring attention against world size on this machine.

    python -m attnkit.distributed --world-size 1 2 4 --n 4096           # spawns the ranks itself
    python -m attnkit.distributed --world-size 2 4 --n 8192 --causal --layout zigzag
    torchrun --nproc-per-node 8 -m attnkit.distributed --seq-len 65536  # one row, ranks from torchrun

World size 1 is the baseline: the same forward pass in one process, with no ring. Each row
reports the forward time of the slowest rank, the time per ring step, what one step spends
computing and waiting for the next block, the same transfer measured with no compute to
hide behind, and the bytes each rank sends per step.
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch

from . import run

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnkit.distributed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-size", type=int, nargs="+", default=[1, 2, 4],
                   help="numbers of ranks to spawn, one row each (ignored under torchrun)")
    p.add_argument("--n", "--seq-len", dest="n", type=int, default=4096,
                   help="sequence length N (need not divide by the world size); under torchrun write --seq-len, "
                        "since torchrun takes --n for one of its own options")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--layout", choices=["contiguous", "zigzag"], default="contiguous")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes per row (the median is reported)")
    p.add_argument("--block-size", type=int, default=256, help="FlashAttention tile size inside each rank")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl when a GPU is visible, else gloo")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one row may take before it is stopped")
    return p


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _torchrun_row(args, backend) -> None:
    """One row, with the process group torchrun set up (one process per GPU or CPU slot)."""
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    config = dict(n=args.n, heads=args.heads, head_dim=args.head_dim, batch=args.batch, is_causal=args.causal,
                  layout=args.layout, repeats=args.repeats, block_size=args.block_size, dtype=DTYPES[args.dtype], seed=0)
    mine = run._timing_worker(rank, world_size, config)
    every = [None] * world_size
    dist.all_gather_object(every, mine)
    if rank == 0:
        row = {"world_size": world_size, "n": args.n, "n_local": max(r["n_local"] for r in every),
               "total_s": max(r["total_s"] for r in every), "compute_s": max(r["compute_s"] for r in every),
               "wait_s": sum(r["wait_s"] for r in every) / world_size,
               "transfer_s": sum(r["transfer_s"] for r in every) / world_size,
               "bytes_per_step": max(r["bytes_per_step"] for r in every),
               "flops": run.ring.attention_flops(args.n, args.head_dim, heads=args.heads, batch=args.batch,
                                                 is_causal=args.causal)}
        print(_title(args, backend, every[0]["device"]))
        print(run.format_table([row]))
    dist.destroy_process_group()


def _title(args, backend, device) -> str:
    return (f"ring attention forward, (B, H, N, d) = ({args.batch}, {args.heads}, {args.n}, {args.head_dim}), "
            f"{args.dtype}, {'causal, ' if args.causal else ''}{args.layout} layout, {backend} on {device}")


def main(argv: list[str] | None = None) -> list[dict] | None:
    args = _parser().parse_args(argv)
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if _under_torchrun():
        _torchrun_row(args, backend)
        return None
    if backend == "gloo" and args.dtype != "float32":
        print(f"note: {args.dtype} attention on CPUs is emulated and slow; float32 is the CPU baseline")
    rows = []
    for w in args.world_size:
        rows.append(run.time_ring(w, args.n, heads=args.heads, head_dim=args.head_dim, batch=args.batch,
                                  is_causal=args.causal, layout=args.layout, repeats=args.repeats,
                                  block_size=args.block_size, backend=backend, dtype=DTYPES[args.dtype],
                                  timeout=args.timeout))
    print(_title(args, backend, rows[0]["device"]) + f"; {os.cpu_count()} CPU cores")
    print(run.format_table(rows))
    return rows


if __name__ == "__main__":
    main()
