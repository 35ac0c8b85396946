"""Checkers for notebook 07d (not in the contract's ``CHECKS``): the scores that find
bracket-matching and indentation heads in a model of Python source."""

from __future__ import annotations

import torch

from .. import code_heads
from ._harness import Ban, Checker, gen

# Snippets whose brackets and lines tell the usual slips apart: nesting, all three kinds, a
# stray closer, interleaved kinds, blank lines, a dedent, a line with no indentation.
_BRACKETS = [
    "f(a[1], {2: (3)})",
    "x = g(h(y), [k for k in z]) + d[{1}]",
    "s = ')' + (a]b) ]",
    "(a[b)c] (d)",
    "print(x)\nif (a and\n        b[0]):\n    pass",
]
_INDENTS = [
    "def f(x):\n    y = x\n    return y\n",
    "if a:\n    b = 1\n\n    if c:\n        d()\n  \n    e = 2\nf = 3\n    g\n",
    "    x = 1\n        y = 2\n z\n\n\n   w",
    "class A:\n    def f(self):\n        pass\n\n    def g(self):\n        return 1\n",
]


def _attn(g, lead, T, dtype=torch.float32):
    """Causal softmax weights ``(*lead, T, T)`` with a few sharp entries, so every key matters."""
    scores = 2.0 * torch.randn(*lead, T, T, generator=g, dtype=torch.float64)
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1).to(dtype)


def _ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def _mean_at(w, queries, keys):
    q, k = torch.tensor(queries), torch.tensor(keys)
    return w[..., q, k].mean(-1)


def _run_cases(c: Checker, g, cases, reference, mistakes) -> None:
    """One checker case per ``(leading axes, text)``: random causal weights over the text's bytes
    (the last case in float64), the learner's score against ``reference``, the known
    ``mistakes(w, ids)`` named."""
    for n, (lead, text) in enumerate(cases):
        ids = _ids(text)
        w = _attn(g, lead, len(ids), torch.float64 if n == len(cases) - 1 else torch.float32)
        label = f"attn {tuple(w.shape)} {str(w.dtype)[6:]}, ids of {text!r}"
        with c.case(label):
            got = c.call(label, w, ids, if_raises=_LEADING if len(lead) != 1 else "")
            c.expect(label, got, reference(w.double(), ids), what="scores", tol=dict(rtol=1e-5, atol=1e-6),
                     wrong=mistakes(w.double(), ids))


_LEADING = ("attn may have any number of leading axes ((T, T), (H, T, T), (L, H, T, T)): index the last two with "
            "attn[..., i, j] and average over the last axis")


# ---------------------------------------------------------------------------- bracket matching

def _pairs_ignoring_kind(ids):
    stack, pairs = [], []
    for i, b in enumerate(ids):
        if b in code_heads.OPEN_TO_CLOSE:
            stack.append(i)
        elif b in code_heads.CLOSE_TO_OPEN and stack:
            pairs.append((i, stack.pop()))
    return pairs


def _pairs_per_kind(ids):
    stacks, pairs = {o: [] for o in code_heads.OPEN_TO_CLOSE}, []
    for i, b in enumerate(ids):
        if b in code_heads.OPEN_TO_CLOSE:
            stacks[b].append(i)
        elif b in code_heads.CLOSE_TO_OPEN and stacks[code_heads.CLOSE_TO_OPEN[b]]:
            pairs.append((i, stacks[code_heads.CLOSE_TO_OPEN[b]].pop()))
    return pairs


def _pairs_popping_on_mismatch(ids):
    stack, pairs = [], []
    for i, b in enumerate(ids):
        if b in code_heads.OPEN_TO_CLOSE:
            stack.append((i, b))
        elif b in code_heads.CLOSE_TO_OPEN and stack:
            j, o = stack.pop()
            if o == code_heads.CLOSE_TO_OPEN[b]:
                pairs.append((i, j))
    return pairs


def _pairs_nearest_same_kind(ids):
    """No stack: the nearest earlier opener of the same kind."""
    pairs = []
    for i, b in enumerate(ids):
        if b in code_heads.CLOSE_TO_OPEN:
            earlier = [j for j in range(i) if ids[j] == code_heads.CLOSE_TO_OPEN[b]]
            if earlier:
                pairs.append((i, earlier[-1]))
    return pairs


def _pairs_parentheses_only(ids):
    return [(c, o) for c, o in code_heads.bracket_pairs(ids) if ids[c] == ord(")")]


def _bracket_mistakes(w, ids):
    ids_list = ids.tolist()
    pairs = code_heads.bracket_pairs(ids_list)
    close, open_ = [c for c, _ in pairs], [o for _, o in pairs]
    T = len(ids_list)
    wrong = []

    def add(candidate_pairs, hint):
        if not candidate_pairs:  # the mean of no pairs: what torch gives for an empty mean
            wrong.append((torch.full(w.shape[:-2], float("nan"), dtype=w.dtype), hint))
        elif sorted(candidate_pairs) != sorted(pairs):
            wrong.append((_mean_at(w, [c for c, _ in candidate_pairs], [o for _, o in candidate_pairs]), hint))

    wrong.append((_mean_at(w, open_, close), "you read the weight from the opening bracket to the closing one, a "
                  "future key (zero under a causal mask): the query is the closer, attn[..., close, open]"))
    wrong.append((_mean_at(w, close, [o + 1 for o in open_]), "off by one: the key is the opening bracket itself, "
                  "not the byte after it"))
    wrong.append((_mean_at(w, close, [max(o - 1, 0) for o in open_]), "off by one: the key is the opening bracket "
                  "itself, not the byte before it"))
    wrong.append((_mean_at(w, [c - 1 for c in close], open_), "off by one: the query is the closing bracket itself, "
                  "not the byte before it"))
    wrong.append((_mean_at(w, close, close), "you read each closer's weight on itself (the diagonal): the key is "
                  "the opening bracket it closes"))
    add(_pairs_ignoring_kind(ids_list), "a closer pops the stack whatever the kind: pop only when the top is its own "
        "kind ('(' for ')', '[' for ']', '{' for '}'), otherwise skip the closer")
    add(_pairs_popping_on_mismatch(ids_list), "a closer of the wrong kind popped the stack: when the top is not its "
        "own kind, skip the closer and leave the stack as it is")
    add(_pairs_per_kind(ids_list), "you kept one stack per kind of bracket: a closer can only close the innermost "
        "open bracket, so use one stack for all three kinds")
    add(_pairs_nearest_same_kind(ids_list), "you paired each closer with the nearest earlier opener of its kind; "
        "nested brackets need a stack (the nearest one may already be closed)")
    add(_pairs_parentheses_only(ids_list), "only parentheses were paired: square brackets and braces count too")
    sums = w[..., torch.tensor(close), torch.tensor(open_)].sum(-1)
    wrong.append((sums, "take the mean over the pairs, not the sum"))
    wrong.append((sums / T, "divide by the number of pairs, not by the sequence length"))
    closers = [i for i, b in enumerate(ids_list) if b in code_heads.CLOSE_TO_OPEN]
    if len(closers) > len(close):
        wrong.append((sums / len(closers), "unmatched closers count as 0 in your mean: average over the matched "
                      "pairs only"))
    return wrong


def check_bracket_match_score(fn) -> str:
    """Check ``fn(attn (..., T, T), ids (T,)) -> (...)``: the mean weight from each closing bracket
    to the opening bracket it closes (one stack, a closer of the wrong kind skipped)."""
    c = Checker("bracket_match_score", fn,
                Ban(python=(code_heads.bracket_match_score, code_heads.bracket_pairs),
                    hint="Pair the brackets yourself with a stack, then index attn."))
    def mistakes(w, ids):
        pairs = code_heads.bracket_pairs(ids)
        per_pair = w[..., torch.tensor([q for q, _ in pairs]), torch.tensor([k for _, k in pairs])]
        return _bracket_mistakes(w, ids) + [(per_pair, "average over the pairs: one score per head, shape "
                                                       "attn.shape[:-2]")]

    _run_cases(c, gen(1707), [((4,), _BRACKETS[0]), ((2, 3), _BRACKETS[1]), ((3,), _BRACKETS[2]),
                              ((), _BRACKETS[3]), ((2, 2, 2), _BRACKETS[4]), ((5,), _BRACKETS[1])],
               code_heads.bracket_match_score, mistakes)
    return c.passed("nested, interleaved and stray brackets of all three kinds; 0 to 3 leading axes")


# ---------------------------------------------------------------------------- indentation

def _spans_variant(ids, *, blank_counts=False, first_byte=True, newline_queries=False, all_spaces=False,
                   whole_line=False, orphans=False):
    """Indentation spans under a changed rule (the mistakes below); the defaults give the reference."""
    lines, start = [], 0
    for i, b in enumerate(ids):
        if b == code_heads.NEWLINE:
            lines.append((start, i))
            start = i + 1
    lines.append((start, len(ids)))
    spans, reference = [], None
    for start, end in lines:
        first = start
        while first < end and ids[first] == code_heads.SPACE:
            first += 1
        queries = list(range(start, first))
        if all_spaces:
            queries = [q for q in range(start, end) if ids[q] == code_heads.SPACE]
        if newline_queries and start > 0:
            queries = [start - 1] + queries
        if reference is not None:
            spans += [(q, reference) for q in queries]
        elif orphans:
            spans += [(q, []) for q in queries]  # no line above: counted with weight 0
        if first < end or blank_counts:
            if whole_line:
                reference = list(range(start, end))
            else:
                reference = list(range(start, min(first + 1, len(ids)) if first_byte else first))
    return spans


def _per_query(w, spans, reduce_keys="sum"):
    """``(..., queries)``: each query's weight on its keys, summed (or averaged, or the largest)."""
    keys = torch.zeros(len(spans), w.shape[-1], dtype=w.dtype)  # (queries, T)
    for row, (_, k) in enumerate(spans):
        keys[row, k] = 1.0
    picked = w[..., torch.tensor([q for q, _ in spans]), :] * keys  # (..., queries, T)
    if reduce_keys == "mean":
        return picked.sum(-1) / keys.sum(-1).clamp_min(1)
    if reduce_keys == "max":
        return picked.amax(-1)
    return picked.sum(-1)


def _indent_mistakes(w, ids):
    ids_list = ids.tolist()
    spans = code_heads.indentation_spans(ids_list)
    wrong = []

    def add(variant, hint):
        if variant and variant != spans:
            wrong.append((_per_query(w, variant).mean(-1), hint))

    add(_spans_variant(ids_list, blank_counts=True), "a blank line became the reference: refer to the nearest line "
        "above that holds something other than spaces")
    add(_spans_variant(ids_list, first_byte=False), "the keys are the reference line's leading spaces AND its first "
        "non-space byte (a line without indentation still has that one key)")
    add(_spans_variant(ids_list, newline_queries=True), "the queries are the leading spaces of a line only, not the "
        "newline before it")
    add(_spans_variant(ids_list, all_spaces=True), "only the LEADING spaces of a line are queries (spaces with "
        "nothing but spaces before them on their line), not every space")
    add(_spans_variant(ids_list, whole_line=True), "the keys are the reference line's indentation (its leading "
        "spaces and first non-space byte), not the whole line")
    add(_spans_variant(ids_list, orphans=True), "leading spaces with no non-blank line above them are not queries: "
        "leave them out of the mean rather than counting 0")
    picked = _per_query(w, spans)  # (..., queries)
    wrong.append((_per_query(w, spans, "mean").mean(-1), "sum the weight over the keys of a query (its total weight "
                  "on the indentation above), then average over the queries; you averaged over the keys"))
    wrong.append((_per_query(w, spans, "max").mean(-1), "sum the weight over the keys of a query, not the largest "
                  "one"))
    wrong.append((picked.sum(-1), "average over the queries, not the sum"))
    wrong.append((picked, "average over the queries: one score per head, shape attn.shape[:-2]"))
    return wrong


def check_indentation_score(fn) -> str:
    """Check ``fn(attn (..., T, T), ids (T,)) -> (...)``: the mean, over leading spaces, of the total
    weight on the previous non-blank line's indentation (its leading spaces and first byte)."""
    c = Checker("indentation_score", fn,
                Ban(python=(code_heads.indentation_score, code_heads.indentation_spans),
                    hint="Find the lines and their indentation yourself, then index attn."))
    _run_cases(c, gen(1708), [((3,), _INDENTS[0]), ((2, 2), _INDENTS[1]), ((4,), _INDENTS[2]),
                              ((), _INDENTS[3]), ((2, 1, 3), _INDENTS[1]), ((2,), _INDENTS[3])],
               code_heads.indentation_score, _indent_mistakes)
    return c.passed("blank and whitespace-only lines, dedents, deeper and shallower lines; 0 to 3 leading axes")


INSIDE_CHECKS = {"bracket_match_score": check_bracket_match_score, "indentation_score": check_indentation_score}
