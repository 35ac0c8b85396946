"""One sandboxed Jupyter kernel, driven cell by cell with wall-clock limits.

nbclient runs a notebook as a whole and gives up on the first dead kernel. Grading needs
finer control: a per-cell limit that interrupts and, when SIGINT is ignored, kills; the
status of every cell from the kernel's ``execute_reply`` (not from what was printed, which
student code controls); and a restart when the kernel dies. That is this module.
"""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import time
from dataclasses import dataclass, field

import nbformat
from jupyter_client import KernelManager

from . import sandbox

MAX_CAPTURE = 2 * 2**20  # bytes of output kept per cell; the rest is dropped and counted


@dataclass
class CellResult:
    status: str  # "ok", "error", "timeout" (interrupted), "killed" (ignored the interrupt), "dead"
    outputs: list = field(default_factory=list)
    ename: str = ""
    evalue: str = ""
    seconds: float = 0.0
    dropped_bytes: int = 0
    user_expressions: dict = field(default_factory=dict)


class _SandboxedKernelManager(KernelManager):
    policy: sandbox.Policy
    workspace: pathlib.Path
    ipc_dir: pathlib.Path

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        return sandbox.wrap(cmd, self.policy, self.workspace, self.ipc_dir)


class Kernel:
    """A kernel in ``workspace`` under ``policy``. Use as a context manager."""

    def __init__(self, workspace: pathlib.Path, ipc_dir: pathlib.Path, policy: sandbox.Policy,
                 startup_timeout: float = 60.0, env: dict | None = None):
        self.workspace, self.ipc_dir, self.policy = workspace, ipc_dir, policy
        self.startup_timeout = startup_timeout
        self.extra_env = env or {}
        self.km: _SandboxedKernelManager | None = None
        self.kc = None
        self.starts = 0

    # ------------------------------------------------------------------ lifecycle
    def _env(self) -> dict:
        ws = str(self.workspace.resolve())
        env = {
            "PATH": os.pathsep.join([str(pathlib.Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": ws, "IPYTHONDIR": os.path.join(ws, ".ipython"), "MPLCONFIGDIR": os.path.join(ws, ".mpl"),
            "MPLBACKEND": "Agg", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": ws,
            "TRITON_CACHE_DIR": os.path.join(ws, ".triton"), "TORCHINDUCTOR_CACHE_DIR": os.path.join(ws, ".inductor"),
        }
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        sandbox.prepare_dirs(self.workspace, self.ipc_dir)
        km = _SandboxedKernelManager(transport="ipc", ip=str(self.ipc_dir / "kernel"),
                                     connection_file=str(self.ipc_dir / f"connection-{self.starts}.json"))
        km.policy, km.workspace, km.ipc_dir = self.policy, self.workspace, self.ipc_dir
        # Interrupt over the control channel: a SIGINT to the process group would hit the
        # sandbox's own first process and end the kernel instead of interrupting the cell.
        km.kernel_spec.interrupt_mode = "message"
        km.write_connection_file()
        if os.geteuid() == 0 and self.policy.mode == "bwrap":
            os.chown(km.connection_file, sandbox.NOBODY, sandbox.NOBODY)
        self._log = open(self.ipc_dir / "kernel.log", "ab")
        km.start_kernel(env=self._env(), stdout=subprocess.DEVNULL, stderr=self._log)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            raise
        self.km, self.kc = km, kc
        self.starts += 1

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
                self._log.close()
        self.km = self.kc = None

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
    def execute(self, code: str, timeout: float, *, user_expressions: dict | None = None,
                interrupt_grace: float = 3.0) -> CellResult:
        """Run ``code``; wait at most ``timeout`` seconds, then interrupt, then kill."""
        start = time.monotonic()
        result = CellResult(status="ok")
        if not self.alive():
            result.status = "dead"
            return result
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False,
                                 user_expressions=user_expressions or {})
        deadline = start + timeout
        interrupted_at = None
        idle = False
        captured = 0
        while not idle:
            now = time.monotonic()
            if interrupted_at is None and now > deadline:
                self.km.interrupt_kernel()
                interrupted_at = now
                result.status = "timeout"
            if interrupted_at is not None and now > interrupted_at + interrupt_grace:
                result.status = "killed"  # the code ignored SIGINT
                self.shutdown()
                break
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not self.alive():
                    result.status = "dead"
                    self.shutdown()
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == "clear_output":
                result.outputs.clear()
            elif kind in ("stream", "display_data", "execute_result", "error", "update_display_data"):
                if kind == "update_display_data":
                    continue
                out = nbformat.v4.output_from_msg(msg)
                size = len(str(out))
                if captured + size > MAX_CAPTURE:
                    result.dropped_bytes += size
                    continue
                captured += size
                result.outputs.append(out)
        if idle:
            reply = self._reply(msg_id, timeout=10)
            if reply is not None:
                content = reply["content"]
                if result.status == "ok" and content.get("status") != "ok":
                    result.status = "error"
                if content.get("status") == "error":
                    result.ename, result.evalue = content.get("ename", ""), content.get("evalue", "")
                result.user_expressions = content.get("user_expressions", {})
            elif result.status == "ok":
                result.status = "error"
                result.ename, result.evalue = "NoReply", "the kernel sent no execute_reply"
        result.seconds = time.monotonic() - start
        return result

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
