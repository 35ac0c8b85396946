"""The checkers' library for notebook 07d (looking inside a real model): the bracket-matching and
indentation scores. Mistakes learners make, each with the hint its checker must name, and correct
implementations in different styles (see tests/library.py)."""

from __future__ import annotations

import torch

from attnkit.checks.inside import check_bracket_match_score, check_indentation_score
from library import Exercise, Mutant

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}

# ============================================================================ bracket_match_score


def bracket_stack(attn, ids):
    """The notebook's solution: one stack of (position, byte), then fancy indexing."""
    stack, close, open_ = [], [], []
    for i, b in enumerate(ids.tolist()):
        ch = chr(b)
        if ch in OPENERS:
            stack.append((i, ch))
        elif ch in CLOSERS and stack and stack[-1][1] == CLOSERS[ch]:
            close.append(i)
            open_.append(stack.pop()[0])
    return attn[..., close, open_].mean(-1)


def bracket_bytes_and_loop(attn, ids):
    """Works on bytes, accumulates the weights in a Python loop over pairs, float64 inside."""
    text = bytes(ids.tolist())
    stack, total, count = [], torch.zeros(attn.shape[:-2], dtype=torch.float64), 0
    for i, b in enumerate(text):
        if b in b"([{":
            stack.append(i)
        elif b in b")]}":
            if stack and text[stack[-1]] == b"([{"[b")]}".index(b)]:
                total = total + attn[..., i, stack.pop()].double()
                count += 1
    return (total / count).to(attn.dtype)


def bracket_flattened(attn, ids):
    """Flattens the leading axes, gathers with a boolean pair matrix, reshapes back."""
    T = attn.shape[-1]
    pair = torch.zeros(T, T, dtype=torch.bool)  # pair[close, open]
    stack = []
    for i, b in enumerate(ids.tolist()):
        if b in (40, 91, 123):
            stack.append(i)
        elif b in (41, 93, 125) and stack and ids[stack[-1]] == {41: 40, 93: 91, 125: 123}[b]:
            pair[i, stack.pop()] = True
    flat = attn.reshape(-1, T, T)  # (L*H, T, T)
    scores = (flat * pair).sum((-2, -1)) / pair.sum()
    return scores.reshape(attn.shape[:-2])


def _mutant_pairs(ids, rule):
    stack, pairs = [], []
    for i, b in enumerate(ids.tolist()):
        ch = chr(b)
        if ch in OPENERS:
            stack.append((i, ch))
        elif ch in CLOSERS and stack:
            if rule == "any kind":
                pairs.append((i, stack.pop()[0]))
            elif rule == "pop on mismatch":
                j, o = stack.pop()
                if o == CLOSERS[ch]:
                    pairs.append((i, j))
            elif stack[-1][1] == CLOSERS[ch]:
                pairs.append((i, stack.pop()[0]))
    return pairs


def _pick(attn, pairs, dq=0, dk=0):
    return attn[..., [c + dq for c, _ in pairs], [o + dk for _, o in pairs]].mean(-1)


def bracket_any_kind(attn, ids):
    return _pick(attn, _mutant_pairs(ids, "any kind"))


def bracket_pop_on_mismatch(attn, ids):
    return _pick(attn, _mutant_pairs(ids, "pop on mismatch"))


def bracket_per_kind_stacks(attn, ids):
    stacks, pairs = {o: [] for o in OPENERS}, []
    for i, b in enumerate(ids.tolist()):
        ch = chr(b)
        if ch in OPENERS:
            stacks[ch].append(i)
        elif ch in CLOSERS and stacks[CLOSERS[ch]]:
            pairs.append((i, stacks[CLOSERS[ch]].pop()))
    return _pick(attn, pairs)


def bracket_nearest_opener(attn, ids):
    text = bytes(ids.tolist()).decode()
    pairs = [(i, text.rfind(CLOSERS[ch], 0, i)) for i, ch in enumerate(text)
             if ch in CLOSERS and CLOSERS[ch] in text[:i]]
    return _pick(attn, pairs)


def bracket_open_to_close(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    return attn[..., [o for _, o in pairs], [c for c, _ in pairs]].mean(-1)


def bracket_key_after_opener(attn, ids):
    return _pick(attn, _mutant_pairs(ids, "right"), dk=1)


def bracket_query_before_closer(attn, ids):
    return _pick(attn, _mutant_pairs(ids, "right"), dq=-1)


def bracket_parentheses_only(attn, ids):
    return _pick(attn, [(c, o) for c, o in _mutant_pairs(ids, "right") if ids[c] == ord(")")])


def bracket_sum(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    return attn[..., [c for c, _ in pairs], [o for _, o in pairs]].sum(-1)


def bracket_over_length(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    return attn[..., [c for c, _ in pairs], [o for _, o in pairs]].sum(-1) / len(ids)


def bracket_unmatched_as_zero(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    n_closers = sum(1 for b in ids.tolist() if chr(b) in CLOSERS)
    return attn[..., [c for c, _ in pairs], [o for _, o in pairs]].sum(-1) / n_closers


def bracket_no_mean(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    return attn[..., [c for c, _ in pairs], [o for _, o in pairs]]


def bracket_three_d_only(attn, ids):
    pairs = _mutant_pairs(ids, "right")
    H, T, _ = attn.shape
    return torch.stack([attn[h, [c for c, _ in pairs], [o for _, o in pairs]].mean() for h in range(H)])


def bracket_reference(attn, ids):
    import attnkit.code_heads
    return attnkit.code_heads.bracket_match_score(attn, ids)


# ============================================================================ indentation_score


def _lines(ids):
    """(start, end) of each line, end = the newline's position or len(ids)."""
    out, start = [], 0
    for i, b in enumerate(ids):
        if b == 10:
            out.append((start, i))
            start = i + 1
    out.append((start, len(ids)))
    return out


def indent_lines(attn, ids):
    """The notebook's solution: walk the lines, remember the last non-blank line's indentation."""
    ids = ids.tolist()
    queries, keys, reference = [], [], None
    for start, end in _lines(ids):
        first = start
        while first < end and ids[first] == ord(" "):
            first += 1
        if reference is not None:
            for q in range(start, first):
                queries.append(q)
                keys.append(reference)
        if first < end:
            reference = list(range(start, first + 1))
    per_query = [attn[..., q, k].sum(-1) for q, k in zip(queries, keys)]
    return torch.stack(per_query, -1).mean(-1)


def indent_text(attn, ids):
    """str.split on the decoded text, len - len(lstrip) for the indentation; a mask matrix."""
    text = bytes(ids.tolist()).decode()
    T = attn.shape[-1]
    mask = torch.zeros(T, T, dtype=attn.dtype)  # mask[query, key]
    pos, ref = 0, None
    rows = []
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip(" "))
        if ref is not None:
            for q in range(pos, pos + indent):
                mask[q, ref[0]:ref[1]] = 1
                rows.append(q)
        if line.strip(" "):
            ref = (pos, pos + indent + 1)
        pos += len(line) + 1
    return (attn * mask).sum(-1)[..., rows].mean(-1)


def indent_regex(attn, ids):
    """re.finditer over lines; einsum with a float64 mask built once."""
    import re
    text = bytes(ids.tolist()).decode()
    T = attn.shape[-1]
    mask = torch.zeros(T, T, dtype=torch.float64)
    ref = None
    for m in re.finditer(r"( *)([^\n]*)(\n|$)", text):
        spaces, rest = m.group(1), m.group(2)
        if m.start() >= T:
            break
        if ref is not None:
            mask[m.start():m.start() + len(spaces), ref] = 1.0
        if rest:
            ref = slice(m.start(), m.start() + len(spaces) + 1)
        if m.end() == m.start():
            break
    rows = mask.sum(-1) > 0
    return (torch.einsum("...qk,qk->...q", attn.double(), mask)[..., rows].mean(-1)).to(attn.dtype)


def _indent_variant(attn, ids, *, blank=False, first_byte=True, newline=False, every_space=False, whole=False,
                    reduce="sum", orphans=False, mean_q=True):
    ids = ids.tolist()
    per, reference = [], None
    for start, end in _lines(ids):
        first = start
        while first < end and ids[first] == 32:
            first += 1
        qs = [q for q in range(start, end) if ids[q] == 32] if every_space else list(range(start, first))
        if newline and start > 0:
            qs = [start - 1] + qs
        for q in qs:
            if reference is not None:
                picked = attn[..., q, reference]
                per.append(picked.sum(-1) if reduce == "sum" else picked.mean(-1) if reduce == "mean"
                           else picked.amax(-1))
            elif orphans:
                per.append(torch.zeros(attn.shape[:-2], dtype=attn.dtype))
        if first < end or blank:
            last = min(first + 1, len(ids)) if first_byte else first  # a blank line's first byte: its newline
            reference = list(range(start, end)) if whole else list(range(start, last))
    stacked = torch.stack(per, -1)
    return stacked.mean(-1) if mean_q else stacked.sum(-1)


def indent_blank_reference(attn, ids):
    return _indent_variant(attn, ids, blank=True)


def indent_spaces_only(attn, ids):
    return _indent_variant(attn, ids, first_byte=False)


def indent_with_newline(attn, ids):
    return _indent_variant(attn, ids, newline=True)


def indent_every_space(attn, ids):
    return _indent_variant(attn, ids, every_space=True)


def indent_whole_line(attn, ids):
    return _indent_variant(attn, ids, whole=True)


def indent_mean_over_keys(attn, ids):
    return _indent_variant(attn, ids, reduce="mean")


def indent_max_key(attn, ids):
    return _indent_variant(attn, ids, reduce="max")


def indent_orphans_zero(attn, ids):
    return _indent_variant(attn, ids, orphans=True)


def indent_sum_queries(attn, ids):
    return _indent_variant(attn, ids, mean_q=False)


def indent_no_mean(attn, ids):
    ids_l = ids.tolist()
    out, reference = [], None
    for start, end in _lines(ids_l):
        first = start
        while first < end and ids_l[first] == 32:
            first += 1
        if reference is not None:
            out += [attn[..., q, reference].sum(-1) for q in range(start, first)]
        if first < end:
            reference = list(range(start, first + 1))
    return torch.stack(out, -1)


def indent_reference(attn, ids):
    import attnkit.code_heads
    return attnkit.code_heads.indentation_score(attn, ids)


EXERCISES = [
    Exercise("bracket_match_score", check_bracket_match_score, [
        Mutant("a closer pops whatever kind is on top", bracket_any_kind, "whatever the kind"),
        Mutant("a closer of the wrong kind still pops the stack", bracket_pop_on_mismatch, "wrong kind popped"),
        Mutant("one stack per kind of bracket", bracket_per_kind_stacks, "one stack per kind"),
        Mutant("nearest earlier opener of the kind, no stack", bracket_nearest_opener, "need a stack"),
        Mutant("weight from the opener to the closer", bracket_open_to_close, "future key"),
        Mutant("key is the byte after the opener", bracket_key_after_opener, "not the byte after it"),
        Mutant("query is the byte before the closer", bracket_query_before_closer, "not the byte before it"),
        Mutant("parentheses only", bracket_parentheses_only, "only parentheses"),
        Mutant("sum over pairs", bracket_sum, "not the sum"),
        Mutant("divided by the sequence length", bracket_over_length, "not by the sequence length"),
        Mutant("unmatched closers counted as zero", bracket_unmatched_as_zero, "unmatched closers"),
        Mutant("per-pair weights, no mean", bracket_no_mean, "average over the pairs"),
        Mutant("written for (H, T, T) only", bracket_three_d_only, "any number of leading axes"),
        Mutant("calls attnkit's reference", bracket_reference, "does the work this exercise asks"),
    ], [bracket_stack, bracket_bytes_and_loop, bracket_flattened]),
    Exercise("indentation_score", check_indentation_score, [
        Mutant("a blank line as the reference", indent_blank_reference, "blank line became the reference"),
        Mutant("keys without the first non-space byte", indent_spaces_only, "AND its first"),
        Mutant("the newline is a query too", indent_with_newline, "not the newline"),
        Mutant("every space is a query", indent_every_space, "only the LEADING spaces"),
        Mutant("the whole reference line as keys", indent_whole_line, "not the whole line"),
        Mutant("mean over the keys", indent_mean_over_keys, "you averaged over the keys"),
        Mutant("the largest key weight", indent_max_key, "not the largest"),
        Mutant("spaces with no line above counted as zero", indent_orphans_zero, "no non-blank line above"),
        Mutant("sum over the queries", indent_sum_queries, "not the sum"),
        Mutant("per-query weights, no mean", indent_no_mean, "one score per head"),
        Mutant("calls attnkit's reference", indent_reference, "does the work this exercise asks"),
    ], [indent_lines, indent_text, indent_regex]),
]
