"""Checkers of notebooks 09 and 09b beyond their mutant library (tests/library_efficient.py, run by
tests/test_checker_library.py): the references are refused, the watchers see block sizes and
skipped tiles through the grader's data-only proxy as well as locally, and the watchers leave
what they watch alone."""

import pytest
import torch

import attnkit
from attnkit.checks import CHECKS
from attnkit.checks.efficient import RowReductions, ScoreTiles, _reduced_lengths
from library_efficient import EXERCISES
from remote_loopback import remote

NAMES = ["online_softmax", "flash_attention_forward", "flash_attention_backward", "sliding_window_mask",
         "linear_attention"]

# The library as the (name, fn) and (name, fn, hint) lists tests/test_checks.py counts.
CORRECT = [(ex.name, fn) for ex in EXERCISES for fn in ex.correct]
WRONG = [(ex.name, m.fn, m.hint) for ex in EXERCISES for m in ex.mutants]
LIBRARY = {ex.name: ex for ex in EXERCISES}


def _mutant(exercise, name):
    return next(m for m in LIBRARY[exercise].mutants if m.name == name)


@pytest.mark.parametrize("name", NAMES)
def test_checker_rejects_the_reference(name):
    with pytest.raises(AssertionError, match="calls"):
        CHECKS[name](getattr(attnkit, name))


@pytest.mark.parametrize("exercise,mutant", [
    ("online_softmax", "max and sum of the whole row at once: block_size ignored"),
    ("flash_attention_forward", "ignores block_q: all queries against each key block"),
    ("flash_attention_forward", "block_q and block_k swapped"),
    ("flash_attention_forward", "never skips key blocks entirely in the future"),
    ("flash_attention_forward", "written for 4-D input only"),
    ("flash_attention_backward", "no guard for lse = -inf"),
])
def test_a_mistake_only_a_watcher_sees_is_named_through_the_graders_proxy(exercise, mutant):
    m = _mutant(exercise, mutant)
    with remote(m.fn, exercise) as proxy:
        with pytest.raises(AssertionError) as info:
            CHECKS[exercise](proxy)
    assert m.hint in str(info.value).splitlines()[0], str(info.value)


@pytest.mark.parametrize("exercise", NAMES)
def test_every_correct_style_passes_through_the_graders_proxy(exercise):
    for fn in LIBRARY[exercise].correct:
        with remote(fn, exercise) as proxy:
            assert "passed" in CHECKS[exercise](proxy)


def test_the_tile_watcher_records_tiles_and_masked_tiles_only():
    q, k = torch.randn(2, 3, 12, 5), torch.randn(2, 3, 20, 5)
    with ScoreTiles([1, 2, 3, 6, 5]) as tiles:
        s = q[..., :4, :] @ k[..., 8:16, :].transpose(-2, -1)  # a (4, 8) tile
        s.masked_fill(torch.ones(4, 8, dtype=torch.bool), float("-inf"))  # entirely masked
        torch.full((4, 8), float("-inf"))  # made that way: not a masked tile
        q.amax(-1)  # (2, 3, 12): the last two sizes include a leading dim
        torch.zeros(4, 20).masked_fill(torch.ones(4, 20, dtype=torch.bool), float("-inf"))  # masked, not a tile
    assert tiles.tiles == {(4, 8)} and tiles.masked == {(4, 8), (4, 20)} and tiles.masked_tiles == {(4, 8)}
    again = ScoreTiles(**tiles.params())
    again.absorb(tiles.report())
    assert again.tiles == tiles.tiles and again.masked == tiles.masked


def test_the_reduction_watcher_counts_whole_rows_only():
    x = torch.randn(3, 10)
    with RowReductions(10) as watch:
        x[:, :4].amax(-1)
        torch.maximum(x[:, 0], x[:, 1])
        torch.max(x[:, :4], x[:, 4:8])  # elementwise
        x[:, 4:8].sum(dim=-1)
    assert watch.count == 0
    with watch:
        x.max(dim=1)
        x.sum()
    assert watch.count == 2 and watch.calls == ["torch.Tensor.max", "torch.Tensor.sum"]
    assert _reduced_lengths("torch.logsumexp", (x,), {"dim": (0, 1)}) == [3, 10]
    assert _reduced_lengths("torch.Tensor.add", (x, 1), {}) == []


def test_watching_leaves_the_learners_results_and_the_ban_alone():
    q, k, v = (torch.randn(2, 40, 5) for _ in range(3))
    want = attnkit.flash_attention_forward(q, k, v, True, 16, 8)
    with ScoreTiles([1, 2, 5]) as tiles:
        got = attnkit.flash_attention_forward(q, k, v, True, 16, 8)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert max(r for r, _ in tiles.tiles) == 16 and max(c for _, c in tiles.tiles) == 8 and not tiles.masked_tiles


def test_a_report_that_is_not_what_a_watcher_sends_is_ignored():
    tiles, rows = ScoreTiles([1]), RowReductions(10)
    tiles.absorb({"tiles": [["4", 8], [4], "x", [2, 3]], "masked": {"a": 1}})
    rows.absorb({"count": "many", "calls": "torch.sum"})
    assert tiles.tiles == {(2, 3)} and not tiles.masked and rows.count == 0 and rows.calls == []
