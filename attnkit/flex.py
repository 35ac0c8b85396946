"""FlexAttention: attention variants written as two small functions instead of new kernels
(Dong, Feng, Guessous, Liang and He 2024, "Flex Attention: A Programming Model for
Generating Optimized Attention Kernels"; PyTorch blog, "FlexAttention: The Flexibility of
PyTorch with the Performance of FlashAttention", 2024).

PyTorch's ``torch.nn.attention.flex_attention`` computes
``softmax(score_mod(q k^T / sqrt(d))) v`` restricted to the pairs a *mask* allows, where

* ``score_mod(score, b, h, q_idx, kv_idx) -> score`` edits one scaled score (ALiBi adds
  ``-slope_h * distance``), and
* ``mask_mod(b, h, q_idx, kv_idx) -> bool`` says whether query ``q_idx`` may see key
  ``kv_idx`` (``True`` = may attend, as everywhere in the course).

Both are written for *one* (batch, head, query, key) position and are vectorised by
``torch.vmap`` (eager) or traced into a fused kernel (``torch.compile``): use ``&``, ``|``,
``torch.where`` and indexing of captured tensors, never a Python ``if`` on a tensor.

A mask is summarised once as a :class:`BlockMask`: the score matrix cut into tiles
(128 x 128 by default) each marked *empty* (skipped entirely), *full* (computed without
calling ``mask_mod``) or *partial* (computed, then masked element by element). The skipped
tiles are where a sparse mask saves time.

This module holds the course's mask and score modifications, with the same alignment rule as
:mod:`attnkit.masks` (query ``i`` sits at absolute position ``i + n_k - n_q``), a runner
:func:`attend`, and :func:`block_states`, which reads a BlockMask back as a picture.
FlexAttention has no CPU backward pass: on a CPU, use it for inference only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.nn.attention import flex_attention as _fa

from . import _validate as chk
from .alibi import alibi_slopes
from .attention import check_qkv

and_masks = _fa.and_masks
or_masks = _fa.or_masks
BlockMask = _fa.BlockMask

EMPTY, PARTIAL, FULL = 0, 1, 2  # block states in :class:`BlockStates`


def _offset(n_q, n_k) -> int:
    n_q = chk.positive_int("n_q", n_q, allow_zero=True)
    n_k = chk.positive_int("n_k", n_k, allow_zero=True)
    return n_k - n_q


# --------------------------------------------------------------------------- mask_mods
def causal(n_q: int, n_k: int):
    """mask_mod: key ``kv_idx`` allowed iff ``kv_idx <= q_idx + n_k - n_q`` (as ``causal_mask``)."""
    offset = _offset(n_q, n_k)

    def causal_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return causal_mod


def sliding_window(n_q: int, n_k: int, window: int):
    """mask_mod: ``i' - window < kv_idx <= i'`` with ``i' = q_idx + n_k - n_q`` (as ``sliding_window_mask``)."""
    offset = _offset(n_q, n_k)
    window = chk.positive_int("window", window)

    def sliding_window_mod(b, h, q_idx, kv_idx):
        i = q_idx + offset  # absolute query position
        return (kv_idx <= i) & (kv_idx > i - window)

    return sliding_window_mod


def document(doc_ids: torch.Tensor, causal: bool = False):
    """mask_mod for a packed sequence: position ``p`` belongs to document ``doc_ids[p]``.

    ``doc_ids (N,)`` integer; queries and keys are the same ``N`` positions (self-attention).
    A token sees only tokens of its own document, and with ``causal=True`` only the earlier
    ones. Documents need not be contiguous or numbered from 0.
    """
    chk.integer_tensor("doc_ids", doc_ids, ndim=1)

    def document_mod(b, h, q_idx, kv_idx):
        return doc_ids[q_idx] == doc_ids[kv_idx]

    def causal_document_mod(b, h, q_idx, kv_idx):
        return (doc_ids[q_idx] == doc_ids[kv_idx]) & (kv_idx <= q_idx)

    return causal_document_mod if causal else document_mod


def padding(lengths: torch.Tensor):
    """mask_mod: in batch element ``b`` only the first ``lengths[b]`` keys exist (as ``padding_mask``)."""
    chk.integer_tensor("lengths", lengths, ndim=1)

    def padding_mod(b, h, q_idx, kv_idx):
        return kv_idx < lengths[b]

    return padding_mod


# --------------------------------------------------------------------------- score_mods
def alibi(n_heads: int, n_q: int, n_k: int, device=None):
    """score_mod adding ``-slope_h * |q_idx + n_k - n_q - kv_idx|`` (as ``alibi_bias``).

    ``device``: where the inputs of ``flex_attention`` will live (the slopes are looked up there).
    """
    offset = _offset(n_q, n_k)
    slopes = alibi_slopes(n_heads).to(device)  # (H,) float32, like alibi_bias

    def alibi_mod(score, b, h, q_idx, kv_idx):
        distance = (q_idx + offset - kv_idx).abs()
        return score - slopes[h] * distance

    return alibi_mod


# --------------------------------------------------------------------------- masks, pictures
def dense_mask(mask_mod, n_q: int, n_k: int, *, batch: int | None = None, heads: int | None = None,
               device=None) -> torch.Tensor:
    """The bool mask a mask_mod describes: ``(n_q, n_k)``, or ``(B, H, n_q, n_k)`` when
    ``batch`` or ``heads`` is given (a mask_mod that reads ``b`` or ``h`` needs them)."""
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> bool, got {type(mask_mod).__name__}")
    _offset(n_q, n_k)
    B = 1 if batch is None else chk.positive_int("batch", batch)
    H = 1 if heads is None else chk.positive_int("heads", heads)
    mask = _fa.create_mask(mask_mod, B, H, n_q, n_k, device=device or "cpu")  # (B, H, Nq, Nk)
    return mask[0, 0] if batch is None and heads is None else mask


def make_block_mask(mask_mod, n_q: int, n_k: int, *, batch: int | None = None, heads: int | None = None,
               block_size: int = 128, device=None) -> BlockMask:
    """``create_block_mask`` with the course's argument names; ``device`` defaults to the CPU."""
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> bool, got {type(mask_mod).__name__}")
    _offset(n_q, n_k)
    block_size = chk.positive_int("block_size", block_size)
    B = None if batch is None else chk.positive_int("batch", batch)
    H = None if heads is None else chk.positive_int("heads", heads)
    return _fa.create_block_mask(mask_mod, B, H, n_q, n_k, device=device or "cpu", BLOCK_SIZE=block_size)


def evaluate_mask_mod(mask_mod, batch: int, heads: int, n_q: int, n_k: int) -> torch.Tensor:
    """``mask_mod`` evaluated at every ``(b, h, q_idx, kv_idx)`` as FlexAttention does (with
    ``torch.vmap``): the bool mask ``(batch, heads, n_q, n_k)``. The mod comes first, so the
    grader can run this where the mod lives (``attnkit.checks.there``)."""
    return _fa.create_mask(mask_mod, batch, heads, n_q, n_k, device="cpu")  # (B, H, Nq, Nk)


def evaluate_score_mod(score_mod, scores: torch.Tensor) -> torch.Tensor:
    """``score_mod`` applied to every entry of ``scores (B, H, Nq, Nk)``, vectorised as
    flex_attention does; the mod comes first (see :func:`evaluate_mask_mod`)."""
    B, H, Nq, Nk = scores.shape
    fn = score_mod
    fn = torch.vmap(fn, in_dims=(0, None, None, None, 0))  # over keys
    fn = torch.vmap(fn, in_dims=(0, None, None, 0, None))  # over queries
    fn = torch.vmap(fn, in_dims=(0, None, 0, None, None))  # over heads
    fn = torch.vmap(fn, in_dims=(0, 0, None, None, None))  # over the batch
    dev = scores.device  # the indices live with the scores, as in flex_attention (a mod may mix them)
    return fn(scores, *(torch.arange(n, device=dev) for n in (B, H, Nq, Nk)))  # (B, H, Nq, Nk)


def attend_with_mask_mod(mask_mod, q, k, v, block_size: int = 128, compiled: bool | None = False):
    """:func:`attend` with a BlockMask built from ``mask_mod``; the mod comes first."""
    block_mask = make_block_mask(mask_mod, q.shape[-2], k.shape[-2], block_size=block_size, device=q.device)
    return attend(q, k, v, block_mask=block_mask, compiled=compiled)


def attend_with_score_mod(score_mod, q, k, v, compiled: bool | None = False):
    """:func:`attend` with ``score_mod``; the mod comes first."""
    return attend(q, k, v, score_mod=score_mod, compiled=compiled)


@dataclass
class BlockStates:
    """Which tiles of the score matrix a BlockMask computes.

    states: ``(ceil(Nq / block_q), ceil(Nk / block_k))`` int8 of ``EMPTY`` (skipped),
        ``PARTIAL`` (computed and masked element by element) and ``FULL`` (computed, no mask).
    block_size: ``(block_q, block_k)``.
    """

    states: torch.Tensor
    block_size: tuple[int, int]

    def fraction(self, state: int) -> float:
        """Share of the tiles in one state."""
        return float((self.states == state).double().mean()) if self.states.numel() else 0.0

    @property
    def skipped(self) -> float:
        """Share of the tiles that are never computed: the work a sparse mask saves."""
        return self.fraction(EMPTY)

    def counts(self) -> dict[str, int]:
        return {name: int((self.states == s).sum()) for name, s in (("empty", EMPTY), ("partial", PARTIAL),
                                                                     ("full", FULL))}


def block_states(block_mask: BlockMask, batch: int = 0, head: int = 0) -> BlockStates:
    """Read a BlockMask back as a grid of tile states for one (batch, head).

    A BlockMask stores, for each row of query tiles, the indices of its partial tiles
    (``kv_indices``, the first ``kv_num_blocks`` of them) and of its full tiles
    (``full_kv_indices``, the first ``full_kv_num_blocks``); every other tile is empty.
    A BlockMask built with ``separate_full_blocks=False`` lists every tile as partial.
    """
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be a torch BlockMask, got {type(block_mask).__name__}")
    n_q, n_k = block_mask.seq_lengths
    bq, bk = block_mask.BLOCK_SIZE
    B, H = block_mask.kv_num_blocks.shape[:2]
    if not (0 <= batch < B and 0 <= head < H):
        raise ValueError(f"(batch, head) = ({batch}, {head}) is outside the block mask's (B, H) = ({B}, {H})")
    rows, cols = -(-n_q // bq), -(-n_k // bk)
    states = torch.zeros(rows, cols, dtype=torch.int8)  # (Nq blocks, Nk blocks), all EMPTY
    for nums, idx, state in ((block_mask.kv_num_blocks, block_mask.kv_indices, PARTIAL),
                             (block_mask.full_kv_num_blocks, block_mask.full_kv_indices, FULL)):
        if nums is None:
            continue
        nums, idx = nums[batch, head].cpu(), idx[batch, head].cpu()  # (rows,), (rows, cols)
        for r in range(rows):
            listed = idx[r, : int(nums[r])].long()
            states[r, listed[listed < cols]] = state
    return BlockStates(states, (bq, bk))


def dense_block_states(mask: torch.Tensor, block_size: int | tuple[int, int] = 128) -> BlockStates:
    """Tile states straight from a dense ``(Nq, Nk)`` bool mask: a tile is FULL when every
    entry is allowed, EMPTY when none is, PARTIAL otherwise (padding past the end counts as
    masked, as in a BlockMask)."""
    chk.tensor("mask", mask, ndim=2)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    bq, bk = chk.positive_int("block_q", bq), chk.positive_int("block_k", bk)
    n_q, n_k = mask.shape
    rows, cols = -(-n_q // bq), -(-n_k // bk)
    padded = torch.zeros(rows * bq, cols * bk, dtype=torch.bool)  # padding past the end is masked
    padded[:n_q, :n_k] = mask.cpu()
    allowed = padded.view(rows, bq, cols, bk).sum((1, 3))  # (rows, cols): allowed entries per tile
    states = torch.full((rows, cols), PARTIAL, dtype=torch.int8)
    states[allowed == 0] = EMPTY
    states[allowed == bq * bk] = FULL
    return BlockStates(states, (bq, bk))


# --------------------------------------------------------------------------- running it
_compiled_flex = None


def compiled_flex_attention():
    """``torch.compile(flex_attention)``, built once per process (the first call compiles)."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(_fa.flex_attention)
    return _compiled_flex


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, score_mod=None, mask_mod=None,
           block_mask: BlockMask | None = None, block_size: int = 128, compiled: bool | None = None,
           return_lse: bool = False):
    """FlexAttention on ``q (B, H, Nq, d)``, ``k (B, H, Nk, d)``, ``v (B, H, Nk, dv)``.

    Give a ``mask_mod`` (a BlockMask is built for it, one for the whole batch and every head:
    the mask_mod sees ``b = h = 0``) or a ready ``block_mask``, or neither. A mask that differs
    between batch elements or heads (``padding``) needs
    ``make_block_mask(mask_mod, Nq, Nk, batch=B, heads=H)`` passed as ``block_mask``.

    compiled: ``None`` picks for you: compiled on a GPU, where the fused kernel is the point;
        eager on a CPU, where the first compiled call costs seconds (measured in notebook 12)
        and the small problems of the course run in milliseconds without it. Eager
        FlexAttention is correct but unfused: it builds the whole score matrix.

    Returns ``out (B, H, Nq, dv)``, and ``lse (B, H, Nq)`` (natural log) with ``return_lse``.
    A query whose keys are all masked gets zeros and ``lse = -inf``.
    """
    check_qkv(q, k, v, "attend")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"attend: {name} must be 4-D (B, H, N, d), got shape {chk.shape_str(t)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"attend: q, k, v must share (B, H), got q {chk.shape_str(q)}, k {chk.shape_str(k)}, "
                         f"v {chk.shape_str(v)}")
    if mask_mod is not None and block_mask is not None:
        raise ValueError("attend: give a mask_mod or a block_mask, not both")
    if score_mod is not None and not callable(score_mod):
        raise TypeError(f"score_mod must be a function (score, b, h, q_idx, kv_idx) -> score, "
                        f"got {type(score_mod).__name__}")
    n_q, n_k = q.shape[-2], k.shape[-2]
    if mask_mod is not None:
        block_mask = make_block_mask(mask_mod, n_q, n_k, block_size=block_size, device=q.device)
    elif block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(f"block_mask must be a torch BlockMask, got {type(block_mask).__name__}")
        if tuple(block_mask.seq_lengths) != (n_q, n_k):
            raise ValueError(f"attend: block_mask was built for (Nq, Nk) = {tuple(block_mask.seq_lengths)}, "
                             f"but q {chk.shape_str(q)} and k {chk.shape_str(k)} give ({n_q}, {n_k})")
    if compiled is None:
        compiled = q.device.type == "cuda"
    run = compiled_flex_attention() if compiled else _fa.flex_attention
    aux = {}
    if return_lse:
        aux = {"return_aux": _fa.AuxRequest(lse=True)} if hasattr(_fa, "AuxRequest") else {"return_lse": True}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        result = run(q, k, v, score_mod=score_mod, block_mask=block_mask, **aux)
    if return_lse:
        out, extra = result
        return out, getattr(extra, "lse", extra)
    return result
