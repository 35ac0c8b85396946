"""Checkers for notebook 09 (online softmax, FlashAttention forward and backward) and
notebook 09b (sliding windows, linear attention).

Besides the values, two watchers see *how* the learner's function computes (teaching aids,
like the shortcut ban): :class:`RowReductions` notices an online softmax that reduces whole
rows at once (``block_size`` ignored), and :class:`ScoreTiles` records the shapes of the score
tiles a FlashAttention forward builds (``block_q`` / ``block_k`` ignored or swapped) and
whether it computed a tile that lies entirely in the causal future (a tile it should skip).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, resolve_name

from .. import _spy, chunked, flash, linear, masks
from ..attention import scaled_dot_product_attention as reference_attention
from ..online_softmax import online_softmax as reference_online_softmax
from ._harness import TOLERANCE, Ban, Checker, Watcher, _close, fmt_shape, gen, paused, randn
from .basics import ATTENTION_ATEN, ATTENTION_FUNCTIONS, SOFTMAX_ATEN, SOFTMAX_FUNCTIONS, reference_softmax

# The online softmax exercise says torch.logsumexp is off limits (it is the normaliser being taught).
# FlashAttention may use it: a tile's log-sum-exp merged with torch.logaddexp is an exact tiled
# forward, and the full-matrix ban still refuses a log-sum-exp of the whole score matrix.
NORMALISERS = {**SOFTMAX_FUNCTIONS, "torch.logsumexp": None, "torch.Tensor.logsumexp": None}


# ---------------------------------------------------------------- watchers

class _TorchWatcher(Watcher):
    """A watcher that sees every torch call of the watched function (``see``)."""

    _mode = None

    def see(self, name: str, args, kwargs, result) -> None:  # pragma: no cover - overridden
        pass

    def start(self) -> None:
        watcher = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                result = func(*args, **kwargs)
                if not _spy._PAUSE[0]:
                    with paused():  # what the watcher itself computes is not the learner's
                        try:
                            watcher.see(resolve_name(func) or getattr(func, "__name__", ""), args, kwargs, result)
                        except Exception:  # noqa: BLE001 - a watcher never breaks the call it watches
                            pass
                return result

        self._mode = _Mode()
        self._mode.__enter__()

    def stop(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None


_REDUCTIONS = {"amax", "amin", "max", "min", "sum", "nansum", "logsumexp", "mean", "prod"}


def _reduced_lengths(name: str, args, kwargs) -> list[int]:
    """The lengths of the axes a reduction call reduces over ([] for anything else)."""
    if name.rsplit(".", 1)[-1] not in _REDUCTIONS or not args or not isinstance(args[0], torch.Tensor):
        return []
    t = args[0]
    if "other" in kwargs:
        return []
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise, not a reduction
        return []
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        return list(t.shape)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return [int(t.shape[int(i)]) for i in dims]


class RowReductions(_TorchWatcher):
    """Counts reductions (max, sum, ...) over an axis of length ``n``: the whole row of an
    online softmax, which should be read ``block_size`` entries at a time."""

    def __init__(self, n: int = 0, calls=None, count: int = 0):
        self.n, self.calls, self.count = int(n), list(calls or []), int(count)

    def params(self) -> dict:
        return {"n": self.n}

    def see(self, name, args, kwargs, result) -> None:
        if self.n in _reduced_lengths(name, args, kwargs):
            self.count += 1
            if name not in self.calls and len(self.calls) < 5:
                self.calls.append(name)

    def report(self) -> dict:
        return {"count": self.count, "calls": self.calls}

    def absorb(self, report: dict) -> None:
        count = report.get("count")
        self.count += count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
        calls = report.get("calls")
        for name in (calls if isinstance(calls, list) else [])[:5]:
            if str(name)[:80] not in self.calls:
                self.calls.append(str(name)[:80])


# Calls whose result is a product of two operands: a tile of scores is one (Q_b K_c^T, by matmul,
# einsum or a broadcast product summed over d).
_PRODUCTS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "einsum", "baddbmm", "addmm", "addbmm", "tensordot",
             "linear", "inner", "sum"}
# Results that are all -inf by construction, not because a tile of scores was masked.
_CREATION = {"full", "full_like", "new_full", "empty", "empty_like", "new_empty", "zeros", "zeros_like", "new_zeros",
             "ones", "ones_like", "new_ones", "tensor", "as_tensor", "clone", "detach", "contiguous", "to", "double",
             "float", "type", "__get__", "expand", "expand_as"}
_MASKED = -1e4  # scores of a few units at most: anything this low is a mask value


class ScoreTiles(_TorchWatcher):
    """The score tiles a tiled attention builds. A floating result whose last two sizes are both
    outside ``other_sizes`` (1, the head dims, the leading dims and their products) is
    tile-shaped. Records the ``(rows, columns)`` of tile-shaped products (``tiles``: scores are a
    product of queries and keys) and of tile-shaped results that came out entirely masked
    (``masked``: all ``-inf``). A masked result shaped like a tile of scores is a tile that
    every query of its block has in its future, one the loop should have skipped."""

    def __init__(self, other_sizes=(), tiles=None, masked=None):
        self.other = {int(s) for s in other_sizes}
        self.tiles = {tuple(int(x) for x in s) for s in (tiles or ())}
        self.masked = {tuple(int(x) for x in s) for s in (masked or ())}

    def params(self) -> dict:
        return {"other_sizes": sorted(self.other)}

    @property
    def masked_tiles(self) -> set:
        return self.masked & self.tiles

    def see(self, name, args, kwargs, result) -> None:
        if not (isinstance(result, torch.Tensor) and result.ndim >= 2 and result.is_floating_point()):
            return
        shape = (int(result.shape[-2]), int(result.shape[-1]))
        if shape[0] in self.other or shape[1] in self.other:
            return
        short = name.rsplit(".", 1)[-1]
        if short in _PRODUCTS and len(self.tiles) < 64:
            self.tiles.add(shape)
        if (short not in _CREATION and shape not in self.masked and len(self.masked) < 64 and result.numel()
                and bool((result.detach() <= _MASKED).all())):
            self.masked.add(shape)

    def report(self) -> dict:
        return {"tiles": sorted([list(s) for s in self.tiles]), "masked": sorted([list(s) for s in self.masked])}

    def absorb(self, report: dict) -> None:
        for key, into in (("tiles", self.tiles), ("masked", self.masked)):
            shapes = report.get(key)
            for s in (shapes if isinstance(shapes, list) else [])[:64]:
                if isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) for x in s):
                    into.add((int(s[0]), int(s[1])))


def _other_sizes(lead, *dims) -> list[int]:
    """Sizes that are not tile sizes: 1, the head dims, every product of leading dims."""
    sizes = {1, *dims}
    for r in range(1, len(lead) + 1):
        for combo in itertools.combinations(lead, r):
            sizes.add(math.prod(combo))
    return sorted(sizes)


# ---------------------------------------------------------------- shared helpers

def _leading(shape, what: str = "q, k and v",
             how: str = "use .shape[-2:] for the sizes and index blocks with [..., a:b, :]") -> str:
    shape = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    return (f"{what} may have any number of leading dimensions, here {shape}: "
            f"do not unpack a fixed number of dimensions; {how}")


def _check(c: Checker, label: str, got, want: torch.Tensor, *, what: str, dtype: torch.dtype,
           wrong=lambda: [], lead: str = "", fallback=None) -> None:
    """``c.expect`` with the known mistakes computed only when the answer is wrong, and hints for
    a wrong dtype and for a shape that says the function assumed a fixed number of dimensions.

    fallback: ``fallback(got) -> hint or None``, asked when no known mistake matches.
    """
    if not isinstance(got, torch.Tensor):
        c.expect(label, got, want, what=what, dtype=dtype)
        return
    g = got.detach().cpu()
    if g.shape == want.shape and g.dtype == dtype and _close(g, want, None):
        return
    candidates = list(wrong())
    for candidate, hint in candidates:
        if candidate.shape == g.shape and _close(g, candidate, None):
            c.fail(label, hint)
    if g.shape != want.shape:
        note = f" ({lead})" if lead else ""
        c.fail(label, f"wrong shape for the {what}: got {fmt_shape(g)}, expected {fmt_shape(want)}{note}")
    if g.dtype != dtype:
        c.fail(label, f"the {what} is {g.dtype} but the input is {dtype}: keep the input's dtype (tensors made "
                      f"with x.new_full / x.new_zeros share it; cast back with .to(dtype) if you compute in float64)")
    hint = fallback(g) if fallback is not None else None
    if hint:
        c.fail(label, hint)
    c.expect(label, got, want, what=what, dtype=dtype)


def _tuple(c: Checker, label: str, got, n: int, names: str) -> tuple:
    if not (isinstance(got, tuple) and len(got) == n):
        c.fail(label, f"return {'three' if n == 3 else 'two'} tensors: {names}")
    return got


# ---------------------------------------------------------------- online softmax

def _online(x, block, *, rescale=True, inverted=False, first_block=False, last=True, in_loop=False, own_max=False,
            unscaled=False, reset=False):
    """The online softmax in float64 with switches for the classic mistakes: (probs, m, l).

    unscaled: the block's exponentials against the new max, the old sum added as it was;
    reset: l replaced by the block's sum instead of added to."""
    x = x.double()
    n = x.shape[-1]
    stop = n if last else n // block * block
    starts = list(range(0, stop, block))
    m = x.new_full(x.shape[:-1], float("-inf"))
    l = x.new_zeros(x.shape[:-1])
    probs = torch.zeros_like(x)
    for idx, s in enumerate(starts):
        b = x[..., s:s + block]
        m_new = torch.maximum(m, b.amax(-1))
        safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        e = torch.exp(b - safe.unsqueeze(-1))
        if own_max:  # l rescaled to the new max, the block's exponentials against its own max
            own = b.amax(-1)
            own = torch.where(torch.isneginf(own), torch.zeros_like(own), own)
            l = l * torch.exp(m - safe) + torch.exp(b - own.unsqueeze(-1)).sum(-1)
        elif not rescale:  # each block summed against its own max
            own = b.amax(-1)
            l = l + torch.exp(b - torch.where(torch.isneginf(own), torch.zeros_like(own), own).unsqueeze(-1)).sum(-1)
        elif unscaled:
            l = l + e.sum(-1)
        elif reset:
            l = e.sum(-1)
        elif inverted and first_block and idx == 0:
            l = e.sum(-1)
        elif inverted:
            old = torch.where(torch.isneginf(m), torch.zeros_like(m), m) if first_block else m
            l = l * torch.exp(safe - old) + e.sum(-1)
        else:
            l = l * torch.exp(m - safe) + e.sum(-1)
        m = m_new
        if in_loop:
            probs[..., s:s + block] = e / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)
    if not in_loop:
        safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        probs = torch.exp(x - safe.unsqueeze(-1)) / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1)
    return probs, m, l


_STALE = ("the running sum was not rescaled: when the max grows from m to m', multiply the sum so far by exp(m - m') "
          "before adding the new block")
_INVERTED = ("the rescale factor is inverted: when the max grows from m to m', the sum so far shrinks, so multiply it "
             "by exp(m - m') (at most 1), not exp(m' - m)")
_LAST = ("the last, shorter block was never read: loop with range(0, N, block_size) so that a last block shorter "
         "than block_size counts too")
_IN_LOOP = ("the probabilities were computed inside the loop with the m and l of that moment, so earlier blocks keep "
            "stale values: compute them after the loop, from the final m and l")
_NO_MAX = ("l must be sum(exp(x - m)), measured against the running max m: subtract the new max m' before exp "
           "(exp(x) alone overflows for large x)")
_FINITE_START = ("a row that is all -inf must give m = -inf and l = 0: start m at float('-inf'), not at a large "
                 "negative number, and shift by a safe max of 0 while m is -inf")
_ALL_NEG_INF = ("NaN for a row that is all -inf: it must give m = -inf, l = 0 and zero probabilities. While m is "
                "still -inf, subtract a safe max of 0 (exp(-inf - (-inf)) is NaN), and divide by l only where l > 0")


def check_online_softmax(fn) -> str:
    """Check ``fn(x, block_size) -> (probs, m, l)`` with running max ``m`` and sum ``l = sum exp(x - m)``."""
    c = Checker("online_softmax", fn, Ban(NORMALISERS, SOFTMAX_ATEN, (reference_online_softmax, reference_softmax),
                                          hint="Keep a running max and a running sum, block by block."))
    g = gen(90)
    big = randn(g, 3, 20) * 50
    big[:, -3:] += 400  # the maximum arrives in the last block: the running sum must be rescaled
    holes = randn(g, 2, 9)
    holes[1] = float("-inf")
    three = randn(g, 2, 3, 17) * 10
    three[1, 2, ::3] = float("-inf")
    five = randn(g, 2, 1, 3, 1, 11) * 10
    for label, x, block in [("x (4, 10), block 3", randn(g, 4, 10), 3), ("max in the last block", big, 4),
                            ("block 1", randn(g, 2, 5), 1), ("block larger than the row", randn(g, 3, 6), 50),
                            ("an all -inf row", holes, 4), ("1-D x (23,), block 5", randn(g, 23) * 10, 5),
                            ("3-D x (2, 3, 17) with -inf entries, block 4", three, 4),
                            ("5-D x (2, 1, 3, 1, 11), block 4", five, 4)]:
        with c.case(label):
            lead = "" if x.ndim == 2 else _leading(x.shape, "x", "index blocks with x[..., a:b], reduce with dim=-1 "
                                                                "and make m and l of shape x.shape[:-1]")
            n = x.shape[-1]
            watch = RowReductions(n if block < n and n not in x.shape[:-1] else 0)
            with watch:
                got = c.call(label, x, block, if_raises=lead)
            probs, m, l = _tuple(c, label, got, 3, "(probs, m, l)")
            if watch.n and watch.count:
                c.fail(label, f"you reduce the whole row at once ({', '.join(watch.calls) or 'a reduction'} over all "
                              f"{n} entries), so block_size is not used: read the row in blocks of block_size and "
                              f"update m and l once per block")
            want_p, want_m, want_l = reference_online_softmax(x.double(), block)
            dead = torch.isneginf(x).all(-1)
            for got_t in (m, l, probs):
                if (isinstance(got_t, torch.Tensor) and dead.any() and got_t.shape[:dead.ndim] == dead.shape
                        and torch.isnan(got_t[dead]).any() and not torch.isnan(got_t[~dead]).any()):
                    c.fail(label, _ALL_NEG_INF)
            _check(c, label, m, want_m, what="running max m", dtype=x.dtype, lead=lead, wrong=lambda: [
                (_online(x, block, last=False)[1], _LAST),
                (want_m + torch.log(want_l), "m is the running max, not the log-sum-exp: return m itself; "
                                              "m + log(l) is the log-sum-exp"),
                (x.double().amax().expand(want_m.shape),
                 "m is one number for all rows: take each row's max over the block, block.amax(dim=-1), not the "
                 "max of the whole block (block.max())")],
                fallback=lambda got_m: _FINITE_START if (dead.any() and got_m.shape == dead.shape
                                                         and torch.isfinite(got_m[dead]).any()) else None)
            _check(c, label, l, want_l, what="running sum l", dtype=x.dtype, lead=lead, wrong=lambda: [
                (_online(x, block, rescale=False)[2], _STALE),
                (_online(x, block, unscaled=True)[2], _STALE),
                (_online(x, block, reset=True)[2],
                 "l holds only the last block's sum: add each block's sum to the rescaled running sum, "
                 "l = l * exp(m - m') + exp(x_block - m').sum(-1), rather than replacing it"),
                (torch.exp(x.double()).sum(-1), _NO_MAX),
                (torch.log(want_l), "l is the running sum itself, sum(exp(x - m)), not its log"),
                (_online(x, block, own_max=True)[2],
                 "the new block's exponentials must be taken against the new running max m' (exp(x - m')), the max "
                 "the old sum is rescaled to, not against the block's own max"),
                (_online(x, block, inverted=True)[2], _INVERTED),
                (_online(x, block, inverted=True, first_block=True)[2], _INVERTED),
                (_online(x, block, last=False)[2], _LAST)])
            _check(c, label, probs, want_p, what="probabilities", dtype=x.dtype, lead=lead, wrong=lambda: [
                (_online(x, block, in_loop=True)[0], _IN_LOOP)])
    return c.passed("rescaling when the max moves, block sizes 1 to wider than the row, all -inf rows, "
                    "1-D to 5-D input, blocks read one at a time")


# ---------------------------------------------------------------- FlashAttention forward

def _mask(nq, nk, top_left=False, strict=False):
    """The causal mask (bottom right; or the classic mistakes: top left, strict j < i')."""
    return torch.ones(nq, nk, dtype=torch.bool).tril((0 if top_left else nk - nq) - strict)  # (Nq, Nk)


def _naive(q, k, v, causal, base=math.e, *, scale=True, top_left=False, strict=False):
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if causal:
        s = s.masked_fill(~_mask(q.shape[-2], k.shape[-2], top_left, strict), float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = reference_softmax(s, -1)
    return w @ v, lse / math.log(base)


def _rowmax(q, k, causal):
    """Each query's largest scaled (masked) score in float64: the final running max m."""
    q, k = q.double(), k.double()
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    return s.amax(-1)


def _tiled(q, k, v, causal, block_q, block_k, *, rescale_acc=True, rescale_l=True, divide=True, last_k=True,
           old_max=False, skip_ge=False):
    """A tiled forward in float64 with switches for the classic mistakes: (out, log(l)).

    last_k=False: the last, shorter key block is never read; old_max: P = exp(S - m) with the
    max before this tile (the new one while m is still -inf); skip_ge: the causal skip drops a
    key block whose first key sits exactly on the last query's position (>= instead of >)."""
    q, k, v = q.double(), k.double(), v.double()
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    k_stop = nk if last_k else nk // block_k * block_k
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    log_l = q.new_full(q.shape[:-1], float("-inf"))
    for qs in range(0, nq, block_q):
        qe = min(qs + block_q, nq)
        m = q.new_full((*q.shape[:-2], qe - qs), float("-inf"))
        l = torch.zeros_like(m)
        acc = q.new_zeros(*m.shape, v.shape[-1])
        for ks in range(0, k_stop, block_k):
            if causal and skip_ge and ks >= qe - 1 + nk - nq:
                break
            ke = min(ks + block_k, nk)
            s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) / math.sqrt(d)
            if causal:
                s = s.masked_fill(~_mask(nq, nk)[qs:qe, ks:ke], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - (torch.where(torch.isneginf(m), safe, m) if old_max else safe).unsqueeze(-1))
            alpha = torch.exp(m - safe)
            l = (alpha * l if rescale_l else l) + p.sum(-1)
            acc = (alpha.unsqueeze(-1) * acc if rescale_acc else acc) + p @ v[..., ks:ke, :]
            m = m_new
        live = l > 0
        out[..., qs:qe, :] = acc / torch.where(live, l, torch.ones_like(l)).unsqueeze(-1) if divide else acc
        log_l[..., qs:qe] = torch.where(live, torch.log(torch.where(live, l, torch.ones_like(l))), log_l[..., qs:qe])
    return out, log_l


def _flash_ban(nq, nk, hint):
    return Ban({**ATTENTION_FUNCTIONS, **SOFTMAX_FUNCTIONS}, ATTENTION_ATEN + SOFTMAX_ATEN,
               (flash.flash_attention_forward, flash.flash_attention_backward, flash.FlashAttention.forward,
                chunked.chunked_attention, chunked.merge_partials, reference_attention, reference_online_softmax,
                reference_softmax),
               hint=hint, forbid_shape=(nq, nk))


_IGNORED_CAUSAL = "is_causal was ignored: mask keys after each query (bottom-right aligned)"
_NO_SCALE = "the scores are not scaled by 1/sqrt(d): S = Q K^T / sqrt(d)"
_TOP_LEFT = ("the causal mask is aligned to the top left: query i sits at position i + Nk - Nq (bottom right), "
             "so key j is allowed iff j <= i + Nk - Nq")
_STRICT = ("the causal mask is strict: a query may attend to the key at its own position too, so key j is allowed "
           "iff j <= i + Nk - Nq (not <)")
_SKIP_GE = ("a key block whose first key is exactly on the diagonal was skipped: skip a block only when its first "
            "key is after the last query's position (ks > qe - 1 + Nk - Nq), > not >=")
_FORWARD_HINT = "Loop over query and key blocks with a running max and sum; never build the full score matrix."
_BACKWARD_HINT = ("Loop over key and query blocks and rebuild each tile of P from q, k and lse (P = exp(S - lse)); "
                  "never build the full score matrix.")
_NO_KEY_VALUES = ("a query that sees no key (causal, Nq > Nk) must get zeros and lse = -inf: mask scores with -inf, "
                  "not a large negative number, and give a query whose l is 0 zeros and lse = -inf")
_NO_KEY = ("NaN for a query that sees no key: it must get zeros and lse = -inf; guard exp(m - m') while m is still "
           "-inf, and the division by l = 0")


def check_flash_attention_forward(fn) -> str:
    """Check ``fn(q, k, v, is_causal=False, block_q=64, block_k=64) -> (out, lse)``, tiled."""
    g = gen(91)
    d, dv = 5, 7  # head dims apart from every tile size, so the watcher can tell tiles from q, k, v and out
    cases = [("40 queries x 48 keys, blocks 16", 40, 48, False, 16, 16, (2, 3)),
             ("causal, 40 x 40, blocks 16 x 8", 40, 40, True, 16, 8, (2, 3)),
             ("ragged: 37 x 37, blocks 16, 3-D input (H, N, d)", 37, 37, True, 16, 16, (3,)),
             ("causal, 12 new queries after 36 keys, 5-D input", 12, 48, True, 8, 16, (2, 1, 2)),
             ("causal, 20 queries but 12 keys: the first 8 see no key, 2-D input (N, d), blocks 6 x 8",
              20, 12, True, 6, 8, ()),
             ("causal, 44 x 52, blocks 12 x 20", 44, 52, True, 12, 20, (2, 3)),
             # off = 9: each query block's last query sits exactly on the first key of a key block
             ("causal, 24 x 33, blocks 8: a key block starts on each query block's last position", 24, 33, True, 8, 8,
              (2, 3))]
    c = Checker("flash_attention_forward", fn)
    for label, nq, nk, causal, bq, bk, lead_dims in cases:
        with c.case(label):
            c.ban = _flash_ban(nq, nk, _FORWARD_HINT)  # the forbidden full-matrix shape changes with the case
            q, k, v = randn(g, *lead_dims, nq, d), randn(g, *lead_dims, nk, d), randn(g, *lead_dims, nk, dv)
            lead = "" if len(lead_dims) == 2 else _leading(q.shape)
            tiles = ScoreTiles(_other_sizes(lead_dims, d, dv))
            with tiles:
                got = c.call(label, q, k, v, causal, bq, bk, if_raises=lead)
            out, lse = _tuple(c, label, got, 2, "(out, lse)")
            _check_tiles(c, label, tiles, nq, nk, bq, bk, causal)
            want, want_lse = _naive(q, k, v, causal)
            dead = torch.isneginf(want_lse)
            if (dead.any() and isinstance(out, torch.Tensor) and out.shape == want.shape
                    and torch.isnan(out[dead]).any()):
                c.fail(label, _NO_KEY)
            rows_done = nq // bq * bq  # the queries before the last, shorter query block

            def no_key(got_t, want_t):
                """The hint when a query that sees no key did not get exactly zeros and -inf."""
                if not dead.any() or got_t.shape != want_t.shape:
                    return None
                return None if torch.equal(got_t[dead], want_t[dead].to(got_t.dtype)) else _NO_KEY_VALUES

            _check(c, label, out, want, what="output", dtype=q.dtype, lead=lead,
                   fallback=lambda got_o: no_key(got_o, want), wrong=lambda: [
                (_naive(q, k, v, False)[0], _IGNORED_CAUSAL),
                (_naive(q, k, v, causal, scale=False)[0], _NO_SCALE),
                (_naive(q, k, v, causal, top_left=True)[0], _TOP_LEFT),
                (_naive(q, k, v, causal, strict=True)[0], _STRICT),
                (_tiled(q, k, v, causal, bq, bk, old_max=True)[0],
                 "each tile's P must use the new running max: P = exp(S - m') with m' = max(m, rowmax(S)), the max "
                 "that l and acc are rescaled to, not the max before this tile"),
                (_tiled(q, k, v, causal, bq, bk, rescale_acc=False)[0],
                 "the accumulator was not rescaled: when the running max grows from m to m', multiply acc by "
                 "exp(m - m') as you do l, before adding P V of the new tile"),
                (_tiled(q, k, v, causal, bq, bk, rescale_acc=False, rescale_l=False)[0],
                 "neither l nor the accumulator was rescaled: when the running max grows from m to m', multiply both "
                 "l and acc by exp(m - m') before adding the new tile"),
                (_tiled(q, k, v, causal, bq, bk, rescale_l=False)[0],
                 "the running sum l was not rescaled: when the running max grows from m to m', multiply l by "
                 "exp(m - m') before adding the new tile's row sums"),
                (_tiled(q, k, v, causal, bq, bk, divide=False)[0],
                 "the output is not normalised: divide the accumulator by l once, after the last key block"),
                (torch.cat([want[..., :rows_done, :], torch.zeros_like(want[..., rows_done:, :])], -2),
                 "the last, shorter query block was never computed: loop with range(0, Nq, block_q) so that a last "
                 "block shorter than block_q counts too"),
                (_tiled(q, k, v, causal, bq, bk, last_k=False)[0],
                 "the last, shorter key block was never read: loop with range(0, Nk, block_k) so that a last block "
                 "shorter than block_k counts too"),
                (_tiled(q, k, v, causal, bq, bk, skip_ge=True)[0], _SKIP_GE),
            ])
            _check(c, label, lse, want_lse, what="log-sum-exp", dtype=q.dtype, lead=lead,
                   fallback=lambda got_l: no_key(got_l, want_lse), wrong=lambda: [
                (want_lse.unsqueeze(-1), "lse has shape (..., Nq): one number per query, without a trailing 1"),
                (_naive(q, k, v, causal, base=2)[1], "lse is in base 2; the contract asks for the natural log"),
                (_tiled(q, k, v, causal, bq, bk)[1], "lse = m + log(l): you left out the running max m"),
                (_rowmax(q, k, causal), "lse = m + log(l): you returned the running max m alone, add log(l)"),
                (_naive(q, k, v, causal, scale=False)[1], _NO_SCALE),
                (_naive(q, k, v, causal, top_left=True)[1], _TOP_LEFT),
                (_naive(q, k, v, causal, strict=True)[1], _STRICT),
            ])
    return c.passed("tiles of block_q x block_k, ragged tiles, causal with Nq != Nk, future tiles skipped, "
                    "2-D to 5-D input, no full score matrix")


def _check_tiles(c, label, tiles: ScoreTiles, nq, nk, bq, bk, causal) -> None:
    """What the tile shapes say about the loops: block sizes used, future tiles skipped."""
    if not tiles.tiles:
        return  # no tile-shaped product seen (scores built some other way): the values decide
    rows = max(r for r, _ in tiles.tiles)
    cols = max(col for _, col in tiles.tiles)
    if bq != bk and (bk, bq) in tiles.tiles and (rows > bq or cols > bk):
        c.fail(label, f"block_q and block_k are swapped: your score tiles are {bk} x {bq}, but a tile holds block_q = "
                      f"{bq} queries and block_k = {bk} keys")
    if rows > bq:
        c.fail(label, f"your score tiles have {rows} rows but block_q = {bq}: walk the queries in blocks of block_q "
                      f"(the last may be shorter), and inside, the keys in blocks of block_k")
    if cols > bk:
        c.fail(label, f"your score tiles have {cols} columns but block_k = {bk}: walk the keys in blocks of block_k "
                      f"(the last may be shorter)")
    if causal and tiles.masked_tiles:
        c.fail(label, "you computed a tile that lies entirely in the future of its queries (every score masked): "
                      "skip key blocks that no query of the block may see (with a query block ending at qe, keys "
                      "after qe - 1 + Nk - Nq)")


# ---------------------------------------------------------------- FlashAttention backward

def _dense_backward(q, k, v, out, lse, d_out, allowed, *, score_scale=True, grad_scale=True, use_d=True):
    """The backward of attention from lse, all at once in float64 (the checker may hold (Nq, Nk))."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * (scale if score_scale else 1.0)
    live = ~torch.isneginf(lse)
    z = s - torch.where(live, lse, torch.zeros_like(lse)).unsqueeze(-1)
    if allowed is not None:
        z = z.masked_fill(~allowed, float("-inf"))
    p = torch.exp(z.masked_fill(~live.unsqueeze(-1), float("-inf")))
    D = (d_out * out).sum(-1) if use_d else torch.zeros_like(lse)
    ds = p * (d_out @ v.transpose(-2, -1) - D.unsqueeze(-1))
    g = scale if grad_scale else 1.0
    return ds @ k * g, ds.transpose(-2, -1) @ q * g, p.transpose(-2, -1) @ d_out


def _tile_local_d(q, k, v, lse, d_out, allowed, block):
    """The backward with D summed inside each key tile of ``block`` keys, from P and dP: (dq, dk, dv)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    live = ~torch.isneginf(lse)
    z = q @ k.transpose(-2, -1) * scale - torch.where(live, lse, torch.zeros_like(lse)).unsqueeze(-1)
    if allowed is not None:
        z = z.masked_fill(~allowed, float("-inf"))
    p = torch.exp(z.masked_fill(~live.unsqueeze(-1), float("-inf")))
    dp = d_out @ v.transpose(-2, -1)
    tiles = torch.split(p * dp, block, dim=-1)  # (..., Nq, <= block) each
    local = torch.cat([t.sum(-1, keepdim=True).expand_as(t) for t in tiles], -1)  # (..., Nq, Nk)
    ds = p * (dp - local)
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, p.transpose(-2, -1) @ d_out


def _skip_ge_masks(nq, nk, sizes=(16, 32, 48, 64, 128)):
    """The causal masks a tiled backward with blocks from ``sizes`` uses when its skip test is >= instead of >:
    the last query of a query block loses the key on its own position when a key block starts there."""
    off, full, seen = nk - nq, _mask(nq, nk), []
    for bq in sizes:
        for bk in sizes:
            allowed = full.clone()
            for qs in range(0, nq, bq):
                last = min(qs + bq, nq) - 1 + off  # the last query's position
                if 0 <= last < nk and last % bk == 0:
                    allowed[min(qs + bq, nq) - 1, last] = False
            if not torch.equal(allowed, full) and not any(torch.equal(allowed, m) for m in seen):
                seen.append(allowed)
    return seen


_LOCAL_D = ("D must be the rowsum over the whole row, D = (d_out * out).sum(-1), computed once before the loops: "
            "summed inside a tile from P and dP, it covers only that tile's keys")
_FLOAT32_INSIDE = ("{} is right to float32 precision only (about 1e-7 relative): the inputs are float64 here, so "
                   "compute in their dtype (no .float(), no tensors made as float32) and the result matches to 1e-10")
_NAN_NO_KEY = ("NaN in the gradients of a query that saw no key (lse = -inf): s - lse is -inf - (-inf) = NaN there. "
               "Treat lse = -inf as 0 and mask those rows: such a query contributes nothing")
_NAN_MASK = ("NaN in the gradients: set masked scores to -inf before exp (exp of a masked score far above lse "
             "overflows to inf, and inf * 0 = NaN)")


def check_flash_attention_backward(fn) -> str:
    """Check ``fn(q, k, v, out, lse, d_out, is_causal=False) -> (dq, dk, dv)`` against autograd."""
    g = gen(92)
    c = Checker("flash_attention_backward", fn)
    # Larger than the usual tiles (64 or 128), so a tiled backward never holds all of (Nq, Nk) at once.
    for label, nq, nk, causal, sharp, lead_dims in [
            ("130 x 150", 130, 150, False, 1.0, (1, 2)), ("causal 144 x 144", 144, 144, True, 1.0, (1, 2)),
            ("causal 20 x 150", 20, 150, True, 1.0, (1, 2)),
            ("causal 130 x 130, large scores", 130, 130, True, 400.0, (1, 2)),
            ("causal, 150 queries but 130 keys: the first 20 see no key, 3-D input (H, N, d)",
             150, 130, True, 1.0, (2,)),
            ("2-D input (N, d), 135 x 140", 135, 140, False, 1.0, ()),
            # one key after the queries: with any tile size, a key block starts on a query block's last position
            ("causal 128 x 129", 128, 129, True, 1.0, (1, 2))]:
        with c.case(label):
            c.ban = _flash_ban(nq, nk, _BACKWARD_HINT)
            q, k, v = (randn(g, *lead_dims, n, 8, dtype=torch.float64).requires_grad_() for n in (nq, nk, nk))
            q = (q.detach() * sharp).requires_grad_()  # sharp: masked scores far above lse overflow exp
            d_out = randn(g, *lead_dims, nq, 8, dtype=torch.float64)
            out, lse = _naive(q, k, v, causal)
            out.backward(d_out)
            want = [t.grad.clone() for t in (q, k, v)]
            q, k, v, out, lse = (t.detach() for t in (q, k, v, out, lse))
            lead = "" if len(lead_dims) == 2 else _leading(q.shape)
            got = c.call(label, q, k, v, out, lse, d_out, causal, if_raises=lead)
            got = _tuple(c, label, got, 3, "(dq, dk, dv)")
            if any(isinstance(t, torch.Tensor) and torch.isnan(t).any() for t in got):
                dead = torch.isneginf(lse)
                dq = got[0]
                if (dead.any() and isinstance(dq, torch.Tensor) and dq.shape == q.shape
                        and torch.isnan(dq[dead]).any()):
                    c.fail(label, _NAN_NO_KEY)
                c.fail(label, _NAN_MASK)
            mask = _mask(nq, nk) if causal else None
            for name, g_, w_, i in zip(("dq", "dk", "dv"), got, want, range(3)):
                def wrong(i=i):
                    cands = [(_dense_backward(q, k, v, out, lse, d_out, mask, use_d=False)[i],
                              "the rowsum(dO * O) term is missing: dS = P * (dP - D) with D = (d_out * out).sum(-1)")]
                    if causal:
                        cands += [(_dense_backward(q, k, v, out, lse, d_out, None)[i],
                                   "is_causal was ignored in the backward pass: mask P the same way as forward"),
                                  (_dense_backward(q, k, v, out, lse, d_out, _mask(nq, nk, top_left=True))[i],
                                   "the causal mask is aligned to the top left: query i sits at position "
                                   "i + Nk - Nq (bottom right), as in the forward pass"),
                                  (_dense_backward(q, k, v, out, lse, d_out, _mask(nq, nk, strict=True))[i], _STRICT)]
                        cands += [(_dense_backward(q, k, v, out, lse, d_out, skipped)[i], _SKIP_GE)
                                  for skipped in _skip_ge_masks(nq, nk)]
                    cands += [(_tile_local_d(q, k, v, lse, d_out, mask, block)[i], _LOCAL_D)
                              for block in (8, 16, 32, 48, 64, 96, 128)]
                    if i > 0:
                        cands += [(want[3 - i], "dk and dv are swapped: return (dq, dk, dv) in that order")]
                    cands += [(_dense_backward(q, k, v, out, lse, d_out, mask, grad_scale=False)[i],
                               "dq and dk miss the 1/sqrt(d) factor: S = Q K^T / sqrt(d), so dQ = dS K / sqrt(d) "
                               "and dK = dS^T Q / sqrt(d)"),
                              (_dense_backward(q, k, v, out, lse, d_out, mask, score_scale=False)[i],
                               "the scores recomputed in the backward miss 1/sqrt(d): rebuild P = exp(Q K^T / sqrt(d) "
                               "- lse), the scores the forward pass used")]
                    return cands
                _check(c, label, g_, w_, what=name, dtype=torch.float64, lead=lead, wrong=wrong,
                       fallback=lambda got_g, w_=w_, name=name: _FLOAT32_INSIDE.format(name) if (
                           got_g.shape == w_.shape and _close(got_g, w_, TOLERANCE[torch.float32])) else None)
    return c.passed("non-causal, causal, Nq != Nk, queries that saw no key, 2-D to 4-D input, "
                    "against autograd in float64")


# ---------------------------------------------------------------- sliding window

def check_sliding_window_mask(fn) -> str:
    """Check ``fn(n_q, n_k, window) -> bool (n_q, n_k)``: ``i' - window < j <= i'``."""
    c = Checker("sliding_window_mask", fn, Ban(python=(masks.sliding_window_mask,),
                                               hint="Combine two comparisons of key and query positions."))

    def mask(nq, nk, w, low=0, offset=None, causal=True, both=False):
        offset = nk - nq if offset is None else offset
        i = torch.arange(nq)[:, None] + offset
        j = torch.arange(nk)[None, :]
        if both:
            return (i - j).abs() < w + low
        return ((j <= i) if causal else torch.ones_like(j > i)) & (j > i - w - low)

    future = "keys in the future of the query are allowed: a sliding window looks back only, so also require j <= i'"
    for nq, nk, w in [(8, 8, 3), (4, 10, 2), (10, 4, 3), (6, 6, 1), (5, 5, 50)]:
        label = f"n_q={nq}, n_k={nk}, window={w}"
        with c.case(label):
            got = c.call(label, nq, nk, w)
            want = mask(nq, nk, w)
            if isinstance(got, torch.Tensor) and nq != nk and tuple(got.shape) in {(nq, nq), (nk, nk)}:
                c.fail(label, f"the mask must be (n_q, n_k) = ({nq}, {nk}), got {fmt_shape(got)}: with n_q != n_k the "
                              f"queries are the last n_q of the n_k positions")
            c.expect(label, got, want, what="mask", wrong=[
                (mask(nq, nk, w, low=1), "off by one: a window of w keeps the query itself and the w - 1 keys before "
                                         "it (i' - window < j), not w keys before it"),
                (mask(nq, nk, w, low=-1), "off by one: a window of w counts the query itself, so it keeps the w - 1 "
                                          "keys before it (i' - window < j), not only w - 2"),
                (mask(nq, nk, w, offset=0), "the window is aligned to the top left: query i sits at i + n_k - n_q"),
                (mask(nq, nk, 10**6), "the window is ignored: this is a plain causal mask"),
                (mask(nq, nk, w, both=True), future),
                (mask(nq, nk, w, causal=False), future),
                (~want, "the mask is inverted: True must mean that the key may be attended"),
                (want.T, "the mask is transposed: rows are the n_q queries, columns the n_k keys"),
            ])
    return c.passed("square, Nq < Nk, Nq > Nk, window 1 and wider than the sequence")


# ---------------------------------------------------------------- linear attention

def _weights_attention(w, v):
    """Rows of non-negative weights normalised, zeros for a row with nothing to attend to."""
    total = w.sum(-1, keepdim=True)
    return (w @ v) / torch.where(total != 0, total, torch.ones_like(total))


def _feature_cumsum(fq, fk, v, nq, nk):
    """Causal linear attention whose normaliser is a cumsum of phi(k) over the features, not the keys."""
    allowed = _mask(nq, nk)
    num = (fq @ fk.transpose(-2, -1) * allowed) @ v
    pos = torch.arange(nq) + nk - nq  # each query's position among the keys
    z = torch.cumsum(fk, -1)[..., pos.clamp(0, nk - 1), :]  # (..., Nq, d)
    den = (fq * z).sum(-1, keepdim=True)
    return torch.where((pos >= 0).unsqueeze(-1), num / den, torch.zeros_like(num))


def check_linear_attention(fn) -> str:
    """Check ``fn(q, k, v, causal=False)`` with feature map ``elu(x) + 1``."""
    c = Checker("linear_attention", fn)
    g = gen(93)
    for label, causal, nq, nk, lead_dims in [
            ("non-causal", False, 11, 11, (2, 3)), ("causal", True, 11, 11, (2, 3)),
            ("causal, 7 new queries after 6 keys", True, 7, 13, (2, 3)),
            ("causal, 13 queries but 7 keys: the first 6 see no key and get zeros", True, 13, 7, (2, 3)),
            ("non-causal, 7 queries x 13 keys", False, 7, 13, (2, 3)),
            ("2-D input (N, d), causal, 9 x 12", True, 9, 12, ()),
            ("3-D input (H, N, d), non-causal, 10 x 8", False, 10, 8, (3,)),
            ("5-D input, causal, 6 x 8", True, 6, 8, (2, 1, 2))]:
        with c.case(label):
            c.ban = Ban(python=(linear.linear_attention,), forbid_shape=(nq, nk),
                        hint="Apply elu(x) + 1, then share sum_j phi(k_j) v_j^T across queries instead of forming "
                             "the (Nq, Nk) weights.")
            q, k, v = randn(g, *lead_dims, nq, 4), randn(g, *lead_dims, nk, 4), randn(g, *lead_dims, nk, 5)
            lead = "" if len(lead_dims) == 2 else _leading(q.shape)
            got = c.call(label, q, k, v, causal, if_raises=lead)
            qd, kd, vd = q.double(), k.double(), v.double()
            want = linear.linear_attention(qd, kd, vd, causal)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and torch.isnan(got).any():
                c.fail(label, "NaN for a query that sees no key: its normaliser is 0; return zeros for it")

            def wrong():
                fq, fk = F.elu(qd) + 1, F.elu(kd) + 1

                def attend(a, b, allowed=_mask(nq, nk) if causal else None, normalise=True):
                    w = a @ b.transpose(-2, -1)
                    if allowed is not None:
                        w = w * allowed
                    return _weights_attention(w, vd) if normalise else w @ vd

                cands = [(attend(fq, fk, normalise=False), "no normaliser: divide by phi(q_i) . sum_j phi(k_j)"),
                         (attend(fq, fk, normalise=False) / (fq @ fk.sum(-2).unsqueeze(-1)),
                          "the normaliser must run over the same keys as the numerator: with causal=True, "
                          "z_i = sum_{j <= i'} phi(k_j) (a cumsum too), not the sum over all keys"),
                         (linear.linear_attention(qd, kd, vd, not causal), "the causal flag is ignored or inverted"),
                         (reference_softmax(qd @ kd.transpose(-2, -1), -1) @ vd,
                          "that is softmax attention; use phi(x) = elu(x) + 1"),
                         (attend(torch.exp(qd), torch.exp(kd)),
                          "the feature map is phi(x) = elu(x) + 1 (torch.nn.functional.elu(x) + 1), not exp"),
                         (attend(F.elu(qd), F.elu(kd)),
                          "the feature map is phi(x) = elu(x) + 1: the + 1 keeps every feature positive"),
                         (linear.linear_attention(qd / math.sqrt(qd.shape[-1]), kd, vd, causal),
                          "no 1/sqrt(d) in linear attention: dividing by phi(q_i) . z is the only normalisation"),
                         (attend(qd, fk), "phi was applied to the keys only: apply it to the queries too, "
                                          "phi(q_i) . phi(k_j)"),
                         (attend(fq, kd), "phi was applied to the queries only: apply it to the keys too, "
                                          "phi(q_i) . phi(k_j)")]
                cands += [(attend(f(qd), f(kd)), f"the feature map is phi(x) = elu(x) + 1 "
                                                 f"(torch.nn.functional.elu(x) + 1), not {name}")
                          for f, name in ((lambda x: F.relu(x) + 1, "relu(x) + 1"), (F.relu, "relu(x)"),
                                          (torch.sigmoid, "sigmoid(x)"), (F.softplus, "softplus(x)"))]
                if causal:
                    cands += [(attend(fq, fk, _mask(nq, nk, top_left=True)),
                               "the causal mask is aligned to the top left: query i sits at position i + Nk - Nq, "
                               "so its prefix sums run over keys j <= i + Nk - Nq"),
                              (_feature_cumsum(fq, fk, vd, nq, nk),
                               "the normaliser's cumsum runs over the features: z_i = sum_{j <= i'} phi(k_j) is a "
                               "prefix sum over the keys (dim=-2), like the numerator's"),
                              (attend(fq, fk, torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq - 1)),
                               "each query must see its own key too: the prefix sums run over j <= i' (an inclusive "
                               "cumsum), not j < i'")]
                return cands

            def raw_keys(got_o):
                """phi(q) against raw keys: the normaliser phi(q_i) . sum_j k_j can be near 0, where float32
                and float64 part ways, so compare the rows whose normaliser is not small."""
                allowed = _mask(nq, nk) if causal else torch.ones(nq, nk, dtype=torch.bool)
                w = (F.elu(qd) + 1) @ kd.transpose(-2, -1) * allowed
                den = w.sum(-1, keepdim=True)
                cand = (w @ vd) / torch.where(den != 0, den, torch.ones_like(den))
                rows = (den.abs() > 0.5).expand_as(cand)
                if got_o.shape != cand.shape or rows.sum() < cand.numel() // 2:
                    return None
                ok = torch.allclose(got_o.double()[rows], cand[rows], rtol=1e-3, atol=1e-4)
                return ("phi was applied to the queries only: apply it to the keys too, phi(q_i) . phi(k_j)"
                        if ok else None)

            _check(c, label, got, want, what="output", dtype=q.dtype, lead=lead, wrong=wrong, fallback=raw_keys)
    return c.passed("causal and not, Nq != Nk both ways, 2-D to 5-D input, no (Nq, Nk) weights")
