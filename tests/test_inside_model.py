"""Notebook 07d's references (bracket-matching and indentation scores) against independent
float64 loops and hand-labelled examples, and its head-view widget."""

import pytest
import torch

from attnkit import code_heads
from attnkit.widgets_headview import HeadView, byte_labels


def _ids(text):
    return torch.tensor(list(text.encode()), dtype=torch.int64)


def _causal(g, lead, T):
    scores = torch.randn(*lead, T, T, generator=g, dtype=torch.float64)
    return torch.softmax(scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)


# -- independent loops: characters, not byte ids; no attnkit -----------------------------------

def loop_pairs(text):
    """Closers and their openers: one stack of characters; a closer of another kind is skipped."""
    partner = {")": "(", "]": "[", "}": "{"}
    stack, pairs = [], []
    for i, ch in enumerate(text):
        if ch in "([{":
            stack.append(i)
        elif ch in partner:
            if len(stack) > 0 and text[stack[-1]] == partner[ch]:
                pairs.append((i, stack[-1]))
                stack = stack[:-1]
    return pairs


def loop_bracket_score(w, text):
    """float64 loop over every leading index."""
    pairs = loop_pairs(text)
    lead = w.shape[:-2]
    out = torch.zeros(lead, dtype=torch.float64)
    indices = torch.cartesian_prod(*[torch.arange(n) for n in lead]).reshape(-1, len(lead)).tolist() if lead else [[]]
    for index in indices:
        total = 0.0
        for c, o in pairs:
            total += float(w[tuple(index) + (c, o)])
        out[tuple(index)] = total / len(pairs)
    return out


def loop_indent_score(w2d, text):
    """One (T, T) map: per line, the previous non-blank line's indentation keys; float64 sums."""
    lines = text.split("\n")
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    values, ref = [], None
    for start, line in zip(starts, lines):
        n_lead = len(line) - len(line.lstrip(" "))
        if ref is not None:
            for q in range(start, start + n_lead):
                values.append(sum(float(w2d[q, k]) for k in ref))
        if line.strip(" "):
            ref = list(range(start, start + n_lead + 1))
    return sum(values) / len(values)


SNIPPETS = [
    "f(a[1], {2: (3)})",
    "s = ')' + (a]b) ]",
    "(a[b)c] (d)",
    "x = {k: [v for v in (1, 2)] for k in d}\nprint(x[0])",
]


def test_bracket_pairs_by_hand():
    # f0 (1 a2 [3 14 ]5 ,6 _7 {8 29 :10 _11 (12 313 )14 }15 )16
    assert code_heads.bracket_pairs(_ids("f(a[1], {2: (3)})")) == [(5, 3), (14, 12), (15, 8), (16, 1)]
    # a stray ')' first, '(' at 10, ']' at 12 skipped (top is '('), ')' at 14 closes 10, last ']' finds nothing
    assert code_heads.bracket_pairs(_ids("s = ')' + (a]b) ]")) == [(14, 10)]
    # interleaved: ')' at 4 meets '[' on top and is skipped; ']' at 6 closes '[' at 2
    assert code_heads.bracket_pairs(list(b"(a[b)c] (d)")) == [(6, 2), (10, 8)]


@pytest.mark.parametrize("text", SNIPPETS)
def test_bracket_pairs_match_a_character_loop(text):
    assert code_heads.bracket_pairs(_ids(text)) == loop_pairs(text)


@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
@pytest.mark.parametrize("text", SNIPPETS)
def test_bracket_score_matches_a_float64_loop(text, lead):
    w = _causal(torch.Generator().manual_seed(len(text)), lead, len(text))
    got = code_heads.bracket_match_score(w, _ids(text))
    assert got.shape == lead
    torch.testing.assert_close(got, loop_bracket_score(w, text), rtol=1e-12, atol=1e-12)


def test_a_perfect_bracket_head_scores_one_and_a_previous_byte_head_less():
    text = "g(x, [y, (z)])"
    T = len(text)
    perfect = torch.eye(T, dtype=torch.float64)
    for c, o in loop_pairs(text):
        perfect[c] = 0.0
        perfect[c, o] = 1.0
    previous = torch.eye(T, dtype=torch.float64).roll(-1, dims=1).tril()
    previous[0, 0] = 1.0
    scores = code_heads.bracket_match_score(torch.stack([perfect, previous]), _ids(text))
    assert scores[0] == 1.0 and scores[1] < 1.0  # "(z)": the ')' right after z's '(' is both


INDENTED = [
    "def f(x):\n    y = x\n    return y\n",
    "if a:\n    b = 1\n\n    if c:\n        d()\n  \n    e = 2\nf = 3\n    g\n",
    "    x = 1\n        y = 2\n z\n\n\n   w",
]


def test_indentation_spans_by_hand():
    text = "if a:\n  b\n\n   c"
    # line 1 starts at 6: spaces 6, 7 refer to line 0's first byte 'i' (0); line 2 (10) is empty;
    # line 3 starts at 11: spaces 11-13 refer to line 1's indentation 6, 7 and its 'b' at 8
    assert code_heads.indentation_spans(_ids(text)) == [(6, [0]), (7, [0]), (11, [6, 7, 8]), (12, [6, 7, 8]),
                                                      (13, [6, 7, 8])]
    assert code_heads.indentation_spans(_ids("  x\n")) == []  # nothing above the first line


@pytest.mark.parametrize("text", INDENTED)
def test_indentation_score_matches_a_float64_loop(text):
    w = _causal(torch.Generator().manual_seed(7), (3,), len(text))
    got = code_heads.indentation_score(w, _ids(text))
    want = torch.tensor([loop_indent_score(w[h], text) for h in range(3)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w4 = _causal(torch.Generator().manual_seed(8), (2, 3), len(text))
    assert code_heads.indentation_score(w4, _ids(text)).shape == (2, 3)


def test_scores_refuse_bad_input_with_the_shapes():
    w = torch.rand(2, 5, 5)
    with pytest.raises(ValueError, match=r"T = len\(ids\) = 4.*\(2, 5, 5\)"):
        code_heads.bracket_match_score(w, _ids("f(x)"))
    with pytest.raises(ValueError, match="no matched pair"):
        code_heads.bracket_match_score(w, _ids("abcde"))
    with pytest.raises(ValueError, match="no indented line"):
        code_heads.indentation_score(w, _ids("ab\ncd"))
    with pytest.raises(TypeError, match="integer"):
        code_heads.bracket_match_score(w, torch.zeros(5))
    with pytest.raises(TypeError, match="floating"):
        code_heads.bracket_match_score(torch.ones(5, 5, dtype=torch.int64), _ids("f(xy)"))


# -- the head view -------------------------------------------------------------------------------

def _view(**kw):
    text = "def f(a):\n    return (a)\n"
    L, H, T = 2, 3, len(text)
    attn = _causal(torch.Generator().manual_seed(3), (L, H), T).float()
    return HeadView(attn, _ids(text), **kw), attn, text


def test_head_view_state_follows_layer_head_and_query():
    e, attn, text = _view(layer=0, head=0, query=5)
    assert torch.equal(e.state["row"], attn[0, 0, 5])
    e.controls["layer"].value = 1
    e.controls["head"].value = 2
    e.controls["query"].value = text.index(")", 10)
    assert e.updates == 3 and torch.equal(e.state["weights"], attn[1, 2])
    q = e.state["query"]
    best = int(attn[1, 2, q].argmax())
    assert e.state["top"][0][0] == best
    assert abs(sum(w for _, w in e.state["top"]) - float(attn[1, 2, q].topk(3).values.sum())) < 1e-6


def test_head_view_clicking_a_byte_makes_it_the_query():
    e, attn, text = _view(query=3)
    e.byte_panel()
    assert len(e.buttons) == len(text)
    e.buttons[12].click()
    assert e.state["query"] == 12 and e.controls["query"].value == 12
    assert e.buttons[12].layout.border.startswith("2px solid red")
    assert "attends to" in e.buttons[7].tooltip
    e.controls["head"].value = 1  # repaint: the colours follow the new head's row
    assert e.buttons[12].style.button_color is not None


def test_head_view_accepts_the_models_list_and_refuses_mismatches():
    attn = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]
    e = HeadView(attn, list(b"ab\nc"))
    assert e.attn.shape == (3, 2, 4, 4) and e.tokens == ["a", "b", "\n", "c"] and e.state["query"] == 3
    with pytest.raises(ValueError, match="5 labels"):
        HeadView(attn, list("abcde"))
    with pytest.raises(ValueError, match="L, H, T, T"):
        HeadView(torch.ones(2, 4, 4), list("abcd"))
    assert byte_labels([104, 0xC3, 10]) == ["h", "\\xc3", "\n"]


def test_head_view_still_figure_without_a_front_end(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("ATTNKIT_WIDGETS", "0")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    e, _, _ = _view()
    e.show()
    assert len(shown) == 1 and type(shown[0]).__name__ == "Figure" and e.buttons is None


def test_head_view_live_shows_the_clickable_text(monkeypatch):
    monkeypatch.setenv("ATTNKIT_WIDGETS", "1")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    e, _, _ = _view()
    e.show()
    assert shown[-1] is e.widget and len(e.buttons) > 0
    e.controls["query"].value = 4  # re-renders into the Output widget without error
    assert e.updates == 1
