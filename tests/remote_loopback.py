"""A checker run as the grader runs it, in one process: the learner's function behind a proxy.

Under the grader the checkers run in the examiner and the learner's function in the learner's
kernel; every call crosses the data-only channel (``attnkit._wire``) to the kernel's agent
(``attnkit._agent``). ``remote(fn)`` gives the same path without a kernel: the function sits in
a namespace an ``Agent`` serves, and the proxy's requests reach it through strict JSON and
byte buffers, exactly what the wire carries. A checker must work on such a proxy: only plain
data in and out, no local-only tricks on the learner's function or its results.
"""

import contextlib
import json

from attnkit import _agent, _remote, _spy, _wire


class Loopback:
    def __init__(self, namespace: dict, exercises=()):
        self.agent = _agent.Agent(namespace, tuple(exercises))

    def request(self, header: dict, buffers: list):
        header = json.loads(_wire.dumps(header))  # strict JSON, as the channel carries it
        with _far_side():
            reply, data = self.agent.handle(header, [bytes(memoryview(b)) for b in buffers])
        return json.loads(_wire.dumps(reply)), [bytes(memoryview(b)) for b in data]


@contextlib.contextmanager
def _far_side():
    """What the examiner has switched on is not in the learner's kernel: its watchers, their
    torch function modes and profile hook, the pause of its own transport code."""
    import sys

    from torch.overrides import _get_current_function_mode_stack, _pop_mode, _push_mode

    saved = (_spy._PAUSE[0], list(_spy.ACTIVE), sys.getprofile())
    modes = [_pop_mode() for _ in range(len(_get_current_function_mode_stack()))]
    _spy._PAUSE[0] = 0
    _spy.ACTIVE.clear()
    sys.setprofile(None)
    try:
        yield
    finally:
        for mode in reversed(modes):
            _push_mode(mode)
        _spy._PAUSE[0], sys_profile = saved[0], saved[2]
        _spy.ACTIVE[:] = saved[1]
        sys.setprofile(sys_profile)


@contextlib.contextmanager
def remote(fn, name: str | None = None):
    """``with remote(fn) as proxy:`` a proxy for ``fn`` served over the loopback channel."""
    name = name or getattr(fn, "__name__", "fn")
    _remote.set_transport(Loopback({name: fn}, (name,)))
    try:
        yield _remote.lookup([name])[name]
    finally:
        _remote.release()
        _remote.set_transport(None)
