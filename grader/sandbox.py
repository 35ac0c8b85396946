"""The kernel sandbox: how a student's notebook is kept from everything but its own folder.

Mechanisms, strongest available first (see ``describe()`` and the README's instructor guide):

* **bubblewrap** (Debian package ``bubblewrap``): new mount, PID, IPC and network
  namespaces. The whole filesystem is mounted read-only; the grader's home, the
  repository (except the installed ``attnkit`` package), the course directory with the
  gradebook and hidden tests, the submissions folder and the output folder are replaced by
  empty tmpfs mounts; ``/tmp`` is a fresh tmpfs; only the student's own workspace is
  writable. No network interface but a down loopback. When the PID namespace's first
  process dies, the kernel dies: nothing is left behind.
* **a separate unprivileged user**: when the grader runs as root the kernel runs as
  ``nobody`` (``setpriv``; no capabilities, cannot regain them). As a normal user, the
  kernel runs as that user inside an unprivileged user namespace (the hiding above still
  holds; the kernel can read what that user can read outside the hidden folders).
* **rlimits** (``prlimit``): address space (the memory limit), file size, open files, core
  dumps off, and process count when a separate user is used.

Without bubblewrap (``--sandbox none`` or where it cannot start) only the rlimits apply and
the kernel runs in a private working directory with the grader's own rights; the grade
summary says so.

Kernels talk to the grader over Unix sockets (Jupyter's ``ipc`` transport), which work
across the network namespace.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass, field

NOBODY = 65534


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Whether bubblewrap can create the namespaces we need on this machine."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net",
            "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    try:
        return subprocess.run(args + ["--", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``bwrap`` where it works, else ``none``; an explicit ``bwrap`` must work."""
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox must be auto, bwrap or none, got {mode!r}")
    if mode == "auto":
        return "bwrap" if bwrap_works() else "none"
    if mode == "bwrap" and not bwrap_works():
        raise RuntimeError("bubblewrap is not installed or cannot create namespaces here "
                           "(apt-get install bubblewrap; or run with --sandbox none)")
    return mode


def describe(mode: str) -> str:
    """One line on what protects the grader in this mode, for the summary."""
    if mode == "bwrap":
        who = "as user nobody" if os.geteuid() == 0 else "in a user namespace as the grader's user"
        return (f"bubblewrap sandbox {who}: no network, read-only filesystem, hidden course files, "
                "private /tmp, rlimits")
    return ("NO SANDBOX (bubblewrap unavailable): rlimits only; the kernel can read what the grader "
            "can read and reach the network")


@dataclass
class Policy:
    """What one kernel may use."""

    mode: str = "bwrap"  # resolved: "bwrap" or "none"
    memory_bytes: int = 3 * 2**30
    max_file_bytes: int = 512 * 2**20
    max_open_files: int = 256
    max_processes: int = 512  # threads count too; only enforced for a separate user
    hidden: list[pathlib.Path] = field(default_factory=list)


def _python_paths() -> set[pathlib.Path]:
    """Folders the kernel's interpreter and installed packages live in."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and os.path.isdir(user_site):
        paths.add(user_site)
    # The course package may be an editable install inside the (hidden) repository. Locate it
    # without importing it: importing attnkit would import torch into the grader.
    spec = importlib.util.find_spec("attnkit")
    if spec is not None and spec.origin:
        paths.add(str(pathlib.Path(spec.origin).resolve().parent))
    return {pathlib.Path(p).resolve() for p in paths if p and os.path.isdir(p)}


def _under(path: pathlib.Path, root: pathlib.Path) -> bool:
    return path == root or root in path.parents


def bwrap_args(policy: Policy, workspace: pathlib.Path, ipc_dir: pathlib.Path) -> list[str]:
    """The bubblewrap command line (without the kernel command)."""
    args = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent",
            "--unsetenv", "JPY_PARENT_PID"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    hidden = {pathlib.Path("/tmp").resolve(), pathlib.Path.home().resolve()}
    hidden |= {pathlib.Path(p).resolve() for p in policy.hidden if os.path.isdir(p)}
    hidden.discard(pathlib.Path("/"))
    roots = sorted(hidden, key=lambda p: len(p.parts))
    for root in roots:
        args += ["--tmpfs", str(root)]
    made: set[pathlib.Path] = set()

    def bind(flag: str, path: pathlib.Path) -> None:
        for root in roots:
            if root in path.parents:
                # bwrap creates missing mount points with mode 0700; make the chain traversable
                chain = [a for a in reversed(path.parents) if root in a.parents and a not in made]
                for a in chain:
                    args.extend(["--perms", "0755", "--dir", str(a)])
                    made.add(a)
        args.extend([flag, str(path), str(path)])

    for path in sorted(_python_paths(), key=lambda p: len(p.parts)):
        if any(_under(path, r) for r in roots) and not any(_under(path, r) for r in (workspace, ipc_dir)):
            bind("--ro-bind", path)
    bind("--bind", workspace.resolve())
    bind("--bind", ipc_dir.resolve())
    args += ["--chdir", str(workspace.resolve())]
    if os.geteuid() == 0:
        # keep only what setpriv needs to drop to nobody; it clears them when it does
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                 shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                 "--clear-groups", "--inh-caps=-all"]
    args.append("--")
    return args


def prlimit_args(policy: Policy) -> list[str]:
    prlimit = shutil.which("prlimit")
    if not prlimit:
        return []
    args = [prlimit, f"--as={policy.memory_bytes}", f"--fsize={policy.max_file_bytes}",
            f"--nofile={policy.max_open_files}", "--core=0"]
    if policy.mode == "bwrap" and os.geteuid() == 0:
        args.append(f"--nproc={policy.max_processes}")
    return args + ["--"]


def wrap(cmd: list[str], policy: Policy, workspace: pathlib.Path, ipc_dir: pathlib.Path) -> list[str]:
    """The kernel command, wrapped in the policy's rlimits and sandbox."""
    outer = prlimit_args(policy)
    if policy.mode == "bwrap":
        return outer + bwrap_args(policy, workspace, ipc_dir) + cmd
    return outer + cmd


def prepare_dirs(workspace: pathlib.Path, ipc_dir: pathlib.Path) -> None:
    """Give the sandbox user its workspace and socket folder (and only those)."""
    for d in (workspace, ipc_dir):
        d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for p in [d, *d.rglob("*")]:
                os.chown(p, NOBODY, NOBODY)
        os.chmod(d, 0o700)
