"""The checkers as the grader runs them: the learner's function behind a data-only proxy
(tests/remote_loopback.py). A correct function passes, a known mistake gets its named hint,
the shortcut ban and the generic watchers are observed on the far side, an input changed in
place fails, and the proxy refuses anything that is not plain data."""

import pytest
import torch

from attnkit import _remote, _spy
from attnkit.checks import (check_causal_mask, check_dot_product_scores, check_scaled_dot_product_attention,
                            check_softmax)
from remote_loopback import remote


def softmax(x, dim=-1):
    m = x.amax(dim, keepdim=True)
    e = torch.exp(x - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    s = e.sum(dim, keepdim=True)
    return e / torch.where(s == 0, torch.ones_like(s), s)


def softmax_over_queries(x, dim=-1):  # a classic mistake: normalise over the other axis
    return softmax(x, 0 if x.ndim > 1 and dim in (-1, x.ndim - 1) else -1)


def dot_product_scores(q, k):
    return q @ k.transpose(-2, -1)


def test_a_correct_function_passes_through_the_proxy():
    with remote(dot_product_scores) as proxy:
        assert isinstance(proxy, _remote.Remote)
        assert "passed" in check_dot_product_scores(proxy)
    with remote(softmax) as proxy:
        assert "passed" in check_softmax(proxy)


def test_a_known_mistake_gets_its_hint_through_the_proxy():
    with remote(softmax_over_queries, "softmax") as proxy:
        with pytest.raises(AssertionError, match="dim"):
            check_softmax(proxy)


def test_the_shortcut_ban_is_observed_in_the_kernel():
    def lazy(x, dim=-1):
        return torch.softmax(x, dim)
    with remote(lazy, "softmax") as proxy:
        with pytest.raises(AssertionError, match="torch.softmax"):
            check_softmax(proxy)


def test_an_input_changed_in_place_fails_and_is_never_written_back():
    def sneaky(q, k):
        q.zero_()
        return q @ k.transpose(-2, -1)
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    before = q.clone()
    with remote(sneaky, "dot_product_scores") as proxy:
        with pytest.raises(_remote.InputChanged):
            proxy(q, k)
        with pytest.raises(AssertionError, match="changed its input in place"):
            check_dot_product_scores(proxy)
    assert torch.equal(q, before)


def test_a_stub_is_reported_as_not_implemented():
    def stub(n_q, n_k):
        raise NotImplementedError
    with remote(stub, "causal_mask") as proxy:
        with pytest.raises(AssertionError, match="not implemented yet"):
            check_causal_mask(proxy)


class _CountingWatcher(_spy.Watcher):
    """Counts the matmuls of the watched call (a checker's own kind of watch)."""

    def __init__(self, seen=0):
        self.seen = seen
        self._mode = None

    def params(self):
        return {}

    def start(self):
        from torch.overrides import TorchFunctionMode
        watcher = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if not _spy._PAUSE[0] and "matmul" in getattr(func, "__name__", ""):
                    watcher.seen += 1
                return func(*args, **(kwargs or {}))
        self._mode = Mode()
        self._mode.__enter__()

    def stop(self):
        self._mode.__exit__(None, None, None)

    def report(self):
        return {"seen": self.seen}

    def absorb(self, report):
        self.seen += int(report.get("seen", 0))


def test_a_checkers_own_watcher_is_recreated_in_the_kernel_and_reports_back():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with remote(dot_product_scores) as proxy:
        with _CountingWatcher() as w:
            out = proxy(q, k)
    assert torch.allclose(out, q @ k.transpose(-2, -1)) and w.seen == 1


def test_sdpa_checker_works_remotely_with_masks_and_weights():
    def sdpa(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = softmax(s, -1)
        return w @ v, w
    with remote(sdpa, "scaled_dot_product_attention") as proxy:
        assert "passed" in check_scaled_dot_product_attention(proxy)


def test_the_proxy_sends_only_plain_data():
    with remote(dot_product_scores) as proxy:
        with pytest.raises(_remote._wire.WireError, match="cannot be sent"):
            proxy(object(), torch.randn(2, 2))
