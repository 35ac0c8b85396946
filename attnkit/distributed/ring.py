"""Ring attention: exact attention over a sequence split across processes (Liu, Zaharia and
Abbeel 2023, "Ring Attention with Blockwise Transformers for Near-Infinite Context").

Each of ``W`` ranks holds one block of the sequence: its queries, keys and values. Attention
needs every key for every query, so the key/value blocks travel around a ring: at step ``s``
rank ``r`` holds the key/value block that started on rank ``(r - s) mod W``, computes the
partial attention of its queries over that block (FlashAttention, :mod:`attnkit.flash`,
which returns the partial output and its log-sum-exp), folds it into its running result
with :func:`merge_partials`, and meanwhile sends the block on to rank ``r + 1`` while
receiving the next one from ``r - 1``. After ``W`` steps every query has seen every key,
no rank ever held more than two key/value blocks, and the result equals single-device
attention up to rounding.

The merge is the online softmax of FlashAttention one level up: two partial results over
disjoint key sets, ``(out_a, lse_a)`` and ``(out_b, lse_b)``, combine as
``lse = log(exp(lse_a) + exp(lse_b))`` and ``out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b``.

Causal attention with contiguous blocks leaves rank 0 idle most of the time (its queries
see only its own block) while rank ``W - 1`` works at every step. The *zigzag* layout cuts
the sequence into ``2W`` chunks and gives rank ``r`` chunks ``r`` and ``2W - 1 - r``: one
early and one late chunk each, so every rank does the same work at every step (the zigzag
of Zhu's ring-flash-attention; Brandon et al. 2023, "Striped Attention", balance the load
by striding tokens instead).

Positions are global: query ``i`` may see key ``j`` iff ``j <= i``, exactly the causal mask
of single-device attention, whatever the layout and whether or not ``W`` divides ``N``
(blocks differ by at most one token when it does not).

Backward (the gradients of single-device attention): every rank keeps its queries, output,
log-sum-exp and output gradient; the key/value blocks travel the ring again, each followed
by an accumulator of its ``dK`` and ``dV`` that every rank adds its share to, and that
arrives home after a full turn.

Everything here runs inside a process group (``torch.distributed``: gloo on CPUs, NCCL on
GPUs); :mod:`attnkit.distributed.launch` starts one on this machine.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .. import _validate as chk
from ..attention import check_qkv
from ..chunked import merge_partials as _merge
from ..flash import flash_attention_backward, flash_attention_forward

LAYOUTS = ("contiguous", "zigzag")


# --------------------------------------------------------------------------- the merge

def merge_partials(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets into attention over their union.

    ``out_a, out_b (..., N, dv)`` are softmax-weighted averages over key sets A and B,
    ``lse_a, lse_b (..., N)`` the natural-log log-sum-exp of their scores. A row with
    ``lse = -inf`` saw no key (its output is ignored); if both are ``-inf`` the merged row is
    zeros with ``lse = -inf``. (The arithmetic is :func:`attnkit.chunked.merge_partials`,
    shared with chunked attention; this adds the checks of its inputs.)

    Returns ``out (..., N, dv)`` and ``lse (..., N)``.
    """
    _check_partials(out_a, lse_a, out_b, lse_b)
    return _merge(out_a, lse_a, out_b, lse_b)


def _check_partials(out_a, lse_a, out_b, lse_b):
    for name, t in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        chk.tensor(name, t, floating=True)
    chk.same_dtype(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    if out_a.ndim < 2 or out_a.shape != out_b.shape:
        raise ValueError(f"merge_partials: out_a and out_b must both be (..., N, dv), got "
                         f"{chk.shape_str(out_a)} and {chk.shape_str(out_b)}")
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if t.shape != out_a.shape[:-1]:
            raise ValueError(f"merge_partials: {name} must be (..., N) = {tuple(out_a.shape[:-1])} to match "
                             f"out {chk.shape_str(out_a)}, got {chk.shape_str(t)}")


# --------------------------------------------------------------------------- layouts

def _bounds(n: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` nearly equal chunks of ``range(n)``; the first ``n % parts`` are longer."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (i < extra))
    return bounds


def segments(n: int, world_size: int, layout: str = "contiguous") -> list[list[tuple[int, int]]]:
    """For every rank, the ``(start, end)`` ranges of global positions it holds, in order.

    ``contiguous``: rank ``r`` holds the ``r``-th of ``W`` nearly equal blocks.
    ``zigzag``: the sequence is cut into ``2W`` chunks; rank ``r`` holds chunks ``r`` and ``2W - 1 - r``.
    """
    n = chk.positive_int("n", n)
    world_size = chk.positive_int("world_size", world_size)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parts = world_size if layout == "contiguous" else 2 * world_size
    if n < parts:
        raise ValueError(f"a sequence of {n} tokens cannot be split into {parts} non-empty "
                         f"{'blocks' if layout == 'contiguous' else 'zigzag chunks'} for {world_size} ranks")
    b = _bounds(n, parts)
    if layout == "contiguous":
        return [[(b[r], b[r + 1])] for r in range(world_size)]
    return [[(b[r], b[r + 1]), (b[parts - 1 - r], b[parts - r])] for r in range(world_size)]


def positions(n: int, world_size: int, layout: str = "contiguous") -> list[torch.Tensor]:
    """The global positions each rank holds, as int64 tensors."""
    return [torch.cat([torch.arange(s, e) for s, e in segs]) for segs in segments(n, world_size, layout)]


def shard(x: torch.Tensor, rank: int, world_size: int, layout: str = "contiguous") -> torch.Tensor:
    """Rank ``rank``'s share of ``x (..., N, d)`` along the sequence axis (a new tensor)."""
    chk.tensor("x", x, min_ndim=2)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    segs = segments(x.shape[-2], world_size, layout)[rank]
    return torch.cat([x[..., s:e, :] for s, e in segs], dim=-2)  # (..., n_local, d)


def unshard(shards: list[torch.Tensor], layout: str = "contiguous", dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`shard`: put every rank's share back in sequence order.

    ``dim`` is the sequence axis of the shards (``-2`` for ``(..., n_local, d)``, ``-1`` for
    a log-sum-exp ``(..., n_local)``).
    """
    world_size = len(shards)
    n = sum(s.shape[dim] for s in shards)
    segs = segments(n, world_size, layout)
    for r, (s, seg) in enumerate(zip(shards, segs)):
        if s.shape[dim] != sum(e - b for b, e in seg):
            raise ValueError(f"unshard: rank {r}'s shard has {s.shape[dim]} positions along dim {dim}; "
                             f"the {layout} layout of {n} tokens over {world_size} ranks gives it "
                             f"{sum(e - b for b, e in seg)}")
    pieces = []  # (global start, tensor)
    for s, seg in zip(shards, segs):
        offset = 0
        for b, e in seg:
            pieces.append((b, s.narrow(dim, offset, e - b)))
            offset += e - b
    return torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])], dim=dim)


# --------------------------------------------------------------------------- schedule and work

def ring_schedule(world_size: int) -> torch.Tensor:
    """``(W steps, W ranks)``: the key/value block rank ``r`` holds at step ``s``, ``(r - s) mod W``."""
    world_size = chk.positive_int("world_size", world_size)
    s = torch.arange(world_size).unsqueeze(1)  # (W, 1)
    r = torch.arange(world_size).unsqueeze(0)  # (1, W)
    return (r - s) % world_size  # (W, W)


def _pair(qseg, kseg, is_causal):
    """How a query segment meets a key segment: "full", "diagonal" (causal, same positions) or "skip"."""
    (qs, qe), (ks, ke) = qseg, kseg
    if not is_causal or ke - 1 <= qs:
        return "full"
    if ks >= qe:
        return "skip"  # every key lies in every query's future
    if (qs, qe) == (ks, ke):
        return "diagonal"
    raise AssertionError(f"segments {qseg} and {kseg} overlap partially; one layout for q and kv never does that")


def ring_work(n: int, world_size: int, layout: str = "contiguous", is_causal: bool = False) -> torch.Tensor:
    """``(W steps, W ranks)``: query-key pairs each rank scores at each step (its compute)."""
    segs = segments(n, world_size, layout)
    sched = ring_schedule(world_size)
    work = torch.zeros(world_size, world_size, dtype=torch.int64)
    for step in range(world_size):
        for rank in range(world_size):
            for qseg in segs[rank]:
                for kseg in segs[int(sched[step, rank])]:
                    how, nq, nk = _pair(qseg, kseg, is_causal), qseg[1] - qseg[0], kseg[1] - kseg[0]
                    work[step, rank] += {"full": nq * nk, "diagonal": nq * (nq + 1) // 2, "skip": 0}[how]
    return work


# --------------------------------------------------------------------------- communication

class _Ring:
    """This rank's place in the ring, the layout of everyone's blocks, and the exchanges."""

    def __init__(self, q, k, v, layout, group, what):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{what} needs an initialised process group: run it in the workers started by "
                               f"attnkit.distributed.launch (or torchrun), after torch.distributed.init_process_group")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.group, self.layout = group, layout
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.next = self._global((self.rank + 1) % self.world)
        self.prev = self._global((self.rank - 1) % self.world)
        self.sizes = self._agree(q, k, v, what)
        self.n = sum(self.sizes)
        self.segs = segments(self.n, self.world, layout)
        mine = [sum(e - s for s, e in seg) for seg in self.segs]
        if mine != self.sizes:
            raise ValueError(f"{what}: the ranks hold {self.sizes} positions; the {layout} layout of "
                             f"{self.n} tokens over {self.world} ranks gives {mine}. Use attnkit.distributed.shard.")

    def _global(self, r):
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _agree(self, q, k, v, what):
        """All-gather every rank's local shapes; every rank raises the same error if they disagree."""
        batch = tuple(q.shape[:-2])
        mine = [q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1], len(batch), *batch]
        desc = torch.tensor(mine + [0] * (16 - len(mine)), dtype=torch.int64, device=q.device)
        every = [torch.empty_like(desc) for _ in range(self.world)]
        dist.all_gather(every, desc, group=self.group)
        every = [t.tolist() for t in every]
        for r, other in enumerate(every):
            if other[2:] != every[0][2:]:
                d, dv, ndim = other[2:5]
                d0, dv0, ndim0 = every[0][2:5]
                raise ValueError(f"{what}: rank {r} holds blocks with batch {tuple(other[5:5 + ndim])}, d={d}, "
                                 f"dv={dv}, rank 0 with batch {tuple(every[0][5:5 + ndim0])}, d={d0}, dv={dv0}; "
                                 f"every rank needs the same")
        return [t[0] for t in every]

    def local(self, x, owner, dim=-2):
        """Split ``owner``'s block ``x`` into its segments: [((start, end), view)]."""
        out, offset = [], 0
        for s, e in self.segs[owner]:
            out.append(((s, e), x.narrow(dim, offset, e - s)))
            offset += e - s
        return out

    def exchange(self, send, recv, tag):
        """Post sends of ``send`` to the next rank and receives into ``recv`` from the previous one."""
        ops = [dist.P2POp(dist.isend, t, self.next, self.group, tag + i) for i, t in enumerate(send)]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group, tag + i) for i, t in enumerate(recv)]
        return dist.batch_isend_irecv(ops)


def _empty_block(like, n_block):
    return like.new_empty(*like.shape[:-2], n_block, like.shape[-1])


def _local_qkv(q, k, v, what):
    check_qkv(q, k, v, what)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or q.shape[-2] != k.shape[-2]:
        raise ValueError(f"{what}: q, k and v must be this rank's shards of one sequence, with the same "
                         f"batch dimensions and positions; got q {chk.shape_str(q)}, k {chk.shape_str(k)}, "
                         f"v {chk.shape_str(v)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{what}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- forward and backward

def ring_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False, *,
                           layout: str = "contiguous", group=None, block_size: int = 128,
                           timings: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention on this rank's shard; call it on every rank of the group.

    ``q, k (..., n_local, d)``, ``v (..., n_local, dv)``: this rank's positions of one
    sequence, as :func:`shard` cuts them for ``layout``. Returns this rank's
    ``out (..., n_local, dv)`` and ``lse (..., n_local)`` (natural log).

    timings: if a list, one dict per step is appended: ``compute_s`` (attention on the
    block held), ``wait_s`` (time spent waiting for the next block after computing, i.e.
    communication not hidden behind compute), ``post_s`` (posting the transfer).
    """
    _local_qkv(q, k, v, "ring_attention_forward")
    block_size = chk.positive_int("block_size", block_size)
    ring = _Ring(q, k, v, layout, group, "ring_attention_forward")
    q_parts = ring.local(q, ring.rank)
    outs = [q.new_zeros(*t.shape[:-1], v.shape[-1]) for _, t in q_parts]  # (..., len, dv) per segment
    lses = [q.new_full(t.shape[:-1], float("-inf")) for _, t in q_parts]  # (..., len)
    k_cur, v_cur = k.contiguous(), v.contiguous()
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world  # whose key/value block this rank holds now
        t0 = time.perf_counter()
        if step < ring.world - 1:  # start passing the block on while computing with it
            n_next = ring.sizes[(src - 1) % ring.world]
            k_next, v_next = _empty_block(k, n_next), _empty_block(v, n_next)
            requests = ring.exchange([k_cur, v_cur], [k_next, v_next], tag=0)
        t1 = time.perf_counter()
        for i, (qseg, q_i) in enumerate(q_parts):
            for (kseg, k_j), (_, v_j) in zip(ring.local(k_cur, src), ring.local(v_cur, src)):
                how = _pair(qseg, kseg, is_causal)
                if how == "skip":
                    continue
                o, l = flash_attention_forward(q_i, k_j, v_j, how == "diagonal", block_size, block_size)
                outs[i], lses[i] = _merge(outs[i], lses[i], o, l)  # fold the partial in
        if timings is not None:
            _sync(q.device)
        t2 = time.perf_counter()
        if step < ring.world - 1:
            for request in requests:
                request.wait()
            k_cur, v_cur = k_next, v_next
        if timings is not None:
            _sync(q.device)
            timings.append({"step": step, "post_s": t1 - t0, "compute_s": t2 - t1, "wait_s": time.perf_counter() - t2})
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)  # (..., n_local, dv), (..., n_local)


def ring_attention_backward(q, k, v, out, lse, d_out, is_causal: bool = False, *, layout: str = "contiguous",
                            group=None, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of this rank's shard; call it on every rank of the group.

    ``out``, ``lse`` come from :func:`ring_attention_forward` (they are global: every
    partial probability is ``exp(score - lse)`` with the final ``lse``), ``d_out`` is the
    gradient of this rank's output.
    """
    _local_qkv(q, k, v, "ring_attention_backward")
    for name, t, shape in (("out", out, (*q.shape[:-1], v.shape[-1])), ("d_out", d_out, (*q.shape[:-1], v.shape[-1])),
                           ("lse", lse, q.shape[:-1])):
        chk.tensor(name, t, floating=True)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"ring_attention_backward: {name} must have shape {tuple(shape)}, got {chk.shape_str(t)}")
    ring = _Ring(q, k, v, layout, group, "ring_attention_backward")
    mine = lambda x, dim=-2: ring.local(x, ring.rank, dim)  # noqa: E731
    q_parts, o_parts, do_parts, l_parts = mine(q), mine(out), mine(d_out), mine(lse, -1)
    dq = torch.zeros_like(q)
    dq_parts = mine(dq)
    k_cur, v_cur = k.contiguous(), v.contiguous()
    incoming = None  # (requests, dk, dv) of the accumulator travelling towards this rank
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        if step < ring.world - 1:
            n_next = ring.sizes[(src - 1) % ring.world]
            k_next, v_next = _empty_block(k, n_next), _empty_block(v, n_next)
            requests = ring.exchange([k_cur, v_cur], [k_next, v_next], tag=0)
        dk_part, dv_part = torch.zeros_like(k_cur), torch.zeros_like(v_cur)  # this rank's share for block src
        for (qseg, q_i), (_, o_i), (_, do_i), (_, l_i), (_, dq_i) in zip(q_parts, o_parts, do_parts, l_parts, dq_parts):
            for (kseg, k_j), (_, v_j), (_, dk_j), (_, dv_j) in zip(ring.local(k_cur, src), ring.local(v_cur, src),
                                                                   ring.local(dk_part, src), ring.local(dv_part, src)):
                how = _pair(qseg, kseg, is_causal)
                if how == "skip":
                    continue
                g_q, g_k, g_v = flash_attention_backward(q_i, k_j, v_j, o_i, l_i, do_i, how == "diagonal",
                                                         block_q=block_size, block_k=block_size)
                dq_i += g_q
                dk_j += g_k
                dv_j += g_v
        if incoming is not None:  # the accumulator for block src, from the previous rank
            for request in incoming[0]:
                request.wait()
            dk_part, dv_part = dk_part + incoming[1], dv_part + incoming[2]
        # pass the accumulator on; the one for the block held next step arrives from the previous rank
        n_in = ring.sizes[(src - 1) % ring.world]
        dk_in, dv_in = _empty_block(k, n_in), _empty_block(v, n_in)
        # (the sent tensors stay referenced in the tuple until their transfer is complete)
        incoming = (ring.exchange([dk_part, dv_part], [dk_in, dv_in], tag=2), dk_in, dv_in, dk_part, dv_part)
        if step < ring.world - 1:
            for request in requests:
                request.wait()
            k_cur, v_cur = k_next, v_next
    for request in incoming[0]:  # after a full turn, this rank's own block comes home
        request.wait()
    return dq, incoming[1], incoming[2]


class RingAttention(torch.autograd.Function):
    """``RingAttention.apply(q, k, v, is_causal, layout, group, block_size)`` on this rank's shard.

    Saves ``q, k, v, out`` and the log-sum-exp for the ring backward pass.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, layout="contiguous", group=None, block_size=128):
        out, lse = ring_attention_forward(q, k, v, is_causal, layout=layout, group=group, block_size=block_size)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = dict(layout=layout, group=group, block_size=block_size)
        ctx.is_causal = is_causal
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_attention_backward(q, k, v, out, lse, d_out.contiguous(), ctx.is_causal, **ctx.options)
        return dq, dk, dv, None, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False, *,
                   layout: str = "contiguous", group=None, block_size: int = 128) -> torch.Tensor:
    """Differentiable ring attention on this rank's shard: ``out (..., n_local, dv)``."""
    return RingAttention.apply(q, k, v, is_causal, layout, group, block_size)


def attention_flops(n: int, d: int, dv: int | None = None, heads: int = 1, batch: int = 1,
                    is_causal: bool = False) -> float:
    """Multiply-adds x 2 of the two matmuls of forward attention (halved for causal)."""
    dv = d if dv is None else dv
    flops = 2.0 * batch * heads * n * n * (d + dv)
    return flops / 2 if is_causal else flops


__all__ = ["LAYOUTS", "RingAttention", "attention_flops", "merge_partials", "positions", "ring_attention",
           "ring_attention_backward", "ring_attention_forward", "ring_schedule", "ring_work", "segments", "shard",
           "unshard"]
