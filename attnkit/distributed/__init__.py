"""Attention beyond one device: ring attention over ``torch.distributed`` (notebook 13).

* :mod:`.ring`: the algorithm, run on every rank of a process group: layouts
  (``contiguous``, load-balanced ``zigzag``), :func:`merge_partials`, the ring forward and
  backward, :class:`RingAttention` (autograd), the schedule and per-rank work.
* :mod:`.launch`: :func:`launch` starts ``W`` processes on this machine as one process group
  (gloo on CPUs, NCCL on GPUs), from a notebook or a script, and never hangs.
* :mod:`.run`: :func:`run_ring_attention` (spawn, shard, run, gather) and the timing behind
  ``python -m attnkit.distributed``.
"""

from .launch import WorkerError, launch
from .ring import (LAYOUTS, RingAttention, attention_flops, merge_partials, positions, ring_attention,
                   ring_attention_backward, ring_attention_forward, ring_schedule, ring_work, segments, shard, unshard)
from .run import RingResult, benchmark, format_table, run_ring_attention, time_ring

__all__ = ["LAYOUTS", "RingAttention", "RingResult", "WorkerError", "attention_flops", "benchmark", "format_table",
           "launch", "merge_partials", "positions", "ring_attention", "ring_attention_backward",
           "ring_attention_forward", "ring_schedule", "ring_work", "run_ring_attention", "segments", "shard",
           "time_ring", "unshard"]
