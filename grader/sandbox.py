"""The sandbox: what a learner's kernel (and the grader's examiner) can see and use.

An allowlist, not a denylist. Under bubblewrap the kernel starts in an empty root into which
only these are mounted:

* read-only: ``/usr`` (and the ``/bin``, ``/lib``... links into it), a handful of files from
  ``/etc`` the dynamic linker and Python need, the Python installation and the site-packages
  it imports from, and the course package ``attnkit`` (not the repository around it: no
  ``solutions/``, no other course folder, no gradebook, no other submission);
* a fresh ``/proc`` of the kernel's own PID namespace and a minimal ``/dev``;
* size-limited tmpfs mounts: the workspace (``/home/student``, also ``HOME`` and the working
  directory), ``/tmp`` and ``/dev/shm``, new for every kernel start and gone with it;
* the one folder its Jupyter sockets live in, and its connection file (read-only), at
  ``/run/attn-kernel``.

It has its own network namespace (a loopback and nothing else), PID, IPC and UTS namespaces,
and dies with the grader. When the grader runs as root the kernel runs as a uid of its own,
taken from a pool above the system's ids (:class:`UidPool`), so no two kernels that run at
the same time share a uid (process limits and file permissions are per uid), with no
capabilities; where the host lets the grader create cgroups, the kernel also gets a
``pids.max`` and a memory limit covering its tmpfs pages. rlimits (``prlimit``) cap address
space, file size, open files and, per uid, processes; core dumps are off.

Without bubblewrap (``--sandbox none``) only the rlimits apply; ``describe()`` says so and the
grade summary repeats it. As a normal user, bubblewrap runs in an unprivileged user
namespace: the same allowlist holds, but every kernel runs as the grader's own uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import os
import pathlib
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

WORKSPACE = "/home/student"
KERNEL_DIR = "/run/attn-kernel"  # inside the sandbox: the connection file and the sockets folder
UID_BASE = int(os.environ.get("ATTN_GRADE_UID_BASE", "3270000"))
UID_COUNT = 4096
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "hosts", "host.conf",
             "mime.types", "os-release", "alternatives", "fonts")


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Whether bubblewrap can create the namespaces we need on this machine."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    args = [bwrap, *_system_binds(), "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid",
            "--unshare-ipc", "--die-with-parent"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    try:
        return subprocess.run(args + ["--", "/usr/bin/true"], capture_output=True, timeout=20).returncode == 0
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
        who = ("a uid of its own per kernel" if os.geteuid() == 0
               else "the grader's own uid in a user namespace (kernels share it)")
        extra = ", cgroup limits" if cgroups_available() else ""
        return (f"bubblewrap sandbox, {who}: no network, an allowlisted read-only root, sized private "
                f"workspace and /tmp, rlimits{extra}; tests run in a separate examiner")
    return ("NO SANDBOX (bubblewrap unavailable): rlimits only; the kernel can read what the grader "
            "can read and reach the network; tests still run in a separate examiner")


@dataclass
class Policy:
    """What one kernel may use."""

    mode: str = "bwrap"  # resolved: "bwrap" or "none"
    memory_bytes: int = 3 * 2**30
    max_file_bytes: int = 512 * 2**20
    max_open_files: int = 256
    max_processes: int = 256  # threads count too; per uid, so only with a uid of its own (or a cgroup)
    workspace_bytes: int = 512 * 2**20
    tmp_bytes: int = 256 * 2**20
    shm_bytes: int = 256 * 2**20
    uid: int | None = None  # the kernel's uid when the grader is root (from a UidPool)
    keep_setuid: bool = False  # root in the sandbox with only CAP_SETUID/SETGID (the examiner zygote)
    extra_ro: list[pathlib.Path] = field(default_factory=list)  # more read-only paths (the examiner's grader package)


# ---------------------------------------------------------------------- uids
class UidPool:
    """Distinct uids for concurrent kernels, above every id the system uses.

    A uid is taken by holding an exclusive ``flock`` on its lock file in a root-only folder,
    so concurrent grading runs on one machine never hand out the same uid; a crashed run's
    locks go with its processes."""

    def __init__(self, base: int = UID_BASE, count: int = UID_COUNT, folder: pathlib.Path | None = None):
        self.base, self.count = base, count
        self.folder = folder or pathlib.Path(tempfile.gettempdir()) / f"attn-grade-uids-{os.geteuid()}"
        self._held: dict[int, int] = {}

    def _prepare(self) -> None:
        try:
            os.mkdir(self.folder, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(self.folder)
        import stat
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise RuntimeError(f"{self.folder} must be a folder owned by uid {os.geteuid()} with mode 0700")

    def acquire(self) -> int:
        self._prepare()
        for uid in range(self.base, self.base + self.count):
            if uid in self._held or _uid_in_use(uid):
                continue
            fd = os.open(self.folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise RuntimeError(f"no free uid in {self.base}..{self.base + self.count - 1}")

    def private_fds(self) -> list[int]:
        """The lock descriptors this pool holds (a forked worker closes them)."""
        return list(self._held.values())

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def uid(self):
        uid = self.acquire()
        try:
            yield uid
        finally:
            self.release(uid)


def _uid_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


# ---------------------------------------------------------------------- cgroups
def _cgroup_dirs() -> list[pathlib.Path]:
    """Folders where this process may create child cgroups for pids and memory."""
    dirs = []
    try:
        lines = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    root = pathlib.Path("/sys/fs/cgroup")
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = root / path.lstrip("/")
            try:
                enabled = (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if {"pids", "memory"} <= set(enabled) and os.access(base, os.W_OK):
                dirs.append(base)
        else:
            names = controllers.split(",")
            for c in ("pids", "memory", "cpu", "cpuacct"):  # cpuacct: only to account (v1)
                if c in names:
                    base = root / controllers / path.lstrip("/")
                    if not base.is_dir():
                        base = root / c / path.lstrip("/")
                    if base.is_dir() and os.access(base, os.W_OK) and base not in dirs:
                        dirs.append(base)
    return dirs


@functools.lru_cache(maxsize=None)
def cgroups_available() -> bool:
    return os.geteuid() == 0 and bool(_cgroup_dirs())


class Cgroup:
    """One kernel's cgroups (pids, memory and, where there is one, cpu), created by root, never
    writable by the kernel. In a cpu cgroup of its own a kernel has one small weight under
    contention, however many processes it starts."""

    def __init__(self, dirs: list[pathlib.Path]):
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int) -> "Cgroup | None":
        if not cgroups_available():
            return None
        made = []
        for parent in _cgroup_dirs():
            d = parent / name
            try:
                d.mkdir()
            except OSError:
                continue
            made.append(d)
            # cpu: a quarter of a normal process's weight under contention (a kernel uses idle CPU
            # freely; however many processes it starts, the grader's own and the host's come first)
            for fname, value in (("pids.max", max_pids), ("memory.max", memory_bytes),
                                 ("memory.limit_in_bytes", memory_bytes), ("memory.swap.max", 0),
                                 ("cpu.shares", 256), ("cpu.weight", 25)):
                try:
                    (d / fname).write_text(str(value))
                except OSError:
                    pass
        return cls(made) if made else None

    def launcher(self) -> list[str]:
        """A command prefix that enters the cgroups, then runs the rest of the command."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 111; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "attn-cgroup", *[str(d / "cgroup.procs") for d in self.dirs], "--"]

    def remove(self) -> None:
        import signal
        for d in self.dirs:
            for _ in range(20):
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except OSError:
                    import time
                    time.sleep(0.05)


# seccomp: the per-uid keyrings outlive a kernel (a uid is reused by the next student), so a
# kernel may not touch them: add_key, request_key and keyctl fail with EPERM.
_KEY_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}


def seccomp_program() -> bytes | None:
    """The BPF filter bubblewrap installs with ``--seccomp`` (None on an architecture not known here)."""
    import platform
    import struct
    arch = _KEY_SYSCALLS.get(platform.machine())
    if arch is None:
        return None
    audit_arch, numbers = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    checks = [(jge, 0x40000000)] if platform.machine() == "x86_64" else []  # x32 calls: refused
    checks += [(jeq, n) for n in numbers]
    prog = [(ld, 0, 0, 4), (jeq, 0, 1 + len(checks), audit_arch), (ld, 0, 0, 0)]
    for i, (op, k) in enumerate(checks):
        prog.append((op, len(checks) - i, 0, k))  # jump to the last instruction: deny
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


@functools.lru_cache(maxsize=None)
def seccomp_file() -> pathlib.Path | None:
    """:func:`seccomp_program` in a file only this process's user can read (one per process)."""
    program = seccomp_program()
    if program is None:
        return None
    import atexit
    folder = pathlib.Path(tempfile.mkdtemp(prefix="attn-seccomp-"))
    path = folder / "filter.bpf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    pid = os.getpid()
    atexit.register(lambda: os.getpid() == pid and shutil.rmtree(folder, ignore_errors=True))
    return path


def seccomp_launcher(path: pathlib.Path) -> list[str]:
    """A prefix that opens the filter file on fd 9 for bubblewrap's ``--seccomp 9``."""
    return ["/bin/sh", "-c", 'exec 9<"$1" || exit 111; shift; exec "$@"', "attn-seccomp", str(path)]


def remove_cgroups(prefix: str) -> None:
    """Remove this host's ``prefix*`` cgroups (a kernel whose worker was killed leaves them)."""
    if not cgroups_available():
        return
    for parent in _cgroup_dirs():
        for d in parent.glob(prefix + "*"):
            Cgroup([d]).remove()


# ---------------------------------------------------------------------- bubblewrap
def python_paths(with_grader: bool = False) -> list[pathlib.Path]:
    """Folders the interpreter and the packages it imports live in (the course package alone,
    never the repository around it)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    # site-packages folders this interpreter reached some other way (a venv layered over another
    # environment adds the lower one's with site.addsitedir from a .pth file); never the
    # repository, the working folder or anything else on sys.path
    paths |= {p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")}
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and os.path.isdir(user_site):
        paths.add(user_site)
    # Locate the course packages without importing them (importing attnkit imports torch).
    for package in ("attnkit", "grader") if with_grader else ("attnkit",):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            paths.add(str(pathlib.Path(spec.origin).resolve().parent))
    return sorted({pathlib.Path(p).resolve() for p in paths if p and os.path.isdir(p)}, key=lambda p: len(p.parts))


def _under(path: pathlib.Path, root: pathlib.Path) -> bool:
    return path == root or root in path.parents


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = pathlib.Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    args += ["--perms", "0755", "--dir", "/etc"]  # made by bwrap as 0700 otherwise: no one could read in it
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _gpu_binds() -> list[str]:
    devices = sorted(str(p) for p in pathlib.Path("/dev").glob("nvidia*"))
    if not devices:
        return []
    args = []
    for dev in devices:
        args += ["--dev-bind", dev, dev]
    return args + ["--ro-bind-try", "/sys", "/sys", "--ro-bind-try", "/run/nvidia-persistenced",
                   "/run/nvidia-persistenced"]


def bwrap_args(policy: Policy, binds: list[tuple[str, pathlib.Path, str]], workspace: bool = True,
               with_grader: bool = False) -> list[str]:
    """The bubblewrap command line (without the command). ``binds``: (flag, host path, path
    inside) triples (``--ro-bind`` for the connection file, ``--bind`` for the sockets)."""
    args = [shutil.which("bwrap") or "bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--unsetenv", "JPY_PARENT_PID",  # its parent is the sandbox's init: the kernel's poller would quit
            "--hostname", "grader", "--proc", "/proc", "--dev", "/dev",
            "--size", str(policy.shm_bytes), "--tmpfs", "/dev/shm", "--chmod", "1777", "/dev/shm",
            "--size", str(policy.tmp_bytes), "--tmpfs", "/tmp", "--chmod", "1777", "/tmp"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    args += _system_binds() + _gpu_binds()
    made: set[pathlib.Path] = {pathlib.Path("/")}

    def chain(path: pathlib.Path) -> None:
        # bwrap makes missing mount points with mode 0700: make the parents traversable first
        for parent in reversed(path.parents):
            if parent not in made and not str(parent).startswith(("/usr", "/etc", "/proc", "/dev")):
                args.extend(["--perms", "0755", "--dir", str(parent)])
                made.add(parent)

    bound: list[pathlib.Path] = []
    for path in python_paths(with_grader) + [pathlib.Path(p).resolve() for p in policy.extra_ro]:
        if str(path).startswith("/usr/") or any(_under(path, b) for b in bound):
            continue  # already there
        chain(path)
        args += ["--ro-bind", str(path), str(path)]
        bound.append(path)
    for flag, path, inside in binds:
        chain(pathlib.Path(inside))
        args += [flag, str(path), str(inside)]
    if workspace:
        chain(pathlib.Path(WORKSPACE))
        args += ["--size", str(policy.workspace_bytes), "--tmpfs", WORKSPACE, "--chmod", "0777", WORKSPACE,
                 "--chdir", WORKSPACE]
    else:
        args += ["--chdir", "/tmp"]
    if os.geteuid() == 0 and policy.keep_setuid:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    elif os.geteuid() == 0 and policy.uid is not None:
        # keep only what setpriv needs to drop to the kernel's uid; it clears them when it does
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                 shutil.which("setpriv") or "setpriv", f"--reuid={policy.uid}", f"--regid={policy.uid}",
                 "--clear-groups", "--inh-caps=-all"]
    args.append("--")
    return args


@functools.lru_cache(maxsize=None)
def cuda_torch() -> bool:
    """Whether the installed torch is a CUDA build (read from its version file, not imported)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (pathlib.Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return False
    import re
    m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*(.+)$", text, flags=re.M)
    return bool(m) and m.group(1).strip() not in ("None", "''", '""')


CUDA_RESERVE = 64 << 30  # address space a CUDA torch maps without using it (its libraries, the driver)


def address_space(memory_bytes: int) -> int:
    """The RLIMIT_AS for a memory limit: the limit itself with a CPU torch; with a CUDA build,
    whose libraries map tens of GiB they never touch (``import torch`` fails under 4 GiB), the
    limit plus :data:`CUDA_RESERVE`, and the real memory is held by the kernel's cgroup where
    there is one."""
    return memory_bytes + CUDA_RESERVE if cuda_torch() else memory_bytes


def prlimit_args(policy: Policy) -> list[str]:
    prlimit = shutil.which("prlimit")
    if not prlimit:
        return []
    args = [prlimit, f"--as={address_space(policy.memory_bytes)}", f"--fsize={policy.max_file_bytes}",
            f"--nofile={policy.max_open_files}", "--core=0"]
    if policy.uid is not None and os.geteuid() == 0:
        args.append(f"--nproc={policy.max_processes}")
    return args + ["--"]


def wrap(cmd: list[str], policy: Policy, binds: list[tuple[str, pathlib.Path, str]] = (), workspace: bool = True,
         cgroup: Cgroup | None = None, with_grader: bool = False, seccomp: pathlib.Path | None = None) -> list[str]:
    """``cmd`` wrapped in the policy's cgroup, rlimits and sandbox; ``seccomp``: a file holding
    :func:`seccomp_program` (installed by bubblewrap; default: this process's own copy)."""
    outer = (cgroup.launcher() if cgroup is not None else []) + prlimit_args(policy)
    if policy.mode == "bwrap":
        inner = bwrap_args(policy, list(binds), workspace, with_grader)
        seccomp = seccomp if seccomp is not None else seccomp_file()
        if seccomp is not None:
            outer = seccomp_launcher(seccomp) + outer
            inner = inner[:1] + ["--seccomp", "9"] + inner[1:]
        return outer + inner + cmd
    return outer + cmd


def environment(home: str, extra: dict | None = None) -> dict:
    """The environment a sandboxed process starts with (nothing inherited from the grader)."""
    env = {
        "PATH": os.pathsep.join([str(pathlib.Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home, "USER": "student", "LOGNAME": "student", "IPYTHONDIR": os.path.join(home, ".ipython"),
        # matplotlib's inline backend (ipykernel's default): figures a cell draws reach its
        # outputs and so the feedback page
        "MPLCONFIGDIR": os.path.join(home, ".mpl"), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "TMPDIR": "/tmp", "TRITON_CACHE_DIR": os.path.join(home, ".triton"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(home, ".inductor"),
    }
    for key in ("CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def private_dir(parent: pathlib.Path, name: str, mode: int = 0o700) -> pathlib.Path:
    """A new folder only root (or the grader's user) can write: created fresh, never reused."""
    path = pathlib.Path(parent) / name
    os.mkdir(path, mode)
    os.chmod(path, mode)
    return path
