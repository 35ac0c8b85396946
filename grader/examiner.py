"""The examiner: where test cells run and verdicts are decided, with no learner code in it.

A graded notebook has two kinds of cells. The learner's (answers, added cells) and the
instructor's setup cells run in the learner's kernel, as they would in the notebook. The test
cells, hidden tests included, never enter that kernel: they run here, in an examiner process
of the grader's, with the grader's own ``torch``, ``attnkit`` and checkers. A name a test uses
resolves as follows (see :func:`plan`):

* imports anywhere in the source notebook, and the setup definitions the tests need
  (``DEVICE = ...``, a helper function) run here first, from the instructor's source;
* names the test cells bind stay here;
* everything else, the exercise functions first, is fetched from the learner's kernel as plain
  data or as a proxy (:mod:`attnkit._remote`) that calls into it over a data-only channel.

So hidden test source never reaches the learner's process, a tensor that lies to comparisons
arrives as plain numbers, and nothing the learner's process does can write a verdict: the
verdict is whether the test cell raised, here.

Processes. Examiners fork from a *zygote* that imported torch and the checkers once per
grading run (an examiner per student costs milliseconds, not seconds); the zygote runs in the
same sandbox as kernels (its own uid, no network, read-only allowlisted filesystem). Each
examiner serves one worker over one socket (:mod:`grader.channel`): the worker sends
``setup`` and ``run`` requests; during a run the examiner sends ``kernel`` requests that the
worker relays to the learner's kernel and answers with ``reply``.
"""

from __future__ import annotations

import argparse
import ast
import json
import builtins
import io
import os
import pathlib
import signal
import socket
import symtable
import sys
import time
from dataclasses import dataclass, field

from . import channel
from . import notebooks as nbs

GRACE = 10.0  # seconds an examiner may run past a cell's limit before it stops the cell itself


# ---------------------------------------------------------------------- the plan (worker side)
@dataclass
class Plan:
    """What the examiner of one assignment runs before the tests, and which names are whose."""

    prelude: list[tuple[str, str]] = field(default_factory=list)  # (label, source), notebook order
    trusted: list[str] = field(default_factory=list)  # names the prelude binds
    exercises: list[str] = field(default_factory=list)  # names the learner's answers define
    warm: list[str] = field(default_factory=list)  # import statements (run once in the zygote)

    def as_dict(self) -> dict:
        return {"prelude": [list(p) for p in self.prelude], "trusted": self.trusted, "exercises": self.exercises}


def global_refs(source: str) -> tuple[set[str], set[str]]:
    """``(referenced, bound)``: names ``source`` reads from the module's globals (at top level
    or from inside its functions, lambdas and comprehensions) and names it binds at top level."""
    table = symtable.symtable(source, "<cell>", "exec")
    referenced, bound = set(), set()
    for sym in table.get_symbols():
        if sym.is_referenced():
            referenced.add(sym.get_name())
        if sym.is_assigned() or sym.is_imported():
            bound.add(sym.get_name())
    stack = list(table.get_children())
    while stack:
        t = stack.pop()
        for sym in t.get_symbols():
            if sym.is_global() and (sym.is_referenced() or t.get_type() == "class"):
                referenced.add(sym.get_name())
        stack.extend(t.get_children())
    return referenced, bound


def _binds(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    targets = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and getattr(stmt, "value", None) is not None:
        targets = [stmt.target]
    names = set()
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                return set()  # changes an object in place: not a definition the tests may rely on
            if isinstance(node, ast.Name):
                names.add(node.id)
    return names


def _statements(source: str):
    """``(stmt, its source)`` for each top-level statement; nothing for code that does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    lines = source.split("\n")
    for stmt in tree.body:
        start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        yield stmt, "\n".join(lines[start - 1:stmt.end_lineno])


def plan(source) -> Plan:
    """The examiner's plan for the instructor's ``source`` notebook (never the learner's)."""
    test_refs: set[str] = set()
    exercises: set[str] = set()
    imports: list[tuple[int, str, str]] = []
    candidates: list[tuple[int, str, str, set, set]] = []
    order = 0
    for index, cell in enumerate(source.cells):
        if cell.cell_type != "code":
            continue
        if nbs.is_test(cell):
            try:
                refs, bound = global_refs(cell.source)
            except SyntaxError:
                continue
            test_refs |= refs - bound
            continue
        for stmt, text in _statements(cell.source):
            order += 1
            label = f"cell {index + 1}"
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                if not (isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"):
                    imports.append((order, label, text))
            elif nbs.is_solution(cell):
                exercises |= _binds(stmt)
            else:
                bound = _binds(stmt)
                if bound:
                    try:
                        refs, _ = global_refs(text)
                    except SyntaxError:
                        continue
                    candidates.append((order, label, text, bound, refs))
    needed = test_refs - exercises
    chosen: dict[int, tuple[str, str]] = {}
    changed = True
    while changed:
        changed = False
        for order_, label, text, bound, refs in candidates:
            if order_ not in chosen and bound & needed and not bound & exercises:
                chosen[order_] = (label, text)
                needed |= refs - exercises
                changed = True
    prelude = sorted([(o, label, text) for o, label, text in imports] +
                     [(o, *chosen[o]) for o in chosen])
    trusted: set[str] = set()
    for _, _, text in prelude:
        try:
            trusted |= global_refs(text)[1]
        except SyntaxError:
            pass
    return Plan(prelude=[(label, text) for _, label, text in prelude], trusted=sorted(trusted - exercises),
                exercises=sorted(exercises), warm=[text for _, _, text in imports])


# ---------------------------------------------------------------------- the examiner process
class _Capped(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int = 200_000):
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def value(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n[{self.dropped} characters of output dropped]\n"
        return out


class _Unavailable:
    """Stands for a setup name that could not be made in the examiner; any use says why."""

    def __init__(self, name: str, reason: str):
        object.__setattr__(self, "_why", f"{name} could not be set up by the grader: {reason}")

    def _fail(self, *args, **kwargs):
        raise RuntimeError(object.__getattribute__(self, "_why"))

    __call__ = __getitem__ = __iter__ = __bool__ = __len__ = _fail

    def __getattr__(self, name):
        self._fail()


class CellTimeout(BaseException):
    """The examiner's own time limit for a test cell (a BaseException: tests cannot swallow it)."""


class ChannelBroken(BaseException):
    """The worker's channel failed (closed, or a frame out of step): this examiner must stop.
    A BaseException, so no test's ``except Exception`` can swallow it and carry on reading."""


class _Transport:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rid = 0
        self.broken = False

    def request(self, header: dict, buffers: list):
        if self.broken:
            raise ChannelBroken("the channel to the worker is closed")
        self.rid += 1
        try:
            channel.send(self.sock, {"op": "kernel", "rid": self.rid, "request": header}, buffers)
            while True:
                reply, data = channel.recv(self.sock)
                if reply.get("op") == "reply" and reply.get("rid") == self.rid:
                    return reply.get("reply"), data
                if reply.get("op") != "reply":  # the worker never interleaves: the stream is not ours
                    raise channel.ChannelError(f"unexpected {reply.get('op')!r} during a request")
        except (EOFError, OSError, channel.ChannelError) as e:
            self.broken = True
            raise ChannelBroken(f"{type(e).__name__}: {e}") from None


def _hidden_lines(source: str) -> set[int]:
    hidden, inside = set(), False
    for number, line in enumerate(source.split("\n"), 1):
        if nbs.HIDDEN_BEGIN in line:
            inside = True
        if inside:
            hidden.add(number)
        if nbs.HIDDEN_END in line:
            inside = False
    return hidden


def _failing_line(exc: BaseException, filename: str, source: str) -> str:
    """The visible line of the test cell where ``exc`` was raised ('' for a hidden line)."""
    tb, line = exc.__traceback__, 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if not line or line in _hidden_lines(source):
        return ""
    return source.split("\n")[line - 1].strip()[:200]


class Session:
    """One examiner's state for one notebook: its namespace and the plan's name rules."""

    def __init__(self):
        self.ns: dict = {"__name__": "__main__", "__builtins__": builtins}
        self.trusted: set[str] = set()
        self.exercises: set[str] = set()
        self.fetched: dict[str, object] = {}

    def setup(self, prelude, trusted, exercises) -> list[str]:
        problems = []
        self.trusted, self.exercises = set(trusted), set(exercises)
        for label, text in prelude:
            try:
                exec(compile(text, f"<setup {label}>", "exec"), self.ns)
            except Exception as e:  # noqa: BLE001 - a setup line that cannot run here
                reason = f"{type(e).__name__}: {e}"
                problems.append(f"{label}: {reason}"[:300])
                try:
                    bound = global_refs(text)[1]
                except SyntaxError:
                    bound = set()
                for name in bound:
                    self.ns.setdefault(name, _Unavailable(name, reason))
        return problems

    def _names_to_fetch(self, source: str) -> list[str]:
        refs, bound = global_refs(source)
        wanted = []
        for name in sorted(refs):
            if name in self.exercises:
                wanted.append(name)
            elif name in bound or name in self.trusted or hasattr(builtins, name):
                continue
            elif name in self.ns and name not in self.fetched:
                continue  # bound by an earlier test cell
            else:
                wanted.append(name)
        return wanted

    def run(self, name: str, source: str, seconds: float) -> dict:
        from attnkit import _remote
        from attnkit.checks import _harness

        filename = f"<test {name}>"
        out = _Capped()
        started = time.monotonic()
        status, ename, evalue, line = "ok", "", "", ""
        for stale, value in self.fetched.items():
            if self.ns.get(stale) is value:
                del self.ns[stale]
        self.fetched = {}

        def expire(signum, frame):
            raise CellTimeout()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001) + GRACE)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        fraction = None
        try:
            code = compile(source, filename, "exec")
            wanted = self._names_to_fetch(source)
            if wanted:
                values = _remote.lookup(wanted)
                # only what was asked for, never a dunder, a builtin or a trusted name: the reply is the kernel's
                values = {k: v for k, v in values.items() if k in wanted and not k.startswith("__")}
                self.ns.update(values)
                self.fetched = dict(values)
            with _harness.partial_credit() as reports:
                try:
                    exec(code, self.ns)
                except _harness.CheckFailed:
                    # the cell stopped at a checker that ran every case: credit the cases that passed
                    passed, total = sum(r[1] for r in reports), sum(r[2] for r in reports)
                    fraction = passed / total if total else 0.0
                    raise
        except ChannelBroken:
            raise
        except CellTimeout:
            status, ename, evalue = "timeout", "TimeoutError", f"the test ran past its {seconds:.0f} s limit"
        except BaseException as e:  # noqa: BLE001 - the test's verdict
            status = "error"
            ename, evalue = ("AssertionError" if isinstance(e, _harness.CheckFailed) else type(e).__name__), str(e)
            if isinstance(e, _remote.GradingChannelError):
                ename = "GradingError"
            line = _failing_line(e, filename, source)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            sys.stdout, sys.stderr = saved
            _remote.release()
        if status == "error" and not evalue.strip():
            if ename == "AssertionError":
                evalue = f"a check failed: {line}" if line else "a check failed"
            elif line:
                evalue = f"(raised in: {line})"
        return {"op": "done", "status": status, "ename": ename[:100], "evalue": evalue[:4000],
                "stdout": out.value(), "seconds": time.monotonic() - started,
                "fraction": fraction if status == "error" else None}


def serve(sock: socket.socket) -> None:
    """The examiner's loop: answer the worker until it closes the socket. Any broken frame ends
    it: a stream out of step is never read again."""
    from attnkit import _remote

    transport = _Transport(sock)
    _remote.set_transport(transport)
    session = Session()
    while not transport.broken:
        try:
            header, _ = channel.recv(sock)
        except (EOFError, OSError, channel.ChannelError):
            return
        op = header.get("op")
        if op == "setup":
            problems = session.setup(header.get("prelude", []), header.get("trusted", []), header.get("exercises", []))
            channel.send(sock, {"op": "ready", "problems": problems})
        elif op == "run":
            try:
                done = session.run(str(header.get("name", "?")), str(header.get("source", "")),
                                   float(header.get("seconds", 60.0)))
            except ChannelBroken:
                return
            channel.send(sock, done)
        else:
            channel.send(sock, {"op": "error", "message": f"unknown request {op!r}"})


def _prctl(option: int, value: int) -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _harden(memory_bytes: int, uid: int | None = None) -> None:
    """An examiner's own limits: its uid (when the zygote may set one), no core dumps, no
    ptrace by other processes, no privileges regained through exec."""
    import resource

    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root: every capability goes with it
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
    _prctl(4, 0)  # PR_SET_DUMPABLE: no other process of this uid may attach
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _warm(statements: list[str]) -> None:
    """Import what every examiner of this run will need, once, before forking."""
    import attnkit  # noqa: F401
    import attnkit._remote  # noqa: F401
    import attnkit.checks  # noqa: F401
    import torch  # noqa: F401

    ns: dict = {}
    for text in statements:
        try:
            exec(compile(text, "<warm>", "exec"), ns)
        except Exception:  # noqa: BLE001 - the examiner reports it when it matters
            pass


def zygote(control: socket.socket, memory_bytes: int, warm: list[str]) -> None:
    """Fork one examiner per message on ``control`` (a SOCK_SEQPACKET socket: one message, one
    socket passed with SCM_RIGHTS and the uid the examiner takes), until it closes. The zygote
    reads nothing else and never handles a student's data."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    _prctl(4, 0)  # PR_SET_DUMPABLE: nothing may attach to the zygote
    _warm(warm)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 256, 1)
        except OSError:
            return
        if not message or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if not message:
                return
            continue
        fields = message.decode("ascii", "replace").split()
        uid = int(fields[1]) if len(fields) == 2 and fields[0] == "spawn" and fields[1].isdigit() else None
        fd = fds[0]
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                control.close()
                _harden(memory_bytes, uid)
                serve(socket.socket(fileno=fd))
            finally:
                os._exit(0)
        os.close(fd)


# ---------------------------------------------------------------------- the grader's side
class ExaminerGone(RuntimeError):
    """The examiner stopped answering (it crashed or ran far past its limit)."""


class Examiner:
    """A worker's connection to its examiner."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.uid = None
        self.pool = None

    def _recv(self, timeout: float) -> tuple[dict, list]:
        self.sock.settimeout(timeout)
        try:
            return channel.recv(self.sock)
        except (EOFError, OSError, channel.ChannelError) as e:
            raise ExaminerGone(f"{type(e).__name__}: {e}") from None

    def setup(self, the_plan: Plan, timeout: float = 300.0) -> list[str]:
        try:
            channel.send(self.sock, {"op": "setup", **the_plan.as_dict()})
        except OSError as e:
            raise ExaminerGone(str(e)) from None
        header, _ = self._recv(timeout)
        if header.get("op") != "ready":
            raise ExaminerGone(f"unexpected answer {header.get('op')!r}")
        return [str(p) for p in header.get("problems", [])][:20]

    def run(self, name: str, source: str, seconds: float, relay) -> dict:
        """Run one test cell; ``relay(header, buffers) -> (header, buffers)`` answers its
        requests for the learner's kernel. Returns the examiner's ``done`` message."""
        try:
            channel.send(self.sock, {"op": "run", "name": name, "source": source, "seconds": seconds})
        except OSError as e:
            raise ExaminerGone(str(e)) from None
        limit = seconds + GRACE + 30
        while True:
            header, buffers = self._recv(limit)
            op = header.get("op")
            if op == "done":
                fraction = header.get("fraction")
                fraction = min(max(float(fraction), 0.0), 1.0) if type(fraction) in (int, float) else None
                return {"status": header.get("status") if header.get("status") in ("ok", "error", "timeout")
                        else "error", "ename": str(header.get("ename", "")), "evalue": str(header.get("evalue", "")),
                        "stdout": str(header.get("stdout", "")), "fraction": fraction}
            if op != "kernel" or not isinstance(header.get("request"), dict):
                raise ExaminerGone(f"unexpected message {op!r}")
            reply, data = relay(header["request"], buffers)
            message = {"op": "reply", "rid": header.get("rid"), "reply": reply}
            problem = channel.check(message, data) if isinstance(reply, dict) else "a reply that is not an object"
            if problem:  # never forward what the examiner could not read in one piece
                message, data = {"op": "reply", "rid": header.get("rid"),
                                 "reply": {"channel_error": f"a malformed reply from your kernel: {problem}"}}, []
            try:
                channel.send(self.sock, message, data)
            except OSError as e:
                raise ExaminerGone(str(e)) from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class ExaminerPool:
    """The zygote of one grading run, and a way to get one examiner per student from it."""

    def __init__(self, policy, warm: list[str] = (), uids=None, memory_bytes: int = 4 * 2**30):
        import subprocess

        from . import sandbox

        self._start_args = (policy, list(warm), memory_bytes)
        # As root under bubblewrap the zygote keeps only the right to change uid, and every
        # examiner it forks takes a uid of its own from the pool: examiners cannot signal or
        # attach to one another, nor to the zygote.
        self.separate = policy.mode == "bwrap" and os.geteuid() == 0
        self.uids = (uids or sandbox.UidPool()) if self.separate else None
        self.held: dict[int, int] = {}  # examiner fd -> uid
        zpolicy = sandbox.Policy(mode=policy.mode, memory_bytes=max(memory_bytes, policy.memory_bytes),
                                 max_file_bytes=policy.max_file_bytes, max_open_files=1024, max_processes=1024,
                                 tmp_bytes=policy.tmp_bytes, shm_bytes=policy.shm_bytes, uid=None,
                                 keep_setuid=self.separate)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = str(pathlib.Path(__file__).resolve().parents[1])
        cmd = sandbox.wrap([sys.executable, "-m", "grader.examiner", "zygote", "--fd", str(theirs.fileno()),
                            "--memory-bytes", str(sandbox.address_space(zpolicy.memory_bytes)),
                            "--warm", json.dumps(list(warm))],
                           zpolicy, workspace=False, with_grader=True)
        env = sandbox.environment("/tmp", {"PYTHONPATH": package_parent, "MPLBACKEND": "Agg"})
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd="/" if policy.mode == "bwrap" else None, start_new_session=True)
        theirs.close()

    def examiner(self) -> Examiner:
        uid = self.uids.acquire() if self.separate else None
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.control, [b"spawn" if uid is None else f"spawn {uid}".encode()], [theirs.fileno()])
        except OSError as e:
            ours.close()
            if uid is not None:
                self.uids.release(uid)
            raise ExaminerGone(f"the examiner zygote is gone ({e})") from None
        finally:
            theirs.close()
        ex = Examiner(ours)
        ex.uid, ex.pool = uid, self
        return ex

    def restart(self) -> None:
        """A new zygote after the old one died (the uids handed out stay with their examiners)."""
        self.close()
        policy, warm, memory_bytes = self._start_args
        self.__init__(policy, warm, self.uids, memory_bytes)

    def private_fds(self) -> list[int]:
        """Descriptors a forked worker must not keep: the zygote's control socket, the uid locks."""
        fds = [self.control.fileno()] if self.control.fileno() >= 0 else []
        return fds + (self.uids.private_fds() if self.uids is not None else [])

    def release(self, uid) -> None:
        """The examiner that had ``uid`` is done (its worker ended): the uid may be reused."""
        if uid is not None and self.uids is not None:
            self.uids.release(uid)

    def close(self) -> None:
        try:
            self.control.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait(timeout=5)



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.examiner")
    parser.add_argument("mode", choices=("zygote", "serve"))
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--memory-bytes", type=int, default=0)
    parser.add_argument("--warm", default="[]", help="JSON list of import statements to run before forking")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    sock = socket.socket(fileno=args.fd)
    if args.mode == "zygote":
        zygote(sock, args.memory_bytes, [str(w) for w in json.loads(args.warm)])
    else:
        _harden(args.memory_bytes)
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
