"""Every checker accepts correct implementations written differently from the reference,
rejects known-wrong ones with the hint that names the mistake, and rejects shortcuts."""

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import checks
from attnkit.checks import CHECKS

# ---------------------------------------------------------------- correct, written differently
# (exercises with a mutant library, tests/library_*.py, keep their correct styles and mutants there)


def softmax_loopish(x, dim=-1):
    m = torch.nan_to_num(x.max(dim, keepdim=True).values, neginf=0.0)
    e = torch.exp(x - m)
    s = e.sum(dim, keepdim=True)
    return torch.where(s == 0, torch.zeros_like(e), e / s)


def test_every_exercise_has_a_checker_and_correct_alternatives():
    from test_efficient_checks import CORRECT as EFFICIENT
    from test_triton_flash import CORRECT as TRITON_FLASH
    from test_triton_softmax import CORRECT as TRITON_SOFTMAX
    from test_modern_checks import CORRECT as MODERN
    from test_beyond_checks import CORRECT as BEYOND
    from library import libraries
    in_libraries = {e.name for e in libraries() if e.correct}
    assert set(CHECKS) == (in_libraries | {name for name, _ in EFFICIENT + TRITON_SOFTMAX + TRITON_FLASH
                                           + MODERN + BEYOND if name in CHECKS}) & set(CHECKS)
    for name, checker in CHECKS.items():
        assert checker is getattr(checks, f"check_{name}")
        assert callable(getattr(attnkit, name))


# ---------------------------------------------------------------- shortcuts


def _shortcut_cases():
    return [
        ("dot_product_scores", attnkit.dot_product_scores, "attnkit"),
        ("dot_product_scores", lambda q, k: attnkit.similarity.dot_product_scores(q, k), "attnkit"),
        ("softmax", lambda x, dim=-1: torch.softmax(x, dim), "torch.softmax"),
        ("softmax", lambda x, dim=-1: F.softmax(x, dim=dim), "softmax"),
        ("softmax", lambda x, dim=-1: x.softmax(dim), "softmax"),
        ("softmax", lambda x, dim=-1: torch.nn.Softmax(dim)(x), "softmax"),
        ("softmax", lambda x, dim=-1: torch.exp(F.log_softmax(x, dim)), "log_softmax"),
        ("softmax", lambda x, dim=-1: torch.ops.aten._softmax(x, dim, False), "aten._softmax"),
        ("softmax", attnkit.softmax, "attnkit"),
        ("scaled_dot_product_attention",
         lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None),
         "scaled_dot_product_attention"),
        ("scaled_dot_product_attention", attnkit.scaled_dot_product_attention, "attnkit"),
        ("causal_mask", attnkit.causal_mask, "attnkit"),
        ("padding_mask", lambda l, n: attnkit.padding_mask(l, n), "attnkit"),
        ("split_heads", attnkit.split_heads, "attnkit"),
        ("merge_heads", attnkit.merge_heads, "attnkit"),
        ("multi_head_attention", attnkit.multi_head_attention, "attnkit"),
        ("multi_head_attention", _mha_via_torch_module, "MultiheadAttention"),
    ]


def _mha_via_torch_module(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    D = x.shape[-1]
    m = torch.nn.MultiheadAttention(D, n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat((w_q, w_k, w_v)))
        m.out_proj.weight.copy_(w_o)
    return m(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("name,fn,word", _shortcut_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_checker_rejects_shortcuts(name, fn, word):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    message = str(info.value)
    assert "calls" in message and word in message, message


def test_spy_does_not_leak_after_a_check():
    checks.check_softmax(softmax_loopish)
    import sys
    assert sys.getprofile() is None
    torch.softmax(torch.zeros(3), 0)  # no mode left active: plain torch works as before
    from torch.overrides import _get_current_function_mode_stack
    assert not _get_current_function_mode_stack()


# ---------------------------------------------------------------- known-wrong implementations


def _stub(*args, **kwargs):
    raise NotImplementedError


WRONG = [
    # (exercise, wrong implementation, words the hint must contain)
    ("dot_product_scores", _stub, "not implemented"),
]


def test_every_checker_has_at_least_three_known_wrong_implementations():
    from test_efficient_checks import WRONG as EFFICIENT_WRONG
    from test_triton_flash import WRONG as TRITON_FLASH_WRONG
    from test_triton_softmax import WRONG as TRITON_SOFTMAX_WRONG
    from test_modern_checks import WRONG as MODERN_WRONG
    from test_beyond_checks import WRONG as BEYOND_WRONG
    everything = WRONG + EFFICIENT_WRONG + TRITON_SOFTMAX_WRONG + TRITON_FLASH_WRONG + MODERN_WRONG + BEYOND_WRONG
    counts = {name: sum(1 for n, f, _ in everything if n == name and f is not _stub) for name in CHECKS}
    from library import libraries
    for exercise in libraries():
        if exercise.name in counts:
            counts[exercise.name] += len(exercise.mutants)
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("name,fn,words", WRONG, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG])
def test_checker_rejects_known_wrong_with_the_right_hint(name, fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS[name](fn)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(name + ":"), first_line
    assert words in first_line, first_line


def test_checker_rejects_non_callable():
    with pytest.raises(TypeError, match="no parentheses"):
        checks.check_softmax(softmax_loopish(torch.zeros(3)))


def test_checker_keeps_the_learners_traceback():
    def broken(x, dim=-1):
        return x.undefined_method()

    with pytest.raises(AssertionError) as info:
        checks.check_softmax(broken)
    assert "AttributeError" in str(info.value)
    assert isinstance(info.value.__cause__, AttributeError)
