"""The mutant library of notebook 12 (tests/library.py): the sliding-window mask_mod, the ALiBi
score_mod and the document mask_mod for FlexAttention.

Each exercise is a factory (``fn(window)``, ``fn(n_heads)``, ``fn(doc_ids)``) that returns the
mod. Correct styles combine comparisons with ``&`` or ``torch.where``, use FlexAttention's
``and_masks``, capture tensors built outside the mod (float64 slopes, a cloned id tensor).
Mutants are the mistakes learners make: an off-by-one window, a window that looks both ways,
swapped indices, slopes in the wrong order or of the wrong head, Python control flow that
torch.vmap cannot trace."""

import torch

import attnkit
from attnkit import flex
from attnkit.checks import NOTEBOOK_CHECKS
from library import Exercise, Mutant


# ----------------------------------------------------------------------------- sliding window
def window_and(window):
    return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx < window)


def window_combined(window):
    causal = lambda b, h, q_idx, kv_idx: q_idx >= kv_idx  # noqa: E731
    near = lambda b, h, q_idx, kv_idx: kv_idx > q_idx - window  # noqa: E731
    return flex.and_masks(causal, near)


def window_where(window):
    def mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        return torch.where(d < 0, False, d < window)
    return mod


def window_captured_tensor(window):
    """The window captured as a tensor, the comparison written as a range check on the distance."""
    w = torch.tensor(window)

    def mod(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (distance >= 0) & ~(distance >= w)
    return mod


def window_with_if(window):
    def mod(b, h, q_idx, kv_idx):
        if kv_idx <= q_idx and q_idx - kv_idx < window:
            return torch.tensor(True)
        return torch.tensor(False)
    return mod


def window_excludes_itself(window):
    return lambda b, h, q, k: (k < q) & (q - k < window)


def window_arguments_in_the_wrong_order(window):
    return lambda q, k, b, h: (k <= q) & (q - k < window)


# ----------------------------------------------------------------------------- ALiBi
def alibi_ok(n_heads):
    slopes = attnkit.alibi_slopes(n_heads)
    return lambda score, b, h, q_idx, kv_idx: score - slopes[h] * (q_idx - kv_idx).abs()


def alibi_where(n_heads):
    slopes = attnkit.alibi_slopes(n_heads).double()

    def mod(score, b, h, q_idx, kv_idx):
        d = torch.where(q_idx > kv_idx, q_idx - kv_idx, kv_idx - q_idx)
        return score + (-slopes[h]) * d
    return mod


def alibi_slopes_by_hand(n_heads):
    """The paper's slopes written out in float64 (closest power of two, then every other slope of
    the next one), captured as a tensor; the bias as a product of a negated slope and a distance."""
    def powers(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    p = 1 << (n_heads.bit_length() - 1)
    values = powers(p) + (powers(2 * p)[0::2][:n_heads - p] if p < n_heads else [])
    slopes = torch.tensor(values, dtype=torch.float64)

    def mod(score, b, h, q_idx, kv_idx):
        distance = torch.maximum(q_idx - kv_idx, kv_idx - q_idx)
        return score - slopes[h] * distance
    return mod


def alibi_with(slope_of, distance=lambda q, k: (q - k).abs(), sign=-1.0, keep_score=True):
    def factory(n_heads):
        slopes = slope_of(n_heads)
        return lambda score, b, h, q, k: (score if keep_score else 0 * score) + sign * slopes[h] * distance(q, k)
    return factory


def alibi_item(n_heads):
    slopes = attnkit.alibi_slopes(n_heads)
    return lambda score, b, h, q, k: score - slopes[h] * abs(q.item() - k.item())


def alibi_power_formula(n_heads):
    return lambda score, b, h, q, k: score - 2.0 ** (-8 * (h + 1) / n_heads) * (q - k).abs()


def alibi_slope_index_from_zero(n_heads):
    slopes = torch.tensor([2.0 ** (-8.0 * h / n_heads) for h in range(n_heads)])
    return lambda score, b, h, q, k: score - slopes[h] * (q - k).abs()


def alibi_slopes_of_the_batch(n_heads):
    slopes = attnkit.alibi_slopes(n_heads)
    return lambda score, b, h, q, k: score - slopes[b] * (q - k).abs()


# ----------------------------------------------------------------------------- documents
def doc_ok(doc_ids):
    return lambda b, h, q_idx, kv_idx: doc_ids[q_idx] == doc_ids[kv_idx]


def doc_difference(doc_ids):
    ids = doc_ids.clone()
    return lambda b, h, q_idx, kv_idx: (ids[q_idx] - ids[kv_idx]) == 0


def doc_where(doc_ids):
    """Document starts captured as a tensor; the document of a position found by counting starts."""
    ids = doc_ids.tolist()
    starts = torch.tensor([i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]])

    def mod(b, h, q_idx, kv_idx):
        doc_q = (starts <= q_idx).sum()
        doc_k = (starts <= kv_idx).sum()
        return torch.where(doc_q == doc_k, True, False)
    return mod


def doc_equal_lengths(doc_ids):
    length = len(doc_ids) // len(set(doc_ids.tolist()))
    return lambda b, h, q, k: (q // length) == (k // length)


def doc_shifted(doc_ids):
    ids = torch.cat((doc_ids[:1], doc_ids[:-1]))
    return lambda b, h, q, k: ids[q] == ids[k]


def doc_difference_not_compared(doc_ids):
    return lambda b, h, q, k: doc_ids[q] - doc_ids[k]


def doc_positions_not_documents(doc_ids):
    return lambda b, h, q, k: q == k


EXERCISES = [
    Exercise("sliding_window_mask_mod", NOTEBOOK_CHECKS["sliding_window_mask_mod"], [
        Mutant("window of w + 1 keys (<= window)", lambda w: lambda b, h, q, k: (k <= q) & (q - k <= w), "off by one"),
        Mutant("window of w - 1 keys", lambda w: lambda b, h, q, k: (k <= q) & (q - k < w - 1),
               "counts the query itself"),
        Mutant("window looks both ways", lambda w: lambda b, h, q, k: (q - k).abs() < w, "both ways"),
        Mutant("no causal part", lambda w: lambda b, h, q, k: q - k < w, "future are allowed"),
        Mutant("q_idx and kv_idx swapped", lambda w: lambda b, h, q, k: (q <= k) & (k - q < w), "swapped"),
        Mutant("window ignored", lambda w: lambda b, h, q, k: k <= q, "window is ignored"),
        Mutant("the query itself excluded (k < q)", window_excludes_itself, "the query itself"),
        Mutant("arguments in the order (q_idx, kv_idx, b, h)", window_arguments_in_the_wrong_order,
               "(b, h, q_idx, kv_idx)"),
        Mutant("Python if and and", window_with_if, "torch.vmap"),
        Mutant("a Python True", lambda w: lambda b, h, q, k: True, "torch.vmap"),
        Mutant("an int tensor", lambda w: lambda b, h, q, k: ((k <= q) & (q - k < w)).int(), "bool tensor"),
        Mutant("returns a dense mask", lambda w: attnkit.sliding_window_mask(64, 64, w), "return a function"),
        Mutant("calls attnkit.flex.sliding_window", lambda w: flex.sliding_window(1, 1, w), "calls"),
        Mutant("the mask_mod itself, not a factory", lambda b, h, q, k: k <= q, "is a factory"),
    ], [window_and, window_combined, window_where, window_captured_tensor]),
    Exercise("alibi_score_mod", NOTEBOOK_CHECKS["alibi_score_mod"], [
        Mutant("bias added", alibi_with(attnkit.alibi_slopes, sign=1.0), "wrong sign"),
        Mutant("slopes reversed", alibi_with(lambda n: attnkit.alibi_slopes(n).flip(0)), "reverse order"),
        Mutant("signed distance q - k", alibi_with(attnkit.alibi_slopes, distance=lambda q, k: q - k),
               "absolute distance"),
        Mutant("signed distance k - q", alibi_with(attnkit.alibi_slopes, distance=lambda q, k: k - q),
               "absolute distance"),
        Mutant("head 0's slope for every head", alibi_with(lambda n: attnkit.alibi_slopes(n)[:1].expand(n)),
               "same slope"),
        Mutant("the bias alone, score dropped", alibi_with(attnkit.alibi_slopes, keep_score=False), "score is gone"),
        Mutant("power-of-two formula for every head count",
               alibi_with(lambda n: torch.tensor([2.0 ** (-8 * (h + 1) / n) for h in range(n)])),
               "not a power of two"),
        Mutant("power-of-two formula computed inside the score_mod", alibi_power_formula, "not a power of two"),
        Mutant("slopes 2^(-8h/H), numbered from 0", alibi_slope_index_from_zero, "2^(-8/H)"),
        Mutant("slopes indexed with b", alibi_slopes_of_the_batch, "index the slopes with h"),
        Mutant(".item() on the indices", alibi_item, "torch.vmap"),
        Mutant("calls attnkit.flex.alibi", lambda n: flex.alibi(n, 1, 1), "calls"),
    ], [alibi_ok, alibi_where, alibi_slopes_by_hand]),
    Exercise("document_mask_mod", NOTEBOOK_CHECKS["document_mask_mod"], [
        Mutant("ids compared with >=", lambda ids: lambda b, h, q, k: ids[q] >= ids[k], "other documents"),
        Mutant("made causal", lambda ids: lambda b, h, q, k: (ids[q] == ids[k]) & (k <= q), "causal"),
        Mutant("documents assumed of equal length", doc_equal_lengths, "different lengths"),
        Mutant("boundaries one token late", doc_shifted, "boundaries"),
        Mutant("every token sees every token", lambda ids: lambda b, h, q, k: q >= 0, "every token sees every token"),
        Mutant("difference of ids, not compared with 0", doc_difference_not_compared, "bool tensor"),
        Mutant("positions compared, not documents", doc_positions_not_documents, "compare the documents"),
        Mutant("bool() of a tensor", lambda ids: lambda b, h, q, k: bool(ids[q] == ids[k]), "torch.vmap"),
        Mutant("calls attnkit.flex.document", lambda ids: flex.document(ids), "calls"),
        Mutant("a factory of no argument", lambda: doc_ok, "is a factory"),
    ], [doc_ok, doc_difference, doc_where]),
]
