"""Paged attention: a KV cache kept in fixed-size pages, as vLLM serves many sequences at once
(Kwon, Li, Zhuang, Sheng, Zheng, Yu, Gonzalez, Zhang and Stoica 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention", SOSP).

A server does not know how long a reply will be. Giving every request one contiguous buffer
means reserving its maximum length up front: most of that memory is never written
(*internal* fragmentation), and the holes left by finished requests of different sizes may
be too small for the next one (*external* fragmentation). Kwon et al. measured 20-40% of KV
memory actually holding tokens in such systems.

Paging borrows the operating system's answer. The cache is one pool of physical pages of
``page_size`` positions each, ``k_pages (P, Hkv, page_size, d)``; a sequence owns a list of
page numbers, its row of the *block table*; logical page ``i`` of sequence ``b`` lives in
physical page ``block_table[b, i]``. Pages are taken from a free list one at a time as the
sequence grows, so at most ``page_size - 1`` slots per sequence are wasted, and two sequences
that share a prompt can share its pages (reference counts, copy-on-write when one of them
writes into a shared page).

* :func:`paged_attention`: one decode step for a batch of sequences over such a cache.
* :class:`BlockAllocator`, :class:`PagedKVCache`: the free list, reference counts, block
  tables and copy-on-write.
* :func:`simulate_serving`: a generated workload served with contiguous reservations or with
  pages, to measure fragmentation and the batch size each achieves in the same memory.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from . import _validate as chk


def _check_paged(q, k_pages, v_pages, block_table, seq_lens):
    chk.tensor("q", q, ndim=4, floating=True)
    chk.tensor("k_pages", k_pages, ndim=4, floating=True)
    chk.tensor("v_pages", v_pages, ndim=4, floating=True)
    chk.same_dtype(q=q, k_pages=k_pages, v_pages=v_pages)
    chk.integer_tensor("block_table", block_table, ndim=2)
    chk.integer_tensor("seq_lens", seq_lens, ndim=1)
    B, H, one, d = q.shape
    P, Hkv, page_size, dk = k_pages.shape
    if one != 1:
        raise ValueError(f"paged_attention decodes one token per sequence: q must be (B, H, 1, d), got {chk.shape_str(q)}")
    if v_pages.shape[:3] != k_pages.shape[:3] or dk != d:
        raise ValueError(f"paged_attention: expected k_pages (P, Hkv, page_size, d={d}) and v_pages (P, Hkv, page_size, dv) "
                         f"with the same (P, Hkv, page_size), got q {chk.shape_str(q)}, k_pages {chk.shape_str(k_pages)}, "
                         f"v_pages {chk.shape_str(v_pages)}")
    if H % Hkv:
        raise ValueError(f"paged_attention: the {H} query heads of q {chk.shape_str(q)} must be a multiple of the "
                         f"{Hkv} kv heads of k_pages {chk.shape_str(k_pages)}")
    if block_table.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError(f"paged_attention: block_table (B, max_pages) and seq_lens (B,) need B={B} rows for q "
                         f"{chk.shape_str(q)}, got block_table {chk.shape_str(block_table)} and seq_lens "
                         f"{chk.shape_str(seq_lens)}")
    max_pages = block_table.shape[1]
    lens = seq_lens.tolist()
    for b, n in enumerate(lens):
        if not 0 <= n <= max_pages * page_size:
            raise ValueError(f"paged_attention: seq_lens[{b}] = {n} does not fit in {max_pages} pages of {page_size} "
                             f"positions (block_table {chk.shape_str(block_table)})")
        used = block_table[b, :math.ceil(n / page_size)]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= P):
            raise ValueError(f"paged_attention: block_table[{b}] names page {int(used.min()) if int(used.min()) < 0 else int(used.max())}"
                             f" but k_pages {chk.shape_str(k_pages)} holds pages 0..{P - 1}")


def paged_attention(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                    seq_lens: torch.Tensor) -> torch.Tensor:
    """One decode step over a paged KV cache.

    Args:
        q: ``(B, H, 1, d)``, the newest token of each of ``B`` sequences.
        k_pages, v_pages: ``(P, Hkv, page_size, d)`` and ``(P, Hkv, page_size, dv)``, the page pool.
        block_table: ``(B, max_pages)`` int64; logical page ``i`` of sequence ``b`` is physical page
            ``block_table[b, i]``. Entries past a sequence's last page are ignored.
        seq_lens: ``(B,)`` int64; only the first ``seq_lens[b]`` positions of sequence ``b`` count.

    Returns:
        ``(B, H, 1, dv)``: softmax attention with scale ``1/sqrt(d)``, query head ``h`` reading kv
        head ``h // (H // Hkv)``. A sequence of length 0 gets zeros.
    """
    _check_paged(q, k_pages, v_pages, block_table, seq_lens)
    B, H, _, d = q.shape
    P, Hkv, page_size, _ = k_pages.shape
    max_pages = block_table.shape[1]
    T = max_pages * page_size
    pos = torch.arange(T, device=q.device)  # (T,) logical positions
    valid = pos < seq_lens.to(q.device).unsqueeze(-1)  # (B, T)
    page_used = pos[::page_size] < seq_lens.to(q.device).unsqueeze(-1)  # (B, max_pages)
    table = torch.where(page_used, block_table.to(q.device), torch.zeros_like(block_table, device=q.device))  # unused -> 0
    k = k_pages[table].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, d)  # (B, max_pages, Hkv, ps, d) -> (B, Hkv, T, d)
    v = v_pages[table].permute(0, 2, 1, 3, 4).reshape(B, Hkv, T, -1)  # (B, Hkv, T, dv)
    qg = q.reshape(B, Hkv, H // Hkv, d)  # (B, Hkv, n_rep, d): query head h is in group h // n_rep
    scores = qg @ k.transpose(-2, -1) / math.sqrt(d)  # (B, Hkv, n_rep, T)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # empty sequences: nothing to subtract
    e = torch.exp(scores - m)  # (B, Hkv, n_rep, T), 0 where masked
    l = e.sum(-1, keepdim=True)
    out = (e @ v) / torch.where(l > 0, l, torch.ones_like(l))  # (B, Hkv, n_rep, dv)
    return out.reshape(B, H, 1, -1)  # (B, H, 1, dv)


# --------------------------------------------------------------------------- the allocator

class BlockAllocator:
    """A free list of ``num_pages`` physical pages with a reference count each."""

    def __init__(self, num_pages: int):
        self.num_pages = chk.positive_int("num_pages", num_pages)
        self.free = deque(range(self.num_pages))
        self.refs = [0] * self.num_pages

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        """Take a page off the free list (reference count 1)."""
        if not self.free:
            raise RuntimeError(f"out of KV pages: all {self.num_pages} are in use")
        page = self.free.popleft()
        self.refs[page] = 1
        return page

    def share(self, page: int) -> int:
        """One more owner for ``page`` (a forked sequence); returns it."""
        if self.refs[page] == 0:
            raise ValueError(f"page {page} is free; only a page in use can be shared")
        self.refs[page] += 1
        return page

    def release(self, page: int) -> None:
        """One owner fewer; the page returns to the free list when nobody owns it."""
        if self.refs[page] == 0:
            raise ValueError(f"page {page} is already free")
        self.refs[page] -= 1
        if self.refs[page] == 0:
            self.free.append(page)


class PagedKVCache:
    """The KV cache of one layer for many sequences, in pages of ``page_size`` positions.

    ``append(seq, k, v)`` writes ``k (Hkv, n, d)``, ``v (Hkv, n, dv)`` at the end of sequence
    ``seq``, taking pages from the free list as it grows; ``fork(parent, child)`` makes
    ``child`` share every page of ``parent`` (a shared prompt, parallel sampling); a write into a
    shared page first copies it (copy-on-write). ``block_table(seqs)`` and ``seq_lens(seqs)``
    are the inputs of :func:`paged_attention`.
    """

    def __init__(self, num_pages: int, page_size: int, n_kv_heads: int, head_dim: int, *,
                 v_head_dim: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        self.page_size = chk.positive_int("page_size", page_size)
        n_kv_heads = chk.positive_int("n_kv_heads", n_kv_heads)
        head_dim = chk.positive_int("head_dim", head_dim)
        v_head_dim = head_dim if v_head_dim is None else chk.positive_int("v_head_dim", v_head_dim)
        self.allocator = BlockAllocator(num_pages)
        self.k_pages = torch.zeros(num_pages, n_kv_heads, page_size, head_dim, dtype=dtype, device=device)
        self.v_pages = torch.zeros(num_pages, n_kv_heads, page_size, v_head_dim, dtype=dtype, device=device)
        self.tables: dict = {}
        self.lengths: dict = {}
        self.copies = 0  # pages copied on write so far

    def add_sequence(self, seq) -> None:
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already exists")
        self.tables[seq], self.lengths[seq] = [], 0

    def append(self, seq, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``n`` new positions ``k (Hkv, n, d)``, ``v (Hkv, n, dv)`` at the end of ``seq``."""
        chk.tensor("k", k, ndim=3)
        chk.tensor("v", v, ndim=3)
        if (k.shape[0], k.shape[2]) != (self.k_pages.shape[1], self.k_pages.shape[3]) or \
                (v.shape[0], v.shape[1], v.shape[2]) != (k.shape[0], k.shape[1], self.v_pages.shape[3]):
            raise ValueError(f"PagedKVCache.append: expected k (Hkv={self.k_pages.shape[1]}, n, d={self.k_pages.shape[3]}) "
                             f"and v (Hkv, n, dv={self.v_pages.shape[3]}), got k {chk.shape_str(k)}, v {chk.shape_str(v)}")
        table = self.tables[seq]
        for t in range(k.shape[1]):
            slot = self.lengths[seq] % self.page_size
            if slot == 0:  # the last page is full (or there is none): take a new one
                table.append(self.allocator.allocate())
            elif self.allocator.refs[table[-1]] > 1:  # shared: copy before writing
                new = self.allocator.allocate()
                self.k_pages[new] = self.k_pages[table[-1]]
                self.v_pages[new] = self.v_pages[table[-1]]
                self.allocator.release(table[-1])
                table[-1] = new
                self.copies += 1
            self.k_pages[table[-1], :, slot] = k[:, t]
            self.v_pages[table[-1], :, slot] = v[:, t]
            self.lengths[seq] += 1

    def fork(self, parent, child) -> None:
        """``child`` starts as a copy of ``parent`` that shares all its pages."""
        if child in self.tables:
            raise ValueError(f"sequence {child!r} already exists")
        self.tables[child] = [self.allocator.share(p) for p in self.tables[parent]]
        self.lengths[child] = self.lengths[parent]

    def free(self, seq) -> None:
        """Forget ``seq`` and release its pages."""
        for page in self.tables.pop(seq):
            self.allocator.release(page)
        del self.lengths[seq]

    def block_table(self, seqs) -> torch.Tensor:
        """``(len(seqs), max_pages)`` int64, padded with -1."""
        width = max([len(self.tables[s]) for s in seqs] + [1])
        rows = [self.tables[s] + [-1] * (width - len(self.tables[s])) for s in seqs]
        return torch.tensor(rows, dtype=torch.int64, device=self.k_pages.device)

    def seq_lens(self, seqs) -> torch.Tensor:
        return torch.tensor([self.lengths[s] for s in seqs], dtype=torch.int64, device=self.k_pages.device)

    def gather(self, seq) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of ``seq`` as contiguous ``(Hkv, T, d)`` and ``(Hkv, T, dv)`` copies."""
        pages = torch.tensor(self.tables[seq], dtype=torch.int64, device=self.k_pages.device)
        T = self.lengths[seq]
        k = self.k_pages[pages].transpose(0, 1).flatten(1, 2)[:, :T]  # (Hkv, pages * ps, d) -> (Hkv, T, d)
        v = self.v_pages[pages].transpose(0, 1).flatten(1, 2)[:, :T]
        return k, v

    @property
    def pages_in_use(self) -> int:
        return self.allocator.num_pages - self.allocator.num_free


# --------------------------------------------------------------------------- fragmentation, measured

@dataclass
class ServingStats:
    """What :func:`simulate_serving` measured, step by step (one decode step per tick)."""

    policy: str
    steps: int = 0  # ticks until every request finished
    running: list = field(default_factory=list)  # requests decoding at each tick
    stored: list = field(default_factory=list)  # token slots holding a real key/value
    reserved: list = field(default_factory=list)  # token slots set aside (allocated) for requests
    preemptions: int = 0
    snapshot: list | None = None  # (start, length, used, request) blocks of memory at ``snapshot_at``

    @property
    def mean_batch(self) -> float:
        return sum(self.running) / max(len(self.running), 1)

    @property
    def utilisation(self) -> float:
        """Share of the reserved slots that hold a token, over the whole run."""
        return sum(self.stored) / max(sum(self.reserved), 1)


def generate_workload(n_requests: int, *, max_len: int = 2048, generator: torch.Generator | None = None
                      ) -> list[tuple[int, int, int]]:
    """``(prompt_len, output_len, max_new_tokens)`` per request: log-normal prompt and reply
    lengths (most short, a few long, as in chat traffic), capped so that ``prompt + max_new`` fits
    in ``max_len``. The server knows ``max_new_tokens``, not ``output_len``."""
    n_requests = chk.positive_int("n_requests", n_requests)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    prompts = torch.exp(torch.randn(n_requests, generator=g, dtype=torch.float64) * 0.9 + math.log(200))
    outputs = torch.exp(torch.randn(n_requests, generator=g, dtype=torch.float64) * 0.8 + math.log(150))
    work = []
    for p, o in zip(prompts.tolist(), outputs.tolist()):
        p = int(min(max(p, 8), max_len // 2))
        max_new = max_len - p
        work.append((p, int(min(max(o, 4), max_new)), max_new))
    return work


def simulate_serving(workload, memory_tokens: int, *, policy: str = "paged", page_size: int = 16,
                     watermark: float = 0.01, snapshot_at: int | None = None) -> ServingStats:
    """Serve ``workload`` (from :func:`generate_workload`) first come, first served, in a KV memory
    of ``memory_tokens`` slots; every tick each running request generates one token.

    ``policy="contiguous"``: a request is admitted when one contiguous free range of
    ``prompt + max_new_tokens`` slots exists (first fit), and holds it until it finishes.
    ``policy="paged"``: a request is admitted when its prompt's pages fit and leave a
    ``watermark`` share of all pages free; it takes one page of ``page_size`` slots whenever it
    fills the last one; when no page is free, the most recently admitted request is preempted
    (its pages freed, it restarts later), as vLLM does.
    """
    memory_tokens = chk.positive_int("memory_tokens", memory_tokens)
    page_size = chk.positive_int("page_size", page_size)
    if policy not in ("paged", "contiguous"):
        raise ValueError(f"policy must be 'paged' or 'contiguous', got {policy!r}")
    for r, (prompt, out, max_new) in enumerate(workload):
        need = prompt + max_new if policy == "contiguous" else math.ceil((prompt + out) / page_size) * page_size
        if not (0 < prompt and 0 < out <= max_new and need <= memory_tokens):
            raise ValueError(f"request {r} (prompt {prompt}, output {out}, max_new_tokens {max_new}) can never be "
                             f"served in {memory_tokens} slots with policy {policy!r}")
    stats = ServingStats(policy)
    waiting = deque(range(len(workload)))
    running: list[int] = []  # request ids in admission order
    length: dict[int, int] = {}  # current length of each running request
    where: dict[int, tuple[int, int]] = {}  # contiguous: (start, size)
    pages: dict[int, int] = {}  # paged: pages held
    free_pages = memory_tokens // page_size
    tick = 0
    while waiting or running:
        # admit, first come first served
        while waiting:
            r = waiting[0]
            prompt, _, max_new = workload[r]
            if policy == "contiguous":
                start = _first_fit(sorted(where.values()), prompt + max_new, memory_tokens)
                if start is None:
                    break
                where[r] = (start, prompt + max_new)
            else:
                need = math.ceil((prompt + 1) / page_size)
                if need > free_pages - watermark * (memory_tokens // page_size):
                    break
                free_pages -= need
                pages[r] = need
            waiting.popleft()
            running.append(r)
            length[r] = prompt
        # one decode step
        for r in list(running):
            if r not in length:
                continue  # preempted during this tick
            length[r] += 1
            if policy == "paged":
                while pages[r] * page_size < length[r]:
                    if free_pages == 0:
                        victim = running[-1]
                        running.remove(victim)
                        free_pages += pages.pop(victim)
                        del length[victim]
                        waiting.appendleft(victim)
                        stats.preemptions += 1
                        if victim == r:
                            break
                        continue
                    free_pages -= 1
                    pages[r] += 1
        if snapshot_at is not None and tick == snapshot_at:
            stats.snapshot = _snapshot(policy, running, length, where, pages, page_size)
        stats.running.append(len(running))
        stats.stored.append(sum(length[r] for r in running))
        stats.reserved.append(sum(where[r][1] for r in running) if policy == "contiguous"
                              else sum(pages[r] for r in running) * page_size)
        for r in list(running):
            prompt, out, _ = workload[r]
            if length[r] >= prompt + out:  # finished: release its memory
                running.remove(r)
                del length[r]
                if policy == "contiguous":
                    del where[r]
                else:
                    free_pages += pages.pop(r)
        tick += 1
    stats.steps = tick
    return stats


def _first_fit(blocks, size, capacity):
    start = 0
    for s, n in blocks:
        if s - start >= size:
            return start
        start = max(start, s + n)
    return start if capacity - start >= size else None


def _snapshot(policy, running, length, where, pages, page_size):
    if policy == "contiguous":
        return [(where[r][0], where[r][1], length[r], r) for r in running]
    out, start = [], 0
    for r in running:  # pages are interchangeable: lay them out in admission order for the picture
        out.append((start, pages[r] * page_size, length[r], r))
        start += pages[r] * page_size
    return out
