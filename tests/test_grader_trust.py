"""The grader's trust model, attacked the way a determined student who read our source would.

The property: no code a student submits can change its own score or anyone else's, read a
hidden test, or touch the host outside its own workspace; its worst case is a failed or low
row for itself. One batch holds every attack of the grader-trust issue (and more), graded two
at a time with the sandbox on; each test then reads its row. The reference rows are `right`
(full marks) and `wrong` (the transposed answer: 0): an attack built on a wrong answer must
earn no more than `wrong`, an attack built on a right answer must still earn `right`'s score
(the attack failed, nothing broke), and the honest neighbours graded next to the
resource-hungry students must be graded as usual.
"""

import csv
import json
import os
import pathlib
import stat
import subprocess
import threading
import time

import nbformat
import pytest

from grader import autograde, course, grade, sandbox
from grader import notebooks as nbs
from grading_helpers import ASSIGNMENT, RIGHT, TRANSPOSED, answered, put, source

FULL = 3.0
BWRAP = sandbox.resolve_mode("auto") == "bwrap"
ROOT = os.geteuid() == 0
NAME = f"{ASSIGNMENT}.ipynb"
SLEEP = "4242.5"  # a sleep a student leaves behind: must not survive
BOMB = "4343.5"  # the process bomb's sleeps


def _after(nb, code: str):
    nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb


def _sabotage(check: str) -> str:
    """A right answer that turns wrong if ``check`` (code setting `leak`) finds something."""
    return f"leak = False\n{check}\n" + RIGHT.replace("    return", "    assert not leak, 'leak'\n    return")


HIDDEN_SCAN = """
import gc, linecache, base64, glob, os
_hay = []
for _name in ("In", "_ih", "Out", "_oh"):
    _hay.append(repr(globals().get(_name)))
_hay.append(repr(linecache.cache))
try:
    _hist = get_ipython().history_manager
    _hay.append(repr(list(_hist.get_range(raw=True))))
except Exception:
    pass
for _o in gc.get_objects():
    if isinstance(_o, (list, dict, tuple)):
        continue
    if isinstance(_o, str) and len(_o) < 100_000:
        _hay.append(_o)
for _p in [p for d in ("/home", "/tmp", "/run", "/dev/shm") for p in glob.glob(d + "/**/*.ipynb", recursive=True)][:200]:
    try:
        _hay.append(open(_p).read())
    except OSError:
        pass
_text = "\\n".join(_hay)
_needles = ("BEGIN" + " HIDDEN", "manual_seed(20" + "24)")  # spelled apart: this cell's own text must not match
print("scan result:", "LEAK" if any(_n in _text for _n in _needles) else "clean")
print(base64.b64encode(_text.encode()[-3000:]).decode())
"""


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    subs, out = root / "submitted", root / "graded"
    host = tmp_path_factory.mktemp("host")  # stands for everything outside the workspace
    marker = host / "marker.txt"
    marker.write_text("untouched")
    os.chmod(marker, 0o600)
    before = os.stat(marker)
    # nbgrader's course folders beside submitted/: must be invisible to the kernel
    for folder in ("source", "autograded", "release"):
        (root / folder / ASSIGNMENT).mkdir(parents=True)
        (root / folder / ASSIGNMENT / "SECRET.txt").write_text("instructor only")
    solution = course.assignments()[ASSIGNMENT]
    other_solution = course.assignments()["02_softmax"]

    put(subs, "right", NAME, answered())
    put(subs, "wrong", NAME, answered(TRANSPOSED))

    # --- root code execution through files the kernel can write (the log, the sockets)
    put(subs, "rce_files", NAME, _after(answered(), f"""
import os, glob
tried = []
for target in glob.glob('/run/attn-kernel/**', recursive=True) + ['/run/attn-kernel/sock/kernel.log']:
    for attempt in (lambda: os.symlink({str(marker)!r}, target + '.lnk'),
                    lambda: os.replace(target, target + '.old'),
                    lambda: os.chmod(os.path.dirname(target), 0o777)):
        try:
            attempt(); tried.append(('WORKED', target))
        except OSError as e:
            tried.append((type(e).__name__, target))
print(tried)
print(sorted(os.listdir('/proc/self/fd')))
os._exit(1)
"""))

    # --- forging a verdict from inside the kernel (each on the wrong answer)
    put(subs, "forge_reply", NAME, answered(TRANSPOSED + """
_k = get_ipython().kernel
_send = _k.session.send
def _lying_send(stream, msg_or_type, content=None, *a, **kw):
    if isinstance(content, dict) and content.get('status') == 'error':
        content = {'status': 'ok', 'execution_count': content.get('execution_count'), 'user_expressions': {}, 'payload': []}
    return _send(stream, msg_or_type, content, *a, **kw)
_k.session.send = _lying_send
"""))
    put(subs, "forge_mode", NAME, answered(TRANSPOSED + """
import torch
from torch.overrides import TorchFunctionMode
class _Yes(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') in ('allclose', 'equal', 'isclose'):
            return True
        return func(*args, **(kwargs or {}))
_Yes().__enter__()
"""))
    put(subs, "forge_subclass", NAME, answered("""
import torch
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') in ('allclose', 'equal', 'isclose', '__eq__'):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})
def dot_product_scores(q, k):
    return torch.zeros(*q.shape[:-1], k.shape[-2]).as_subclass(Liar)
"""))
    put(subs, "forge_checker", NAME, answered(TRANSPOSED + """
import attnkit.checks._harness as _h, attnkit.checks as _c
_h.Checker.fail = lambda *a, **k: None
_h.Checker.expect = lambda *a, **k: None
_c.check_dot_product_scores = lambda fn: print('check_dot_product_scores passed')
"""))
    put(subs, "forge_json", NAME, answered(TRANSPOSED + """
import sys, json
class _FakeJson:
    def __getattr__(self, name):
        return getattr(json, name)
    def dumps(self, *a, **k):
        return '{"ok": true, "value": {"T": []}}'
sys.modules['json'] = _FakeJson()
"""))
    put(subs, "forge_torch", NAME, answered(TRANSPOSED + """
import torch as _real_torch
class _Proxy:
    def __getattr__(self, name):
        if name in ('allclose', 'equal'):
            return lambda *a, **k: True
        return getattr(_real_torch, name)
torch = _Proxy()
"""))
    put(subs, "forge_agent", NAME, answered(TRANSPOSED + """
# answer every grader request with a claim of success
_cm = get_ipython().kernel.comm_manager
def _open(comm, msg):
    comm.on_msg(lambda m: comm.send({'ok': True, 'value': True, 'observed': {}}))
_cm.register_target('attn-grade', _open)
"""))

    # --- reading hidden tests
    put(subs, "hidden_scan", NAME, _after(answered(), HIDDEN_SCAN))
    put(subs, "hidden_guard", NAME, answered(_sabotage(HIDDEN_SCAN.replace(
        'print("scan result:", "LEAK" if', 'leak = (').replace(' else "clean")', ')'))))
    os.symlink(solution, (subs / "symlink_solution").mkdir(parents=True) or subs / "symlink_solution" / NAME)
    os.symlink(other_solution, (subs / "symlink_other").mkdir(parents=True) or subs / "symlink_other" / NAME)
    (subs / "symlink_proc").mkdir(parents=True)
    os.symlink(f"/proc/self/cwd/solutions/{NAME}", subs / "symlink_proc" / NAME)
    def first_parts(folder):  # the entries of folder on the way to Python's own folders
        return {p.relative_to(folder).parts[0] for p in sandbox.python_paths() if folder in p.parents}
    allowed_in_repo, allowed_in_root = {"attnkit"} | first_parts(course.REPO), first_parts(pathlib.Path("/root"))
    put(subs, "reads_course", NAME, answered(_sabotage(f"""
import os
for _p in ({str(root / 'source')!r}, {str(root / 'autograded')!r}, {str(root / 'release')!r}, {str(subs)!r},
           {str(solution.parent)!r}, {str(course.REPO / 'grader')!r}, {str(course.REPO / 'tests')!r}, {str(host)!r},
           '/root/.bashrc', '/root/.ssh', '/etc/shadow', '/etc/ssh', '/var', '/srv', '/opt', '/mnt'):
    if os.path.exists(_p):
        leak = True
# what is there of /root and the repository is the way to Python (a venv inside them) and attnkit
if os.path.isdir('/root') and set(os.listdir('/root')) - {allowed_in_root!r}:
    leak = True
if set(os.listdir({str(course.REPO)!r})) - {allowed_in_repo!r}:
    leak = True
""")))
    put(subs, "touches_host", NAME, answered(_sabotage(f"""
import os
for _try in (lambda: open({str(marker)!r}, 'a').write('pwned'), lambda: os.chmod({str(marker)!r}, 0o777),
             lambda: os.symlink('/etc/passwd', {str(host / 'link')!r})):
    try:
        _try(); leak = True
    except OSError:
        pass
""")))

    # --- harming the neighbours: a thread/process bomb and a disk filler, each graded at the
    # same time as an honest student (jobs=2 and alphabetical order pair them)
    put(subs, "a1_bomb", NAME, _after(answered(), """
import threading, time, os
threads = []
try:
    while True:
        t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start(); threads.append(t)
except (RuntimeError, MemoryError) as e:
    print('threads:', len(threads), e)
pids = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            os.execvp('sleep', ['sleep', '""" + BOMB + """'])
        pids.append(pid)
except OSError as e:
    print('processes:', len(pids), e)
time.sleep(6)
"""))
    put(subs, "a2_neighbour", NAME, answered())
    put(subs, "b1_fill", NAME, _after(answered(), """
import os, time
written = 0
for folder in (os.path.expanduser('~'), '/tmp', '/dev/shm'):
    try:
        with open(os.path.join(folder, 'fill'), 'wb') as f:
            while True:
                f.write(b'x' * (1 << 20)); written += 1 << 20
    except OSError as e:
        print(folder, written >> 20, 'MiB', e)
time.sleep(6)
"""))
    put(subs, "b2_neighbour", NAME, answered())

    # --- intake that must never lose a class or refuse correct work
    (subs / os.fsdecode(b"caf\xe9")).mkdir()
    nbformat.write(answered(), subs / os.fsdecode(b"caf\xe9") / NAME)
    surrogate = answered()
    surrogate.cells.insert(1, nbformat.v4.new_markdown_cell("my notes"))
    text = nbformat.writes(surrogate).replace("my notes", "my notes \\ud800")
    put(subs, "surrogate", NAME, text=text)
    v3 = nbformat.convert(answered(), 3)
    put(subs, "nbformat3", NAME, text=nbformat.writes(v3, version=3))
    put(subs, "deep_json", NAME, text='{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    put(subs, "slow_builtins", NAME, answered(RIGHT + """
import builtins, time
class _Slow:
    def __call__(self, *a, **k):
        return None
    def __getattr__(self, name):
        time.sleep(60)
builtins.evil = _Slow()
"""))
    put(subs, "slow_answer", NAME, answered("""
import time
class _Slow:
    def __call__(self, *a, **k):
        time.sleep(60)
    def __getattr__(self, name):
        time.sleep(60)
dot_product_scores = _Slow()
"""))
    images = answered()
    for _ in range(50):
        images.cells.append(nbformat.v4.new_code_cell(
            "import matplotlib; matplotlib.use('Agg')\nimport matplotlib.pyplot as plt, numpy as np\n"
            "from IPython.display import Image, display\nimport io\n"
            "for _i in range(5):\n    _b = io.BytesIO(); plt.figure(figsize=(6, 6)); plt.imshow(np.random.rand(300, 300));"
            " plt.savefig(_b, format='png'); plt.close(); display(Image(_b.getvalue()))"))
    put(subs, "many_images", NAME, images)
    put(subs, "leaves_process", NAME, answered(RIGHT + f"\nimport subprocess\nsubprocess.Popen(['sleep', '{SLEEP}'])\n"))

    settings = autograde.Settings(jobs=2, limits=grade.Limits(cell_timeout=15, notebook_timeout=120,
                                                             memory_bytes=int(2.5 * 2**30)), progress=False)
    sampler = _FdSampler()
    sampler.start()
    started = time.monotonic()
    try:
        results = autograde.autograde(subs, ASSIGNMENT, out, settings)
    finally:
        sampler.stop()
    seconds = time.monotonic() - started
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return dict(rows=rows, results={r.student_id: r for r in results}, out=out, subs=subs, marker=marker,
                before=before, host=host, seconds=seconds, fd_samples=sampler.samples,
                fd_violations=sampler.violations)


class _FdSampler(threading.Thread):
    """Samples, from /proc, which of this process's pipes and sockets its forked workers hold."""

    def __init__(self):
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.samples, self.violations = 0, []

    @staticmethod
    def _targets(pid, skip=()):
        out = {}
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if int(fd) in skip:
                    continue
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(("pipe:", "socket:")):
                    out[int(fd)] = target
        except OSError:
            pass
        return out

    def run(self):
        me = os.getpid()
        before = set(self._targets(me).values())  # the streams pytest holds: not the grader's
        previous: set = set()
        while not self.done.wait(0.2):
            mine = set(self._targets(me).values()) - before  # the channels grading made
            try:
                children = {int(c) for t in os.listdir(f"/proc/{me}/task")
                            for c in open(f"/proc/{me}/task/{t}/children").read().split()}
            except OSError:
                continue
            holders: dict[str, list[int]] = {}
            for child in children:
                try:
                    if "grader.examiner" in open(f"/proc/{child}/cmdline").read():
                        continue  # the zygote: it holds the control socket by design
                except OSError:
                    continue
                held = set(self._targets(child, skip=(0, 1, 2)).values()) & mine
                self.samples += bool(held)
                for channel in held:
                    holders.setdefault(channel, []).append(child)
            # each worker shares one channel with the parent, its own result pipe: a channel two
            # workers hold is one worker reaching another's. Counted when seen in two samples in a
            # row: a worker just forked holds its siblings' channels for the instant before it
            # closes them (first thing it does), which is not a leak.
            shared = {(channel, tuple(sorted(pids))) for channel, pids in holders.items() if len(pids) > 1}
            self.violations += sorted(shared & previous)
            previous = shared

    def stop(self):
        self.done.set()
        self.join(5)


def score(batch, student):
    r = batch["rows"][student]
    assert r["status"] == "graded", r
    return float(r["score"])


def test_reference_rows(batch):
    assert score(batch, "right") == FULL and score(batch, "wrong") == 0.0


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here")
def test_no_file_the_kernel_can_write_is_followed_by_the_grader(batch):
    # the student tried to plant links where the grader writes and then killed its kernel
    assert score(batch, "rce_files") == FULL  # restarted, replayed, graded as usual
    st = os.stat(batch["marker"])
    assert batch["marker"].read_text() == "untouched"
    assert (st.st_uid, st.st_mode) == (batch["before"].st_uid, batch["before"].st_mode)
    assert sorted(p.name for p in batch["host"].iterdir()) == ["marker.txt"]


@pytest.mark.parametrize("student", ["forge_reply", "forge_mode", "forge_subclass", "forge_checker", "forge_json",
                                     "forge_torch", "forge_agent"])
def test_forging_a_verdict_earns_nothing(batch, student):
    assert score(batch, student) <= score(batch, "wrong"), batch["rows"][student]


@pytest.mark.parametrize("student", ["symlink_solution", "symlink_other", "symlink_proc"])
def test_linked_notebooks_are_never_read(batch, student):
    r = batch["rows"][student]
    assert r["status"] == "failed" and "symbolic link" in r["reason"], r


def _hidden_lines():
    lines = [line for c in source().cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    assert lines
    return lines


def test_hidden_tests_never_reach_the_kernel(batch):
    assert score(batch, "hidden_guard") == FULL
    page = (batch["out"] / "feedback" / "hidden_scan" / f"{ASSIGNMENT}.html").read_text()
    assert "scan result: clean" in page and "scan result: LEAK" not in page


def test_feedback_never_shows_hidden_tests(batch):
    import base64
    import html
    hidden = _hidden_lines()
    for page in (batch["out"] / "feedback").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for line in hidden:
            assert line not in text and html.escape(line) not in text, (page, line)
            assert base64.b64encode(line.encode()).decode()[:24] not in text, (page, line)


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here")
@pytest.mark.parametrize("student", ["reads_course", "touches_host"])
def test_the_kernel_sees_an_allowlist_and_writes_only_its_workspace(batch, student):
    assert score(batch, student) == FULL, batch["rows"][student]
    assert batch["marker"].read_text() == "untouched"


@pytest.mark.skipif(not (BWRAP and ROOT), reason="a uid per kernel needs root and bubblewrap")
@pytest.mark.parametrize("pair", [("a1_bomb", "a2_neighbour"), ("b1_fill", "b2_neighbour")])
def test_one_student_cannot_starve_another(batch, pair):
    hog, neighbour = pair
    assert score(batch, neighbour) == FULL, batch["rows"][neighbour]
    assert batch["rows"][neighbour]["reason"] == ""
    assert score(batch, hog) == FULL, batch["rows"][hog]  # its own limits stopped it; its answers still count


def test_any_folder_name_gets_its_row_and_the_csv_is_written(batch):
    ids = set(batch["rows"])
    assert "caf\\xe9" in ids and score(batch, "caf\\xe9") == FULL
    folders = {p.name for p in batch["subs"].iterdir() if p.is_dir() or p.is_symlink()}
    assert len(batch["rows"]) == len(folders)


@pytest.mark.parametrize("student", ["surrogate", "nbformat3"])
def test_correct_notebooks_in_odd_encodings_are_graded(batch, student):
    assert score(batch, student) == FULL, batch["rows"][student]


def test_deep_json_is_refused_in_one_line(batch):
    r = batch["rows"]["deep_json"]
    assert r["status"] == "failed" and "deep" in r["reason"] and "Recursion" not in r["reason"], r


def test_slow_objects_cost_only_their_owner_time(batch):
    assert score(batch, "slow_builtins") == FULL
    assert score(batch, "slow_answer") == 0.0
    assert batch["results"]["slow_answer"].seconds < 120 + 30
    assert batch["results"]["slow_builtins"].seconds < 60


def test_feedback_pages_are_capped(batch):
    page = batch["out"] / "feedback" / "many_images" / f"{ASSIGNMENT}.html"
    assert page.stat().st_size <= 5_000_000
    assert score(batch, "many_images") == FULL


def test_nothing_is_left_running(batch):
    ps = subprocess.run(["ps", "-eo", "uid,args"], capture_output=True, text=True).stdout
    assert f"sleep {SLEEP}" not in ps and f"sleep {BOMB}" not in ps


def test_forked_workers_keep_only_their_own_channels(batch):
    """While the batch ran, no worker held another worker's result pipe (nor the zygote's
    control socket): each worker's descriptors were sampled from /proc as it ran."""
    assert batch["fd_samples"] > 0, "no worker was caught running: the sampler saw nothing"
    assert not batch["fd_violations"], batch["fd_violations"][:3]


def test_worker_results_are_plain_checked_data():
    total = 3.0
    forged = {"status": "graded", "score": 1e9, "reason": "x" * 5000, "tests": [["t", 1e9, 1, "ok", ""], "junk"],
              "student_id": "someone_else"}
    r = grade.Result.from_data("me", forged, total)
    assert r.student_id == "me" and r.score == total and len(r.reason) <= 1000
    assert grade.Result.from_data("me", {"status": "graded", "score": float("nan")}, total).score is None
    assert autograde._result_from({"data": bytearray(b"\x80\x04pickle"), "pid": -1, "sid": "me"}, total).status == "failed"


def test_examiner_refuses_anything_but_plain_data():
    import torch

    from attnkit import _remote, _wire

    tree, enc = _wire.encode({"x": torch.arange(6.0).view(2, 3).t(), "n": float("nan"), "s": "\ud800"})
    header = json.loads(_wire.dumps(enc.header(value=tree)))
    value = _wire.Decoder(header, enc.buffers).decode(header["value"])
    assert torch.equal(value["x"], torch.arange(6.0).view(2, 3).t()) and value["n"] != value["n"]
    bad = [
        {"value": {"t": {"s": 0, "dtype": "float32", "shape": [10], "stride": [1], "offset": 0}},
         "storages": [{"buf": 0, "device": "cpu"}]},  # a view past its storage
        {"value": {"dc": ["os:system", {"D": []}]}},  # not one of attnkit's dataclasses
        {"value": {"pickle": "gASVAAAAAAAAAAB9lC4="}},  # an unknown tag
        {"value": {"h": [1, "x", "function", "f", None]}},  # a handle where only data may be
    ]
    for h in bad:
        with pytest.raises(_wire.WireError):
            _wire.Decoder(h, [b"\x00" * 8]).decode(h["value"])
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(_wire.WireError):
        _wire.loads(('{"value": ' + deep + "}").encode())
    err = _remote.remote_exception({"type": "SystemExit", "message": "bye"})
    assert isinstance(err, Exception) and not isinstance(err, SystemExit)
    assert isinstance(_remote.remote_exception({"type": "NotImplementedError", "message": ""}), NotImplementedError)
