"""One sandboxed Jupyter kernel, driven cell by cell with wall-clock limits.

nbclient runs a notebook as a whole and gives up on the first dead kernel. Grading needs
finer control: a per-cell limit that interrupts and, when SIGINT is ignored, kills; the
status of every cell from the kernel's ``execute_reply``; a restart when the kernel dies; and
a data-only request channel (a Jupyter comm, :mod:`attnkit._agent` on the kernel's side)
through which the examiner calls the learner's functions.

Every kernel start gets a fresh folder that only the grader can write
(``run_dir/k<N>/``): the connection file (mounted read-only into the sandbox) and the kernel's
log stay there; the kernel's sockets live in ``sock/`` under it, the one folder the kernel may
write outside its own tmpfs workspace. When the grader is root, ``sock/`` belongs to root with
the kernel's group allowed in only until the kernel has bound its sockets; then it is locked,
so nothing the learner's code does can put a link where the grader connects. Files are
opened with ``O_NOFOLLOW``; the folder is removed with ``shutil.rmtree``'s fd-based walk, which
does not follow links.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import nbformat
import zmq
from jupyter_client import KernelManager

from . import sandbox

MAX_CAPTURE = 2 * 2**20  # bytes of output kept per cell; the rest is dropped and counted
MAX_MESSAGE = 32 << 20  # a kernel message part larger than this ends the connection (ZMQ_MAXMSGSIZE)
QUEUED_MESSAGES = 16  # messages the grader queues from a kernel (ZMQ_RCVHWM): the rest wait or are dropped
AGENT_TARGET = "attn-grade"


@dataclass
class CellResult:
    status: str  # "ok", "error", "timeout" (interrupted), "killed" (ignored the interrupt), "dead"
    outputs: list = field(default_factory=list)
    ename: str = ""
    evalue: str = ""
    seconds: float = 0.0
    dropped_bytes: int = 0


@dataclass
class CommReply:
    status: str  # "ok", "timeout", "killed", "dead", "noreply"
    header: dict | None = None
    buffers: list = field(default_factory=list)
    printed_bytes: int = 0


class _SandboxedKernelManager(KernelManager):
    attn_kernel: "Kernel"

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        k = self.attn_kernel
        if k.policy.mode != "bwrap":
            return sandbox.wrap(cmd, k.policy, cgroup=k.cgroup)
        # Inside the sandbox the kernel sees its connection file and sockets folder at fixed
        # paths; the grader connects to the same sockets by their host path.
        inside = f"{sandbox.KERNEL_DIR}/connection.json"
        cmd = [inside if arg == self.connection_file else arg for arg in cmd]
        binds = [("--ro-bind", k.base / "kernel.json", inside),
                 ("--bind", k.sock_dir, f"{sandbox.KERNEL_DIR}/sock")]
        return sandbox.wrap(cmd, k.policy, binds=binds, workspace=True, cgroup=k.cgroup)


class Kernel:
    """A kernel under ``policy`` whose private files live in ``run_dir`` (a folder only the
    grader can write). Use as a context manager."""

    def __init__(self, run_dir: pathlib.Path, policy: sandbox.Policy, startup_timeout: float = 120.0,
                 env: dict | None = None, exercises: tuple[str, ...] = ()):
        self.run_dir, self.policy = pathlib.Path(run_dir), policy
        self.startup_timeout = startup_timeout
        self.extra_env = env or {}
        self.exercises = tuple(exercises)
        self.km: _SandboxedKernelManager | None = None
        self.kc = None
        self.context = None
        self.cgroup = None
        self.base: pathlib.Path | None = None
        self.sock_dir: pathlib.Path | None = None
        self.comm_id: str | None = None
        self.starts = 0
        self._log_fd: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.base = sandbox.private_dir(self.run_dir, f"k{self.starts}", 0o700)
        self.starts += 1
        self.sock_dir = sandbox.private_dir(self.base, "sock", 0o700)
        root = os.geteuid() == 0 and self.policy.uid is not None
        if root:
            os.chown(self.sock_dir, 0, self.policy.uid)
            os.chmod(self.sock_dir, 0o770)
        self.context = zmq.Context()
        # bounded, whatever the kernel sends: one message at most MAX_MESSAGE, a few queued
        self.context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.context.setsockopt(zmq.RCVHWM, QUEUED_MESSAGES)
        km = _SandboxedKernelManager(transport="ipc", ip=str(self.sock_dir / "k"),
                                     connection_file=str(self.base / "connection.json"), context=self.context)
        km.attn_kernel = self
        # Interrupt over the control channel: a SIGINT to the process group would hit the
        # sandbox's own first process and end the kernel instead of interrupting the cell.
        km.kernel_spec.interrupt_mode = "message"
        km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        km.write_connection_file()
        info = json.loads(pathlib.Path(km.connection_file).read_text())
        info["ip"] = f"{sandbox.KERNEL_DIR}/sock/k"
        fd = os.open(self.base / "kernel.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.chmod(self.base / "kernel.json", 0o644)
        self._log_fd = os.open(self.base / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600)
        if self.policy.mode == "bwrap" and os.geteuid() == 0 and self.policy.uid is not None:
            self.cgroup = sandbox.Cgroup.create(f"attn-grade-{os.getpid()}-{self.starts}-{uuid.uuid4().hex[:6]}",
                                                self.policy.memory_bytes + self.policy.workspace_bytes
                                                + self.policy.tmp_bytes + self.policy.shm_bytes,
                                                self.policy.max_processes)
        home = sandbox.WORKSPACE if self.policy.mode == "bwrap" else str(self.base / "home")
        if self.policy.mode != "bwrap":
            os.mkdir(home, 0o700)
        km.start_kernel(env=sandbox.environment(home, self.extra_env), stdout=subprocess.DEVNULL,
                        stderr=self._log_fd, cwd=home if self.policy.mode != "bwrap" else None)
        kc = km.client(context=self.context)  # the bounded context, not zmq's global one
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            self._cleanup()
            raise RuntimeError(f"the kernel did not start: {self.log_tail()}") from None
        if root:
            os.chmod(self.sock_dir, 0o750)  # its sockets exist: from now on the kernel cannot add or swap any
        self.km, self.kc = km, kc
        self._install_agent()

    def log_tail(self, limit: int = 300) -> str:
        try:
            fd = os.open(self.base / "kernel.log", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, TypeError):
            return ""
        with os.fdopen(fd, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            return " ".join(f.read().decode("utf-8", "replace").split())

    def _install_agent(self) -> None:
        code = (f"import attnkit._agent as _attn_grade_agent\n"
                f"_attn_grade_agent.install(get_ipython(), {self.exercises!r})\ndel _attn_grade_agent\n")
        r = self.execute(code, timeout=max(self.startup_timeout, 120), silent=True)
        if r.status != "ok":
            raise RuntimeError(f"the grader's agent could not be installed: {r.ename}: {r.evalue}")
        self.comm_id = uuid.uuid4().hex
        msg = self.kc.session.msg("comm_open", {"comm_id": self.comm_id, "target_name": AGENT_TARGET, "data": {}})
        self.kc.shell_channel.send(msg)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                reply = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            if reply["msg_type"] == "comm_close":
                raise RuntimeError("the grader's agent did not answer")
            if reply["msg_type"] == "status" and reply["content"].get("execution_state") == "idle":
                return
        raise RuntimeError("the grader's agent did not answer")

    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)  # kills the sandbox's first process: its PID namespace goes with it
            finally:
                self.km.cleanup_resources()
        self.km = self.kc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)  # fd-based: never follows a link
            self.base = None

    def restart(self) -> None:
        self.shutdown()
        self.start()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    # ------------------------------------------------------------------ execution
    def _wait(self, msg_id: str, deadline: float, interrupt_grace: float, on_message) -> str:
        """Read iopub until ``msg_id``'s kernel goes idle: "ok", or "timeout"/"killed"/"dead"."""
        interrupted_at = None
        status = "ok"
        while True:
            now = time.monotonic()
            if interrupted_at is None and now > deadline:
                self.km.interrupt_kernel()
                interrupted_at = now
                status = "timeout"
            if interrupted_at is not None and now > interrupted_at + interrupt_grace:
                self.shutdown()
                return "killed"  # the code ignored the interrupt
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not self.alive():
                    self.shutdown()
                    return "dead"
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                return status
            on_message(msg)

    def execute(self, code: str, timeout: float, *, silent: bool = False, interrupt_grace: float = 3.0) -> CellResult:
        """Run ``code``; wait at most ``timeout`` seconds, then interrupt, then kill."""
        start = time.monotonic()
        result = CellResult(status="ok")
        if not self.alive():
            result.status = "dead"
            return result
        msg_id = self.kc.execute(code, silent=silent, store_history=not silent, allow_stdin=False,
                                 stop_on_error=False)
        captured = [0]

        def on_message(msg):
            kind = msg["msg_type"]
            if kind == "clear_output":
                result.outputs.clear()
            elif kind in ("stream", "display_data", "execute_result", "error"):
                try:
                    out = nbformat.v4.output_from_msg(msg)
                except Exception:  # noqa: BLE001 - a malformed message from the kernel
                    return
                size = len(str(out))
                if captured[0] + size > MAX_CAPTURE:
                    result.dropped_bytes += size
                    return
                captured[0] += size
                result.outputs.append(out)

        result.status = self._wait(msg_id, start + timeout, interrupt_grace, on_message)
        if result.status in ("ok", "timeout"):
            reply = self._reply(msg_id, timeout=10)
            if reply is not None:
                content = reply["content"]
                if result.status == "ok" and content.get("status") != "ok":
                    result.status = "error"
                if content.get("status") == "error":
                    result.ename, result.evalue = str(content.get("ename", ""))[:200], str(content.get("evalue", ""))[:2000]
            elif result.status == "ok":
                result.status = "error"
                result.ename, result.evalue = "NoReply", "the kernel sent no execute_reply"
        result.seconds = time.monotonic() - start
        return result

    def comm_request(self, header: dict, buffers: list, timeout: float, interrupt_grace: float = 3.0) -> CommReply:
        """Send one request to the grader's agent in the kernel and wait for its reply."""
        if not self.alive() or self.comm_id is None:
            return CommReply("dead")
        msg = self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": header})
        self.kc.session.send(self.kc.shell_channel.socket, msg, buffers=list(buffers))
        reply = CommReply("noreply")

        def on_message(m):
            kind = m["msg_type"]
            if kind == "comm_msg" and reply.header is None and m["content"].get("comm_id") == self.comm_id:
                data = m["content"].get("data")
                reply.header = data if isinstance(data, dict) else {}
                reply.buffers = [bytes(b) for b in m.get("buffers") or []]
            elif kind == "stream":
                reply.printed_bytes += len(str(m["content"].get("text", "")))

        status = self._wait(msg["header"]["msg_id"], time.monotonic() + timeout, interrupt_grace, on_message)
        if status != "ok":
            reply.status, reply.header, reply.buffers = status, None, []
        elif reply.header is not None:
            reply.status = "ok"
        return reply

    def _reply(self, msg_id: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                if not self.alive():
                    return None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg
        return None
